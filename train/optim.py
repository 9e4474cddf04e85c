"""The optimizer, in one place: the learning-rate schedule, the base optimizer, the
weight-decay mask, frozen parameters and per-group learning-rate multipliers.

``create_optimizer(optim, schedule, params)`` builds all of it from ``train.settings.Optim``
(the config's fields, checked once by ``train.settings``):

- the base optimizer (``sgd``, ``nesterov``, ``adam``, ``adamw``, ``lars``, ``lamb``) with
  weight decay masked off BatchNorm parameters (and biases unless ``decay_biases``);
- ``freeze``: ``backbone`` (all but the head), part names (``stem``, ``stage1`` ...,
  comma-separated), or a regular expression over ``/``-joined parameter paths. Frozen
  parameters get ``optax.set_to_zero`` through ``optax.multi_transform``: they keep their
  exact values and carry no optimizer state;
- per-group learning rates: ``head_lr_multiplier``, ``backbone_lr_multiplier`` and
  ``layer_decay`` (< 1: each part towards the input gets another factor of it);
- around all groups: clipping by the global norm (``grad_clip_norm``), then gradient
  accumulation over ``grad_accum_steps`` micro-batches (``optax.MultiSteps``).
"""

from __future__ import annotations

import math
import re
from typing import Any

import optax
from flax import traverse_util

from train.settings import Optim

FROZEN = "frozen"


# ---------------------------------------------------------------------------------------
# The schedule.


