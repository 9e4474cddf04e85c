"""timm's ResNets (``resnet*``, ResNet-D ``resnet*d``, ``resnext*``, and the SE and ECA
nets ``seresnet*``, ``seresnext*``, ``ecaresnet*``) into resnet_jax variables."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from resnet_jax.convert._target import Variables
from resnet_jax.convert.torchvision import from_torch_layout


def from_timm(state_dict: Mapping[str, Any], model_name: str) -> Variables:
    """Converts a timm ``resnet*`` / ``resnet*d`` / ``resnext*`` / ``seresne*`` /
    ``ecaresnet*`` ``state_dict``.

    timm's ResNet-D (deep stem ``conv1.0..6``, avg-pool shortcut ``downsample.1..2``)
    maps onto resnet_jax's ``resnet*d``; a block's channel attention ``se.fc1``,
    ``se.fc2`` (SE) or ``se.conv`` (ECA) onto its ``attn``; the rest share torchvision's
    layout.
    """
    return from_torch_layout(state_dict, model_name, "timm")
