r"""python -m bench.folder_startup [--root=DIR] [--small=100000] [--large=1000] [--workers=2] \
    [--batch=256] [--batches=20] [--no-torch]

Start-up on an image folder, from the command to the first batch, and memory per worker
process, for the trainer's input pipeline beside torchvision's ``ImageFolder`` +
``DataLoader`` on the same files; then both extrapolated to ImageNet's 1.33M files.

It builds two folders (or reuses them under ``--root``): ``--small`` 32x32 JPEGs plus
``--large`` JPEGs at ImageNet's sizes (``bench.input_pipeline``'s generator), 100 classes,
and a tenth of the small files plus the same large ones. Each loader starts in a new
Python process (``--child``), which the parent times from its launch to the line the child
prints once it holds its first batch of ``--batch`` images (an inception crop to 224 and a
flip, as both ImageNet recipes train):

- resnet_jax: ``train.input_pipeline.batching.create_data`` with the ``imagenet_resnet50``
  config on the folder (``config.image_size`` set, so no header is read), its listing kept
  in a new directory (a new run), then again with that listing (a resumed one), and
  ``--workers`` grain worker processes;
- torchvision: ``ImageFolder`` and a shuffling ``DataLoader`` with as many workers.

Per file is the difference of the two folders' start-up times over their difference in
files: the fixed part (Python, imports, starting the workers, decoding the first batch)
cancels. Extrapolated: fixed part + 1.33M x per file. Memory per worker: its unique set
size (USS, the pages no other process shares) and proportional set size (PSS), after the
first batch and after ``--batches`` more, by ``psutil``. The old start-up, which decoded
every file, is timed beside them (``--old-scan``, on by default): the trainer's scan before
the listing, run here on the same folder.

Timings are with the files in the page cache (the folders were just written or listed),
as on a machine that has read its dataset once; a cold cache adds the file system's
directory reads to every loader alike.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

IMAGENET_FILES = 1_331_167  # 1,281,167 train + 50,000 validation
CLASSES = 100
CHILD_DONE = "FIRST_BATCH "


def _small_jpegs(count: int = 256) -> list[bytes]:
    """32x32 JPEGs (CIFAR's size), as many different ones as ``count``."""
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        buf = io.BytesIO()
        base = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        image = np.kron(base, np.ones((8, 8, 1), np.uint8)) + rng.integers(0, 30, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(image).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def build(root: str, small: int, large: int) -> int:
    """ROOT/train/classNN/: ``small`` small and ``large`` ImageNet-sized JPEGs; returns the
    file count. A folder already built with these counts is reused."""
    from bench.input_pipeline import imagenet_like_jpegs

    stamp = os.path.join(root, "built.json")
    if os.path.exists(stamp):
        with open(stamp) as f:
            if json.load(f) == {"small": small, "large": large}:
                return small + large
        raise SystemExit(f"--root={root} holds another folder; remove it or choose another")
    variants = _small_jpegs()
    classes = min(CLASSES, small)  # none left without a file
    for c in range(classes):
        os.makedirs(os.path.join(root, "train", f"class{c:02d}"), exist_ok=True)
    for i in range(small):
        with open(os.path.join(root, "train", f"class{i % classes:02d}", f"s{i:07d}.jpg"), "wb") as f:
            f.write(variants[i % len(variants)])
    with tempfile.TemporaryDirectory(prefix="bench_large_") as tmp:
        imagenet_like_jpegs(tmp, large, classes=classes)
        for split in ("train", "test"):
            for c in sorted(os.listdir(os.path.join(tmp, split))):
                for name in os.listdir(os.path.join(tmp, split, c)):
                    os.replace(os.path.join(tmp, split, c, name), os.path.join(root, "train", c, f"l{name}"))
    with open(stamp, "w") as f:
        json.dump({"small": small, "large": large}, f)
    return small + large


def _worker_memory() -> list[dict[str, float]]:
    import psutil

    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            info = child.memory_full_info()
        except psutil.Error:
            continue
        out.append({"uss_mb": info.uss / 2**20, "pss_mb": info.pss / 2**20, "rss_mb": info.rss / 2**20})
    return out


def child_grain(root: str, workers: int, batch: int, batches: int, listing_dir: str) -> dict:
    from train import settings
    from train.configs import imagenet_resnet50
    from train.input_pipeline import batching

    imported = time.time()
    config = imagenet_resnet50.get_config()
    config.update(
        dataset="image_folder", data_dir=root, manual_dir="", eval_split="train", eval_batch_size=batch
    )
    config.update(batch_size=batch, lr_base_batch_size=0, input_workers=workers)
    data = batching.create_data(settings.data(config), listing_dir)
    data.identity()  # the trainer's next step: the train files' fingerprint, for a resume
    listed = time.time()
    stream = data.train_iterator()
    next(stream)
    return {"imported": imported, "listed": listed, "stream": stream, "files": data.num_train}


def child_torchvision(root: str, workers: int, batch: int, batches: int, listing_dir: str) -> dict:
    import types

    sys.modules.setdefault(
        "torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations")
    )
    import torch
    import torchvision.transforms as transforms
    from torchvision.datasets import ImageFolder

    imported = time.time()
    torch.set_num_threads(1)
    transform = transforms.Compose(
        [transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.PILToTensor()]
    )
    dataset = ImageFolder(os.path.join(root, "train"), transform)
    listed = time.time()
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=workers > 0,
    )
    stream = iter(loader)
    next(stream)
    return {"imported": imported, "listed": listed, "stream": stream, "files": len(dataset)}


