"""Input pipeline on grain: sources, the reproducible and resumable train stream (grain
iterator state), per-process sharding, worker processes, and exact-once eval.

Tests that need TensorFlow (TFDS's mock data, and preparing a TFDS dataset) are marked
``prepare``: they belong to the optional preparation extra and skip without it."""

import collections
import importlib
import io
import pathlib
import subprocess
import sys

import numpy as np
import psutil
import pytest
from PIL import Image

from train import settings
from train.configs import default
from train.input_pipeline import batching

HERE = pathlib.Path(__file__).resolve().parent


def _config(**overrides):
    config = default.get_config()
    config.update(overrides)
    return config


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_digits_split_and_shapes():
    data = batching.create_data(settings.data(_config()))
    assert (data.num_train, data.num_eval, data.num_classes) == (1437, 360, 10)
    assert data.image_shape == (8, 8, 1) and data.steps_per_epoch == 1437 // 64
    batch = next(data.train_iterator())
    assert batch["image"].shape == (64, 8, 8, 1) and batch["image"].dtype == np.uint8  # normalised on device
    assert batch["label"].dtype == np.int32 and set(batch["label"]) <= set(range(10))


def test_train_stream_is_seeded_and_resumes_from_the_iterator_state():
    config = _config(augment="cifar", crop_padding=2)
    data = batching.create_data(settings.data(config))
    stream = data.train_iterator()
    states, first = [], []
    for _ in range(data.steps_per_epoch + 3):  # crosses an epoch
        states.append(stream.get_state())
        first.append(next(stream))
    for start in (5, data.steps_per_epoch, data.steps_per_epoch + 2):
        resumed = batching.create_data(settings.data(config)).train_iterator()
        resumed.set_state(states[start])
        batch = next(resumed)
        np.testing.assert_array_equal(batch["image"], first[start]["image"])
        np.testing.assert_array_equal(batch["label"], first[start]["label"])
    # Every epoch holds each example once (whole batches only: 1437 // 64 * 64 of them)...
    epoch = np.concatenate([b["label"] for b in first[: data.steps_per_epoch]])
    assert len(epoch) == 22 * 64
    # ...epochs are reshuffled, and another seed gives another order.
    assert not np.array_equal(first[0]["label"], first[data.steps_per_epoch]["label"])
    other = next(
        batching.create_data(settings.data(_config(augment="cifar", crop_padding=2, seed=1))).train_iterator()
    )
    assert not np.array_equal(other["label"], first[0]["label"])


def test_an_epoch_is_a_permutation_of_the_split():
    data = batching.create_data(settings.data(_config(batch_size=479)))  # 1437 = 3 * 479: nothing dropped
    images = np.concatenate([b["image"] for b in _take(data.train_iterator(), 3)])
    split = data.source.splits["train"].images
    key = lambda a: sorted(x.tobytes() for x in a)  # noqa: E731
    assert key(images) == key(split)


def test_worker_processes_yield_the_same_stream_and_resume_it(monkeypatch):
    config = _config(augment="cifar", input_threads=1)
    reference = _take(batching.create_data(settings.data(config)).train_iterator(), 6)
    config.input_workers = 2
    data = batching.create_data(settings.data(config))
    stream = data.train_iterator()
    got = _take(stream, 3)
    state = stream.get_state()
    got += _take(stream, 3)
    resumed = data.train_iterator()
    resumed.set_state(state)
    got_resumed = _take(resumed, 3)
    for a, b in zip(got + got_resumed, reference + reference[3:]):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    workers = [p for p in psutil.Process().children() if "spawn_main" in " ".join(p.cmdline())]
    assert len(workers) == 4  # 2 per iterator
    # Closing the iterators ends their workers at once (the trainer closes its own).
    stream.close()
    resumed.close()
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in workers)


def test_a_worker_ends_when_its_parent_is_killed():
    # A trainer killed with SIGKILL runs no cleanup: its grain workers must notice on their own.
    worker = subprocess.Popen(
        [sys.executable, "-c", EXIT_WITH_PARENT], cwd=HERE.parent, stdout=subprocess.PIPE, text=True
    )
    pid = int(worker.stdout.readline())
    assert psutil.Process(pid).is_running()
    worker.kill()
    worker.wait()
    assert psutil.wait_procs([psutil.Process(pid)], timeout=5)[1] == []


