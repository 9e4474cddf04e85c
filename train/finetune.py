"""Fine-tuning: what comes in from a source of weights.

``init_from`` is a registered weights tag of the model (``torchvision_v1``), a directory
written by ``python -m resnet_jax.convert``, or a training workdir (its newest
checkpoint). ``restore`` takes every matching array from it; a head of another size (or
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