def create_learning_rate_fn(optim: Optim, steps_per_epoch: int, total: int) -> optax.Schedule:
    """Linear warmup, then cosine, piecewise-constant or constant, over ``total`` steps.

    ``Optim`` fields: ``learning_rate`` (the peak), ``warmup_epochs``,
    ``warmup_start_factor`` (the warmup starts at this times the peak: 0 by default;
    torchvision's ``--lr-warmup-decay`` 0.01), ``lr_schedule``, ``lr_min`` (the cosine's
    floor: timm's ``--min-lr``), ``warmup_prefix`` (True: the cosine starts after the
    warmup, as torchvision's; False: timm's default, one cosine over the whole run whose
    first epochs the warmup replaces), ``lr_boundaries`` (steps, for ``piecewise``; or
    ``lr_boundary_epochs`` when that is empty), ``lr_decay_factor`` (the factor at each
    boundary), and ``lr_unit``: ``step`` changes the lr every step; ``epoch`` holds each
    epoch at the value of its first step, as torchvision's and timm's scripts step their
    schedulers.
    """
    warmup = int(optim.warmup_epochs * steps_per_epoch)
    base = optim.learning_rate
    boundaries = optim.lr_boundaries or tuple(int(e * steps_per_epoch) for e in optim.lr_boundary_epochs)
    floor = optim.lr_min / base if base else 0.0  # as a fraction of the peak
    if optim.lr_schedule == "cosine" and not optim.warmup_prefix:
        # timm's default: one cosine over the whole run, its first `warmup` steps replaced.
        whole = optax.cosine_decay_schedule(base, decay_steps=max(total, 1), alpha=floor)
        main = lambda step: whole(step + warmup)  # noqa: E731
    elif optim.lr_schedule == "cosine":
        main = optax.cosine_decay_schedule(base, decay_steps=max(total - warmup, 1), alpha=floor)
    elif optim.lr_schedule == "piecewise":
        # Boundaries count from step 0 of training, as in He et al. (32k and 48k iterations).
        main = optax.piecewise_constant_schedule(
            base, {int(b) - warmup: optim.lr_decay_factor for b in boundaries}
        )
    else:
        main = optax.constant_schedule(base)
    if warmup > 0:
        start = optim.warmup_start_factor * base
        main = optax.join_schedules([optax.linear_schedule(start, base, warmup), main], [warmup])
    if optim.lr_unit == "epoch":
        per_step = main
        main = lambda step: per_step((step // steps_per_epoch) * steps_per_epoch)  # noqa: E731
    return main


# ---------------------------------------------------------------------------------------
# Parameter groups: decay, frozen parts, learning-rate multipliers.


def decay_mask(params: Any, biases: bool = False) -> Any:
    """True for conv and dense kernels (and biases with ``biases``); False for BatchNorm's
    scales and offsets.

    Decaying a BN scale towards zero fights the normalisation, and decaying biases gains
    nothing (Goyal et al. 2017 §5.1; the "no bias decay" of He et al. 2019). timm's
    recipes exclude both; torchvision's (``--norm-weight-decay 0``) decays the biases.
    """
    flat = traverse_util.flatten_dict(params)
    norm = lambda path: any("norm" in p or p.startswith("bn") for p in path[:-1])  # noqa: E731
    keep = {k: k[-1] == "kernel" or (biases and k[-1] == "bias" and not norm(k)) for k in flat}
    return traverse_util.unflatten_dict(keep)


def part_of(path: tuple[str, ...], num_stages: int) -> str:
    """The part a parameter belongs to: ``stem``, ``stage1`` .. ``stageN`` or ``head``."""
    top = path[0]
    if top.startswith("stem"):
        return "stem"
    if top == "final_norm":  # a v2 network's last norm closes its last stage
        return f"stage{num_stages}"
    if top == "head":
        return "head"
    return top.split("_", 1)[0]


def _num_stages(params: Any) -> int:
    return max(int(k[len("stage") :].split("_")[0]) for k in params if k.startswith("stage"))


def frozen_mask(params: Any, spec: str) -> dict[tuple[str, ...], bool]:
    """``{flat path: frozen?}`` for the ``freeze`` spec; an empty spec freezes nothing."""
    flat = traverse_util.flatten_dict(params)
    n = _num_stages(params)
    spec = spec.strip()
    if not spec:
        return dict.fromkeys(flat, False)
    parts = {"stem", "head", *(f"stage{i}" for i in range(1, n + 1))}
    names = [s.strip() for s in spec.split(",")]
    if spec == "backbone":
        return {k: part_of(k, n) != "head" for k in flat}
    if all(name in parts for name in names):
        return {k: part_of(k, n) in names for k in flat}
    try:
        pattern = re.compile(spec)
    except re.error as e:
        raise ValueError(
            f"freeze={spec!r} is neither 'backbone', part names ({', '.join(sorted(parts))}) "
            f"nor a valid regular expression ({e})"
        ) from None
    mask = {k: bool(pattern.search("/".join(k))) for k in flat}
    if not any(mask.values()):
        example = "/".join(next(iter(flat)))
        raise ValueError(f"freeze={spec!r} matches no parameter; paths look like {example!r}")
    return mask


def frozen_parts(params: Any, spec: str) -> tuple[str, ...]:
    """The parts with any frozen parameter: where ``freeze_batch_stats`` freezes BatchNorm.

    With nothing frozen (``freeze=''``), the trainer passes ``'backbone'``: every part's
    BatchNorm then runs on running averages while all parameters train.
    """
    n = _num_stages(params)
    return tuple(
        sorted({part_of(k, n) for k, frozen in frozen_mask(params, spec).items() if frozen} - {"head"})
    )


def lr_multipliers(optim: Optim, num_stages: int) -> dict[str, float]:
    """``{part: multiplier}``: the head's and the backbone's, times ``layer_decay`` per
    part below the head."""
    order = ["stem", *(f"stage{i}" for i in range(1, num_stages + 1)), "head"]
    decay = optim.layer_decay
    out = {}
    for depth, part in enumerate(order):
        m = optim.head_lr_multiplier if part == "head" else optim.backbone_lr_multiplier
        out[part] = m * decay ** (len(order) - 1 - depth) if decay < 1.0 else m
    return out


# ---------------------------------------------------------------------------------------
# The optimizer.


def _lamb(lr: Any, weight_decay: float, mask: Any) -> optax.GradientTransformation:
    """timm's ``Lamb``: Adam's step (eps 1e-6) plus decoupled decay, scaled by the trust
    ratio ||w|| / ||update|| on the decayed parameters only (timm adapts a group without
    decay only with ``always_adapt``, off by default); optax.lamb adapts every parameter."""
    return optax.chain(
        optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-6),
        optax.add_decayed_weights(weight_decay, mask),
        optax.masked(optax.scale_by_trust_ratio(), mask),
        optax.scale_by_learning_rate(lr),
    )


def base_optimizer(optim: Optim, lr: Any, mask: Any) -> optax.GradientTransformation:
    """The optimizer named by ``optim.optimizer`` at learning rate ``lr`` (a schedule),
    decaying the parameters where ``mask`` is True by ``optim.weight_decay``."""
    name = optim.optimizer
    wd, momentum = optim.weight_decay, optim.momentum
    if name in ("sgd", "nesterov"):
        # Decay added to the gradient before momentum: PyTorch's SGD(weight_decay=...).
        return optax.chain(
            optax.add_decayed_weights(wd, mask=mask),
            optax.sgd(lr, momentum=momentum or None, nesterov=name == "nesterov"),
        )
    if name == "adam":
        return optax.chain(optax.add_decayed_weights(wd, mask=mask), optax.adam(lr))
    if name == "adamw":
        return optax.adamw(lr, weight_decay=wd, mask=mask)
    if name == "lars":
        return optax.lars(
            lr, weight_decay=wd, weight_decay_mask=mask, trust_ratio_mask=mask, momentum=momentum
        )
    return _lamb(lr, wd, mask)


def create_optimizer(
    optim: Optim, learning_rate_fn: optax.Schedule, params: Any = None
) -> optax.GradientTransformation:
    """The whole optimizer for ``params`` (or their shapes): see the module docstring.

    Without ``params`` there are no groups: nothing frozen, every multiplier 1.
    """
    k = optim.grad_accum_steps
    lr = learning_rate_fn
    if k > 1:
        # The schedule is written in train steps (micro-batches); the inner optimizer
        # counts updates, one per k micro-batches.
        lr = lambda count: learning_rate_fn(count * k)  # noqa: E731
    mask = lambda p: decay_mask(p, optim.decay_biases)  # noqa: E731
    spec = optim.freeze
    if params is None:
        if spec:
            raise ValueError(f"freeze={spec!r} needs the parameters: create_optimizer(optim, lr, params)")
        frozen, multipliers, n = {}, {}, 0
    else:
        frozen, n = frozen_mask(params, spec), _num_stages(params)
        multipliers = lr_multipliers(optim, n)
    if not any(frozen.values()) and all(math.isclose(m, 1.0) for m in multipliers.values()):
        tx = base_optimizer(optim, lr, mask)
    else:
        labels = {path: FROZEN if f else part_of(path, n) for path, f in frozen.items()}
        transforms = {FROZEN: optax.set_to_zero()}
        for part in set(labels.values()) - {FROZEN}:
            m = multipliers[part]
            transforms[part] = base_optimizer(optim, lambda step, m=m: m * lr(step), mask)
        tx = optax.multi_transform(transforms, traverse_util.unflatten_dict(labels))
    if optim.grad_clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(optim.grad_clip_norm), tx)
    if k > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=k)
    return tx
