"""The training loop: config checks, data, state, resume, train, evaluate, checkpoint.

Its pieces are small pure functions of the config, in their own files and re-exported
here: the checks before a run (``train.checks``), the optimizer and schedule
(``train.optim``), the state, EMA and sharded steps (``train.steps``), the mesh
(``train.mesh``). Data parallelism is ``jax.jit`` over a one-axis ``Mesh`` of every
device: the batch is split on the ``'data'`` axis, the state is replicated and donated,
and BatchNorm statistics are computed over the global batch, so N devices reproduce one
device's result.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

import resnet_jax
from train import checks, mixing, preemption
from train.mesh import (  # noqa: F401  (re-exported: the trainer's public pieces)
    DATA_AXIS,
    DevicePrefetchIterator,
    check_batch_size,
    create_mesh,
    prefetch_to_mesh,
    replicate,
    shard_batch,
)
from train.metric_writer import MetricWriter
from train.optim import (  # noqa: F401  (re-exported)
    OPTIMIZERS,
    SCHEDULES,
    _choice,
    create_learning_rate_fn,
    create_optimizer,
    decay_mask,
    frozen_parts,
    total_steps,
)
from train.steps import (  # noqa: F401  (re-exported)
    Batch,
    Ema,
    TrainState,
    compute_metrics,
    create_train_state,
    cross_entropy_loss,
    ema_config,
    eval_step,
    make_steps,
    normalize_images,
    train_step,
)

DTYPES = checks.DTYPES


# ---------------------------------------------------------------------------------------
# The loop.


def _means(sums: Mapping[str, Any]) -> dict[str, float]:
    sums = {k: float(v) for k, v in jax.device_get(sums).items()}
    n = max(sums["count"], 1.0)
    return {"loss": sums["loss"] / n, "top1": sums["top1"] / n, "top5": sums["top5"] / n}


def evaluate(p_eval: Callable[..., Any], state: TrainState, data: Any, mesh: Mesh) -> dict[str, float]:
    """Loss, top-1 and top-5 over the whole eval split, each example counted once."""
    total = None
    for batch in prefetch_to_mesh(data.eval_batches(), 2, mesh):
        m = p_eval(state, batch)
        total = m if total is None else jax.tree.map(jnp.add, total, m)
    count = int(jax.device_get(total["count"]))
    if count != data.num_eval:
        raise AssertionError(f"eval saw {count} examples, expected {data.num_eval}")
    return {**_means(total), "count": count}


def train_and_evaluate(config: Any, workdir: str) -> dict[str, Any]:
    """Trains ``config`` into ``workdir``, resuming from its newest readable checkpoint.

    Returns a summary, also written to ``workdir/summary.json``: final and best eval
    metrics, steps, and wall time, compile time and images/s summed over every session
    that trained the run (a session's steps after its last checkpoint are redone by the
    next one and counted once). A finished workdir is left as it is and its summary
    returned. A workdir that this call created is removed again if the call fails before
    writing a checkpoint or a metric into it.
    """
    start_time = time.time()
    checks.check_config(config)
    existed = os.path.exists(os.path.abspath(os.path.expanduser(workdir)))
    workdir = checks.check_workdir(workdir)
    try:
        return _train_and_evaluate(config, workdir, start_time)
    except BaseException:
        if not existed and jax.process_index() == 0:
            _remove_if_empty(workdir)
        raise


def _remove_if_empty(directory: str) -> None:
    """Removes ``directory`` when the failed run wrote nothing of use into it: no
    checkpoint, no metrics (at most TensorBoard's empty event file)."""
    files = [os.path.relpath(os.path.join(d, f), directory) for d, _, fs in os.walk(directory) for f in fs]
    if all(f.startswith("tensorboard" + os.sep) for f in files):
        shutil.rmtree(directory, ignore_errors=True)


def _read_summary(workdir: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(workdir, "summary.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _train_and_evaluate(config: Any, workdir: str, start_time: float) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from train import checkpointing, finetune, input_pipeline

    mesh = create_mesh()
    check_batch_size(config.batch_size, mesh)
    check_batch_size(config.eval_batch_size or config.batch_size, mesh)
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), config.keep_checkpoints, config)
    if ckpt.latest_step() is None:
        checks.check_init_from(config)
    data = input_pipeline.create_data(config)
    ckpt.data = data.identity()
    for split, files in data.source.skipped.items():
        logging.warning(
            "skipped %d undecodable image(s) in split %r: %s", len(files), split, ", ".join(files[:5])
        )
    total, duration = checks.duration(config, data.steps_per_epoch, data.num_train)

    model_kw = dict(
        num_classes=data.num_classes,
        in_channels=data.image_shape[-1],
        dtype=jnp.dtype(config.dtype),
        drop_rate=config.drop_rate,
        drop_path_rate=config.drop_path_rate,
        zero_init_last=config.zero_init_last,
    )
    model = resnet_jax.create_model(config.model, **model_kw)
    x = jnp.zeros((1, *data.image_shape), jnp.float32)
    param_shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)["params"]
    if config.freeze_batch_stats:
        parts = frozen_parts(param_shapes, config.freeze or "backbone")
        model = resnet_jax.create_model(config.model, frozen_norm_parts=parts, **model_kw)
    learning_rate_fn = create_learning_rate_fn(config, data.steps_per_epoch)
    tx = create_optimizer(config, learning_rate_fn, param_shapes)
    init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
    state = create_train_state(model, tx, data.image_shape, init_rng, ema=config.ema_decay > 0)

    if config.init_from and ckpt.latest_step() is None:
        params, batch_stats, report = finetune.restore(
            config.init_from, state.params, state.batch_stats, config.model, config.reinit_head
        )
        if jax.process_index() == 0:
            print(report, flush=True)
        state = state.replace(
            params=params,
            batch_stats=batch_stats,
            opt_state=tx.init(params),
            ema_params=jax.tree.map(np.copy, params) if config.ema_decay > 0 else None,
            ema_batch_stats=jax.tree.map(np.copy, batch_stats) if config.ema_decay > 0 else None,
        )
    state = replicate(state, mesh)
    step_rng = replicate(step_rng, mesh)
    batches = DevicePrefetchIterator(data.train_iterator(), mesh, config.prefetch)
    try:
        state, start_step, before = ckpt.restore(state, mesh, batches)
        summary = _read_summary(workdir)
        finished = (
            start_step >= total
            and summary is not None
            and summary.get("status", "finished") == "finished"
            and summary.get("steps") == start_step
        )
        if start_step > total and not finished:
            raise ValueError(
                f"the checkpoint in {workdir} is at step {start_step}, past this run's {total} steps "
                f"({duration}); give the run at least {start_step} steps, or use a new --workdir"
            )
        writer = None if finished else MetricWriter(workdir, start_step)
    except BaseException:  # the workers of the input stream end here, not at garbage collection
        batches.close()
        ckpt.close()
        raise
    if finished:  # nothing to train, evaluate or rewrite
        batches.close()
        ckpt.close()
        if jax.process_index() == 0:
            print(
                f"{workdir} is finished: its checkpoint is at step {start_step} of {total}, final top-1 "
                f"{summary['final']['top1']:.4f}, best {summary['best_top1']:.4f} at step "
                f"{summary['best_step']}. Nothing was changed; to train on, raise num_train_steps "
                "or num_epochs.",
                flush=True,
            )
        return summary
    if jax.process_index() == 0:
        if start_step:
            print(f"resuming from the checkpoint at step {start_step} of {total} in {workdir}", flush=True)
        print(duration, flush=True)
    p_train, p_eval = make_steps(
        mesh, config.label_smoothing, ema_config(config, data.steps_per_epoch, total), config.cpu_ynnpack,
        config.mean, config.std,
        mix=mixing.mix_config(config), loss=config.loss, bce_threshold=config.bce_threshold,
    )  # fmt: skip
    eval_every = config.eval_every_steps or data.steps_per_epoch
    ckpt_every = config.checkpoint_every_steps or data.steps_per_epoch

    evals = [r for r in writer.records if r["split"] == "eval"]
    eval_metrics: dict[str, float] | None = None
    bar = tqdm(
        total=total, initial=start_step, unit="step", dynamic_ncols=True, disable=jax.process_index() != 0
    )
    sums, log_start, log_time = None, start_step, time.time()
    compile_s, train_s, trained = 0.0, 0.0, 0

    def progress() -> dict[str, float]:
        """Time and step counts of every session so far, this one up to now."""
        return {
            "wall_s": before.get("wall_s", 0.0) + time.time() - start_time,
            "compile_s": before.get("compile_s", 0.0) + compile_s,
            "train_s": before.get("train_s", 0.0) + train_s,
            "trained_steps": before.get("trained_steps", 0) + trained,
            "sessions": before.get("sessions", 0) + 1,
        }

    # A stop signal (train/preemption.py) ends the loop after its step, which is saved before
    # the handlers go: a second signal meanwhile is caught and ignored.
    signals, stopped = preemption.StopSignals(config.stop_signals), 0
    with signals:
        try:
            for step in range(start_step + 1, total + 1):
                batch = next(batches)
                t = time.time()
                state, metrics = p_train(state, batch, step_rng)
                if step == start_step + 1:
                    compile_s = time.time() - t  # the first call compiles, and blocks while it does
                    log_time = time.time()
                sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
                bar.update(1)
                stopping = step < total and signals.reached(step)
                is_eval = step % eval_every == 0 or step == total
                is_ckpt = step % ckpt_every == 0 or step == total or stopping
                if step % config.log_every_steps == 0 or is_eval or is_ckpt:
                    # Fetching the sums is the loop's only host sync, and it guards every save.
                    train_metrics = _means(sums)
                    if not all(math.isfinite(v) for v in train_metrics.values()):
                        last = ckpt.latest_step()
                        ckpt.wait()
                        kept = (
                            f"The last good checkpoint (step {last}) is kept in {ckpt.directory}."
                            if last is not None
                            else "No checkpoint had been saved yet, so the run has nothing to resume from."
                        )
                        raise FloatingPointError(
                            f"non-finite train loss between steps {log_start + 1} and {step} "
                            f"({train_metrics}); stopped without saving. {kept} Lower learning_rate "
                            f"(now {config.learning_rate}) or set grad_clip_norm."
                        )
                    elapsed = time.time() - log_time
                    n_steps = step - log_start - (1 if log_start == start_step else 0)
                    images_per_s = (
                        n_steps * config.batch_size / elapsed if elapsed > 0 and n_steps > 0 else 0.0
                    )
                    if n_steps > 0:
                        train_s, trained = train_s + elapsed, trained + n_steps
                    train_metrics.update(lr=float(learning_rate_fn(step - 1)), images_per_s=images_per_s)
                    writer.write(step, "train", train_metrics)
                    bar.set_postfix(
                        loss=f"{train_metrics['loss']:.4f}",
                        acc=f"{train_metrics['top1']:.3f}",
                        img_s=f"{images_per_s:.0f}",
                    )
                    sums, log_start, log_time = None, step, time.time()
                    ckpt.check()  # a failed save stops the run now, not at the next save
                if is_eval:
                    eval_metrics = evaluate(p_eval, state, data, mesh)
                    writer.write(step, "eval", eval_metrics)
                    evals.append({"step": step, **eval_metrics})
                    bar.write(
                        f"step {step}: eval loss {eval_metrics['loss']:.4f}, "
                        f"top-1 {eval_metrics['top1']:.4f}, top-5 {eval_metrics['top5']:.4f} "
                        f"({eval_metrics['count']} images)"
                    )
                    log_time = time.time()
                if is_ckpt:
                    ckpt.save(step, state, batches, eval_metrics if is_eval else None, progress())
                    log_time = time.time()
                if stopping:
                    stopped = step
                    break
        finally:
            batches.close()  # grain's worker processes and shared memory
            bar.close()  # ends its line, so that an error message starts on its own
        if stopped:  # a second signal meanwhile is caught, and ignored
            ckpt.wait()
            ckpt.close()
            writer.close()
            done = progress()
            _write_summary(
                workdir, total, stopped, eval_metrics, evals, done, config.batch_size, mesh, signals.name
            )
            raise preemption.Stopped(signals.name, stopped, total, ckpt.directory)
    if eval_metrics is None:  # resumed a run whose summary was not written: evaluate it
        eval_metrics = evaluate(p_eval, state, data, mesh)
        if not any(r["step"] == start_step for r in evals):
            writer.write(start_step, "eval", eval_metrics)
            evals.append({"step": start_step, **eval_metrics})
    ckpt.wait()
    ckpt.close()
    writer.close()
    writer.plot(os.path.join(workdir, "curves.png"))
    summary = _write_summary(workdir, total, total, eval_metrics, evals, progress(), config.batch_size, mesh)
    if jax.process_index() == 0:
        sessions = f" over {summary['sessions']} sessions" if summary["sessions"] > 1 else ""
        print(
            f"done: final top-1 {eval_metrics['top1']:.4f} (loss {eval_metrics['loss']:.4f}), "
            f"best top-1 {summary['best_top1']:.4f} at step {summary['best_step']}, {total} steps on "
            f"{summary['devices']} device(s) in {summary['wall_s']:.1f}s wall{sessions} "
            f"({summary['compile_s']:.1f}s compiling), {summary['images_per_s']:.0f} train images/s; "
            f"wrote {workdir}",
            flush=True,
        )
    return summary


