"""Channel attention inside a residual block, the ``attn_layer`` of ``ResNet``.

Each module rescales the channels of the residual branch's output (after its last norm,
before the sum, as timm places them) by gates computed from its global average:

* ``"se"``: squeeze-and-excitation (Hu et al. 2018): a bottleneck MLP of two 1x1
  convolutions with biases, ReLU between, sigmoid after. The reduced width is timm's,
  ``channels / 16`` rounded to a multiple of 8 (``make_divisible`` with no round-up).
* ``"eca"``: efficient channel attention (Wang et al. 2020): one 1-D convolution across
  the channels, no bias, of an odd size that grows with log2(channels), then a sigmoid.

Both are Linen modules that read the channel count from their input, so one factory
serves every block; their parameters follow timm's layout (``fc1``/``fc2`` as 1x1
convolutions, ``conv`` as a 1-D convolution), which ``resnet_jax.convert`` maps directly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

Array = jnp.ndarray


def make_divisible(value: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """timm's rounding of a reduced width: the nearest multiple of ``divisor`` (at least
    ``divisor``), one more multiple when that falls below ``round_limit * value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < round_limit * value else rounded


def eca_kernel_size(channels: int, gamma: float = 2.0, beta: float = 1.0) -> int:
    """Wang et al.'s adaptive size, ``|log2(C) + beta| / gamma`` made odd, at least 3."""
    t = int(abs(math.log(channels, 2) + beta) / gamma)
    return max(t if t % 2 else t + 1, 3)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: ``x * sigmoid(fc2(act(fc1(mean(x)))))``, NHWC in and out."""

    rd_ratio: float = 1.0 / 16
    rd_divisor: int = 8
    act: Callable[[Array], Array] = nn.relu
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        channels = x.shape[-1]
        reduced = make_divisible(channels * self.rd_ratio, self.rd_divisor, round_limit=0.0)
        kw = dict(kernel_size=(1, 1), dtype=self.dtype, param_dtype=self.param_dtype)
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = self.act(nn.Conv(reduced, name="fc1", **kw)(s))
        s = nn.Conv(channels, name="fc2", **kw)(s)
        return x * nn.sigmoid(s)


class EfficientChannelAttention(nn.Module):
    """ECA: ``x * sigmoid(conv1d(mean(x)))``, the 1-D convolution sliding over channels."""

    gamma: float = 2.0
    beta: float = 1.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k = eca_kernel_size(x.shape[-1], self.gamma, self.beta)
        s = jnp.mean(x, axis=(1, 2))[..., None]  # (N, C, 1): channels as the length axis
        s = nn.Conv(
            1,
            (k,),
            padding=(((k - 1) // 2, (k - 1) // 2),),
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="conv",
        )(s)
        return x * nn.sigmoid(s[..., 0])[:, None, None, :]


ATTENTION_LAYERS: dict[str, type[nn.Module]] = {"se": SqueezeExcite, "eca": EfficientChannelAttention}
