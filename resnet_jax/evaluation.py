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
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import difflib
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from resnet_jax import classes, sources
from resnet_jax.preprocessing import IMAGE_EXTENSIONS, INTERPOLATIONS, Preprocessing, decode_image

TOP_K = 5
WORST_SHOWN = 10  # classes listed by ``per_class``
CONFUSION_MAX_CLASSES = 100  # a confusion-matrix picture beyond this is unreadable


@dataclasses.dataclass(frozen=True)
class LabelledImages:
    """Images with their labels: ``read(i)`` gives image i's encoded bytes, ``name(i)``
    how a message names it; ``labels[i]`` indexes ``class_names``."""

    description: str
    class_names: list[str]
    labels: np.ndarray
    read: Callable[[int], bytes]
    name: Callable[[int], str]

    def __len__(self) -> int:
        return len(self.labels)


def _listdir(folder: str) -> list[os.DirEntry]:
    with os.scandir(folder) as entries:
        return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def folder_images(root: str) -> LabelledImages:
    """ROOT/CLASS/IMAGE: the class folders sorted by name, each one's image files
    (``IMAGE_EXTENSIONS``, not hidden) sorted by name. Lists names only; reads no image."""
    root = os.path.expanduser(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root}: no such folder (DATA is a folder of class folders)")
    entries = _listdir(root)
    class_dirs = [e for e in entries if e.is_dir()]
    if not class_dirs:
        loose = sum(e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS) for e in entries)
        found = f"holds {loose} image files but no class folder" if loose else "is empty"
        raise ValueError(
            f"{root} {found}: DATA must hold one folder per class, ROOT/CLASS/IMAGE, as torchvision's "
            "ImageFolder reads it"
        )
    paths, labels = [], []
    for label, d in enumerate(class_dirs):
        files = [
            e.path for e in _listdir(d.path) if e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file()
        ]
        paths += files
        labels += [label] * len(files)
    names = [d.name for d in class_dirs]
    if not paths:
        raise ValueError(
            f"{root}: its {len(names)} class folders ({', '.join(names[:5])}"
            f"{', ...' if len(names) > 5 else ''}) hold no image file ({', '.join(IMAGE_EXTENSIONS)})"
        )

    def read(i: int) -> bytes:
        with open(paths[i], "rb") as f:
            return f.read()

    count = f"{len(paths):,} images in {len(names)} class folder{'s' if len(names) != 1 else ''}"
    return LabelledImages(
        f"{os.path.abspath(root)} ({count})", names, np.asarray(labels), read, paths.__getitem__
    )


def tfds_images(spec: str, data_dir: str | None = None) -> LabelledImages:
    """A prepared TFDS split, ``NAME:SPLIT`` (``imagenet2012:validation``), read from its
    ArrayRecord files through ``tfds.data_sources``: no TensorFlow."""
    try:
        import tensorflow_datasets as tfds
        from tensorflow_datasets.core import read_only_builder
    except ImportError as e:
        raise ImportError(
            f"--tfds needs tensorflow-datasets ({e}): pip install 'resnet_jax[train]'"
        ) from None
    name, _, split = spec.partition(":")
    try:
        builder = read_only_builder.builder_from_files(name, data_dir=data_dir or None)
    except (tfds.core.registered.DatasetNotFoundError, FileNotFoundError, ValueError):
        known = tfds.list_builders(with_community_datasets=False)
        where = data_dir or os.path.join("~", "tensorflow_datasets")
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else " (tfds.list_builders() lists them)"
            raise ValueError(f"--tfds={spec!r}: {name!r} is not a TFDS dataset{hint}") from None
        raise ValueError(
            f"--tfds={spec!r}: {name} is not prepared in {where}; prepare it with `tfds build {name} "
            "--file_format=array_record` (or a trainer run on it) and pass --data-dir"
        ) from None
    splits = list(builder.info.splits)
    if not split:
        split = next((s for s in ("validation", "test") if s in splits), "")
    if split not in splits:
        raise ValueError(f"--tfds={spec!r}: split {split!r} is not one of {name}'s: {', '.join(splits)}")
    keys = builder.info.supervised_keys
    if not keys or keys[0] != "image":
        raise ValueError(f"--tfds={spec!r}: not an image-classification dataset (supervised keys {keys})")
    try:
        source = builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    except (ValueError, KeyError, NotImplementedError) as e:
        raise ValueError(
            f"--tfds={spec!r}: cannot be read as a data source ({e}); it must be prepared as "
            "ArrayRecord (`tfds build NAME --file_format=array_record`)"
        ) from None
    label_key = keys[1]
    labels = np.asarray([int(r[label_key]) for r in source], np.int64) if len(source) else np.zeros(0, int)
    if not len(labels):
        raise ValueError(f"--tfds={spec!r}: the split holds no example")
    tag = f"{name}:{split}"
    return LabelledImages(
        f"tfds {tag} ({len(labels):,} images, {builder.data_dir})",
        list(builder.info.features[label_key].names),
        labels,
        lambda i: source[i]["image"],
        lambda i: f"{tag}[{i}]",
    )


