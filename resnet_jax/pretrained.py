"""Pretrained weights, end to end: download, verify, convert and cache, then build.

The top of the library's imports: it uses the model registry, the weights catalogue
(``resnet_jax.weights``) and the converters (``resnet_jax.convert``), and none of them
imports it. ``resnet_jax.create_model`` is this module's ``create_model``.

``fetch`` puts a file in the local cache (``$RESNET_JAX_CACHE``, else
``~/.cache/resnet_jax``), verifying its SHA-256, with a progress bar; offline, it says
where to put a file fetched elsewhere. ``load_pretrained`` converts it once and caches the
result as an Orbax checkpoint, so later loads need no torch.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import urllib.error
import urllib.request
from typing import Any

from resnet_jax import convert, registry
from resnet_jax.weights import Weights, cache_dir, get_weights, sha256_of, verify


def create_model(name: str, weights: str | None = None, **overrides: Any) -> Any:
    """Builds the named model; ``overrides`` replace any ``ResNet`` field.

    Example: ``create_model('resnet50', num_classes=10, dtype=jnp.bfloat16)``.

    With ``weights`` (a tag from ``resnet_jax.weights.list_weights(name)``, e.g.
    ``'torchvision_v1'``) it returns ``(model, variables)``: the converted weights come
    from the local cache. On first use they are fetched, verified and converted, which
    reads the ``.pth`` with torch (the ``convert`` extra); later loads need no torch.

    Raises:
      ValueError: for an unknown name (suggesting the closest ones), an unknown field or
        an unknown weights tag (listing the valid ones).
    """
    if weights is None:
        return registry.build_model(name, **overrides)
    entry = get_weights(name, weights)
    model = registry.build_model(name, **{"num_classes": entry.num_classes, **overrides})
    return model, load_pretrained(entry)


def fetch(weights: Weights, progress: bool = True) -> str:
    """The verified local path of ``weights``' file, downloading it into the cache once.

    The download goes to a temporary file that replaces the cached one only after its
    hash checks out, so an interrupted or corrupted download never reaches the cache.
    """
    directory = cache_dir()
    path = os.path.join(directory, weights.filename)
    if os.path.exists(path):
        verify(path, weights.sha256)
        return path
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=weights.filename + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            _download(weights.url, out, progress)
        verify(tmp, weights.sha256)
        os.replace(tmp, path)
    except (urllib.error.URLError, OSError) as e:
        raise RuntimeError(
            f"could not download {weights.url} ({e}). Offline? Fetch it on a connected machine and "
            f"pass the file (--weights=FILE), or put it at {path}."
        ) from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _download(url: str, out, progress: bool) -> None:
    from tqdm.auto import tqdm

    with urllib.request.urlopen(url, timeout=30) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(
            total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1], disable=not progress
        ) as bar:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
                bar.update(len(chunk))


def load_pretrained(weights: Weights) -> dict:
    """``{'params', 'batch_stats'}`` of ``weights``, converted once and cached as an Orbax
    checkpoint (``CACHE/converted/MODEL-TAG``) beside the downloaded file."""
    directory = os.path.join(cache_dir(), "converted", f"{weights.model}-{weights.tag}")
    if os.path.exists(os.path.join(directory, "metadata.json")):
        return convert.load_converted(directory)[0]
    path = fetch(weights)
    converters = {"torchvision": convert.from_torchvision, "timm": convert.from_timm}
    if weights.source not in converters:
        raise ValueError(
            f"no automatic conversion for {weights.source!r} weights; use python -m resnet_jax.convert"
        )
    variables = converters[weights.source](convert.load_state_dict(path), weights.model)
    metadata = {**dataclasses.asdict(weights), "sha256_full": sha256_of(path)}
    convert.save(variables, metadata, directory)
    return variables
