"""Images into model inputs: decoding, resizing, cropping and normalising, in numpy.

The trainer's input pipeline (``train.input_pipeline.augment``) resizes and crops with
these same functions, and its steps normalise with ``normalize``, so an image served
with a run's ``Preprocessing`` meets the model exactly as its evaluation images did.

``Preprocessing`` is the evaluation transform of a set of weights, the counterpart of
torchvision's ``weights.transforms()``: resize the shorter side (antialiased), centre
crop, scale to [0, 1], subtract the mean and divide by the std. Each weights entry
(``resnet_jax.weights``), converted directory and training workdir has one.

Antialiased resizes are PIL's bilinear or bicubic filters, the ones torchvision applies
to PIL images; ``resnet_jax.pil_resize`` computes the same integers inside a JAX graph.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

INTERPOLATIONS = ("bilinear", "bicubic")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ImageNet evaluation: resize so that the crop is 87.5% of the shorter side (224 of 256).
CENTER_CROP_FRACTION = 0.875
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_PIL_FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
_GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "F")


def decode_image(data: bytes, channels: int) -> np.ndarray:
    """Encoded JPEG/PNG/BMP/GIF/WebP/TIFF bytes -> uint8 (H, W, channels).

    JPEGs decode with libjpeg-turbo through simplejpeg when it is installed (about 1.5x
    PIL's speed on ImageNet-sized files; the same pixels as PIL's decoder on the CIFAR-10
    and scikit-learn photographs the tests read), anything else through PIL. Grayscale,
    RGBA, palette and CMYK images are converted to ``channels`` (1 or 3). Raises
    ``ValueError`` for data that is not a decodable image.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels={channels}: images decode to 1 (grayscale) or 3 (RGB) channels")
    if data[:3] == b"\xff\xd8\xff":
        try:
            import simplejpeg

            image = simplejpeg.decode_jpeg(data, colorspace="GRAY" if channels == 1 else "RGB")
            return image.reshape(*image.shape[:2], channels)
        except (ImportError, ValueError):
            pass  # no simplejpeg, or a colour space libjpeg-turbo cannot convert (CMYK): PIL
    try:
        with Image.open(io.BytesIO(data)) as pil:
            image = np.asarray(pil.convert("L" if channels == 1 else "RGB"))
    except UnidentifiedImageError:
        raise ValueError(
            "not a decodable image: no format PIL reads (JPEG, PNG, BMP, GIF, WebP, TIFF, ...)"
        ) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"not a decodable image: {e}") from e
    return image.reshape(*image.shape[:2], channels)


def image_channels(data: bytes) -> int:
    """1 for a grayscale image file, 3 for a colour one (RGB, RGBA, palette, CMYK), read
    from its header; ``ValueError`` when it is not an image."""
    try:
        with Image.open(io.BytesIO(data)) as pil:
            return 1 if pil.mode in _GRAYSCALE_MODES else 3
    except UnidentifiedImageError:
        raise ValueError("not an image (no format PIL reads: JPEG, PNG, BMP, GIF, WebP, TIFF, ...)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"not a decodable image: {e}") from e


def as_array(image: Any, channels: int | None = None) -> np.ndarray:
    """A PIL image or a uint8 (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array -> uint8
    (H, W, C), converted as ``decode_image`` converts files (the one image policy of the
    trainer and every reader).

    With ``channels`` (1 or 3) the result has that many: colour becomes grayscale with
    PIL's ``convert('L')`` (ITU-R 601-2 luma), grayscale becomes RGB by repeating it, and
    the alpha of RGBA is dropped, as PIL's ``convert('RGB')`` does. Without it, colour
    PIL modes (RGBA, palette, CMYK) become RGB and grayscale ones L.
    """
    if isinstance(image, Image.Image):
        gray = image.mode in _GRAYSCALE_MODES if channels is None else channels == 1
        image = np.asarray(image.convert("L" if gray else "RGB"))
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(
            f"an image array must be uint8 (0-255, as decoded), not {image.dtype}; "
            "pass decoded pixels, or normalised floats straight to the model"
        )
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"an image array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got shape {image.shape}"
        )
    if image.shape[-1] == 4 or (channels is not None and image.shape[-1] != channels):
        mode = {1: "L", 3: "RGB", 4: "RGBA"}[image.shape[-1]]
        pil = Image.fromarray(np.ascontiguousarray(image[..., 0] if mode == "L" else image), mode)
        return as_array(pil, channels or 3)
    return image