def match_classes(data_names: Sequence[str], weights_names: Sequence[str]) -> tuple[np.ndarray, str]:
    """The weights' index of each data class, and how they matched ('WordNet id' or
    'name'). ImageNet-1k weights match WordNet ids (``n01440764``) and their class
    names; others their class names. Raises ``ValueError`` naming unmatched classes."""
    by_name: dict[str, int] = {}
    for i, n in enumerate(weights_names):
        by_name.setdefault(str(n), i if str(n) not in by_name else -1)  # -1: an ambiguous name
    by_id = {}
    if list(weights_names) == classes.imagenet_classes():
        by_id = {w: i for i, w in enumerate(classes.imagenet_wnids())}
    index = np.asarray([by_id.get(n, by_name.get(n, -1)) for n in data_names], np.int64)
    missing = [n for n, i in zip(data_names, index) if i < 0]
    if missing:
        shown = ", ".join(missing[:5]) + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else "")
        kind = "WordNet ids (n01440764) or class names" if by_id else "class names"
        raise ValueError(
            f"{len(missing)} of the data's {len(data_names)} classes are not among the weights' "
            f"{len(weights_names)} {kind}: {shown}; {len(data_names) - len(missing)} matched "
            f"(the weights' first: {', '.join(map(str, list(weights_names)[:3]))})"
        )
    matched_by = "WordNet id" if by_id and all(n in by_id for n in data_names) else "name"
    return index, matched_by


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


@dataclasses.dataclass
class _Scorer:
    """What scores a batch: ``score(inputs, labels) -> (loss, top-k indices)`` per image,
    over the inputs ``prepare(image)`` makes (uint8 crops, or an artifact's own inputs)."""

    preprocessing: Preprocessing
    class_names: list[str]
    model: str
    description: str
    devices: int
    param_count: float | None
    prepare: Callable[[np.ndarray], np.ndarray]
    score: Callable[[np.ndarray, np.ndarray], tuple[Any, Any]]


def _model_scorer(loaded: sources.Loaded, preprocessing: Preprocessing) -> _Scorer:
    """(uint8 crops, weights-index labels) -> (loss, top-k), jitted with the batch sharded
    over every local device, normalised there, and the variables replicated."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.asarray(jax.local_devices()), ("batch",))
    batch, replicated = NamedSharding(mesh, PartitionSpec("batch")), NamedSharding(mesh, PartitionSpec())
    variables = {
        "params": loaded.variables["params"],
        "batch_stats": loaded.variables.get("batch_stats") or {},
    }
    variables = jax.device_put(variables, replicated)
    k = min(TOP_K, len(loaded.class_names))

    def score(variables, crops, labels):
        logits = loaded.model.apply(variables, preprocessing.finish(crops), train=False).astype(jnp.float32)
        log_p = jax.nn.log_softmax(logits)
        loss = -jnp.take_along_axis(log_p, labels[:, None], axis=-1)[:, 0]
        return loss, jax.lax.top_k(logits, k)[1]

    jitted = jax.jit(score, in_shardings=(replicated, batch, batch), out_shardings=batch)
    params = sum(int(np.size(x)) for x in jax.tree.leaves(loaded.variables["params"]))
    return _Scorer(
        preprocessing, loaded.class_names, loaded.name, loaded.description, jax.local_device_count(),
        params / 1e6, preprocessing.crop, lambda x, y: jax.device_get(jitted(variables, x, y)),
    )  # fmt: skip


def _artifact_scorer(path: str) -> _Scorer:
    """An export artifact, on its own model inputs (its preprocessing is compiled in)."""
    from resnet_jax.classifier import Classifier

    served = Classifier.from_artifact(path)
    k = min(TOP_K, len(served.class_names))

    def score(inputs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = np.asarray(served.forward(inputs), np.float64)
        loss = -np.log(np.maximum(p[np.arange(len(labels)), labels], 1e-45))
        return loss, Classifier.top_indices(p, k)

    return _Scorer(served.preprocessing, served.class_names, "", path, 1, None, served.input, score)


def _scorer(weights: str, model: str | None, ema: bool | None, overrides: dict[str, Any]) -> _Scorer:
    path = os.path.expanduser(weights)
    if os.path.isfile(path) and (path.endswith(".jaxexport") or os.path.exists(path + ".json")):
        named = [f"--{k.replace('_', '-')}" for k, v in overrides.items() if v is not None]
        if named:
            raise ValueError(
                f"{' and '.join(named)}: an export artifact's input is compiled in; export again"
            )
        return _artifact_scorer(path)
    loaded = sources.resolve(weights, model=model, ema=ema)
    return _model_scorer(loaded, with_overrides(loaded.preprocessing, **overrides))


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
      A dict: ``top1``, ``top5`` (percent), ``top1_err``, ``top5_err``, ``loss`` (mean
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
    scorer = _scorer(weights, model, ema, overrides)
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
    scorer: _Scorer,
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
    n, k = len(data), min(TOP_K, len(scorer.class_names))
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


def plot_confusion(result: dict[str, Any], path: str) -> None:
    """A PNG of ``result['confusion']`` (``evaluate_weights(per_class=True)``), rows
    normalised to the share of each true class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(result["confusion"], np.float64)
    names = list(result["class_names"])
    columns = [*names, "other"] if counts[:, -1].any() else names
    counts = counts[:, : len(columns)]
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    k = len(names)
    side = min(4 + 0.28 * k, 30)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(columns)), columns, rotation=90)
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:
        for (i, j), v in np.ndenumerate(counts):
            if v:
                color = "white" if shares[i, j] > 0.5 else "black"
                ax.text(j, i, int(v), ha="center", va="center", fontsize=7, color=color)
    ax.set_title(f"top-1 {result['top1']:.2f}% on {result['images']:,} images")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
