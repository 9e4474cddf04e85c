"""PIL's antialiased resize of uint8 images, as integer matrices inside a JAX graph.

``resnet_jax.export --raw-input`` puts the evaluation preprocessing inside the exported
StableHLO, so a client sends decoded uint8 pixels. The library resizes with PIL
(``resnet_jax.preprocessing``); to give the same pixels, this computes what PIL's
``Image.resize`` computes for 8-bit images (Pillow's ``libImaging/Resample.c``):

- per output pixel, filter weights over the input pixels it covers, the filter widened
  by the downscaling factor (the antialiasing), normalised to sum to 1, in float64;
- the weights as fixed-point integers with 22 fractional bits;
- a horizontal pass, then a vertical one, each summing ``pixel * weight`` from half a
  unit, shifting back and clipping to 0..255, so the intermediate image is uint8 too.

A pass over an axis whose size does not change is skipped, as PIL skips it. Both passes
are int32 matrix products (at most 255 * 1.3 * 2**22 < 2**31: no overflow), exact on
every backend; the tests compare them with PIL bit for bit.
"""

from __future__ import annotations

import math

import numpy as np

from resnet_jax.preprocessing import Preprocessing, center_crop_offsets, resized_shape

_PRECISION_BITS = 32 - 8 - 2


def _bilinear(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


def _bicubic(x: float, a: float = -0.5) -> float:
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


_FILTERS = {"bilinear": (_bilinear, 1.0), "bicubic": (_bicubic, 2.0)}


def weights(in_size: int, out_size: int, interpolation: str = "bilinear") -> np.ndarray:
    """The int32 (out_size, in_size) matrix of PIL's fixed-point resize weights."""
    filt, support = _FILTERS[interpolation]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support *= filterscale
    out = np.zeros((out_size, in_size), np.int64)
    for i in range(out_size):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        w = [filt((x - center + 0.5) / filterscale) for x in range(lo, hi)]
        total = sum(w)
        w = [v / total if total != 0.0 else v for v in w]
        # C's (int) truncates toward zero: +0.5 rounds a positive weight, -0.5 a negative one.
        out[i, lo:hi] = [math.trunc(v * (1 << _PRECISION_BITS) + (0.5 if v >= 0 else -0.5)) for v in w]
    return out.astype(np.int32)


def _pass(images, matrix: np.ndarray, axis: int):
    """One PIL pass over ``axis`` (1: height, 2: width) of int32 (N, H, W, C) images."""
    import jax.numpy as jnp

    spec = "nhwc,oh->nowc" if axis == 1 else "nhwc,ow->nhoc"
    total = jnp.einsum(spec, images, jnp.asarray(matrix), preferred_element_type=jnp.int32)
    return jnp.clip((total + (1 << (_PRECISION_BITS - 1))) >> _PRECISION_BITS, 0, 255)


def resize_crop(images, preprocessing: Preprocessing):
    """uint8 (N, H, W, C) images, all of one size, -> uint8 (N, height, width, C): the
    resize (and centre crop) of ``preprocessing``, equal to ``preprocessing.crop`` of each.
    H and W must be known when this is traced."""
    import jax.numpy as jnp

    if not preprocessing.antialias:
        raise ValueError("only antialiased (PIL) resizes can be built into a graph; antialias=False")
    _, height, width, _ = images.shape
    size = preprocessing.size[0]
    if preprocessing.resize_size:
        nh, nw = resized_shape(height, width, preprocessing.resize_size)
        if nh < size or nw < size:
            raise ValueError(f"resize_size={preprocessing.resize_size} is below the crop size {size}")
        top, left = center_crop_offsets(nh, nw, size)
        rows, cols = slice(top, top + size), slice(left, left + size)
    else:
        (nh, nw), rows, cols = preprocessing.size, slice(None), slice(None)
    out = images.astype(jnp.int32)
    # Only the output rows and columns the crop keeps are computed: each is independent.
    if nw != width:
        out = _pass(out, weights(width, nw, preprocessing.interpolation)[cols], axis=2)
    else:
        out = out[:, :, cols]
    if nh != height:
        out = _pass(out, weights(height, nh, preprocessing.interpolation)[rows], axis=1)
    else:
        out = out[:, rows]
    return out.astype(jnp.uint8)
