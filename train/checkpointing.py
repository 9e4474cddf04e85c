"""Orbax checkpoints of the train state, with the config, the data and the input position.

One ``CheckpointManager`` under ``WORKDIR/checkpoints`` saves asynchronously, keeps the
last K steps plus the best by eval top-1 (an ``AnyPreservationPolicy`` of ``LatestN``
and ``BestN``), and stores four items per step:

- ``state``: params, batch_stats, optimizer state, EMA and step, as plain nested dicts;
- ``config``: the run's config, so that a resume can refuse an incompatible one;
- ``run``: what the run trains on (``Data.identity()``: dataset, classes, image shape,
  the number and a fingerprint of the train examples), also compared on resume, and the
  run's time and step counts so far, so that a resumed run's summary covers all of it;
- ``data``: the train iterator's grain state (the next batch; with worker processes,
  each worker's position), one JSON file per process, written by grain's own Orbax
  handler. Restoring it continues the input stream exactly where the saved step left it.

Orbax writes each step into a temporary directory and renames it when complete, so a
killed run leaves the last complete step intact; the temporary ones are ignored. A step
that cannot be read back (a truncated array file, an empty ``config/metadata``) is moved
aside to ``checkpoints.unreadable/STEP``, never deleted, and the run resumes from the
newest readable step. When no step is readable, nothing is moved and the run stops with
each step's reason.

A save that fails (a full disk, a quota, a directory gone read-only) raises
``SaveError``: one line naming the directory, the step and the OS error. The step's
temporary directory is left as it is, and no saved step is deleted: Orbax removes old
steps only after a newer one is complete.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import sys
from collections.abc import Iterator
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from orbax.checkpoint.checkpoint_managers import AnyPreservationPolicy, BestN, LatestN

from resnet_jax import workdirs

BEST_METRIC = "top1"
# Config fields that change the shapes in the state, or what the saved input position
# means (it counts batches of the train split): a resume across a change is refused.
_STRUCTURAL = (
    "model", "dataset", "classes", "image_size", "optimizer", "ema_decay", "grad_accum_steps", "freeze",
    "batch_size", "train_split", "validation_examples", "repeated_augmentations",
)  # fmt: skip


class UnreadableCheckpointError(Exception):
    """A saved step whose files cannot be read back."""


class IncompatibleCheckpointError(ValueError):
    """A saved step written by a run that differs in what it trains, or how it is split."""


class SaveError(OSError):
    """A step that could not be written; the steps saved before it are untouched."""


def os_error(error: BaseException) -> str:
    """The OS error in a failed write: Python's own, or TensorStore's ``[os_error_code='N']``."""
    while error.__cause__ is not None or error.__context__ is not None:
        if isinstance(error, OSError) and error.errno:
            break
        error = error.__cause__ or error.__context__
    if isinstance(error, OSError) and error.errno:
        code, where = error.errno, f" ({error.filename})" if error.filename else ""
    else:
        found = re.search(r"os_error_code='?(\d+)", str(error))
        if not found:
            return workdirs.innermost_message(error)
        code = int(found.group(1))
        path = re.search(r'Failed \w+ (?:to )?(?:file )?"?([^":]+)"?', str(error))
        where = f" ({path.group(1)})" if path and path.group(1).startswith(os.sep) else ""
    return f"[Errno {code}] {os.strerror(code)} ({errno.errorcode.get(code, '?')}){where}"


_NO_METRICS_NOTE = "Requested `tracked_metric`; did not provide metrics."


class _DropSaveErrors(logging.Filter):
    """Orbax's logged tracebacks of a failed save into ``directory``: its background threads
    each log the same write error. ``SaveError`` reports it once, in one line.

    And Orbax's warning that a step was saved without metrics while a best step is
    tracked: the trainer saves such steps on purpose (a save between evals, the step a
    signal stopped at), and the latest-N policy keeps them. Printed at a stop, it reads as
    a failure just when the user checks that the stop went well.
    """

    def __init__(self, directory: str):
        super().__init__()
        self.directory = directory

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return not record.getMessage().startswith(_NO_METRICS_NOTE)
        error = record.exc_info[1] if record.exc_info else None
        return self.directory not in record.getMessage() + (str(error) if error else "")


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
    the same way, before the save's error reaches the caller, so the ``Checkpointer``
    passes its whole directory when it starts. The trainer's process installs this; the
    library (``resnet_jax.workdirs``) installs no process-wide hook."""
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


def _best_metric(metrics: dict[str, float]) -> float:
    return metrics[BEST_METRIC]


def _describe(value: Any) -> str:
    if isinstance(value, list) and len(value) > 6:
        return f"{len(value)} items [{', '.join(map(repr, value[:3]))}, ...]"
    return repr(value)


