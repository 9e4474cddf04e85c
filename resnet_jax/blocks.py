"""Residual blocks: ``y = act(F(x) + shortcut(x))`` and its pre-activation form.

Every block takes its convolution, normalisation and activation as injected
callables (usually ``functools.partial`` of a Flax module), so BatchNorm,
GroupNorm or frozen BatchNorm, and any dtype, are a choice of the caller rather
than a fork of this code. All tensors are NHWC.

The shortcut is chosen by the network, not by the block, and named by a string:

* ``"identity"``: ``x`` itself.
* ``"conv"``: a strided 1x1 projection, He et al. 2016 option B (torchvision).
* ``"avg_conv"``: 2x2 average pool, then a 1x1 projection. ResNet-D (He et al.
  2019, "Bag of Tricks"): the strided 1x1 of option B ignores 3/4 of its input.
* ``"pad"``: parameter-free option A of He et al. 2016 §4.2 for the CIFAR nets:
  subsample, then append zero channels.
* ``"subsample"``: a strided identity, as TF-slim and Keras ``ResNetV2`` use
  when only the resolution changes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.pooling import anti_alias, avg_pool_ceil, subsample

ModuleDef = Callable[..., nn.Module]
Array = jnp.ndarray

SHORTCUTS = ("identity", "conv", "avg_conv", "pad", "subsample")

# He et al. 2015 ("Delving deep into rectifiers") initialisation: fan-out, plain (untruncated)
# normal, as torchvision's kaiming_normal_(mode="fan_out").
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv3x3(conv: ModuleDef, features: int, strides: int = 1, groups: int = 1, **kw) -> nn.Module:
    # Explicit symmetric padding, as torchvision: Flax's "SAME" pads (0, 1) at stride 2,
    # which shifts every strided feature map by one pixel against the PyTorch/Keras nets.
    return conv(
        features,
        (3, 3),
        strides=(strides, strides),
        padding=((1, 1), (1, 1)),
        feature_group_count=groups,
        **kw,
    )


def conv1x1(conv: ModuleDef, features: int, strides: int = 1, **kw) -> nn.Module:
    return conv(features, (1, 1), strides=(strides, strides), padding="VALID", **kw)


def drop_path(x: Array, rate: float, rng: jax.Array) -> Array:
    """Zeroes each example of ``x`` with probability ``rate`` and scales the rest by
    1 / (1 - rate): stochastic depth on a residual branch, unbiased in expectation."""
    keep = 1.0 - rate
    kept = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(kept, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))


def shortcut(
    x: Array,
    kind: str,
    features: int,
    strides: int,
    conv: ModuleDef,
    norm: ModuleDef | None,
    bias: bool = False,
) -> Array:
    """Applies the shortcut ``kind`` (see the module docstring) inside a compact method.

    Args:
      x: input, (N, H, W, C).
      kind: one of ``SHORTCUTS``.
      features: output channels.
      strides: spatial stride of the block.
      conv, norm: module factories; ``norm=None`` leaves the projection un-normalised
        (the pre-activation blocks).
      bias: whether a projection carries a bias (Keras ``ResNetV2``).

    Returns:
      (N, ceil(H/strides), ceil(W/strides), features).
    """
    if kind == "identity":
        if x.shape[-1] != features or strides != 1:
            raise ValueError(
                f"identity shortcut cannot map {x.shape[-1]} channels at stride 1 "
                f"to {features} channels at stride {strides}"
            )
        return x
    if kind == "subsample":
        return subsample(x, strides)
    if kind == "pad":
        x = subsample(x, strides)
        extra = features - x.shape[-1]
        if extra < 0:
            raise ValueError(
                f"option A (zero-pad) shortcut cannot reduce {x.shape[-1]} channels "
                f"to {features}; use shortcut 'B'"
            )
        return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra)))
    if kind == "conv":
        y = conv1x1(conv, features, strides, use_bias=bias, name="shortcut_conv")(x)
    elif kind == "avg_conv":
        y = conv1x1(conv, features, 1, use_bias=bias, name="shortcut_conv")(avg_pool_ceil(x, strides))
    else:
        raise ValueError(f"unknown shortcut {kind!r}; valid: {', '.join(SHORTCUTS)}")
    return y if norm is None else norm(name="shortcut_norm")(y)


class _Block(nn.Module):
    """Fields shared by every residual block.

    Attributes:
      filters: the block's base width ("planes" in torchvision). Its output has
        ``filters * expansion`` channels.
      conv: convolution factory, e.g. ``functools.partial(nn.Conv, use_bias=False)``.
      norm: normalisation factory, already bound to train/eval mode.
      act: activation function.
      strides: spatial stride of the block.
      shortcut: shortcut kind, one of ``SHORTCUTS``.
      groups: grouped-convolution cardinality of the 3x3 (ResNeXt).
      width_per_group: width of each group; 64 with ``groups=1`` is plain ResNet,
        128 is Wide ResNet-50-2.
      zero_init_last: start the residual branch at zero (Goyal et al. 2017), so that
        each block begins as the identity and deep nets train from step one.
      conv_bias: give a bias to the convolutions that feed the residual sum directly
        (pre-activation blocks only; everywhere else a norm follows and a bias would be
        redundant). Needed to hold Keras ``ResNetV2`` weights exactly.
      drop_path: stochastic depth (Huang et al. 2016), timm's form: in training, each
        example's residual branch is dropped with this probability and otherwise scaled
        by 1 / (1 - drop_path), so its expectation is unchanged; needs a ``'dropout'``
        rng. Identity when ``deterministic``.
      deterministic: evaluation mode for ``drop_path``.
      attn: channel attention on the branch after its last norm (``resnet_jax.attention``;
        post-activation blocks), as a factory called with ``name``; None: none.
      aa: anti-aliased downsampling (``resnet_jax.pooling``, post-activation blocks): a
        strided block runs its strided 3x3 at stride 1 and downsamples after its
        activation with this filter (``"avg"`` or ``"blur"``); None: a strided conv.
    """

    filters: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable[[Array], Array]
    strides: int = 1
    shortcut: str = "identity"
    groups: int = 1
    width_per_group: int = 64
    zero_init_last: bool = False
    conv_bias: bool = False
    drop_path: float = 0.0
    deterministic: bool = True
    attn: ModuleDef | None = None
    aa: str | None = None

    expansion: ClassVar[int] = 1
    preact: ClassVar[bool] = False

    @property
    def out_features(self) -> int:
        return self.filters * self.expansion

    @property
    def bottleneck_width(self) -> int:
        # torchvision's rule: ResNeXt-50 32x4d at filters=64 has 32 groups of 4 = 128.
        return int(self.filters * (self.width_per_group / 64.0)) * self.groups

    def _drop_path(self, y: Array) -> Array:
        if self.deterministic or self.drop_path == 0.0:
            return y
        return drop_path(y, self.drop_path, self.make_rng("dropout"))

    def _last_norm(self, name: str, y: Array) -> Array:
        """The branch's last norm, then its attention, then stochastic depth."""
        init = {"scale_init": nn.initializers.zeros} if self.zero_init_last else {}
        y = self.norm(name=name, **init)(y)
        return self._drop_path(y if self.attn is None else self.attn(name="attn")(y))

    def _strided(self, strides: int) -> tuple[int, Callable[[Array], Array]]:
        """The stride of the block's strided 3x3, and what follows its activation."""
        if self.aa is None or strides == 1:
            return strides, lambda y: y
        return 1, lambda y: anti_alias(y, self.aa, strides)

    def _last_conv(self) -> ModuleDef:
        conv = functools.partial(self.conv, use_bias=self.conv_bias)
        if self.zero_init_last:
            # A pre-activation branch ends in a conv, not a norm: zero that instead (as timm).
            conv = functools.partial(conv, kernel_init=nn.initializers.zeros)
        return conv


