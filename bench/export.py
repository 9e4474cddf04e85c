r"""python -m bench.export [--model=resnet50] [--image-size=224] [--batch-size=2]

``resnet_jax.export`` on one model with random weights: the artifact's size, the time to
export (lowering for CPU and CUDA) and to load and call it at ``--batch-size``, and the
largest difference between its logits and the library's jitted ``apply``.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time

import numpy as np


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.export", description=__doc__.split("\n\n")[1])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=2)
    args = parser.parse_args(argv)
    import jax

    import resnet_jax
    from resnet_jax import export

    if args.model not in resnet_jax.list_models():
        parser.error(f"unknown --model {args.model!r}; valid: {', '.join(resnet_jax.list_models())}")
    model = resnet_jax.create_model(args.model)
    size = args.image_size
    x = np.random.default_rng(0).normal(size=(args.batch_size, size, size, model.in_channels))
    x = x.astype(np.float32)
    variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), x[:1])
    start = time.perf_counter()
    exported = export.export_model(model, variables, size, ("cpu", "cuda"))
    export_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{args.model}.jaxexport")
        export.save(exported, path, {})
        megabytes = os.path.getsize(path) / 1e6
        start = time.perf_counter()
        logits = np.asarray(export.load_artifact(path).call(x))
        call_s = time.perf_counter() - start
    reference = np.asarray(jax.jit(functools.partial(model.apply, train=False))(variables, x))
    diff, scale = float(np.max(np.abs(logits - reference))), float(np.max(np.abs(reference)))
    print(
        "| model | input | artifact | export (cpu, cuda) | "
        f"load + call, batch {args.batch_size} | max abs diff |"
    )
    print("|---|---|---|---|---|---|")
    print(
        f"| {args.model} | {size}x{size}x{model.in_channels} | {megabytes:.1f} MB | {export_s:.1f}s | "
        f"{call_s:.1f}s | {diff:.1e} (logits up to {scale:.0f}) |"
    )
    print(f"({jax.default_backend()}, jax {jax.__version__}; random weights)")


if __name__ == "__main__":
    main(sys.argv[1:])
