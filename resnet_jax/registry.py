"""Named models, as partials of ``ResNet``. Names follow torchvision and timm.

Parameter counts (ImageNet, 1000 classes) are those of torchvision / timm; the
tests check them exactly.
"""

from __future__ import annotations

import dataclasses
import difflib
from functools import partial
from typing import Any

import flax.linen as nn

from resnet_jax.blocks import BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck
from resnet_jax.resnet import ResNet
from resnet_jax.std_conv import StdConv

_DEPTHS = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}


def _imagenet(depth: int, preact: bool = False, **kw: Any) -> partial[ResNet]:
    basic = depth < 50
    block = (
        (PreActBasicBlock if basic else PreActBottleneck) if preact else (BasicBlock if basic else Bottleneck)
    )
    return partial(ResNet, stage_sizes=_DEPTHS[depth], block=block, **kw)


def _cifar(n: int, block: type[nn.Module], **kw: Any) -> partial[ResNet]:
    """Three stages of ``n`` blocks after a 16-channel 3x3 stem, 10 classes."""
    return partial(
        ResNet, stage_sizes=(n, n, n), block=block, num_classes=10, stem="cifar", stem_width=16, **kw
    )


# Keras applications ResNetV2 (TF-slim layout): stride on each stage's last block, biased
# convs where no norm follows, a zero-padded stem pool.
_KERAS_V2 = dict(
    preact=True, stage_strides=(2, 2, 2, 1), downsample_last=True, conv_bias=True, pool_pad_zeros=True
)


def _timm_attn(
    layers: tuple[int, ...], attn: str, deep: bool = False, block: type[nn.Module] = Bottleneck, **kw: Any
) -> partial[ResNet]:
    """timm's SE and ECA ResNets: ``layers`` of ``block``, channel attention in each;
    ``deep``: the deep stem and ResNet-D shortcut (timm's "d")."""
    if deep:
        kw.update(stem="deep", shortcut="D")
    return partial(ResNet, stage_sizes=layers, block=block, attn_layer=attn, **kw)


