"""Image folders, ROOT/SPLIT/CLASS/*, listed without reading a pixel, and listed once.

Start-up lists each class folder (one ``os.scandir`` each, as torchvision's
``ImageFolder`` does) and reads no image: a file that does not decode is found, skipped
and counted while the run reads it (``train.input_pipeline.undecodable``). The one thing
that needs more than names is the dataset's own image size, asked for only when no
``image_size`` is set; it comes from the files' headers, not their pixels.

A split's listing is two arrays, not a Python list of paths: the file names as one
``uint8`` buffer (``\\0`` after each) with their offsets, and the class of each. Saved
under ``listing_dir`` (the trainer's ``WORKDIR/listing``), they are memory-mapped, and a
grain worker process that unpickles a ``FileSource`` maps the same files again, so 1.3M
ImageNet paths cost each worker a few pages of the page cache rather than a copy.

A saved listing is reused while the folder is unchanged: every directory it read (ROOT,
ROOT/SPLIT, ROOT/SPLIT/CLASS) still has the modification time it had, which changes when a
file or folder in it is added, removed or renamed. Otherwise the folder is listed again
(and a resumed run then refuses the changed train split, by its fingerprint). With
several processes, process 0 lists and saves, and the others read what it saved.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from resnet_jax.preprocessing import IMAGE_EXTENSIONS

LISTING_VERSION = 1
_ARRAYS = ("names", "offsets", "labels")


@dataclasses.dataclass(frozen=True, eq=False)
class Listing:
    """The image files of one split, in class order, then name order within a class.

    ``names``: uint8, every file name (no folder) encoded and followed by ``\\0``;
    ``offsets``: int64 (n + 1,), where name i starts, and the end; ``labels``: int32 (n,),
    each file's class index. ``prefix``: the ``.npy`` files' common prefix when they were
    loaded from disk (memory-mapped), which is all that pickling carries then.
    """

    names: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray
    prefix: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    def name(self, row: int) -> str:
        raw = self.names[self.offsets[row] : self.offsets[row + 1] - 1]
        return raw.tobytes().decode("utf-8", "surrogateescape")

    def block(self, lo: int, hi: int) -> bytes:
        """The names of rows lo..hi-1, each followed by ``\\0``, as stored."""
        return self.names[self.offsets[lo] : self.offsets[hi]].tobytes()

    def __reduce__(self) -> tuple[Any, ...]:
        if self.prefix:
            return Listing.load, (self.prefix,)
        return Listing, (self.names, self.offsets, self.labels)

    def save(self, prefix: str) -> None:
        for field in _ARRAYS:
            np.save(f"{prefix}.{field}.npy", getattr(self, field))

    @staticmethod
    def load(prefix: str) -> Listing:
        arrays = {f: np.load(f"{prefix}.{f}.npy", mmap_mode="r") for f in _ARRAYS}
        return Listing(**arrays, prefix=prefix)

    @staticmethod
    def of(files_per_class: Sequence[Sequence[str]]) -> Listing:
        counts = [len(files) for files in files_per_class]
        text = "".join("".join(f"{name}\0" for name in files) for files in files_per_class)
        names = np.frombuffer(text.encode("utf-8", "surrogateescape"), np.uint8)
        offsets = np.concatenate([[0], np.flatnonzero(names == 0) + 1]).astype(np.int64)
        labels = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
        return Listing(names, offsets, labels)


@dataclasses.dataclass(frozen=True, eq=False)
class FileSource:
    """Image files, read when their example is needed: grain's random-access source.

    ``rows``: the listing's rows in this source (the chosen classes), or None for all;
    ``remap``: class index -> label (the chosen classes renumbered), or None.
    """

    folder: str  # ROOT/SPLIT
    class_names: tuple[str, ...]
    listing: Listing
    rows: np.ndarray | None = None
    remap: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.listing) if self.rows is None else len(self.rows)

    def _row(self, index: int) -> int:
        return int(index if self.rows is None else self.rows[index])

    def path(self, index: int) -> str:
        row = self._row(index)
        return os.path.join(self.folder, self.class_names[self.listing.labels[row]], self.listing.name(row))

    @property
    def labels(self) -> np.ndarray:
        classes = np.asarray(self.listing.labels if self.rows is None else self.listing.labels[self.rows])
        return (classes if self.remap is None else self.remap[classes]).astype(np.int64)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self._row(index)
        label = self.listing.labels[row]
        with open(self.path(index), "rb") as f:
            return {"image": f.read(), "label": label if self.remap is None else self.remap[label]}

    def fingerprint(self, lo: int, hi: int | None) -> str:
        """Of the files' labels and CLASS/NAME, one ``f"{label}\\t{CLASS}/{NAME}"`` line each,
        as before listings were arrays: the same folder moved elsewhere matches, and a run
        saved by an older version resumes. Built a class block at a time, not per file."""
        lo, hi, _ = slice(lo, hi).indices(len(self))
        rows = np.arange(lo, hi) if self.rows is None else np.asarray(self.rows[lo:hi])
        classes = np.asarray(self.listing.labels)[rows] if len(rows) else rows
        # Runs of consecutive rows of one class: a slice of the buffer each.
        cuts = np.flatnonzero((np.diff(rows) != 1) | (np.diff(classes) != 0)) + 1
        parts = []
        for a, b in zip([0, *cuts], [*cuts, len(rows)]):
            c = int(classes[a])
            label = c if self.remap is None else int(self.remap[c])
            prefix = f"{label}\t{self.class_names[c]}/".encode()
            block = self.listing.block(int(rows[a]), int(rows[b - 1]) + 1)[:-1]
            parts.append(prefix + block.replace(b"\0", b"\n" + prefix))
        return hashlib.sha256(b"\n".join(parts)).hexdigest()[:16]


def _files(folder: str) -> list[str]:
    """The image file names in ``folder``, sorted; [] when it does not exist."""
    try:
        with os.scandir(folder) as entries:
            return sorted(
                e.name
                for e in entries
                if not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file()
            )
    except (FileNotFoundError, NotADirectoryError):
        return []


def _subdirs(folder: str) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())


def _mtimes(root: str, splits: Sequence[str], class_names: Sequence[str]) -> dict[str, int]:
    """The modification time (ns) of every directory a listing reads, by relative path."""
    folders = ["", *splits, *(os.path.join(s, c) for s in splits for c in class_names)]
    times = {}
    for rel in folders:
        try:
            times[rel] = os.stat(os.path.join(root, rel)).st_mtime_ns
        except FileNotFoundError:
            continue  # a class with no folder in this split
    return times


@dataclasses.dataclass
class FolderListing:
    """Every split of an image folder, listed: the classes, and each split's files."""

    root: str
    class_names: list[str]
    splits: dict[str, Listing]
    mtimes: dict[str, int]
    shapes: dict[str, dict[str, list[int]]] = dataclasses.field(default_factory=dict)

    @staticmethod
    def scan(root: str) -> FolderListing:
        splits = _subdirs(root)
        classes = sorted({c for s in splits for c in _subdirs(os.path.join(root, s))})
        # The times first: a file added while listing makes the saved listing stale, not
        # wrong. A time within the last 2 s is recorded as -1, which never matches: on a
        # file system with coarse times, a change later in the same second would not show.
        recent = time.time_ns() - 2_000_000_000
        mtimes = {k: (t if t < recent else -1) for k, t in _mtimes(root, splits, classes).items()}
        listings = {}
        for split in splits:
            files = [_files(os.path.join(root, split, c)) for c in classes]
            if any(files):
                listings[split] = Listing.of(files)
        return FolderListing(root, classes, listings, mtimes)

    def save(self, directory: str) -> None:
        """Into ``directory``, replaced whole: a reader sees the old listing or the new one."""
        parent = os.path.dirname(directory.rstrip(os.sep)) or "."
        os.makedirs(parent, exist_ok=True)
        tmp = f"{directory.rstrip(os.sep)}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        for split, listing in self.splits.items():
            listing.save(os.path.join(tmp, split))
        meta = {
            "version": LISTING_VERSION,
            "root": self.root,
            "class_names": self.class_names,
            "splits": {s: len(v) for s, v in self.splits.items()},
            "mtimes": self.mtimes,
            "shapes": self.shapes,
        }
        with open(os.path.join(tmp, "listing.json"), "w") as f:
            json.dump(meta, f)
        old = f"{directory.rstrip(os.sep)}.old{os.getpid()}"
        if os.path.exists(directory):
            os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)

    @staticmethod
    def load(directory: str, root: str | None = None) -> FolderListing | None:
        """The listing saved in ``directory``; None when there is none, it is of another
        folder or version, or (with ``root``) a directory it read has changed since."""
        try:
            with open(os.path.join(directory, "listing.json")) as f:
                meta = json.load(f)
        except (OSError, ValueError):
            return None
        if meta.get("version") != LISTING_VERSION or (root is not None and meta.get("root") != root):
            return None
        if root is not None:
            splits = [s for s in meta["mtimes"] if s and os.sep not in s]
            if _mtimes(root, splits, meta["class_names"]) != meta["mtimes"]:
                return None
        try:
            splits = {s: Listing.load(os.path.join(directory, s)) for s in meta["splits"]}
        except (OSError, ValueError):
            return None
        if {s: len(v) for s, v in splits.items()} != meta["splits"]:
            return None
        shapes = meta.get("shapes", {})
        return FolderListing(meta["root"], meta["class_names"], splits, meta["mtimes"], shapes)


