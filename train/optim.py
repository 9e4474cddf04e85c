"""The optimizer and the learning-rate schedule, as small pure functions of the config:
optax's optimizers with weight decay masked off BatchNorm parameters and biases, optional
clipping and gradient accumulation, and warmup then cosine, piecewise or constant."""

from __future__ import annotations

from typing import Any

import optax
from flax import traverse_util

OPTIMIZERS = ("sgd", "nesterov", "adam", "adamw", "lars", "lamb")
SCHEDULES = ("cosine", "piecewise", "constant")


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
