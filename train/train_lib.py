"""The training loop: set up, resume (or find the run finished), train, evaluate, save,
finish.

``train_and_evaluate(config, workdir)`` checks the config once (``train.settings``) and
then runs these steps, each a function below:

1. ``_set_up``: the mesh, the checkpointer, the data, the model and optimizer, the
   weights ``init_from`` names, and the newest readable checkpoint restored into them;
2. ``_report_finished``: a workdir whose run is complete is left as it is;
3. ``_train_loop``: the steps, with a log window (``_log_window``), an evaluation
   (``_evaluate``) and a checkpoint at their intervals, until the last step or a stop
   signal (``train.preemption``);
4. ``_finish``: ``summary.json``, ``curves.png`` and the closing line.

Every resource (the checkpointer, the metric writer, grain's worker processes, the
progress bar, the signal handlers) is closed by one ``contextlib.ExitStack``. The pieces
live in their own modules: the optimizer and schedule (``train.optim``), the state, EMA
and sharded steps (``train.steps``), the mesh (``train.mesh``). Data parallelism is
``jax.jit`` over a one-axis ``Mesh`` of every device, so BatchNorm statistics are
computed over the global batch and N devices reproduce one device's result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

import resnet_jax
from resnet_jax import resnet as resnet_lib
from train import mesh as mesh_lib
from train import metric_writer, optim, preemption, steps
from train import settings as settings_lib

LISTING = "listing"  # WORKDIR/listing: the image folder's listing (train.input_pipeline.folders)


def train_and_evaluate(config: Any, workdir: str) -> dict[str, Any]:
    """Trains ``config`` into ``workdir``, resuming from its newest readable checkpoint.

    Returns a summary, also written to ``workdir/summary.json``: final and best eval
    metrics, steps, the recipe, and wall time, compile time and images/s summed over every
    session that trained the run (a session's steps after its last checkpoint are redone
    by the next one and counted once). A finished workdir is left as it is and its summary
    returned. A workdir that this call created is removed again if the call fails before
    writing a checkpoint or a metric into it.
    """
    start_time = time.time()
    settings = settings_lib.check(config)
    existed = os.path.exists(os.path.abspath(os.path.expanduser(workdir)))
    workdir = check_workdir(workdir)
    try:
        return _run(settings, workdir, start_time)
    except BaseException:
        if not existed and jax.process_index() == 0:
            _remove_if_empty(workdir)
        raise


def check_workdir(workdir: str) -> str:
    """Creates ``workdir`` and proves it writable before any work starts."""
    workdir = os.path.abspath(os.path.expanduser(workdir))
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_test"):
            pass
    except OSError as e:
        raise ValueError(f"workdir {workdir!r} is not writable: {e.strerror or e}") from e
    return workdir


def _remove_if_empty(directory: str) -> None:
    """Removes ``directory`` when the failed run wrote nothing of use into it: no
    checkpoint, no metrics (at most TensorBoard's empty event file)."""
    files = [os.path.relpath(os.path.join(d, f), directory) for d, _, fs in os.walk(directory) for f in fs]
    if all(f.startswith(("tensorboard" + os.sep, LISTING + os.sep)) for f in files):
        shutil.rmtree(directory, ignore_errors=True)


@dataclasses.dataclass
class Clock:
    """Time and step counts of every session of the run: ``before`` this one, and this one."""

    before: Mapping[str, float]
    start_time: float
    compile_s: float = 0.0
    train_s: float = 0.0
    trained: int = 0

    def progress(self) -> dict[str, float]:
        """Saved with each checkpoint, so that a resumed run's summary covers all sessions."""
        return {
            "wall_s": self.before.get("wall_s", 0.0) + time.time() - self.start_time,
            "compile_s": self.before.get("compile_s", 0.0) + self.compile_s,
            "train_s": self.before.get("train_s", 0.0) + self.train_s,
            "trained_steps": self.before.get("trained_steps", 0) + self.trained,
            "sessions": self.before.get("sessions", 0) + 1,
        }


@dataclasses.dataclass
class Session:
    """What one call of ``train_and_evaluate`` works with, once set up."""

    settings: settings_lib.Settings
    workdir: str
    mesh: Mesh
    ckpt: Any  # train.checkpointing.Checkpointer
    data: Any  # train.input_pipeline.batching.Data
    state: steps.TrainState
    step_rng: jax.Array
    batches: mesh_lib.DevicePrefetchIterator
    learning_rate_fn: Callable[[int], Any]
    total: int
    duration: str
    start_step: int
    clock: Clock
    finished: dict[str, Any] | None  # the summary of a run already complete
    train_fn: Callable[..., Any] | None = None
    eval_fn: Callable[..., Any] | None = None
    writer: metric_writer.MetricWriter | None = None
    bar: Any = None
    evals: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    eval_metrics: dict[str, float] | None = None

    @property
    def eval_weights(self) -> str:
        """Which weights the evaluations score: ``'ema'`` when the run keeps an EMA."""
        return "ema" if self.settings.ema.enabled else "live"


def _run(settings: settings_lib.Settings, workdir: str, start_time: float) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        session = _set_up(settings, workdir, start_time, stack)
        if session.finished is not None:
            return _report_finished(session)
        _announce(session, stack)
        signals = stack.enter_context(preemption.StopSignals(settings.run.stop_signals))
        stopped = _train_loop(session, signals)
        if not stopped and session.eval_metrics is None:
            _evaluate_resumed_end(session)
        session.ckpt.wait()  # the last save complete before the summary says so
    return _finish(session, stopped, signals.name)


def _set_up(
    settings: settings_lib.Settings, workdir: str, start_time: float, stack: contextlib.ExitStack
) -> Session:
    """The mesh, checkpointer, data, state and input stream, restored from the newest
    readable checkpoint; each closed by ``stack``."""
    from train import checkpointing
    from train.input_pipeline import batching

    mesh = mesh_lib.create_mesh()
    mesh_lib.check_batch_size(settings.input.batch_size, mesh)
    mesh_lib.check_batch_size(settings.input.eval_batch_size, mesh)
    ckpt = checkpointing.Checkpointer(
        os.path.join(workdir, "checkpoints"),
        settings.run.keep_checkpoints,
        settings_lib.saved_config(settings),
    )
    stack.callback(ckpt.close)
    fresh = ckpt.latest_step() is None
    if fresh:
        settings_lib.check_init_from(settings)
    data = batching.create_data(settings.input, os.path.join(workdir, LISTING))
    ckpt.data, ckpt.preprocessing = data.identity(), data.preprocessing().to_dict()
    total = settings.run.length.total_steps(data.steps_per_epoch)
    duration = _duration(settings, total, data)
    learning_rate_fn = optim.create_learning_rate_fn(settings.optim, data.steps_per_epoch, total)
    init_rng, step_rng = jax.random.split(jax.random.key(settings.run.seed))
    state = initial_state(settings, data, learning_rate_fn, init_rng, fresh)
    batches = mesh_lib.DevicePrefetchIterator(
        data.train_iterator(), mesh, settings.run.prefetch, host_keys=("skipped",)
    )
    stack.callback(batches.close)  # grain's worker processes and shared memory
    state, start_step, before = ckpt.restore(mesh_lib.replicate(state, mesh), mesh, batches)
    data.undecodable.restore(before.get("undecodable", {}))
    finished = _finished_summary(workdir, start_step, total)
    if start_step > total and finished is None:
        raise ValueError(
            f"the checkpoint in {workdir} is at step {start_step}, past this run's {total} steps "
            f"({duration}); give the run at least {start_step} steps, or use a new --workdir"
        )
    return Session(
        settings, workdir, mesh, ckpt, data, state, mesh_lib.replicate(step_rng, mesh), batches,
        learning_rate_fn, total, duration, start_step, Clock(before, start_time), finished,
    )  # fmt: skip


def _duration(settings: settings_lib.Settings, total: int, data: Any) -> str:
    """The run's steps and the field that set them, as one line; an error for 0 steps."""
    field, batch = settings.run.length.field, settings.batch_size
    if total < 1:
        raise ValueError(
            f"{field} gives 0 steps ({data.steps_per_epoch} steps of batch {batch} per epoch of "
            f"{data.num_train} train images); set num_epochs > 0 or num_train_steps > 0"
        )
    return (
        f"{total} steps of batch {batch} ({field}): {total / data.steps_per_epoch:.4g} epochs "
        f"of {data.num_train} train images"
    )


def initial_state(
    settings: settings_lib.Settings,
    data: Any,
    learning_rate_fn: Callable[[int], Any],
    rng: jax.Array,
    fresh: bool,
) -> steps.TrainState:
    """The model, its optimizer and its first weights: random, or ``init_from``'s for a
    fresh run (a resumed one restores its own next)."""
    from train import finetune

    m = settings.model
    model_kw = dict(
        num_classes=data.num_classes,
        in_channels=data.image_shape[-1],
        dtype=jnp.dtype(m.dtype),
        drop_rate=m.drop_rate,
        drop_path_rate=m.drop_path_rate,
        zero_init_last=m.zero_init_last,
    )
    model = resnet_jax.create_model(m.name, **model_kw)
    if settings.step.float32_grad_reduction and resnet_lib.is_batch_norm(model.norm):
        # Global BatchNorm statistics inside the per-device gradients (steps.train_step);
        # GroupNorm (resnet50_gn, BiT) has no statistics to share.
        model_kw["norm"] = functools.partial(model.norm, axis_name=steps.DEVICE_AXIS)
        model = resnet_jax.create_model(m.name, **model_kw)
    x = jnp.zeros((1, *data.image_shape), jnp.float32)
    param_shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)["params"]
    if settings.optim.freeze_batch_stats:
        parts = optim.frozen_parts(param_shapes, settings.optim.freeze or "backbone")
        model = resnet_jax.create_model(m.name, frozen_norm_parts=parts, **model_kw)
    tx = optim.create_optimizer(settings.optim, learning_rate_fn, param_shapes)
    ema = settings.ema.enabled
    state = steps.create_train_state(model, tx, data.image_shape, rng, ema=ema)
    if not (settings.run.init_from and fresh):
        return state
    params, batch_stats, report = finetune.restore_from(
        settings.run.init_from,
        state.params,
        state.batch_stats,
        m.name,
        settings.run.reinit_head,
        ema=None if settings.run.init_from_ema else False,
    )
    if jax.process_index() == 0:
        print(report, flush=True)
    copy = functools.partial(jax.tree.map, np.copy)
    return state.replace(
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        ema_params=copy(params) if ema else None,
        ema_batch_stats=copy(batch_stats) if ema else None,
    )


