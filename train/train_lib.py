"""Train state, loss, optimizer, schedules, the sharded train/eval steps, and the loop.

Everything but the loop is a small pure function of the config. Data parallelism is
``jax.jit`` over a one-axis ``Mesh`` of every device (``train.mesh``): the batch is split
on the ``'data'`` axis, the state is replicated and donated. Because the model sees the
global batch as one array, BatchNorm statistics are computed over the global batch, so N
devices reproduce one device's result.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import resnet_jax
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

OPTIMIZERS = ("sgd", "nesterov", "adam", "adamw", "lars", "lamb")
SCHEDULES = ("cosine", "piecewise", "constant")
DTYPES = ("float32", "bfloat16")

Batch = Mapping[str, jax.Array]


class TrainState(train_state.TrainState):
    """Flax's TrainState plus the BatchNorm running statistics and an optional weight EMA."""

    batch_stats: Any = None
    ema_params: Any = None


def _choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(choices)}")
    return value


def create_learning_rate_fn(config: Any, steps_per_epoch: int) -> optax.Schedule:
    """Linear warmup from 0, then cosine, piecewise-constant or constant.

    Config fields: ``learning_rate``, ``warmup_epochs``, ``lr_schedule``, ``num_epochs``
    (or ``num_train_steps`` when > 0), ``lr_boundaries`` (steps, for ``piecewise``; or
    ``lr_boundary_epochs`` when that is empty) and ``lr_decay_factor`` (the factor applied
    at each boundary). With ``lr_base_batch_size`` > 0 the peak is
    ``learning_rate * batch_size / lr_base_batch_size``: the linear scaling rule of
    Goyal et al. 2017 (0.1 per 256 images for ResNet-50 on ImageNet).
    """
    schedule = _choice("lr_schedule", config.lr_schedule, SCHEDULES)
    total = total_steps(config, steps_per_epoch)
    warmup = int(config.warmup_epochs * steps_per_epoch)
    base = config.learning_rate
    if getattr(config, "lr_base_batch_size", 0) > 0:
        base = base * config.batch_size / config.lr_base_batch_size
    boundaries = tuple(config.lr_boundaries) or tuple(
        int(e * steps_per_epoch) for e in getattr(config, "lr_boundary_epochs", ())
    )
    if schedule == "cosine":
        main = optax.cosine_decay_schedule(base, decay_steps=max(total - warmup, 1))
    elif schedule == "piecewise":
        # Boundaries count from step 0 of training, as in He et al. (32k and 48k iterations).
        main = optax.piecewise_constant_schedule(
            base, {int(b) - warmup: config.lr_decay_factor for b in boundaries}
        )
    else:
        main = optax.constant_schedule(base)
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, base, warmup), main], [warmup])


def total_steps(config: Any, steps_per_epoch: int) -> int:
    """``num_train_steps`` when > 0, else ``num_epochs`` epochs (rounded down to whole steps).

    On the command line, ``--config.num_epochs`` clears a config file's ``num_train_steps``
    (``train.main.apply_duration_rule``), so the length asked for is the length trained.
    """
    if config.num_train_steps > 0:
        return int(config.num_train_steps)
    return int(config.num_epochs * steps_per_epoch)


def _duration(config: Any, steps_per_epoch: int, num_train: int) -> tuple[int, str]:
    """The run's steps, and a line saying which field set them."""
    total = total_steps(config, steps_per_epoch)
    field = (
        f"num_train_steps={config.num_train_steps}"
        if config.num_train_steps > 0
        else f"num_epochs={config.num_epochs}"
    )
    if total < 1:
        raise ValueError(
            f"{field} gives 0 steps ({steps_per_epoch} steps of batch {config.batch_size} per epoch of "
            f"{num_train} train images); set num_epochs > 0 or num_train_steps > 0"
        )
    return total, (
        f"{total} steps of batch {config.batch_size} ({field}): {total / steps_per_epoch:.4g} epochs "
        f"of {num_train} train images"
    )


def decay_mask(params: Any) -> Any:
    """True for conv and dense kernels; False for BatchNorm scales/offsets and all biases.

    Decaying a BN scale towards zero fights the normalisation, and decaying biases gains
    nothing (Goyal et al. 2017 §5.1; the "no bias decay" of He et al. 2019).
    """
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({k: k[-1] == "kernel" for k in flat})


