r"""python -m bench.input_pipeline [--which=cifar,imagenet] [--batches=N] [--cifar-archive=PATH] \
    [--train-antialias=config|on|off]

Images/s, and images/s per CPU core, of the trainer's own input pipeline: the train
stream of ``train.input_pipeline.create_data``, exactly as ``train.main`` reads it (file
listing, read, decode, augment, batch; uint8 images, normalised later on the device), on
the host only.

- ``cifar``: the CIFAR-10 JPEG archive (``../shared/datasets/cifar10-jpeg.tar.gz``)
  extracted into a temporary image folder, with the ``cifar10`` config: 32x32 JPEG decode,
  4-pixel pad and random crop, flip, batch 128.
- ``imagenet``: JPEGs generated at ImageNet's typical sizes (500x375 and 375x500, plus
  sizes drawn from 300..500 on each side; smooth random content, quality 90), with the
  ``imagenet_resnet50`` config's augmentation: decode, inception crop, flip, resize to
  224 (plain bilinear, as that config; ``--train-antialias=on`` for an antialiased one),
  batch 128.
"""

from __future__ import annotations

import argparse
import os
import sys
import tarfile
import tempfile
import time

import numpy as np

DEFAULT_ARCHIVE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "shared",
    "datasets",
    "cifar10-jpeg.tar.gz",
)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def extract(archive: str, root: str) -> str:
    """Extracts the archive under ``root``; returns the folder holding ``train/``."""
    if not os.path.exists(archive):
        raise SystemExit(f"--cifar-archive={archive} does not exist; pass the CIFAR-10 JPEG archive")
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    for here, dirs, _ in os.walk(root):
        if "train" in dirs:
            return here
    raise SystemExit(f"{archive} holds no train/ folder")


def imagenet_like_jpegs(root: str, count: int, classes: int = 10, seed: int = 0) -> str:
    """``count`` JPEGs at ImageNet-like sizes in ROOT/{train,test}/CLASS/, smooth random content."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    for i in range(count):
        r = rng.random()
        if r < 0.6:
            h, w = 375, 500
        elif r < 0.8:
            h, w = 500, 375
        else:
            h, w = (int(v) for v in rng.integers(300, 501, 2))
        coarse = rng.random((h // 16 + 2, w // 16 + 2, 3)).astype(np.float32)
        image = tf.image.resize(coarse[None], (h, w), method="bicubic")[0].numpy()
        image = np.clip(image * 255 + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
        split = "train" if i % 8 else "test"
        folder = os.path.join(root, split, f"class{i % classes:02d}")
        os.makedirs(folder, exist_ok=True)
        tf.io.write_file(os.path.join(folder, f"{i:05d}.jpg"), tf.io.encode_jpeg(image, quality=90))
    return root


def measure(config, batches: int, warmup: int) -> dict[str, float]:
    from train import input_pipeline

    start = time.perf_counter()
    data = input_pipeline.create_data(config)
    setup_s = time.perf_counter() - start
    stream = data.train_batches()
    for _ in range(warmup):
        next(stream)
    start = time.perf_counter()
    n = 0
    for _ in range(batches):
        n += len(next(stream)["label"])
    seconds = time.perf_counter() - start
    return {"setup_s": setup_s, "images": n, "seconds": seconds, "images_per_s": n / seconds}


def report(name: str, r: dict[str, float]) -> None:
    print(
        f"{name}: {r['images_per_s']:.0f} images/s on {cores()} core(s) = "
        f"{r['images_per_s'] / cores():.0f} images/s per core "
        f"({r['images']} images in {r['seconds']:.1f}s after warmup; setup {r['setup_s']:.1f}s)",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.input_pipeline", description=__doc__.split("\n\n")[1]
    )
    parser.add_argument("--which", default="cifar,imagenet", help="comma-separated: cifar, imagenet")
    parser.add_argument("--batches", type=int, default=40, help="timed batches of 128")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches first")
    parser.add_argument("--cifar-archive", default=DEFAULT_ARCHIVE)
    parser.add_argument("--imagenet-images", type=int, default=1024, help="JPEGs to generate")
    parser.add_argument(
        "--train-antialias",
        default="config",
        choices=("config", "on", "off"),
        help="imagenet: config.train_antialias, antialiased resize of the crop (default: the config's, off)",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    which = [w.strip() for w in args.which.split(",") if w.strip()]
    unknown = sorted(set(which) - {"cifar", "imagenet"})
    if unknown or not which:
        parser.error(f"--which={args.which!r}: unknown {unknown}; valid: cifar, imagenet")

    import tensorflow as tf

    from train import input_pipeline  # noqa: F401  (hides the GPUs from TensorFlow first)
    from train.configs import cifar10, imagenet_resnet50

    print(f"tensorflow {tf.__version__}; {cores()} CPU core(s) available", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_input_") as tmp:
        if "cifar" in which:
            start = time.perf_counter()
            root = extract(args.cifar_archive, os.path.join(tmp, "cifar"))
            print(f"extracted {args.cifar_archive} in {time.perf_counter() - start:.1f}s", flush=True)
            config = cifar10.get_config()
            config.update(dataset="image_folder", data_dir=root, num_train_steps=-1)
            report(
                "cifar (32x32 JPEG, pad-crop, flip, batch 128)", measure(config, args.batches, args.warmup)
            )
        if "imagenet" in which:
            start = time.perf_counter()
            root = imagenet_like_jpegs(os.path.join(tmp, "imagenet"), args.imagenet_images)
            print(
                f"generated {args.imagenet_images} ImageNet-sized JPEGs in {time.perf_counter() - start:.1f}s"
            )
            config = imagenet_resnet50.get_config()
            config.update(
                dataset="image_folder", data_dir=root, manual_dir="", eval_split="", per_process_split=False
            )
            config.update(batch_size=128, lr_base_batch_size=0, shuffle_buffer=args.imagenet_images)
            if args.train_antialias != "config":
                config.train_antialias = args.train_antialias == "on"
            resize = "antialiased" if config.train_antialias else "bilinear"
            report(
                f"imagenet (JPEG decode, inception crop, flip, {resize} resize to 224, batch 128)",
                measure(config, args.batches, args.warmup),
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
