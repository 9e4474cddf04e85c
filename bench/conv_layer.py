r"""python -m bench.conv_layer [--batch-size=128] [--torch] [--ynnpack=on|off]

One 3x3 convolution of each ResNet-20 stage (32x32x16, 16x16x32, 8x8x64, stride 1, no
bias), forward and forward + both gradients, in ``jax.lax.conv_general_dilated`` (NHWC)
and, with ``--torch``, in PyTorch (channels_last). It isolates the convolution kernels
from everything else in a train step: on a CPU this is where XLA and PyTorch differ. XLA
compiles with ``resnet_jax.xla.compiler_options()``, as the trainer does, unless
``--ynnpack=off``.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np

from bench.train_throughput import time_windows

SHAPES = ((32, 16), (16, 32), (8, 64))  # (spatial size, channels) of resnet20's stages


def _time(fn, sync, n: int = 10, windows: int = 3) -> float:
    """Median seconds per call over ``windows`` windows of ``n`` calls, after one warm-up call."""
    fn()
    sync()
    return statistics.median(time_windows(lambda: fn(), lambda _: sync(), n, windows))


def jax_times(batch: int, size: int, channels: int, ynnpack: bool = True) -> tuple[float, float]:
    import jax
    import jax.numpy as jnp

    import resnet_jax

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, size, size, channels)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, channels, channels)), jnp.float32)

    def conv(x, w):
        return jax.lax.conv_general_dilated(
            x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    options = resnet_jax.xla.compiler_options(ynnpack=ynnpack)
    fwd = jax.jit(conv, compiler_options=options)
    both = jax.jit(jax.grad(lambda x, w: jnp.sum(conv(x, w) ** 2), argnums=(0, 1)), compiler_options=options)
    result = {}

    def run(f, key):
        result[key] = f(x, w)

    def sync():
        jax.block_until_ready(result)

    return _time(lambda: run(fwd, "f"), sync), _time(lambda: run(both, "b"), sync)


def torch_times(batch: int, size: int, channels: int) -> tuple[float, float]:
    import torch

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=gen).contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(channels, channels, 3, 1, 1, bias=False).to(memory_format=torch.channels_last)
    xg = x.clone().requires_grad_(True)

    def fwd():
        with torch.no_grad():
            conv(x)

    def both():
        conv.zero_grad(set_to_none=True)
        xg.grad = None
        (conv(xg) ** 2).sum().backward()

    return _time(fwd, lambda: None), _time(both, lambda: None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.conv_layer", description=__doc__.split("\n\n")[1])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--torch", action="store_true", help="also time PyTorch")
    parser.add_argument("--ynnpack", default="on", choices=("on", "off"), help="XLA's YNNPACK kernels (CPU)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size={args.batch_size} must be >= 1")
    print("layer (N x H x W x C) | jax fwd | jax fwd+grads | torch fwd | torch fwd+grads   (ms, GFLOP/s)")
    for size, channels in SHAPES:
        flops = 2 * args.batch_size * size * size * channels * channels * 9  # one forward conv

        def cell(seconds: float, times: int, flops: int = flops) -> str:
            return f"{1e3 * seconds:6.1f} ms ({times * flops / seconds / 1e9:3.0f})"

        jf, jb = jax_times(args.batch_size, size, channels, args.ynnpack == "on")
        row = [f"{args.batch_size}x{size}x{size}x{channels}", cell(jf, 1), cell(jb, 3)]
        if args.torch:
            tf_, tb = torch_times(args.batch_size, size, channels)
            row += [cell(tf_, 1), cell(tb, 3)]
        print(" | ".join(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
