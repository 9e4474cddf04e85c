"""Weight conversion from other frameworks into resnet_jax variables.

Every converter returns ``{'params': ..., 'batch_stats': ...}`` for a model built by
``create_model(model_name)`` and checks each array against that model's own shapes:
a mismatch names the parameter path and both shapes. None of them imports the
source framework; the source arrives as arrays.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from resnet_jax.registry import create_model

Variables = dict[str, Any]
# Keras applications use this BatchNorm epsilon; resnet_jax (like torchvision) uses 1e-5.
KERAS_BN_EPSILON = 1.001e-5


class _Target:
    """The flattened variables of a model, filled one path at a time with shape checks."""

    def __init__(self, model_name: str, num_classes: int, **overrides: Any):
        self.model_name = model_name
        self.model = create_model(model_name, num_classes=num_classes, **overrides)
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
    target = _Target(model_name, num_classes)
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


# ---------------------------------------------------------------------------------------
# PyTorch layouts: torchvision and timm name their ResNets' modules the same way.

_TORCH_BN_LEAVES = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
_TIMM_DEEP_STEM = {"conv1.0": "stem_conv1", "conv1.1": "stem_norm1", "conv1.3": "stem_conv2",
                   "conv1.4": "stem_norm2", "conv1.6": "stem_conv3"}  # fmt: skip


def _as_numpy(value: Any) -> np.ndarray:
    """A numpy or torch array as float32 numpy, without importing torch."""
    if hasattr(value, "detach"):  # a torch.Tensor; bf16/fp16 go through float32
        value = value.detach().cpu().float().numpy()
    return np.asarray(value, dtype=np.float32)


def _torch_module_path(module: str, deep_stem: bool, is_conv: bool) -> str | None:
    """torchvision/timm module name -> resnet_jax module path, or None if unknown."""
    if module == "conv1":
        return "stem_conv"
    if module == "bn1":
        return "stem_norm3" if deep_stem else "stem_norm"
    if module in _TIMM_DEEP_STEM:
        return _TIMM_DEEP_STEM[module]
    if module == "fc":
        return "head"
    m = re.fullmatch(r"layer(\d+)\.(\d+)\.(conv\d|bn\d|downsample\.\d)", module)
    if m is None:
        return None
    block = f"stage{m[1]}_block{int(m[2]) + 1}"
    part = m[3]
    if part.startswith("downsample"):
        # torchvision/timm: downsample = (conv, bn); ResNet-D: (avgpool, conv, bn).
        return f"{block}/shortcut_{'conv' if is_conv else 'norm'}"
    return f"{block}/{part.replace('bn', 'norm')}"


def _from_torch_layout(state_dict: Mapping[str, Any], model_name: str, source: str) -> Variables:
    arrays = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    fc = arrays.get("fc.weight")
    num_classes = int(np.shape(fc)[0]) if fc is not None else 0
    target = _Target(model_name, num_classes)
    deep_stem = any(k.startswith("conv1.0.") for k in arrays)
    for key, value in arrays.items():
        module, _, leaf = key.rpartition(".")
        value = _as_numpy(value)
        is_conv = leaf == "weight" and value.ndim == 4
        path = _torch_module_path(module, deep_stem, is_conv)
        src = f"{source} {key!r}"
        if path is None:
            raise ValueError(f"{src} has no counterpart in {model_name}")
        if is_conv:  # (out, in/groups, kh, kw) -> (kh, kw, in/groups, out)
            target.put(f"params/{path}/kernel", value.transpose(2, 3, 1, 0), src)
        elif path == "head":
            target.put(f"params/head/{'kernel' if leaf == 'weight' else 'bias'}", value.T, src)
        elif leaf in _TORCH_BN_LEAVES:
            collection = "params" if leaf in ("weight", "bias") else "batch_stats"
            target.put(f"{collection}/{path}/{_TORCH_BN_LEAVES[leaf]}", value, src)
        else:
            raise ValueError(f"{src}: unexpected parameter {leaf!r}")
    return target.result()


def from_torchvision(state_dict: Mapping[str, Any], model_name: str) -> Variables:
    """Converts a torchvision ResNet, ResNeXt or Wide ResNet ``state_dict``.

    Args:
      state_dict: parameter name -> array (numpy or torch tensors), e.g.
        ``torchvision.models.resnet50().state_dict()`` or a loaded checkpoint file.
      model_name: the resnet_jax name of the same architecture (``resnet50``,
        ``resnext50_32x4d``, ``wide_resnet50_2``, ...).

    Returns ``{'params', 'batch_stats'}`` for ``create_model(model_name, num_classes=K)``,
    K taken from ``fc.weight`` (0 when the state dict has no head).
    """
    return _from_torch_layout(state_dict, model_name, "torchvision")


def from_timm(state_dict: Mapping[str, Any], model_name: str) -> Variables:
    """Converts a timm ``resnet*`` / ``resnet*d`` / ``resnext*`` ``state_dict``.

    timm's ResNet-D (deep stem ``conv1.0..6``, avg-pool shortcut ``downsample.1..2``)
    maps onto resnet_jax's ``resnet*d``; the rest share torchvision's layout.
    """
    return _from_torch_layout(state_dict, model_name, "timm")


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


# ---------------------------------------------------------------------------------------
# Reading weight files. No untrusted pickle is ever executed: .safetensors and .h5 are read
# as data, and .pth only through torch.load(weights_only=True), whose unpickler accepts
# tensors and plain containers and refuses every other global before calling it.


class UnsafeWeightsError(ValueError):
    """A weights file whose pickle holds more than tensors and plain containers."""


def _torch_load_weights_only(path: str) -> Any:
    import pickle

    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"reading {path!r} needs torch, which is only imported for .pth files: "
            "pip install 'resnet_jax[convert]'. A .safetensors file needs no torch."
        ) from e
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        # torch's own text is a page long; its one informative line follows this marker.
        reason = str(e).split("WeightsUnpickler error:", 1)[-1].strip().splitlines()[0]
        asked = f"asks for {found.group(1)}" if found else f"failed the weights-only check ({reason})"
        raise UnsafeWeightsError(
            f"{path!r} is not a plain weights file: its pickle {asked}, so torch.load(weights_only=True) "
            "refused it without running it. Load it only if you trust it, and save its state_dict as "
            ".safetensors."
        ) from None
    except (RuntimeError, EOFError) as e:  # not a zip or pickle at all: truncated, or another format
        raise ValueError(
            f"{path!r} cannot be read as a PyTorch weights file ({str(e).split('. ')[0]})"
        ) from None


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """``{name: float32 array}`` from a ``.safetensors`` or a PyTorch ``.pth``/``.pt``/``.bin``.

    ``.safetensors`` is read by ``safetensors.numpy``, without torch. ``.pth`` is read
    only by ``torch.load(weights_only=True)``: a pickle that asks for more than tensors
    raises ``UnsafeWeightsError`` and its payload never runs. Checkpoints that wrap the
    weights (``{'state_dict': ...}``, ``{'model': ...}``) are unwrapped.
    """
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return {k: np.asarray(v, np.float32) for k, v in load_file(path).items()}
    if not path.endswith((".pth", ".pt", ".bin")):
        raise ValueError(f"weights file {path!r}: expected .safetensors, .pth, .pt or .bin")
    obj = _torch_load_weights_only(path)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path!r} holds a {type(obj).__name__}, not a state dict")
    return {k: _as_numpy(v) for k, v in obj.items() if hasattr(v, "detach")}


def keras_h5_weights(path: str) -> dict[str, list[np.ndarray]]:
    """``{layer_name: [arrays]}`` from a Keras weights file, read as data with h5py.

    Reads Keras 3 ``.weights.h5`` (``layers/*/vars/i``) and the legacy ``.h5`` of
    Keras 2 and of the Keras applications downloads (``layer_names``/``weight_names``
    attributes, at the root or under ``model_weights``).
    """
    import h5py

    def names(attr: Any) -> list[str]:
        return [n.decode() if isinstance(n, bytes) else str(n) for n in attr]

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path!r} is not a Keras .h5 / .weights.h5 weights file ({e})") from None
    with f:
        if "layer_names" in f.attrs or ("model_weights" in f and "layer_names" in f["model_weights"].attrs):
            root = f if "layer_names" in f.attrs else f["model_weights"]
            out = {}
            for layer in names(root.attrs["layer_names"]):
                group = root[layer]
                arrays = [np.asarray(group[w]) for w in names(group.attrs["weight_names"])]
                if arrays:
                    out[layer] = arrays
            return out
        if "layers" in f:
            # Keras 3 names the groups by class ('conv2d_3'); the layer's own name is an
            # attribute of its 'vars' group.
            out = {}
            for key, group in f["layers"].items():
                if "vars" in group and len(group["vars"]):
                    name = group["vars"].attrs.get("name", key)
                    name = name.decode() if isinstance(name, bytes) else str(name)
                    out[name] = [np.asarray(group["vars"][str(i)]) for i in range(len(group["vars"]))]
            return out
    raise ValueError(f"{path!r} is not a Keras weights file (no 'layer_names' and no 'layers' group)")


# ---------------------------------------------------------------------------------------
# Converted weights on disk: DIR/variables (Orbax) and DIR/metadata.json.


def save(variables: Variables, metadata: Mapping[str, Any], out: str) -> None:
    """Writes ``out/variables`` (Orbax) and ``out/metadata.json``, all or nothing: into a
    temporary directory renamed at the end. An existing ``out`` is never touched."""
    import json
    import shutil
    import tempfile

    import orbax.checkpoint as ocp

    out = os.path.abspath(out)
    if os.path.exists(out):
        raise FileExistsError(f"{out} exists; it is left untouched. Choose a new directory.")
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=os.path.basename(out) + ".tmp")
    try:
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(os.path.join(tmp, "variables"), variables)
        checkpointer.wait_until_finished()
        with open(os.path.join(tmp, "metadata.json"), "w") as f:
            json.dump(dict(metadata), f, indent=1)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load(directory: str) -> tuple[Variables, dict[str, Any]]:
    """The variables and metadata written by ``save`` (or ``python -m resnet_jax.convert``)."""
    import json

    import orbax.checkpoint as ocp

    directory = os.path.abspath(directory)
    with open(os.path.join(directory, "metadata.json")) as f:
        metadata = json.load(f)
    variables = ocp.StandardCheckpointer().restore(os.path.join(directory, "variables"))
    return variables, metadata
