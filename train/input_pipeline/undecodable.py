"""Images that do not decode, met while reading: skipped the same way every time, and counted.

Start-up reads no pixels (``train.input_pipeline.folders``), so a truncated JPEG, a text
file named ``.jpg`` or a file deleted since the listing is found when its example is read:

- for training, ``DecodeOrSkip`` stands the next decodable example of the split in for it
  (i + 1, i + 2, ..., wrapping at the end), with that example's label. Which one depends
  only on the files, so global batch k stays a pure function of (seed, k): a resumed run,
  or one on another number of processes, reads the same stream;
- for evaluation, it is masked out: the split is scored on the images that decode.

Each record carries ``'skipped'``: the index in its split of the file it stands for, or
-1. ``Undecodable``, in the trainer's process, collects them from the batches: it names
the first few in the log, counts the rest, is saved with each checkpoint and written to
``summary.json``, and stops the run when more than ``limit`` of a split does not decode.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import jax
import numpy as np
from jax.experimental import multihost_utils

from resnet_jax.preprocessing import decode_image

NAMED = 5  # files named in the log as they are met; the rest are counted
MAX_IN_A_ROW = 64  # undecodable files one after another: the folder is broken, not a file


class DecodeOrSkip(grain.MapDataset):
    """``parent`` (records of encoded ``'image'`` bytes) decoded to uint8 (H, W, ``channels``).

    An undecodable record is replaced by the next decodable one (``substitute``, for
    training) or returned with ``'image': None`` (for evaluation); ``'skipped'`` is its
    index plus ``offset`` (where ``parent`` starts in its split), or -1.
    """

    def __init__(self, parent: grain.MapDataset, channels: int, offset: int, substitute: bool):
        super().__init__(parent)
        self._channels, self._offset, self._substitute = channels, offset, substitute

    def __len__(self) -> int:
        return len(self._parent)

    def __str__(self) -> str:
        return f"DecodeOrSkip(substitute={self._substitute})"

    def _decoded(self, index: int) -> dict[str, Any] | None:
        try:
            record = self._parent[index]
            return {**record, "image": decode_image(record["image"], self._channels)}
        except (OSError, ValueError):  # unreadable (gone, no permission) or undecodable
            return None

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        n = len(self._parent)
        index %= n
        record = self._decoded(index)
        if record is not None:
            return {**record, "skipped": np.int64(-1)}
        skipped = np.int64(self._offset + index)
        if not self._substitute:
            return {"image": None, "label": np.int64(0), "skipped": skipped}  # masked out
        for step in range(1, min(MAX_IN_A_ROW, n)):
            record = self._decoded((index + step) % n)
            if record is not None:
                return {**record, "skipped": skipped}
        raise ValueError(
            f"{min(MAX_IN_A_ROW, n)} images in a row do not decode, from example {int(skipped)} of "
            f"the split on ({self._parent}); is the folder readable, and are these images?"
        )


class Undecodable:
    """The undecodable files a run has met, by split: {index in the split: path}.

    ``sources`` maps each split (its base name) to its random-access source, whose
    ``path(i)`` names example i (image folders; other sources are named by index).
    """

    def __init__(self, sources: Mapping[str, Any], limit: float, where: str):
        self.sources, self.limit, self.where = sources, limit, where
        self.found: dict[str, dict[int, str]] = {split: {} for split in sources}
        self._unsynced: list[tuple[int, int]] = []  # (split number, index) since the last sync
        self._named = 0

    def _name(self, split: str, index: int) -> str:
        source = self.sources[split]
        return source.path(index) if hasattr(source, "path") else f"{split}[{index}]"

    def add(self, split: str, skipped: np.ndarray) -> None:
        """Records a batch's ``'skipped'`` indices (-1: none) of ``split``; names the new ones."""
        for index in np.unique(skipped[skipped >= 0]).tolist():
            self._unsynced.append((sorted(self.sources).index(split), index))
            self._record(split, index)

    def _record(self, split: str, index: int) -> None:
        if index in self.found[split]:
            return
        path = self.found[split][index] = self._name(split, index)
        self._named += 1
        if self._named <= NAMED:
            logging.warning("skipping %s (split %r): it does not decode", path, split)
        if self._named == NAMED:
            logging.warning("more undecodable images are counted but not named; summary.json lists all")

    def sync(self) -> None:
        """Every process's finds, in every process (a collective: all call it together)."""
        if jax.process_count() > 1:
            mine = np.asarray(self._unsynced, np.int64).reshape(-1, 2)
            most = int(np.max(multihost_utils.process_allgather(np.int64(len(mine)))))
            padded = np.full((most, 2), -1, np.int64)
            padded[: len(mine)] = mine
            names = sorted(self.sources)
            for number, index in multihost_utils.process_allgather(padded).reshape(-1, 2).tolist():
                if number >= 0:
                    self._record(names[number], index)
        self._unsynced = []

    def count(self, split: str, lo: int = 0, hi: int | None = None) -> int:
        """How many of examples lo..hi-1 of ``split`` were found undecodable."""
        hi = len(self.sources[split]) if hi is None else hi
        return sum(lo <= i < hi for i in self.found[split])

    def check(self) -> None:
        """Raises ``ValueError`` once more than ``limit`` of a split's examples failed."""
        for split, found in self.found.items():
            size = len(self.sources[split])
            if len(found) > self.limit * size:
                paths = [found[i] for i in sorted(found)[:3]]
                raise ValueError(
                    f"{len(found)} of the {size} images of split {split!r} in {self.where} do not decode "
                    f"({100 * len(found) / size:.2g}%, over config.undecodable_limit={self.limit}): "
                    f"{', '.join(paths)}{', ...' if len(found) > 3 else ''}. Replace or remove them, "
                    "or raise config.undecodable_limit"
                )

    def state(self) -> dict[str, list[list[Any]]]:
        """For a checkpoint: {split: [[index, path], ...]}, the splits with finds only."""
        return {s: [[i, p] for i, p in sorted(f.items())] for s, f in self.found.items() if f}

    def restore(self, state: Mapping[str, Sequence[Sequence[Any]]]) -> None:
        """What a checkpoint's ``state()`` held: not named again when met again."""
        for split, pairs in state.items():
            if split in self.found:
                self.found[split].update({int(i): str(p) for i, p in pairs})
        self._named = max(self._named, sum(map(len, self.found.values())))

    def summary(self) -> dict[str, list[str]]:
        """{split: [path, ...]} for ``summary.json``."""
        return {s: [p for _, p in pairs] for s, pairs in self.state().items()}

    def describe(self) -> str:
        """One line of the counts, '' when nothing was skipped."""
        counts = [f"{len(f)} of split {s!r}" for s, f in self.found.items() if f]
        if not counts:
            return ""
        return f"skipped undecodable images: {', '.join(counts)} (summary.json lists them)"
