r"""python -m bench.input_pipeline [--which=cifar,imagenet,v2] [--workers=0,1,2] [--threads=1] \
    [--batches=N] [--cifar-archive=PATH] [--train-antialias=config|on|off] [--no-torch]

Images/s, and images/s per CPU core, of the trainer's own input pipeline, beside the
peer PyTorch users run, on the same images and the same cores, in one run.

- resnet_jax: the train stream of ``train.input_pipeline.batching.create_data``, exactly as
  ``train.main`` reads it (grain: file read, decode, augment, batch; uint8 images,
  normalised later on the device), with 0 (in this process only), 1, 2, ... grain worker
  processes (``config.input_workers``), each reading with ``--threads`` threads
  (``config.input_threads``; 1 by default, so that N workers use about N cores).
- torchvision: PIL + ``torchvision.transforms`` through a ``torch.utils.data.DataLoader``
  with the same number of workers: ``RandomResizedCrop(224)`` + ``RandomHorizontalFlip``
  (the PyTorch ImageNet reference's train transform, uint8 out via ``PILToTensor``), and
  for CIFAR ``RandomCrop(32, padding=4)`` + flip; for ``v2``, torchvision's IMAGENET1K_V2
  train transform (below).

The cases:
- ``cifar``: the CIFAR-10 JPEG archive (``../shared/datasets/cifar10-jpeg.tar.gz``)
  extracted into a temporary image folder, with the ``cifar10`` config: 32x32 JPEG decode,
  4-pixel pad and random crop, flip, batch 128.
- ``imagenet``: JPEGs generated at ImageNet's typical sizes (60% 500x375, 20% 375x500, 20%
  random in 300..500 on each side; textured content at quality 90, ~110 KB on average, as
  ImageNet's), with the ``imagenet_resnet50`` config's augmentation: decode, inception
  crop, flip, resize to 224 (plain bilinear, as that config; ``--train-antialias=on`` for
  torchvision's antialiased one), batch 128.
- ``v2``: the same JPEGs through torchvision's IMAGENET1K_V2 train recipe:
  ``RandomResizedCrop(176)`` (antialiased bilinear) + flip + ``TrivialAugmentWide``
  (bilinear) + ``ToTensor`` + ``Normalize`` + ``RandomErasing(0.1)`` for torchvision;
  ``train_image_size=176``, ``auto_augment='trivialaugment'``, ``random_erasing=0.1`` for
  resnet_jax, whose batches stay uint8 and are normalised on the device.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
import tempfile
import time
import types

import numpy as np

DEFAULT_ARCHIVE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "shared",
    "datasets",
    "cifar10-jpeg.tar.gz",
)
BATCH = 128


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


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth shapes plus fine texture: JPEGs of about ImageNet's size per pixel."""
    from PIL import Image

    coarse = (rng.random((h // 16 + 2, w // 16 + 2, 3)) * 255).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((w + 32, h + 32), Image.BICUBIC))[:h, :w]
    return np.clip(smooth + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def imagenet_like_jpegs(root: str, count: int, classes: int = 10, seed: int = 0) -> tuple[str, float]:
    """``count`` JPEGs at ImageNet-like sizes in ROOT/{train,test}/CLASS/; returns (root,
    mean file size in KB)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes = []
    for i in range(count):
        r = rng.random()
        if r < 0.6:
            h, w = 375, 500
        elif r < 0.8:
            h, w = 500, 375
        else:
            h, w = (int(v) for v in rng.integers(300, 501, 2))
        buf = io.BytesIO()
        Image.fromarray(_texture(rng, h, w)).save(buf, "JPEG", quality=90)
        split = "train" if i % 8 else "test"
        folder = os.path.join(root, split, f"class{i % classes:02d}")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{i:05d}.jpg"), "wb") as f:
            f.write(buf.getvalue())
        sizes.append(len(buf.getvalue()))
    return root, float(np.mean(sizes)) / 1000


def _time(stream, batches: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        next(stream)
    start = time.perf_counter()
    n = 0
    for _ in range(batches):
        batch = next(stream)
        n += len(batch["label"] if isinstance(batch, dict) else batch[1])
    seconds = time.perf_counter() - start
    return {"images": n, "seconds": seconds, "images_per_s": n / seconds}


def measure_grain(config, workers: int, batches: int, warmup: int) -> dict[str, float]:
    from train import settings
    from train.input_pipeline import batching

    config.input_workers = workers
    start = time.perf_counter()
    data = batching.create_data(settings.data(config))
    setup_s = time.perf_counter() - start
    stream = data.train_iterator()
    try:
        return {**_time(stream, batches, warmup), "setup_s": setup_s}
    finally:
        stream.close()  # its worker processes end now, before the next measurement's start


def _torchvision():
    # torchvision's compiled ops need a matching CUDA/CPU build; its transforms do not.
    stub = "torchvision._meta_registrations"
    sys.modules.setdefault(stub, types.ModuleType(stub))
    import torch
    import torchvision.transforms as transforms

    return torch, transforms


class _Folder:
    """ROOT/train/CLASS/*: PIL images through ``transform``, as torchvision's ImageFolder."""

    def __init__(self, root: str, transform):
        train = os.path.join(root, "train")
        self.samples = [
            (os.path.join(train, c, f), i)
            for i, c in enumerate(sorted(os.listdir(train)))
            for f in sorted(os.listdir(os.path.join(train, c)))
        ]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        from PIL import Image

        path, label = self.samples[index]
        with open(path, "rb") as f:
            image = Image.open(f).convert("RGB")
        return self.transform(image), label


def measure_torchvision(root: str, case: str, workers: int, batches: int, warmup: int) -> dict[str, float]:
    torch, transforms = _torchvision()
    torch.set_num_threads(1)
    if case == "v2":
        bilinear = transforms.InterpolationMode.BILINEAR
        transform = transforms.Compose(
            [
                transforms.RandomResizedCrop(176, interpolation=bilinear),
                transforms.RandomHorizontalFlip(),
                transforms.TrivialAugmentWide(interpolation=bilinear),
                transforms.ToTensor(),
                transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                transforms.RandomErasing(0.1),
            ]
        )
    else:
        crop = transforms.RandomCrop(32, padding=4)
        if case == "imagenet":
            crop = transforms.RandomResizedCrop(224)
        transform = transforms.Compose([crop, transforms.RandomHorizontalFlip(), transforms.PILToTensor()])
    loader = torch.utils.data.DataLoader(
        _Folder(root, transform),
        batch_size=BATCH,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=workers > 0,
        prefetch_factor=2 if workers else None,
    )

    def forever():
        while True:
            yield from loader

    return {**_time(forever(), batches, warmup), "setup_s": 0.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.input_pipeline", description=__doc__.split("\n\n")[1]
    )
    parser.add_argument("--which", default="cifar,imagenet,v2", help="comma-separated: cifar, imagenet, v2")
    parser.add_argument("--workers", default="0,1,2", help="comma-separated worker-process counts")
    parser.add_argument(
        "--threads", type=int, default=1, help="grain threads per process (config.input_threads)"
    )
    parser.add_argument("--batches", type=int, default=30, help="timed batches of 128")
    parser.add_argument("--warmup", type=int, default=4, help="untimed batches first")
    parser.add_argument("--cifar-archive", default=DEFAULT_ARCHIVE)
    parser.add_argument("--imagenet-images", type=int, default=1024, help="JPEGs to generate")
    parser.add_argument(
        "--train-antialias",
        default="config",
        choices=("config", "on", "off"),
        help="imagenet: config.train_antialias, antialiased resize of the crop (default: the config's, off)",
    )
    parser.add_argument("--no-torch", action="store_true", help="skip the torchvision peer")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    which = [w.strip() for w in args.which.split(",") if w.strip()]
    unknown = sorted(set(which) - {"cifar", "imagenet", "v2"})
    if unknown or not which:
        parser.error(f"--which={args.which!r}: unknown {unknown}; valid: cifar, imagenet, v2")
    try:
        workers = [int(w) for w in args.workers.split(",")]
    except ValueError:
        workers = [-1]
    if min(workers) < 0:
        parser.error(f"--workers={args.workers!r}: expected comma-separated counts >= 0, e.g. 0,1,2")

    import grain

    from train.configs import cifar10, imagenet_resnet50

    versions = f"grain {grain.__version__ if hasattr(grain, '__version__') else '?'}"
    if not args.no_torch:
        torch, _ = _torchvision()
        import torchvision

        versions += f", torch {torch.__version__}, torchvision {torchvision.__version__}"
    print(f"{versions}; {cores()} CPU core(s) available", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_input_") as tmp:
        for case in which:
            start = time.perf_counter()
            if case == "cifar":
                root = extract(args.cifar_archive, os.path.join(tmp, "cifar"))
                print(f"extracted {args.cifar_archive} in {time.perf_counter() - start:.1f}s", flush=True)
                config = cifar10.get_config()
                config.update(dataset="image_folder", data_dir=root, num_train_steps=-1)
                what = "CIFAR-10 JPEGs: decode 32x32, pad-4 crop, flip"
            else:
                root = os.path.join(tmp, "imagenet")
                if not os.path.isdir(root):
                    root, kb = imagenet_like_jpegs(root, args.imagenet_images)
                    print(
                        f"generated {args.imagenet_images} ImageNet-sized JPEGs ({kb:.0f} KB on average) "
                        f"in {time.perf_counter() - start:.1f}s",
                        flush=True,
                    )
                config = imagenet_resnet50.get_config()
                config.update(dataset="image_folder", data_dir=root, manual_dir="", eval_split="")
                config.update(batch_size=BATCH, lr_base_batch_size=0)
                if case == "v2":
                    config.update(
                        train_image_size=176,
                        train_antialias=True,
                        auto_augment="trivialaugment",
                        random_erasing=0.1,
                    )
                    what = (
                        "ImageNet-sized JPEGs, IMAGENET1K_V2 recipe: decode, inception crop to 176, flip, "
                        "TrivialAugmentWide, normalise, random erasing 0.1"
                    )
                else:
                    if args.train_antialias != "config":
                        config.train_antialias = args.train_antialias == "on"
                    resize = "antialiased" if config.train_antialias else "bilinear"
                    what = f"ImageNet-sized JPEGs: decode, inception crop, flip, {resize} resize to 224"
            config.batch_size, config.input_threads = BATCH, args.threads
            for n in workers:
                r = measure_grain(config, n, args.batches, args.warmup)
                rows.append((what, "resnet_jax (grain)", n, r))
                print(f"  resnet_jax {case}, {n} worker(s): {r['images_per_s']:.0f} images/s", flush=True)
                if not args.no_torch:
                    r = measure_torchvision(root, case, n, args.batches, args.warmup)
                    rows.append((what, "torchvision (PIL)", n, r))
                    rate = r["images_per_s"]
                    print(f"  torchvision {case}, {n} worker(s): {rate:.0f} images/s", flush=True)
    # A loader with N worker processes keeps about N cores busy (1 with none): the figure
    # per core divides by that, at most by the cores there are.
    print(f"\n| pipeline | loader | workers | images/s | cores busy (of {cores()}) | per core |")
    print("|---|---|---|---|---|---|")
    for what, loader, n, r in rows:
        busy = min(cores(), max(1, n))
        per_core = r["images_per_s"] / busy
        print(f"| {what} | {loader} | {n} | {r['images_per_s']:,.0f} | {busy} | {per_core:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
