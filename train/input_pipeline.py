"""Input pipelines: TFDS datasets, image folders and the bundled digits, as tf.data.

The train stream is a pure function of (seed, step): epoch ``e`` shuffles the split with
seed ``(seed, e)``, and every example's augmentation draws from a stateless seed made of
(seed, epoch, its position in the epoch). Resuming at step ``s`` therefore skips the raw
records of the first ``s mod steps_per_epoch`` batches of the current epoch, before any
decoding, and reproduces the uninterrupted stream exactly.

The global order does not depend on the device or process count either: each process
takes every P-th record of the shuffled stream (``Dataset.shard``) and reads (image
folders), decodes and augments only those, so a global batch holds the same examples on
1 or N processes. TFDS records are still read by every process in that mode;
``per_process_split=True`` gives each process a contiguous 1/P of the split instead, read
from its own files, at the price of an order that depends on the process count.

TensorFlow runs on the CPU only; ``hide_gpus_from_tensorflow`` keeps it off the
accelerators, whose memory belongs to JAX.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

AUGMENTATIONS = ("none", "cifar", "imagenet")
BUILTIN_DATASETS = ("digits", "image_folder")
# ImageNet evaluation: resize so that the crop is 87.5% of the shorter side (224 of 256).
CENTER_CROP_FRACTION = 0.875


def hide_gpus_from_tensorflow() -> None:
    """TF would otherwise reserve GPU memory that JAX needs; it only feeds data here."""
    with contextlib.suppress(RuntimeError):  # already initialised: too late to change
        tf.config.set_visible_devices([], "GPU")


hide_gpus_from_tensorflow()


# ---------------------------------------------------------------------------------------
# Preprocessing: plain functions of one image, usable eagerly and inside tf.data.
# Random ones take a stateless seed (shape (2,) int) so that the stream is reproducible.


def decode_image(image_bytes: tf.Tensor, channels: int) -> tf.Tensor:
    """Encoded JPEG/PNG/BMP/GIF bytes -> uint8 (H, W, channels).

    Grayscale, RGBA and CMYK images are converted to ``channels``.
    """
    image = tf.io.decode_image(image_bytes, channels=channels, expand_animations=False)
    image.set_shape([None, None, channels])
    return image


def pad_and_random_crop(image: tf.Tensor, padding: int, seed: tf.Tensor) -> tf.Tensor:
    """Zero-pads each side by ``padding`` and crops back to the original size at random."""
    shape = tf.shape(image)
    padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
    return tf.image.stateless_random_crop(padded, shape, seed=seed)


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Horizontal flip with probability 1/2."""
    return tf.image.stateless_random_flip_left_right(image, seed=seed)


def resize(image: tf.Tensor, size: int, antialias: bool = True) -> tf.Tensor:
    """Bilinear resize to (size, size), skipped when already that size; keeps the dtype.

    ``antialias`` widens the filter when shrinking, as PIL and torchvision do; without it
    the resize costs a third as much (see ``config.train_antialias``).
    """

    def _resize():
        out = tf.image.resize(image, [size, size], method="bilinear", antialias=antialias)
        return tf.cast(tf.round(out), image.dtype) if image.dtype == tf.uint8 else tf.cast(out, image.dtype)

    shape = tf.shape(image)
    same = tf.logical_and(tf.equal(shape[0], size), tf.equal(shape[1], size))
    out = tf.cond(same, lambda: image, _resize)
    out.set_shape([size, size, image.shape[-1]])
    return out


def _crop_window(
    shape: tf.Tensor,
    seed: tf.Tensor,
    area_range: tuple[float, float],
    aspect_ratio_range: tuple[float, float],
) -> tuple[tf.Tensor, tf.Tensor]:
    """(begin, size) of a random crop of an image of ``shape`` (H, W, C), both (3,) int32."""
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.zeros([1, 0, 4], tf.float32),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=aspect_ratio_range,
        area_range=area_range,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    return begin, crop_size


