"""The stems of ``ResNet``: the layers before the first stage, by ``ResNet.stem``.

* ``"imagenet"``: a 7x7/2 conv (He et al. 2015);
* ``"deep"``: three 3x3 convs of widths w/2, w/2, w, the first at stride 2 (ResNet-C of
  He et al. 2019, timm's "d" and "c" nets);
* ``"tiered"``: the same with widths 3w/8, w/2, w (timm's "t" nets);
* ``"cifar"``: one 3x3/1 conv and no pool (He et al. 2016 §4.2).

Then ``ResNet.stem_pool`` halves the resolution: a 3x3/2 max pool, or (``"conv"``,
ResNet-RS) a 3x3/2 conv, norm and activation; with ``aa_layer`` the stride moves into
the anti-aliasing filter (``resnet_jax.pooling``), as timm does.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from resnet_jax.blocks import Array, ModuleDef, conv3x3
from resnet_jax.pooling import anti_alias

STEMS = ("imagenet", "deep", "tiered", "cifar")
STEM_POOLS = ("max", "conv")


def stem(net: Any, x: Array, conv: ModuleDef, norm: ModuleDef) -> Array:
    """The stem of ``net`` (a ``ResNet``, inside its compact call): convs, then its pool."""
    preact = net.block.preact
    if net.stem == "cifar":
        x = conv3x3(conv, net.stem_width, use_bias=net.conv_bias and preact, name="stem_conv")(x)
        return x if preact else net.act(norm(name="stem_norm")(x))
    if net.stem in ("deep", "tiered"):
        # timm's deep stem: 3x3 convs of width w/2, w/2, w; tiered: 3w/8, w/2, w.
        first = net.stem_width // 2 if net.stem == "deep" else 3 * (net.stem_width // 8)
        for i, width in enumerate((first, net.stem_width // 2), start=1):
            x = conv3x3(conv, width, 2 if i == 1 else 1, name=f"stem_conv{i}")(x)
            x = net.act(norm(name=f"stem_norm{i}")(x))
        x = conv3x3(conv, net.stem_width, use_bias=net.conv_bias and preact, name="stem_conv3")(x)
        if not preact:
            x = net.act(norm(name="stem_norm3")(x))
    else:
        x = conv(
            net.stem_width,
            (7, 7),
            strides=(2, 2),
            padding=((3, 3), (3, 3)),
            use_bias=net.conv_bias and preact,
            name="stem_conv",
        )(x)
        if not preact:
            x = net.act(norm(name="stem_norm")(x))
    return stem_pool(net, x, conv, norm)


def stem_pool(net: Any, x: Array, conv: ModuleDef, norm: ModuleDef) -> Array:
    """The stem's downsampling after its convs: ``net.stem_pool`` with ``net.aa_layer``."""
    aa = net.aa_layer
    if net.stem_pool == "conv":  # timm's replace_stem_pool
        x = conv3x3(conv, net.stem_width, 1 if aa else 2, name="stem_pool_conv")(x)
        x = x if aa is None else anti_alias(x, aa)
        return net.act(norm(name="stem_pool_norm")(x))
    if aa == "avg":
        return anti_alias(x, aa)
    if net.pool_pad_zeros:
        x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
    stride = 1 if aa else 2  # blur: max pool at stride 1, then the blur downsamples
    x = nn.max_pool(x, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)))
    return x if aa is None else anti_alias(x, aa)
