"""Input pipeline: preprocessing functions (eagerly and inside tf.data), sources, the
reproducible and resumable train stream, per-process sharding, and exact-once eval."""

import io

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from train import input_pipeline as ip
from train.configs import default

SEED = tf.constant([3, 7], tf.int64)


def _image(h=20, w=30, c=3, seed=0):
    return tf.constant(np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8))


def _in_tf_data(fn, image):
    """``fn`` applied inside a traced tf.data map, to compare with the eager result."""
    ds = tf.data.Dataset.from_tensors(image).map(fn)
    return next(iter(ds.as_numpy_iterator()))


def test_pad_and_random_crop_is_a_window_of_the_padded_image():
    image = _image()
    crop = ip.pad_and_random_crop(image, 4, SEED).numpy()
    assert crop.shape == (20, 30, 3)
    padded = np.pad(image.numpy(), ((4, 4), (4, 4), (0, 0)))
    windows = [
        (dy, dx)
        for dy in range(9)
        for dx in range(9)
        if np.array_equal(padded[dy : dy + 20, dx : dx + 30], crop)
    ]
    assert windows, "the crop is not a window of the zero-padded image"
    # Same seed, same crop, eagerly and inside tf.data; another seed moves it.
    np.testing.assert_array_equal(_in_tf_data(lambda x: ip.pad_and_random_crop(x, 4, SEED), image), crop)
    others = {
        ip.pad_and_random_crop(image, 4, tf.constant([s, 0], tf.int64)).numpy().tobytes() for s in range(8)
    }
    assert len(others) > 1


def test_random_flip_flips_half_the_seeds():
    image = _image()
    flipped = 0
    for s in range(40):
        out = ip.random_flip(image, tf.constant([s, 1], tf.int64)).numpy()
        if np.array_equal(out, image.numpy()[:, ::-1]):
            flipped += 1
        else:
            np.testing.assert_array_equal(out, image.numpy())
    assert 10 <= flipped <= 30


def test_resize_skips_same_size_and_keeps_dtype():
    image = _image(16, 16)
    np.testing.assert_array_equal(ip.resize(image, 16).numpy(), image.numpy())
    out = ip.resize(image, 8)
    assert out.shape == (8, 8, 3) and out.dtype == tf.uint8


def test_inception_crop_and_center_crop_shapes_and_tf_data_equivalence():
    image = _image(60, 90)
    crop = ip.inception_crop(image, 32, SEED)
    assert crop.shape == (32, 32, 3) and crop.dtype == tf.uint8
    np.testing.assert_array_equal(_in_tf_data(lambda x: ip.inception_crop(x, 32, SEED), image), crop.numpy())
    centre = ip.resize_and_center_crop(image, 48)
    assert centre.shape == (48, 48, 3)
    # A constant image stays constant under resize and crop.
    flat = tf.fill([60, 90, 3], tf.constant(100, tf.uint8))
    np.testing.assert_allclose(ip.resize_and_center_crop(flat, 48).numpy(), 100.0, atol=1e-3)
    # Resize to 48/0.875 = 54.9 -> 55 on the short side; the crop is its central 48.
    ramp = tf.constant(np.tile(np.arange(90, dtype=np.uint8)[None, :, None], (60, 1, 3)))
    out = ip.resize_and_center_crop(ramp, 48).numpy()[0, :, 0]
    assert np.all(np.diff(out) > 0) and abs(out.mean() - 44.5) < 1.0


def test_decode_converts_grayscale_rgba_and_cmyk_to_rgb():
    rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    for mode, fmt in (("L", "JPEG"), ("RGBA", "PNG"), ("CMYK", "JPEG"), ("RGB", "BMP")):
        buf = io.BytesIO()
        Image.fromarray(rgb).convert(mode).save(buf, fmt)
        out = ip.decode_image(tf.constant(buf.getvalue()), 3).numpy()
        assert out.shape == (8, 8, 3), mode
        reference = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), np.float32)
        assert np.abs(out - reference).mean() < 8.0, mode