def _header_size(path: str) -> tuple[int, int] | None:
    """(H, W) from an image file's header, reading no pixels; None if it has no readable one."""
    try:
        with Image.open(path) as image:
            w, h = image.size
            return h, w
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def class_shapes(source: FileSource) -> dict[str, list[int]]:
    """Per class: [H, W] when all its files' headers say one size, [] when they vary."""
    paths = [source.path(i) for i in range(len(source))]
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, 4 * (os.cpu_count() or 1))) as pool:
        sizes = list(pool.map(_header_size, paths, chunksize=256))
    classes = np.asarray(source.listing.labels)[source.rows if source.rows is not None else slice(None)]
    seen: dict[str, set[tuple[int, int]]] = {}
    for c, hw in zip(classes.tolist(), sizes):
        if hw is not None:
            seen.setdefault(source.class_names[c], set()).add(hw)
    return {c: list(next(iter(s))) if len(s) == 1 else [] for c, s in seen.items()}


def one_shape(
    shapes: Mapping[str, Mapping[str, list[int]]], classes: Sequence[str]
) -> tuple[int, int] | None:
    """The image size shared by every file of ``classes`` in every split, else None."""
    found = {tuple(per_class[c]) for per_class in shapes.values() for c in classes if c in per_class}
    return found.pop() if len(found) == 1 and () not in found else None
