"""Pretrained weights: where they live, how to check them, and how they were evaluated.

The idea of torchvision's ``Weights`` enums, for JAX: each entry names its file's URL and
hash, the preprocessing it expects and the accuracy its authors report. This module is
the catalogue only, with the cache's location and the hash check; downloading, converting
and caching are ``resnet_jax.pretrained``'s (``fetch``, ``load_pretrained``), which
keeps the imports one-way: models, then this catalogue and the converters, then that.

torchvision publishes only the first 8 hex digits of each file's SHA-256 (in the file
name, which is what ``torch.hub`` checks); those entries verify that prefix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os

from resnet_jax import classes
from resnet_jax.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

_TORCHVISION = "https://download.pytorch.org/models/"
_TIMM = "https://github.com/rwightman/pytorch-image-models/releases/download/"  # as timm's cfgs name it


@dataclasses.dataclass(frozen=True)
class Weights:
    model: str  # the resnet_jax model name
    tag: str  # e.g. 'torchvision_v1'
    source: str  # the converter: 'torchvision', 'timm' or 'keras'
    url: str
    sha256: str  # hex digest, or its published prefix
    num_classes: int
    crop_size: int  # evaluation: resize the shorter side to resize_size, centre-crop this
    resize_size: int
    top1: float  # ImageNet-1k validation accuracy (%) as reported by the source
    top5: float
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"  # of the evaluation resize
    antialias: bool = True  # torchvision's transforms() resize PIL images antialiased
    classes: str = "imagenet-1k"

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def preprocessing(self) -> Preprocessing:
        """The evaluation transform these weights were measured with (torchvision's
        ``weights.transforms()``): ``entry.preprocessing(image)`` is the model input."""
        return Preprocessing(
            size=(self.crop_size, self.crop_size),
            resize_size=self.resize_size,
            interpolation=self.interpolation,
            antialias=self.antialias,
            mean=self.mean,
            std=self.std,
        )

    @property
    def categories(self) -> list[str]:
        """The class names, by index (torchvision's ``weights.meta['categories']``)."""
        if self.classes == "imagenet-1k":
            return classes.imagenet_classes()
        return classes.numbered(self.num_classes)


def _tv(model: str, tag: str, file: str, top1: float, top5: float, resize: int = 256) -> Weights:
    return Weights(
        model=model,
        tag=tag,
        source="torchvision",
        url=_TORCHVISION + file,
        sha256=file.rsplit("-", 1)[-1].split(".")[0],
        num_classes=1000,
        crop_size=224,
        resize_size=resize,
        top1=top1,
        top5=top5,
    )


# torchvision's IMAGENET1K_V1 (the original recipes) and IMAGENET1K_V2 (the 2021 "new
# training recipe": longer, with mixup/cutmix, label smoothing, EMA; evaluated at resize 232).
_ENTRIES = [
    _tv("resnet18", "torchvision_v1", "resnet18-f37072fd.pth", 69.758, 89.078),
    _tv("resnet34", "torchvision_v1", "resnet34-b627a593.pth", 73.314, 91.420),
    _tv("resnet50", "torchvision_v1", "resnet50-0676ba61.pth", 76.130, 92.862),
    _tv("resnet50", "torchvision_v2", "resnet50-11ad3fa6.pth", 80.858, 95.434, 232),
    _tv("resnet101", "torchvision_v1", "resnet101-63fe2227.pth", 77.374, 93.546),
    _tv("resnet101", "torchvision_v2", "resnet101-cd907fc2.pth", 81.886, 95.780, 232),
    _tv("resnet152", "torchvision_v1", "resnet152-394f9c45.pth", 78.312, 94.046),
    _tv("resnet152", "torchvision_v2", "resnet152-f82ba261.pth", 82.284, 96.002, 232),
    _tv("resnext50_32x4d", "torchvision_v1", "resnext50_32x4d-7cdf4587.pth", 77.618, 93.698),
    _tv("resnext50_32x4d", "torchvision_v2", "resnext50_32x4d-1a0047aa.pth", 81.198, 95.340, 232),
    _tv("resnext101_32x8d", "torchvision_v1", "resnext101_32x8d-8ba56ff5.pth", 79.312, 94.526),
    _tv("resnext101_32x8d", "torchvision_v2", "resnext101_32x8d-110c445d.pth", 82.834, 96.228, 232),
    _tv("resnext101_64x4d", "torchvision_v1", "resnext101_64x4d-173b62eb.pth", 83.246, 96.454, 232),
    _tv("wide_resnet50_2", "torchvision_v1", "wide_resnet50_2-95faca4d.pth", 78.468, 94.086),
    _tv("wide_resnet50_2", "torchvision_v2", "wide_resnet50_2-9ba9bcbe.pth", 81.602, 95.758, 232),
    _tv("wide_resnet101_2", "torchvision_v1", "wide_resnet101_2-32ee1156.pth", 78.848, 94.284),
    _tv("wide_resnet101_2", "torchvision_v2", "wide_resnet101_2-d733dc28.pth", 82.510, 96.020, 232),
]


def _timm(model: str, tag: str, file: str, size: int, crop_pct: float, top1: float, top5: float) -> Weights:
    # timm's GitHub-release files follow torch.hub's naming, as torchvision's do: the name
    # ends in the first 8 hex digits of the file's SHA-256. The evaluation is timm's at its
    # test size: the shorter side resized to floor(size / crop_pct), bicubic, centre crop.
    # Accuracies: timm's results-imagenet.csv at that size and crop_pct.
    return Weights(
        model=model,
        tag=tag,
        source="timm",
        url=file if "://" in file else _TIMM + file,
        sha256=file.rsplit("-", 1)[-1].split(".")[0],
        num_classes=1000,
        crop_size=size,
        resize_size=math.floor(size / crop_pct),
        top1=top1,
        top5=top5,
        interpolation="bicubic",
    )


# timm's own training recipes: "ResNet strikes back" (a1h), RandAugment + CutMix/Mixup
# (racm, ra2), MIIL's (miil), the TPU-trained ResNet-RS (tf) and SE-ResNeXt-D (ah).
_ENTRIES += [
    _timm("resnet50", "a1h_in1k", _TIMM.replace("rwightman", "huggingface")
          + "v0.1-rsb-weights/resnet50_a1h2_176-001a1197.pth", 224, 1.0, 80.654, 95.312),
    _timm("resnet152", "a1h_in1k", "v0.1-rsb-weights/resnet152_a1h-dc400468.pth", 288, 1.0, 83.494, 96.522),
    _timm("seresnext50_32x4d", "racm_in1k", "v0.1-weights/seresnext50_32x4d_racm-a304a460.pth", 288, 0.95,
          82.186, 96.146),
    _timm("seresnext101d_32x8d", "ah_in1k", "v0.1-tpu-weights/seresnext101d_32x8d_ah-191d7b94.pth", 288, 1.0,
          84.380, 96.918),
    _timm("ecaresnet50d", "miil_in1k", "v0.1-tresnet/ecaresnet50d-93c81e3b.pth", 288, 0.95, 81.648, 95.884),
    _timm("ecaresnet269d", "ra2_in1k", "v0.1-weights/ecaresnet269d_320_ra2-7baa55cb.pth", 352, 1.0,
          84.968, 97.224),
    _timm("resnetblur50", "bt_in1k", "v0.1-weights/resnetblur50-84f4748f.pth", 288, 0.95, 80.248, 95.200),
    _timm("resnetrs50", "tf_in1k", "v0.1-rs-weights/resnetrs50_ema-6b53758b.pth", 224, 0.91, 79.934, 94.972),
    _timm("resnetrs420", "tf_in1k", "v0.1-rs-weights/resnetrs420_ema-972dee69.pth", 416, 1.0, 85.010, 97.110),
]  # fmt: skip
#: Every entry, by ``(model, tag)``; ``list_weights`` and ``get_weights`` read it.
REGISTRY: dict[tuple[str, str], Weights] = {(w.model, w.tag): w for w in _ENTRIES}


def list_weights(model: str | None = None) -> list[Weights]:
    """Every registered entry, or those of ``model``."""
    return [w for w in _ENTRIES if model is None or w.model == model]


def get_weights(model: str, tag: str) -> Weights:
    """The entry for ``model`` and ``tag``; an unknown pair lists the valid ones."""
    if (model, tag) not in REGISTRY:
        tags = [w.tag for w in list_weights(model)]
        if tags:
            raise ValueError(f"no weights {tag!r} for {model}; valid: {', '.join(tags)}")
        have = sorted({w.model for w in _ENTRIES})
        raise ValueError(f"no pretrained weights for {model!r}; models with weights: {', '.join(have)}")
    return REGISTRY[(model, tag)]


def cache_dir() -> str:
    """Where downloaded and converted weights are kept: ``$RESNET_JAX_CACHE``, else
    ``~/.cache/resnet_jax``."""
    return os.environ.get("RESNET_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "resnet_jax")


def sha256_of(path: str) -> str:
    """The file's SHA-256 as hex, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: str, expected: str) -> str:
    """The file's SHA-256; raises if it does not start with ``expected``."""
    actual = sha256_of(path)
    if not actual.startswith(expected.lower()):
        raise ValueError(f"{path}: SHA-256 {actual} does not match the expected {expected}")
    return actual
