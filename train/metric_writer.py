"""Run records: ``metrics.jsonl``, TensorBoard events (through tensorboardX, so no
TensorFlow), and the loss/accuracy plot."""

from __future__ import annotations

import json
import os
from typing import Any

import jax


class MetricWriter:
    """TensorBoard events and ``metrics.jsonl`` in the workdir; process 0 writes."""

    def __init__(self, workdir: str, resume_step: int):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.active = jax.process_index() == 0
        self.records: list[dict[str, Any]] = []
        if not self.active:
            return
        if os.path.exists(self.path):
            with open(self.path) as f:
                records = [json.loads(line) for line in f if line.strip()]
            # A killed run may have logged past its last checkpoint: that part is redone.
            self.records = [r for r in records if r["step"] <= resume_step]
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in self.records)
            os.replace(tmp, self.path)
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, split: str, values: dict[str, float]) -> None:
        if not self.active:
            return
        record = {"step": step, "split": split, **values}
        self.records.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for k, v in values.items():
            if isinstance(v, int | float):  # not the eval's 'weights': 'ema' | 'live'
                self.tb.add_scalar(f"{split}/{k}", v, step)
        self.tb.flush()

    def close(self) -> None:
        if self.active:
            self.tb.close()

    def plot(self, path: str) -> None:
        """Train and eval loss and top-1 against step, as a PNG."""
        if not self.active or not self.records:
            return
        # No pyplot: it would switch the backend of a notebook that called the trainer.
        from matplotlib.figure import Figure

        fig = Figure(figsize=(10, 4))
        axes = fig.subplots(1, 2)
        for split, style in (("train", "-"), ("eval", "o-")):
            rs = [r for r in self.records if r["split"] == split]
            steps = [r["step"] for r in rs]
            axes[0].plot(steps, [r["loss"] for r in rs], style, label=split)
            axes[1].plot(steps, [r["top1"] for r in rs], style, label=split)
        axes[0].set_yscale("log")  # early eval losses can be 100x the final ones
        for ax, name in zip(axes, ("loss", "top-1 accuracy")):
            ax.set_xlabel("step")
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
