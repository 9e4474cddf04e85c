"""Spatial downsampling without parameters: the shortcuts' pools and anti-aliasing.

A strided convolution or max pool samples its input without first removing the
frequencies that the coarser grid cannot hold, so a one-pixel shift of the image can
change the output a lot. Anti-aliased ResNets (Zhang 2019, "Making Convolutional
Networks Shift-Invariant Again") move each stride out of the convolution (which then
runs at stride 1) into a low-pass filter that downsamples after it. ``ResNet(aa_layer=)``
names the filter, as timm's ``aa_layer`` does:

* ``"avg"``: a 2x2 average pool at stride 2 (timm's ``nn.AvgPool2d``; its ``resnetaa*``
  nets), which also replaces the stem's max pool.
* ``"blur"``: a 3x3 binomial filter ``[1, 2, 1] / 4`` in each direction, reflect-padded,
  applied to each channel at stride 2 (timm's ``BlurPool2d``; ``resnetblur*``). The stem's
  max pool then runs at stride 1 and the blur downsamples.

All arrays are NHWC.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jnp.ndarray

AA_LAYERS = ("avg", "blur")


def subsample(x: Array, strides: int) -> Array:
    """Takes every ``strides``-th pixel, like a 1x1 max pool with that stride."""
    return x if strides == 1 else x[:, ::strides, ::strides, :]


def avg_pool_ceil(x: Array, strides: int) -> Array:
    """``strides``x``strides`` average pool with ceil mode and no padding counted.

    Equal to PyTorch's ``AvgPool2d(s, s, ceil_mode=True, count_include_pad=False)``,
    which timm's ResNet-D shortcut uses: odd sizes keep their last row and column.
    """
    if strides == 1:
        return x
    pad_h, pad_w = (-x.shape[1]) % strides, (-x.shape[2]) % strides
    return nn.avg_pool(
        x, (strides, strides), (strides, strides), padding=((0, pad_h), (0, pad_w)), count_include_pad=False
    )


def blur_pool(x: Array, strides: int = 2, size: int = 3) -> Array:
    """Binomial low-pass filter of ``size`` taps per axis, then every ``strides``-th pixel.

    The taps are ``C(size-1, k) / 2**(size-1)``; the input is reflect-padded by
    ``(strides - 1 + size - 1) // 2`` on each side (timm's ``get_padding``), and each
    channel is filtered on its own (a depthwise convolution).
    """
    taps = jnp.asarray([math.comb(size - 1, k) for k in range(size)], x.dtype) / 2 ** (size - 1)
    pad = (strides - 1 + size - 1) // 2
    x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    channels = x.shape[-1]
    kernel = jnp.broadcast_to((taps[:, None] * taps[None, :])[:, :, None, None], (size, size, 1, channels))
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(strides, strides),
        padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=channels,
    )


def anti_alias(x: Array, kind: str, strides: int = 2) -> Array:
    """Downsamples ``x`` by ``strides`` with the low-pass filter ``kind`` (``AA_LAYERS``)."""
    if kind == "avg":
        return nn.avg_pool(x, (strides, strides), (strides, strides), padding="VALID")
    if kind == "blur":
        return blur_pool(x, strides)
    raise ValueError(f"unknown aa_layer {kind!r}; valid: {', '.join(AA_LAYERS)} or None")