class BasicBlock(_Block):
    """Two 3x3 convolutions (ResNet-18/34, the CIFAR ResNets), post-activation.

    ``__call__(x)``: x (N, H, W, C) -> (N, H/s, W/s, filters).
    """

    @nn.compact
    def __call__(self, x: Array) -> Array:
        stride, aa = self._strided(self.strides)
        y = conv3x3(self.conv, self.filters, stride, name="conv1")(x)
        y = aa(self.act(self.norm(name="norm1")(y)))
        y = conv3x3(self.conv, self.filters, name="conv2")(y)
        y = self._last_norm("norm2", y)
        s = shortcut(x, self.shortcut, self.out_features, self.strides, self.conv, self.norm)
        return self.act(y + s)


class Bottleneck(_Block):
    """1x1 reduce, 3x3, 1x1 expand (ResNet-50 and deeper, ResNeXt, Wide ResNet).

    The stride sits on the 3x3 (ResNet v1.5, as torchvision and the NVIDIA recipes):
    a strided 1x1 discards three quarters of its input, and moving the stride to the
    3x3 gains about 0.5% top-1 on ImageNet. ``stride_in_1x1=True`` restores the
    original v1 of He et al. 2015 (and of Keras ``ResNet50``).

    ``__call__(x)``: x (N, H, W, C) -> (N, H/s, W/s, 4 * filters).
    """

    stride_in_1x1: bool = False
    expansion: ClassVar[int] = 4

    @nn.compact
    def __call__(self, x: Array) -> Array:
        width = self.bottleneck_width
        s1, s3 = (self.strides, 1) if self.stride_in_1x1 else (1, self.strides)
        y = conv1x1(self.conv, width, s1, name="conv1")(x)
        y = self.act(self.norm(name="norm1")(y))
        s3, aa = self._strided(s3)
        y = conv3x3(self.conv, width, s3, self.groups, name="conv2")(y)
        y = aa(self.act(self.norm(name="norm2")(y)))
        y = conv1x1(self.conv, self.out_features, name="conv3")(y)
        y = self._last_norm("norm3", y)
        s = shortcut(x, self.shortcut, self.out_features, self.strides, self.conv, self.norm)
        return self.act(y + s)