def _write_summary(
    workdir: str,
    total: int,
    step: int,
    eval_metrics: dict[str, float] | None,
    evals: list[dict[str, Any]],
    done: dict[str, float],
    batch_size: int,
    mesh: Mesh,
    stopped_by: str | None = None,
) -> dict[str, Any]:
    """``summary.json`` (process 0 writes it) of a run finished or stopped at ``step``."""
    # Ties go to the later step, as Orbax's BestN keeps it.
    best = max(reversed(evals), key=lambda r: r["top1"]) if evals else {"top1": None, "step": None}
    summary = {
        "workdir": workdir,
        "status": "stopped" if stopped_by else "finished",
        **({"stopped_by": stopped_by} if stopped_by else {}),
        "steps": step,
        "total_steps": total,
        "final": eval_metrics,
        "best_top1": best["top1"],
        "best_step": best["step"],
        "wall_s": done["wall_s"],
        "compile_s": done["compile_s"],
        "train_s": done["train_s"],
        "images_per_s": done["trained_steps"] * batch_size / done["train_s"] if done["train_s"] else 0.0,
        "sessions": done["sessions"],
        "devices": mesh.devices.size,
    }
    if jax.process_index() == 0:
        tmp = os.path.join(workdir, "summary.json.tmp")
        with open(tmp, "w") as f:
            json.dump(summary, f, indent=1)
        os.replace(tmp, os.path.join(workdir, "summary.json"))
    return summary
