"""The augmentation policies and random erasing against their sources: every op, at the
lowest, middle and highest magnitude, pixel for pixel against torchvision's functional
ops (TrivialAugmentWide, AutoAugment) and timm's (RandAugment) on real CIFAR-10 JPEGs and
upscaled ones; and the sampling (op choice, magnitudes, signs, erased boxes) against
theirs over 10,000 draws."""

import collections
import io
import math
import pathlib
import random
import sys
import tarfile
import types

import numpy as np
import pytest
from PIL import Image

from train.input_pipeline import erasing, policies

CIFAR = pathlib.Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
DRAWS = 10_000


def _torchvision():
    pytest.importorskip("torch")
    # torchvision's compiled ops do not load with the CPU torch build; its transforms do.
    sys.modules.setdefault(
        "torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations")
    )
    pytest.importorskip("torchvision")
    import torchvision.transforms.autoaugment as autoaugment
    import torchvision.transforms.functional as F

    return autoaugment, F


@pytest.fixture(scope="module")
def photos():
    """Real JPEGs: 4 CIFAR-10 images as decoded (32x32), and two upscaled with bicubic to
    an ImageNet-like 176x176 and a non-square 96x160 (odd centres, larger shifts)."""
    if not CIFAR.exists():
        pytest.skip("needs ../shared/datasets/cifar10-jpeg.tar.gz")
    images = []
    with tarfile.open(CIFAR) as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".jpg"):
                images.append(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB"))
                if len(images) == 4:
                    break
    return {
        **{f"cifar{i}": image for i, image in enumerate(images)},
        "upscaled176": images[0].resize((176, 176), Image.BICUBIC),
        "upscaled160x96": images[1].resize((160, 96), Image.BICUBIC),
        "gray": images[2].convert("L"),
    }


def _array(pil):
    out = np.asarray(pil)
    return out.reshape(*out.shape[:2], -1)


def test_linspace32_is_torch_linspace_bit_for_bit():
    import torch

    for start, end, steps in (
        (0.0, 0.99, 31),
        (0.0, 32.0, 31),
        (0.0, 135.0, 31),
        (255.0, 0.0, 31),
        (0.0, 0.3, 10),
        (0.0, 150 / 331 * 176, 10),
        (0.0, 0.9, 10),
        (255.0, 0.0, 10),
    ):
        expected = torch.linspace(start, end, steps).numpy()
        np.testing.assert_array_equal(policies.linspace32(start, end, steps), expected)
    bits = (8 - (torch.arange(31) / ((31 - 1) / 6)).round().int()).numpy()
    np.testing.assert_array_equal(policies._posterize_bits(31, 6), bits)
    bits = (8 - (torch.arange(10) / ((10 - 1) / 4)).round().int()).numpy()
    np.testing.assert_array_equal(policies._posterize_bits(10, 4), bits)


def _magnitudes(space, name, height, width):
    """The lowest, middle and highest bin's magnitude, both signs where the op is signed."""
    magnitudes, signed = space[name]
    if magnitudes is None:
        return [0.0]
    picks = [float(magnitudes[i]) for i in (0, len(magnitudes) // 2, len(magnitudes) - 1)]
    return picks + [-m for m in picks if m != 0] if signed else picks


@pytest.mark.parametrize("policy", ["trivialaugment", "autoaugment"])
@pytest.mark.parametrize("interpolation", ["nearest", "bilinear", "bicubic"])
def test_torchvision_ops_equal_torchvisions_on_real_jpegs(photos, policy, interpolation):
    autoaugment, F = _torchvision()
    mode = getattr(F.InterpolationMode, interpolation.upper())
    checked = collections.Counter()
    for key, pil in photos.items():
        height, width = pil.height, pil.width
        if policy == "trivialaugment":
            space = policies.trivialaugment_space()
            tv_space = autoaugment.TrivialAugmentWide()._augmentation_space(31)
        else:
            space = policies.autoaugment_space(height, width)
            tv_space = autoaugment.AutoAugment()._augmentation_space(10, (height, width))
        assert list(space) == list(tv_space), "not torchvision's op list, in its order"
        ours = policies.Policy(policy, interpolation=interpolation)
        for name in space:
            for magnitude in _magnitudes(space, name, height, width):
                expected = _array(autoaugment._apply_op(pil, name, magnitude, interpolation=mode, fill=None))
                got = ours.apply(_array(pil), [(name, (magnitude,))])
                assert got.dtype == np.uint8 and got.shape == expected.shape
                diff = np.abs(got.astype(int) - expected).max()
                # Both run the same PIL call with the same arguments: exactly equal.
                assert diff == 0, f"{policy} {name}({magnitude}) on {key}: max difference {diff}"
                checked[name] += 1
    assert set(checked) == set(space)


def test_timm_randaugment_ops_equal_timms_on_real_jpegs(photos):
    pytest.importorskip("torch")
    auto_augment = pytest.importorskip("timm.data.auto_augment")
    assert list(policies.TIMM_OPS) == auto_augment._RAND_INCREASING_TRANSFORMS
    fill = (124, 116, 104)  # timm's img_mean for ImageNet's mean
    for interpolation in ("bilinear", "bicubic"):
        resample = policies.INTERPOLATIONS[interpolation]
        ours = policies.Policy("randaugment", interpolation=interpolation, fill=fill)
        for key, pil in photos.items():
            for name, (level_args, _) in policies.TIMM_OPS.items():
                for level in (0.0, 5.0, 10.0):  # timm's magnitude scale: lowest, middle, highest
                    for negate in (False, True):
                        args = level_args(level, negate)
                        # timm negates when random.random() > 0.5: make it draw that.
                        timm_random = auto_augment.random.random
                        auto_augment.random.random = (lambda: 0.9) if negate else (lambda: 0.1)
                        try:
                            level_fn = auto_augment.LEVEL_TO_ARG[name]
                            theirs = level_fn(level, {}) if level_fn else ()
                        finally:
                            auto_augment.random.random = timm_random
                        assert tuple(theirs) == args, (name, level, negate, theirs, args)
                        op = auto_augment.NAME_TO_OP[name]
                        kw = dict(fillcolor=fill if pil.mode == "RGB" else fill[0], resample=resample)
                        if name == "PosterizeIncreasing" and args == (0,):
                            # Pillow now refuses to keep 0 bits, and timm's op raises: the
                            # image such a posterize gives is black.
                            with pytest.raises(ValueError, match="bits must be"):
                                op(pil, *theirs, **kw)
                            expected = np.zeros_like(_array(pil))
                        else:
                            expected = _array(op(pil, *theirs, **kw))
                        got = ours.apply(_array(pil), [(name, args)])
                        diff = np.abs(got.astype(int) - expected).max()
                        assert diff == 0, f"{name}{args} on {key} ({interpolation}): max difference {diff}"


def _chi_square_same(ours: collections.Counter, theirs: collections.Counter, what: str) -> None:
    """Two-sample chi-square test of equal category frequencies (cells with < 5 expected
    pooled). A category only one side draws (a wrong op list) fails it outright."""
    from scipy import stats

    keys = sorted(set(ours) | set(theirs), key=str)
    table = np.asarray([[ours[k] for k in keys], [theirs[k] for k in keys]], float)
    only = [k for k in keys if (ours[k] == 0) != (theirs[k] == 0) and max(ours[k], theirs[k]) >= 10]
    assert not only, f"{what}: drawn on one side only: {only}"
    expected = table.sum(0) / 2
    rare = expected < 5
    if rare.any():
        table = np.column_stack([table[:, ~rare], table[:, rare].sum(1)])
    _, p, _, _ = stats.chi2_contingency(table)
    # p < 1e-4 by chance once in 10,000 runs; the seeds are fixed, so it is deterministic.
    assert p > 1e-4, f"{what}: chi-square p = {p:.2g} over {len(keys)} categories"


def _record_torchvision(autoaugment, transform, pil, draws):
    calls = []
    real = autoaugment._apply_op
    autoaugment._apply_op = lambda img, name, magnitude, **kw: (
        calls.append((name, round(magnitude, 4))) or img
    )
    try:
        per_draw = []
        for _ in range(draws):
            before = len(calls)
            transform(pil)
            per_draw.append(tuple(calls[before:]))
    finally:
        autoaugment._apply_op = real
    return per_draw


@pytest.mark.parametrize("policy", ["trivialaugment", "autoaugment"])
def test_sampling_matches_torchvisions(policy):
    autoaugment, _ = _torchvision()
    import torch

    torch.manual_seed(0)
    pil = Image.new("RGB", (176, 176))
    transform = autoaugment.TrivialAugmentWide() if policy == "trivialaugment" else autoaugment.AutoAugment()
    theirs = _record_torchvision(autoaugment, transform, pil, DRAWS)
    rng = np.random.default_rng(0)
    ours = [
        tuple((n, round(a[0], 4)) for n, a in policies.Policy(policy).sample(rng, 176, 176))
        for _ in range(DRAWS)
    ]
    flat = lambda draws: [op for ops in draws for op in ops]  # noqa: E731
    _chi_square_same(
        collections.Counter(n for n, _ in flat(ours)),
        collections.Counter(n for n, _ in flat(theirs)),
        "op choice",
    )
    _chi_square_same(
        collections.Counter(flat(ours)), collections.Counter(flat(theirs)), "(op, signed magnitude)"
    )
    _chi_square_same(
        collections.Counter(map(len, ours)), collections.Counter(map(len, theirs)), "ops per image"
    )
    # The test fails on a wrong op list: one op more (AutoAugment's Invert) or one fewer.
    names = sorted({n for n, _ in flat(theirs)})
    extra = "Invert" if "Invert" not in names else "Identity"
    for wrong in ([*names, extra], names[1:]):
        drawn = collections.Counter(rng.choice(wrong, len(flat(theirs))).tolist())
        with pytest.raises(AssertionError):
            _chi_square_same(drawn, collections.Counter(n for n, _ in flat(theirs)), "a wrong op list")


def test_randaugment_sampling_matches_timms():
    pytest.importorskip("torch")
    auto_augment = pytest.importorskip("timm.data.auto_augment")
    random.seed(0)
    np.random.seed(0)
    transform = auto_augment.rand_augment_transform("rand-m7-mstd0.5-inc1", {"img_mean": (124, 116, 104)})
    calls = []
    for op in transform.ops:
        op.aug_fn = lambda img, *args, _name=op.name, **kw: calls.append((_name, args)) or img
    pil = Image.new("RGB", (64, 64))
    theirs = []
    for _ in range(DRAWS):
        before = len(calls)
        transform(pil)
        theirs.append(tuple(calls[before:]))
    rng = np.random.default_rng(0)
    ours = [
        tuple(policies.Policy("randaugment", magnitude=7, magnitude_std=0.5).sample(rng, 64, 64))
        for _ in range(DRAWS)
    ]
    flat = lambda draws: [op for ops in draws for op in ops]  # noqa: E731
    _chi_square_same(
        collections.Counter(map(len, ours)), collections.Counter(map(len, theirs)), "ops per image"
    )
    _chi_square_same(
        collections.Counter(n for n, _ in flat(ours)),
        collections.Counter(n for n, _ in flat(theirs)),
        "op choice",
    )
    from scipy import stats

    # Magnitudes: per op, the distribution of each argument (continuous: Kolmogorov-Smirnov;
    # integers such as posterize bits: chi-square).
    for name in policies.TIMM_OPS:
        a = [args for n, args in flat(ours) if n == name]
        b = [args for n, args in flat(theirs) if n == name]
        if not a or not a[0]:
            continue
        a, b = np.asarray(a, float)[:, 0], np.asarray(b, float)[:, 0]
        if np.all(a == np.round(a)):
            _chi_square_same(collections.Counter(a.tolist()), collections.Counter(b.tolist()), name)
        else:
            assert stats.ks_2samp(a, b).pvalue > 1e-4, name
            assert abs(np.mean(np.sign(a)) - np.mean(np.sign(b))) < 0.1, f"{name}: signs"


def test_random_erasing_draws_torchvisions_boxes():
    _torchvision()
    import torch
    import torchvision.transforms as transforms
    from scipy import stats

    torch.manual_seed(0)
    h, w = 176, 176
    image = torch.zeros(3, h, w)
    theirs, applied = [], 0
    erase = transforms.RandomErasing(p=0.5)
    for _ in range(DRAWS):
        if torch.rand(1) < erase.p:
            applied += 1
            i, j, eh, ew, _ = erase.get_params(image, scale=erase.scale, ratio=erase.ratio, value=[0.0])
            if eh < h:  # not the "no box fits" return
                theirs.append((i, j, eh, ew))
    ours_erase = erasing.RandomErasing(0.5)
    rng = np.random.default_rng(0)
    ours = [b for b in (ours_erase.window(rng, h, w) for _ in range(DRAWS)) if b is not None]
    assert abs(len(ours) - applied) < 4 * math.sqrt(DRAWS * 0.25), (len(ours), applied)
    ours, theirs = np.asarray(ours, float), np.asarray(theirs, float)
    for what, a, b in (
        ("area fraction", ours[:, 2] * ours[:, 3] / (h * w), theirs[:, 2] * theirs[:, 3] / (h * w)),
        ("log aspect (h / w)", np.log(ours[:, 2] / ours[:, 3]), np.log(theirs[:, 2] / theirs[:, 3])),
        ("centre row", ours[:, 0] + ours[:, 2] / 2, theirs[:, 0] + theirs[:, 2] / 2),
        ("centre column", ours[:, 1] + ours[:, 3] / 2, theirs[:, 1] + theirs[:, 3] / 2),
    ):
        assert stats.ks_2samp(a, b).pvalue > 1e-4, what
    # And the distribution test notices a transposed aspect (width / height): the boxes'
    # shapes are not symmetric in log space once they must fit.
    tall = ours[:, 2] > ours[:, 3]
    assert abs(tall.mean() - (theirs[:, 2] > theirs[:, 3]).mean()) < 0.03


def test_random_erasing_values():
    image = np.full((40, 50, 3), 7, np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    zero = erasing.RandomErasing(1.0, mean=mean, std=std)
    out = zero(image, np.random.default_rng(0))
    erased = np.any(out != 7, axis=-1)
    assert erased.any() and image.max() == 7, "the input must not change"
    rows, cols = np.flatnonzero(erased.any(1)), np.flatnonzero(erased.any(0))
    assert erased[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all(), "one rectangle"
    # value '0': the pixel that normalises to 0, (124, 116, 104) for ImageNet's mean.
    np.testing.assert_array_equal(out[erased], np.tile([124, 116, 104], (erased.sum(), 1)))
    noisy = erasing.RandomErasing(1.0, value="random", mean=mean, std=std)(image, np.random.default_rng(0))
    z = ((noisy[erased] / 255.0) - mean) / std
    # Normalised, the box is N(0, 1) noise (clipped beyond about +-2.1 by uint8).
    assert abs(np.median(z)) < 0.1 and 0.7 < np.std(z) < 1.0
    assert erasing.RandomErasing(0.0)(image, np.random.default_rng(0)) is image
    for bad, match in (
        (dict(probability=1.5), r"random_erasing=1.5 is a probability"),
        (dict(probability=0.1, value="noise"), r"random_erasing_value='noise'; valid: '0', 'random'"),
        (dict(probability=0.1, scale=(0.5, 0.1)), r"random_erasing_scale=\(0.5, 0.1\)"),
    ):
        with pytest.raises(ValueError, match=match):
            erasing.RandomErasing(**bad)


def test_policy_errors_name_the_value_and_the_choices():
    with pytest.raises(ValueError, match=r"unknown augmentation policy 'ta_wide'; valid: trivialaugment, "):
        policies.Policy("ta_wide")
    with pytest.raises(
        ValueError, match=r"unknown interpolation 'lanczos'; valid: nearest, bilinear, bicubic"
    ):
        policies.Policy("trivialaugment", interpolation="lanczos")
    with pytest.raises(ValueError, match=r"magnitude=12 must be in \[0, 10\]"):
        policies.Policy("randaugment", magnitude=12)


def test_policies_keep_shape_dtype_and_grayscale():
    rng = np.random.default_rng(0)
    for name in policies.POLICIES:
        for channels in (1, 3):
            image = rng.integers(0, 256, (24, 40, channels), dtype=np.uint8)
            # One fill value serves every channel (a config with one mean for RGB images).
            policy = policies.Policy(name, interpolation="bilinear", fill=(128,))
            for _ in range(30):
                out = policy(image, rng)
                assert out.shape == image.shape and out.dtype == np.uint8
