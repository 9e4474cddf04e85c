"""The models from Flax NNX: a Linen ResNet, with its variables, as an ``nnx.Module``.

``to_nnx`` wraps a model with ``flax.nnx.bridge.ToNNX`` and puts the given variables
(pretrained, converted or trained) into it, after checking every path and shape::

    model, variables = resnet_jax.create_model("resnet50", weights="torchvision_v1")
    net = resnet_jax.to_nnx(model, variables)
    logits = net(images, train=False)                          # eval: running statistics
    logits = net(images, train=True, mutable=["batch_stats"])  # train: batch statistics,
                                                                # running averages updated in place
    optimizer = nnx.Optimizer(net, optax.sgd(0.1), wrt=nnx.Param)

Parameters are ``nnx.Param`` and BatchNorm statistics ``nnx.BatchStat``, under the Linen
names (``net.stage1_block1['conv1']['kernel']``), so ``nnx.state(net, nnx.Param)`` is the
trainable part. ``to_linen_variables`` gives ``{'params', 'batch_stats'}`` back, for
``model.apply``, Orbax or the trainer's ``init_from``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, traverse_util

from resnet_jax.resnet import ResNet


def _sample(model: ResNet) -> jax.Array:
    size = 32 if model.stem == "cifar" else 64
    return jnp.zeros((1, size, size, model.in_channels), jnp.float32)


def to_nnx(model: ResNet, variables: Any | None = None, rngs: nnx.Rngs | None = None) -> nnx.Module:
    """``model`` as an NNX module holding ``variables`` (``{'params', 'batch_stats'}``),
    or freshly initialised ones from ``rngs`` (default ``nnx.Rngs(0)``) when None.

    Raises ValueError naming the path when ``variables`` does not fit ``model``.
    """
    net = nnx.bridge.ToNNX(model, rngs=rngs or nnx.Rngs(0)).lazy_init(_sample(model), train=False)
    if variables is None:
        return net
    want = traverse_util.flatten_dict(to_linen_variables(net), sep="/")
    given = {k: variables[k] for k in ("params", "batch_stats") if k in variables}
    have = traverse_util.flatten_dict(given, sep="/")
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or extra:
        raise ValueError(
            f"variables do not fit {type(model).__name__}: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    for path, value in sorted(have.items()):
        if tuple(jnp.shape(value)) != tuple(want[path].shape):
            raise ValueError(
                f"{path}: shape {tuple(jnp.shape(value))} in variables, {want[path].shape} in the model"
            )
    nnx.update(net, nnx.bridge.variables.linen_vars_to_nnx_attrs(dict(variables)))
    return net


def to_linen_variables(net: nnx.Module) -> dict[str, Any]:
    """``{'params', 'batch_stats'}`` of a module made by ``to_nnx``, as Linen's ``apply``
    takes them."""
    flat: dict[tuple[str, ...], Any] = {}
    for path, var in nnx.to_flat_state(nnx.state(net)):
        if isinstance(var, nnx.Param):
            flat[("params", *map(str, path))] = var.get_value()
        elif isinstance(var, nnx.BatchStat):
            flat[("batch_stats", *map(str, path))] = var.get_value()
    return traverse_util.unflatten_dict(flat)
