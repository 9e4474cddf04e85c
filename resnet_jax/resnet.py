"""The ResNet network: a stem, stages of residual blocks, and a pooled linear head.

One module covers every family (v1, v1.5, v2, ResNet-D, ResNeXt, Wide, CIFAR): the
differences are plain fields, and the named models in ``registry.py`` are partials
of this class.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from resnet_jax import stems
from resnet_jax.attention import ATTENTION_LAYERS
from resnet_jax.blocks import (
    Array,
    BasicBlock,
    ModuleDef,
    conv_kernel_init,
)
from resnet_jax.pooling import AA_LAYERS
from resnet_jax.stems import STEM_POOLS, STEMS

SHORTCUT_TYPES = ("A", "B", "D")

# torchvision's BatchNorm2d: momentum 0.1 in PyTorch's convention is 0.9 in Flax's.
BatchNorm: ModuleDef = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5, use_fast_variance=False)
# Frozen BatchNorm (torchvision.ops.FrozenBatchNorm2d): running statistics in train mode
# too, and never updated. Freeze its scale and bias in the optimizer to fix the affine.
FrozenBatchNorm: ModuleDef = functools.partial(BatchNorm, use_running_average=True)


def _bind_norm(norm: ModuleDef, train: bool) -> ModuleDef:
    """Binds a BatchNorm factory to train or eval mode; other norms need no mode.

    A factory that already fixes ``use_running_average`` (frozen BatchNorm) keeps it.
    """
    if is_batch_norm(norm) and "use_running_average" not in _fixed_keywords(norm):
        return functools.partial(norm, use_running_average=not train)
    return norm


def _fixed_keywords(factory: Any) -> dict[str, Any]:
    fixed: dict[str, Any] = {}
    while isinstance(factory, functools.partial):
        fixed = {**factory.keywords, **fixed}
        factory = factory.func
    return fixed


def is_batch_norm(norm: ModuleDef) -> bool:
    """Whether a norm factory (a class, or partials of one) makes BatchNorm."""
    while isinstance(norm, functools.partial):
        norm = norm.func
    return isinstance(norm, type) and issubclass(norm, nn.BatchNorm)


class ResNet(nn.Module):
    """A residual network, NHWC in, logits out.

    Attributes:
      stage_sizes: blocks per stage, e.g. ``(3, 4, 6, 3)`` for ResNet-50.
      block: the block class (``BasicBlock``, ``Bottleneck``, ``PreActBasicBlock``,
        ``PreActBottleneck``); pre-activation blocks make a v2 network, with no
        norm in the stem and a final norm-act before pooling.
      num_classes: width of the linear head; 0 drops the head, and the output is
        the pooled features.
      in_channels: channels of the input image (3 for RGB, 1 for MNIST-like data).
      stem_width: channels out of the stem.
      stage_widths: base width ("planes") of each stage; default
        ``stem_width * 2**i``. A stage outputs ``width * block.expansion`` channels.
      stage_strides: stride of each stage; default ``(1, 2, 2, ...)``.
      groups: cardinality of the grouped 3x3 (ResNeXt-50 32x4d: 32).
      width_per_group: width of each group (ResNeXt-50 32x4d: 4; Wide ResNet-50-2: 128).
      stem: ``"imagenet"`` (7x7/2 conv, 3x3/2 max pool), ``"deep"`` (three 3x3 convs
        then the max pool: ResNet-C/D of He et al. 2019), ``"tiered"`` (the same with
        narrower first convs, timm's "t" nets) or ``"cifar"`` (one 3x3/1 conv, no pool:
        He et al. 2016 §4.2).
      shortcut: ``"B"`` (1x1 projection when the shape changes), ``"A"`` (parameter-
        free zero padding, the CIFAR nets) or ``"D"`` (average pool then 1x1, ResNet-D).
      stride_in_1x1: ResNet v1 (stride on the bottleneck's first 1x1) instead of v1.5.
      downsample_last: put each stage's stride on its last block, with a subsampled
        identity shortcut, as TF-slim and Keras ``ResNetV2`` do.
      conv_bias: biases on the convs that are not followed by a norm (pre-activation
        nets: stem, projections, last conv of each block), as in Keras ``ResNetV2``.
      pool_pad_zeros: pad the stem's max pool with zeros rather than -inf (Keras). The
        two agree after a ReLU; they differ on a pre-activation stem.
      zero_init_last: zero-initialise each block's last norm scale (Goyal et al. 2017).
      drop_rate: dropout on the pooled features before the head (needs a
        ``'dropout'`` rng in train mode when > 0).
      drop_path_rate: stochastic depth, rising linearly over the blocks from 0 at the
        first to this rate at the last (timm's rule; Huang et al. 2016 use the same
        linear decay of survival); needs a ``'dropout'`` rng in train mode when > 0.
      dtype: compute dtype, e.g. ``jnp.bfloat16``; the logits are returned in float32.
      param_dtype: dtype of parameters and BatchNorm statistics.
      conv: convolution factory (a ``functools.partial`` of ``nn.Conv``).
      norm: normalisation factory: ``BatchNorm`` (default: torchvision's momentum
        and epsilon), ``FrozenBatchNorm``, ``functools.partial(nn.GroupNorm, ...)``.
      act: activation, e.g. ``nn.relu`` or ``nn.swish``.
      attn_layer: channel attention in every block, after its last norm: ``"se"``
        (squeeze-and-excitation) or ``"eca"`` (efficient channel attention), with
        timm's sizes (``resnet_jax.attention``); None for none. Post-activation blocks.
      attn_ratio: SE's reduced width as a fraction of its channels (default 1/16;
        ResNet-RS: 1/4).
      aa_layer: anti-aliased downsampling (``resnet_jax.pooling``): ``"avg"`` or
        ``"blur"`` low-pass filters downsample after each strided block's 3x3 (which
        runs at stride 1) and in the stem; None for strided convs. Post-activation nets.
      stem_pool: ``"max"`` (3x3/2 max pool) or ``"conv"`` (a 3x3/2 conv, norm and
        activation in its place: ResNet-RS, Bello et al. 2021).
      frozen_norm_parts: parts (``"stem"``, ``"stage1"`` ...) whose BatchNorms always
        use their running averages and never update them, even in train mode: frozen
        BatchNorm for fine-tuning a partly frozen backbone. The final norm of a v2
        network belongs to the last stage.
    """

    stage_sizes: Sequence[int]
    block: type[nn.Module] = BasicBlock
    num_classes: int = 1000
    in_channels: int = 3
    stem_width: int = 64
    stage_widths: Sequence[int] | None = None
    stage_strides: Sequence[int] | None = None
    groups: int = 1
    width_per_group: int = 64
    stem: str = "imagenet"
    shortcut: str = "B"
    stride_in_1x1: bool = False
    downsample_last: bool = False
    conv_bias: bool = False
    pool_pad_zeros: bool = False
    zero_init_last: bool = False
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    conv: ModuleDef = nn.Conv
    norm: ModuleDef = BatchNorm
    act: Callable[[Array], Array] = nn.relu
    frozen_norm_parts: Sequence[str] = ()
    attn_layer: str | None = None
    attn_ratio: float | None = None
    aa_layer: str | None = None
    stem_pool: str = "max"

    def _check(self, x: Array) -> None:
        if self.stem not in STEMS:
            raise ValueError(f"unknown stem {self.stem!r}; valid: {', '.join(STEMS)}")
        if self.shortcut not in SHORTCUT_TYPES:
            raise ValueError(f"unknown shortcut {self.shortcut!r}; valid: {', '.join(SHORTCUT_TYPES)}")
        if self.attn_layer is not None and (self.attn_layer not in ATTENTION_LAYERS or self.block.preact):
            valid = ", ".join(ATTENTION_LAYERS)
            raise ValueError(f"attn_layer={self.attn_layer!r}: {valid} or None, in post-activation blocks")
        if self.attn_ratio is not None and self.attn_layer != "se":
            raise ValueError(
                f"attn_ratio={self.attn_ratio} sizes attn_layer='se' only, not {self.attn_layer!r}"
            )
        if self.aa_layer is not None and (self.aa_layer not in AA_LAYERS or self.block.preact):
            valid = ", ".join(AA_LAYERS)
            raise ValueError(f"aa_layer={self.aa_layer!r}: {valid} or None, in post-activation blocks")
        if self.stem_pool not in STEM_POOLS or (self.stem_pool == "conv" and self.block.preact):
            valid = ", ".join(STEM_POOLS)
            raise ValueError(f"stem_pool={self.stem_pool!r}: {valid} ('conv' in post-activation nets)")
        for field in ("drop_rate", "drop_path_rate"):
            if not 0.0 <= getattr(self, field) < 1.0:
                raise ValueError(f"{field}={getattr(self, field)} must be in [0, 1)")
        n = len(self.stage_sizes)
        for field in ("stage_widths", "stage_strides"):
            value = getattr(self, field)
            if value is not None and len(value) != n:
                raise ValueError(
                    f"{field}={tuple(value)} has {len(value)} entries; "
                    f"stage_sizes={tuple(self.stage_sizes)} has {n} stages"
                )
        expected = f"(batch, height, width, {self.in_channels})"
        if x.ndim != 4:
            raise ValueError(f"expected NHWC input of shape {expected}, got shape {tuple(x.shape)}")
        if x.shape[-1] != self.in_channels:
            raise ValueError(
                f"expected NHWC input of shape {expected}, got shape {tuple(x.shape)} "
                f"({x.shape[-1]} channels; set in_channels={x.shape[-1]} to accept it)"
            )

    def _shortcut_kind(self, in_ch: int, out_ch: int, strides: int) -> str:
        if self.downsample_last:
            return "conv" if in_ch != out_ch else ("subsample" if strides > 1 else "identity")
        if in_ch == out_ch and strides == 1:
            return "identity"
        if self.shortcut == "A":
            return "pad"
        return "avg_conv" if self.shortcut == "D" and strides > 1 else "conv"

    @nn.compact
    def __call__(
        self, x: Array, train: bool = False, return_features: bool = False
    ) -> Array | tuple[Array, dict[str, Array]]:
        """Runs the network.

        Args:
          x: images, (batch, height, width, in_channels), any float dtype.
          train: batch statistics and dropout (train) or running averages (eval). In
            train mode call ``apply(..., mutable=['batch_stats'])``.
          return_features: also return a dict of intermediate features: ``'stem'``,
            ``'stage1'`` .. ``'stageN'`` (N, H_i, W_i, C_i) in the compute dtype, and
            ``'pooled'`` (N, C) float32, the input of the head. In pre-activation nets
            the last stage's map is taken after the final norm-act, as timm does.

        Returns:
          logits (batch, num_classes) float32, or the pooled features (batch, C) when
          ``num_classes == 0``; with ``return_features``, ``(logits, features)``.
        """
        self._check(x)
        conv = functools.partial(
            self.conv,
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=conv_kernel_init,
        )

        def norm_for(part: str) -> ModuleDef:
            mode = train and part not in self.frozen_norm_parts
            bound = _bind_norm(self.norm, mode)
            return functools.partial(bound, dtype=self.dtype, param_dtype=self.param_dtype)

        norm = norm_for("stem")
        block_kw: dict[str, Any] = dict(
            conv=conv,
            norm=norm,
            act=self.act,
            groups=self.groups,
            width_per_group=self.width_per_group,
            zero_init_last=self.zero_init_last,
            deterministic=not train,
        )
        if self.block.preact:
            block_kw["conv_bias"] = self.conv_bias
        elif self.block.expansion > 1:
            block_kw["stride_in_1x1"] = self.stride_in_1x1
        if self.attn_layer is not None:
            attn = ATTENTION_LAYERS[self.attn_layer]
            kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
            kw.update({} if self.attn_ratio is None else {"rd_ratio": self.attn_ratio})
            block_kw["attn"] = functools.partial(attn, **kw)
        if self.aa_layer is not None:
            block_kw["aa"] = self.aa_layer

        features: dict[str, Array] = {}
        x = stems.stem(self, jnp.asarray(x, self.dtype), conv, norm)
        features["stem"] = x
        n = len(self.stage_sizes)
        widths = self.stage_widths or [self.stem_width * 2**i for i in range(n)]
        strides = self.stage_strides or [1] + [2] * (n - 1)
        total, index = sum(self.stage_sizes), 0
        for i, (size, width, stride) in enumerate(zip(self.stage_sizes, widths, strides), start=1):
            for j in range(size):
                block_kw["drop_path"] = self.drop_path_rate * index / max(total - 1, 1)
                index += 1
                stride_at = size - 1 if self.downsample_last else 0
                s = stride if j == stride_at else 1
                out_ch = width * self.block.expansion
                kind = self._shortcut_kind(x.shape[-1], out_ch, s)
                block_kw["norm"] = norm_for(f"stage{i}")
                x = self.block(width, strides=s, shortcut=kind, name=f"stage{i}_block{j + 1}", **block_kw)(x)
            features[f"stage{i}"] = x
        if self.block.preact:
            x = self.act(norm_for(f"stage{n}")(name="final_norm")(x))
            features[f"stage{n}"] = x
        x = jnp.mean(x, axis=(1, 2))
        features["pooled"] = jnp.asarray(x, jnp.float32)
        if self.num_classes > 0:
            x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
            x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="head")(x)
        x = jnp.asarray(x, jnp.float32)
        return (x, features) if return_features else x
