"""Prints a model's layer table, exact parameter count and forward FLOPs.

python -m resnet_jax.summary resnet50 --image-size 224 --num-classes 1000
python -m resnet_jax.summary --table [NAME ...]    # a Markdown table; all models by default
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp

from resnet_jax.registry import build_model, list_models


def count_params(variables: Any) -> int:
    """Number of trainable parameters (``variables['params']``), BN statistics excluded."""
    return sum(int(x.size) for x in jax.tree.leaves(variables["params"]))


def forward_flops(model: Any, variables: Any, x: jax.Array) -> float:
    """FLOPs of one eval forward pass at ``x``'s shape, from XLA's cost analysis.

    ``variables`` and ``x`` may be ``jax.ShapeDtypeStruct``s: nothing is computed.

    XLA counts a multiply-add as two FLOPs, so this is about twice the "GFLOPs"
    (really multiply-accumulates) that the torchvision and timm tables list.
    """
    # The lowered (pre-optimisation) HLO: no backend compile, which takes minutes for the
    # deepest nets; the optimised program's count differs by under 1%.
    cost = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x).cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
        cost = cost[0]
    return float(cost["flops"])


def summarize(
    name: str,
    image_size: int | None = None,
    num_classes: int | None = None,
    batch_size: int = 1,
    depth: int = 1,
) -> str:
    """Returns the summary text for registered model ``name``."""
    overrides = {} if num_classes is None else {"num_classes": num_classes}
    model = build_model(name, **overrides)
    size = image_size or (32 if model.stem == "cifar" else 224)
    x = jnp.zeros((batch_size, size, size, model.in_channels), jnp.float32)
    table = model.tabulate(
        jax.random.key(0), x, train=False, depth=depth, console_kwargs={"width": 160, "force_terminal": False}
    )
    variables = jax.jit(lambda: model.init(jax.random.key(0), x, train=False))()
    n_params = count_params(variables)
    n_stats = sum(int(v.size) for v in jax.tree.leaves(variables.get("batch_stats", {})))
    flops = forward_flops(model, variables, x)
    lines = [
        table.rstrip(),
        f"model:        {name}",
        f"input:        {tuple(x.shape)} (NHWC)",
        f"num_classes:  {model.num_classes}",
        f"params:       {n_params:,} (trainable; the table's total also counts batch_stats)",
        f"batch_stats:  {n_stats:,}",
        f"forward:      {flops / 1e9 / batch_size:.3f} GFLOPs per image "
        f"(XLA cost analysis; {flops / 2e9 / batch_size:.3f} G multiply-adds)",
    ]
    return "\n".join(lines)


def table_rows(names: list[str]) -> Iterator[str]:
    """The lines of a Markdown table of exact parameter counts and forward GFLOPs per image.

    Each model has its default head (1000 classes, or 10 for the CIFAR nets) and input
    (224x224x3, or 32x32x3). Nothing is materialised: shapes only, then XLA's cost analysis.
    """
    yield "| model | input | params | GFLOPs | G multiply-adds |"
    yield "|---|---|---|---|---|"
    for name in names:
        model = build_model(name)
        size = 32 if model.stem == "cifar" else 224
        x = jax.ShapeDtypeStruct((1, size, size, model.in_channels), jnp.float32)
        variables = jax.eval_shape(lambda x, model=model: model.init(jax.random.key(0), x, train=False), x)
        flops = forward_flops(model, variables, x)
        g = [flops / 1e9, flops / 2e9]
        g = [f"{v:.2f}" if v >= 1 else f"{v:.3f}" for v in g]  # three figures for the CIFAR nets
        shape = f"{size}x{size}x{model.in_channels}"
        yield f"| `{name}` | {shape} | {count_params(variables):,} | {g[0]} | {g[1]} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resnet_jax.summary", description=__doc__.split("\n")[0])
    parser.add_argument("name", help="a registered model name; see --list")
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="input height and width (default: 224, or 32 for CIFAR models)",
    )
    parser.add_argument("--num-classes", type=int, default=None, help="override the head width")
    parser.add_argument("--depth", type=int, default=1, help="module nesting shown in the table")
    if argv is None:
        argv = sys.argv[1:]
    if argv == ["--list"]:
        print("\n".join(list_models()))
        return 0
    if argv and argv[0] == "--table":
        unknown = [n for n in argv[1:] if n not in list_models()]
        if unknown:
            parser.error(f"unknown model(s) {', '.join(unknown)}; valid: {', '.join(list_models())}")
        for row in table_rows(argv[1:] or list_models()):
            print(row, flush=True)
        return 0
    args = parser.parse_args(argv)
    try:
        print(summarize(args.name, args.image_size, args.num_classes, depth=args.depth))
    except ValueError as e:
        parser.error(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
