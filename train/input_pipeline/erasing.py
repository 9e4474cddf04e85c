"""Random erasing (Zhong et al. 2020), as torchvision's ``RandomErasing``, on one uint8
image before normalisation."""

from __future__ import annotations

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class RandomErasing:
    """torchvision's ``RandomErasing`` (Zhong et al. 2020) on a uint8 image: with
    ``probability``, a box of ``scale`` of the area and aspect ratio (height / width) drawn
    log-uniformly from ``ratio`` is replaced; after 10 boxes that do not fit, none is.

    torchvision erases the normalised tensor, with 0 (``value='0'``, its default) or
    N(0, 1) noise per pixel (``'random'``). Here the image is still uint8 (the device
    normalises it), so the box gets the uint8 pixel that normalises to those: ``mean`` *
    255 for 0, and (``mean`` + ``std`` * N(0, 1)) * 255 for the noise, rounded and clipped
    to [0, 255] (for ImageNet's mean and std the clip falls 1.8 to 2.6 standard
    deviations out, and clips 3.3% of the noise values).
    """

    probability: float
    scale: tuple[float, float] = (0.02, 0.33)
    ratio: tuple[float, float] = (0.3, 3.3)
    value: str = "0"
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __post_init__(self):
        if not 0 <= self.probability <= 1:
            raise ValueError(f"random_erasing={self.probability} is a probability: it must be in [0, 1]")
        if self.value not in ("0", "random"):
            raise ValueError(f"random_erasing_value={self.value!r}; valid: '0', 'random'")
        lo, hi = self.scale
        if not 0 < lo <= hi < 1:
            raise ValueError(f"random_erasing_scale={tuple(self.scale)} must satisfy 0 < low <= high < 1")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"random_erasing_ratio={tuple(self.ratio)} must satisfy 0 < low <= high")

    def window(self, rng: np.random.Generator, height: int, width: int) -> tuple[int, int, int, int] | None:
        """(top, left, height, width) of the box to erase, or None."""
        if not rng.random() < self.probability:
            return None
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            area = height * width * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if h < height and w < width:
                return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
        return None

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        box = self.window(rng, *image.shape[:2])
        if box is None:
            return image
        top, left, h, w = box
        channels = image.shape[-1]
        mean = np.broadcast_to(np.asarray(self.mean, np.float64), (channels,))
        if self.value == "random":
            std = np.broadcast_to(np.asarray(self.std, np.float64), (channels,))
            values = (mean + std * rng.standard_normal((h, w, channels))) * 255.0
        else:
            values = mean * 255.0
        out = np.array(image)  # a writable copy: the source's arrays are not ours to change
        out[top : top + h, left : left + w] = np.clip(np.round(values), 0, 255).astype(np.uint8)
        return out
