r"""python -m bench.grad_reduction [--model=resnet20] [--images=1024] [--devices=8,256]

What reducing the gradients in bf16 does to a bf16 model's update. A ``dtype=bfloat16``
model computes each device's share of the gradients in bf16, and the compiled step
(``python -m train.compile``) all-reduces them in bf16 before casting to the float32
parameters; PyTorch DDP reduces float32 gradients. This emulates that reduction on the
CPU with real gradients:

- the global batch (CIFAR-10 test JPEGs from ``--cifar-archive``, else normal noise) is
  split over D devices; each device's gradient of its share of the mean loss is computed
  by the bf16 model and rounded to bf16, as the step's partial sums are;
- the D partial gradients are summed four ways: exactly (float64), in float32, and in bf16
  as a ring all-reduce does (one device after another, rounding after each add, as NCCL's
  ring does) and as a tree does (pairwise);
- each sum is compared with the exact one, and the bf16 model's own error (its exact sum
  against the float32 model's gradient of the same batch) is shown beside them: the noise
  a bf16 model already has.

The figures are relative L2 errors over all parameters, and the median of the per-tensor
ones. The update of SGD with momentum is the learning rate times the gradient (plus
weight decay, exact), so its relative error is the gradient's.
"""

from __future__ import annotations

import argparse
import os
import sys
import tarfile
from typing import Any

import numpy as np

from bench import input_pipeline as input_bench
from bench import torch_models


def _images(archive: str, count: int, size: int) -> tuple[np.ndarray, np.ndarray, str]:
    """``count`` CIFAR-10 test images, normalised, and their labels; noise without the
    archive."""
    from PIL import Image

    if os.path.exists(archive) and size == 32:
        images, labels, classes = [], [], {}
        with tarfile.open(archive) as tar:
            for member in tar:
                if not (member.isfile() and "/test/" in f"/{member.name}"):
                    continue
                label = classes.setdefault(os.path.basename(os.path.dirname(member.name)), len(classes))
                with Image.open(tar.extractfile(member)) as im:
                    images.append(np.asarray(im.convert("RGB"), np.float32) / 255.0)
                labels.append(label)
                if len(images) == count:
                    break
        x = np.stack(images)
        return (x - x.mean((0, 1, 2))) / x.std((0, 1, 2)), np.asarray(labels, np.int32), "CIFAR-10 test JPEGs"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(count, size, size, 3)).astype(np.float32)
    return x, rng.integers(0, 10, count).astype(np.int32), "normal noise"


