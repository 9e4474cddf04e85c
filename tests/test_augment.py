"""Decoding and augmentation of one image: each function alone, their output statistics,
and the ImageNet crop against torchvision's RandomResizedCrop."""

import io
import sys
import types

import numpy as np
import pytest
from PIL import Image

from resnet_jax import preprocessing
from resnet_jax.preprocessing import decode_image
from train.input_pipeline import augment


def _image(h=20, w=30, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def _encode(array, fmt="JPEG", mode=None, **kw):
    buf = io.BytesIO()
    pil = Image.fromarray(array)
    (pil.convert(mode) if mode else pil).save(buf, fmt, **kw)
    return buf.getvalue()


def test_pad_and_random_crop_windows_are_uniform_and_keep_the_expected_mean():
    image = _image()
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
    counts = np.zeros((9, 9), int)
    rng = np.random.default_rng(0)
    for _ in range(1800):
        crop = augment.pad_and_random_crop(image, 4, rng)
        assert crop.shape == (20, 30, 3)
        hits = [
            (dy, dx)
            for dy in range(9)
            for dx in range(9)
            if np.array_equal(padded[dy : dy + 20, dx : dx + 30], crop)
        ]
        assert len(hits) == 1, "the crop is not a window of the zero-padded image"
        counts[hits[0]] += 1
    # Each of the 81 windows is equally likely: ~22 draws each.
    assert counts.min() >= 8 and counts.max() <= 40, counts
    # The statistics the padding implies: a constant image keeps, on average, the fraction
    # of pixels that the shifted window still covers, E[(32 - |d - 4|) / 32]^2.
    flat = np.full((32, 32, 3), 200, np.uint8)
    means = [augment.pad_and_random_crop(flat, 4, rng).mean() for _ in range(4000)]
    expected = 200 * np.mean([(32 - abs(d - 4)) / 32 for d in range(9)]) ** 2
    assert abs(np.mean(means) - expected) < 0.5, (np.mean(means), expected)


def test_random_flip_flips_half_the_time():
    image, rng = _image(), np.random.default_rng(1)
    flipped = 0
    for _ in range(400):
        out = augment.random_flip(image, rng)
        if np.array_equal(out, image[:, ::-1]):
            flipped += 1
        else:
            np.testing.assert_array_equal(out, image)
    assert 160 <= flipped <= 240


def test_resize_skips_same_size_keeps_dtype_and_switches_filter():
    image = _image(16, 16)
    assert preprocessing.resize(image, (16, 16)) is image
    for antialias in (True, False):
        out = preprocessing.resize(image, (8, 12), antialias)
        assert out.shape == (8, 12, 3) and out.dtype == np.uint8
    gray = _image(16, 16, 1)
    assert preprocessing.resize(gray, (8, 8)).shape == (8, 8, 1)
    assert preprocessing.resize(gray, (8, 8), antialias=False).shape == (8, 8, 1)
    # Shrinking noise 8x: the antialiased filter averages ~64 pixels into each output, plain
    # bilinear only ~4, so far more of the noise survives it.
    noise = _image(256, 256)
    assert preprocessing.resize(noise, (32, 32), True).std() < 15
    assert preprocessing.resize(noise, (32, 32), False).std() > 25


def test_resize_and_center_crop():
    centre = preprocessing.resize_and_center_crop(_image(60, 90), 48)
    assert centre.shape == (48, 48, 3) and centre.dtype == np.uint8
    flat = np.full((60, 90, 3), 100, np.uint8)
    np.testing.assert_array_equal(preprocessing.resize_and_center_crop(flat, 48), 100)
    # Resize to 48/0.875 = 54.9 -> 55 on the short side; the crop is its central 48.
    ramp = np.tile(np.arange(90, dtype=np.uint8)[None, :, None], (60, 1, 3))
    out = preprocessing.resize_and_center_crop(ramp, 48)[0, :, 0].astype(float)
    assert np.all(np.diff(out) > 0) and abs(out.mean() - 44.5) < 1.0


def test_decode_converts_grayscale_rgba_and_cmyk():
    rgb = _image(8, 8)
    for mode, fmt in (("RGB", "JPEG"), ("L", "JPEG"), ("RGBA", "PNG"), ("CMYK", "JPEG"), ("RGB", "BMP")):
        data = _encode(rgb, fmt, mode)
        out = decode_image(data, 3)
        assert out.shape == (8, 8, 3) and out.dtype == np.uint8, mode
        reference = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float32)
        assert np.abs(out - reference).mean() < 2.0, mode
        assert decode_image(data, 1).shape == (8, 8, 1), mode
    for bad in (b"", b"\xff\xd8\xff\xe0 this is not a jpeg", b"GIF89a"):
        with pytest.raises(ValueError, match="not a decodable image"):
            decode_image(bad, 3)


def test_preprocess_shapes_and_errors():
    rng = np.random.default_rng(0)
    image = _image(60, 90)
    # preprocess takes its crop as one augment.Crop (it took its fields one by one before).
    crop = augment.Crop(augment="imagenet", image_size=32, padding=0)
    assert augment.preprocess(image, crop, train=True, rng=rng).shape == (32, 32, 3)
    assert augment.preprocess(image, crop, train=False).shape == (32, 32, 3)
    small = _image(8, 8)
    cifar_crop = augment.Crop(augment="cifar", image_size=0, padding=2)
    cifar = augment.preprocess(small, cifar_crop, train=True, rng=rng)
    assert cifar.shape == (8, 8, 3)
    np.testing.assert_array_equal(augment.preprocess(small, cifar_crop, train=False), small)
    with pytest.raises(ValueError, match=r"unknown augment 'autoaugment'; valid: none, cifar, imagenet"):
        augment.Crop(augment="autoaugment", image_size=0, padding=0)


