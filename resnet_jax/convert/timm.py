"""timm's ResNets into resnet_jax variables, and a timm Hub folder's preprocessing.

``from_timm`` converts the ``state_dict`` of timm's ``resnet*``, ResNet-D, ResNeXt, the
SE and ECA nets, the anti-aliased ``resnetaa*``/``resnetblur*``, ResNet-RS (timm's
``ResNet`` layout, torchvision's plus a few names) and BiT (``resnetv2_*_bit``, timm's
``ResNetV2`` layout).

A model that timm saves for the Hugging Face Hub (``timm.models.save_for_hf``, or a
folder downloaded from the Hub) is ``config.json`` beside ``model.safetensors`` (or
``pytorch_model.bin``). Its ``pretrained_cfg`` says how the weights were evaluated;
``hub_folder`` reads both and ``data_config`` turns that config into the evaluation
transform timm's ``validate.py`` applies: ``resolve_data_config(use_test_size=True)``
then ``create_transform(is_training=False)``, i.e. the test size and crop fraction when
the config has them, the shorter side resized to ``floor(size / crop_pct)`` with its
interpolation, a centre crop, and its mean and std.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from resnet_jax.convert._target import Variables
from resnet_jax.convert.files import load_state_dict
from resnet_jax.convert.torchvision import from_torch_layout
from resnet_jax.preprocessing import INTERPOLATIONS

HUB_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
# timm's defaults where a pretrained_cfg is silent (timm.data.constants).
_TIMM_DEFAULTS = {
    "input_size": (3, 224, 224),
    "crop_pct": 0.875,
    "interpolation": "bicubic",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_mode": "center",
}


def from_timm(state_dict: Mapping[str, Any], model_name: str, **overrides: Any) -> Variables:
    """Converts a timm ResNet ``state_dict`` (see the module docstring for the families).

    ``overrides`` are ``ResNet`` fields where timm built the model with other arguments
    than its name's: ``timm.create_model("resnet50", layers=(1, 2, 1, 1))`` converts with
    ``from_timm(sd, "resnet50", stage_sizes=(1, 2, 1, 1))``.

    timm's ResNet-D (deep stem ``conv1.0..6``, avg-pool shortcut ``downsample.1..2``)
    maps onto resnet_jax's ``resnet*d``; a block's channel attention ``se.fc1``,
    ``se.fc2`` (SE) or ``se.conv`` (ECA) onto its ``attn``; ResNet-RS's stem conv
    ``maxpool.0``/``maxpool.1`` onto ``stem_pool_conv``/``stem_pool_norm``; the rest
    share torchvision's layout. Anti-aliasing filters have no weights.
    """
    if any(k.startswith("stages.") for k in state_dict):
        # BiT's pre-activation nets: stem.conv, stages.S.blocks.B.*, a final norm, and
        # head.fc as a 1x1 convolution.
        return from_torch_layout(state_dict, model_name, "timm", _resnetv2_path, head="head.fc", **overrides)
    return from_torch_layout(state_dict, model_name, "timm", **overrides)


_V2_BLOCK = re.compile(r"stages\.(\d+)\.blocks\.(\d+)\.(norm\d|conv\d|downsample\.conv)")


def _resnetv2_path(module: str, is_conv: bool) -> str | None:
    """timm ``ResNetV2`` module name -> resnet_jax module path, or None if unknown (each
    module's name tells conv from norm, so ``is_conv`` is not needed)."""
    named = {"stem.conv": "stem_conv", "norm": "final_norm", "head.fc": "head"}
    if module in named:
        return named[module]
    if re.fullmatch(r"stem\.(conv[123]|norm[12])", module):  # the deep and tiered stems
        return "stem_" + module[5:]
    m = _V2_BLOCK.fullmatch(module)
    if m is None:
        return None
    part = "shortcut_conv" if m[3] == "downsample.conv" else m[3]
    return f"stage{int(m[1]) + 1}_block{int(m[2]) + 1}/{part}"


def is_hub_folder(path: str) -> bool:
    """Whether ``path`` is a folder holding timm's ``config.json``."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json"))


def hub_folder(directory: str) -> tuple[dict[str, np.ndarray], dict[str, Any], str]:
    """Reads a timm Hub folder: ``(state_dict, config, weights file path)``.

    ``config`` is ``config.json`` with ``pretrained_cfg`` filled in for the older flat
    layout (the fields at the top level), as timm reads it.
    """
    with open(os.path.join(directory, "config.json")) as f:
        config = json.load(f)
    if not isinstance(config, dict) or "architecture" not in config:
        raise ValueError(f"{directory}/config.json is not a timm model config (no 'architecture')")
    if "pretrained_cfg" not in config:  # timm's legacy single-dict layout
        config = {"architecture": config["architecture"], "pretrained_cfg": config, **config}
    found = [os.path.join(directory, n) for n in HUB_WEIGHTS if os.path.isfile(os.path.join(directory, n))]
    if not found:
        raise ValueError(f"{directory} has a config.json but no weights: expected {' or '.join(HUB_WEIGHTS)}")
    return load_state_dict(found[0]), config, found[0]


def data_config(pretrained_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The evaluation preprocessing of timm weights, as converted-folder metadata.

    Returns ``crop_size``, ``resize_size`` (``floor(crop_size / crop_pct)``),
    ``crop_pct``, ``interpolation``, ``mean`` and ``std``: timm's
    ``resolve_data_config(pretrained_cfg=..., use_test_size=True)`` with its defaults.

    Raises:
      ValueError: for a non-square input size, a crop mode other than ``center``
        (timm's ``squash`` and ``border`` resize differently) or an interpolation other
        than bilinear and bicubic, naming the value.
    """
    cfg = {**_TIMM_DEFAULTS, **{k: v for k, v in pretrained_cfg.items() if v is not None}}
    size = tuple(cfg.get("test_input_size") or cfg["input_size"])[-2:]
    crop_pct = float(cfg.get("test_crop_pct") or cfg["crop_pct"])
    if size[0] != size[1]:
        raise ValueError(f"timm input size {list(size)}: resnet_jax's centre crop is square")
    if cfg["crop_mode"] != "center":
        raise ValueError(f"timm crop_mode={cfg['crop_mode']!r}: only 'center' is supported")
    if not 0 < crop_pct <= 1:
        raise ValueError(f"timm crop_pct={crop_pct}: must be in (0, 1]")
    if cfg["interpolation"] not in INTERPOLATIONS:
        valid = ", ".join(INTERPOLATIONS)
        raise ValueError(f"timm interpolation={cfg['interpolation']!r}: resnet_jax resizes with {valid}")
    return {
        "crop_size": int(size[0]),
        "resize_size": math.floor(size[0] / crop_pct),
        "crop_pct": crop_pct,
        "interpolation": str(cfg["interpolation"]),
        "mean": [float(m) for m in cfg["mean"]],
        "std": [float(s) for s in cfg["std"]],
    }
