"""Decoding and augmentation of one image, in numpy: plain functions, each tested.

Decoding, resizing and the evaluation crop come from ``resnet_jax.preprocessing``: JPEGs
decode with libjpeg-turbo through simplejpeg (about 1.5x PIL's speed on ImageNet-sized
files, measured for ``bench.input_pipeline``); antialiased resizes are PIL's bilinear or
bicubic filters, the ones torchvision's transforms apply to PIL images; the plain (not
antialiased) resize of ``config.train_antialias=False`` is OpenCV's, as cheap as a resize
gets. The policies that follow the crop (TrivialAugment, RandAugment, AutoAugment) and
random erasing are in ``policies`` and ``erasing``; ``train.settings`` builds them from the config.

Random functions take a ``np.random.Generator``. In the pipeline that is grain's
per-record generator, seeded by (seed, the record's position in the global stream), so an
image is augmented the same way whichever process or worker handles it.
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

# Decoding, resizing and the evaluation crop are the library's (resnet_jax.preprocessing),
# so that serving a trained model (resnet_jax.predict) prepares images exactly as its
# evaluation here did.
from resnet_jax.preprocessing import (
    CENTER_CROP_FRACTION,
    INTERPOLATIONS,
    Preprocessing,
    resize,
    resize_and_center_crop,
)

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


@dataclasses.dataclass(frozen=True)
class Crop:
    """How one image becomes a model input of the trainer, before the policy and erasing.

    - ``imagenet``: train, inception crop to ``train_image_size`` (0: ``image_size``) and
      flip; eval, resize the shorter side to ``eval_resize_size`` (0: ``image_size`` /
      0.875) and centre crop ``image_size``.
    - ``cifar``: resize to the size when set; train, ``padding`` pad-and-crop and flip.
    - ``none``: resize to the size when set.
    """

    augment: str = "none"
    image_size: int = 0
    padding: int = 4
    train_antialias: bool = True
    interpolation: str = "bilinear"
    train_image_size: int = 0
    eval_resize_size: int = 0

    def __post_init__(self):
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"unknown augment {self.augment!r}; valid: {', '.join(AUGMENTATIONS)}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"unknown interpolation {self.interpolation!r}; valid: {', '.join(INTERPOLATIONS)}"
            )

    def evaluation(
        self, image_shape: tuple[int, int, int], mean: tuple[float, ...], std: tuple[float, ...]
    ) -> Preprocessing:
        """The evaluation transform as the library's ``Preprocessing``, for images whose
        model input is ``image_shape`` (H, W, C): saved with each checkpoint, so that
        serving the weights (``resnet_jax.predict``) prepares images as this run's
        evaluation did, normalised with the run's ``mean`` and ``std``."""
        height, width, channels = image_shape
        resize_size = 0
        if self.augment == "imagenet":
            resize_size = self.eval_resize_size or int(self.image_size / CENTER_CROP_FRACTION)
        return Preprocessing(
            size=(height, width),
            resize_size=resize_size,
            interpolation=self.interpolation,
            mean=mean,
            std=std,
            channels=channels,
        )


def preprocess(
    image: np.ndarray, crop: Crop, *, train: bool, rng: np.random.Generator | None = None
) -> np.ndarray:
    """One decoded uint8 image -> the cropped (and, for training, flipped) uint8 model
    input (``Crop``), not yet normalised: the train and eval steps normalise on the device
    (``train.steps``, with the run's mean and std), so batches cross to it at a quarter
    of float32's size, and the host does less work per image."""
    if train and crop.augment != "none" and rng is None:
        raise ValueError(f"augment={crop.augment!r} needs a random generator for training")
    size = (crop.train_image_size or crop.image_size) if train else crop.image_size
    if crop.augment == "imagenet":
        if not train:
            return resize_and_center_crop(image, crop.image_size, crop.eval_resize_size, crop.interpolation)
        image = inception_crop(
            image, size, rng, antialias=crop.train_antialias, interpolation=crop.interpolation
        )
        return random_flip(image, rng)
    if size:
        image = resize(image, (size, size), interpolation=crop.interpolation)
    if train and crop.augment == "cifar":
        image = random_flip(pad_and_random_crop(image, crop.padding, rng), rng)
    return image
