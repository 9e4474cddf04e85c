"""The automatic augmentation policies of today's ImageNet recipes, on one uint8 image.

- ``trivialaugment``: TrivialAugmentWide (Müller & Hutter 2021), as torchvision defines it
  (its 14 ops and 31 magnitude bins): torchvision's IMAGENET1K_V2 recipe.
- ``autoaugment``: AutoAugment's ImageNet policy (Cubuk et al. 2019), as torchvision
  defines it (25 sub-policies of 2 ops, 10 magnitude bins).
- ``randaugment``: RandAugment (Cubuk et al. 2020) with timm's op set, the "increasing"
  one (``rand-mM-mstdS-inc1``): each of ``num_ops`` ops, chosen with replacement from 15,
  runs with probability 1/2 at a magnitude drawn from N(M, S) and clipped to [0, 10].
  timm's, not torchvision's: the ResNet-strikes-back results (A1 80.4%, A2 79.8%, A3
  78.1%) were measured with it, magnitude noise included, which torchvision's RandAugment
  does not have.

Every op is the PIL call torchvision's and timm's ops make on a PIL image, with the same
arguments computed in the same floating-point order, so results are identical, pixel
for pixel (``tests/test_policies.py``). Randomness comes from the record's
``np.random.Generator``; the draws follow the same distributions as torchvision's and
timm's, not their random streams.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

POLICIES = ("trivialaugment", "randaugment", "autoaugment")
INTERPOLATIONS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}

Op = tuple[str, float]  # (name, magnitude) as the policy's op table defines it


def linspace32(start: float, end: float, steps: int) -> np.ndarray:
    """``torch.linspace(start, end, steps)`` in float32, bit for bit: a float32 step; the
    first half counts up from ``start``, the second down from ``end``, each value one fused
    multiply-add (the product exact, one rounding), as torch's CPU kernel computes it.
    Magnitude bins are these float32 values, so an op's argument is torchvision's."""
    if steps == 1:
        return np.asarray([start], np.float32)
    start32, end32 = np.float32(start), np.float32(end)
    step = np.float64((end32 - start32) / np.float32(steps - 1))
    i = np.arange(steps)
    # float64 holds a float32 x small-integer product exactly, so the sum rounds once.
    up = np.float64(start32) + step * i
    down = np.float64(end32) - step * (steps - 1 - i)
    return np.where(i < steps // 2, up, down).astype(np.float32)


def _inverse_affine(
    center: Sequence[float], angle: float, translate: Sequence[float], shear: Sequence[float]
) -> list[float]:
    """PIL's AFFINE data (output pixel -> input pixel) for rotation by ``angle`` degrees,
    shears (degrees) and a translation, about ``center``, at scale 1: the map
    T * C * R * SHy * SHx * C^-1, inverted (its 2x2 part has determinant 1)."""
    rot, sx, sy = math.radians(angle), math.radians(shear[0]), math.radians(shear[1])
    a = math.cos(rot - sy) / math.cos(sy)
    b = -math.cos(rot - sy) * math.tan(sx) / math.cos(sy) - math.sin(rot)
    c = math.sin(rot - sy) / math.cos(sy)
    d = -math.sin(rot - sy) * math.tan(sx) / math.cos(sy) + math.cos(rot)
    m = [d, -b, 0.0, -c, a, 0.0]
    (cx, cy), (tx, ty) = center, translate
    m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty) + cx
    m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty) + cy
    return m


def _fill(pil: Image.Image, fill: Sequence[int]) -> int | tuple[int, ...]:
    """PIL's fill colour: one value per band; a single value serves every band."""
    if pil.mode == "L":
        return int(fill[0])
    return tuple(int(v) for v in (fill if len(fill) == len(pil.getbands()) else (fill[0],) * 3))


def _affine(pil: Image.Image, matrix, resample: int, fill: Sequence[int]) -> Image.Image:
    return pil.transform(pil.size, Image.AFFINE, tuple(matrix), resample, fillcolor=_fill(pil, fill))


