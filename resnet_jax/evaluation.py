"""The accuracy of any weights on labelled images: top-1, top-5 and the loss.

``evaluate_weights(weights, folder)`` scores a ``--weights`` source (a tag, a converted
directory, a training workdir or an export artifact, see ``resnet_jax.sources``) on a
folder of class folders (ROOT/CLASS/IMAGE, the layout torchvision's ``ImageFolder``
reads and ImageNet's validation set is usually kept in) or on a prepared TFDS split,
with the weights' own evaluation preprocessing unless timm's overrides
(``image_size``, ``crop_pct``, ``resize``, ``interpolation``) replace it.
``python -m resnet_jax.evaluate`` is its command line; the figures are timm's
``validate.py``'s (top-1 and top-5 in percent).

The data's classes are matched to the weights' classes by name: a folder of WordNet ids
(``n01440764``) onto ImageNet-1k weights by id, in the weights' index order; a workdir's
classes by the names it trained with. Images are read and preprocessed in threads
(the listing reads no pixels), the uint8 crops are sharded over every local device and
normalised there, and the last batch is padded and masked, so each image counts once.
A file that does not decode is skipped and named, and the metrics cover the others.
The data and the class matching are ``resnet_jax.labelled``'s, the scoring of a batch
``resnet_jax.scoring``'s.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from resnet_jax import scoring
from resnet_jax.labelled import LabelledImages, folder_images, match_classes, tfds_images
from resnet_jax.preprocessing import INTERPOLATIONS, Preprocessing, decode_image

WORST_SHOWN = 10  # classes listed by ``per_class``
CONFUSION_MAX_CLASSES = 100  # a confusion-matrix picture beyond this is unreadable


def with_overrides(
    preprocessing: Preprocessing,
    image_size: int | None = None,
    crop_pct: float | None = None,
    resize: int | None = None,
    interpolation: str | None = None,
) -> Preprocessing:
    """``preprocessing`` with timm's evaluation overrides: ``image_size`` (the crop),
    ``crop_pct`` (resize the shorter side to ``floor(image_size / crop_pct)``, as timm
    does) or ``resize`` (that shorter side itself), and ``interpolation``. An image size
    alone keeps the weights' crop fraction."""
    if image_size is not None and image_size < 1:
        raise ValueError(f"--image-size={image_size}: must be >= 1")
    if crop_pct is not None and not 0 < crop_pct <= 1:
        raise ValueError(f"--crop-pct={crop_pct}: must be in (0, 1], e.g. 0.875 (224 of 256) or 1.0")
    if resize is not None and resize < 1:
        raise ValueError(f"--resize={resize}: must be >= 1")
    if crop_pct is not None and resize is not None:
        raise ValueError(f"--crop-pct={crop_pct} and --resize={resize} both set the resize: pass one")
    if interpolation is not None and interpolation not in INTERPOLATIONS:
        raise ValueError(f"--interpolation={interpolation!r}; valid: {', '.join(INTERPOLATIONS)}")
    size = image_size or preprocessing.size[0]
    if image_size is not None and preprocessing.size[0] != preprocessing.size[1]:
        raise ValueError(f"--image-size={image_size}: these weights take {preprocessing.size} inputs")
    resize_size = preprocessing.resize_size
    if crop_pct is not None:
        resize_size = math.floor(size / crop_pct)
    elif resize is not None:
        resize_size = resize
    elif image_size is not None and resize_size:
        resize_size = math.floor(size * resize_size / preprocessing.size[0])
    if resize_size and resize_size < size:
        raise ValueError(f"a resize of {resize_size} is smaller than the {size} crop")
    return dataclasses.replace(
        preprocessing,
        size=(size, size) if image_size is not None or resize_size else preprocessing.size,
        resize_size=resize_size,
        interpolation=interpolation or preprocessing.interpolation,
    )