def child(args: argparse.Namespace) -> int:
    start = time.time()
    run = {"grain": child_grain, "torchvision": child_torchvision}[args.child]
    r = run(args.root, args.workers, args.batch, args.batches, args.listing_dir)
    first = time.time()
    memory_first = _worker_memory()
    for _ in range(args.batches):
        next(r["stream"])
    out = {
        "first": first,  # wall-clock, for the parent's launch-to-first-batch time
        "import_s": r["imported"] - start,
        "list_s": r["listed"] - r["imported"],
        "first_batch_s": first - r["listed"],
        "files": r["files"],
        "memory_first": memory_first,
        "memory_later": _worker_memory(),
    }
    print(CHILD_DONE + json.dumps(out), flush=True)
    os._exit(0)  # the workers end with this process; no teardown in the figures


def _launch(loader: str, root: str, opts: argparse.Namespace, listing_dir: str) -> dict:
    cmd = [sys.executable, "-m", "bench.folder_startup", f"--child={loader}", f"--root={root}"]
    cmd += [f"--workers={opts.workers}", f"--batch={opts.batch}", f"--batches={opts.batches}"]
    cmd += [f"--listing-dir={listing_dir}"]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": repo, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    launched = time.time()
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(CHILD_DONE)]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    r = json.loads(lines[-1][len(CHILD_DONE) :])
    r["startup_s"] = r.pop("first") - launched
    return r


def old_scan(root: str) -> dict[str, float]:
    """The start-up before the listing: every file read and decoded, on a thread pool."""
    from resnet_jax.preprocessing import decode_image

    paths = [
        os.path.join(root, "train", c, f)
        for c in sorted(os.listdir(os.path.join(root, "train")))
        for f in sorted(os.listdir(os.path.join(root, "train", c)))
    ]

    def shape(path: str):
        with open(path, "rb") as f:
            return decode_image(f.read(), 3).shape[:2]

    rates = {}
    for kind, chosen in (
        ("small", [p for p in paths if "/s" in p]),
        ("large", [p for p in paths if "/l" in p]),
    ):
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(32, 2 * (os.cpu_count() or 1))) as pool:
            list(pool.map(shape, chosen, chunksize=64))
        rates[kind] = len(chosen) / (time.perf_counter() - start)
    return rates