def _everywhere(ok: bool) -> bool:
    """``ok`` in every process: a step is used only if all of them could read it."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok, np.int32))))


class Checkpointer:
    """Saves and restores ``TrainState`` under ``directory``.

    Set ``data`` to ``Data.identity()`` before saving or restoring: it is saved with every
    step, and a resume on other data is refused.
    """

    def __init__(self, directory: str, keep: int, config: dict[str, Any]):
        self.directory = os.path.abspath(directory)
        self.config = config  # the run's config as JSON (train.settings.saved_config)
        self.data: dict[str, Any] = {}
        self.preprocessing: dict[str, Any] = {}  # the evaluation Preprocessing, as a dict
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
        self._saving: int | None = None  # the step of the save in flight
        self._quiet = _DropSaveErrors(self.directory)
        logging.getLogger("absl").addFilter(self._quiet)
        # And the tracebacks a failed save's writes leave: the SaveError names their cause.
        quiet_failed_reads(self.directory)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(
        self,
        step: int,
        state: Any,
        data_iterator: grain.DatasetIterator,
        metrics: dict[str, float] | None,
        progress: dict[str, float] | None = None,
    ) -> None:
        """Starts an asynchronous save of ``state`` at ``step``, with ``data_iterator``'s state
        (taken now), ``metrics`` from an eval at it, and ``progress``: the run's time and
        step counts up to it, handed back by ``restore``."""
        if step in self.manager.all_steps() or step == self._saving:
            return
        self.wait()  # as Orbax would, but a failure is then named by its own step
        self._saving = step
        with self._raising_save_error():
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    **{
                        workdirs.STATE: ocp.args.StandardSave(serialization.to_state_dict(state)),
                        workdirs.CONFIG: ocp.args.JsonSave(self.config),
                        workdirs.RUN: ocp.args.JsonSave(
                            {
                                "data": self.data,
                                "preprocessing": self.preprocessing,
                                "progress": progress or {},
                            }
                        ),
                        workdirs.DATA: grain.checkpoint.CheckpointSave(data_iterator),
                    }
                ),
                metrics=metrics,
            )

    def check(self) -> None:
        """Raises ``SaveError`` if the last save has ended and failed; never blocks."""
        if self._saving is not None and not self.manager.is_saving_in_progress():
            self.wait()

    @contextlib.contextmanager
    def _raising_save_error(self) -> Iterator[None]:
        try:
            yield
        except SaveError:
            raise
        except Exception as error:  # whatever Orbax, TensorStore or grain raise
            kept = self._complete_steps()
            raise SaveError(
                f"saving the checkpoint at step {self._saving} in {self.directory} failed: "
                f"{os_error(error)}. Nothing saved was deleted: "
                + (f"steps {kept} are kept, and" if kept else "no step had been saved, so")
                + " the same command, run again once there is space or the directory is writable, "
                f"resumes from step {kept[-1] if kept else 0}"
            ) from None

    def _complete_steps(self) -> list[int]:
        return sorted(int(n) for n in os.listdir(self.directory) if n.isdigit())

    def _read_json(self, step: int, item: str, required: bool = True) -> dict[str, Any] | None:
        """A JSON item of ``step`` (``resnet_jax.workdirs.read_json``, through Orbax)."""
        try:
            value = workdirs.read_json(self.manager, step, item)
        except workdirs.UnreadableItemError as e:
            raise UnreadableCheckpointError(str(e)) from None
        if value is None and required:
            raise UnreadableCheckpointError(f"step {step} in {self.directory} has no {item!r} item")
        return value

    def saved_config(self, step: int) -> dict[str, Any]:
        return self._read_json(step, workdirs.CONFIG)

    def restore(
        self, state: Any, mesh: Mesh, data_iterator: grain.DatasetIterator
    ) -> tuple[Any, int, dict[str, float]]:
        """``state`` with the values of the newest readable step, replicated on ``mesh``, and
        ``data_iterator`` moved (in place) to the input position saved with it.

        The target is ``state``'s structure with shardings for ``mesh``, so a checkpoint
        written on N devices restores on any other count (the iterator's state is per
        process: the process count must be the saved one). Returns (state, step, progress
        saved with it), or (state, 0, {}) with both untouched when there is no checkpoint.
        Newer steps that cannot be read are moved aside; a step written by an incompatible
        run raises ``IncompatibleCheckpointError`` naming each changed setting, and nothing
        is touched.
        """
        replicated = NamedSharding(mesh, PartitionSpec())
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
            serialization.to_state_dict(state),
        )
        unreadable: list[tuple[int, str]] = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            problem = None
            try:
                self._check_compatible(step)
                # Runs saved before the EMA averaged the BatchNorm statistics (their config
                # has no ema_every_steps) hold none: their EMA starts from the live ones.
                ema_stats = getattr(state, "ema_batch_stats", None) is not None
                legacy = ema_stats and "ema_every_steps" not in self.saved_config(step)
                item = {k: v for k, v in target.items() if not (legacy and k == "ema_batch_stats")}
                args = {
                    workdirs.STATE: ocp.args.StandardRestore(item),
                    workdirs.DATA: grain.checkpoint.CheckpointRestore(data_iterator),
                }
                restored = self.manager.restore(step, args=ocp.args.Composite(**args))[workdirs.STATE]
                if legacy:
                    restored["ema_batch_stats"] = jax.tree.map(jnp.copy, restored["batch_stats"])
            except IncompatibleCheckpointError:
                raise  # refused, and nothing touched
            except UnreadableCheckpointError as e:
                problem = str(e)
            except Exception as e:  # whatever Orbax, TensorStore or grain raise
                quiet_failed_reads(os.path.join(self.directory, str(step)))
                problem = workdirs.innermost_message(e)
            if _everywhere(problem is None):
                self._move_aside(unreadable, step)
                run = self._read_json(step, workdirs.RUN, required=False) or {}
                return serialization.from_state_dict(state, restored), step, run.get("progress") or {}
            unreadable.append((step, problem or "unreadable in another process"))
        if unreadable:
            reasons = "; ".join(f"step {s}: {why}" for s, why in unreadable)
            raise ValueError(
                f"no checkpoint in {self.directory} can be read ({reasons}). They are left in place; "
                "move them away to start that workdir again from step 0, or use a new --workdir."
            )
        return state, 0, {}

    def _move_aside(self, unreadable: list[tuple[int, str]], resume_step: int) -> None:
        """Moves the unreadable steps into ``DIRECTORY.unreadable/`` (process 0 does), then
        has Orbax list the steps again."""
        if not unreadable:
            return
        aside = self.directory + ".unreadable"
        if jax.process_index() == 0:
            os.makedirs(aside, exist_ok=True)
            for step, why in unreadable:
                dest, n = os.path.join(aside, str(step)), 1
                while os.path.exists(dest):
                    dest, n = os.path.join(aside, f"{step}.{n}"), n + 1
                os.rename(os.path.join(self.directory, str(step)), dest)
                message = (
                    f"the checkpoint at step {step} cannot be read ({why}); moved it to {dest}, "
                    f"resuming from step {resume_step}"
                )
                print(f"warning: {message}", file=sys.stderr, flush=True)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("resnet_jax: unreadable checkpoints moved aside")
        self.manager.reload()

    def _saved_process_count(self, step: int) -> int | None:
        """How many processes wrote the data iterator's state at ``step``."""
        folder = os.path.join(self.directory, str(step), "data")
        names = os.listdir(folder) if os.path.isdir(folder) else []
        counts = {int(n.rsplit("-of-", 1)[1].split(".")[0]) for n in names if "-of-" in n}
        return counts.pop() if len(counts) == 1 else None

    def _check_compatible(self, step: int) -> None:
        """IncompatibleCheckpointError when ``step`` was written by a run of another model, on other data or
        with another process count; UnreadableCheckpointError when its records are broken."""
        saved = self.saved_config(step)
        diffs = {
            k: f"{k}: saved {_describe(saved.get(k))}, now {_describe(self.config.get(k))}"
            for k in _STRUCTURAL
            if k in saved and saved.get(k) != self.config.get(k)
        }
        saved_data = (self._read_json(step, workdirs.RUN, required=False) or {}).get("data") or {}
        for k, v in saved_data.items():
            if k not in diffs and k != "data_dir" and k in self.data and self.data[k] != v:
                diffs[k] = f"{k}: saved {_describe(v)}, now {_describe(self.data[k])}"
        if diffs and saved_data.get("data_dir", "") != self.data.get("data_dir", ""):
            # Named when the data differ; the same files under another path are fine.
            diffs = {
                "data_dir": f"data_dir: saved {saved_data['data_dir']!r}, now {self.data['data_dir']!r}",
                **diffs,
            }
        if diffs:
            raise IncompatibleCheckpointError(
                f"the checkpoint at step {step} in {self.directory} was written by a different run "
                f"({'; '.join(diffs.values())}); it is left untouched. Use a new --workdir, or the "
                "saved values."
            )
        saved_processes = self._saved_process_count(step)
        if saved_processes is None:
            folder = os.path.join(self.directory, str(step), "data")
            if not os.path.isdir(folder):
                raise UnreadableCheckpointError(f"{folder} is missing")
            raise IncompatibleCheckpointError(
                f"the checkpoint at step {step} in {self.directory} holds no input-stream state "
                "(written by a resnet_jax before its grain pipeline); it is left untouched. Use a "
                "new --workdir, or init_from this one to start from its weights."
            )
        if saved_processes != jax.process_count():
            raise IncompatibleCheckpointError(
                f"the checkpoint at step {step} in {self.directory} was written by {saved_processes} "
                f"process(es), this run has {jax.process_count()}; the input stream's position is saved "
                "per process, so resume with the same number of processes (any device count works)."
            )

    def wait(self) -> None:
        """Blocks until the save in flight is complete; ``SaveError`` if it failed."""
        with self._raising_save_error():
            self.manager.wait_until_finished()
        self._saving = None

    def close(self) -> None:
        self.manager.close()
        logging.getLogger("absl").removeFilter(self._quiet)