def _batches(
    count: int, load: Callable[[int], Any], batch_size: int, workers: int, ahead: int = 2
) -> Iterator[tuple[int, list[Any]]]:
    """``(start, [load(i) for i in the batch])`` in order, loaded by ``workers`` threads at
    most ``ahead`` batches in advance (so memory stays a few batches)."""
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        pending: collections.deque = collections.deque()
        for lo in range(0, count, batch_size):
            pending.append((lo, [pool.submit(load, i) for i in range(lo, min(lo + batch_size, count))]))
            if len(pending) > ahead:
                start, futures = pending.popleft()
                yield start, [f.result() for f in futures]
        while pending:
            start, futures = pending.popleft()
            yield start, [f.result() for f in futures]


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("resnet_jax", "jax", "jaxlib", "flax", "numpy", "pillow"):
        with contextlib.suppress(PackageNotFoundError):
            found[package] = version(package)
    return found


def evaluate_weights(
    weights: str,
    folder: str | None = None,
    *,
    tfds: str | None = None,
    data_dir: str | None = None,
    model: str | None = None,
    ema: bool | None = None,
    image_size: int | None = None,
    crop_pct: float | None = None,
    resize: int | None = None,
    interpolation: str | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    per_class: bool = False,
    progress: bool | None = None,
    on_skip: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Scores ``weights`` on a folder of class folders or a TFDS split (``tfds='NAME:SPLIT'``).

    Args:
      weights: any ``--weights`` source: a tag (``resnet50.torchvision_v2``), a converted
        directory, a workdir (its EMA weights when kept; ``ema=False`` the live ones) or an
        export artifact.
      folder: ROOT/CLASS/IMAGE; or ``tfds`` with its ``data_dir``.
      image_size, crop_pct, resize, interpolation: timm's preprocessing overrides
        (``with_overrides``); none for an export artifact, whose input is compiled in.
      batch_size: images per step over all local devices (rounded up to a multiple of
        their count); ``workers``: reading threads (default: the CPU count).
      per_class: also each class's top-1, worst first, and the confusion counts.
      progress: a tqdm bar (default: when stderr is a terminal or in a notebook).
      on_skip: called with ``"NAME: reason"`` for each image that does not decode.

    Returns:
      A dict of ``top1``, ``top5`` (percent), ``top1_err``, ``top5_err``, ``loss`` (mean
      cross-entropy), ``images`` (scored), ``skipped`` (names), ``images_per_second``,
      ``devices``, the ``weights``, ``model``, ``param_count`` (millions), ``data``,
      ``matched_by``, the ``preprocessing`` (and timm's ``img_size``, ``crop_pct``,
      ``interpolation``) and the ``versions``; with ``per_class``, ``per_class`` (a list
      of ``{class, images, top1}``, worst first), ``class_names`` and ``confusion``
      (rows: true data class; columns: predicted data class, then 'other').
    """
    if (folder is None) == (tfds is None):
        raise ValueError("pass one of DATA (a folder of class folders) and --tfds=NAME:SPLIT")
    if batch_size < 1:
        raise ValueError(f"--batch-size={batch_size}: must be >= 1")
    overrides = dict(image_size=image_size, crop_pct=crop_pct, resize=resize, interpolation=interpolation)
    scorer = scoring.scorer(weights, model, ema, overrides, with_overrides)
    data = folder_images(folder) if folder is not None else tfds_images(tfds, data_dir)
    target_of, matched_by = match_classes(data.class_names, scorer.class_names)
    batch_size = -(-batch_size // scorer.devices) * scorer.devices
    outcome = _score_all(scorer, data, target_of, batch_size, workers, progress, on_skip)
    prep = scorer.preprocessing
    result = {
        "weights": weights,
        "description": scorer.description,
        "model": scorer.model,
        "param_count": round(scorer.param_count, 3) if scorer.param_count is not None else None,
        "data": data.description,
        "matched_by": matched_by,
        **outcome.metrics(target_of[data.labels]),
        "devices": scorer.devices,
        "batch_size": batch_size,
        "img_size": prep.size[0],
        "crop_pct": round(prep.size[0] / prep.resize_size, 4) if prep.resize_size else None,
        "interpolation": prep.interpolation,
        "preprocessing": prep.to_dict(),
        "versions": _versions(),
    }
    if per_class:
        result.update(_per_class(data, target_of, outcome))
    return result


@dataclasses.dataclass
class _Outcome:
    """Per image: loss, top-k weights indices, whether it was scored; and the timing."""

    loss: np.ndarray
    top: np.ndarray
    scored: np.ndarray
    skipped: list[str]
    seconds: float

    def metrics(self, truth: np.ndarray) -> dict[str, Any]:
        m = int(self.scored.sum())
        hit = self.top[self.scored] == truth[self.scored, None]
        top1, top5 = 100.0 * float(hit[:, 0].sum()) / m, 100.0 * float(hit.any(-1).sum()) / m
        n = len(self.scored)
        return {
            "images": m,
            "skipped": self.skipped,
            "top1": round(top1, 4),
            "top1_err": round(100.0 - top1, 4),
            "top5": round(top5, 4),
            "top5_err": round(100.0 - top5, 4),
            "loss": float(self.loss[self.scored].mean()),
            "images_per_second": round(n / self.seconds, 2) if self.seconds > 0 else None,
        }


def _score_all(
    scorer: scoring.Scorer,
    data: LabelledImages,
    target_of: np.ndarray,
    batch_size: int,
    workers: int | None,
    progress: bool | None,
    on_skip: Callable[[str], None] | None,
) -> _Outcome:
    """Every image of ``data`` read, prepared and scored, batch by batch; the last batch
    padded with blank images whose results are dropped."""
    from tqdm.auto import tqdm

    prep = scorer.preprocessing

    def load(i: int) -> np.ndarray | str:
        try:
            return scorer.prepare(decode_image(data.read(i), prep.channels))
        except (OSError, ValueError) as e:
            return f"{data.name(i)}: {e.strerror if isinstance(e, OSError) and e.strerror else e}"

    blank = scorer.prepare(np.zeros((*prep.identity_size, prep.channels), np.uint8))
    blank = np.zeros((batch_size, *blank.shape), blank.dtype)
    scorer.score(blank, np.zeros(batch_size, np.int32))  # compiled before the clock starts
    n, k = len(data), min(scoring.TOP_K, len(scorer.class_names))
    out = _Outcome(np.zeros(n), np.full((n, k), -1, np.int64), np.zeros(n, bool), [], 0.0)
    bar = tqdm(total=n, unit="image", disable=None if progress is None else not progress, file=sys.stderr)
    start = time.perf_counter()
    with bar:
        for lo, items in _batches(n, load, batch_size, workers or os.cpu_count() or 1):
            inputs, hi = blank.copy(), lo + len(items)
            for j, item in enumerate(items):
                if isinstance(item, str):
                    out.skipped.append(data.name(lo + j))
                    if on_skip is not None:
                        on_skip(f"skipped {item}")
                    else:
                        bar.write(f"skipped {item}", file=sys.stderr)
                else:
                    inputs[j], out.scored[lo + j] = item, True
            labels = np.zeros(batch_size, np.int32)
            labels[: hi - lo] = target_of[data.labels[lo:hi]]
            loss, top = scorer.score(inputs, labels)
            out.loss[lo:hi], out.top[lo:hi] = np.asarray(loss)[: hi - lo], np.asarray(top)[: hi - lo]
            bar.update(hi - lo)
    out.seconds = time.perf_counter() - start
    if not out.scored.any():
        raise ValueError(f"{data.description}: no image could be read ({len(out.skipped)} skipped)")
    return out


def _per_class(data: LabelledImages, target_of: np.ndarray, out: _Outcome) -> dict[str, Any]:
    """Each data class's top-1 (worst first) and the confusion counts between data classes."""
    scored, predicted = out.scored, out.top[:, 0]
    correct = predicted == target_of[data.labels]
    k = len(data.class_names)
    labels = data.labels[scored]
    images = np.bincount(labels, minlength=k)
    right = np.bincount(labels, weights=correct[scored], minlength=k)
    rows = [
        {"class": c, "images": int(t), "top1": round(100.0 * float(r) / t, 4) if t else None}
        for c, t, r in zip(data.class_names, images, right)
    ]
    rows.sort(key=lambda r: (r["top1"] is None, r["top1"] if r["top1"] is not None else 0.0, r["class"]))
    data_class_of = np.full(int(max(target_of.max(), predicted.max())) + 1, k, np.int64)  # k: 'other'
    data_class_of[target_of] = np.arange(k)
    confusion = np.zeros((k, k + 1), np.int64)
    np.add.at(confusion, (labels, data_class_of[predicted[scored]]), 1)
    return {"per_class": rows, "class_names": list(data.class_names), "confusion": confusion.tolist()}