def _torchvision_transforms():
    pytest.importorskip("torch")
    # torchvision's compiled ops do not load with the CPU torch build; its transforms do.
    sys.modules.setdefault(
        "torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations")
    )
    return pytest.importorskip("torchvision.transforms")


def test_inception_crop_draws_torchvisions_distribution_and_pixels():
    transforms = _torchvision_transforms()
    import torch

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    h, w = 375, 500
    ours = np.asarray([augment.inception_crop_window(h, w, rng) for _ in range(4000)], float)
    theirs = np.asarray(
        [
            transforms.RandomResizedCrop.get_params(torch.empty(3, h, w), [0.08, 1.0], [3 / 4, 4 / 3])
            for _ in range(4000)
        ],
        float,
    )
    for name, a, b in (
        ("area fraction", ours[:, 2] * ours[:, 3] / (h * w), theirs[:, 2] * theirs[:, 3] / (h * w)),
        ("log aspect ratio", np.log(ours[:, 3] / ours[:, 2]), np.log(theirs[:, 3] / theirs[:, 2])),
        ("centre row", ours[:, 0] + ours[:, 2] / 2, theirs[:, 0] + theirs[:, 2] / 2),
        ("centre column", ours[:, 1] + ours[:, 3] / 2, theirs[:, 1] + theirs[:, 3] / 2),
    ):
        spread = np.std(b)
        assert abs(np.mean(a) - np.mean(b)) < 0.05 * spread, name
        for q in (0.1, 0.5, 0.9):
            assert abs(np.quantile(a, q) - np.quantile(b, q)) < 0.08 * spread, (name, q)
    assert ours[:, 2].min() >= 1 and (ours[:, 0] + ours[:, 2]).max() <= h
    # Given the same window, the antialiased crop is torchvision's resized_crop, pixel for pixel.
    image = np.asarray(Image.fromarray(_image(40, 50)).resize((500, 375), Image.BICUBIC))
    functional = pytest.importorskip("torchvision.transforms.functional")
    for seed in range(5):
        top, left, ch, cw = augment.inception_crop_window(h, w, np.random.default_rng(seed))
        ours_pixels = preprocessing.resize(image, (224, 224), True, box=(top, left, ch, cw))
        reference = functional.resized_crop(Image.fromarray(image), top, left, ch, cw, [224, 224])
        np.testing.assert_array_equal(ours_pixels, np.asarray(reference))


def test_inception_crop_falls_back_to_a_centre_crop_of_extreme_images():
    # A 1x100 strip has no window of 8% area within the ratio range: torchvision's fallback
    # takes the whole height and the widest width the ratio range allows, centred.
    assert augment.inception_crop_window(1, 100, np.random.default_rng(0)) == (0, 49, 1, 1)
    assert augment.inception_crop_window(100, 100, np.random.default_rng(0), area_range=(2.0, 2.0)) == (
        0, 0, 100, 100,
    )  # fmt: skip


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_train_crop_and_eval_resize_equal_torchvisions(interpolation):
    """The V2 recipe's sizes: RandomResizedCrop(176) for training, Resize(232) +
    CenterCrop(224) for evaluation, bilinear or bicubic, pixel for pixel (both run PIL)."""
    transforms = _torchvision_transforms()
    functional = transforms.functional
    mode = getattr(transforms.InterpolationMode, interpolation.upper())
    rng = np.random.default_rng(0)
    for h, w in ((375, 500), (500, 333), (301, 457), (200, 150)):
        image = np.asarray(Image.fromarray(_image(h // 10, w // 10, seed=h)).resize((w, h), Image.BICUBIC))
        top, left, ch, cw = augment.inception_crop_window(h, w, rng)
        ours = preprocessing.resize(
            image, (176, 176), True, box=(top, left, ch, cw), interpolation=interpolation
        )
        theirs = functional.resized_crop(Image.fromarray(image), top, left, ch, cw, [176, 176], mode)
        np.testing.assert_array_equal(ours, np.asarray(theirs))
        for size, resize_size in ((224, 232), (224, 0), (176, 200)):
            ours = preprocessing.resize_and_center_crop(image, size, resize_size, interpolation)
            reference = transforms.Compose(
                [transforms.Resize(resize_size or int(size / 0.875), mode), transforms.CenterCrop(size)]
            )(Image.fromarray(image))
            what = f"{h}x{w}, crop {size}, resize {resize_size}"
            np.testing.assert_array_equal(ours, np.asarray(reference), err_msg=what)
    # A resize below the crop size pads with zeros, as CenterCrop does.
    small = preprocessing.resize_and_center_crop(_image(20, 30), 32, 24, interpolation)
    reference = transforms.Compose([transforms.Resize(24, mode), transforms.CenterCrop(32)])(
        Image.fromarray(_image(20, 30))
    )
    np.testing.assert_array_equal(small, np.asarray(reference))