def _gradient_fn(model: Any) -> Any:
    import jax
    import optax

    def loss(params, batch_stats, x, y, scale):
        logits, _ = model.apply(
            {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
        )
        return scale * optax.softmax_cross_entropy_with_integer_labels(logits.astype("float32"), y).sum()

    return jax.jit(jax.grad(loss))


def _flat(tree: Any) -> list[np.ndarray]:
    import jax

    return [np.asarray(leaf, np.float64).ravel() for leaf in jax.tree.leaves(tree)]


def _round_bf16(x: np.ndarray) -> np.ndarray:
    import ml_dtypes

    return x.astype(ml_dtypes.bfloat16).astype(np.float64)


def ring_sum(parts: list[np.ndarray]) -> np.ndarray:
    """Device after device, rounding to bf16 after each add."""
    acc = parts[0].astype(np.float32)
    for p in parts[1:]:
        acc = _round_bf16(acc + p.astype(np.float32)).astype(np.float32)
    return acc.astype(np.float64)


def tree_sum(parts: list[np.ndarray]) -> np.ndarray:
    """Pairwise, rounding to bf16 after each add."""
    level = [p.astype(np.float32) for p in parts]
    while len(level) > 1:
        nxt = [_round_bf16(a + b).astype(np.float32) for a, b in zip(level[::2], level[1::2], strict=False)]
        level = nxt + ([level[-1]] if len(level) % 2 else [])
    return level[0].astype(np.float64)


def errors(got: list[np.ndarray], want: list[np.ndarray]) -> tuple[float, float]:
    """Relative L2 error over everything, and the median of the per-tensor ones."""
    diff = np.sqrt(sum(float(np.sum((g - w) ** 2)) for g, w in zip(got, want, strict=True)))
    norm = np.sqrt(sum(float(np.sum(w**2)) for w in want))
    per = [np.linalg.norm(g - w) / max(np.linalg.norm(w), 1e-30) for g, w in zip(got, want, strict=True)]
    return diff / norm, float(np.median(per))


def measure(model_name: str, images: int, devices: list[int], archive: str) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    import resnet_jax

    bf16 = resnet_jax.create_model(model_name, dtype=jnp.bfloat16)
    f32 = resnet_jax.create_model(model_name)
    size = 32 if torch_models.is_cifar(model_name) else 64
    x, y, source = _images(archive, images, size)
    variables = f32.init(jax.random.key(0), jnp.zeros((1, *x.shape[1:])), train=False)
    params, stats = variables["params"], variables["batch_stats"]
    grad_f32, grad_bf16 = _gradient_fn(f32), _gradient_fn(bf16)
    out: dict[str, Any] = {"model": model_name, "images": images, "data": source, "rows": []}
    for d in devices:
        share = images // d
        shards = [(x[i * share : (i + 1) * share], y[i * share : (i + 1) * share]) for i in range(d)]
        parts = [[_round_bf16(g) for g in _flat(grad_bf16(params, stats, *s, 1.0 / images))] for s in shards]
        # The float32 model's gradient of the same shards (BatchNorm over each shard as
        # here), summed exactly: what the bf16 model's own rounding is measured against.
        reference = [np.zeros_like(g, np.float64) for g in _flat(params)]
        for s in shards:
            reference = [
                r + g
                for r, g in zip(reference, _flat(grad_f32(params, stats, *s, 1.0 / images)), strict=True)
            ]
        per_tensor = list(zip(*parts, strict=True))
        exact = [np.sum(np.stack(p).astype(np.float64), axis=0) for p in per_tensor]
        sums = {
            "float32": [
                np.sum(np.stack(p).astype(np.float32), axis=0).astype(np.float64) for p in per_tensor
            ],
            "bf16 ring": [ring_sum(list(p)) for p in per_tensor],
            "bf16 tree": [tree_sum(list(p)) for p in per_tensor],
        }
        row = {"devices": d, "per_device": share, "bf16_model_vs_float32_model": errors(exact, reference)}
        row.update({name: errors(s, exact) for name, s in sums.items()})
        out["rows"].append(row)
        print(_line(row), flush=True)
    return out


def _line(row: dict[str, Any]) -> str:
    cells = [f"{row['devices']} devices x {row['per_device']}"]
    for key in ("float32", "bf16 ring", "bf16 tree", "bf16_model_vs_float32_model"):
        total, median = row[key]
        cells.append(f"{key}: {total:.2e} (median tensor {median:.2e})")
    return " | ".join(cells)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.grad_reduction", description=__doc__.split("\n\n")[1]
    )
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--images", type=int, default=1024, help="the global batch")
    parser.add_argument("--devices", default="8,256", help="comma-separated device counts")
    parser.add_argument("--cifar-archive", default=input_bench.DEFAULT_ARCHIVE)
    opts = parser.parse_args(sys.argv[1:] if argv is None else argv)
    devices = [int(d) for d in opts.devices.split(",")]
    bad = [d for d in devices if d < 1 or opts.images % d]
    if bad:
        parser.error(f"--devices={opts.devices}: {bad} do not divide --images={opts.images}")
    print("relative error of the summed gradient against the exact sum of the bf16 partial gradients")
    measure(opts.model, opts.images, devices, opts.cifar_archive)
    return 0


if __name__ == "__main__":
    sys.exit(main())
