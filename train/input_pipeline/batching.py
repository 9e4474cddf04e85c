"""The train stream and the eval batches, as grain datasets: order, sharding, batching.

The train stream is a ``grain.MapDataset`` of this process's local batches, a pure
function of (seed, k) for global batch k:

- epoch ``e`` is the split in the order of grain's index shuffle with seed ``seed + e``,
  cut to whole global batches;
- with repeated augmentation (``repeated_augmentations`` = k > 1, Hoffer et al.
  2020; torchvision's ``RASampler``), each example of that order is repeated k times in a
  row, so k copies of it, each augmented differently, sit side by side in one global
  batch and go to different processes. An epoch still counts as many examples as the
  split has, as with ``RASampler``: the k copies of an order fill k epochs (a round), in
  which every example appears exactly k times; each epoch holds 1/k of the examples, k
  times each. A recipe's epoch count therefore carries over unchanged;
- every example is augmented with grain's per-record generator, seeded by (seed, its
  position in the global stream);
- process ``p`` of ``P`` takes positions ``p, p + P, p + 2P, ...`` of that stream
  (``ds[p::P]``) and batches them, so a global batch holds the same examples, augmented
  the same way, on 1 or N processes, and each process reads and decodes only its share.

Its iterator is a grain ``DatasetIterator`` whose state (the next batch) Orbax saves with
the model (``train.checkpointing``), so a resumed run continues the stream exactly.
Evaluation covers each split once: each process takes a contiguous slice of it, and the
last partial batch is padded and masked.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import grain
import jax
import numpy as np
from absl import flags

from resnet_jax.preprocessing import Preprocessing
from train.input_pipeline import augment
from train.input_pipeline.datasets import Source, create_source
from train.input_pipeline.erasing import RandomErasing
from train.input_pipeline.policies import Policy
from train.input_pipeline.undecodable import DecodeOrSkip, Undecodable
from train.settings import Input


def exit_with_parent(parent_pid: int, worker_index: int, worker_count: int, poll_s: float = 0.5) -> None:
    """grain worker init: end this worker process soon after ``parent_pid`` is gone.

    grain's workers are daemon processes, which Python ends when their parent exits
    normally. A parent that is killed (``kill -9``, the OOM killer, a scheduler's hard
    stop) ends nothing: its workers, blocked on a full queue, would live on with its
    ``multiprocessing`` resource tracker and its shared memory. Here a thread watches the
    parent; once this process has been re-parented, it exits, and the tracker, whose last
    writer it was, then removes what the dead parent left in ``/dev/shm``.
    """
    del worker_index, worker_count  # the same for every worker

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os._exit(1)  # no cleanup to run: the parent that owned this worker's work is gone

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def jax_process_count() -> int:
    return jax.process_count()


def jax_process_index() -> int:
    return jax.process_index()


@dataclasses.dataclass(frozen=True)
class Transform:
    """One decoded record -> ``{'image': uint8 (H, W, C), 'label': int32, 'skipped': int64}``:
    the ``crop`` (``augment.preprocess``), then for training the ``policy`` and random
    ``erasing``, in the recipes' order. Called as ``(record, rng)`` by grain's
    ``random_map`` for training and as ``(record)`` by ``map`` for evaluation. A record
    with no image (undecodable, ``undecodable.DecodeOrSkip``) becomes zeros, for its mask."""

    train: bool
    image_shape: tuple[int, int, int]
    crop: augment.Crop
    policy: Policy | None = None
    erasing: RandomErasing | None = None

    def __call__(self, record: dict[str, Any], rng: np.random.Generator | None = None) -> dict[str, Any]:
        image, skipped = record["image"], np.int64(record.get("skipped", -1))
        if image is None:
            return {"image": np.zeros(self.image_shape, np.uint8), "label": np.int32(0), "skipped": skipped}
        image = augment.preprocess(image, self.crop, train=self.train, rng=rng)
        if self.train and self.policy is not None:
            image = self.policy(image, rng)
        if self.train and self.erasing is not None:
            image = self.erasing(image, rng)
        if image.shape != self.image_shape:
            raise ValueError(
                f"an image preprocessed to {image.shape}, not {self.image_shape}; images of "
                "varying sizes need --config.image_size"
            )
        return {"image": image, "label": np.int32(record["label"]), "skipped": skipped}


class RepeatEach(grain.MapDataset):
    """Each element of ``parent`` ``k`` times in a row: element i is ``parent[i // k]``.

    Past its end it reads past ``parent``'s, so over a shuffled parent, round r of k * n
    elements is the parent's epoch r (grain's shuffle with seed + r) repeated elementwise.
    """

    def __init__(self, parent: grain.MapDataset, k: int):
        super().__init__(parent)
        self._k = k

    def __len__(self) -> int:
        return self._k * len(self._parent)

    def __str__(self) -> str:
        return f"RepeatEach(k={self._k})"

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return self._parent[index // self._k]


def _slice_spec(split: str) -> tuple[str, int, int | None]:
    """'train[:45000]' -> ('train', 0, 45000); plain names take the whole split."""
    if "[" not in split:
        return split, 0, None
    base, rest = split.split("[", 1)
    lo, hi = rest.rstrip("]").split(":")
    return base, int(lo or 0), int(hi) if hi else None


def _split_size(source: Source, split: str) -> int:
    base, lo, hi = _slice_spec(split)
    if base not in source.splits:
        raise ValueError(
            f"dataset {source.name!r} has no split {base!r}; valid: {', '.join(source.split_sizes)}"
        )
    total = len(source.splits[base])
    return min(total, hi if hi is not None else total) - lo


def _pad(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """``batch`` padded to ``size``, with ``'mask'`` 0 on the padding and undecodable images."""
    n = len(batch["label"])
    out = {k: np.concatenate([v, np.zeros((size - n, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}
    out["skipped"][n:] = -1
    out["mask"] = ((np.arange(size) < n) & (out["skipped"] < 0)).astype(np.float32)
    return out


@dataclasses.dataclass
class Data:
    """The splits of one dataset, batched for this process.

    ``train_iterator()`` yields this process's part of every global batch, forever, and
    is checkpointable; ``eval_batches()`` covers the eval split exactly once, with the
    last partial batch padded and marked by ``mask == 0``.
    """

    source: Source
    settings: Input
    train_split: str
    eval_split: str
    num_train: int
    num_eval: int
    image_shape: tuple[int, int, int]  # the model input (H, W, C) for evaluation
    train_image_shape: tuple[int, int, int]  # and for training (config.train_image_size)
    steps_per_epoch: int
    eval_steps: int
    undecodable: Undecodable  # the images met that do not decode, by split

    @property
    def num_classes(self) -> int:
        return self.source.num_classes

    @property
    def eval_batch_size(self) -> int:
        return self.settings.eval_batch_size

    @staticmethod
    def split_range(split: str) -> tuple[str, int, int | None]:
        """'train[:45000]' -> ('train', 0, 45000): the split it is part of, and where."""
        return _slice_spec(split)

    def preprocessing(self) -> Preprocessing:
        """The evaluation transform of this data as the library's ``Preprocessing``: the
        crop, the channels and the run's normalisation. Saved with each checkpoint."""
        return self.settings.crop.evaluation(self.image_shape, self.settings.mean, self.settings.std)

    def identity(self) -> dict[str, Any]:
        """What the run trains on, for a resume to compare: another dataset, other classes or
        other train examples (another folder, files added or removed) refuse to resume."""
        base, lo, hi = _slice_spec(self.train_split)
        data_dir = self.settings.data_dir
        return {
            "data_dir": os.path.abspath(os.path.expanduser(data_dir)) if data_dir else "",
            "class_names": [str(c) for c in self.source.class_names],
            "image_shape": list(self.image_shape),
            "train_examples": self.num_train,
            "train_fingerprint": self.source.splits[base].fingerprint(lo, hi),
        }

    def _split(self, split: str, train: bool) -> grain.MapDataset:
        """The examples of ``split``, decoded; an undecodable one stands in for by the next
        (training) or left out (evaluation), in ``undecodable.DecodeOrSkip``."""
        base, lo, hi = _slice_spec(split)
        ds = grain.MapDataset.source(self.source.splits[base])[lo:hi]
        if self.source.kind == "bytes":
            ds = DecodeOrSkip(ds, self.source.image_shape[-1], lo, substitute=train)
        return ds

    def _transform(self, train: bool) -> Transform:
        c = self.settings
        return Transform(
            train=train,
            image_shape=self.train_image_shape if train else self.image_shape,
            crop=c.crop,
            policy=c.policy,
            erasing=c.erasing,
        )

    def _read_options(self) -> grain.ReadOptions:
        # Each element is a whole batch: a few in flight per thread are plenty.
        threads = self.settings.input_threads
        return grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads)

    def train_dataset(self) -> grain.MapDataset:
        """This process's local train batches, infinite: element k is its share of global
        batch k."""
        c = self.settings
        epoch = self.steps_per_epoch * c.batch_size  # whole global batches only
        ds = self._split(self.train_split, train=True).shuffle(seed=c.seed)[:epoch]
        if c.repeated_augmentations > 1:
            ds = RepeatEach(ds, c.repeated_augmentations)
        ds = ds.repeat().random_map(self._transform(train=True), seed=c.seed)
        count, index = jax_process_count(), jax_process_index()
        return ds[index::count].batch(c.batch_size // count, drop_remainder=True)

    def train_iterator(self) -> grain.DatasetIterator:
        """An iterator over ``train_dataset()`` from batch 0, read by ``config.input_threads``
        threads in each of ``input_workers`` worker processes (0: in this process).
        Its ``get_state()`` / ``set_state()`` move it to any batch; Orbax saves that state."""
        ds = self.train_dataset().to_iter_dataset(self._read_options())
        if self.settings.input_workers > 0:
            # grain's workers read its absl flags; outside an absl app (tests, notebooks)
            # nothing has parsed them, so take their defaults.
            if not flags.FLAGS.is_parsed():
                flags.FLAGS.mark_as_parsed()
            options = grain.MultiprocessingOptions(
                num_workers=self.settings.input_workers, per_worker_buffer_size=2
            )
            ds = ds.mp_prefetch(options, worker_init_fn=functools.partial(exit_with_parent, os.getpid()))
        return iter(ds)

    def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
        local = self.eval_batch_size // jax_process_count()
        # Each process evaluates a contiguous slice (<= ceil(N/P) examples), reading only it.
        count, index = jax_process_count(), jax_process_index()
        lo, hi = index * self.num_eval // count, (index + 1) * self.num_eval // count
        ds = self._split(self.eval_split, train=False)[lo:hi].map(self._transform(train=False)).batch(local)
        base = _slice_spec(self.eval_split)[0]
        n = 0
        for batch in ds.to_iter_dataset(self._read_options()):
            self.undecodable.add(base, batch["skipped"])
            yield _pad(batch, local)
            n += 1
        # Every process runs the same number of (collective) eval steps.
        empty = {
            "image": np.zeros((0, *self.image_shape), np.uint8),
            "label": np.zeros(0, np.int32),
            "skipped": np.zeros(0, np.int64),
        }
        for _ in range(n, self.eval_steps):
            yield _pad(empty, local)


def create_data(settings: Input, listing_dir: str | None = None) -> Data:
    """The train and eval splits of ``settings`` (``train.settings.data``), batched for
    this process. The checks that need the data are made here: the split names, the
    image size of a dataset of varying sizes, the mean and std per channel, and a
    batch that fits in the train split. An image folder's listing is kept in
    ``listing_dir`` (``train.input_pipeline.folders``)."""
    source = create_source(settings, listing_dir)
    train_split, eval_split = settings.train_split, settings.eval_split
    if not eval_split:
        eval_split = "test" if "test" in source.splits else "validation"
    if settings.validation_examples > 0:
        # Hold out the last N train examples (He et al.'s 45k/5k CIFAR split).
        n = _split_size(source, train_split) - settings.validation_examples
        if n <= 0:
            raise ValueError(f"validation_examples={settings.validation_examples} leaves no train examples")
        train_split, eval_split = f"{train_split}[:{n}]", f"{train_split}[{n}:]"
    num_train, num_eval = _split_size(source, train_split), _split_size(source, eval_split)
    h, w, channels = source.image_shape
    size = settings.crop.image_size
    if not size and (h is None or w is None):
        raise ValueError(
            f"dataset {source.name!r} has images of varying sizes; set --config.image_size (e.g. 224)"
        )
    image_shape = (size, size, channels) if size else (h, w, channels)
    train_size = settings.crop.train_image_size or size
    train_image_shape = (train_size, train_size, channels) if train_size else image_shape
    for field in ("mean", "std"):
        values = getattr(settings, field)
        if len(values) not in (1, channels):
            raise ValueError(
                f"config.{field}={values} has {len(values)} values; "
                f"dataset {source.name!r} has {channels} channel(s)"
            )
    steps_per_epoch = num_train // settings.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size={settings.batch_size} exceeds the {num_train} train examples")
    local_eval = settings.eval_batch_size // jax_process_count()
    eval_steps = math.ceil(math.ceil(num_eval / jax_process_count()) / local_eval)
    return Data(
        source=source,
        settings=settings,
        train_split=train_split,
        eval_split=eval_split,
        num_train=num_train,
        num_eval=num_eval,
        image_shape=image_shape,
        train_image_shape=train_image_shape,
        steps_per_epoch=steps_per_epoch,
        eval_steps=eval_steps,
        undecodable=Undecodable(source.splits, settings.undecodable_limit, source.name),
    )
