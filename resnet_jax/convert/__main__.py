r"""python -m resnet_jax.convert --source=torchvision|timm|keras --model=NAME --weights=W --out=DIR

Converts pretrained weights into an Orbax checkpoint of resnet_jax variables:
``DIR/variables`` ({'params', 'batch_stats'}) and ``DIR/metadata.json`` (source, model,
classes, the evaluation preprocessing: mean/std, resize, crop and interpolation, the
input file's SHA-256); ``resnet_jax.Classifier.load(DIR)`` classifies with it. ``--weights``
(W) is a local file, a URL, or a registered tag such as ``torchvision_v1`` (see
``resnet_jax.weights``); a URL or tag is downloaded into the cache and verified.
``.safetensors`` and Keras files are read as data; ``.pth`` only through
``torch.load(weights_only=True)``, so no pickled payload runs (see ``load_state_dict``).

With ``--source=timm``, W may be a timm Hub folder (``config.json`` beside
``model.safetensors``, as ``timm.models.save_for_hf`` writes it or the Hub serves it):
its architecture is the model (``--model`` may be left out) and its ``pretrained_cfg``
the preprocessing (test size, crop_pct, interpolation, mean, std) and class names.
"""

from __future__ import annotations

import argparse
import os
import sys

from resnet_jax import convert, pretrained, user_errors, weights
from resnet_jax.convert import timm as timm_convert
from resnet_jax.registry import list_models

SOURCES = ("torchvision", "timm", "keras")


def _resolve(args: argparse.Namespace) -> tuple[str, weights.Weights | None]:
    """The local path of ``--weights``, and its registry entry when it has one."""
    spec = args.weights
    if "://" not in spec and not os.path.exists(spec):
        tags = [w.tag for w in weights.list_weights(args.model)]
        if spec in tags:
            entry = weights.get_weights(args.model, spec)
            return pretrained.fetch(entry), entry
        raise ValueError(
            f"--weights={spec!r} is neither a file, a URL nor a tag of {args.model} "
            f"(tags: {', '.join(tags) or 'none'})"
        )
    if "://" in spec:
        entry = next((w for w in weights.list_weights() if w.url == spec), None)
        if entry is None:
            if not args.sha256:
                raise ValueError(f"{spec} is not a registered URL: pass its --sha256 to verify the download")
            entry = weights.Weights(args.model, "url", args.source, spec, args.sha256, 0, 224, 256, 0.0, 0.0)
        return pretrained.fetch(entry), entry
    entry = next((w for w in weights.list_weights(args.model) if w.filename == os.path.basename(spec)), None)
    return spec, entry


def _read(source: str, path: str, model: str) -> dict:
    if source == "keras":
        return convert.from_keras(path, model)
    arrays = convert.load_state_dict(path)
    return (
        convert.from_torchvision(arrays, model)
        if source == "torchvision"
        else convert.from_timm(arrays, model)
    )


def main(argv: list[str] | None = None) -> None:
    """Runs the tool; a user error prints one ``error:`` line and exits 1 (``resnet_jax.user_errors``)."""
    try:
        _main(argv)
    except Exception as e:
        if not user_errors.is_user_error(e):
            raise
        user_errors.fail(str(e))


def _hub_folder(args: argparse.Namespace) -> tuple[dict, dict, str]:
    """A timm Hub folder's variables, the metadata its config.json gives, and its weights file."""
    state, config, path = convert.timm_hub_folder(args.weights)
    arch = config["architecture"]
    if args.model not in (None, arch):
        raise ValueError(f"{args.weights} holds timm's {arch}, not --model={args.model}: drop --model")
    if arch not in list_models():
        raise ValueError(f"{args.weights} holds timm's {arch!r}, not a resnet_jax model (list_models())")
    args.model = arch
    cfg = config["pretrained_cfg"]
    prep = convert.timm_data_config(cfg)
    tag = f"{arch}.{cfg['tag']}" if cfg.get("tag") else arch
    meta = {**prep, "weights": f"{os.path.basename(os.path.normpath(args.weights))}/{os.path.basename(path)}"}
    meta["timm_tag"] = tag
    if cfg.get("label_names"):
        meta["class_names"] = list(cfg["label_names"])
    return convert.from_timm(state, arch), meta, path


def _main(argv: list[str] | None) -> None:
    parser = user_errors.Parser(prog="python -m resnet_jax.convert", description=__doc__.split("\n\n")[1])
    parser.add_argument("--source", required=True, choices=SOURCES)
    parser.add_argument("--model", help="a resnet_jax model name (a timm Hub folder names its own)")
    parser.add_argument("--weights", required=True, help="a file, URL, registered tag or timm Hub folder")
    parser.add_argument("--out", required=True, help="a new directory for the Orbax checkpoint")
    parser.add_argument("--sha256", default="", help="expected SHA-256 of an unregistered URL")
    args = parser.parse_args(argv)
    hub = args.source == "timm" and timm_convert.is_hub_folder(args.weights)
    if args.model is None and not hub:
        parser.error("--model is required (only a timm Hub folder names its own)")
    if args.model is not None and args.model not in list_models():
        parser.error(f"unknown --model {args.model!r}; valid: {', '.join(list_models())}")
    if os.path.exists(args.out):
        parser.error(f"--out={args.out} exists; it is left untouched. Choose a new directory.")
    hub_meta: dict = {}
    if hub:
        variables, hub_meta, path = _hub_folder(args)
        entry = None
    else:
        path, entry = _resolve(args)
        variables = _read(args.source, path, args.model)
    head = variables["params"].get("head")
    metadata = {
        "source": args.source,
        "model": args.model,
        "num_classes": int(head["bias"].shape[0]) if head else 0,
        "weights": os.path.basename(path),
        "url": entry.url if entry else "",
        "sha256": weights.sha256_of(path),
        "mean": list(entry.mean if entry else weights.IMAGENET_MEAN),
        "std": list(entry.std if entry else weights.IMAGENET_STD),
        "crop_size": entry.crop_size if entry else 224,
        "resize_size": entry.resize_size if entry else 256,
        "interpolation": entry.interpolation if entry else "bilinear",
        "reported_top1": entry.top1 if entry and entry.top1 else None,
        **hub_meta,
    }
    if args.source == "keras":  # its own normalisation (and, for v1, channel order and strides)
        metadata.update(convert.keras_preprocessing(args.model))
    convert.save(variables, metadata, args.out)
    print(
        f"wrote {os.path.abspath(args.out)}: {args.model} from {args.source} ({metadata['weights']}, "
        f"sha256 {metadata['sha256'][:16]}...)"
    )
    if hub:
        print(f"preprocessing from its config.json: {_describe(metadata)}")


def _describe(meta: dict) -> str:
    return (
        f"resize {meta['resize_size']} ({meta['interpolation']}), centre crop {meta['crop_size']} "
        f"(crop_pct {meta['crop_pct']}), mean {meta['mean']}, std {meta['std']}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
