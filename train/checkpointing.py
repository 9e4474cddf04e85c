"""Orbax checkpoints of the train state, with the config and the input position.

One ``CheckpointManager`` under ``WORKDIR/checkpoints`` saves asynchronously, keeps the
last K steps plus the best by eval top-1 (an ``AnyPreservationPolicy`` of ``LatestN``
and ``BestN``), and stores three items per step:

- ``state``: params, batch_stats, optimizer state, EMA and step, as plain nested dicts;
- ``config``: the run's config, so that a resume can refuse an incompatible one;
- ``data``: the train iterator's grain state (the next batch; with worker processes,
  each worker's position), one JSON file per process, written by grain's own Orbax
  handler. Restoring it continues the input stream exactly where the saved step left it.

Orbax writes each step into a temporary directory and renames it when complete, so a
killed run leaves the last complete step intact; the temporary ones are ignored.
"""

from __future__ import annotations

import json
import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from flax import serialization
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from orbax.checkpoint.checkpoint_managers import AnyPreservationPolicy, BestN, LatestN

BEST_METRIC = "top1"
# Fields that change the shapes in the state: resuming across a change cannot work.
_STRUCTURAL = (
    "model", "dataset", "classes", "image_size", "optimizer", "ema_decay", "grad_accum_steps", "freeze",
)  # fmt: skip


def _best_metric(metrics: dict[str, float]) -> float:
    return metrics[BEST_METRIC]


class Checkpointer:
    """Saves and restores ``TrainState`` under ``directory``."""

    def __init__(self, directory: str, keep: int, config: Any):
        if keep < 1:
            raise ValueError(f"keep_checkpoints={keep} must be >= 1")
        self.directory = os.path.abspath(directory)
        self.config = json.loads(config.to_json_best_effort())
        policy = AnyPreservationPolicy(
            [LatestN(n=keep), BestN(get_metric_fn=_best_metric, n=1, keep_checkpoints_without_metrics=False)]
        )
        options = ocp.CheckpointManagerOptions(
            best_fn=_best_metric,
            best_mode="max",
            preservation_policy=policy,
            enable_async_checkpointing=True,
            create=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(
        self, step: int, state: Any, data_iterator: grain.DatasetIterator, metrics: dict[str, float] | None
    ) -> None:
        """Starts an asynchronous save of ``state`` at ``step``, with ``data_iterator``'s state
        (taken now); ``metrics`` from an eval at it."""
        if step in self.manager.all_steps():
            return
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(serialization.to_state_dict(state)),
                config=ocp.args.JsonSave(self.config),
                data=grain.checkpoint.CheckpointSave(data_iterator),
            ),
            metrics=metrics,
        )

    def saved_config(self, step: int) -> dict[str, Any]:
        return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

    def restore(
        self, state: Any, mesh: Mesh, data_iterator: grain.DatasetIterator, step: int | None = None
    ) -> tuple[Any, int]:
        """``state`` with the values of ``step`` (default: the latest), replicated on ``mesh``,
        and ``data_iterator`` moved (in place) to the input position saved with it.

        The target is ``state``'s structure with shardings for ``mesh``, so a checkpoint
        written on N devices restores on any other count (the iterator's state is per
        process: the process count must be the saved one). Returns (state, step), or
        (state, 0) with both untouched when there is no checkpoint.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            return state, 0
        self._check_compatible(step)
        replicated = NamedSharding(mesh, PartitionSpec())
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
            serialization.to_state_dict(state),
        )
        saved_processes = self._saved_process_count(step)
        if saved_processes is None:
            raise ValueError(
                f"the checkpoint at step {step} in {self.directory} holds no input-stream state "
                "(written by a resnet_jax before its grain pipeline); it is left untouched. Use a "
                "new --workdir, or init_from this one to start from its weights."
            )
        if saved_processes != jax.process_count():
            raise ValueError(
                f"the checkpoint at step {step} in {self.directory} was written by {saved_processes} "
                f"process(es), this run has {jax.process_count()}; the input stream's position is saved "
                "per process, so resume with the same number of processes (any device count works)."
            )
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), data=grain.checkpoint.CheckpointRestore(data_iterator)
            ),
        )["state"]
        return serialization.from_state_dict(state, restored), step

    def _saved_process_count(self, step: int) -> int | None:
        """How many processes wrote the data iterator's state at ``step``."""
        folder = os.path.join(self.directory, str(step), "data")
        names = os.listdir(folder) if os.path.isdir(folder) else []
        counts = {int(n.rsplit("-of-", 1)[1].split(".")[0]) for n in names if "-of-" in n}
        return counts.pop() if len(counts) == 1 else None

    def _check_compatible(self, step: int) -> None:
        saved = self.saved_config(step)
        diffs = [
            f"{k}: saved {saved.get(k)!r}, now {self.config.get(k)!r}"
            for k in _STRUCTURAL
            if k in saved and saved.get(k) != self.config.get(k)
        ]
        if diffs:
            raise ValueError(
                f"the checkpoint at step {step} in {self.directory} was written by a different run "
                f"({'; '.join(diffs)}); it is left untouched. Use a new --workdir, or the saved values."
            )

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def load_variables(path: str, step: int | None = None, ema: bool = False) -> tuple[dict[str, Any], int]:
    """``({'params', 'batch_stats'}, step)`` from a workdir or its ``checkpoints`` directory,
    for inference or as a fine-tuning source: the newest step by default. ``ema=True``
    takes the EMA weights (runs with ``ema_decay > 0``).
    """
    path = os.path.abspath(os.path.expanduser(path))
    inner = os.path.join(path, "checkpoints")
    directory = inner if os.path.isdir(inner) else path
    if not os.path.isdir(directory):
        raise ValueError(f"{path!r} is neither a workdir nor a checkpoint directory")
    manager = ocp.CheckpointManager(directory)
    try:
        steps = list(manager.all_steps())
        if not steps:
            raise ValueError(f"no checkpoint in {directory}")
        step = max(steps) if step is None else step
        if step not in steps:
            raise ValueError(f"step={step} is not saved in {directory}; saved: {sorted(steps)}")
        state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    finally:
        manager.close()
    if ema and not state.get("ema_params"):
        raise ValueError(f"the checkpoint at step {step} in {directory} holds no EMA weights")
    params = state["ema_params"] if ema else state["params"]
    return {"params": params, "batch_stats": state.get("batch_stats") or {}}, step
