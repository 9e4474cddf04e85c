"""Labelled images to evaluate on: a folder of class folders or a prepared TFDS split,
listed without reading a pixel, and their classes matched to a model's classes by name.

``folder_images`` follows torchvision's ``ImageFolder`` layout (ROOT/CLASS/IMAGE, the
classes sorted by name) with the trainer's rules for which files are images;
``tfds_images`` reads a prepared TFDS split's ArrayRecord files through
``tfds.data_sources``, without TensorFlow. ``match_classes`` maps each data class onto
the weights' index: ImageNet-1k weights by WordNet id (``n01440764``) or class name,
others by class name.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Callable, Sequence

import numpy as np

from resnet_jax import classes
from resnet_jax.preprocessing import IMAGE_EXTENSIONS


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
