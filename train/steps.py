"""The train state and the sharded train and eval steps: loss, metrics, on-device
normalisation, and ``jax.jit`` over a one-axis ``Mesh`` of every device.

The batch is split on the ``'data'`` axis, the state is replicated and donated. Because
the model sees the global batch as one array, BatchNorm statistics are computed over the
global batch, so N devices reproduce one device's result.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import resnet_jax
from resnet_jax import preprocessing
from train import mixing
from train.mesh import DATA_AXIS
from train.settings import EmaRule, Step

Batch = Mapping[str, jax.Array]
PLAIN = Step()  # no normalisation, mixing, smoothing or EMA: the steps' defaults
# The vmapped axis of the devices' gradients (Step.float32_grad_reduction), which the
# model's BatchNorm averages its statistics over (train_lib.initial_state).
DEVICE_AXIS = "devices"


class TrainState(train_state.TrainState):
    """Flax's TrainState plus the BatchNorm running statistics and an optional EMA of the
    weights and of those statistics (torchvision's and timm's EMA average both)."""

    batch_stats: Any = None
    ema_params: Any = None
    ema_batch_stats: Any = None


@dataclasses.dataclass(frozen=True)
class Ema:
    """When and how the EMA moves (static in the compiled step).

    At every ``every``-th step of an epoch, counted from the epoch's first step as
    torchvision's ``i % model_ema_steps == 0`` (``steps_per_epoch`` 0: of the run), the
    EMA moves towards the new weights by ``1 - decay``. Up to and including the first
    update at step index ``copy_until`` or later it copies them instead: torchvision
    resets its average through the warmup epochs. -1: never copies.
    """

    enabled: bool = False
    decay: float = 0.0
    every: int = 1
    steps_per_epoch: int = 0
    copy_until: int = -1


NO_EMA = Ema()


def ema_schedule(
    rule: EmaRule, steps_per_epoch: int, total: int, batch_size: int, warmup_epochs: float
) -> Ema:
    """The compiled step's ``Ema`` for ``rule`` (``train.settings.EmaRule``): its decay per
    update, every ``rule.every`` steps of an epoch, in a run of ``total`` steps.

    With ``rule.adjust`` the decay is torchvision's (``references/classification/train.py``):
    ``alpha = min(1, (1 - decay) * batch_size * every / epochs)``, decay ``1 - alpha``, so
    that one decay serves any batch, interval and length. ``rule.copy_during_warmup``: the
    EMA copies the weights until the warmup (``warmup_epochs``) ends.
    """
    if not rule.enabled:
        return Ema()  # off
    decay = rule.decay
    if rule.adjust:
        epochs = total / steps_per_epoch
        decay = 1.0 - min(1.0, (1.0 - decay) * batch_size * rule.every / epochs)
    copy_until = int(warmup_epochs * steps_per_epoch) if rule.copy_during_warmup else -1
    return Ema(True, decay, rule.every, steps_per_epoch, copy_until)


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    image_shape: tuple[int, ...],
    rng: jax.Array,
    ema: bool = False,
) -> TrainState:
    """Initialises the model for ``image_shape`` (H, W, C) and wraps it with ``tx``.

    With ``ema`` the state also carries a copy of the params and BatchNorm statistics to
    average into.
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
        ema_batch_stats=jax.tree.map(jnp.copy, variables.get("batch_stats")) if ema else None,
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


