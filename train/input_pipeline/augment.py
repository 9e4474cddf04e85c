"""Decoding and augmentation of one image, in numpy: plain functions, each tested.

Decoding, resizing and the evaluation crop come from ``resnet_jax.preprocessing``: JPEGs
decode with libjpeg-turbo through simplejpeg (about 1.5x PIL's speed on ImageNet-sized
files, measured for ``bench.input_pipeline``); antialiased resizes are PIL's bilinear or
bicubic filters, the ones torchvision's transforms apply to PIL images; the plain (not
antialiased) resize of ``config.train_antialias=False`` is OpenCV's, as cheap as a resize
gets. The policies that follow the crop (TrivialAugment, RandAugment, AutoAugment) and
random erasing are in ``policies``.

Random functions take a ``np.random.Generator``. In the pipeline that is grain's
per-record generator, seeded by (seed, the record's position in the global stream), so an
image is augmented the same way whichever process or worker handles it.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

# Decoding, resizing and the evaluation crop are the library's (resnet_jax.preprocessing),
# so that serving a trained model (resnet_jax.predict) prepares images exactly as its
# evaluation here did.
from resnet_jax.preprocessing import (  # noqa: F401  (re-exported: the pipeline's API)
    CENTER_CROP_FRACTION,
    INTERPOLATIONS,
    decode_image,
    resize,
    resize_and_center_crop,
)
from train.input_pipeline import erasing, policies

AUGMENTATIONS = ("none", "cifar", "imagenet")
# RandomResizedCrop's ranges (Szegedy et al. 2015; torchvision's defaults).
CROP_AREA = (0.08, 1.0)
CROP_ASPECT = (3 / 4, 4 / 3)

# OpenCV's own thread pool would fight the loader's threads and worker processes.
cv2.setNumThreads(1)


def random_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Horizontal flip with probability 1/2."""
    return image[:, ::-1] if rng.random() < 0.5 else image


def pad_and_random_crop(image: np.ndarray, padding: int, rng: np.random.Generator) -> np.ndarray:
    """Zero-pads each side by ``padding`` and crops back to the original size at random:
    each of the (2 * padding + 1)^2 windows with equal probability."""
    h, w = image.shape[:2]
    # The window at offset (dy, dx) of the padded image is the image shifted by
    # (dy - padding, dx - padding), zeros where it moved out: built directly, which costs
    # a fifth of padding first.
    dy, dx = (int(v) - padding for v in rng.integers(0, 2 * padding + 1, size=2))
    out = np.zeros_like(image)
    top, bottom, left, right = max(0, -dy), min(h, h - dy), max(0, -dx), min(w, w - dx)
    if top < bottom and left < right:
        out[top:bottom, left:right] = image[top + dy : bottom + dy, left + dx : right + dx]
    return out


def inception_crop_window(
    height: int,
    width: int,
    rng: np.random.Generator,
    area_range: tuple[float, float] = CROP_AREA,
    aspect_ratio_range: tuple[float, float] = CROP_ASPECT,
) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random crop covering ``area_range`` of the image with
    an aspect ratio drawn log-uniformly from ``aspect_ratio_range``: the "Inception" crop
    (Szegedy et al. 2015), drawn as torchvision's ``RandomResizedCrop.get_params`` does
    (10 tries, then the whole image clamped to the ratio range).
    """
    area = height * width
    log_ratio = (math.log(aspect_ratio_range[0]), math.log(aspect_ratio_range[1]))
    for _ in range(10):
        target = area * rng.uniform(*area_range)
        ratio = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    ratio = width / height
    if ratio < aspect_ratio_range[0]:
        w, h = width, round(width / aspect_ratio_range[0])
    elif ratio > aspect_ratio_range[1]:
        h, w = height, round(height * aspect_ratio_range[1])
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def inception_crop(
    image: np.ndarray,
    size: int,
    rng: np.random.Generator,
    antialias: bool = True,
    interpolation: str = "bilinear",
    **window_kw,
) -> np.ndarray:
    """A random ``inception_crop_window`` of ``image``, resized to (size, size), as
    torchvision's ``RandomResizedCrop(size)``."""
    box = inception_crop_window(*image.shape[:2], rng, **window_kw)
    return resize(image, (size, size), antialias, box=box, interpolation=interpolation)