UNPICKLE = """
import pickle, sys
import numpy as np
import train.input_pipeline.folders  # imported first: its modules are not the listing
def anonymous_mb():  # private heap, not file-backed pages (which the page cache shares)
    for line in open("/proc/self/smaps_rollup"):
        if line.startswith("Anonymous:"):
            return int(line.split()[1]) / 1024
before = anonymous_mb()
with open(sys.argv[1], "rb") as f:
    source = pickle.load(f)
loaded = anonymous_mb()
rng = np.random.default_rng(0)
path = source.path if hasattr(source, "path") else source.__getitem__
names = [path(int(i)) for i in rng.integers(0, len(source), 20000)]
print(loaded - before, anonymous_mb() - before)
"""


def listing_memory(tmp: str, files: int = IMAGENET_FILES) -> list[tuple[str, float, float, int]]:
    """What one worker process holds after unpickling ImageNet's listing, three ways: the
    paths as a tuple of strings (before the listing), the listing's arrays pickled, and
    the arrays memory-mapped from the listing files (the trainer's way). Returns (way,
    heap MB after unpickling, after reading 20k paths, pickle bytes)."""
    import pickle

    from train.input_pipeline import folders

    classes = [f"n{1440764 + 1000 * c:08d}" for c in range(1000)]
    per_class = [[f"{cls}_{i}.JPEG" for i in range(c, files, 1000)] for c, cls in enumerate(classes)]
    listing = folders.Listing.of(per_class)
    folder = "/data/imagenet/train"
    strings = tuple(
        os.path.join(folder, cls, name) for cls, names in zip(classes, per_class) for name in names
    )
    listing.save(os.path.join(tmp, "train"))
    ways = [
        ("paths as a tuple of strings (before)", strings),
        ("listing arrays, pickled", folders.FileSource(folder, tuple(classes), listing)),
        (
            "listing arrays, memory-mapped (the trainer)",
            folders.FileSource(folder, tuple(classes), folders.Listing.load(os.path.join(tmp, "train"))),
        ),
    ]
    out = []
    for way, obj in ways:
        path = os.path.join(tmp, "source.pkl")
        with open(path, "wb") as f:
            pickle.dump(obj, f)
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        proc = subprocess.run(
            [sys.executable, "-c", UNPICKLE, path],
            env={**os.environ, "PYTHONPATH": repo},
            capture_output=True,
            text=True,
            check=True,
        )
        loaded, read = map(float, proc.stdout.split())
        out.append((way, loaded, read, os.path.getsize(path)))
    return out


