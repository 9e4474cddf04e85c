"""Where a model's weights come from: one string (``--weights=SOURCE``) resolved to the
model, its variables, its evaluation preprocessing and its class names.

A SOURCE is one of:

- a weights tag, ``MODEL.TAG`` (``resnet50.torchvision_v2``) or a ``TAG`` with the model
  named separately: downloaded, verified and converted once (``resnet_jax.pretrained``);
- a directory written by ``python -m resnet_jax.convert``: its ``metadata.json`` names the
  model, the classes and the preprocessing;
- a training workdir of ``python -m train.main`` (or its ``checkpoints`` directory): the
  newest step, with the EMA weights when the run kept them (``resolve``'s ``ema``); its saved
  config names the model, and its saved ``run`` item the class names and the evaluation
  ``Preprocessing`` the trainer used (the library does not rebuild it from the trainer's
  fields, except for checkpoints saved before runs kept it).

``resnet_jax.predict``, ``resnet_jax.classify`` and ``resnet_jax.evaluate`` also take an
export artifact, which holds no variables.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from resnet_jax import classes, convert, pretrained, registry, weights, workdirs
from resnet_jax.preprocessing import CENTER_CROP_FRACTION, IMAGENET_MEAN, IMAGENET_STD, Preprocessing


@dataclasses.dataclass
class Loaded:
    name: str  # the resnet_jax model name
    model: Any
    variables: dict[str, Any]
    preprocessing: Preprocessing
    class_names: list[str]
    description: str  # where the weights came from, for a log line or an artifact's .json


def shape_overrides(variables: Any) -> dict[str, int]:
    """The class and input-channel counts the variables were made for."""
    params = variables["params"]
    stem = params.get("stem_conv") or params.get("stem_conv1")
    return {
        "num_classes": int(np.shape(params["head"]["bias"])[0]) if "head" in params else 0,
        "in_channels": int(np.shape(stem["kernel"])[2]),
    }


def tag_entry(source: str, model: str | None = None) -> weights.Weights | None:
    """The weights entry ``source`` names (``MODEL.TAG``, or ``TAG`` of ``model``), or None."""
    name, _, tag = source.rpartition(".")
    if name and (name, tag) in weights.REGISTRY and model in (None, name):
        return weights.REGISTRY[(name, tag)]
    if model is not None and (model, source) in weights.REGISTRY:
        return weights.REGISTRY[(model, source)]
    return None


def resolve(
    source: str, model: str | None = None, ema: bool | None = None, label: str = "--weights"
) -> Loaded:
    """The model and variables of ``source`` (see the module docstring). ``model`` names
    the architecture where the source does not (a bare tag), or checks it where it does.

    The one rule for a workdir's weights, for ``python -m resnet_jax.predict``,
    ``resnet_jax.classify``, ``python -m resnet_jax.export`` and the trainer's
    ``init_from`` alike: its EMA weights when the run kept them (``ema=None``), else its
    live ones; ``ema=False`` takes the live ones (``--no-ema``, ``init_from_ema=False``),
    ``ema=True`` requires the EMA.

    Raises ``ValueError`` naming the source (as ``label=SOURCE``) and what it may be.
    """
    if model is not None and model not in registry.list_models():
        registry.build_model(model)  # raises, naming the closest names
    path = os.path.expanduser(source)
    if os.path.isfile(os.path.join(path, "metadata.json")):
        return _converted(path, model)
    if os.path.isdir(path):
        return _workdir(path, model, ema, label)
    if os.path.exists(path):
        raise ValueError(
            f"{label}={source!r} is a file: pass a converted directory or a workdir (a weights file "
            "converts with python -m resnet_jax.convert; an export artifact runs in resnet_jax.predict)"
        )
    entry = tag_entry(source, model)
    if entry is None:
        hint = _tags_hint(model, source)
        raise ValueError(f"{label}={source!r}: no such file or directory, and not a weights tag. {hint}")
    return Loaded(
        name=entry.model,
        model=registry.build_model(entry.model, num_classes=entry.num_classes),
        variables=pretrained.load_pretrained(entry),
        preprocessing=entry.preprocessing,
        class_names=entry.categories,
        description=f"{entry.model}.{entry.tag} ({entry.url})",
    )


def _tags_hint(model: str | None, source: str) -> str:
    owners = [w.model for w in weights.list_weights() if w.tag == source]
    if owners and model is None:
        return f"{source!r} is a tag of {', '.join(owners)}: name the model, e.g. {owners[0]}.{source}."
    entries = weights.list_weights(model)
    if model is not None and not entries:
        return f"{model} has no registered weights."
    shown = [f"{w.model}.{w.tag}" for w in entries]
    return f"Tags: {', '.join(shown)}."


def _check_model(model: str | None, found: str, source: str) -> None:
    if model is not None and model != found:
        raise ValueError(f"{source} holds {found} weights, not {model}: drop --model or pass {found}")


def _converted(directory: str, model: str | None) -> Loaded:
    variables, meta = convert.load_converted(directory)
    name = meta.get("model") or model
    if name is None:
        raise ValueError(f"{directory}/metadata.json names no model: pass --model")
    _check_model(model, name, directory)
    shape = shape_overrides(variables)
    crop = int(meta.get("crop_size") or 224)
    preprocessing = Preprocessing(
        size=(crop, crop),
        resize_size=int(meta.get("resize_size") or int(crop / CENTER_CROP_FRACTION)),
        interpolation=meta.get("interpolation") or "bilinear",
        mean=meta.get("mean") or IMAGENET_MEAN,
        std=meta.get("std") or IMAGENET_STD,
        channels=shape["in_channels"],
        channel_order=meta.get("channel_order") or "RGB",
    )
    names = meta.get("class_names")
    if not names:
        k = shape["num_classes"]
        names = classes.imagenet_classes() if k == 1000 else classes.numbered(k)
    what = f"{meta.get('source', 'converted')}: {meta.get('weights') or meta.get('url') or '?'}"
    return Loaded(
        name=name,
        model=registry.build_model(name, **shape, **meta.get("overrides", {})),
        variables=variables,
        preprocessing=preprocessing,
        class_names=list(names),
        description=f"{os.path.abspath(directory)} ({what})",
    )


def legacy_preprocessing(config: dict[str, Any], image_shape: Any, channels: int) -> Preprocessing:
    """The evaluation transform of a run saved before runs kept their ``Preprocessing``
    (``run['preprocessing']``), rebuilt from its saved config as that trainer built it:
    the centre crop of ``augment='imagenet'``, else the resize to ``image_size`` (the
    data's own size, ``image_shape``, when 0). Only for those old checkpoints."""
    size = int(config.get("image_size") or 0)
    if not size and not image_shape:
        raise ValueError("the run saved neither its image_size nor its data's image shape")
    resize_size = 0
    if config.get("augment") == "imagenet":
        resize_size = int(config.get("eval_resize_size") or 0) or int(size / CENTER_CROP_FRACTION)
    return Preprocessing(
        size=(size, size) if size else tuple(image_shape[:2]),
        resize_size=resize_size,
        interpolation=config.get("interpolation") or "bilinear",
        mean=config.get("mean") or (0.0,),
        std=config.get("std") or (1.0,),
        channels=channels,
    )


def _workdir(path: str, model: str | None, ema: bool | None, label: str) -> Loaded:
    not_a_workdir = (
        f"{label}={path!r} is a directory, but neither a workdir (no checkpoint in it) nor a "
        "converted one (no metadata.json)"
    )
    try:
        workdir = workdirs.Workdir(path)
    except ValueError:
        raise ValueError(not_a_workdir) from None
    with workdir:
        try:
            step = workdir.latest_step()
        except ValueError:
            raise ValueError(not_a_workdir) from None
        config, run = workdir.item(step, workdirs.CONFIG), workdir.item(step, workdirs.RUN)
        name = config.get("model") or model
        if name is None:
            raise ValueError(
                f"the checkpoint at step {step} in {workdir.directory} saved no config: pass --model"
            )
        _check_model(model, name, workdir.directory)
        use_ema = ema if ema is not None else float(config.get("ema_decay") or 0) > 0
        variables = workdir.variables(step, ema=use_ema)[0]
    shape = shape_overrides(variables)
    data = run.get("data") or {}
    if run.get("preprocessing"):
        preprocessing = Preprocessing.from_dict(run["preprocessing"])
    else:
        preprocessing = legacy_preprocessing(config, data.get("image_shape"), shape["in_channels"])
    names = data.get("class_names") or classes.numbered(shape["num_classes"])
    return Loaded(
        name=name,
        model=registry.build_model(name, **shape),
        variables=variables,
        preprocessing=preprocessing,
        class_names=[str(n) for n in names],
        description=f"{workdir.directory} step {step} ({'EMA' if use_ema else 'live'} weights)",
    )
