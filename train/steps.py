"""The train state and the sharded train and eval steps: loss, metrics, on-device
normalisation, and ``jax.jit`` over a one-axis ``Mesh`` of every device.

The batch is split on the ``'data'`` axis, the state is replicated and donated. Because
the model sees the global batch as one array, BatchNorm statistics are computed over the
global batch, so N devices reproduce one device's result.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import resnet_jax
from train import mixing
from train.mesh import DATA_AXIS

Batch = Mapping[str, jax.Array]


class TrainState(train_state.TrainState):
    """Flax's TrainState plus the BatchNorm running statistics and an optional weight EMA."""

    batch_stats: Any = None
    ema_params: Any = None


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
    mix: mixing.MixConfig = mixing.NO_MIXING,
    loss: str = "softmax",
    bce_threshold: float = 0.0,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on ``batch`` (``image`` (B, H, W, C), ``label`` (B,)); uint8
    images are normalised with ``mean`` and ``std`` first (``normalize_images``), then
    mixed on the device when ``mix`` is enabled (``train.mixing``). The loss is softmax
    cross-entropy or, with ``loss='bce'``, binary cross-entropy (``mixing.soft_loss``).

    With ``ema_decay`` > 0, ``ema_params`` moves towards the new params by ``1 - ema_decay``.
    Returns the new state and the batch's metric sums (see ``compute_metrics``).
    """
    dropout_rng = jax.random.fold_in(rng, state.step)
    images = normalize_images(batch["image"], mean, std)
    images, lam = mixing.mix(jax.random.fold_in(dropout_rng, 1), images, mix)
    soft = mix.enabled or loss != "softmax"

    def loss_fn(params):
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            images,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": dropout_rng},
        )
        if soft:
            targets = mixing.soft_targets(batch["label"], logits.shape[-1], label_smoothing)
            per_example = mixing.soft_loss(logits, mixing.mix_targets(targets, lam), loss, bce_threshold)
        else:
            per_example = cross_entropy_loss(logits, batch["label"], label_smoothing)
        return jnp.mean(per_example), (logits, updates["batch_stats"], per_example)

    (_, (logits, batch_stats, per_example)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    if ema_decay > 0:
        ema = optax.incremental_update(new_state.params, state.ema_params, step_size=1.0 - ema_decay)
        new_state = new_state.replace(ema_params=ema)
    metrics = compute_metrics(logits, batch["label"])
    if soft:  # report the loss trained on (mixed targets, BCE), not the plain cross-entropy
        metrics["loss"] = jnp.sum(per_example)
    return new_state, metrics


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
    mix: mixing.MixConfig = mixing.NO_MIXING,
    loss: str = "softmax",
    bce_threshold: float = 0.0,
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
            train_step,
            label_smoothing=label_smoothing,
            ema_decay=ema_decay,
            mean=tuple(mean),
            std=tuple(std),
            mix=mix,
            loss=loss,
            bce_threshold=bce_threshold,
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
