r"""A model and its variables as one serialized ``jax.export`` artifact, for serving.

``python -m resnet_jax.export --model=NAME --weights=SOURCE --image-size=224 --out=FILE``

``SOURCE`` is a weights tag (``torchvision_v1``), a ``python -m resnet_jax.convert``
directory or a training workdir (its newest checkpoint). The artifact is StableHLO with
the variables inside and a symbolic batch dimension, lowered for CPU and CUDA by
default (``--platforms``); ``FILE.json`` beside it says what goes in and comes out.
Loading it needs JAX only, not this library, Flax or the model code::

    import jax, numpy as np
    with open("resnet50.jaxexport", "rb") as f:
        forward = jax.export.deserialize(f.read())
    logits = forward.call(images)  # float32 (N, H, W, C), normalised: (x / 255 - mean) / std

Any batch size N works; H, W and C are fixed at export.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import cli, convert, pretrained, registry, weights, workdirs

PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def export_model(
    model: Any,
    variables: Any,
    image_size: int,
    platforms: Sequence[str] = ("cpu", "cuda"),
) -> jax.export.Exported:
    """``model.apply(variables, images, train=False)`` exported for ``platforms`` with
    images of shape ``(batch, image_size, image_size, model.in_channels)``, batch symbolic."""
    bad = sorted(set(platforms) - set(PLATFORMS))
    if bad or not platforms:
        raise ValueError(f"platforms={list(platforms)}: valid are {', '.join(PLATFORMS)}")
    variables = jax.tree.map(
        jnp.asarray, {"params": variables["params"], "batch_stats": variables.get("batch_stats") or {}}
    )

    def forward(images: jax.Array) -> jax.Array:
        return model.apply(variables, images, train=False).astype(jnp.float32)

    (batch,) = jax.export.symbolic_shape("batch")
    spec = jax.ShapeDtypeStruct((batch, image_size, image_size, model.in_channels), jnp.float32)
    return jax.export.export(jax.jit(forward), platforms=tuple(platforms))(spec)


def save(exported: jax.export.Exported, path: str, metadata: dict[str, Any]) -> None:
    """Writes the serialized artifact to ``path`` and ``metadata`` to ``path.json``; an
    existing ``path`` is refused, never overwritten."""
    if os.path.exists(path):
        raise FileExistsError(f"{path} exists; it is left untouched. Choose a new --out.")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    blob = exported.serialize()
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(blob)
    with open(path + ".json", "w") as f:
        json.dump(metadata, f, indent=1)
    os.replace(tmp, path)


def load(path: str) -> jax.export.Exported:
    """The artifact written by ``save``; ``.call(images)`` runs it."""
    with open(path, "rb") as f:
        return jax.export.deserialize(bytearray(f.read()))


def _variables(source: str, model: str) -> tuple[Any, dict[str, Any]]:
    """Variables and preprocessing from a weights tag, a converted directory or a workdir."""
    tags = [w.tag for w in weights.list_weights(model)]
    if source in tags and not os.path.exists(source):
        entry = weights.get_weights(model, source)
        info = {"mean": list(entry.mean), "std": list(entry.std), "source": entry.url}
        return pretrained.load_pretrained(entry), info
    if os.path.isfile(os.path.join(source, "metadata.json")):
        variables, meta = convert.load(source)
        return variables, {
            "mean": meta.get("mean"),
            "std": meta.get("std"),
            "source": os.path.abspath(source),
        }
    if os.path.isdir(source):
        variables, step = workdirs.load_variables(source)
        config = workdirs.saved_config(source, step)
        info = {
            "mean": config.get("mean"),
            "std": config.get("std"),
            "source": f"{os.path.abspath(source)} step {step}",
        }
        return variables, info
    raise ValueError(
        f"--weights={source!r} is neither a tag of {model} ({', '.join(tags) or 'none'}), a converted "
        "directory (python -m resnet_jax.convert) nor a training workdir"
    )


def _shape_overrides(variables: Any) -> dict[str, int]:
    """The class and input-channel counts the variables were made for."""
    params = variables["params"]
    stem = params.get("stem_conv") or params.get("stem_conv1")
    return {
        "num_classes": int(np.shape(params["head"]["bias"])[0]) if "head" in params else 0,
        "in_channels": int(np.shape(stem["kernel"])[2]),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = cli.Parser(prog="python -m resnet_jax.export", description=__doc__.split("\n\n")[1])
    parser.add_argument("--model", required=True, help="a resnet_jax model name")
    parser.add_argument("--weights", required=True, help="a weights tag, a converted directory or a workdir")
    parser.add_argument("--image-size", type=int, required=True, help="the input's height and width")
    parser.add_argument("--out", required=True, help="the artifact's path (a new file)")
    parser.add_argument("--platforms", default="cpu,cuda", help=f"comma-separated, of {', '.join(PLATFORMS)}")
    args = parser.parse_args(argv)
    try:
        if args.model not in registry.list_models():
            registry.create_model(args.model)  # raises, naming the closest names
        if os.path.exists(args.out):
            raise FileExistsError(f"--out={args.out} exists; it is left untouched. Choose a new path.")
        variables, info = _variables(args.weights, args.model)
        shape = _shape_overrides(variables)
        model = registry.create_model(args.model, **shape)
        exported = export_model(model, variables, args.image_size, args.platforms.split(","))
        metadata = {
            "model": args.model,
            **info,
            "input": {
                "shape": ["batch", args.image_size, args.image_size, shape["in_channels"]],
                "dtype": "float32",
            },
            "output": {"shape": ["batch", shape["num_classes"]], "dtype": "float32", "meaning": "logits"},
            "platforms": list(exported.platforms),
            "jax_version": jax.__version__,
        }
        save(exported, args.out, metadata)
    except Exception as e:
        if not cli.is_user_error(e):
            raise
        cli.fail(str(e))
    size = args.image_size
    print(
        f"wrote {os.path.abspath(args.out)} ({os.path.getsize(args.out):,} bytes) and its .json: "
        f"{args.model}, platforms {', '.join(exported.platforms)}, "
        f"input (batch, {size}, {size}, {shape['in_channels']}) float32"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
