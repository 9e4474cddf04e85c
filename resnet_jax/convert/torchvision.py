"""torchvision's ResNet layout, both ways: ``from_torchvision`` and ``to_torchvision``.

timm names its ResNets' modules the same way (plus ResNet-D's deep stem), so
``resnet_jax.convert.timm`` reads through ``from_torch_layout`` here too.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from resnet_jax.convert._target import Target, Variables, as_numpy

_TORCH_BN_LEAVES = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
_TIMM_DEEP_STEM = {"conv1.0": "stem_conv1", "conv1.1": "stem_norm1", "conv1.3": "stem_conv2",
                   "conv1.4": "stem_norm2", "conv1.6": "stem_conv3"}  # fmt: skip


def _torch_module_path(module: str, is_conv: bool, deep_stem: bool) -> str | None:
    """torchvision/timm module name -> resnet_jax module path, or None if unknown."""
    if module == "conv1":
        return "stem_conv"
    if module == "bn1":
        return "stem_norm3" if deep_stem else "stem_norm"
    if module in _TIMM_DEEP_STEM:
        return _TIMM_DEEP_STEM[module]
    if module in ("maxpool.0", "maxpool.1"):  # ResNet-RS: a conv and norm replace the max pool
        return "stem_pool_conv" if is_conv else "stem_pool_norm"
    if module == "fc":
        return "head"
    m = re.fullmatch(r"layer(\d+)\.(\d+)\.(conv\d|bn\d|downsample\.\d|se\.(?:fc1|fc2|conv))", module)
    if m is None:
        return None
    block = f"stage{m[1]}_block{int(m[2]) + 1}"
    part = m[3]
    if part.startswith("se."):  # timm's channel attention (SE or ECA): resnet_jax.attention
        return f"{block}/attn/{part[3:]}"
    if part.startswith("downsample"):
        # torchvision/timm: downsample = (conv, bn); ResNet-D: (avgpool, conv, bn).
        return f"{block}/shortcut_{'conv' if is_conv else 'norm'}"
    return f"{block}/{part.replace('bn', 'norm')}"


def from_torch_layout(
    state_dict: Mapping[str, Any],
    model_name: str,
    source: str,
    module_path: Callable[[str, bool], str | None] | None = None,
    head: str = "fc",
    **overrides: Any,
) -> Variables:
    """A PyTorch ResNet ``state_dict`` into ``model_name``'s variables.

    ``module_path(module, is_conv)`` names each module's resnet_jax path (default:
    torchvision's and timm's ``ResNet`` names); ``head`` is the classifier's module, a
    Linear or a 1x1 convolution (timm's ``ResNetV2``); ``overrides`` replace fields of
    the registered model (``stage_sizes`` for a net built with other depths).
    """
    arrays = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    fc = arrays.get(f"{head}.weight")
    num_classes = int(np.shape(fc)[0]) if fc is not None else 0
    target = Target(model_name, num_classes, **overrides)
    if module_path is None:
        deep_stem = any(k.startswith("conv1.0.") for k in arrays)
        module_path = functools.partial(_torch_module_path, deep_stem=deep_stem)
    for key, value in arrays.items():
        module, _, leaf = key.rpartition(".")
        value = as_numpy(value)
        is_conv = leaf == "weight" and value.ndim == 4
        path = module_path(module, is_conv=is_conv)
        src = f"{source} {key!r}"
        if path is None:
            raise ValueError(f"{src} has no counterpart in {model_name}")
        if path == "head":  # (K, C) or a 1x1 conv's (K, C, 1, 1) -> Dense (C, K)
            value = value.reshape(len(value), -1).T if leaf == "weight" else value
            target.put(f"params/head/{'kernel' if leaf == 'weight' else 'bias'}", value, src)
        elif is_conv:  # (out, in/groups, kh, kw) -> (kh, kw, in/groups, out)
            target.put(f"params/{path}/kernel", value.transpose(2, 3, 1, 0), src)
        elif leaf == "weight" and value.ndim == 3:  # ECA's Conv1d: (out, in, k) -> (k, in, out)
            target.put(f"params/{path}/kernel", value.transpose(2, 1, 0), src)
        elif leaf in _TORCH_BN_LEAVES:  # a norm's leaves; also the SE convolutions' biases
            collection = "params" if leaf in ("weight", "bias") else "batch_stats"
            target.put(f"{collection}/{path}/{_TORCH_BN_LEAVES[leaf]}", value, src)
        else:
            raise ValueError(f"{src}: unexpected parameter {leaf!r}")
    return target.result()


def from_torchvision(state_dict: Mapping[str, Any], model_name: str, **overrides: Any) -> Variables:
    """Converts a torchvision ResNet, ResNeXt or Wide ResNet ``state_dict``.

    Args:
      state_dict: parameter name -> array (numpy or torch tensors), e.g.
        ``torchvision.models.resnet50().state_dict()`` or a loaded checkpoint file.
      model_name: the resnet_jax name of the same architecture (``resnet50``,
        ``resnext50_32x4d``, ``wide_resnet50_2``, ...).
      **overrides: ``ResNet`` fields where the torchvision model was built with other
        arguments than its name's (``stage_sizes`` for ``ResNet(Bottleneck, [1, 1, 1, 1])``).

    Returns ``{'params', 'batch_stats'}`` for ``create_model(model_name, num_classes=K)``,
    K taken from ``fc.weight`` (0 when the state dict has no head).
    """
    return from_torch_layout(state_dict, model_name, "torchvision", **overrides)


_TORCH_BN_NAMES = {v: k for k, v in _TORCH_BN_LEAVES.items()}


def _torch_module_name(path: tuple[str, ...]) -> str:
    """resnet_jax module path -> torchvision module name (the inverse of ``_torch_module_path``)."""
    top = path[0]
    if top in ("stem_conv", "stem_norm", "head"):
        return {"stem_conv": "conv1", "stem_norm": "bn1", "head": "fc"}[top]
    m = re.fullmatch(r"stage(\d+)_block(\d+)", top)
    if m is None or len(path) != 2:
        raise ValueError(f"{'/'.join(path)} has no torchvision counterpart (torchvision layout only)")
    prefix = f"layer{m[1]}.{int(m[2]) - 1}"
    part = path[1]
    if part in ("shortcut_conv", "shortcut_norm"):
        return f"{prefix}.downsample.{0 if part == 'shortcut_conv' else 1}"
    if re.fullmatch(r"conv\d|norm\d", part) is None:
        raise ValueError(f"{'/'.join(path)} has no torchvision counterpart (torchvision layout only)")
    return f"{prefix}.{part.replace('norm', 'bn')}"


def to_torchvision(variables: Variables) -> dict[str, np.ndarray]:
    """The inverse of ``from_torchvision``: a torchvision ``state_dict`` as numpy arrays.

    For the models in torchvision's layout (``resnet18``..``resnet152``, ResNeXt, Wide
    ResNet): ``torchvision.models.resnet50().load_state_dict({k: torch.from_numpy(v) ...})``
    takes the result (add ``strict=False`` or ``num_batches_tracked`` zeros: torchvision's
    BatchNorm counters have no counterpart here). ``safetensors.numpy.save_file`` writes
    it as a file that ``python -m resnet_jax.convert`` reads back.
    """
    out: dict[str, np.ndarray] = {}
    for collection in ("params", "batch_stats"):
        for path, value in traverse_util.flatten_dict(dict(variables.get(collection) or {})).items():
            value = np.asarray(value, dtype=np.float32)
            module, leaf = _torch_module_name(path[:-1]), path[-1]
            if leaf == "kernel" and value.ndim == 4:  # (kh, kw, in/groups, out) -> (out, in/groups, kh, kw)
                out[f"{module}.weight"] = np.ascontiguousarray(value.transpose(3, 2, 0, 1))
            elif module == "fc":
                out[f"fc.{'weight' if leaf == 'kernel' else 'bias'}"] = np.ascontiguousarray(value.T)
            elif leaf in _TORCH_BN_NAMES:
                out[f"{module}.{_TORCH_BN_NAMES[leaf]}"] = value
            else:
                raise ValueError(f"{collection}/{'/'.join(path)} has no torchvision counterpart")
    return out
