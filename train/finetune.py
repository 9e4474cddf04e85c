"""Fine-tuning: what comes in from a source of weights.

``init_from`` is any ``--weights`` string of the library (``resnet_jax.sources``): a
registered weights tag of the model (``torchvision_v1``, or ``resnet50.torchvision_v1``),
a directory written by ``python -m resnet_jax.convert``, or a training workdir (its
newest checkpoint, with its EMA weights when the run kept them unless
``init_from_ema=False``). ``restore_from`` takes every matching array from it; a head of another size (or
any head, with ``reinit_head``) is re-initialised; any other shape mismatch is an error
that names the path and both shapes. It returns a report, which the trainer prints.

Freezing and per-group learning rates are part of the optimizer: ``train.optim``.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from resnet_jax import sources


def _tag_model(init_from: str, model: str | None) -> str | None:
    """The model to name to the resolver: the trainer's for a bare tag, else none (a
    directory names its own, and may differ from the trainer's where only the head does)."""
    if model and not os.path.exists(os.path.expanduser(init_from)) and sources.tag_entry(init_from, model):
        return model
    return None


def restore_from(
    init_from: str,
    params: Any,
    batch_stats: Any,
    model: str | None = None,
    reinit_head: bool = False,
    ema: bool | None = None,
) -> tuple[Any, Any, str]:
    """``params``/``batch_stats`` with every matching array taken from ``init_from``.

    ``init_from`` is resolved by the library's one resolver, ``resnet_jax.sources.resolve``,
    the same that ``python -m resnet_jax.predict --weights`` uses, so the same string
    gives the same weights: a workdir gives its EMA weights when the run kept them
    (``ema=None``; the trainer's ``init_from_ema=True``), or its live ones (``ema=False``).
    ``model`` names the architecture of a bare tag (``torchvision_v1``).

    Returns the new trees and a report listing what was restored, re-initialised
    (missing, a head of another size, or any head with ``reinit_head``) and ignored
    (in the source only).
    """
    try:
        loaded = sources.resolve(init_from, model=_tag_model(init_from, model), ema=ema)
    except ValueError as e:
        raise ValueError(f"init_from={init_from!r}: {e}") from None
    source, where = loaded.variables, loaded.description
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
    stats = tree.get("batch_stats", {})  # GroupNorm nets (resnet50_gn, BiT) have none
    return jax.tree.map(np.asarray, tree["params"]), stats, "\n".join(lines)