def create_optimizer(config: Any, learning_rate_fn: optax.Schedule) -> optax.GradientTransformation:
    """The optimizer named by ``config.optimizer``, with masked weight decay.

    Optional: gradient clipping by global norm (``grad_clip_norm`` > 0) and gradient
    accumulation over ``grad_accum_steps`` micro-batches (optax.MultiSteps).
    """
    name = _choice("optimizer", config.optimizer, OPTIMIZERS)
    wd, lr, momentum = config.weight_decay, learning_rate_fn, config.momentum
    k = config.grad_accum_steps
    if k > 1:
        # The schedule is written in train steps (micro-batches); the inner optimizer
        # counts updates, one per k micro-batches.
        lr = lambda count: learning_rate_fn(count * k)  # noqa: E731
    if name in ("sgd", "nesterov"):
        # Decay added to the gradient before momentum: PyTorch's SGD(weight_decay=...).
        tx = optax.chain(
            optax.add_decayed_weights(wd, mask=decay_mask),
            optax.sgd(lr, momentum=momentum or None, nesterov=name == "nesterov"),
        )
    elif name == "adam":
        tx = optax.chain(optax.add_decayed_weights(wd, mask=decay_mask), optax.adam(lr))
    elif name == "adamw":
        tx = optax.adamw(lr, weight_decay=wd, mask=decay_mask)
    elif name == "lars":
        tx = optax.lars(
            lr, weight_decay=wd, weight_decay_mask=decay_mask, trust_ratio_mask=decay_mask, momentum=momentum
        )
    else:
        tx = optax.lamb(lr, weight_decay=wd, mask=decay_mask)
    if config.grad_clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
    if config.grad_accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=config.grad_accum_steps)
    return tx


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    image_shape: tuple[int, ...],
    rng: jax.Array,
    ema: bool = False,
) -> TrainState:
    """Initialises the model for ``image_shape`` (H, W, C) and wraps it with ``tx``.

    With ``ema`` the state also carries a copy of the params to average into.
    """
    x = jnp.zeros((1, *image_shape), jnp.float32)
    variables = jax.jit(functools.partial(model.init, train=False))(rng, x)
    params = variables["params"]
    return TrainState.create(
        apply_fn=model.apply,
        params=params,
        tx=tx,
        batch_stats=variables.get("batch_stats"),
        ema_params=jax.tree.map(jnp.copy, params) if ema else None,
    )


def cross_entropy_loss(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross-entropy, (B, K) float logits, (B,) int labels -> (B,)."""
    targets = jax.nn.one_hot(labels, logits.shape[-1])
    if label_smoothing > 0:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def compute_metrics(
    logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None
) -> dict[str, jax.Array]:
    """Sums of loss, top-1 and top-5 hits over the real (mask == 1) examples, and their count.

    Sums rather than means, so that padded eval batches add up exactly over a split.
    """
    mask = jnp.ones(labels.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
    loss = cross_entropy_loss(logits, labels)
    k = min(5, logits.shape[-1])
    topk = jax.lax.top_k(logits, k)[1]
    top1 = topk[:, 0] == labels
    top5 = jnp.any(topk == labels[:, None], axis=-1)
    return {
        "loss": jnp.sum(loss * mask),
        "top1": jnp.sum(top1 * mask),
        "top5": jnp.sum(top5 * mask),
        "count": jnp.sum(mask),
    }


def normalize_images(
    images: jax.Array, mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,)
) -> jax.Array:
    """uint8 images, as the input pipeline yields them -> float32 ``(x / 255 - mean) / std``
    per channel. Images of any other dtype are taken to be model inputs already.
    """
    if images.dtype != jnp.uint8:
        return images
    # One multiply and one add per pixel, with the constants computed once on the host.
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    per_channel = (1,) * (images.ndim - 1) + (-1,)  # broadcast explicitly: no rank promotion
    scale = jnp.asarray((1.0 / (255.0 * std)).astype(np.float32).reshape(per_channel))
    offset = jnp.asarray((-mean / std).astype(np.float32).reshape(per_channel))
    return images.astype(jnp.float32) * scale + offset


def train_step(
    state: TrainState,
    batch: Batch,
    rng: jax.Array,
    label_smoothing: float = 0.0,
    ema_decay: float = 0.0,
    mean: Sequence[float] = (0.0,),
    std: Sequence[float] = (1.0,),
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on ``batch`` (``image`` (B, H, W, C), ``label`` (B,)); uint8
    images are normalised with ``mean`` and ``std`` first (``normalize_images``).

    With ``ema_decay`` > 0, ``ema_params`` moves towards the new params by ``1 - ema_decay``.
    Returns the new state and the batch's metric sums (see ``compute_metrics``).
    """
    dropout_rng = jax.random.fold_in(rng, state.step)

    def loss_fn(params):
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            normalize_images(batch["image"], mean, std),
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": dropout_rng},
        )
        loss = jnp.mean(cross_entropy_loss(logits, batch["label"], label_smoothing))
        return loss, (logits, updates["batch_stats"])

    (_, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    if ema_decay > 0:
        ema = optax.incremental_update(new_state.params, state.ema_params, step_size=1.0 - ema_decay)
        new_state = new_state.replace(ema_params=ema)
    return new_state, compute_metrics(logits, batch["label"])


def eval_step(
    state: TrainState, batch: Batch, mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,)
) -> dict[str, jax.Array]:
    """Metric sums over a batch; ``batch['mask']`` (B,) marks padding with 0. uint8 images
    are normalised as in ``train_step``.

    Evaluates the EMA weights when the state keeps them.
    """
    params = state.params if state.ema_params is None else state.ema_params
    variables = {"params": params, "batch_stats": state.batch_stats}
    logits = state.apply_fn(variables, normalize_images(batch["image"], mean, std), train=False)
    return compute_metrics(logits, batch["label"], batch.get("mask"))


