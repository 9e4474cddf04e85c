r"""A model and its variables as one serialized ``jax.export`` artifact, for serving.

``python -m resnet_jax.export --weights=SOURCE --out=FILE [--raw-input[=HxW]] [--output=probabilities]``

The weights are those ``--weights`` gives everywhere (``resnet_jax.sources.resolve``): a
workdir's EMA weights when the run kept them, unless ``--no-ema``.

``SOURCE`` is a weights tag (``resnet50.torchvision_v1``, or ``torchvision_v1`` with
``--model``), a ``python -m resnet_jax.convert`` directory or a training workdir (its
newest checkpoint). The artifact is StableHLO with the variables inside and a symbolic
batch dimension, lowered for CPU and CUDA by default (``--platforms``); ``FILE.json``
beside it says what goes in and comes out, and lists the class names.

By default the input is float32 ``(N, crop, crop, C)``, already preprocessed. With
``--raw-input`` it is the decoded uint8 pixels, ``(N, H, W, C)`` at one size fixed at
export (default: the resize size, square, e.g. 256x256); the resize, centre crop and
normalisation run inside the graph, equal to the library's. Loading it needs JAX only,
not this library, Flax or the model code::

    import jax, numpy as np
    from PIL import Image
    with open("resnet50.jaxexport", "rb") as f:
        forward = jax.export.deserialize(f.read())
    image = np.asarray(Image.open("dog.jpg").convert("RGB").resize((256, 256)))
    probabilities = forward.call(image[None])  # (1, 1000)

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

from resnet_jax import pil_resize, sources, user_errors
from resnet_jax.preprocessing import Preprocessing

PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
OUTPUTS = ("logits", "probabilities")


def export_model(
    model: Any,
    variables: Any,
    image_size: int | tuple[int, int] | None = None,
    platforms: Sequence[str] = ("cpu", "cuda"),
    *,
    preprocessing: Preprocessing | None = None,
    raw_input: tuple[int, int] | None = None,
    output: str = "logits",
) -> jax.export.Exported:
    """``model.apply(variables, images, train=False)`` exported for ``platforms``, the
    batch dimension symbolic.

    By default the input is float32 ``(batch, height, width, in_channels)``, already
    normalised: ``image_size`` (a side, or (height, width)), else the preprocessing's
    size. With ``raw_input=(H, W)`` it is uint8 ``(batch, H, W, channels)`` pixels, and
    ``preprocessing``'s resize, centre crop and normalisation run inside the graph
    (``resnet_jax.pil_resize``: the same pixels as ``preprocessing.crop``).
    ``output`` is ``'logits'`` or ``'probabilities'`` (the softmax).
    """
    bad = sorted(set(platforms) - set(PLATFORMS))
    if bad or not platforms:
        raise ValueError(f"platforms={list(platforms)}: valid are {', '.join(PLATFORMS)}")
    if output not in OUTPUTS:
        raise ValueError(f"output={output!r}: valid are {', '.join(OUTPUTS)}")
    if raw_input is not None and preprocessing is None:
        raise ValueError("raw_input needs the preprocessing to build into the graph")
    variables = jax.tree.map(
        jnp.asarray, {"params": variables["params"], "batch_stats": variables.get("batch_stats") or {}}
    )

    def forward(images: jax.Array) -> jax.Array:
        if raw_input is not None:
            images = preprocessing.finish(pil_resize.resize_crop(images, preprocessing))
        logits = model.apply(variables, images, train=False).astype(jnp.float32)
        return jax.nn.softmax(logits) if output == "probabilities" else logits

    (batch,) = jax.export.symbolic_shape("batch")
    if raw_input is not None:
        spec = jax.ShapeDtypeStruct((batch, *raw_input, model.in_channels), jnp.uint8)
    else:
        size = image_size or (preprocessing.size if preprocessing else None)
        if not size:
            raise ValueError("image_size: the input's height and width (or pass the preprocessing)")
        height, width = (size, size) if isinstance(size, int) else size
        spec = jax.ShapeDtypeStruct((batch, height, width, model.in_channels), jnp.float32)
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


def load_artifact(path: str) -> jax.export.Exported:
    """The artifact written by ``save``; ``.call(images)`` runs it."""
    with open(path, "rb") as f:
        return jax.export.deserialize(bytearray(f.read()))


def _size(text: str, flag: str) -> tuple[int, int]:
    """'224' or '480x640' (height x width) -> (224, 224) or (480, 640)."""
    try:
        h, w = (int(v) for v in (text.split("x") if "x" in text else (text, text)))
    except ValueError:
        h = w = 0
    if min(h, w) < 1:
        raise ValueError(f"{flag}={text!r}: a size N or HEIGHTxWIDTH, e.g. 256 or 480x640")
    return h, w


def main(argv: Sequence[str] | None = None) -> None:
    parser = user_errors.Parser(prog="python -m resnet_jax.export", description=__doc__.split("\n\n")[1])
    parser.add_argument("--weights", required=True, help="a weights tag, a converted directory or a workdir")
    parser.add_argument("--model", default=None, help="a resnet_jax model name (needed for a bare tag)")
    parser.add_argument("--out", required=True, help="the artifact's path (a new file)")
    parser.add_argument("--image-size", default="", help="float input: its size (default: the crop)")
    parser.add_argument(
        "--raw-input",
        nargs="?",
        const="",
        default=None,
        metavar="HxW",
        help="uint8 images of this size in (default: the resize size, square); preprocessing inside",
    )
    parser.add_argument("--output", default="logits", choices=OUTPUTS)
    parser.add_argument("--no-ema", action="store_true", help="a workdir's live weights, not its EMA")
    parser.add_argument("--platforms", default="cpu,cuda", help=f"comma-separated, of {', '.join(PLATFORMS)}")
    args = parser.parse_args(argv)
    try:
        if os.path.exists(args.out):
            raise FileExistsError(f"--out={args.out} exists; it is left untouched. Choose a new path.")
        loaded = sources.resolve(args.weights, model=args.model, ema=False if args.no_ema else None)
        prep, shape = loaded.preprocessing, sources.shape_overrides(loaded.variables)
        raw = None
        if args.raw_input is not None:
            # The default is the size at which the graph's resize is the identity, so that
            # resnet_jax.Classifier gives every image the source's exact preprocessing.
            raw = _size(args.raw_input, "--raw-input") if args.raw_input else prep.identity_size
        size = _size(args.image_size, "--image-size") if args.image_size else prep.size
        exported = export_model(
            loaded.model,
            loaded.variables,
            size,
            args.platforms.split(","),
            preprocessing=prep,
            raw_input=raw,
            output=args.output,
        )
        if raw is not None:
            spec = {"shape": ["batch", *raw, shape["in_channels"]], "dtype": "uint8"}
            spec["meaning"] = "decoded pixels, 0-255" + (", RGB order" if shape["in_channels"] == 3 else "")
        else:
            spec = {"shape": ["batch", *size, shape["in_channels"]], "dtype": "float32"}
            spec["meaning"] = "normalised: (x / 255 - mean) / std after the preprocessing"
        metadata = {
            "model": loaded.name,
            "source": loaded.description,
            "input": spec,
            "output": {"shape": ["batch", shape["num_classes"]], "dtype": "float32", "meaning": args.output},
            "preprocessing": prep.to_dict(),
            "preprocessing_in_graph": raw is not None,
            "mean": list(prep.mean),
            "std": list(prep.std),
            "class_names": loaded.class_names,
            "platforms": list(exported.platforms),
            "jax_version": jax.__version__,
        }
        save(exported, args.out, metadata)
    except Exception as e:
        if not user_errors.is_user_error(e):
            raise
        user_errors.fail(str(e))
    shown = " x ".join(str(d) for d in metadata["input"]["shape"])
    print(
        f"wrote {os.path.abspath(args.out)} ({os.path.getsize(args.out):,} bytes) and its .json: "
        f"{loaded.name}, platforms {', '.join(exported.platforms)}, input ({shown}) "
        f"{metadata['input']['dtype']}, output {args.output}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
