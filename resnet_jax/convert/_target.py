"""The flattened variables of a resnet_jax model, filled one path at a time: every
converter writes into one, and each array is checked against the model's own shape."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from resnet_jax.registry import build_model

Variables = dict[str, Any]


def as_numpy(value: Any) -> np.ndarray:
    """A numpy or torch array as float32 numpy, without importing torch."""
    if hasattr(value, "detach"):  # a torch.Tensor; bf16/fp16 go through float32
        value = value.detach().cpu().float().numpy()
    return np.asarray(value, dtype=np.float32)


class Target:
    """The flattened variables of a model, filled one path at a time with shape checks."""

    def __init__(self, model_name: str, num_classes: int, **overrides: Any):
        self.model_name = model_name
        self.model = build_model(model_name, num_classes=num_classes, **overrides)
        size = 32 if self.model.stem == "cifar" else 64
        x = jnp.zeros((1, size, size, self.model.in_channels))
        shapes = jax.eval_shape(lambda: self.model.init(jax.random.key(0), x, train=False))
        self.shapes = traverse_util.flatten_dict(shapes, sep="/")
        self.values: dict[str, np.ndarray] = {}

    def has(self, path: str) -> bool:
        return path in self.shapes

    def put(self, path: str, value: Any, source: str) -> None:
        value = np.asarray(value, dtype=np.float32)
        if path not in self.shapes:
            raise ValueError(f"{source}: {self.model_name} has no variable {path!r}")
        want = tuple(self.shapes[path].shape)
        if value.shape != want:
            raise ValueError(
                f"{source} -> {path}: shape {value.shape} does not match {self.model_name}'s {want}"
            )
        self.values[path] = value

    def result(self) -> Variables:
        missing = sorted(set(self.shapes) - set(self.values))
        if missing:
            raise ValueError(
                f"{self.model_name}: no source for {len(missing)} variable(s), e.g. {missing[:5]}"
            )
        return traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in self.values.items()}, sep="/")