def resize(
    image: np.ndarray,
    size: tuple[int, int],
    antialias: bool = True,
    box: tuple[int, int, int, int] | None = None,
    interpolation: str = "bilinear",
) -> np.ndarray:
    """Bilinear or bicubic resize of ``image`` (or of its ``box`` = (top, left, height,
    width)) to ``size`` = (height, width); uint8 in and out, the image returned as is when
    nothing changes.

    ``antialias`` widens the filter when shrinking, as PIL and torchvision do; without it
    the resize is a plain interpolation (OpenCV's, the trainer's extra), several times cheaper.
    """
    h, w = size
    if box is not None:
        top, left, bh, bw = box
        image = image[top : top + bh, left : left + bw]
    if image.shape[:2] == (h, w):
        return image
    channels = image.shape[-1]
    if antialias:
        pil = Image.fromarray(np.ascontiguousarray(image[..., 0] if channels == 1 else image))
        return np.asarray(pil.resize((w, h), _PIL_FILTERS[interpolation])).reshape(h, w, channels)
    import cv2

    filters = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}
    return cv2.resize(image, (w, h), interpolation=filters[interpolation]).reshape(h, w, channels)


def resized_shape(height: int, width: int, shorter: int) -> tuple[int, int]:
    """torchvision's ``Resize(shorter)``: the shorter side to ``shorter``, the longer to
    ``int(shorter * long / short)``."""
    if height <= width:
        return shorter, int(shorter * width / height)
    return int(shorter * height / width), shorter


def center_crop_offsets(height: int, width: int, size: int | tuple[int, int]) -> tuple[int, int]:
    """(top, left) of torchvision's ``CenterCrop(size)`` (a side, or (height, width)),
    rounded as it rounds them."""
    crop_h, crop_w = (size, size) if isinstance(size, int) else size
    return round((height - crop_h) / 2.0), round((width - crop_w) / 2.0)


def resize_and_center_crop(
    image: np.ndarray,
    size: int,
    resize_size: int = 0,
    interpolation: str = "bilinear",
    antialias: bool = True,
) -> np.ndarray:
    """torchvision's ``Resize(resize_size)`` + ``CenterCrop(size)`` on a PIL image: the
    shorter side resized (antialiased) to ``resize_size`` (0: ``size`` / 0.875, 256 for
    224), then the central (size, size)."""
    resize_size = resize_size or int(size / CENTER_CROP_FRACTION)
    nh, nw = resized_shape(*image.shape[:2], resize_size)
    image = resize(image, (nh, nw), antialias=antialias, interpolation=interpolation)
    if nh < size or nw < size:  # CenterCrop pads with zeros
        padded = np.zeros((max(nh, size), max(nw, size), image.shape[-1]), np.uint8)
        top, left = (padded.shape[0] - nh) // 2, (padded.shape[1] - nw) // 2
        padded[top : top + nh, left : left + nw] = image
        image, (nh, nw) = padded, padded.shape[:2]
    top, left = center_crop_offsets(nh, nw, size)
    return image[top : top + size, left : left + size]


