"""Where the examples come from: random-access sources, one per split, for grain.

A source has ``len()`` and ``source[i] -> {'image', 'label'}`` (grain's
``RandomAccessDataSource``), where ``'image'`` is a decoded uint8 array (``kind='array'``)
or encoded bytes (``kind='bytes'``), read and decoded only by the process and worker that
use the example:

- ``digits``: scikit-learn's bundled 8x8 digits, in memory;
- ``image_folder``: ROOT/SPLIT/CLASS/* files, listed once (``train.input_pipeline.folders``)
  and each read when its example is needed;
- any TFDS image-classification dataset, read from its ArrayRecord files through
  ``tfds.data_sources``. Reading needs no TensorFlow; preparing (downloading and writing
  the files) does, for most TFDS builders: ``pip install -e ".[prepare]"``.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from resnet_jax.preprocessing import IMAGE_EXTENSIONS
from train.input_pipeline import folders

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


def _listed(root: str, listing_dir: str | None, need_shape: bool) -> folders.FolderListing:
    """The folder's listing: the one saved in ``listing_dir`` while the folder is unchanged,
    else a new one, saved there. With several processes, process 0 lists (and reads the
    headers, if ``need_shape``) and the others read what it saved."""
    import jax
    from jax.experimental import multihost_utils

    root = os.path.abspath(root)
    leader = not listing_dir or jax.process_index() == 0
    listing = None
    if leader:
        saved = folders.FolderListing.load(listing_dir, root) if listing_dir else None
        listing = saved or folders.FolderListing.scan(root)
        if need_shape and not listing.shapes:
            for split in listing.splits:
                listing.shapes[split] = folders.class_shapes(_file_source(listing, split, ()))
            saved = None
        if listing_dir and saved is None:
            listing.save(listing_dir)
            listing = folders.FolderListing.load(listing_dir) or listing  # memory-mapped, for the workers
    if listing_dir and jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"resnet_jax listing of {root}")
        if not leader:  # a workdir on storage every process shares, as Orbax needs too
            listing = folders.FolderListing.load(listing_dir) or folders.FolderListing.scan(root)
    return listing


def _file_source(listing: folders.FolderListing, split: str, classes: Sequence[int]) -> folders.FileSource:
    """The files of ``split`` in ``classes`` (all when empty), labelled 0..K-1 in that order."""
    source = folders.FileSource(
        os.path.join(listing.root, split), tuple(listing.class_names), listing.splits[split]
    )
    if not classes:
        return source
    remap = np.full(len(listing.class_names), -1, np.int64)
    remap[list(classes)] = np.arange(len(classes))
    rows = np.flatnonzero(remap[np.asarray(source.listing.labels)] >= 0)
    return dataclasses.replace(source, rows=rows, remap=remap)


def image_folder_source(
    root: str, classes: Sequence[int] = (), listing_dir: str | None = None, need_shape: bool = True
) -> Source:
    """ROOT/SPLIT/CLASS/*: the classes are the sorted class folders found in any split (as
    TFDS's ImageFolder). Lists the files and reads no image (``train.input_pipeline.folders``);
    with ``need_shape``, the headers too, for the dataset's own image size. A file that
    does not decode is found when it is read (``train.input_pipeline.undecodable``)."""
    if not root:
        raise ValueError("dataset 'image_folder' needs --config.data_dir=ROOT holding ROOT/train/CLASS/*")
    if not os.path.isdir(root):
        raise ValueError(f"image folder data_dir={root!r} is not a directory")
    if not os.path.isdir(os.path.join(root, "train")):
        found = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and d[0] != ".")
        raise ValueError(f"image folder {root!r} has no train/ subfolder; found: {found}")
    listing = _listed(root, listing_dir, need_shape)
    class_names = _check_classes(classes, len(listing.class_names), listing.class_names)
    splits = {split: _file_source(listing, split, classes) for split in listing.splits}
    _check_every_class_trains(root, class_names, splits["train"].labels if "train" in splits else [])
    shape = folders.one_shape(listing.shapes, class_names) if need_shape else None
    return Source(
        name=f"image_folder:{root}",
        num_classes=len(class_names),
        class_names=list(class_names),
        # A folder whose images all share one size is a fixed-size dataset.
        image_shape=(*shape, 3) if shape else (None, None, 3),
        splits=splits,
        kind="bytes",
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
        found = "holds no image file" if os.path.isdir(folder) else "does not exist"
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
        # TensorFlow's C++ start-up notes (oneDNN, CPU features) would bury the error line.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
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
            raise RuntimeError(_not_prepared(name, builder.data_dir, e)) from e
    return builder


def _not_prepared(name: str, where: str, error: BaseException) -> str:
    """One line: why preparing ``name`` failed, the cause first, then what to do."""
    cause = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, ModuleNotFoundError):  # a package TFDS's builder needs, not the network
        return (
            f"could not prepare TFDS dataset {name!r} in {where!r}: its builder needs the module "
            f"{error.name!r}, which is not installed; pip install {error.name} (or reinstall the "
            'extra: pip install -e ".[prepare]")'
        )
    return (
        f"could not prepare TFDS dataset {name!r} in {where!r}: {cause}. Offline? Prepare it on a "
        "connected machine (`tfds build NAME --file_format=array_record`) and pass its "
        "--config.data_dir; manual-download datasets (imagenet2012) need --config.manual_dir."
    )


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


def create_source(settings: Input, listing_dir: str | None = None) -> Source:
    """The dataset ``settings`` names: digits, an image folder (its listing saved in and
    reused from ``listing_dir``, when given) or a TFDS dataset."""
    classes = settings.classes
    if settings.dataset == "digits":
        return digits_source(classes)
    if settings.dataset == "image_folder":
        return image_folder_source(
            settings.data_dir, classes, listing_dir, need_shape=not settings.crop.image_size
        )
    if classes:
        raise ValueError(
            f"config.classes={classes} works with 'digits' and 'image_folder'; not yet with TFDS "
            f"dataset {settings.dataset!r}"
        )
    return tfds_source(settings.dataset, settings.data_dir, settings.manual_dir)
