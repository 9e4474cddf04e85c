"""Where the examples come from: random-access sources, one per split, for grain.

A source has ``len()`` and ``source[i] -> {'image', 'label'}`` (grain's
``RandomAccessDataSource``), where ``'image'`` is a decoded uint8 array (``kind='array'``)
or encoded bytes (``kind='bytes'``), read and decoded only by the process and worker that
use the example:

- ``digits``: scikit-learn's bundled 8x8 digits, in memory;
- ``image_folder``: ROOT/SPLIT/CLASS/* files, each read when its example is needed;
- any TFDS image-classification dataset, read from its ArrayRecord files through
  ``tfds.data_sources``. Reading needs no TensorFlow; preparing (downloading and writing
  the files) does, for most TFDS builders: ``pip install -e ".[prepare]"``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import difflib
import hashlib
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from resnet_jax.preprocessing import IMAGE_EXTENSIONS, decode_image

if TYPE_CHECKING:
    from train.settings import Input

BUILTIN_DATASETS = ("digits", "image_folder")


@dataclasses.dataclass(frozen=True)
class ArraySource:
    """Decoded images held in memory: (N, H, W, C) uint8 and (N,) int labels."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index], "label": self.labels[index]}

    def fingerprint(self, lo: int, hi: int | None) -> str:
        digest = hashlib.sha256(np.ascontiguousarray(self.labels[lo:hi]).tobytes())
        digest.update(np.ascontiguousarray(self.images[lo:hi]).tobytes())
        return digest.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class FileSource:
    """Image files, read when their example is needed."""

    paths: tuple[str, ...]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        with open(self.paths[index], "rb") as f:
            return {"image": f.read(), "label": self.labels[index]}

    def fingerprint(self, lo: int, hi: int | None) -> str:
        """Of the files' CLASS/NAME and labels: the same folder moved elsewhere matches."""
        tails = (os.path.join(*p.split(os.sep)[-2:]) for p in self.paths[lo:hi])
        text = "\n".join(f"{y}\t{t}" for y, t in zip(self.labels[lo:hi].tolist(), tails))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class TfdsSource:
    """A TFDS data source (ArrayRecord files) with its images left encoded."""

    source: Any
    label_key: str
    tag: str = ""  # NAME:VERSION:SPLIT

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.source[index]
        return {"image": record["image"], "label": record[self.label_key]}

    def fingerprint(self, lo: int, hi: int | None) -> str:
        lo, hi, _ = slice(lo, hi).indices(len(self))
        return hashlib.sha256(f"{self.tag}[{lo}:{hi}]".encode()).hexdigest()[:16]


@dataclasses.dataclass
class Source:
    name: str
    num_classes: int
    class_names: list[str]
    image_shape: tuple[int | None, int | None, int]  # the dataset's own (H, W, C)
    splits: Mapping[str, Any]  # split name -> random-access source
    kind: str  # 'array' | 'bytes'
    skipped: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # split -> bad files

    @property
    def split_sizes(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.splits.items()}


def _select(labels: np.ndarray, classes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the examples of ``classes``, and their labels renumbered 0..K-1."""
    if not classes:
        return np.arange(len(labels)), labels
    index = np.flatnonzero(np.isin(labels, classes))
    remap = {c: i for i, c in enumerate(classes)}
    return index, np.asarray([remap[int(y)] for y in labels[index]], np.int64)


def _check_classes(classes: Sequence[int], num_classes: int, names: list[str]) -> list[str]:
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad or len(set(classes)) != len(classes):
        raise ValueError(f"classes={tuple(classes)}: expected distinct label ids in 0..{num_classes - 1}")
    return [names[c] for c in classes] if classes else names


def digits_source(classes: Sequence[int] = ()) -> Source:
    """scikit-learn's 1,797 8x8 digits, split 80/20 once and for all (stratified, seed 0)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.2, random_state=0, stratify=labels
    )
    names = _check_classes(classes, 10, [str(i) for i in range(10)])
    splits = {}
    for split, (x, y) in {"train": (x_train, y_train), "test": (x_test, y_test)}.items():
        index, y = _select(y, classes)
        splits[split] = ArraySource(x[index], y)
    return Source("digits", len(names), names, (8, 8, 1), splits, kind="array")