def preprocess(
    image: np.ndarray,
    *,
    train: bool,
    augment: str,
    image_size: int,
    padding: int,
    rng: np.random.Generator | None = None,
    train_antialias: bool = True,
    interpolation: str = "bilinear",
    train_image_size: int = 0,
    eval_resize_size: int = 0,
) -> np.ndarray:
    """One decoded uint8 image -> the cropped (and, for training, flipped) uint8 model
    input, not yet normalised: the train and eval steps normalise on the device
    (``train_lib.normalize_images`` with ``config.mean`` and ``config.std``), so batches
    cross to it at a quarter of float32's size, and the host does less work per image.

    - ``imagenet``: train, inception crop to ``train_image_size`` (0: ``image_size``) and
      flip; eval, resize the shorter side to ``eval_resize_size`` (0: ``image_size`` /
      0.875) and centre crop ``image_size``.
    - ``cifar``: resize to the size when set; train, ``padding`` pad-and-crop and flip.
    - ``none``: resize to the size when set.
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(f"unknown augment {augment!r}; valid: {', '.join(AUGMENTATIONS)}")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {interpolation!r}; valid: {', '.join(INTERPOLATIONS)}")
    if train and augment != "none" and rng is None:
        raise ValueError(f"augment={augment!r} needs a random generator for training")
    size = (train_image_size or image_size) if train else image_size
    if augment == "imagenet":
        if not train:
            return resize_and_center_crop(image, image_size, eval_resize_size, interpolation)
        image = inception_crop(image, size, rng, antialias=train_antialias, interpolation=interpolation)
        return random_flip(image, rng)
    if size:
        image = resize(image, (size, size), interpolation=interpolation)
    if train and augment == "cifar":
        image = random_flip(pad_and_random_crop(image, padding, rng), rng)
    return image


def create_policy(config: Any) -> policies.Policy | None:
    """``config.auto_augment``'s policy, or None. TrivialAugment and AutoAugment fill what
    they uncover with black (torchvision's default); RandAugment with the mean pixel
    (timm's); all resample with ``config.interpolation``, as torchvision's reference
    recipes and timm's factory pass it."""
    if not config.auto_augment:
        return None
    fill = (0,)
    if config.auto_augment == "randaugment":
        fill = tuple(min(255, round(255 * m)) for m in config.mean)
    return policies.Policy(
        config.auto_augment,
        interpolation=config.interpolation,
        fill=fill,
        num_ops=config.randaugment_num_ops,
        magnitude=config.randaugment_magnitude,
        magnitude_std=config.randaugment_magnitude_std,
    )


def create_erasing(config: Any) -> erasing.RandomErasing | None:
    """``config.random_erasing``'s eraser, or None when its probability is 0; its fields
    are checked either way."""
    eraser = erasing.RandomErasing(
        config.random_erasing,
        scale=tuple(config.random_erasing_scale),
        ratio=tuple(config.random_erasing_ratio),
        value=config.random_erasing_value,
        mean=tuple(config.mean),
        std=tuple(config.std),
    )
    return eraser if eraser.probability > 0 else None


def check_augmentation(config: Any) -> None:
    """The augmentation fields, checked before any data is read; each error names the
    value and the valid choices."""
    if config.augment not in AUGMENTATIONS:
        hint = ""
        if config.augment in policies.POLICIES:
            hint = (
                f" ({config.augment!r} is a policy that follows the crop: set "
                f"--config.auto_augment={config.augment} with augment 'imagenet' or 'cifar')"
            )
        raise ValueError(f"unknown augment {config.augment!r}; valid: {', '.join(AUGMENTATIONS)}{hint}")
    if config.interpolation not in INTERPOLATIONS:
        raise ValueError(
            f"unknown interpolation {config.interpolation!r}; valid: {', '.join(INTERPOLATIONS)}"
        )
    if config.auto_augment and config.auto_augment not in policies.POLICIES:
        raise ValueError(
            f"unknown auto_augment {config.auto_augment!r}; valid: '' (none), {', '.join(policies.POLICIES)}"
        )
    if config.repeated_augmentations < 1:
        raise ValueError(
            f"config.repeated_augmentations={config.repeated_augmentations} must be >= 1 (1: off)"
        )
    for field in ("train_image_size", "eval_resize_size"):
        if config[field] < 0:
            raise ValueError(f"config.{field}={config[field]} must be >= 0 (0: from image_size)")
    if config.eval_resize_size and config.eval_resize_size < config.image_size:
        raise ValueError(
            f"config.eval_resize_size={config.eval_resize_size} is below image_size={config.image_size}: "
            "the centre crop would be padded"
        )
    create_policy(config)  # their own checks of the values
    create_erasing(config)
