"""Train state, loss, optimizer, schedules and the sharded train/eval steps.

Everything here is a small pure function of the config; the loop that calls them lives
beside it. Data parallelism is ``jax.jit`` over a one-axis ``Mesh`` of every device:
the batch is split on the ``'data'`` axis, the state is replicated and donated. Because
the model sees the global batch as one array, BatchNorm statistics are computed over
the global batch, so N devices reproduce one device's result.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec

OPTIMIZERS = ("sgd", "nesterov", "adam", "adamw", "lars", "lamb")
SCHEDULES = ("cosine", "piecewise", "constant")
DATA_AXIS = "data"

Batch = Mapping[str, jax.Array]


class TrainState(train_state.TrainState):
    """Flax's TrainState plus the BatchNorm running statistics."""

    batch_stats: Any = None


def _choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(choices)}")
    return value


def create_learning_rate_fn(config: Any, steps_per_epoch: int) -> optax.Schedule:
    """Linear warmup from 0, then cosine, piecewise-constant or constant.

    Config fields: ``learning_rate``, ``warmup_epochs``, ``lr_schedule``, ``num_epochs``
    (or ``num_train_steps`` when > 0), ``lr_boundaries`` (steps, for ``piecewise``) and
    ``lr_decay_factor`` (the factor applied at each boundary).
    """
    schedule = _choice("lr_schedule", config.lr_schedule, SCHEDULES)
    total = total_steps(config, steps_per_epoch)
    warmup = int(config.warmup_epochs * steps_per_epoch)
    base = config.learning_rate
    if schedule == "cosine":
        main = optax.cosine_decay_schedule(base, decay_steps=max(total - warmup, 1))
    elif schedule == "piecewise":
        # Boundaries count from step 0 of training, as in He et al. (32k and 48k iterations).
        main = optax.piecewise_constant_schedule(
            base, {int(b) - warmup: config.lr_decay_factor for b in config.lr_boundaries}
        )
    else:
        main = optax.constant_schedule(base)
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, base, warmup), main], [warmup])


def total_steps(config: Any, steps_per_epoch: int) -> int:
    """``num_train_steps`` when > 0, else ``num_epochs`` whole epochs."""
    if config.num_train_steps > 0:
        return int(config.num_train_steps)
    return int(config.num_epochs * steps_per_epoch)


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
    model: nn.Module, tx: optax.GradientTransformation, image_shape: tuple[int, ...], rng: jax.Array
) -> TrainState:
    """Initialises the model for ``image_shape`` (H, W, C) and wraps it with ``tx``."""
    x = jnp.zeros((1, *image_shape), jnp.float32)
    variables = jax.jit(functools.partial(model.init, train=False))(rng, x)
    return TrainState.create(
        apply_fn=model.apply, params=variables["params"], tx=tx, batch_stats=variables.get("batch_stats")
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
    state: TrainState, batch: Batch, rng: jax.Array, label_smoothing: float = 0.0
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on ``batch`` (``image`` (B, H, W, C), ``label`` (B,)).

    Returns the new state and the batch's metric sums (see ``compute_metrics``).
    """
    dropout_rng = jax.random.fold_in(rng, state.step)

    def loss_fn(params):
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            batch["image"],
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": dropout_rng},
        )
        loss = jnp.mean(cross_entropy_loss(logits, batch["label"], label_smoothing))
        return loss, (logits, updates["batch_stats"])

    (_, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    return new_state, compute_metrics(logits, batch["label"])


def eval_step(state: TrainState, batch: Batch) -> dict[str, jax.Array]:
    """Metric sums over a batch; ``batch['mask']`` (B,) marks padding with 0."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    logits = state.apply_fn(variables, batch["image"], train=False)
    return compute_metrics(logits, batch["label"], batch.get("mask"))


def create_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh over every device (of every process), named ``'data'``."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """The global batch must split evenly over the devices."""
    n = mesh.devices.size
    if batch_size % n:
        raise ValueError(
            f"batch_size={batch_size} does not divide over {n} devices; "
            f"use a multiple of {n}, e.g. {max(n, batch_size // n * n)} or {(batch_size // n + 1) * n}"
        )


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Places this process's part of a global batch on the mesh, split on the batch axis."""
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def make_steps(
    mesh: Mesh, label_smoothing: float = 0.0
) -> tuple[Callable[..., tuple[TrainState, dict[str, jax.Array]]], Callable[..., dict[str, jax.Array]]]:
    """The jitted train and eval steps for ``mesh``: replicated, donated state; sharded data."""
    replicated = NamedSharding(mesh, PartitionSpec())
    data = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    p_train = jax.jit(
        functools.partial(train_step, label_smoothing=label_smoothing),
        in_shardings=(replicated, data, replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,),
    )
    p_eval = jax.jit(eval_step, in_shardings=(replicated, data), out_shardings=replicated)
    return p_train, p_eval


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a pytree on every device of ``mesh``."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))