class PreActBasicBlock(_Block):
    """Pre-activation basic block (He et al. 2016b, "Identity Mappings"; Wide ResNets).

    norm-act comes before each conv and nothing follows the sum, so the identity path
    stays clean from input to output. A projection shortcut reads the pre-activated
    input. ``__call__(x)``: (N, H, W, C) -> (N, H/s, W/s, filters).
    """

    preact: ClassVar[bool] = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        pre = self.act(self.norm(name="norm1")(x))
        y = conv3x3(self.conv, self.filters, self.strides, name="conv1")(pre)
        y = self.act(self.norm(name="norm2")(y))
        y = self._drop_path(conv3x3(self._last_conv(), self.filters, name="conv2")(y))
        src = pre if self.shortcut in ("conv", "avg_conv") else x
        return y + shortcut(
            src, self.shortcut, self.out_features, self.strides, self.conv, None, self.conv_bias
        )


class PreActBottleneck(_Block):
    """Pre-activation bottleneck (He et al. 2016b), stride on the 3x3.

    ``__call__(x)``: (N, H, W, C) -> (N, H/s, W/s, 4 * filters).
    """

    expansion: ClassVar[int] = 4
    preact: ClassVar[bool] = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        width = self.bottleneck_width
        pre = self.act(self.norm(name="norm1")(x))
        y = conv1x1(self.conv, width, name="conv1")(pre)
        y = self.act(self.norm(name="norm2")(y))
        y = conv3x3(self.conv, width, self.strides, self.groups, name="conv2")(y)
        y = self.act(self.norm(name="norm3")(y))
        y = self._drop_path(conv1x1(self._last_conv(), self.out_features, name="conv3")(y))
        src = pre if self.shortcut in ("conv", "avg_conv") else x
        return y + shortcut(
            src, self.shortcut, self.out_features, self.strides, self.conv, None, self.conv_bias
        )
