"""Weight-standardised convolution (Qiao et al. 2019), the convolution of BiT.

Big Transfer (Kolesnikov et al. 2020) pairs GroupNorm with convolutions whose kernels are
standardised on every call: each output channel's weights have their mean subtracted
and are divided by their standard deviation (over the kernel's height, width and input
channels) before the convolution. With no batch statistics anywhere, the network
behaves the same at any batch size, which is what makes it a transfer-learning backbone.

``StdConv`` takes the arguments ``ResNet`` gives ``nn.Conv`` (features, kernel_size,
strides, padding, feature_group_count, use_bias, dtype, param_dtype, kernel_init) and
stores its kernel as ``nn.Conv`` does, (kh, kw, in/groups, out) under ``kernel``, so
``ResNet(conv=StdConv)`` changes no parameter path or shape.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jnp.ndarray


def standardize(kernel: Array, eps: float) -> Array:
    """Each output channel (last axis) of an HWIO kernel to zero mean and unit variance."""
    mean = jnp.mean(kernel, axis=(0, 1, 2), keepdims=True)
    var = jnp.var(kernel, axis=(0, 1, 2), keepdims=True)  # biased, as timm's StdConv2d
    return (kernel - mean) * jax.lax.rsqrt(var + eps)


class StdConv(nn.Module):
    """A 2-D convolution of a standardised kernel, NHWC in and out.

    Attributes:
      eps: added to the variance; timm's BiT uses 1e-8.
    """

    features: int
    kernel_size: Sequence[int]
    strides: Sequence[int] = (1, 1)
    padding: Any = "SAME"
    feature_group_count: int = 1
    use_bias: bool = False
    eps: float = 1e-8
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Callable[..., Array] = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        shape = (*self.kernel_size, x.shape[-1] // self.feature_group_count, self.features)
        kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
        kernel = standardize(jnp.asarray(kernel, jnp.float32), self.eps)
        y = jax.lax.conv_general_dilated(
            jnp.asarray(x, self.dtype),
            jnp.asarray(kernel, self.dtype),
            window_strides=tuple(self.strides),
            padding=self.padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=self.feature_group_count,
        )
        if self.use_bias:
            y = y + jnp.asarray(
                self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype), self.dtype
            )
        return y
