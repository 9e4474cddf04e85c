"""Reading a training workdir (``python -m train.main``'s Orbax checkpoints) without the
trainer: its variables, for inference, export or as a fine-tuning source, and its config.

Each step of ``WORKDIR/checkpoints`` holds a ``state`` item (params, batch_stats, optimizer
state, EMA, step) and a ``config`` item (JSON); ``train.checkpointing`` writes them.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

import orbax.checkpoint as ocp


def checkpoint_dir(path: str) -> str:
    """``path``'s ``checkpoints`` directory when it is a workdir, else ``path``."""
    path = os.path.abspath(os.path.expanduser(path))
    inner = os.path.join(path, "checkpoints")
    directory = inner if os.path.isdir(inner) else path
    if not os.path.isdir(directory):
        raise ValueError(f"{path!r} is neither a workdir nor a checkpoint directory")
    return directory


def saved_item(path: str, step: int, item: str) -> dict[str, Any]:
    """A JSON item saved with ``step``: ``config``, or ``run`` (what the run trained on:
    its data's class names and image shape); empty when the step has none."""
    file = os.path.join(checkpoint_dir(path), str(step), item, "metadata")
    if not os.path.exists(file):
        return {}
    with open(file) as f:
        return json.load(f)


def saved_config(path: str, step: int) -> dict[str, Any]:
    """The config saved with ``step`` (empty when the step has none)."""
    return saved_item(path, step, "config")


def latest_step(path: str) -> int:
    """The newest complete step saved in a workdir or its ``checkpoints`` directory."""
    directory = checkpoint_dir(path)
    manager = ocp.CheckpointManager(directory)
    try:
        step = manager.latest_step()
    finally:
        manager.close()
    if step is None:
        raise ValueError(f"no checkpoint in {directory}")
    return step


def innermost_message(error: BaseException) -> str:
    """The first line of the deepest cause: TensorStore's reason, not Orbax's wrapper."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return line if len(line) <= 400 else line[:400] + " ..."


_UNREADABLE_PATHS: set[str] = set()


def _mentions_unreadable(text: str) -> bool:
    return text == "Event loop is closed" or any(p in text for p in _UNREADABLE_PATHS)


class _DropFailedReads(logging.Filter):
    """asyncio's "Task exception was never retrieved" records of those reads."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not _mentions_unreadable(record.getMessage() + (str(error) if error else ""))


def quiet_failed_reads(step_dir: str) -> None:
    """After a failed read, Orbax's remaining read coroutines of ``step_dir`` end with their
    errors: unraisable tracebacks when they are collected, asyncio's "never retrieved"
    log records, and TensorStore's callbacks finding Orbax's event loop closed. Thousands
    of lines that add nothing to the one-line reason already given: drop exactly those.
    Any other unraisable error or asyncio record still prints. A failed save's writes end
    the same way, before the save's error reaches the caller: ``train.checkpointing``
    passes its whole checkpoint directory when it starts."""
    _UNREADABLE_PATHS.add(step_dir.rstrip(os.sep) + os.sep)
    previous = sys.unraisablehook
    if getattr(previous, "resnet_jax", False):
        return

    def hook(unraisable):
        if not _mentions_unreadable(str(unraisable.exc_value)):
            previous(unraisable)

    hook.resnet_jax = True
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_DropFailedReads())


def load_variables(path: str, step: int | None = None, ema: bool = False) -> tuple[dict[str, Any], int]:
    """``({'params', 'batch_stats'}, step)`` from a workdir or its ``checkpoints`` directory,
    for inference or as a fine-tuning source: the newest step by default. ``ema=True``
    takes the EMA weights and their BatchNorm statistics (runs with ``ema_decay > 0``;
    a checkpoint from before the EMA averaged the statistics gives the live ones).
    """
    directory = checkpoint_dir(path)
    manager = ocp.CheckpointManager(directory)
    try:
        steps = list(manager.all_steps())
        if not steps:
            raise ValueError(f"no checkpoint in {directory}")
        step = max(steps) if step is None else step
        if step not in steps:
            raise ValueError(f"step={step} is not saved in {directory}; saved: {sorted(steps)}")
        try:
            state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
        except Exception as e:  # a truncated or missing file
            quiet_failed_reads(os.path.join(directory, str(step)))
            others = sorted(set(steps) - {step})
            raise ValueError(
                f"the checkpoint at step {step} in {directory} cannot be read ({innermost_message(e)}); "
                f"other saved steps: {others or 'none'}"
            ) from None
    finally:
        manager.close()
    if ema and not state.get("ema_params"):
        raise ValueError(f"the checkpoint at step {step} in {directory} holds no EMA weights")
    if ema:
        stats = state.get("ema_batch_stats") or state.get("batch_stats") or {}
        return {"params": state["ema_params"], "batch_stats": stats}, step
    return {"params": state["params"], "batch_stats": state.get("batch_stats") or {}}, step