def test_decode_and_inception_crop_equals_decode_then_crop():
    # JPEGs are decoded inside the crop window only: the pixels must be the same as a full
    # decode followed by the crop, for every mode; other formats take the full decode.
    rng = np.random.default_rng(1)
    smooth = np.kron(rng.integers(0, 256, (12, 16, 3)), np.ones((16, 16, 1))).astype(np.uint8)  # 192x256
    for mode, fmt in (("RGB", "JPEG"), ("L", "JPEG"), ("CMYK", "JPEG"), ("RGBA", "PNG")):
        buf = io.BytesIO()
        Image.fromarray(smooth).convert(mode).save(buf, fmt, quality=90)
        data = tf.constant(buf.getvalue())
        for seed, antialias in (([3, 4], True), ([5, 6], True), ([7, 8], False)):
            seed = tf.constant(seed, tf.int64)
            fused = ip.decode_and_inception_crop(data, 3, 64, seed, antialias).numpy()
            reference = ip.inception_crop(ip.decode_image(data, 3), 64, seed, antialias=antialias).numpy()
            assert fused.shape == (64, 64, 3) and fused.dtype == np.uint8
            np.testing.assert_array_equal(fused, reference, err_msg=f"{mode} {fmt} {antialias}")


def test_train_antialias_switches_the_filter_of_the_train_crop_only():
    # Shrinking noise 8x: the antialiased filter averages ~64 pixels into each output, plain
    # bilinear only ~4, so far more of the noise survives it.
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    image, seed = tf.constant(noise), tf.constant([1, 2], tf.int64)
    smooth = ip.inception_crop(image, 32, seed, area_range=(1.0, 1.0), aspect_ratio_range=(1.0, 1.0))
    sharp = ip.inception_crop(
        image, 32, seed, area_range=(1.0, 1.0), aspect_ratio_range=(1.0, 1.0), antialias=False
    )
    print(smooth.numpy().std(), sharp.numpy().std())
    assert smooth.numpy().std() < 15 and sharp.numpy().std() > 25
    kwargs = dict(augment="imagenet", image_size=32, padding=0, seed=seed)
    for train_antialias in (True, False):
        train = ip.preprocess(image, train=True, train_antialias=train_antialias, **kwargs)
        assert (train.numpy().std() > 20) != train_antialias
        # Evaluation keeps the antialiased resize either way.
        evaluation = ip.preprocess(image, train=False, train_antialias=train_antialias, **kwargs)
        assert evaluation.dtype == tf.uint8 and evaluation.numpy().std() < 15


def _config(**overrides):
    config = default.get_config()
    config.update(overrides)
    return config


def test_digits_split_and_shapes():
    data = ip.create_data(_config())
    assert (data.num_train, data.num_eval, data.num_classes) == (1437, 360, 10)
    assert data.image_shape == (8, 8, 1) and data.steps_per_epoch == 1437 // 64
    batch = next(data.train_batches())
    assert batch["image"].shape == (64, 8, 8, 1) and batch["image"].dtype == np.uint8  # normalised on device
    assert batch["label"].dtype == np.int32 and set(batch["label"]) <= set(range(10))


def test_train_stream_is_seeded_and_resumes_at_any_step():
    config = _config(augment="cifar", crop_padding=2)
    data = ip.create_data(config)
    stream = data.train_batches(0)
    first = [next(stream) for _ in range(data.steps_per_epoch + 3)]  # crosses an epoch
    for start in (5, data.steps_per_epoch, data.steps_per_epoch + 2):
        resumed = next(data.train_batches(start))
        np.testing.assert_array_equal(resumed["image"], first[start]["image"])
        np.testing.assert_array_equal(resumed["label"], first[start]["label"])
    # Epochs are reshuffled, and another seed gives another order.
    assert not np.array_equal(first[0]["label"], first[data.steps_per_epoch]["label"])
    other = next(ip.create_data(_config(augment="cifar", crop_padding=2, seed=1)).train_batches(0))
    assert not np.array_equal(other["label"], first[0]["label"])


