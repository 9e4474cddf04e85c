r"""python -m bench.evaluate [--model=resnet50] [--images=256] [--batch-size=32] [--workers=2]

``python -m resnet_jax.evaluate`` against torchvision's evaluation loop on the same
folder and the same cores: images/s (reading, decoding and preprocessing included) and
the top-1, top-5 and loss each counts. The folder holds CIFAR-10 test JPEGs from
``../shared/datasets`` upscaled to ImageNet-like sizes (180-420 pixels a side), in 4
WordNet-id class folders. The network is torchvision's, with random weights and
BatchNorm calibrated on these images, converted for resnet_jax, and each side uses
the model's newest torchvision weights' preprocessing (ResNet-50's IMAGENET1K_V2: resize
232, crop 224). torchvision's loop is the one of
its ``train.py --test-only``: ``ImageFolder`` with ``weights.transforms()``, a
``DataLoader`` with ``--workers`` processes, the model in eval mode under
``torch.inference_mode``.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import tarfile
import tempfile
import time

import numpy as np

CIFAR = pathlib.Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
WNIDS = ("n02690373", "n02123045", "n03673027", "n04467665")  # airliner, tabby, liner, trailer truck
CIFAR_CLASSES = ("airplane", "cat", "ship", "truck")


def build_folder(root: str, images: int, cifar: str = str(CIFAR)) -> None:
    """``images`` upscaled CIFAR-10 test JPEGs in ROOT/WNID/, as many per class as fit."""
    from PIL import Image

    per_class, rng, written = -(-images // len(CIFAR_CLASSES)), np.random.default_rng(0), 0
    counts = dict.fromkeys(CIFAR_CLASSES, 0)
    with tarfile.open(cifar) as tar:
        for member in tar:
            parts = member.name.split("/")
            name = parts[-2] if member.isfile() and "test" in parts else None
            if name not in counts or counts[name] == per_class or written == images:
                continue
            h, w = (int(v) for v in rng.integers(180, 420, size=2))
            image = Image.open(tar.extractfile(member)).convert("RGB").resize((w, h), Image.BICUBIC)
            folder = os.path.join(root, WNIDS[CIFAR_CLASSES.index(name)])
            os.makedirs(folder, exist_ok=True)
            image.save(os.path.join(folder, f"{counts[name]}.jpg"), quality=90)
            counts[name], written = counts[name] + 1, written + 1
    if written < images:
        raise ValueError(f"--images={images}: the archive gave only {written} of these classes")


def torchvision_loop(root: str, net, transforms, batch_size: int, workers: int) -> dict[str, float]:
    """torchvision's evaluation: counts, mean loss and images/s over the whole folder."""
    import torch

    from bench.torch_models import import_torchvision
    from resnet_jax import classes

    torchvision = import_torchvision()
    dataset = torchvision.datasets.ImageFolder(root, transform=transforms)
    wnids = classes.imagenet_wnids()
    to_imagenet = torch.tensor([wnids.index(c) for c in dataset.classes])
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    top1 = top5 = 0
    loss = 0.0
    start = time.perf_counter()
    with torch.inference_mode():
        for x, y in loader:
            out, target = net(x), to_imagenet[y]
            ranked = out.topk(5, -1).indices
            top1 += int((ranked[:, 0] == target).sum())
            top5 += int((ranked == target[:, None]).any(-1).sum())
            loss += float(torch.nn.functional.cross_entropy(out, target, reduction="sum"))
    seconds = time.perf_counter() - start
    n = len(dataset)
    return {"top1": top1, "top5": top5, "loss": loss / n, "images": n, "images_per_second": n / seconds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.evaluate", description=__doc__.split("\n\n")[1])
    parser.add_argument("--model", default="resnet50", help="a torchvision ResNet name")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader processes and reading threads")
    parser.add_argument("--cifar", default=str(CIFAR), help="the CIFAR-10 JPEG archive")
    args = parser.parse_args(argv)
    for flag in ("images", "batch_size", "workers"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')}={getattr(args, flag)}: must be >= 1")
    if not os.path.exists(args.cifar):
        parser.error(f"--cifar={args.cifar}: no such file")
    import jax
    import torch
    from PIL import Image

    from bench.torch_models import import_torchvision
    from resnet_jax import convert, evaluation, weights

    tv_models = import_torchvision().models
    tags = {w.tag for w in weights.list_weights(args.model) if w.source == "torchvision"}
    if not hasattr(tv_models, args.model) or not tags:
        valid = sorted({w.model for w in weights.list_weights() if w.source == "torchvision"})
        parser.error(f"--model={args.model}: valid: {', '.join(valid)}")
    # torchvision's newest weights for the model, and their preprocessing, on both sides.
    entry = weights.get_weights(
        args.model, "torchvision_v2" if "torchvision_v2" in tags else "torchvision_v1"
    )
    transforms = getattr(
        tv_models.get_model_weights(args.model), entry.tag.replace("torchvision_v", "IMAGENET1K_V")
    )
    transforms = transforms.transforms()
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "val")
        build_folder(root, args.images, args.cifar)
        files = sorted(pathlib.Path(root).glob("*/*.jpg"))[:: max(1, args.images // 32)]
        calibration = torch.stack([transforms(Image.open(f).convert("RGB")) for f in files])
        net = getattr(tv_models, args.model)().eval()
        with torch.no_grad():  # BatchNorm statistics from these images: outputs that depend on them
            for m in net.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.reset_running_stats()
                    m.momentum = None
            net.train()(calibration)
        net.eval()
        theirs = torchvision_loop(root, net, transforms, args.batch_size, args.workers)
        convert.save(
            convert.from_torchvision(net.state_dict(), args.model), entry.__dict__, os.path.join(tmp, "w")
        )
        ours = evaluation.evaluate_weights(
            os.path.join(tmp, "w"), root, batch_size=args.batch_size, workers=args.workers, progress=False
        )
    n = ours["images"]
    rows = [
        ("resnet_jax.evaluate", round(ours["top1"] * n / 100), round(ours["top5"] * n / 100), ours["loss"],
         ours["images_per_second"]),
        ("torchvision loop", theirs["top1"], theirs["top5"], theirs["loss"], theirs["images_per_second"]),
    ]  # fmt: skip
    print(f"| {args.model}, {n} JPEGs, batch {args.batch_size} | top-1 | top-5 | loss | images/s |")
    print("|---|---|---|---|---|")
    for name, top1, top5, loss, speed in rows:
        print(f"| {name} | {top1} | {top5} | {loss:.6f} | {speed:.1f} |")
    print(
        f"({os.cpu_count()} CPUs; jax {jax.__version__} on {jax.default_backend()}, "
        f"torch {torch.__version__}; "
        f"{args.workers} reading threads / DataLoader workers; random weights, BatchNorm calibrated)"
    )


if __name__ == "__main__":
    main()