def _scan(paths: Sequence[str]) -> tuple[list[str], list[tuple[int, int]]]:
    """Decodes every file once, in parallel: the undecodable ones, and the others' (H, W)."""

    def shape(path: str) -> tuple[int, int] | None:
        try:
            with open(path, "rb") as f:
                return decode_image(f.read(), 3).shape[:2]
        except (OSError, ValueError):
            return None

    with concurrent.futures.ThreadPoolExecutor(max_workers=min(32, 2 * (os.cpu_count() or 1))) as pool:
        shapes = list(pool.map(shape, paths, chunksize=64))
    bad = [p for p, hw in zip(paths, shapes) if hw is None]
    return bad, [hw for hw in shapes if hw is not None]


def _listing(root: str, split: str, class_names: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Every image file of ROOT/SPLIT/CLASS/, in sorted order, with its class index."""
    files, labels = [], []
    for label, name in enumerate(class_names):
        folder = os.path.join(root, split, name)
        if not os.path.isdir(folder):
            continue
        for entry in sorted(os.listdir(folder)):
            if not entry.startswith(".") and entry.lower().endswith(IMAGE_EXTENSIONS):
                files.append(os.path.join(folder, entry))
                labels.append(label)
    return files, np.asarray(labels, np.int64)


def image_folder_source(root: str, classes: Sequence[int] = ()) -> Source:
    """ROOT/SPLIT/CLASS/*: the classes are the sorted class folders found in any split (as
    TFDS's ImageFolder); files that do not decode are dropped and listed in ``skipped``."""
    if not root:
        raise ValueError("dataset 'image_folder' needs --config.data_dir=ROOT holding ROOT/train/CLASS/*")
    if not os.path.isdir(root):
        raise ValueError(f"image folder data_dir={root!r} is not a directory")
    split_names = sorted(
        d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith(".")
    )
    if "train" not in split_names:
        raise ValueError(f"image folder {root!r} has no train/ subfolder; found: {split_names}")
    all_classes = sorted(
        {
            c
            for s in split_names
            for c in os.listdir(os.path.join(root, s))
            if os.path.isdir(os.path.join(root, s, c)) and not c.startswith(".")
        }
    )
    class_names = _check_classes(classes, len(all_classes), all_classes)
    skipped: dict[str, list[str]] = {}
    splits: dict[str, FileSource] = {}
    shapes: set[tuple[int, int]] = set()
    for split in split_names:
        files, labels = _listing(root, split, all_classes)
        if not files:
            continue
        # Only the chosen classes' files are scanned (decoded once, to drop the bad ones).
        index, labels = _select(labels, classes)
        files = [files[i] for i in index]
        bad, hw = _scan(files)
        skipped[split] = bad
        keep = np.flatnonzero(~np.isin(files, bad)) if bad else np.arange(len(files))
        splits[split] = FileSource(tuple(files[i] for i in keep), labels[keep])
        shapes.update(hw)
    _check_every_class_trains(root, class_names, splits["train"].labels if "train" in splits else [])
    return Source(
        name=f"image_folder:{root}",
        num_classes=len(class_names),
        class_names=list(class_names),
        # A folder whose images all share one size is a fixed-size dataset.
        image_shape=(*shapes.pop(), 3) if len(shapes) == 1 else (None, None, 3),
        splits=splits,
        kind="bytes",
        skipped={k: v for k, v in skipped.items() if v},
    )


def _check_every_class_trains(root: str, class_names: Sequence[str], labels: Any) -> None:
    """A class without a train image could never be predicted: refuse it, naming its folder."""
    counts = np.bincount(np.asarray(labels, np.int64), minlength=len(class_names))
    empty = [name for name, n in zip(class_names, counts) if n == 0]
    if not empty:
        return
    folders = []
    for name in empty[:5]:
        folder = os.path.join(root, "train", name)
        found = "holds no decodable image" if os.path.isdir(folder) else "does not exist"
        folders.append(f"{folder} {found}")
    more = f" (and {len(empty) - 5} more)" if len(empty) > 5 else ""
    raise ValueError(
        f"image folder {root!r}: {len(empty)} class(es) have no train images: {'; '.join(folders)}{more}. "
        f"A class is every folder name found under any split; add its images to train/ "
        f"({', '.join(IMAGE_EXTENSIONS)}), remove its folders, or leave it out with --config.classes."
    )


def _prepared_builder(name: str, data_dir: str) -> Any:
    """The TFDS builder of ``name`` read from its prepared files (no builder code, so no
    TensorFlow), or None when it is not prepared under ``data_dir``."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import read_only_builder

    try:
        return read_only_builder.builder_from_files(name, data_dir=data_dir or None)
    except (tfds.core.registered.DatasetNotFoundError, FileNotFoundError, ValueError):
        return None


def _prepare(name: str, data_dir: str, manual_dir: str) -> Any:
    """Downloads and prepares ``name`` as ArrayRecord files. Most TFDS builders need
    TensorFlow for this step (the ``prepare`` extra); training afterwards does not."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir or None, file_format="array_record")
    except tfds.core.registered.DatasetNotFoundError as e:
        known = [*BUILTIN_DATASETS, *tfds.list_builders(with_community_datasets=False)]
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
        raise ValueError(
            f"unknown dataset {name!r}; {hint}valid: 'digits', 'image_folder' or a TFDS "
            f"image-classification dataset such as cifar10, cifar100, mnist, fashion_mnist, "
            f"imagenette, imagenet2012 (tfds.list_builders() has all {len(known) - 2})"
        ) from e
    if not builder.is_prepared():
        try:
            import tensorflow  # noqa: F401  (TFDS's builders write their files with it)
        except ImportError as e:
            raise RuntimeError(
                f"TFDS dataset {name!r} is not prepared in {builder.data_dir!r}, and preparing it "
                f'needs TensorFlow ({e}). Install the preparation extra (pip install -e ".[prepare]"), '
                f"or prepare it elsewhere with `tfds build {name} --file_format=array_record` and "
                "pass its --config.data_dir. Training on a prepared dataset needs no TensorFlow."
            ) from e
        download_config = tfds.download.DownloadConfig(manual_dir=manual_dir or None)
        try:
            builder.download_and_prepare(download_config=download_config)
        except Exception as e:
            raise RuntimeError(
                f"could not prepare TFDS dataset {name!r} in {builder.data_dir!r}: {e}\n"
                "Offline? Prepare it on a connected machine (`tfds build NAME "
                "--file_format=array_record`) and pass its --config.data_dir; manual-download "
                "datasets (imagenet2012) need --config.manual_dir."
            ) from e
    return builder


def tfds_source(name: str, data_dir: str, manual_dir: str) -> Source:
    """Any TFDS image-classification dataset, through ``tfds.data_sources`` (ArrayRecord).

    A prepared dataset is read from its files; one that is not is prepared first.
    """
    import tensorflow_datasets as tfds

    builder = _prepared_builder(name, data_dir) or _prepare(name, data_dir, manual_dir)
    keys = builder.info.supervised_keys
    if not keys or "image" not in builder.info.features or keys[0] != "image":
        raise ValueError(f"dataset {name!r} is not an image-classification dataset (supervised keys {keys})")
    splits = {}
    for split in builder.info.splits or ("train", "validation", "test"):
        try:
            source = builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})
        except (ValueError, KeyError, NotImplementedError) as e:
            if builder.info.splits:
                raise ValueError(
                    f"TFDS dataset {name!r} in {builder.data_dir} cannot be read as a data source ({e}). "
                    "It must be prepared as ArrayRecord: `tfds build NAME --file_format=array_record`."
                ) from e
            continue  # TFDS mock data without split metadata: only the usual splits exist
        splits[split] = TfdsSource(source, keys[1], f"{name}:{builder.info.version}:{split}")
    label = builder.info.features[keys[1]]
    return Source(
        name=name,
        num_classes=label.num_classes,
        class_names=list(label.names),
        image_shape=tuple(builder.info.features["image"].shape),
        splits=splits,
        kind="bytes",
    )


def create_source(settings: Input) -> Source:
    """The dataset ``settings`` names: digits, an image folder or a TFDS dataset."""
    classes = settings.classes
    if settings.dataset == "digits":
        return digits_source(classes)
    if settings.dataset == "image_folder":
        return image_folder_source(settings.data_dir, classes)
    if classes:
        raise ValueError(
            f"config.classes={classes} works with 'digits' and 'image_folder'; not yet with TFDS "
            f"dataset {settings.dataset!r}"
        )
    return tfds_source(settings.dataset, settings.data_dir, settings.manual_dir)