def _read_summary(workdir: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(workdir, "summary.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _finished_summary(workdir: str, start_step: int, total: int) -> dict[str, Any] | None:
    """The summary of a run that is already complete at ``start_step``, else None."""
    summary = _read_summary(workdir)
    if (
        start_step >= total
        and summary is not None
        and summary.get("status", "finished") == "finished"
        and summary.get("steps") == start_step
    ):
        return summary
    return None


def _report_finished(session: Session) -> dict[str, Any]:
    summary = session.finished
    if jax.process_index() == 0:
        print(
            f"{session.workdir} is finished: its checkpoint is at step {session.start_step} of "
            f"{session.total}, final top-1 {summary['final']['top1']:.4f}, best {summary['best_top1']:.4f} "
            f"at step {summary['best_step']}. Nothing was changed; to train on, raise num_train_steps "
            "or num_epochs.",
            flush=True,
        )
    return summary


def _announce(session: Session, stack: contextlib.ExitStack) -> None:
    """Prints where the run starts and what it trains with; opens the metric writer, the
    progress bar and the compiled steps."""
    from tqdm.auto import tqdm

    s = session.settings
    if jax.process_index() == 0:
        if session.start_step:
            print(
                f"resuming from the checkpoint at step {session.start_step} of {session.total} in "
                f"{session.workdir}",
                flush=True,
            )
        print(session.duration, flush=True)
        print(s.describe_recipe() + f"; evaluating the {session.eval_weights} weights", flush=True)
    session.writer = metric_writer.MetricWriter(session.workdir, session.start_step)
    stack.callback(session.writer.close)
    session.evals = [r for r in session.writer.records if r["split"] == "eval"]
    ema = steps.ema_schedule(
        s.ema, session.data.steps_per_epoch, session.total, s.batch_size, s.optim.warmup_epochs
    )
    session.train_fn, session.eval_fn = steps.make_steps(session.mesh, s.step, ema)
    session.bar = tqdm(
        total=session.total,
        initial=session.start_step,
        unit="step",
        dynamic_ncols=True,
        disable=jax.process_index() != 0,
    )
    stack.callback(session.bar.close)  # ends its line, so that an error message starts on its own


@dataclasses.dataclass
class Window:
    """The train metrics summed since the last log line, and when that window started."""

    start: int
    time: float
    sums: Any = None

    def add(self, metrics: Any) -> None:
        self.sums = metrics if self.sums is None else jax.tree.map(jnp.add, self.sums, metrics)


def _train_loop(session: Session, signals: preemption.StopSignals) -> int:
    """The steps after ``start_step``; returns the step a stop signal ended at, or 0."""
    s, run = session, session.settings.run
    eval_every = run.eval_every_steps or s.data.steps_per_epoch
    ckpt_every = run.checkpoint_every_steps or s.data.steps_per_epoch
    window = Window(s.start_step, time.time())
    train_split = s.data.split_range(s.data.train_split)[0]
    for step in range(s.start_step + 1, s.total + 1):
        batch = next(s.batches)
        s.data.undecodable.add(train_split, s.batches.host["skipped"])
        t = time.time()
        s.state, metrics = s.train_fn(s.state, batch, s.step_rng)
        if step == s.start_step + 1:
            s.clock.compile_s = time.time() - t  # the first call compiles, and blocks while it does
            window.time = time.time()
        window.add(metrics)
        s.bar.update(1)
        stopping = step < s.total and signals.reached(step)
        is_eval = step % eval_every == 0 or step == s.total
        is_ckpt = step % ckpt_every == 0 or step == s.total or stopping
        if step % run.log_every_steps == 0 or is_eval or is_ckpt:
            window = _log_window(s, window, step)
        if is_eval:
            _evaluate(s, step)
            window.time = time.time()
        if is_ckpt:
            progress = {**s.clock.progress(), "undecodable": s.data.undecodable.state()}
            s.ckpt.save(step, s.state, s.batches, s.eval_metrics if is_eval else None, progress)
            window.time = time.time()
        if stopping:
            return step
    return 0


def _means(sums: Mapping[str, Any]) -> dict[str, float]:
    sums = {k: float(v) for k, v in jax.device_get(sums).items()}
    n = max(sums["count"], 1.0)
    return {"loss": sums["loss"] / n, "top1": sums["top1"] / n, "top5": sums["top5"] / n}


def _log_window(s: Session, window: Window, step: int) -> Window:
    """Writes the window's train metrics (fetching them is the loop's only host sync, and it
    guards every save: a non-finite loss stops the run before anything is saved)."""
    metrics = _means(window.sums)
    if not all(math.isfinite(v) for v in metrics.values()):
        last = s.ckpt.latest_step()
        s.ckpt.wait()
        kept = (
            f"The last good checkpoint (step {last}) is kept in {s.ckpt.directory}."
            if last is not None
            else "No checkpoint had been saved yet, so the run has nothing to resume from."
        )
        raise FloatingPointError(
            f"non-finite train loss between steps {window.start + 1} and {step} ({metrics}); stopped "
            f"without saving. {kept} Lower learning_rate (now {s.settings.optim.learning_rate}) or "
            "set grad_clip_norm."
        )
    s.data.undecodable.sync()  # before a save: too many undecodable images stop the run first
    s.data.undecodable.check()
    elapsed = time.time() - window.time
    n_steps = step - window.start - (1 if window.start == s.start_step else 0)  # not the compiling one
    images_per_s = n_steps * s.settings.batch_size / elapsed if elapsed > 0 and n_steps > 0 else 0.0
    if n_steps > 0:
        s.clock.train_s, s.clock.trained = s.clock.train_s + elapsed, s.clock.trained + n_steps
    metrics.update(lr=float(s.learning_rate_fn(step - 1)), images_per_s=images_per_s)
    s.writer.write(step, "train", metrics)
    # A window that only compiled (a run's or a resumed session's first) has no speed yet.
    speed = {"img_s": f"{images_per_s:.0f}"} if n_steps > 0 else {}
    s.bar.set_postfix(loss=f"{metrics['loss']:.4f}", acc=f"{metrics['top1']:.3f}", **speed)
    s.ckpt.check()  # a failed save stops the run now, not at the next save
    return Window(step, time.time())


def evaluate(eval_fn: Callable[..., Any], state: Any, data: Any, mesh: Mesh) -> dict[str, float]:
    """Loss, top-1 and top-5 over the whole eval split, each example counted once (those
    that do not decode, none)."""
    total = None
    batches = ({k: v for k, v in b.items() if k != "skipped"} for b in data.eval_batches())
    for batch in mesh_lib.prefetch_to_mesh(batches, 2, mesh):
        m = eval_fn(state, batch)
        total = m if total is None else jax.tree.map(jnp.add, total, m)
    count = int(jax.device_get(total["count"]))
    data.undecodable.sync()
    expected = data.num_eval - data.undecodable.count(*data.split_range(data.eval_split))
    if count != expected:
        raise AssertionError(f"eval saw {count} examples, expected {expected}")
    data.undecodable.check()
    return {**_means(total), "count": count}


def _evaluate(s: Session, step: int) -> None:
    """Scores the eval split at ``step``, and writes it down with the weights it scored."""
    s.eval_metrics = evaluate(s.eval_fn, s.state, s.data, s.mesh)
    s.writer.write(step, "eval", {**s.eval_metrics, "weights": s.eval_weights})
    s.evals.append({"step": step, **s.eval_metrics})
    m = s.eval_metrics
    s.bar.write(
        f"step {step}: eval ({s.eval_weights} weights) loss {m['loss']:.4f}, top-1 {m['top1']:.4f}, "
        f"top-5 {m['top5']:.4f} ({m['count']} images)"
    )


def _evaluate_resumed_end(s: Session) -> None:
    """A run resumed at its last step whose summary was never written: evaluate it once."""
    s.eval_metrics = evaluate(s.eval_fn, s.state, s.data, s.mesh)
    if not any(r["step"] == s.start_step for r in s.evals):
        s.writer.write(s.start_step, "eval", {**s.eval_metrics, "weights": s.eval_weights})
        s.evals.append({"step": s.start_step, **s.eval_metrics})


def _finish(s: Session, stopped: int, stopped_by: str | None) -> dict[str, Any]:
    """``summary.json``; then the closing line, or ``preemption.Stopped`` for a stop."""
    if jax.process_index() == 0 and s.data.undecodable.describe():
        logging.warning("%s", s.data.undecodable.describe())
    if stopped:
        _write_summary(s, stopped, stopped_by)
        raise preemption.Stopped(stopped_by, stopped, s.total, s.ckpt.directory)
    s.writer.plot(os.path.join(s.workdir, "curves.png"))
    summary = _write_summary(s, s.total)
    if jax.process_index() == 0:
        sessions = f" over {summary['sessions']} sessions" if summary["sessions"] > 1 else ""
        m = s.eval_metrics
        print(
            f"done: final top-1 {m['top1']:.4f} (loss {m['loss']:.4f}), "
            f"best top-1 {summary['best_top1']:.4f} at step {summary['best_step']}, {s.total} steps on "
            f"{summary['devices']} device(s) in {summary['wall_s']:.1f}s wall{sessions} "
            f"({summary['compile_s']:.1f}s compiling), {summary['images_per_s']:.0f} train images/s; "
            f"wrote {s.workdir}",
            flush=True,
        )
    return summary


def _write_summary(s: Session, step: int, stopped_by: str | None = None) -> dict[str, Any]:
    """``summary.json`` (process 0 writes it) of a run finished or stopped at ``step``."""
    done = s.clock.progress()
    # Ties go to the later step, as Orbax's BestN keeps it.
    best = max(reversed(s.evals), key=lambda r: r["top1"]) if s.evals else {"top1": None, "step": None}
    summary = {
        "workdir": s.workdir,
        "status": "stopped" if stopped_by else "finished",
        **({"stopped_by": stopped_by} if stopped_by else {}),
        "steps": step,
        "total_steps": s.total,
        "final": s.eval_metrics,
        "eval_weights": s.eval_weights,
        "best_top1": best["top1"],
        "best_step": best["step"],
        "recipe": s.settings.describe_recipe(),
        "wall_s": done["wall_s"],
        "compile_s": done["compile_s"],
        "train_s": done["train_s"],
        "images_per_s": done["trained_steps"] * s.settings.batch_size / done["train_s"]
        if done["train_s"]
        else 0.0,
        "sessions": done["sessions"],
        "devices": s.mesh.devices.size,
        "undecodable": s.data.undecodable.summary(),  # {split: [path, ...]}, skipped when read
    }
    if jax.process_index() == 0:
        tmp = os.path.join(s.workdir, "summary.json.tmp")
        with open(tmp, "w") as f:
            json.dump(summary, f, indent=1)
        os.replace(tmp, os.path.join(s.workdir, "summary.json"))
    return summary