def make_steps(
    mesh: Mesh,
    label_smoothing: float = 0.0,
    ema_decay: float = 0.0,
    ynnpack: bool = True,
    mean: Sequence[float] = (0.0,),
    std: Sequence[float] = (1.0,),
) -> tuple[Callable[..., tuple[TrainState, dict[str, jax.Array]]], Callable[..., dict[str, jax.Array]]]:
    """The jitted train and eval steps for ``mesh``: replicated, donated state; sharded data;
    uint8 images normalised on the devices with ``mean`` and ``std``.

    On CPUs they are compiled with ``resnet_jax.xla.compiler_options()`` (XLA's YNNPACK
    kernels) unless ``ynnpack`` is False.
    """
    replicated = NamedSharding(mesh, PartitionSpec())
    data = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    options = resnet_jax.xla.compiler_options(mesh.devices.flat[0].platform, ynnpack)
    p_train = jax.jit(
        functools.partial(
            train_step, label_smoothing=label_smoothing, ema_decay=ema_decay, mean=tuple(mean), std=tuple(std)
        ),
        in_shardings=(replicated, data, replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,),
        compiler_options=options,
    )
    p_eval = jax.jit(
        functools.partial(eval_step, mean=tuple(mean), std=tuple(std)),
        in_shardings=(replicated, data),
        out_shardings=replicated,
        compiler_options=options,
    )
    return p_train, p_eval


# ---------------------------------------------------------------------------------------
# The loop.


def _check_workdir(workdir: str) -> str:
    """Creates ``workdir`` and proves it writable before any work starts."""
    workdir = os.path.abspath(os.path.expanduser(workdir))
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_test"):
            pass
    except OSError as e:
        raise ValueError(f"workdir {workdir!r} is not writable: {e.strerror or e}") from e
    return workdir


def _check_config(config: Any) -> None:
    """Cheap checks of names and values, before any data is read."""
    from train.input_pipeline import augment

    _choice("optimizer", config.optimizer, OPTIMIZERS)
    _choice("lr_schedule", config.lr_schedule, SCHEDULES)
    _choice("dtype", config.dtype, DTYPES)
    _choice("augment", config.augment, augment.AUGMENTATIONS)
    if config.model not in resnet_jax.list_models():
        resnet_jax.create_model(config.model)  # raises, with close-name suggestions
    for field in ("batch_size", "log_every_steps", "grad_accum_steps", "keep_checkpoints"):
        if config[field] < 1:
            raise ValueError(f"config.{field}={config[field]} must be >= 1")
    if not 0.0 <= config.ema_decay < 1.0:
        raise ValueError(f"config.ema_decay={config.ema_decay} must be in [0, 1)")
    if config.num_train_steps <= 0 and config.num_epochs <= 0:
        raise ValueError(
            f"num_epochs={config.num_epochs} and num_train_steps={config.num_train_steps} give a run of 0 "
            "steps; set num_epochs > 0, or num_train_steps > 0 (which wins when both are set)"
        )