# torchvision's ops: magnitude as its policies' tables give it; the enhancements blend
# with factor 1 + magnitude.
def _shear(axis: int) -> Callable[..., Image.Image]:
    def op(pil, magnitude, resample, fill):
        degrees = math.degrees(math.atan(magnitude))
        shear = [degrees, 0.0] if axis == 0 else [0.0, degrees]
        return _affine(pil, _inverse_affine([0, 0], 0.0, [0, 0], shear), resample, fill)

    return op


def _translate(axis: int) -> Callable[..., Image.Image]:
    def op(pil, magnitude, resample, fill):
        shift = [int(magnitude), 0] if axis == 0 else [0, int(magnitude)]
        center = [pil.size[0] * 0.5, pil.size[1] * 0.5]
        return _affine(pil, _inverse_affine(center, 0.0, shift, [0.0, 0.0]), resample, fill)

    return op


def _enhance(kind: type) -> Callable[..., Image.Image]:
    return lambda pil, magnitude, resample, fill: kind(pil).enhance(1.0 + magnitude)


TORCHVISION_OPS: dict[str, Callable[..., Image.Image]] = {
    "Identity": lambda pil, magnitude, resample, fill: pil,
    "ShearX": _shear(0),
    "ShearY": _shear(1),
    "TranslateX": _translate(0),
    "TranslateY": _translate(1),
    "Rotate": lambda pil, degrees, resample, fill: pil.rotate(degrees, resample, fillcolor=_fill(pil, fill)),
    "Brightness": _enhance(ImageEnhance.Brightness),
    "Color": _enhance(ImageEnhance.Color),
    "Contrast": _enhance(ImageEnhance.Contrast),
    "Sharpness": _enhance(ImageEnhance.Sharpness),
    "Posterize": lambda pil, magnitude, resample, fill: ImageOps.posterize(pil, int(magnitude)),
    "Solarize": lambda pil, magnitude, resample, fill: ImageOps.solarize(pil, magnitude),
    "AutoContrast": lambda pil, magnitude, resample, fill: ImageOps.autocontrast(pil),
    "Equalize": lambda pil, magnitude, resample, fill: ImageOps.equalize(pil),
    "Invert": lambda pil, magnitude, resample, fill: ImageOps.invert(pil),
}


def _posterize_bits(bins: int, levels: int) -> np.ndarray:
    """8 minus 0..``levels`` bits over the bins, rounded half to even as torch rounds."""
    return 8 - np.round(np.arange(bins, dtype=np.float32) / np.float32((bins - 1) / levels)).astype(np.int64)


def trivialaugment_space(bins: int = 31) -> dict[str, tuple[np.ndarray | None, bool]]:
    """TrivialAugmentWide's ops: name -> (magnitude per bin or None, signed)."""
    wide = linspace32(0.0, 0.99, bins)
    return {
        "Identity": (None, False),
        "ShearX": (wide, True),
        "ShearY": (wide, True),
        "TranslateX": (linspace32(0.0, 32.0, bins), True),
        "TranslateY": (linspace32(0.0, 32.0, bins), True),
        "Rotate": (linspace32(0.0, 135.0, bins), True),
        "Brightness": (wide, True),
        "Color": (wide, True),
        "Contrast": (wide, True),
        "Sharpness": (wide, True),
        "Posterize": (_posterize_bits(bins, 6), False),
        "Solarize": (linspace32(255.0, 0.0, bins), False),
        "AutoContrast": (None, False),
        "Equalize": (None, False),
    }


def autoaugment_space(height: int, width: int, bins: int = 10) -> dict[str, tuple[np.ndarray | None, bool]]:
    """AutoAugment's ops at its 10 magnitude bins; translations are up to 150/331 of the
    image's side (the paper's 150 pixels of 331)."""
    narrow = linspace32(0.0, 0.9, bins)
    return {
        "ShearX": (linspace32(0.0, 0.3, bins), True),
        "ShearY": (linspace32(0.0, 0.3, bins), True),
        "TranslateX": (linspace32(0.0, 150.0 / 331.0 * width, bins), True),
        "TranslateY": (linspace32(0.0, 150.0 / 331.0 * height, bins), True),
        "Rotate": (linspace32(0.0, 30.0, bins), True),
        "Brightness": (narrow, True),
        "Color": (narrow, True),
        "Contrast": (narrow, True),
        "Sharpness": (narrow, True),
        "Posterize": (_posterize_bits(bins, 4), False),
        "Solarize": (linspace32(255.0, 0.0, bins), False),
        "AutoContrast": (None, False),
        "Equalize": (None, False),
        "Invert": (None, False),
    }