# A parent that starts a child running exit_with_parent, prints the child's pid once it
# watches, and sleeps.
EXIT_WITH_PARENT = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", (
    "import time; from train.input_pipeline import batching; "
    f"batching.exit_with_parent({os.getpid()}, 0, 1, poll_s=0.05); print('watching', flush=True); "
    "time.sleep(300)"
)], stdout=subprocess.PIPE, text=True)
assert child.stdout.readline().strip() == "watching"
print(child.pid, flush=True)
time.sleep(300)
"""


def test_each_process_gets_its_part_of_the_same_global_batch(monkeypatch):
    config = _config(augment="cifar")
    global_batches = _take(batching.create_data(settings.data(config)).train_iterator(), 8)
    monkeypatch.setattr(batching, "jax_process_count", lambda: 2)
    for index in (0, 1):
        monkeypatch.setattr(batching, "jax_process_index", lambda index=index: index)
        part = _take(batching.create_data(settings.data(config)).train_iterator(), 8)[7]
        assert part["image"].shape == (32, 8, 8, 1)
        # Same examples, same augmentation: process p holds every other example.
        np.testing.assert_array_equal(part["image"], global_batches[7]["image"][index::2])
        np.testing.assert_array_equal(part["label"], global_batches[7]["label"][index::2])


@pytest.mark.parametrize("processes", [1, 2])
def test_eval_covers_the_split_exactly_once(monkeypatch, processes):
    config = _config(eval_batch_size=48)  # 360 = 7 * 48 + 24: the last batch is partial
    monkeypatch.setattr(batching, "jax_process_count", lambda: processes)
    seen = []
    for index in range(processes):
        monkeypatch.setattr(batching, "jax_process_index", lambda index=index: index)
        data = batching.create_data(settings.data(config))
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
    data = batching.create_data(settings.data(_config(validation_examples=237)))
    assert (data.num_train, data.num_eval) == (1200, 237)
    assert (data.train_split, data.eval_split) == ("train[:1200]", "train[1200:]")
    held_out = np.concatenate([b["image"][b["mask"] == 1] for b in data.eval_batches()])
    np.testing.assert_array_equal(held_out, data.source.splits["train"].images[1200:])


def test_bad_values_name_the_choices():
    with pytest.raises(ValueError, match=r"no split 'valid'; valid: train, test"):
        batching.create_data(settings.data(_config(eval_split="valid")))
    with pytest.raises(
        ValueError,
        match=r"unknown augment 'autoaugment'; valid: none, cifar, imagenet \('autoaugment' is a "
        r"policy that follows the crop: set --config.auto_augment=autoaugment",
    ):
        batching.create_data(settings.data(_config(augment="autoaugment")))
    for field, value, match in (
        ("auto_augment", "ta_wide", r"unknown auto_augment 'ta_wide'; valid: '' \(none\), trivialaugment, "),
        ("interpolation", "lanczos", r"unknown interpolation 'lanczos'; valid: bilinear, bicubic"),
        ("repeated_augmentations", 0, r"repeated_augmentations=0 must be >= 1"),
        ("random_erasing", 1.5, r"random_erasing=1.5 is a probability"),
        ("random_erasing_value", "noise", r"random_erasing_value='noise'; valid: '0', 'random'"),
        ("train_image_size", -1, r"train_image_size=-1 must be >= 0"),
    ):
        with pytest.raises(ValueError, match=match):
            batching.create_data(settings.data(_config(**{field: value})))
    with pytest.raises(ValueError, match=r"randaugment magnitude=11.0 must be in \[0, 10\]"):
        batching.create_data(settings.data(_config(auto_augment="randaugment", randaugment_magnitude=11.0)))
    with pytest.raises(ValueError, match=r"input_workers=-1 must be >= 0"):
        batching.create_data(settings.data(_config(input_workers=-1)))


def test_unknown_dataset_suggests_close_names():
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar11'; did you mean .*'cifar10'"):
        batching.create_data(settings.data(_config(dataset="cifar11")))


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
    (odd / "notes.txt").write_text("not an image, not listed")
    (root / "test" / "cat" / "empty.png").write_bytes(b"")


def _jpeg(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG")
    return buf.getvalue()


def test_image_folder_converts_odd_images_and_skips_bad_ones_when_read(tmp_path):
    _write_folder(tmp_path)
    config = _config(dataset="image_folder", data_dir=str(tmp_path), image_size=16, batch_size=4, mean=(0.5,))
    data = batching.create_data(settings.data(config))
    assert data.source.class_names == ["cat", "dog"]
    # Listed, not decoded: the two bad files are found when read.
    assert (data.num_train, data.num_eval) == (8 + 4, 4 + 1)
    labels = data.source.splits["train"].labels
    assert list(labels) == [0] * 4 + [1] * 8
    batches = _take(data.train_iterator(), 3)  # one epoch
    assert all(b["image"].shape == (4, 16, 16, 3) and b["image"].dtype == np.uint8 for b in batches)
    train = data.source.splits["train"]
    skipped = {train.path(i) for b in batches for i in b["skipped"] if i >= 0}
    assert skipped == {str(tmp_path / "train" / "dog" / "corrupt.jpg")}
    # Evaluation leaves its bad file out; the trainer records the train batches' finds.
    assert sum(b["mask"].sum() for b in data.eval_batches()) == 4  # empty.png masked out
    for b in batches:
        data.undecodable.add("train", b["skipped"])
    assert data.undecodable.summary() == {
        "train": [str(tmp_path / "train" / "dog" / "corrupt.jpg")],
        "test": [str(tmp_path / "test" / "cat" / "empty.png")],
    }
    # A subset of classes is renumbered from 0.
    only_dog = batching.create_data(settings.data(_config(**{**config.to_dict(), "classes": (1,)})))
    assert only_dog.source.class_names == ["dog"] and only_dog.num_train == 8
    assert list(only_dog.source.splits["train"].labels) == [0] * 8
    # All decodable images are 12x10 (their headers say), so without image_size that is
    # the input size.
    config.image_size = 0
    assert batching.create_data(settings.data(config)).image_shape == (12, 10, 3)
    (tmp_path / "train" / "cat" / "big.jpg").write_bytes(_jpeg(np.zeros((20, 20, 3), np.uint8)))
    with pytest.raises(ValueError, match=r"varying sizes; set --config\.image_size"):
        batching.create_data(settings.data(config))


def test_image_folder_errors(tmp_path):
    with pytest.raises(ValueError, match=r"needs --config\.data_dir"):
        batching.create_data(settings.data(_config(dataset="image_folder")))
    with pytest.raises(ValueError, match="is not a directory"):
        batching.create_data(
            settings.data(_config(dataset="image_folder", data_dir=str(tmp_path / "missing")))
        )
    (tmp_path / "test" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"has no train/ subfolder; found: \['test'\]"):
        batching.create_data(settings.data(_config(dataset="image_folder", data_dir=str(tmp_path))))


def test_imagenet_augmentation_through_an_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in ("a", "b"):
            (tmp_path / split / label).mkdir(parents=True)
            for i in range(3):
                h, w = rng.integers(40, 90, 2)
                image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                (tmp_path / split / label / f"{i}.jpg").write_bytes(_jpeg(image))
    config = _config(
        dataset="image_folder", data_dir=str(tmp_path), augment="imagenet", image_size=32, batch_size=6
    )
    data = batching.create_data(settings.data(config))
    assert data.source.image_shape == (None, None, 3)
    batch = next(data.train_iterator())
    assert batch["image"].shape == (6, 32, 32, 3)
    evals = list(data.eval_batches())
    assert len(evals) == 1 and evals[0]["image"].shape == (6, 32, 32, 3) and evals[0]["mask"].sum() == 6
    # The V2 recipe's shape, scaled down: train crops smaller than eval's resize-then-crop,
    # with a policy, random erasing and bicubic resizes.
    config.update(
        train_image_size=24, eval_resize_size=36, interpolation="bicubic", auto_augment="trivialaugment",
        random_erasing=0.5, repeated_augmentations=2,
    )  # fmt: skip
    data = batching.create_data(settings.data(config))
    assert (data.train_image_shape, data.image_shape) == ((24, 24, 3), (32, 32, 3))
    assert next(data.train_iterator())["image"].shape == (6, 24, 24, 3)
    assert next(data.eval_batches())["image"].shape == (6, 32, 32, 3)


def test_repeated_augmentation_on_two_processes(monkeypatch):
    """k=4 on 2 processes: in each round of 4 epochs every example appears exactly 4 times,
    its 4 copies side by side in the global stream (so 2 on each process), each augmented
    differently; each epoch holds a quarter of the examples, 4 times each."""
    k, processes = 4, 2
    monkeypatch.setattr(batching, "jax_process_count", lambda: processes)
    state = {"index": 0}
    monkeypatch.setattr(batching, "jax_process_index", lambda: state["index"])
    plain = _config(repeated_augmentations=k)
    data = batching.create_data(settings.data(plain))
    epoch = data.steps_per_epoch * plain.batch_size  # 22 * 64 = 1408 of 1437 examples
    round_batches = k * data.steps_per_epoch

    def read(config):
        out = {}
        for index in range(processes):
            state["index"] = index
            stream = batching.create_data(settings.data(config)).train_iterator()
            for b in range(round_batches):
                batch = next(stream)
                for i, (image, label) in enumerate(zip(batch["image"], batch["label"])):
                    out[b * config.batch_size + index + processes * i] = (image, int(label))
        return [out[j] for j in range(len(out))]

    stream = read(plain)
    assert len(stream) == k * epoch
    keys = [image.tobytes() for image, _ in stream]
    # Copies come in groups of k consecutive positions...
    for g in range(0, len(keys), k):
        assert len(set(keys[g : g + k])) == 1, f"positions {g}..{g + k - 1} are not one example"
    # ...and the round is the epoch's examples, each exactly k times.
    split = data.source.splits["train"].images
    counts = collections.Counter(keys)
    assert sorted(counts.values()) == [k] * (len(counts)) and sum(counts.values()) == k * epoch
    assert set(counts) <= {x.tobytes() for x in split}
    # Each epoch: a quarter of the examples (352 = 1408 / 4), k times each.
    for e in range(k):
        part = collections.Counter(keys[e * epoch : (e + 1) * epoch])
        assert set(part.values()) == {k} and len(part) == epoch // k
    # Augmented, the k copies of each example all differ.
    augmented = read(_config(repeated_augmentations=k, augment="cifar", auto_augment="trivialaugment",
                             random_erasing=0.25))  # fmt: skip
    distinct = []
    for g in range(0, len(augmented), k):
        assert {label for _, label in augmented[g : g + k]} == {stream[g][1]}
        distinct.append(len({image.tobytes() for image, _ in augmented[g : g + k]}))
    # Two 8x8 copies can still coincide by chance (the same of 81 crops and the same flip,
    # with TrivialAugment's identity or a weak op: about 1e-3 a pair), or both come out
    # blank (a shift of 8 pixels or more): 96% of the groups have 4 different images here.
    assert np.mean(np.asarray(distinct) == k) > 0.9
    # A process resumes mid-epoch from its iterator state to the same stream.
    config = _config(repeated_augmentations=k, augment="cifar", auto_augment="trivialaugment")
    for index in range(processes):
        state["index"] = index
        stream = batching.create_data(settings.data(config)).train_iterator()
        for _ in range(30):
            next(stream)
        saved = stream.get_state()
        expected = [next(stream) for _ in range(3)]
        resumed = batching.create_data(settings.data(config)).train_iterator()
        resumed.set_state(saved)
        for want in expected:
            np.testing.assert_array_equal(next(resumed)["image"], want["image"])
    # What makes them differ: each copy's augmentation draws from its own generator
    # (grain's, seeded by the copy's position). Its first draw, per copy:
    monkeypatch.setattr(batching.Transform, "__call__", lambda self, record, rng=None: {
        "image": np.full((8, 8, 1), 0, np.uint8) + rng.integers(2**31, size=(8, 8, 1)).astype(np.uint8),
        "label": np.int32(record["label"]),
    })  # fmt: skip
    draws = read(_config(repeated_augmentations=k, augment="cifar"))
    for g in range(0, len(draws), k):
        assert len({image.tobytes() for image, _ in draws[g : g + k]}) == k


# -- TFDS: these need TensorFlow, for the mock data or to prepare the dataset -------------


def _tf_or_skip():
    return pytest.importorskip("tensorflow", reason="the optional TFDS preparation extra: .[prepare]")


@pytest.mark.prepare
def test_tfds_arrayrecord_source_reads_a_prepared_dataset(tmp_path):
    _tf_or_skip()
    importlib.import_module("tiny_tfds").prepare(tmp_path)  # tests/tiny_tfds
    config = _config(dataset="tiny_digits", data_dir=str(tmp_path), batch_size=16, augment="cifar")
    data = batching.create_data(settings.data(config))
    assert (data.num_train, data.num_eval, data.num_classes, data.image_shape) == (160, 40, 10, (8, 8, 1))
    batch = next(data.train_iterator())
    assert batch["image"].shape == (16, 8, 8, 1) and batch["image"].dtype == np.uint8
    assert sum(b["mask"].sum() for b in data.eval_batches()) == 40


@pytest.mark.prepare
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
    _tf_or_skip()
    import tensorflow_datasets as tfds

    config = importlib.import_module(f"train.configs.{name}").get_config()
    config.update(batch_size=8, input_workers=0)
    if name == "imagenet_resnet50":
        config.image_size = 64  # mock images have random sizes; inception crop to 64
    with tfds.testing.mock_data(num_examples=24):
        data = batching.create_data(settings.data(config))
        batch = next(data.train_iterator())
        eval_count = sum(b["mask"].sum() for b in data.eval_batches())
    assert batch["image"].shape == (8, *shape)
    assert eval_count == 24


def test_every_config_documents_its_command():
    names = sorted(p.stem for p in (HERE.parent / "train" / "configs").glob("*.py") if p.stem != "__init__")
    assert names == [
        "cifar10", "cifar100_wrn28_10", "cifar10_tv2", "default", "finetune_cifar",
        "finetune_imagenet_resnet50", "image_folder", "imagenet_resnet50", "imagenet_resnet50_tv2",
        "linear_probe", "mnist", "rsb", "rsb_a1", "rsb_a2", "rsb_a3",
    ]  # fmt: skip
    for name in names:
        module = importlib.import_module(f"train.configs.{name}")
        assert module.__doc__.startswith("python -m train.main"), name
        module.get_config().lock()  # builds, and every field is plain data


def test_a_failed_preparation_names_its_real_cause_first_on_one_line(monkeypatch):
    # A package missing from TFDS's builder is named as such, not blamed on the network;
    # a network error comes first, with the offline hint after it, on the same line.
    import types

    import tensorflow_datasets as tfds

    from train.input_pipeline import datasets

    class Unprepared:
        data_dir = "/data/cifar10/3.0.2"

        def __init__(self, error):
            self.error = error

        def is_prepared(self):
            return False

        def download_and_prepare(self, download_config):
            raise self.error

    monkeypatch.setitem(sys.modules, "tensorflow", types.ModuleType("tensorflow"))  # as if installed
    missing = ModuleNotFoundError("No module named 'importlib_resources'", name="importlib_resources")
    offline = ConnectionError(
        "Max retries exceeded with url: /~kriz/cifar-10-binary.tar.gz\n(name resolution)"
    )
    for error, expected in (
        (missing, "its builder needs the module 'importlib_resources', which is not installed; pip install"),
        (
            offline,
            "3.0.2': Max retries exceeded with url: /~kriz/cifar-10-binary.tar.gz (name resolution). "
            "Offline?",
        ),
    ):
        monkeypatch.setattr(tfds, "builder", lambda *a, error=error, **k: Unprepared(error))
        with pytest.raises(RuntimeError) as info:
            datasets.tfds_source("cifar10", "", "")
        message = str(info.value)
        assert message.startswith("could not prepare TFDS dataset 'cifar10' in '/data/cifar10/3.0.2': ")
        assert expected in message and "\n" not in message, message
        assert ("Offline?" in message) == (error is offline)
