"""Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) inside the jitted train step,
on the device, and the soft-target losses they need.

One λ per batch, drawn from Beta(alpha, alpha) with the step's rng; with both enabled, CutMix
is chosen with probability ``switch_prob`` (torchvision's reference picks one of the two
at random, 0.5; timm's ``switch_prob`` defaults to 0.5). Each example is mixed with its
neighbour in the global batch (``jnp.roll`` by one along the batch axis): the partner is
a function of the global batch, so 1 device and 8 give the same result, and on a sharded
batch the roll moves only one example across each shard boundary.

CutMix pastes the partner's box, drawn as torchvision's ``CutMix`` draws it (a centre
uniform over the image, half-sides ``0.5 * sqrt(1 - λ)`` of each side, clipped to the
image), and λ is then the true unpasted fraction. Labels are mixed as soft targets, with
label smoothing applied before mixing, as timm does.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

LOSSES = ("softmax", "bce")


@dataclasses.dataclass(frozen=True)
class MixConfig:
    """The mixing of a train step; the default mixes nothing."""

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    switch_prob: float = 0.5  # with both on: the probability of CutMix for a batch
    prob: float = 1.0  # the probability that a batch is mixed at all

    @property
    def enabled(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)


def soft_targets(labels: jax.Array, num_classes: int, label_smoothing: float = 0.0) -> jax.Array:
    """(B,) int labels -> (B, K) float32 targets, smoothed: 1 - s + s/K and s/K."""
    targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    return optax.smooth_labels(targets, label_smoothing) if label_smoothing > 0 else targets


def cutmix_box(rng: jax.Array, lam: jax.Array, height: int, width: int) -> jax.Array:
    """(y1, y2, x1, x2) of the pasted box for a target λ: torchvision's ``CutMix`` draw."""
    ky, kx = jax.random.split(rng)
    cy = jax.random.randint(ky, (), 0, height)
    cx = jax.random.randint(kx, (), 0, width)
    r = 0.5 * jnp.sqrt(1.0 - lam)
    half_h, half_w = (r * height).astype(jnp.int32), (r * width).astype(jnp.int32)
    return jnp.stack(
        [
            jnp.maximum(cy - half_h, 0),
            jnp.minimum(cy + half_h, height),
            jnp.maximum(cx - half_w, 0),
            jnp.minimum(cx + half_w, width),
        ]
    )


def mix(rng: jax.Array, images: jax.Array, config: MixConfig) -> tuple[jax.Array, jax.Array]:
    """Mixes a batch of (B, H, W, C) images with their rolled partners. Returns the images
    and λ, the weight of each example's own target (1 for an unmixed batch): the targets
    follow with ``mix_targets``."""
    if not config.enabled:
        return images, jnp.ones((), jnp.float32)
    k_apply, k_switch, k_mixup, k_cutmix, k_box = jax.random.split(rng, 5)
    height, width = images.shape[1:3]

    def beta(key, alpha):
        return jax.random.beta(key, alpha, alpha) if alpha > 0 else jnp.ones((), jnp.float32)

    # One weight per pixel for the example's own image, with no branch in the program (a
    # lax.cond between the two cost the CPU step several percent): lam everywhere for
    # mixup; 0 inside the pasted box and 1 outside for cutmix.
    lam = beta(k_mixup, config.mixup_alpha)
    weight = lam
    if config.cutmix_alpha > 0:
        y1, y2, x1, x2 = cutmix_box(k_box, beta(k_cutmix, config.cutmix_alpha), height, width)
        rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
        outside = ~((rows >= y1) & (rows < y2) & (cols >= x1) & (cols < x2))
        cut_lam = 1.0 - ((y2 - y1) * (x2 - x1)).astype(jnp.float32) / (height * width)
        use_cutmix = True
        if config.mixup_alpha > 0:
            use_cutmix = jax.random.uniform(k_switch) < config.switch_prob
        weight = jnp.where(use_cutmix, outside.astype(jnp.float32), weight)
        lam = jnp.where(use_cutmix, cut_lam, lam)
    if config.prob < 1.0:
        apply = jax.random.uniform(k_apply) < config.prob
        weight, lam = jnp.where(apply, weight, 1.0), jnp.where(apply, lam, 1.0)
    weight = jnp.broadcast_to(weight, (height, width))[None, :, :, None]
    mixed = weight * images + (1.0 - weight) * jnp.roll(images, 1, axis=0)
    return mixed.astype(images.dtype), lam.astype(jnp.float32)


def mix_targets(targets: jax.Array, lam: jax.Array) -> jax.Array:
    """(B, K) soft targets mixed as ``mix`` mixed their images."""
    return lam * targets + (1.0 - lam) * jnp.roll(targets, 1, axis=0)


def soft_loss(
    logits: jax.Array, targets: jax.Array, kind: str = "softmax", bce_threshold: float = 0.0
) -> jax.Array:
    """Per-example loss against (B, K) soft targets.

    - ``softmax``: cross-entropy, ``-sum(t * log_softmax(z))``.
    - ``bce``: binary cross-entropy of each class's sigmoid, averaged over the classes,
      as timm's ``BinaryCrossEntropy`` (whose batch mean is the mean over B x K); with
      ``bce_threshold`` > 0 the targets are first binarised (``t > threshold``), timm's
      ``target_threshold`` (the ResNet-strikes-back recipes use 0.2).
    """
    logits = logits.astype(jnp.float32)
    if kind == "softmax":
        return optax.softmax_cross_entropy(logits, targets)
    if kind != "bce":
        raise ValueError(f"unknown loss {kind!r}; valid: {', '.join(LOSSES)}")
    if bce_threshold > 0:
        targets = (targets > bce_threshold).astype(jnp.float32)
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, targets), axis=-1)


NO_MIXING = MixConfig()
