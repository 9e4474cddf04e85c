"""Fine-tuning: start from saved weights, freeze parts, give parts their own learning rate.

- ``init_from``: a registered weights tag of the model (``torchvision_v1``), a directory
  written by ``python -m resnet_jax.convert``, or a training workdir (its newest
  checkpoint). Matching subtrees are restored; a head of another size is re-initialised;
  any other shape mismatch is an error that names the path and both shapes. ``restore``
  returns a printed report.
- ``freeze``: ``backbone`` (all but the head), part names (``stem``, ``stage1`` ...,
  comma-separated), or a regular expression over ``/``-joined parameter paths. Frozen
  parameters get ``optax.set_to_zero`` through ``optax.multi_transform``: they keep their
  exact values and carry no optimizer state.
- Learning rates per group: ``head_lr_multiplier`` and ``backbone_lr_multiplier``, and
  ``layer_decay`` (< 1: each part towards the input gets another factor of it).
"""

from __future__ import annotations

import os
import re
from typing import Any

import jax
import numpy as np
import optax
from flax import traverse_util

FROZEN = "frozen"


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


def create_optimizer(
    config: Any, learning_rate_fn: optax.Schedule, params: Any, make
) -> optax.GradientTransformation:
    """``make(config, schedule)`` per parameter group, frozen groups set to zero.

    Without freezing or multipliers this is ``make(config, learning_rate_fn)`` itself.
    """
    mask = frozen_mask(params, config.freeze)
    n = _num_stages(params)
    decay = config.layer_decay
    multipliers = {}
    order = ["stem", *(f"stage{i}" for i in range(1, n + 1)), "head"]
    for depth, part in enumerate(order):
        m = config.head_lr_multiplier if part == "head" else config.backbone_lr_multiplier
        if decay < 1.0:
            m *= decay ** (len(order) - 1 - depth)
        multipliers[part] = m
    if not any(mask.values()) and all(m == 1.0 for m in multipliers.values()):
        return make(config, learning_rate_fn)
    labels = {k: FROZEN if frozen else part_of(k, n) for k, frozen in mask.items()}
    transforms = {FROZEN: optax.set_to_zero()}
    for part in set(labels.values()) - {FROZEN}:
        m = multipliers[part]
        transforms[part] = make(config, lambda step, m=m: m * learning_rate_fn(step))
    return optax.multi_transform(transforms, traverse_util.unflatten_dict(labels))


def _load_source(path: str, model: str = "") -> tuple[dict[str, Any], str]:
    """Variables ({'params', 'batch_stats'}) from a registered weights tag of ``model``,
    a converted directory or a workdir."""
    from resnet_jax import convert, pretrained, weights

    if model and not os.path.exists(path) and path in [w.tag for w in weights.list_weights(model)]:
        entry = weights.get_weights(model, path)
        return pretrained.load_pretrained(entry), f"{model} {path} ({entry.url})"
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.exists(os.path.join(path, "metadata.json")):
        variables, meta = convert.load(path)
        return variables, f"{path} ({meta.get('source')} {meta.get('model')}, {meta.get('weights')})"
    from train import checkpointing

    if not os.path.isdir(path):
        raise ValueError(f"init_from={path!r} is neither a converted-weights directory nor a workdir")
    try:
        variables, step = checkpointing.load_variables(path)
    except ValueError as e:
        raise ValueError(f"init_from={path!r}: {e}") from None
    return variables, f"{path} step {step}"


def restore(
    init_from: str, params: Any, batch_stats: Any, model: str = "", reinit_head: bool = False
) -> tuple[Any, Any, str]:
    """``params``/``batch_stats`` with every matching array taken from ``init_from``.

    Returns the new trees and a report listing what was restored, re-initialised
    (missing, a head of another size, or any head with ``reinit_head``) and ignored
    (in the source only).
    """
    source, where = _load_source(init_from, model)
    target = traverse_util.flatten_dict({"params": params, "batch_stats": batch_stats or {}})
    src = traverse_util.flatten_dict({k: source.get(k) or {} for k in ("params", "batch_stats")})
    restored, reinit, out = [], [], dict(target)
    for path, value in target.items():
        name = "/".join(path)
        if path not in src:
            reinit.append(f"{name} (not in the source)")
            continue
        have = tuple(np.shape(src[path]))
        if reinit_head and path[1] == "head":
            reinit.append(f"{name} (reinit_head)")
            continue
        if have != tuple(value.shape):
            if path[1] == "head":
                reinit.append(f"{name} (source {have}, model {tuple(value.shape)})")
                continue
            raise ValueError(
                f"init_from={init_from!r}: {name} has shape {have} in the source but {tuple(value.shape)} "
                "in the model; only the head may differ"
            )
        out[path] = np.asarray(src[path], dtype=value.dtype)
        restored.append(name)
    ignored = sorted("/".join(p) for p in set(src) - set(target))
    tree = traverse_util.unflatten_dict(out)
    lines = [
        f"init_from {where}: restored {len(restored)} arrays, re-initialised {len(reinit)}, "
        f"ignored {len(ignored)}",
        *(f"  re-initialised {r}" for r in reinit),
        *(f"  ignored {i}" for i in ignored[:20]),
    ]
    return jax.tree.map(np.asarray, tree["params"]), tree.get("batch_stats"), "\n".join(lines)