def inception_crop(
    image: tf.Tensor,
    size: int,
    seed: tf.Tensor,
    area_range: tuple[float, float] = (0.08, 1.0),
    aspect_ratio_range: tuple[float, float] = (3 / 4, 4 / 3),
    antialias: bool = True,
) -> tf.Tensor:
    """A random crop covering ``area_range`` of the image with a random aspect ratio,
    resized to (size, size): the "Inception" augmentation (Szegedy et al. 2015), as
    torchvision's RandomResizedCrop.
    """
    begin, crop_size = _crop_window(tf.shape(image), seed, area_range, aspect_ratio_range)
    return resize(tf.slice(image, begin, crop_size), size, antialias)


def decode_and_inception_crop(
    image_bytes: tf.Tensor, channels: int, size: int, seed: tf.Tensor, antialias: bool = True
) -> tf.Tensor:
    """``inception_crop(decode_image(image_bytes))``, but a JPEG is decoded only inside the
    crop window (on average under half the image): the same pixels, for less work. Other
    formats are decoded whole.
    """

    def jpeg():
        shape = tf.image.extract_jpeg_shape(image_bytes)  # reads the header only
        begin, crop_size = _crop_window(shape, seed, (0.08, 1.0), (3 / 4, 4 / 3))
        window = tf.stack([begin[0], begin[1], crop_size[0], crop_size[1]])
        image = tf.image.decode_and_crop_jpeg(image_bytes, window, channels=channels)
        image.set_shape([None, None, channels])
        return resize(image, size, antialias)

    return tf.cond(
        tf.io.is_jpeg(image_bytes),
        jpeg,
        lambda: inception_crop(decode_image(image_bytes, channels), size, seed, antialias=antialias),
    )


def resize_and_center_crop(image: tf.Tensor, size: int, fraction: float = CENTER_CROP_FRACTION) -> tf.Tensor:
    """Resizes the shorter side to ``size / fraction``, then takes the central (size, size)."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = (size / fraction) / tf.reduce_min(shape)
    new_shape = tf.cast(tf.round(shape * scale), tf.int32)
    image = tf.image.resize(image, new_shape, method="bilinear", antialias=True)
    top = (new_shape[0] - size) // 2
    left = (new_shape[1] - size) // 2
    return tf.slice(image, [top, left, 0], [size, size, -1])


def preprocess(
    image: tf.Tensor,
    *,
    train: bool,
    augment: str,
    image_size: int,
    padding: int,
    seed,
    train_antialias: bool = True,
) -> tf.Tensor:
    """One decoded uint8 image -> the augmented uint8 model input, not yet normalised: the
    train and eval steps normalise on the device (``train_lib.normalize_images`` with
    ``config.mean`` and ``config.std``), so batches cross to it at a quarter of float32's
    size, and the host does less work per image.
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(f"unknown augment {augment!r}; valid: {', '.join(AUGMENTATIONS)}")
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    if augment == "imagenet":
        if train:
            image = inception_crop(image, image_size, crop_seed, antialias=train_antialias)
            image = random_flip(image, flip_seed)
        else:
            image = tf.cast(tf.round(resize_and_center_crop(image, image_size)), tf.uint8)
    else:
        if image_size:
            image = resize(image, image_size)
        if train and augment == "cifar":
            image = random_flip(pad_and_random_crop(image, padding, crop_seed), flip_seed)
    return image


# ---------------------------------------------------------------------------------------
# Sources: where the raw records come from. A record is {'image', 'label'}; 'image' is a
# decoded uint8 array, encoded bytes, or a file path, per ``Source.kind``. Bytes and paths
# are read and decoded only after sharding, by the process that uses them.

RecordsFn = Callable[[str, int, int | None, int | None], tf.data.Dataset]


@dataclasses.dataclass
class Source:
    name: str
    num_classes: int
    class_names: list[str]
    image_shape: tuple[int | None, int | None, int]  # the dataset's own (H, W, C)
    split_sizes: dict[str, int]
    # (split, lo, hi, file-shuffle seed) -> the records of examples [lo, hi) of the split.
    records: RecordsFn
    kind: str  # 'array' | 'bytes' | 'path'
    skipped: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # split -> bad files


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