def train_step(
    state: TrainState, batch: Batch, rng: jax.Array, step: Step = PLAIN, ema: Ema = NO_EMA, devices: int = 1
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on ``batch`` (``image`` (B, H, W, C), ``label`` (B,)); uint8
    images are normalised with ``step.mean`` and ``step.std`` first (the library's
    ``preprocessing.normalize``, which serving uses too), then mixed on the device when
    ``step.mix`` is enabled (``train.mixing``). The loss is softmax cross-entropy or,
    with ``step.loss='bce'``, binary cross-entropy (``mixing.soft_loss``), against labels
    smoothed by ``step.label_smoothing``.

    ``ema`` moves ``ema_params`` and ``ema_batch_stats`` towards the new values
    (``update_ema``). Returns the new state and the batch's metric sums (see
    ``compute_metrics``).

    With ``step.float32_grad_reduction`` and ``devices`` > 1, each of the ``devices``
    shares of the batch gets its own gradient (a ``vmap`` over ``DEVICE_AXIS``; the
    model's BatchNorm averages its statistics over that axis, so they are the global
    batch's), and the shares are summed in float32: the all-reduce runs on float32 values
    where a bf16 model's would otherwise run on bf16 ones.
    """
    dropout_rng = jax.random.fold_in(rng, state.step)
    images = preprocessing.normalize(batch["image"], step.mean, step.std)
    images, lam = mixing.mix(jax.random.fold_in(dropout_rng, 1), images, step.mix)
    soft = step.mix.enabled or step.loss != "softmax"

    def loss_fn(params, images, labels, rng, scale):
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            images,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": rng},
        )
        if soft:
            targets = mixing.soft_targets(labels, logits.shape[-1], step.label_smoothing)
            targets = mixing.mix_targets(targets, lam)
            per_example = mixing.soft_loss(logits, targets, step.loss, step.bce_threshold)
        else:
            per_example = cross_entropy_loss(logits, labels, step.label_smoothing)
        # A device's share (scale 1 / the global batch) is its part of the global mean.
        loss = jnp.mean(per_example) if scale is None else jnp.sum(per_example) * scale
        return loss, (logits, updates.get("batch_stats", {}), per_example)  # none for GroupNorm

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    labels = batch["label"]
    if step.float32_grad_reduction and devices > 1:
        share = lambda x: x.reshape(devices, x.shape[0] // devices, *x.shape[1:])  # noqa: E731
        per_device = lambda p, x, y: grad_fn(  # noqa: E731
            p, x, y, jax.random.fold_in(dropout_rng, jax.lax.axis_index(DEVICE_AXIS)), 1.0 / labels.shape[0]
        )
        (_, (logits, batch_stats, per_example)), grads = jax.vmap(
            per_device, in_axes=(None, 0, 0), axis_name=DEVICE_AXIS
        )(state.params, share(images), share(labels))
        grads = jax.tree.map(
            lambda g, p: jnp.sum(g.astype(jnp.float32), 0).astype(p.dtype), grads, state.params
        )
        batch_stats = jax.tree.map(lambda x: x[0], batch_stats)  # equal on every share
        logits, per_example = logits.reshape(-1, logits.shape[-1]), per_example.reshape(-1)
    else:
        (_, (logits, batch_stats, per_example)), grads = grad_fn(
            state.params, images, labels, dropout_rng, None
        )
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    if ema.enabled:
        new_state = update_ema(new_state, state.step, ema)
    metrics = compute_metrics(logits, batch["label"])
    if soft:  # report the loss trained on (mixed targets, BCE), not the plain cross-entropy
        metrics["loss"] = jnp.sum(per_example)
    return new_state, metrics


def update_ema(state: TrainState, step: jax.Array, ema: Ema) -> TrainState:
    """``state`` after the optimizer step of index ``step`` (0-based), its EMA moved."""
    index = step % ema.steps_per_epoch if ema.steps_per_epoch else step
    updates = index % ema.every == 0
    copy = step <= _first_update_from(ema.copy_until, ema) if ema.copy_until >= 0 else False
    weight = jnp.where(updates, jnp.where(copy, 1.0, 1.0 - ema.decay), 0.0)
    # An exact copy or an exact no-op where weight is 1 or 0: w*new + (1-w)*old.
    move = lambda new, old: optax.incremental_update(new, old, step_size=weight)  # noqa: E731
    return state.replace(
        ema_params=move(state.params, state.ema_params),
        ema_batch_stats=move(state.batch_stats, state.ema_batch_stats) if state.batch_stats else None,
    )


def _first_update_from(start: int, ema: Ema) -> int:
    """The index of the first EMA update at step index ``start`` or later."""
    step = start
    while (step % ema.steps_per_epoch if ema.steps_per_epoch else step) % ema.every:
        step += 1
    return step


def eval_step(state: TrainState, batch: Batch, step: Step = PLAIN, ema: bool = True) -> dict[str, jax.Array]:
    """Metric sums over a batch; ``batch['mask']`` (B,) marks padding with 0. uint8 images
    are normalised as in ``train_step``.

    Scores the EMA weights and statistics when the state keeps them and ``ema`` is True,
    else the live ones.
    """
    if state.ema_params is None or not ema:
        variables = {"params": state.params, "batch_stats": state.batch_stats}
    else:
        variables = {"params": state.ema_params, "batch_stats": state.ema_batch_stats}
    images = preprocessing.normalize(batch["image"], step.mean, step.std)
    logits = state.apply_fn(variables, images, train=False)
    return compute_metrics(logits, batch["label"], batch.get("mask"))


def make_steps(
    mesh: Mesh, step: Step = PLAIN, ema: Ema = NO_EMA
) -> tuple[Callable[..., tuple[TrainState, dict[str, jax.Array]]], Callable[..., dict[str, jax.Array]]]:
    """The jitted train and eval steps for ``mesh``: replicated, donated state; sharded data;
    uint8 images normalised on the devices with ``step.mean`` and ``step.std``.

    On CPUs they are compiled with ``resnet_jax.xla.compiler_options()`` (XLA's YNNPACK
    kernels) unless ``step.ynnpack`` is False.
    """
    replicated = NamedSharding(mesh, PartitionSpec())
    data = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    options = resnet_jax.xla.compiler_options(mesh.devices.flat[0].platform, step.ynnpack)
    train_fn = jax.jit(
        functools.partial(train_step, step=step, ema=ema, devices=mesh.devices.size),
        in_shardings=(replicated, data, replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,),
        compiler_options=options,
    )
    eval_fn = jax.jit(
        functools.partial(eval_step, step=step),
        in_shardings=(replicated, data),
        out_shardings=replicated,
        compiler_options=options,
        static_argnames=("ema",),
    )
    return train_fn, eval_fn