_X32x4, _X32x8, _X64x4 = (dict(groups=g, width_per_group=w) for g, w in ((32, 4), (32, 8), (64, 4)))
_D269 = (3, 30, 48, 8)
# timm's channel-attention ResNets (Hu et al. 2018's SE, Wang et al. 2020's ECA), by timm's names.
_ATTENTION_MODELS: dict[str, partial[ResNet]] = {
    "seresnet18": _timm_attn(_DEPTHS[18], "se", block=BasicBlock),
    "seresnet34": _timm_attn(_DEPTHS[34], "se", block=BasicBlock),
    **{f"seresnet{d}": _timm_attn(_DEPTHS[d], "se") for d in (50, 101, 152)},
    **{f"seresnet{d}d": _timm_attn(_DEPTHS.get(d, _D269), "se", deep=True) for d in (152, 200, 269)},
    "seresnext26d_32x4d": _timm_attn((2, 2, 2, 2), "se", deep=True, **_X32x4),
    "seresnext50_32x4d": _timm_attn(_DEPTHS[50], "se", **_X32x4),
    "seresnext101_32x4d": _timm_attn(_DEPTHS[101], "se", **_X32x4),
    "seresnext101_32x8d": _timm_attn(_DEPTHS[101], "se", **_X32x8),
    "seresnext101d_32x8d": _timm_attn(_DEPTHS[101], "se", deep=True, **_X32x8),
    "seresnext101_64x4d": _timm_attn(_DEPTHS[101], "se", **_X64x4),
    **{f"ecaresnet{d}d": _timm_attn(_DEPTHS.get(d, _D269), "eca", deep=True) for d in (50, 101, 200, 269)},
    # ResNet-D's shortcut without its deep stem.
    "ecaresnetlight": _timm_attn((1, 1, 11, 3), "eca", shortcut="D"),
    **{f"seresne{n}": _timm_attn(layers, "se", stem="tiered", shortcut="D", **kw)
       for n, layers, kw in (("t50t", _DEPTHS[50], {}), ("xt26t_32x4d", (2, 2, 2, 2), _X32x4))},
    **{f"ecaresne{n}": _timm_attn(layers, "eca", stem="tiered", shortcut="D", **kw)
       for n, layers, kw in (("t26t", (2, 2, 2, 2), {}), ("t50t", _DEPTHS[50], {}),
                             ("xt26t_32x4d", (2, 2, 2, 2), _X32x4), ("xt50t_32x4d", _DEPTHS[50], _X32x4))},
}  # fmt: skip
_TIERED = dict(stem="tiered", shortcut="D")
# timm's variants of the plain blocks: "c" the deep stem alone, "s" a wider deep stem
# (64, 64, 128), "t" the tiered stem with ResNet-D's shortcut, "_gn" GroupNorm.
_TIMM_PLAIN: dict[str, partial[ResNet]] = {
    "resnet10t": partial(ResNet, stage_sizes=(1, 1, 1, 1), block=BasicBlock, **_TIERED),
    "resnet14t": partial(ResNet, stage_sizes=(1, 1, 1, 1), block=Bottleneck, **_TIERED),
    "resnet26": partial(ResNet, stage_sizes=(2, 2, 2, 2), block=Bottleneck),
    "resnet26d": partial(ResNet, stage_sizes=(2, 2, 2, 2), block=Bottleneck, stem="deep", shortcut="D"),
    "resnet26t": partial(ResNet, stage_sizes=(2, 2, 2, 2), block=Bottleneck, **_TIERED),
    "resnet50t": _imagenet(50, **_TIERED),
    **{f"resnet{d}c": _imagenet(d, stem="deep") for d in (50, 101, 152)},
    **{f"resnet{d}s": _imagenet(d, stem="deep", stem_width=128, stage_widths=(64, 128, 256, 512))
       for d in (50, 101, 152)},
    "resnet50_gn": _imagenet(50, norm=partial(nn.GroupNorm, num_groups=32, epsilon=1e-5)),
    "resnext50d_32x4d": _imagenet(50, stem="deep", shortcut="D", **_X32x4),
    "resnext101_32x4d": _imagenet(101, **_X32x4),
    "resnext101_32x16d": _imagenet(101, groups=32, width_per_group=16),
    "resnext101_32x32d": _imagenet(101, groups=32, width_per_group=32),
}  # fmt: skip

_D = dict(stem="deep", shortcut="D")
_WIDE_STEM = dict(stem="deep", stem_width=128, stage_widths=(64, 128, 256, 512))  # 64, 64, 128
_RS_DEPTHS = {50: _DEPTHS[50], 101: _DEPTHS[101], 152: _DEPTHS[152], 200: _DEPTHS[200],
              270: (4, 29, 53, 4), 350: (4, 36, 72, 4), 420: (4, 44, 87, 4)}  # fmt: skip
# Anti-aliased downsampling (Zhang 2019; timm's aa_layer): "aa" a 2x2 average pool, "blur"
# a binomial blur; and ResNet-RS (Bello et al. 2021): ResNet-D with SE at 1/4 and a
# strided conv in place of the stem's max pool.
_TIMM_AA_RS: dict[str, partial[ResNet]] = {
    "resnetaa34d": _imagenet(34, aa_layer="avg", **_D),
    "resnetaa50": _imagenet(50, aa_layer="avg"),
    **{f"resnetaa{d}d": _imagenet(d, aa_layer="avg", **_D) for d in (50, 101)},
    "seresnetaa50d": _imagenet(50, aa_layer="avg", attn_layer="se", **_D),
    "seresnextaa101d_32x8d": _imagenet(101, aa_layer="avg", attn_layer="se", **_D, **_X32x8),
    "seresnextaa201d_32x8d": partial(
        ResNet, stage_sizes=(3, 24, 36, 4), block=Bottleneck, aa_layer="avg", attn_layer="se",
        shortcut="D", **_WIDE_STEM, **_X32x8,
    ),
    "resnetblur18": _imagenet(18, aa_layer="blur"),
    "resnetblur50": _imagenet(50, aa_layer="blur"),
    **{f"resnetblur{d}d": _imagenet(d, aa_layer="blur", **_D) for d in (50, 101)},
    **{f"resnetrs{d}": partial(ResNet, stage_sizes=layers, block=Bottleneck, attn_layer="se",
                               attn_ratio=0.25, stem_pool="conv", **_D)
       for d, layers in _RS_DEPTHS.items()},
}  # fmt: skip