def test_each_process_gets_its_part_of_the_same_global_batch(monkeypatch):
    config = _config(augment="cifar")
    global_batch = next(ip.create_data(config).train_batches(7))
    monkeypatch.setattr(ip, "jax_process_count", lambda: 2)
    parts = []
    for index in (0, 1):
        monkeypatch.setattr(ip, "jax_process_index", lambda index=index: index)
        parts.append(next(ip.create_data(config).train_batches(7)))
    for index, part in enumerate(parts):
        assert part["image"].shape == (32, 8, 8, 1)
        # Same examples, same augmentation: process p holds every other example.
        np.testing.assert_array_equal(part["image"], global_batch["image"][index::2])
        np.testing.assert_array_equal(part["label"], global_batch["label"][index::2])


def test_per_process_split_gives_each_process_its_own_slice(monkeypatch):
    config = _config(per_process_split=True, batch_size=32)
    monkeypatch.setattr(ip, "jax_process_count", lambda: 2)
    seen = []
    for index in (0, 1):
        monkeypatch.setattr(ip, "jax_process_index", lambda index=index: index)
        data = ip.create_data(config)
        stream = data.train_batches(0)
        epoch = [next(stream) for _ in range(data.steps_per_epoch)]  # 44 steps of 16 per process
        seen.append({b["image"][i].tobytes() for b in epoch for i in range(16)})
        # Resuming mid-epoch gives the same batch here too.
        np.testing.assert_array_equal(next(data.train_batches(5))["image"], epoch[5]["image"])
    assert len(seen[0]) == len(seen[1]) == 44 * 16
    assert not seen[0] & seen[1]  # disjoint slices


@pytest.mark.parametrize("processes", [1, 2])
def test_eval_covers_the_split_exactly_once(monkeypatch, processes):
    config = _config(eval_batch_size=48)  # 360 = 7 * 48 + 24: the last batch is partial
    monkeypatch.setattr(ip, "jax_process_count", lambda: processes)
    seen = []
    for index in range(processes):
        monkeypatch.setattr(ip, "jax_process_index", lambda index=index: index)
        data = ip.create_data(config)
        batches = list(data.eval_batches())
        assert len(batches) == data.eval_steps  # the same count on every process
        for b in batches:
            assert b["image"].shape[0] == 48 // processes
            real = b["mask"] == 1
            assert np.all(b["mask"][: real.sum()] == 1), "padding comes last"
            seen.extend((b["image"][i].tobytes(), int(b["label"][i])) for i in np.flatnonzero(real))
    assert len(seen) == 360
    # The same 360 examples as the unpadded split itself.
    images, labels = _digits_test_split()
    assert sorted(seen) == sorted((x.tobytes(), int(y)) for x, y in zip(images, labels))


def _digits_test_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # as the pipeline yields it
    _, x_test, _, y_test = train_test_split(
        x, digits.target, test_size=0.2, random_state=0, stratify=digits.target
    )
    return x_test, y_test


def test_validation_split_holds_out_the_end_of_train():
    data = ip.create_data(_config(validation_examples=237))
    assert (data.num_train, data.num_eval) == (1200, 237)
    assert (data.train_split, data.eval_split) == ("train[:1200]", "train[1200:]")


def test_unknown_dataset_and_split_name_the_choices():
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar11'; did you mean .*'cifar10'"):
        ip.create_data(_config(dataset="cifar11"))
    with pytest.raises(ValueError, match=r"no split 'valid'; valid: train, test"):
        ip.create_data(_config(eval_split="valid"))
    with pytest.raises(ValueError, match=r"unknown augment 'autoaugment'; valid: none, cifar, imagenet"):
        ip.create_data(_config(augment="autoaugment"))


