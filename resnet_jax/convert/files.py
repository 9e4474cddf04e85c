"""Weight files in and out. No untrusted pickle is ever executed: ``.safetensors`` and
``.h5`` are read as data, and ``.pth`` only through ``torch.load(weights_only=True)``,
whose unpickler accepts tensors and plain containers and refuses every other global
before calling it. Converted weights are written as ``DIR/variables`` (Orbax) and
``DIR/metadata.json``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from resnet_jax.convert._target import Variables, as_numpy


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
    return {k: as_numpy(v) for k, v in obj.items() if hasattr(v, "detach")}


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


def load_converted(directory: str) -> tuple[Variables, dict[str, Any]]:
    """The variables and metadata written by ``save`` (or ``python -m resnet_jax.convert``)."""
    import json

    import orbax.checkpoint as ocp

    directory = os.path.abspath(directory)
    with open(os.path.join(directory, "metadata.json")) as f:
        metadata = json.load(f)
    variables = ocp.StandardCheckpointer().restore(os.path.join(directory, "variables"))
    return variables, metadata