# AutoAugment's ImageNet policy: 25 sub-policies of two (op, probability, magnitude bin).
AUTOAUGMENT_IMAGENET = (
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, None)),
    (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
    (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
    (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
    (("Equalize", 0.0, None), ("Equalize", 0.8, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
    (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, None)),
    (("Color", 0.4, 0), ("Equalize", 0.6, None)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
)


# timm's increasing RandAugment ops, on its 0..10 magnitude scale: name -> (the op's
# arguments from the level and a coin for the sign, the op). "Increasing": every op is
# stronger at a higher level.
def _signed(value: float, negate: bool) -> float:
    return -value if negate else value


def _timm_lut(pil: Image.Image, lut: list[int]) -> Image.Image:
    return pil.point(lut * (3 if pil.mode == "RGB" else 1))


TIMM_OPS: dict[str, tuple[Callable[[float, bool], tuple], Callable[..., Image.Image]]] = {
    "AutoContrast": (lambda level, neg: (), lambda pil, r, f: ImageOps.autocontrast(pil)),
    "Equalize": (lambda level, neg: (), lambda pil, r, f: ImageOps.equalize(pil)),
    "Invert": (lambda level, neg: (), lambda pil, r, f: ImageOps.invert(pil)),
    "Rotate": (
        lambda level, neg: (_signed(level / 10.0 * 30.0, neg),),
        lambda pil, r, f, degrees: pil.rotate(degrees, resample=r, fillcolor=_fill(pil, f)),
    ),
    "PosterizeIncreasing": (
        lambda level, neg: (4 - int(level / 10.0 * 4),),
        # Keeping 0 bits (level 10) makes the image black, as Pillow did before 9.x, which
        # now refuses it (timm's own op raises there).
        lambda pil, r, f, bits: _timm_lut(pil, [i & ~(2 ** (8 - bits) - 1) for i in range(256)]),
    ),
    "SolarizeIncreasing": (
        lambda level, neg: (256 - min(256, int(level / 10.0 * 256)),),
        lambda pil, r, f, threshold: ImageOps.solarize(pil, threshold),
    ),
    "SolarizeAdd": (
        lambda level, neg: (min(128, int(level / 10.0 * 110)),),
        lambda pil, r, f, add: _timm_lut(pil, [min(255, i + add) if i < 128 else i for i in range(256)]),
    ),
    **{
        f"{name}Increasing": (
            lambda level, neg: (max(0.1, 1.0 + _signed(level / 10.0 * 0.9, neg)),),
            lambda pil, r, f, factor, kind=kind: kind(pil).enhance(factor),
        )
        for name, kind in (
            ("Color", ImageEnhance.Color),
            ("Contrast", ImageEnhance.Contrast),
            ("Brightness", ImageEnhance.Brightness),
            ("Sharpness", ImageEnhance.Sharpness),
        )
    },
    "ShearX": (
        lambda level, neg: (_signed(level / 10.0 * 0.3, neg),),
        lambda pil, r, f, s: _affine(pil, (1, s, 0, 0, 1, 0), r, f),
    ),
    "ShearY": (
        lambda level, neg: (_signed(level / 10.0 * 0.3, neg),),
        lambda pil, r, f, s: _affine(pil, (1, 0, 0, s, 1, 0), r, f),
    ),
    "TranslateXRel": (
        lambda level, neg: (_signed(level / 10.0 * 0.45, neg),),
        lambda pil, r, f, pct: _affine(pil, (1, 0, pct * pil.size[0], 0, 1, 0), r, f),
    ),
    "TranslateYRel": (
        lambda level, neg: (_signed(level / 10.0 * 0.45, neg),),
        lambda pil, r, f, pct: _affine(pil, (1, 0, 0, 0, 1, pct * pil.size[1]), r, f),
    ),
}


def _to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def _from_pil(pil: Image.Image, channels: int) -> np.ndarray:
    out = np.asarray(pil)
    return out.reshape(*out.shape[:2], channels)


@dataclasses.dataclass(frozen=True)
class Policy:
    """One of ``POLICIES``: ``policy(image, rng)`` augments a uint8 (H, W, C) image.

    ``sample(rng, height, width)`` draws the ops to apply, as (name, arguments); ``apply``
    runs them. ``interpolation`` is the geometric ops' resampling filter; ``fill`` the
    uint8 value of the pixels they uncover.
    """

    name: str
    interpolation: str = "nearest"
    fill: tuple[int, ...] = (0,)
    num_ops: int = 2  # randaugment
    magnitude: float = 9.0  # randaugment, on timm's 0..10 scale
    magnitude_std: float = 0.5  # randaugment: the magnitude ~ N(magnitude, this); inf: U(0, magnitude)
    op_probability: float = 0.5  # randaugment: each chosen op runs with this probability

    def __post_init__(self):
        if self.name not in POLICIES:
            raise ValueError(f"unknown augmentation policy {self.name!r}; valid: {', '.join(POLICIES)}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"unknown interpolation {self.interpolation!r}; valid: {', '.join(INTERPOLATIONS)}"
            )
        if self.name == "randaugment":
            if self.num_ops < 1:
                raise ValueError(f"randaugment num_ops={self.num_ops} must be >= 1")
            if not 0 <= self.magnitude <= 10:
                raise ValueError(f"randaugment magnitude={self.magnitude} must be in [0, 10] (timm's scale)")
            if self.magnitude_std < 0:
                raise ValueError(f"randaugment magnitude_std={self.magnitude_std} must be >= 0")

    def sample(self, rng: np.random.Generator, height: int, width: int) -> list[tuple[str, tuple]]:
        if self.name == "trivialaugment":
            space = trivialaugment_space()
            name = list(space)[rng.integers(len(space))]
            magnitudes, signed = space[name]
            magnitude = 0.0 if magnitudes is None else float(magnitudes[rng.integers(len(magnitudes))])
            if signed and rng.integers(2):
                magnitude = -magnitude
            return [(name, (magnitude,))]
        if self.name == "autoaugment":
            space = autoaugment_space(height, width)
            ops = []
            for name, probability, bin_ in AUTOAUGMENT_IMAGENET[rng.integers(len(AUTOAUGMENT_IMAGENET))]:
                run, negate = rng.random() <= probability, rng.integers(2) == 0
                if run:
                    magnitudes, signed = space[name]
                    magnitude = 0.0 if bin_ is None else float(magnitudes[bin_])
                    ops.append((name, (-magnitude if signed and negate else magnitude,)))
            return ops
        names = list(TIMM_OPS)
        ops = []
        for index in rng.integers(len(names), size=self.num_ops):
            if rng.random() > self.op_probability:
                continue
            level = self.magnitude
            if self.magnitude_std == math.inf:
                level = rng.uniform(0, level)
            elif self.magnitude_std > 0:
                level = rng.normal(level, self.magnitude_std)
            level = max(0.0, min(float(level), 10.0))
            name = names[index]
            ops.append((name, TIMM_OPS[name][0](level, bool(rng.random() > 0.5))))
        return ops

    def apply(self, image: np.ndarray, ops: list[tuple[str, tuple]]) -> np.ndarray:
        if not ops:
            return image
        pil, resample = _to_pil(image), INTERPOLATIONS[self.interpolation]
        for name, args in ops:
            if self.name == "randaugment":
                pil = TIMM_OPS[name][1](pil, resample, self.fill, *args)
            else:
                pil = TORCHVISION_OPS[name](pil, *args, resample, self.fill)
        return _from_pil(pil, image.shape[-1])

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.apply(image, self.sample(rng, *image.shape[:2]))
