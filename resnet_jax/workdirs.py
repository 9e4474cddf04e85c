"""Reading a training workdir (``python -m train.main``'s Orbax checkpoints) without the
trainer: its variables, for inference, export or as a fine-tuning source, and the JSON
items saved with each step.

Each step of ``WORKDIR/checkpoints`` holds a ``state`` item (params, batch_stats, optimizer
state, EMA, step) and JSON items: ``config`` (the trainer's config) and ``run`` (what the
run trained on: its class names and image shape, and its evaluation ``Preprocessing``).
``train.checkpointing`` writes them. Everything here goes through Orbax's API
(``StandardRestore``, ``JsonRestore``); this module is the one place that knows the item
names, for the trainer and the library alike.
"""

from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp

STATE, CONFIG, RUN, DATA = "state", "config", "run", "data"  # the items of a step


class UnreadableItemError(ValueError):
    """A saved item whose files cannot be read back."""


def checkpoint_dir(path: str) -> str:
    """``path``'s ``checkpoints`` directory when it is a workdir, else ``path``."""
    path = os.path.abspath(os.path.expanduser(path))
    inner = os.path.join(path, "checkpoints")
    directory = inner if os.path.isdir(inner) else path
    if not os.path.isdir(directory):
        raise ValueError(f"{path!r} is neither a workdir nor a checkpoint directory")
    return directory


def innermost_message(error: BaseException) -> str:
    """The first line of the deepest cause: TensorStore's reason, not Orbax's wrapper."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return line if len(line) <= 400 else line[:400] + " ..."


def read_json(manager: ocp.CheckpointManager, step: int, item: str) -> dict[str, Any] | None:
    """The JSON item ``item`` of ``step`` through Orbax's ``JsonRestore``; None when the
    step has no such item, ``UnreadableItemError`` when it cannot be read as a JSON object."""
    try:
        value = manager.restore(step, args=ocp.args.Composite(**{item: ocp.args.JsonRestore()}))[item]
    except KeyError as e:
        if "not found in the checkpoint" in str(e):  # Orbax's word for an item the step lacks
            return None
        raise UnreadableItemError(
            f"the {item!r} item of step {step} in {manager.directory} is not readable ({e})"
        ) from None
    except Exception as e:  # whatever Orbax raises for a missing or broken file
        # Named by its file (Orbax's JsonCheckpointHandler writes ITEM/metadata), with the
        # decoder's reason rather than the StopIteration Orbax's reader ends on.
        file = os.path.join(str(manager.directory), str(step), item, "metadata")
        raise UnreadableItemError(f"{file} is not readable JSON ({_reason(e)})") from None
    if value is None:
        return None
    if not isinstance(value, dict):
        raise UnreadableItemError(
            f"the {item!r} item of step {step} in {manager.directory} holds a {type(value).__name__}, "
            "not a JSON object"
        )
    return value


def _reason(error: BaseException) -> str:
    """The first message in ``error``'s chain that says something (a JSON decoder's, an OS error's)."""
    while error is not None:
        if str(error).strip() and not isinstance(error, StopIteration):
            return str(error).strip().splitlines()[0]
        error = error.__cause__ or error.__context__
    return "unreadable"


class Workdir:
    """A workdir's checkpoints, read-only: ``with Workdir(path) as w: w.variables()``."""

    def __init__(self, path: str):
        self.directory = checkpoint_dir(path)
        self.manager = ocp.CheckpointManager(self.directory)

    def __enter__(self) -> Workdir:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.manager.close()

    def latest_step(self) -> int:
        """The newest complete step."""
        step = self.manager.latest_step()
        if step is None:
            raise ValueError(f"no checkpoint in {self.directory}")
        return step

    def item(self, step: int, item: str) -> dict[str, Any]:
        """A JSON item of ``step`` (``CONFIG`` or ``RUN``); empty when the step has none."""
        return read_json(self.manager, step, item) or {}

    def variables(self, step: int | None = None, ema: bool = False) -> tuple[dict[str, Any], int]:
        """``({'params', 'batch_stats'}, step)``: the newest step by default. ``ema=True``
        takes the EMA weights and their BatchNorm statistics (runs with ``ema_decay > 0``;
        a checkpoint from before the EMA averaged the statistics gives the live ones)."""
        steps = list(self.manager.all_steps())
        if not steps:
            raise ValueError(f"no checkpoint in {self.directory}")
        step = max(steps) if step is None else step
        if step not in steps:
            raise ValueError(f"step={step} is not saved in {self.directory}; saved: {sorted(steps)}")
        try:
            args = ocp.args.Composite(**{STATE: ocp.args.StandardRestore()})
            state = self.manager.restore(step, args=args)[STATE]
        except Exception as e:  # a truncated or missing file
            others = sorted(set(steps) - {step})
            raise ValueError(
                f"the checkpoint at step {step} in {self.directory} cannot be read "
                f"({innermost_message(e)}); other saved steps: {others or 'none'}"
            ) from None
        if ema and not state.get("ema_params"):
            raise ValueError(f"the checkpoint at step {step} in {self.directory} holds no EMA weights")
        if ema:
            stats = state.get("ema_batch_stats") or state.get("batch_stats") or {}
            return {"params": state["ema_params"], "batch_stats": stats}, step
        return {"params": state["params"], "batch_stats": state.get("batch_stats") or {}}, step


def load_variables(path: str, step: int | None = None, ema: bool = False) -> tuple[dict[str, Any], int]:
    """``Workdir(path).variables(step, ema)``: a workdir's weights in one call."""
    with Workdir(path) as workdir:
        return workdir.variables(step, ema)