def _median(runs: list[dict]) -> dict[str, float]:
    """The median of each time, and of the mean worker's USS (MB), over repeated launches."""
    out = {
        k: float(np.median([r[k] for r in runs]))
        for k in ("startup_s", "import_s", "list_s", "first_batch_s")
    }
    for when in ("first", "later"):
        per_run = [
            np.mean([m["uss_mb"] for m in r[f"memory_{when}"]]) if r[f"memory_{when}"] else 0.0 for r in runs
        ]
        out[f"uss_{when}"] = float(np.median(per_run))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.folder_startup", description=__doc__.split("\n\n")[1]
    )
    parser.add_argument(
        "--root", default="", help="where to build (and keep) the folders; default: a temporary one"
    )
    parser.add_argument("--small", type=int, default=100_000, help="32x32 JPEGs in the big folder")
    parser.add_argument("--large", type=int, default=1000, help="ImageNet-sized JPEGs in each folder")
    parser.add_argument("--workers", type=int, default=2, help="loader worker processes")
    parser.add_argument("--batch", type=int, default=256, help="images in the first batch")
    parser.add_argument(
        "--batches", type=int, default=20, help="batches read before memory is measured again"
    )
    parser.add_argument("--repeats", type=int, default=3, help="launches per case; the medians are shown")
    parser.add_argument(
        "--listing-files", type=int, default=IMAGENET_FILES, help="paths in the worker-memory comparison"
    )
    parser.add_argument("--no-torch", action="store_true", help="skip torchvision")
    parser.add_argument(
        "--no-old-scan", action="store_true", help="skip timing the old decode-everything scan"
    )
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--listing-dir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.child:
        return child(args)
    for field in ("small", "large", "workers", "batch", "repeats", "listing_files"):
        if getattr(args, field) < (0 if field == "workers" else 1):
            flag = field.replace("_", "-")
            parser.error(f"--{flag}={getattr(args, field)} must be >= {0 if field == 'workers' else 1}")
    if args.small // 10 + args.large < args.batch:
        parser.error(f"--batch={args.batch} exceeds the small folder's {args.small // 10 + args.large} files")

    with tempfile.TemporaryDirectory(prefix="bench_folders_") as tmp:
        base = args.root or tmp
        start = time.perf_counter()
        folders = {}
        for name, small in (("small_folder", args.small // 10), ("big_folder", args.small)):
            root = os.path.join(base, f"{name}_{small}_{args.large}")
            folders[name] = (root, build(root, small, args.large))
        print(f"folders ready in {time.perf_counter() - start:.0f}s: {folders}", flush=True)
        rows = []
        loaders = [("resnet_jax, new run", "grain", True), ("resnet_jax, resumed", "grain", False)]
        loaders += [] if args.no_torch else [("torchvision ImageFolder", "torchvision", True)]
        for label, loader, new_listing in loaders:
            result = {}
            for name, (root, files) in folders.items():
                listing_dir = os.path.join(tmp, f"listing_{name}")
                runs = []
                for _ in range(args.repeats):
                    if new_listing:
                        shutil.rmtree(listing_dir, ignore_errors=True)
                    runs.append(_launch(loader, root, args, listing_dir))
                r = result[name] = _median(runs)
                phases = f"imports {r['import_s']:.2f}s, listing {r['list_s']:.2f}s"
                phases += f", first batch {r['first_batch_s']:.2f}s"
                memory = f"{r['uss_first']:.0f} MB, {r['uss_later']:.0f} MB after {args.batches} more batches"
                print(
                    f"  {label}, {files} files: {r['startup_s']:.2f}s to the first batch ({phases}); "
                    f"per worker USS {memory}",
                    flush=True,
                )
            rows.append((label, result))
        scan = {} if args.no_old_scan else old_scan(folders["big_folder"][0])
        memory = listing_memory(tmp, args.listing_files)

    n_small, n_big = folders["small_folder"][1], folders["big_folder"][1]
    print(f"\nfirst batch of {args.batch}, {args.workers} worker process(es), {os.cpu_count()} CPU core(s)")
    print(
        f"| loader | start-up, {n_small:,} files (s) | start-up, {n_big:,} files (s) | listing per file (µs) "
        f"| ImageNet's {IMAGENET_FILES / 1e6:.2f}M files, extrapolated (s) "
        f"| worker USS, {n_big:,} files, first batch / {args.batches} later (MB) |"
    )
    print("|---|---|---|---|---|---|")
    for label, r in rows:
        a, b = r["small_folder"], r["big_folder"]
        # What grows with the file count is the listing; the rest (Python, imports,
        # workers, the first batch's decoding) is the same at any size, and noisier.
        per_file = (b["list_s"] - a["list_s"]) / (n_big - n_small)
        imagenet = b["startup_s"] + per_file * (IMAGENET_FILES - n_big)
        print(
            f"| {label} | {a['startup_s']:.2f} | {b['startup_s']:.2f} | {per_file * 1e6:.2f} "
            f"| {imagenet:.0f} | {b['uss_first']:.0f} / {b['uss_later']:.0f} |"
        )
    print(f"\n{args.listing_files:,} paths (ImageNet's count by default) in one worker process:")
    print("| listing | pickle (MB) | heap after unpickling | after reading 20k paths |")
    print("|---|---|---|---|")
    for way, loaded, read, size in memory:
        print(f"| {way} | {size / 2**20:.1f} | {loaded:.0f} | {read:.0f} |")
    if scan:
        print(
            f"\nthe old start-up (every file decoded, {min(32, 2 * (os.cpu_count() or 1))} threads): "
            f"{scan['small']:,.0f} small and {scan['large']:,.0f} ImageNet-sized files/s; ImageNet's "
            f"{IMAGENET_FILES / 1e6:.2f}M files would take {IMAGENET_FILES / scan['large'] / 60:.0f} minutes"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