# Big Transfer (Kolesnikov et al. 2020; timm's resnetv2_*_bit): pre-activation bottlenecks
# with GroupNorm (32 groups) and weight-standardised convolutions, widths times k, a
# zero-padded stem pool as in the original TF code.
_BIT = dict(
    preact=True, pool_pad_zeros=True, conv=StdConv,
    norm=partial(nn.GroupNorm, num_groups=32, epsilon=1e-5, use_fast_variance=False),
)  # fmt: skip
_TIMM_BIT: dict[str, partial[ResNet]] = {
    f"resnetv2_{d}x{k}_bit": _imagenet(d, stem_width=64 * k, stage_widths=(64 * k, 128 * k, 256 * k, 512 * k),
                                       **_BIT)
    for d, k in ((50, 1), (50, 3), (101, 1), (101, 3), (152, 2), (152, 4))
}  # fmt: skip

_MODELS: dict[str, partial[ResNet]] = {
    **_TIMM_BIT,
    **_ATTENTION_MODELS,
    **_TIMM_PLAIN,
    **_TIMM_AA_RS,
    **{f"resnet{d}": _imagenet(d) for d in _DEPTHS},
    **{f"resnet{d}d": _imagenet(d, stem="deep", shortcut="D") for d in (18, 34, 50, 101, 152, 200)},
    **{f"resnetv2_{d}": _imagenet(d, preact=True) for d in _DEPTHS},
    # timm's pre-activation ResNet-D and -T (deep or tiered stem, average-pool shortcut).
    **{
        f"resnetv2_{d}d": _imagenet(d, preact=True, stem="deep", shortcut="D") for d in (18, 34, 50, 101, 152)
    },
    "resnetv2_50t": _imagenet(50, preact=True, stem="tiered", shortcut="D"),
    "resnetv2_50d_gn": _imagenet(50, preact=True, stem="deep", shortcut="D", norm=_BIT["norm"]),
    **{f"resnet{d}v2": _imagenet(d, **_KERAS_V2) for d in (50, 101, 152)},
    "resnext50_32x4d": _imagenet(50, groups=32, width_per_group=4),
    "resnext101_32x8d": _imagenet(101, groups=32, width_per_group=8),
    "resnext101_64x4d": _imagenet(101, groups=64, width_per_group=4),
    "wide_resnet50_2": _imagenet(50, width_per_group=128),
    "wide_resnet101_2": _imagenet(101, width_per_group=128),
    # He et al. 2016 §4.2: 6n+2 layers, widths 16/32/64, parameter-free option A shortcuts.
    **{f"resnet{d}": _cifar((d - 2) // 6, BasicBlock, shortcut="A") for d in (20, 32, 44, 56, 110, 1202)},
    # Zagoruyko & Komodakis 2016, WRN-d-k: pre-activation basic blocks, (d-4)/6 per stage,
    # widths 16k/32k/64k.
    **{
        f"wrn{d}_{k}": _cifar((d - 4) // 6, PreActBasicBlock, stage_widths=(16 * k, 32 * k, 64 * k))
        for d, k in ((16, 4), (16, 8), (28, 10), (40, 4))
    },
}


def list_models() -> list[str]:
    """Returns the registered model names, sorted."""
    return sorted(_MODELS)


def build_model(name: str, **overrides: Any) -> Any:
    """Builds the named model; ``overrides`` replace any ``ResNet`` field.

    The architecture only, by its registered name: the public ``resnet_jax.create_model``
    (``resnet_jax.pretrained``) calls this, and adds ``weights=``.

    Raises:
      ValueError: for an unknown name (suggesting the closest ones) or an unknown field.
    """
    if name not in _MODELS:
        close = difflib.get_close_matches(name, _MODELS, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
        raise ValueError(f"unknown model {name!r}; {hint}list_models() gives all {len(_MODELS)} names")
    fields = {f.name for f in dataclasses.fields(ResNet)} - {"parent"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown ResNet field(s) {unknown} for {name!r}; valid: {sorted(fields)}")
    return _MODELS[name](**overrides)