def normalize(images: Any, mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,)) -> Any:
    """uint8 images -> float32 ``(x / 255 - mean) / std`` per channel, as numpy for numpy
    input and as a JAX array otherwise (the trainer's steps call it on the device). Images
    of any other dtype are taken to be model inputs already."""
    if images.dtype != np.uint8:
        return images
    # One multiply and one add per pixel, with the constants computed once in float64.
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    per_channel = (1,) * (images.ndim - 1) + (-1,)  # broadcast explicitly: no rank promotion
    scale = (1.0 / (255.0 * std)).astype(np.float32).reshape(per_channel)
    offset = (-mean / std).astype(np.float32).reshape(per_channel)
    if isinstance(images, np.ndarray):
        return images.astype(np.float32) * scale + offset
    import jax.numpy as jnp

    return images.astype(jnp.float32) * jnp.asarray(scale) + jnp.asarray(offset)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """An evaluation transform: image (any size) -> float32 (height, width, channels).

    ``resize_size > 0``: the shorter side is resized to it, then the centre is cropped
    to ``size`` (torchvision's ``Resize`` + ``CenterCrop``). ``resize_size == 0``: the
    whole image is resized to ``size`` (the CIFAR-style runs of the trainer).
    """

    size: tuple[int, int]  # the model input's (height, width)
    resize_size: int = 0
    interpolation: str = "bilinear"
    antialias: bool = True
    mean: tuple[float, ...] = IMAGENET_MEAN  # per channel (in channel_order), on the [0, 1] scale
    std: tuple[float, ...] = IMAGENET_STD
    channels: int = 3
    channel_order: str = "RGB"  # 'BGR': reversed after the crop (Keras' caffe-style ResNets)

    def __post_init__(self):
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation={self.interpolation!r}; valid: {', '.join(INTERPOLATIONS)}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels={self.channels}: 1 (grayscale) or 3 (RGB)")
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order={self.channel_order!r}: 'RGB' or 'BGR'")
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"size={self.size}: (height, width), both >= 1")
        if self.resize_size and self.size[0] != self.size[1]:
            raise ValueError(f"size={self.size}: a centre crop (resize_size > 0) is square")
        for name in ("mean", "std"):
            if len(getattr(self, name)) not in (1, self.channels):
                value = getattr(self, name)
                raise ValueError(f"{name}={value}: one value, or one per channel ({self.channels})")

    def checked(self, image: Any) -> np.ndarray:
        """``image`` as a uint8 (H, W, ``channels``) array: a grayscale image for an RGB
        model, or a colour one for a grayscale model, is converted as the trainer's
        decoding converts files (``as_array``)."""
        return as_array(image, self.channels)

    def crop(self, image: Any) -> np.ndarray:
        """The resized and cropped uint8 (height, width, channels) image, not normalised."""
        image = self.checked(image)
        if self.resize_size:
            return resize_and_center_crop(
                image, self.size[0], self.resize_size, self.interpolation, self.antialias
            )
        return resize(image, self.size, self.antialias, interpolation=self.interpolation)

    def finish(self, crops: Any) -> Any:
        """uint8 crops (numpy, or JAX inside a graph) -> the model input: the channels
        in ``channel_order``, normalised."""
        if self.channel_order == "BGR":
            crops = crops[..., ::-1]
        return normalize(crops, self.mean, self.std)

    def __call__(self, image: Any) -> np.ndarray:
        """``crop`` and ``finish``: float32 (height, width, channels)."""
        return self.finish(self.crop(image))

    def batch(self, images: Sequence[Any]) -> np.ndarray:
        """The model input of several images: float32 (N, height, width, channels)."""
        return np.stack([self(image) for image in images])

    @property
    def identity_size(self) -> tuple[int, int]:
        """The (height, width) an image must have for the resize to change nothing, a
        square of ``resize_size``, or ``size`` when the whole image is resized. A raw-input
        export takes this size by default (``resnet_jax.export``)."""
        return (self.resize_size, self.resize_size) if self.resize_size else self.size

    def describe(self) -> str:
        """One line for logs: the resize, the crop, the interpolation and mean/std."""
        filt = f"{self.interpolation}{', antialiased' if self.antialias else ''}"
        h, w = self.size
        steps = f"resize to {h}x{w} ({filt})"
        if self.resize_size:
            steps = f"resize {self.resize_size} ({filt}), centre crop {h}"
        order = ", channels reversed (BGR)" if self.channel_order == "BGR" else ""
        return f"{steps}{order}, mean {list(self.mean)}, std {list(self.std)}"

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values (tuples as lists), as metadata.json stores them."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> Preprocessing:
        """The inverse of ``to_dict``; keys that are not fields are ignored."""
        return cls(**{f.name: fields[f.name] for f in dataclasses.fields(cls) if f.name in fields})
