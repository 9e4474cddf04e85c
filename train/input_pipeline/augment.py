"""Decoding and augmentation of one image, in numpy: plain functions, each tested.

JPEGs decode with libjpeg-turbo through simplejpeg (about 1.5x PIL's speed on
ImageNet-sized files, measured for ``bench.input_pipeline``); other formats, and the JPEGs
it cannot convert (CMYK), through PIL. Antialiased resizes are PIL's bilinear filter, the
one torchvision's transforms apply to PIL images; the plain (not antialiased) bilinear
resize of ``config.train_antialias=False`` is OpenCV's, as cheap as a resize gets.

Random functions take a ``np.random.Generator``. In the pipeline that is grain's
per-record generator, seeded by (seed, the record's position in the global stream), so an
image is augmented the same way whichever process or worker handles it.
"""

from __future__ import annotations

import io
import math

import cv2
import numpy as np
import simplejpeg
from PIL import Image

AUGMENTATIONS = ("none", "cifar", "imagenet")
# ImageNet evaluation: resize so that the crop is 87.5% of the shorter side (224 of 256).
CENTER_CROP_FRACTION = 0.875
# RandomResizedCrop's ranges (Szegedy et al. 2015; torchvision's defaults).
CROP_AREA = (0.08, 1.0)
CROP_ASPECT = (3 / 4, 4 / 3)

# OpenCV's own thread pool would fight the loader's threads and worker processes.
cv2.setNumThreads(1)


def decode_image(data: bytes, channels: int) -> np.ndarray:
    """Encoded JPEG/PNG/BMP/GIF bytes -> uint8 (H, W, channels).

    Grayscale, RGBA and CMYK images are converted to ``channels`` (1 or 3). Raises
    ``ValueError`` for data that is not a decodable image.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels={channels}: images decode to 1 (grayscale) or 3 (RGB) channels")
    if data[:3] == b"\xff\xd8\xff":
        try:
            image = simplejpeg.decode_jpeg(data, colorspace="GRAY" if channels == 1 else "RGB")
            return image.reshape(*image.shape[:2], channels)
        except ValueError:
            pass  # CMYK and other colour spaces libjpeg-turbo cannot convert: PIL below
    try:
        with Image.open(io.BytesIO(data)) as pil:
            image = np.asarray(pil.convert("L" if channels == 1 else "RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"not a decodable image: {e}") from e
    return image.reshape(*image.shape[:2], channels)


def _pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def _from_pil(pil: Image.Image, channels: int) -> np.ndarray:
    out = np.asarray(pil)
    return out.reshape(*out.shape[:2], channels)


def resize(
    image: np.ndarray,
    size: tuple[int, int],
    antialias: bool = True,
    box: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """Bilinear resize of ``image`` (or of its ``box`` = (top, left, height, width)) to
    ``size`` = (height, width); uint8 in and out, the image returned as is when nothing
    changes.

    ``antialias`` widens the filter when shrinking, as PIL and torchvision do; without it
    the resize is a plain bilinear interpolation (OpenCV's), several times cheaper.
    """
    h, w = size
    if box is not None:
        top, left, bh, bw = box
        image = image[top : top + bh, left : left + bw]
    if image.shape[:2] == (h, w):
        return image
    if antialias:
        return _from_pil(_pil(np.ascontiguousarray(image)).resize((w, h), Image.BILINEAR), image.shape[-1])
    out = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    return out.reshape(h, w, image.shape[-1])


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
    image: np.ndarray, size: int, rng: np.random.Generator, antialias: bool = True, **window_kw
) -> np.ndarray:
    """A random ``inception_crop_window`` of ``image``, resized to (size, size), as
    torchvision's ``RandomResizedCrop(size)``."""
    box = inception_crop_window(*image.shape[:2], rng, **window_kw)
    return resize(image, (size, size), antialias, box=box)


def resize_and_center_crop(
    image: np.ndarray, size: int, fraction: float = CENTER_CROP_FRACTION
) -> np.ndarray:
    """Resizes the shorter side to ``size / fraction`` (antialiased), then takes the central
    (size, size): torchvision's ``Resize(256)`` + ``CenterCrop(224)`` at the default fraction."""
    h, w = image.shape[:2]
    scale = (size / fraction) / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    image = resize(image, (nh, nw), antialias=True)
    top, left = (nh - size) // 2, (nw - size) // 2
    return image[top : top + size, left : left + size]


def preprocess(
    image: np.ndarray,
    *,
    train: bool,
    augment: str,
    image_size: int,
    padding: int,
    rng: np.random.Generator | None = None,
    train_antialias: bool = True,
) -> np.ndarray:
    """One decoded uint8 image -> the augmented uint8 model input, not yet normalised: the
    train and eval steps normalise on the device (``train_lib.normalize_images`` with
    ``config.mean`` and ``config.std``), so batches cross to it at a quarter of float32's
    size, and the host does less work per image.

    - ``imagenet``: train, inception crop to ``image_size`` and flip; eval, resize and
      centre crop.
    - ``cifar``: resize to ``image_size`` when set; train, ``padding`` pad-and-crop and flip.
    - ``none``: resize to ``image_size`` when set.
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(f"unknown augment {augment!r}; valid: {', '.join(AUGMENTATIONS)}")
    if train and augment != "none" and rng is None:
        raise ValueError(f"augment={augment!r} needs a random generator for training")
    if augment == "imagenet":
        if not train:
            return resize_and_center_crop(image, image_size)
        image = inception_crop(image, image_size, rng, antialias=train_antialias)
        return random_flip(image, rng)
    if image_size:
        image = resize(image, (image_size, image_size))
    if train and augment == "cifar":
        image = random_flip(pad_and_random_crop(image, padding, rng), rng)
    return image