def _digits_source(classes: Sequence[int] = ()) -> Source:
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
        splits[split] = (x[index], y)

    def records(split: str, lo: int, hi: int | None, seed: int | None) -> tf.data.Dataset:
        x, y = splits[split]
        return tf.data.Dataset.from_tensor_slices({"image": x[lo:hi], "label": y[lo:hi]})

    return Source(
        name="digits",
        num_classes=len(names),
        class_names=names,
        image_shape=(8, 8, 1),
        split_sizes={k: len(v[1]) for k, v in splits.items()},
        records=records,
        kind="array",
    )


def _scan(paths: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """One parallel decoding pass: the files TF cannot decode, and every file's (H, W)."""

    def try_decode(i, path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return i, tf.shape(image)[:2]

    ds = tf.data.Dataset.from_tensor_slices((np.arange(len(paths)), list(paths)))
    ds = ds.map(try_decode, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
    shapes = np.zeros((len(paths), 2), np.int64)  # (0, 0) marks an undecodable file
    for index, hw in ds.batch(4096).as_numpy_iterator():
        shapes[index] = hw
    bad = [p for p, hw in zip(paths, shapes) if hw[0] == 0]
    return bad, shapes[shapes[:, 0] > 0]


def _folder_listing(builder: Any, split: str) -> tuple[list[str], list[int]]:
    """ImageFolder's (file, label) listing of ``split``, in its fixed shuffled order.

    TFDS keeps it in ``_split_examples``; reading it there takes well under a second for
    CIFAR's 50,000 files, where ``as_dataset`` would read every file's bytes (~40s).
    Versions without that attribute get the ``as_dataset`` route.
    """
    label = builder.info.features["label"]
    examples = getattr(builder, "_split_examples", {}).get(split)
    if examples is not None and all(hasattr(e, "image_path") for e in examples[:1]):
        return [str(e.image_path) for e in examples], [label.str2int(e.label) for e in examples]
    listing = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    pairs = listing.map(lambda r: (r["image/filename"], r["label"])).as_numpy_iterator()
    files, labels = zip(*[(f.decode(), int(y)) for f, y in pairs]) if len(listing) else ((), ())
    return list(files), list(labels)


def _image_folder_source(root: str, classes: Sequence[int] = ()) -> Source:
    """ROOT/SPLIT/CLASS/* through TFDS's ImageFolder; undecodable files are dropped."""
    if not root:
        raise ValueError("dataset 'image_folder' needs --config.data_dir=ROOT holding ROOT/train/CLASS/*")
    if not tf.io.gfile.isdir(root):
        raise ValueError(f"image folder data_dir={root!r} is not a directory")
    builder = tfds.ImageFolder(root)
    splits = dict(builder.info.splits)
    if "train" not in splits:
        raise ValueError(f"image folder {root!r} has no train/ subfolder; found: {sorted(splits)}")
    class_names = _check_classes(
        classes, builder.info.features["label"].num_classes, builder.info.features["label"].names
    )
    skipped: dict[str, list[str]] = {}
    examples: dict[str, tuple[list[str], np.ndarray]] = {}
    shapes = set()
    for split in splits:
        files, labels = _folder_listing(builder, split)
        # Only the chosen classes' files are scanned (decoded once, to drop the bad ones).
        index, y = _select(np.asarray(labels, np.int64), classes)
        files = [files[i] for i in index]
        skipped[split], hw = _scan(files)
        bad = set(skipped[split])
        keep = [i for i, f in enumerate(files) if f not in bad]
        examples[split] = ([files[i] for i in keep], y[keep])
        shapes.update(map(tuple, hw.tolist()))

    def records(split: str, lo: int, hi: int | None, seed: int | None) -> tf.data.Dataset:
        files, labels = examples[split]
        return tf.data.Dataset.from_tensor_slices({"image": files[lo:hi], "label": labels[lo:hi]})

    return Source(
        name=f"image_folder:{root}",
        num_classes=len(class_names),
        class_names=list(class_names),
        # A folder whose images all share one size is a fixed-size dataset.
        image_shape=(*shapes.pop(), 3) if len(shapes) == 1 else (None, None, 3),
        split_sizes={k: len(v[0]) for k, v in examples.items()},
        records=records,
        kind="path",
        skipped={k: v for k, v in skipped.items() if v},
    )


def _tfds_source(name: str, data_dir: str, manual_dir: str) -> Source:
    """Any TFDS image-classification dataset, prepared (downloaded) on first use."""
    try:
        builder = tfds.builder(name, data_dir=data_dir or None)
    except tfds.core.registered.DatasetNotFoundError as e:
        known = [*BUILTIN_DATASETS, *tfds.list_builders()]
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
        raise ValueError(
            f"unknown dataset {name!r}; {hint}valid: 'digits', 'image_folder' or a TFDS "
            f"image-classification dataset such as cifar10, cifar100, mnist, fashion_mnist, "
            f"imagenette, imagenet2012 (tfds.list_builders() has all {len(known) - 2})"
        ) from e
    keys = builder.info.supervised_keys
    if not keys or "image" not in builder.info.features or keys[0] != "image":
        raise ValueError(f"dataset {name!r} is not an image-classification dataset (supervised keys {keys})")
    if not builder.is_prepared():
        download_config = tfds.download.DownloadConfig(manual_dir=manual_dir or None)
        try:
            builder.download_and_prepare(download_config=download_config)
        except Exception as e:
            raise RuntimeError(
                f"could not prepare TFDS dataset {name!r} in {builder.data_dir!r}: {e}\n"
                "Offline? Prepare it on a connected machine and pass its --config.data_dir; "
                "manual-download datasets (imagenet2012) need --config.manual_dir."
            ) from e
    label = builder.info.features[keys[1]]
    image_feature = builder.info.features["image"]

    def records(split: str, lo: int, hi: int | None, seed: int | None) -> tf.data.Dataset:
        # TFDS slices by file instructions: only the files holding [lo, hi) are read.
        read_config = tfds.ReadConfig(shuffle_seed=seed, interleave_cycle_length=16)
        ds = builder.as_dataset(
            split=f"{split}[{lo}:{'' if hi is None else hi}]",
            shuffle_files=seed is not None,
            decoders={"image": tfds.decode.SkipDecoding()},
            read_config=read_config,
        )
        return ds.map(lambda r: {"image": r["image"], "label": r[keys[1]]})

    sizes = {k: v.num_examples for k, v in builder.info.splits.items()}
    if not sizes:  # no split metadata: TFDS mock data, as in the tests; count the usual splits
        sizes = {
            k: int(records(k, 0, None, None).reduce(0, lambda n, _: n + 1))
            for k in ("train", "validation", "test")
        }
    return Source(
        name=name,
        num_classes=label.num_classes,
        class_names=list(label.names),
        image_shape=tuple(image_feature.shape),
        split_sizes=sizes,
        records=records,
        kind="bytes",
    )


def create_source(config: Any) -> Source:
    classes = tuple(int(c) for c in config.classes)
    if config.dataset == "digits":
        return _digits_source(classes)
    if config.dataset == "image_folder":
        return _image_folder_source(config.data_dir, classes)
    if classes:
        raise ValueError(
            f"config.classes={classes} works with 'digits' and 'image_folder'; not yet with TFDS "
            f"dataset {config.dataset!r}"
        )
    return _tfds_source(config.dataset, config.data_dir, config.manual_dir)


# ---------------------------------------------------------------------------------------
# Splits and batches.


def _slice_spec(split: str) -> tuple[str, int, int | None]:
    """'train[:45000]' -> ('train', 0, 45000); plain names take the whole split."""
    if "[" not in split:
        return split, 0, None
    base, rest = split.split("[", 1)
    lo, hi = rest.rstrip("]").split(":")
    return base, int(lo or 0), int(hi) if hi else None


@dataclasses.dataclass
class Data:
    """The splits of one dataset, batched for this process.

    ``train_batches(step)`` yields this process's part of every global batch from global
    step ``step`` on, forever; ``eval_batches()`` covers the eval split exactly once,
    with the last partial batch padded and marked by ``mask == 0``.
    """

    source: Source
    config: Any
    train_split: str
    eval_split: str
    num_train: int
    num_eval: int
    image_shape: tuple[int, int, int]  # the model input (H, W, C)
    steps_per_epoch: int
    eval_steps: int

    @property
    def num_classes(self) -> int:
        return self.source.num_classes

    def _split_records(self, split: str, seed: int | None, per_process: bool) -> tf.data.Dataset:
        """The split's records, shuffled with ``seed`` (None: in order). With
        ``per_process``, only this process's contiguous 1/P of them.
        """
        base, lo, hi = _slice_spec(split)
        if per_process:
            n, count, index = _split_size(self.source, split), jax_process_count(), jax_process_index()
            lo, hi = lo + index * n // count, lo + (index + 1) * n // count
        # Slices are taken before shuffling so that they are the same examples every time.
        ds = self.source.records(base, lo, hi, seed)
        if seed is not None:
            ds = ds.shuffle(self.config.shuffle_buffer, seed=seed, reshuffle_each_iteration=False)
        return ds

    def _preprocess_fn(self, train: bool) -> Callable[..., dict[str, tf.Tensor]]:
        c, channels = self.config, self.image_shape[-1]
        size = c.image_size if c.image_size else 0
        kind = self.source.kind

        def fn(index, record, seed):
            image = record["image"]
            if kind == "path":
                image = tf.io.read_file(image)
            seed = tf.stack([tf.cast(seed, tf.int64), tf.cast(index, tf.int64)])
            if kind != "array" and train and c.augment == "imagenet":
                # The same stream as decode + preprocess, decoding only the crop window.
                crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
                image = decode_and_inception_crop(image, channels, size, crop_seed, c.train_antialias)
                image = random_flip(image, flip_seed)
            else:
                if kind != "array":
                    image = decode_image(image, channels)
                image = preprocess(
                    image,
                    train=train,
                    augment=c.augment,
                    image_size=size,
                    padding=c.crop_padding,
                    seed=seed,
                    train_antialias=c.train_antialias,
                )
            image = tf.ensure_shape(image, self.image_shape)
            return {"image": image, "label": tf.cast(record["label"], tf.int32)}

        return fn

    def _epoch(self, epoch: int, skip_batches: int) -> tf.data.Dataset:
        c = self.config
        epoch_seed = int(np.random.SeedSequence([c.seed, epoch]).generate_state(1)[0] % (2**31))
        count, index = jax_process_count(), jax_process_index()
        local = c.batch_size // count
        ds = self._split_records(self.train_split, epoch_seed, c.per_process_split)
        if c.per_process_split:
            # This process's own slice, in its own order; example i of it is global i*P+p.
            ds = ds.take(self.steps_per_epoch * local).enumerate()
            ds = ds.skip(skip_batches * local).map(lambda i, r: (i * count + index, r))
        else:
            ds = ds.take(self.steps_per_epoch * c.batch_size)  # whole global batches only
            ds = ds.enumerate()
            ds = ds.skip(skip_batches * c.batch_size)  # raw records: nothing decoded yet
            ds = ds.shard(count, index)
        fn = self._preprocess_fn(train=True)
        ds = ds.map(lambda i, r: fn(i, r, epoch_seed), num_parallel_calls=tf.data.AUTOTUNE)
        return ds.batch(local, drop_remainder=True)

    def train_batches(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        epoch, offset = divmod(start_step, self.steps_per_epoch)
        while True:
            ds = self._epoch(epoch, offset).prefetch(tf.data.AUTOTUNE)
            yield from ds.with_options(_options()).as_numpy_iterator()
            epoch, offset = epoch + 1, 0

    def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
        c = self.config
        local = self.eval_batch_size // jax_process_count()
        # Each process evaluates a contiguous slice (<= ceil(N/P) examples), reading only it.
        ds = self._split_records(self.eval_split, None, per_process=True).enumerate()
        fn = self._preprocess_fn(train=False)
        ds = ds.map(lambda i, r: fn(i, r, c.seed), num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.batch(local).prefetch(tf.data.AUTOTUNE).with_options(_options())
        n = 0
        for batch in ds.as_numpy_iterator():
            yield _pad(batch, local)
            n += 1
        # Every process runs the same number of (collective) eval steps.
        empty = {
            "image": np.zeros((local, *self.image_shape), np.uint8),
            "label": np.zeros(local, np.int32),
        }
        for _ in range(n, self.eval_steps):
            yield _pad({k: v[:0] for k, v in empty.items()}, local)

    @property
    def eval_batch_size(self) -> int:
        return self.config.eval_batch_size or self.config.batch_size


def _pad(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    n = len(batch["label"])
    out = {k: np.concatenate([v, np.zeros((size - n, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}
    out["mask"] = (np.arange(size) < n).astype(np.float32)
    return out


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    return options


def jax_process_count() -> int:
    return jax.process_count()


def jax_process_index() -> int:
    return jax.process_index()


def _split_size(source: Source, split: str) -> int:
    base, lo, hi = _slice_spec(split)
    if base not in source.split_sizes:
        raise ValueError(
            f"dataset {source.name!r} has no split {base!r}; valid: {', '.join(source.split_sizes)}"
        )
    total = source.split_sizes[base]
    return min(total, hi if hi is not None else total) - lo


def create_data(config: Any) -> Data:
    """The train and eval splits named by ``config``, batched for this process."""
    source = create_source(config)
    train_split, eval_split = config.train_split, config.eval_split
    if not eval_split:
        eval_split = "test" if "test" in source.split_sizes else "validation"
    if config.validation_examples > 0:
        # Hold out the last N train examples (He et al.'s 45k/5k CIFAR split).
        n = _split_size(source, train_split) - config.validation_examples
        if n <= 0:
            raise ValueError(f"validation_examples={config.validation_examples} leaves no train examples")
        train_split, eval_split = f"{train_split}[:{n}]", f"{train_split}[{n}:]"
    num_train, num_eval = _split_size(source, train_split), _split_size(source, eval_split)
    if config.augment not in AUGMENTATIONS:
        raise ValueError(f"unknown augment {config.augment!r}; valid: {', '.join(AUGMENTATIONS)}")
    h, w, channels = source.image_shape
    size = config.image_size
    if not size and (h is None or w is None):
        raise ValueError(
            f"dataset {source.name!r} has images of varying sizes; set --config.image_size (e.g. 224)"
        )
    if config.augment == "imagenet" and not size:
        raise ValueError("augment='imagenet' needs --config.image_size (e.g. 224)")
    image_shape = (size, size, channels) if size else (h, w, channels)
    for field in ("mean", "std"):
        if len(config[field]) not in (1, channels):
            raise ValueError(
                f"config.{field}={tuple(config[field])} has {len(config[field])} values; "
                f"dataset {source.name!r} has {channels} channel(s)"
            )
    steps_per_epoch = num_train // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size={config.batch_size} exceeds the {num_train} train examples")
    eval_batch = config.eval_batch_size or config.batch_size
    local_eval = eval_batch // jax_process_count()
    eval_steps = math.ceil(math.ceil(num_eval / jax_process_count()) / local_eval)
    return Data(
        source=source,
        config=config,
        train_split=train_split,
        eval_split=eval_split,
        num_train=num_train,
        num_eval=num_eval,
        image_shape=image_shape,
        steps_per_epoch=steps_per_epoch,
        eval_steps=eval_steps,
    )
