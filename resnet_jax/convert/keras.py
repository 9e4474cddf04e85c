"""Keras applications' ResNets (v1 and V2) into resnet_jax variables."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from resnet_jax.convert._target import Target, Variables
from resnet_jax.convert.files import keras_h5_weights

# Keras applications use this BatchNorm epsilon; resnet_jax (like torchvision) uses 1e-5.
#: The BatchNorm epsilon of Keras applications' ResNets (1.001e-5, not 1e-5).
KERAS_BN_EPSILON = 1.001e-5


def _keras_layer_map(name: str, preact: bool) -> tuple[str, str] | None:
    """Maps a Keras layer name to (resnet_jax module path, kind)."""
    if name == "conv1_conv":
        return "stem_conv", "conv"
    if name == "conv1_bn":
        return "stem_norm", "bn"
    if name == "post_bn":
        return "final_norm", "bn"
    if name == "predictions":
        return "head", "dense"
    m = re.fullmatch(r"conv(\d+)_block(\d+)_(preact|\d)_(conv|bn)", name)
    if m is None:
        return None
    stage, block, idx, kind = int(m[1]) - 1, int(m[2]), m[3], m[4]
    prefix = f"stage{stage}_block{block}"
    if idx == "preact":
        return f"{prefix}/norm1", "bn"
    if idx == "0":
        return f"{prefix}/shortcut_{'conv' if kind == 'conv' else 'norm'}", kind
    # Pre-activation blocks number their norms one ahead: norm1 is the pre-activation.
    i = int(idx)
    return (f"{prefix}/conv{i}", kind) if kind == "conv" else (f"{prefix}/norm{i + preact}", kind)


def keras_weights(model: Any) -> dict[str, list[np.ndarray]]:
    """Reads a live Keras model into ``{layer_name: [arrays]}`` (no Keras import here)."""
    return {
        layer.name: [np.asarray(w) for w in layer.get_weights()]
        for layer in model.layers
        if layer.get_weights()
    }


def keras_preprocessing(model_name: str) -> dict[str, Any]:
    """What ``keras.applications``' ``preprocess_input`` does for ``model_name``'s Keras
    net, as ``resnet_jax.Preprocessing`` fields, and the model overrides the net needs.

    The V2 nets take ``x / 127.5 - 1`` ('tf' mode): mean and std 0.5. The v1 nets take
    'caffe' mode: the channels reversed to BGR, minus the ImageNet mean pixel (in BGR
    order, on the 0-255 scale), unscaled: std 1/255 on the [0, 1] scale. Keras names no
    evaluation crop; the converter writes torchvision's (resize 256, crop 224).
    """
    if model_name.endswith("v2"):
        return {"mean": [0.5] * 3, "std": [0.5] * 3, "channel_order": "RGB", "overrides": {}}
    return {
        "mean": [103.939 / 255, 116.779 / 255, 123.68 / 255],
        "std": [1 / 255] * 3,
        "channel_order": "BGR",
        "overrides": {"stride_in_1x1": True},
    }


def from_keras(weights: Any, model_name: str, *, epsilon: float = 1e-5) -> Variables:
    """Converts Keras applications ``ResNet50/101/152`` or ``ResNet50V2/101V2/152V2``.

    Args:
      weights: a live Keras model, a ``.h5``/``.weights.h5`` path, or
        ``{layer_name: [arrays]}`` in Keras' order
        (conv: kernel[, bias]; BatchNorm: gamma, beta, moving mean, moving variance;
        Dense: kernel, bias).
      model_name: ``resnet50``/``resnet101``/``resnet152`` for the v1 nets, which put
        the stride in the first 1x1, so build the model with
        ``create_model(name, stride_in_1x1=True)``; ``resnet50v2``/``resnet101v2``/
        ``resnet152v2`` for the V2 nets.
      epsilon: BatchNorm epsilon of the target model.

    Returns:
      ``{'params', 'batch_stats'}`` for ``create_model(model_name, num_classes=K)``,
      K taken from the Keras head.

    The v1 nets give every conv a bias; each is followed by a BatchNorm, so the bias is
    folded into that norm's running mean (``BN(z + b)`` with mean ``m`` is ``BN(z)``
    with mean ``m - b``). Keras' epsilon of 1.001e-5 is folded into the variance.
    """
    if isinstance(weights, Mapping):
        layers = weights
    elif isinstance(weights, (str, os.PathLike)):
        layers = keras_h5_weights(os.fspath(weights))
    else:
        layers = keras_weights(weights)
    head = layers.get("predictions")
    num_classes = int(np.shape(head[1])[0]) if head else 0
    target = Target(model_name, num_classes)
    preact = target.has("params/final_norm/scale")
    for name, arrays in layers.items():
        mapped = _keras_layer_map(name, preact)
        if mapped is None:
            raise ValueError(f"Keras layer {name!r} has no counterpart in {model_name}")
        path, kind = mapped
        src = f"Keras layer {name!r}"
        if kind == "bn":
            gamma, beta, mean, var = arrays
            target.put(f"params/{path}/scale", gamma, src)
            target.put(f"params/{path}/bias", beta, src)
            conv_bias = _keras_bias_before(layers, name)
            target.put(f"batch_stats/{path}/mean", np.asarray(mean) - conv_bias, src)
            target.put(f"batch_stats/{path}/var", np.asarray(var) + (KERAS_BN_EPSILON - epsilon), src)
        elif kind in ("conv", "dense"):
            target.put(f"params/{path}/kernel", arrays[0], src)
            if len(arrays) > 1 and target.has(f"params/{path}/bias"):
                target.put(f"params/{path}/bias", arrays[1], src)
    return target.result()


def _keras_bias_before(layers: Mapping[str, Sequence[Any]], bn_name: str) -> Any:
    """The bias of the conv that feeds BatchNorm ``bn_name`` in the v1 nets, else 0."""
    if not bn_name.endswith("_bn") or bn_name.endswith("preact_bn") or bn_name == "post_bn":
        return 0.0
    conv = layers.get(bn_name[: -len("_bn")] + "_conv", ())
    return np.asarray(conv[1]) if len(conv) > 1 else 0.0