def _write_folder(root):
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 4), ("test", 2)):
        for label in ("cat", "dog"):
            d = root / split / label
            d.mkdir(parents=True)
            for i in range(per_class):
                array = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
                Image.fromarray(array).save(d / f"{i}.jpg")
    odd = root / "train" / "dog"
    Image.fromarray(rng.integers(0, 256, (12, 10), dtype=np.uint8), "L").save(odd / "gray.jpg")
    Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).convert("CMYK").save(odd / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 256, (12, 10, 4), dtype=np.uint8), "RGBA").save(odd / "alpha.png")
    (odd / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (root / "test" / "cat" / "empty.png").write_bytes(b"")


def test_image_folder_converts_odd_images_and_counts_bad_ones(tmp_path):
    _write_folder(tmp_path)
    config = _config(dataset="image_folder", data_dir=str(tmp_path), image_size=16, batch_size=4, mean=(0.5,))
    data = ip.create_data(config)
    assert data.source.class_names == ["cat", "dog"]
    assert (data.num_train, data.num_eval) == (8 + 3, 4)  # gray, CMYK and RGBA kept
    assert {s: [p.rsplit("/", 1)[-1] for p in v] for s, v in data.source.skipped.items()} == {
        "train": ["corrupt.jpg"],
        "test": ["empty.png"],
    }
    batch = next(data.train_batches())
    assert batch["image"].shape == (4, 16, 16, 3)
    assert sum(b["mask"].sum() for b in data.eval_batches()) == 4
    # The fast listing is TFDS's own: same files, labels and order as its as_dataset.
    builder = tfds.ImageFolder(str(tmp_path))
    for split in ("train", "test"):
        ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
        listing = ds.map(lambda r: (r["image/filename"], r["label"])).as_numpy_iterator()
        pairs = [(f.decode(), int(y)) for f, y in listing]
        assert list(zip(*ip._folder_listing(builder, split))) == pairs
        # A TFDS without the _split_examples attribute takes the as_dataset route: same answer.
        bare = type("Bare", (), {"info": builder.info, "as_dataset": staticmethod(builder.as_dataset)})()
        assert list(zip(*ip._folder_listing(bare, split))) == pairs
    # All decodable images are 12x10, so without image_size that is the input size.
    config.image_size = 0
    assert ip.create_data(config).image_shape == (12, 10, 3)
    (tmp_path / "train" / "cat" / "big.jpg").write_bytes(_jpeg(np.zeros((20, 20, 3), np.uint8)))
    with pytest.raises(ValueError, match=r"varying sizes; set --config\.image_size"):
        ip.create_data(config)


def _jpeg(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG")
    return buf.getvalue()


def test_image_folder_errors(tmp_path):
    with pytest.raises(ValueError, match=r"needs --config\.data_dir"):
        ip.create_data(_config(dataset="image_folder"))
    with pytest.raises(ValueError, match="is not a directory"):
        ip.create_data(_config(dataset="image_folder", data_dir=str(tmp_path / "missing")))


@pytest.mark.parametrize(
    "name,shape",
    [
        ("mnist", (28, 28, 1)),
        ("cifar10", (32, 32, 3)),
        ("cifar100_wrn28_10", (32, 32, 3)),
        ("imagenet_resnet50", (64, 64, 3)),
    ],
)
def test_tfds_configs_on_mock_data(name, shape):
    # TFDS's mock data (random examples, no download) through each TFDS config's pipeline.
    import importlib

    import tensorflow_datasets as tfds

    config = importlib.import_module(f"train.configs.{name}").get_config()
    config.batch_size = 8
    if name == "imagenet_resnet50":
        config.image_size = 64  # mock images have random sizes; inception crop to 64
    with tfds.testing.mock_data(num_examples=24):
        data = ip.create_data(config)
        batch = next(data.train_batches())
        eval_count = sum(b["mask"].sum() for b in data.eval_batches())
    assert batch["image"].shape == (8, *shape)
    assert np.isfinite(batch["image"]).all()
    assert eval_count == 24


def test_every_config_documents_its_command():
    import importlib
    import pathlib

    names = sorted(
        p.stem
        for p in pathlib.Path(ip.__file__).parent.joinpath("configs").glob("*.py")
        if p.stem != "__init__"
    )
    assert names == [
        "cifar10", "cifar100_wrn28_10", "default", "finetune_cifar", "finetune_imagenet_resnet50",
        "image_folder", "imagenet_resnet50", "linear_probe", "mnist",
    ]  # fmt: skip
    for name in names:
        module = importlib.import_module(f"train.configs.{name}")
        assert module.__doc__.startswith("python -m train.main"), name
        module.get_config().lock()  # builds, and every field is plain data
