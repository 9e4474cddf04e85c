"""Scoring batches of images with any ``--weights`` source: per image, the cross-entropy
and the top-k class indices, for ``resnet_jax.evaluation``.

A model source (a tag, a converted directory, a workdir) is jitted with the batch of
uint8 crops sharded over every local device and normalised there, and its variables
replicated; an export artifact runs its own compiled graph on its own inputs.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from resnet_jax import sources
from resnet_jax.preprocessing import Preprocessing

TOP_K = 5


@dataclasses.dataclass
class Scorer:
    """What scores a batch: ``score(inputs, labels) -> (loss, top-k indices)`` per image,
    over the inputs ``prepare(image)`` makes (uint8 crops, or an artifact's own inputs)."""

    preprocessing: Preprocessing
    class_names: list[str]
    model: str
    description: str
    devices: int
    param_count: float | None
    prepare: Callable[[np.ndarray], np.ndarray]
    score: Callable[[np.ndarray, np.ndarray], tuple[Any, Any]]


def _model_scorer(loaded: sources.Loaded, preprocessing: Preprocessing) -> Scorer:
    """(uint8 crops, weights-index labels) -> (loss, top-k), jitted with the batch sharded
    over every local device, normalised there, and the variables replicated."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.asarray(jax.local_devices()), ("batch",))
    batch, replicated = NamedSharding(mesh, PartitionSpec("batch")), NamedSharding(mesh, PartitionSpec())
    variables = {
        "params": loaded.variables["params"],
        "batch_stats": loaded.variables.get("batch_stats") or {},
    }
    variables = jax.device_put(variables, replicated)
    k = min(TOP_K, len(loaded.class_names))

    def score(variables, crops, labels):
        logits = loaded.model.apply(variables, preprocessing.finish(crops), train=False).astype(jnp.float32)
        log_p = jax.nn.log_softmax(logits)
        loss = -jnp.take_along_axis(log_p, labels[:, None], axis=-1)[:, 0]
        return loss, jax.lax.top_k(logits, k)[1]

    jitted = jax.jit(score, in_shardings=(replicated, batch, batch), out_shardings=batch)
    params = sum(int(np.size(x)) for x in jax.tree.leaves(loaded.variables["params"]))
    return Scorer(
        preprocessing, loaded.class_names, loaded.name, loaded.description, jax.local_device_count(),
        params / 1e6, preprocessing.crop, lambda x, y: jax.device_get(jitted(variables, x, y)),
    )  # fmt: skip


def _artifact_scorer(path: str) -> Scorer:
    """An export artifact, on its own model inputs (its preprocessing is compiled in)."""
    from resnet_jax.classifier import Classifier

    served = Classifier.from_artifact(path)
    k = min(TOP_K, len(served.class_names))

    def score(inputs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = np.asarray(served.forward(inputs), np.float64)
        loss = -np.log(np.maximum(p[np.arange(len(labels)), labels], 1e-45))
        return loss, Classifier.top_indices(p, k)

    return Scorer(served.preprocessing, served.class_names, "", path, 1, None, served.input, score)


def scorer(
    weights: str,
    model: str | None,
    ema: bool | None,
    overrides: dict[str, Any],
    override: Callable[..., Preprocessing],
) -> Scorer:
    """The scorer of ``weights``, its preprocessing changed by ``override(preprocessing,
    **overrides)``; an export artifact takes no override."""
    path = os.path.expanduser(weights)
    if os.path.isfile(path) and (path.endswith(".jaxexport") or os.path.exists(path + ".json")):
        named = [f"--{k.replace('_', '-')}" for k, v in overrides.items() if v is not None]
        if named:
            raise ValueError(
                f"{' and '.join(named)}: an export artifact's input is compiled in; export again"
            )
        return _artifact_scorer(path)
    loaded = sources.resolve(weights, model=model, ema=ema)
    return _model_scorer(loaded, override(loaded.preprocessing, **overrides))