def _check_init_from(config: Any) -> None:
    """Freezing only makes sense for weights that came from somewhere: a fresh run that
    freezes without ``init_from`` would train a head on random features."""
    frozen = [f"freeze={config.freeze!r}"] if config.freeze.strip() else []
    frozen += ["freeze_batch_stats=True"] if config.freeze_batch_stats else []
    if frozen and not config.init_from:
        raise ValueError(
            f"{' and '.join(frozen)} with no init_from would freeze randomly initialised weights. Set "
            "--config.init_from=SOURCE (a weights tag such as torchvision_v1, a `python -m "
            "resnet_jax.convert` directory or a workdir), or train every weight from a random init "
            "with --config.freeze='' --config.freeze_batch_stats=False"
        )


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
    _check_config(config)
    existed = os.path.exists(os.path.abspath(os.path.expanduser(workdir)))
    workdir = _check_workdir(workdir)
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
        _check_init_from(config)
    data = input_pipeline.create_data(config)
    ckpt.data = data.identity()
    for split, files in data.source.skipped.items():
        logging.warning(
            "skipped %d undecodable image(s) in split %r: %s", len(files), split, ", ".join(files[:5])
        )
    total, duration = _duration(config, data.steps_per_epoch, data.num_train)

    model_kw = dict(
        num_classes=data.num_classes,
        in_channels=data.image_shape[-1],
        dtype=jnp.dtype(config.dtype),
        drop_rate=config.drop_rate,
    )
    model = resnet_jax.create_model(config.model, **model_kw)
    x = jnp.zeros((1, *data.image_shape), jnp.float32)
    param_shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)["params"]
    if config.freeze_batch_stats:
        parts = finetune.frozen_parts(param_shapes, config.freeze or "backbone")
        model = resnet_jax.create_model(config.model, frozen_norm_parts=parts, **model_kw)
    learning_rate_fn = create_learning_rate_fn(config, data.steps_per_epoch)
    tx = finetune.create_optimizer(config, learning_rate_fn, param_shapes, create_optimizer)
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
        )
    state = replicate(state, mesh)
    step_rng = replicate(step_rng, mesh)
    batches = DevicePrefetchIterator(data.train_iterator(), mesh, config.prefetch)
    try:
        state, start_step, before = ckpt.restore(state, mesh, batches)
        summary = _read_summary(workdir)
        finished = start_step >= total and summary is not None and summary.get("steps") == start_step
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
        mesh, config.label_smoothing, config.ema_decay, config.cpu_ynnpack, config.mean, config.std
    )
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
            is_eval = step % eval_every == 0 or step == total
            is_ckpt = step % ckpt_every == 0 or step == total
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
                images_per_s = n_steps * config.batch_size / elapsed if elapsed > 0 and n_steps > 0 else 0.0
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
            if is_eval:
                eval_metrics = evaluate(p_eval, state, data, mesh)
                writer.write(step, "eval", eval_metrics)
                evals.append({"step": step, **eval_metrics})
                bar.write(
                    f"step {step}: eval loss {eval_metrics['loss']:.4f}, top-1 {eval_metrics['top1']:.4f}, "
                    f"top-5 {eval_metrics['top5']:.4f} ({eval_metrics['count']} images)"
                )
                log_time = time.time()
            if is_ckpt:
                ckpt.save(step, state, batches, eval_metrics if is_eval else None, progress())
                log_time = time.time()
    finally:
        batches.close()  # grain's worker processes and shared memory
        bar.close()  # ends its line, so that an error message starts on its own
    if eval_metrics is None:  # resumed a run whose summary was not written: evaluate it
        eval_metrics = evaluate(p_eval, state, data, mesh)
        if not any(r["step"] == start_step for r in evals):
            writer.write(start_step, "eval", eval_metrics)
            evals.append({"step": start_step, **eval_metrics})
    ckpt.wait()
    ckpt.close()
    writer.close()
    writer.plot(os.path.join(workdir, "curves.png"))
    # Ties go to the later step, as Orbax's BestN keeps it.
    best = max(reversed(evals), key=lambda r: r["top1"])
    done = progress()
    summary = {
        "workdir": workdir,
        "steps": total,
        "final": eval_metrics,
        "best_top1": best["top1"],
        "best_step": best["step"],
        "wall_s": done["wall_s"],
        "compile_s": done["compile_s"],
        "train_s": done["train_s"],
        "images_per_s": done["trained_steps"] * config.batch_size / done["train_s"]
        if done["train_s"]
        else 0.0,
        "sessions": done["sessions"],
        "devices": mesh.devices.size,
    }
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
        sessions = f" over {summary['sessions']} sessions" if summary["sessions"] > 1 else ""
        print(
            f"done: final top-1 {eval_metrics['top1']:.4f} (loss {eval_metrics['loss']:.4f}), "
            f"best top-1 {best['top1']:.4f} at step {best['step']}, {total} steps on "
            f"{summary['devices']} device(s) in {summary['wall_s']:.1f}s wall{sessions} "
            f"({summary['compile_s']:.1f}s compiling), {summary['images_per_s']:.0f} train images/s; "
            f"wrote {workdir}",
            flush=True,
        )
    return summary
