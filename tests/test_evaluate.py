"""``python -m resnet_jax.evaluate`` and ``resnet_jax.evaluate_weights``: the counts of
torchvision's own evaluation loop, classes matched by WordNet id, the same counts on 1
and 8 devices, bad files skipped and named (by ``predict`` too), and one error line for
each kind of bad input."""

import json
import os
import pathlib
import subprocess
import sys
import tarfile

import cli
import jax
import numpy as np
import processes
import pytest
from PIL import Image

import resnet_jax
from resnet_jax import classes, convert, evaluate, evaluation, predict, weights

REPO = pathlib.Path(__file__).resolve().parents[1]
CIFAR = REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
CIFAR_CLASSES = ("airplane", "cat", "ship", "truck")
PER_CLASS = 12


def _cifar_photos(count_per_class, names=CIFAR_CLASSES):
    """{class: [PIL images]}: CIFAR-10 test JPEGs of ``names``."""
    if not CIFAR.exists():
        pytest.skip("needs ../shared/datasets/cifar10-jpeg.tar.gz")
    found = {n: [] for n in names}
    with tarfile.open(CIFAR) as tar:
        for member in tar:
            parts = member.name.split("/")
            name = parts[-2] if member.isfile() and "test" in parts else None
            if name in found and len(found[name]) < count_per_class:
                found[name].append(Image.open(tar.extractfile(member)).convert("RGB"))
            if all(len(v) == count_per_class for v in found.values()):
                return found
    raise AssertionError(f"too few CIFAR-10 test images: { ({k: len(v) for k, v in found.items()}) }")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A converted resnet20 (random weights) for 32x32 RGB, with 4 of CIFAR-10's names."""
    model = resnet_jax.create_model("resnet20", num_classes=4)
    variables = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
    out = tmp_path_factory.mktemp("tiny") / "converted"
    meta = {"model": "resnet20", "crop_size": 32, "resize_size": 36, "class_names": list(CIFAR_CLASSES)}
    convert.save(variables, meta, out)
    return str(out)


@pytest.fixture(scope="module")
def cifar_folder(tmp_path_factory):
    """37 CIFAR-10 JPEGs in 4 class folders: not a multiple of 8."""
    root = tmp_path_factory.mktemp("cifar")
    for name, images in _cifar_photos(10).items():
        (root / name).mkdir()
        for i, image in enumerate(images[: 7 if name == "truck" else 10]):
            image.save(root / name / f"{i}.jpg", quality=95)
    return root


def test_counts_and_loss_equal_torchvisions_own_evaluation_loop(tmp_path):
    # A torchvision ResNet-50 with random weights and BatchNorm calibrated on these
    # photographs (as the classify tests do), converted; 48 upscaled CIFAR-10 JPEGs in 4
    # WordNet-id class folders. The folders are named after the classes the network
    # itself ranks highest for each CIFAR class, so that top-1 and top-5 count some hits.
    from torch_reference import randomize, torch, torchvision, tv_models

    photos, rng = _cifar_photos(PER_CLASS), np.random.default_rng(0)
    flat = []
    for name, images in photos.items():
        for image in images:
            h, w = (int(v) for v in rng.integers(180, 320, size=2))
            flat.append((name, image.resize((w, h), Image.BICUBIC)))
    transforms = tv_models.ResNet50_Weights.IMAGENET1K_V2.transforms()
    batch = torch.stack([transforms(image) for _, image in flat])
    torch.manual_seed(0)
    net = randomize(tv_models.resnet50(), seed=11, images=batch)
    with torch.no_grad():
        logits = net(batch)
    votes = {}
    for (name, _), row in zip(flat, logits.topk(5, -1).indices.numpy()):
        votes.setdefault(name, []).extend(row.tolist())
    chosen = {}
    for name in CIFAR_CLASSES:  # each class's most voted ImageNet class not yet taken
        order = sorted(set(votes[name]), key=lambda c: (-votes[name].count(c), c))
        chosen[name] = next(c for c in order if c not in chosen.values())
    wnids = classes.imagenet_wnids()
    root = tmp_path / "val"
    for i, (name, image) in enumerate(flat):
        folder = root / wnids[chosen[name]]
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{i}.jpg", quality=90)

    # torchvision's loop: ImageFolder labels the sorted folders 0..3; the WordNet ids map
    # them onto the network's classes.
    dataset = torchvision.datasets.ImageFolder(str(root), transform=transforms)
    to_imagenet = torch.tensor([wnids.index(c) for c in dataset.classes])
    top1 = top5 = 0
    losses = []
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(dataset, batch_size=16):
            out, target = net(x), to_imagenet[y]
            ranked = out.topk(5, -1).indices
            top1 += int((ranked[:, 0] == target).sum())
            top5 += int((ranked == target[:, None]).any(-1).sum())
            losses.append(torch.nn.functional.cross_entropy(out, target, reduction="none"))
    loss = float(torch.cat(losses).mean())

    entry = weights.get_weights("resnet50", "torchvision_v2")
    convert.save(convert.from_torchvision(net.state_dict(), "resnet50"), entry.__dict__, tmp_path / "r50")
    ours = evaluation.evaluate_weights(str(tmp_path / "r50"), str(root), batch_size=16, progress=False)
    n = len(flat)
    print(
        f"\nResNet-50 on {n} JPEGs: torchvision top-1 {top1}, top-5 {top5}, loss {loss:.6f}; "
        f"ours top-1 {ours['top1'] * n / 100:.0f}, top-5 {ours['top5'] * n / 100:.0f}, "
        f"loss {ours['loss']:.6f}"
    )
    assert ours["images"] == n >= 40 and ours["matched_by"] == "WordNet id"
    assert 0 < top1 < top5 < n  # the counts say something
    assert round(ours["top1"] * n / 100) == top1 and round(ours["top5"] * n / 100) == top5
    # The same PIL resize and float32 network: the logits differ by float rounding only.
    assert abs(ours["loss"] - loss) < 1e-4


def _evaluate_json(argv, env=None):
    out = subprocess.run(
        [sys.executable, "-m", "resnet_jax.evaluate", *argv, "--json"],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, **(env or {})}, check=True,
    )  # fmt: skip
    return json.loads(out.stdout)


def test_one_and_eight_devices_count_alike_and_match_by_name(tiny, cifar_folder):
    # 37 images over 8 devices: a batch of 16 has its last one padded (37 = 2 * 16 + 5),
    # and each image still counts once.
    one = _evaluate_json([f"--weights={tiny}", str(cifar_folder), "--batch-size=16"])
    eight = _evaluate_json(
        [f"--weights={tiny}", str(cifar_folder), "--batch-size=12"],
        {"XLA_FLAGS": processes.xla_flags(8)},
    )
    assert (one["devices"], eight["devices"], eight["batch_size"]) == (1, 8, 16)
    assert one["images"] == eight["images"] == 37 and one["matched_by"] == "name"
    for key in ("top1", "top5"):
        assert one[key] == eight[key], key
    # The same network on the same crops, sharded: rounding of the sums differs at most.
    assert abs(one["loss"] - eight["loss"]) < 1e-5
    assert one["preprocessing"]["resize_size"] == 36 and one["crop_pct"] == round(32 / 36, 4)
    assert set(one["versions"]) >= {"jax", "flax", "python"}


def test_per_class_json_overrides_and_the_python_call(tiny, cifar_folder, tmp_path, capsys):
    results = tmp_path / "results.json"
    png = tmp_path / "confusion.png"
    argv = [f"--weights={tiny}", str(cifar_folder), "--per-class", f"--confusion-matrix={png}"]
    evaluate.main([*argv, f"--json={results}", "--crop-pct=1.0", "--interpolation=bicubic"])
    out = capsys.readouterr().out
    saved = json.loads(results.read_text())
    assert "worst 4 classes by top-1:" in out and f"images {saved['images']}" in out
    assert saved["preprocessing"]["resize_size"] == 32 and saved["interpolation"] == "bicubic"
    assert [r["images"] for r in sorted(saved["per_class"], key=lambda r: r["class"])] == [10, 10, 10, 7]
    assert np.asarray(saved["confusion"]).sum() == 37 and Image.open(png).size[0] > 100
    top1 = [r["top1"] for r in saved["per_class"]]
    assert top1 == sorted(top1)  # worst first
    again = resnet_jax.evaluate_weights(tiny, str(cifar_folder), crop_pct=1.0, interpolation="bicubic")
    assert {k: again[k] for k in ("top1", "top5", "images")} == {
        k: saved[k] for k in ("top1", "top5", "images")
    }
    # The weights' own preprocessing (resize 36) differs from crop_pct 1.0 in what it scores.
    own = resnet_jax.evaluate_weights(tiny, str(cifar_folder), image_size=32)
    assert own["preprocessing"]["resize_size"] == 36


def test_bad_files_are_skipped_named_and_counted_by_evaluate_and_predict(tiny, tmp_path, capsys):
    # A grayscale PNG (converted to RGB, as the trainer converts it), an RGBA PNG, a good
    # JPEG and a text file named .jpg: three scored, one named and counted, exit status 2.
    folder = tmp_path / "data" / "cat"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(np.full((30, 40), 90, np.uint8)).save(folder / "gray.png")
    Image.fromarray(rng.integers(0, 256, (30, 40, 4), np.uint8), "RGBA").save(folder / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (50, 40, 3), np.uint8)).save(folder / "good.jpg")
    (folder / "text.jpg").write_text("not an image")
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main([f"--weights={tiny}", str(tmp_path / "data")])
    captured = capsys.readouterr()
    assert exit_info.value.code == evaluate.SKIPPED_STATUS == 2
    assert f"skipped {folder / 'text.jpg'}: not a decodable image" in captured.err
    assert "images 3 " in captured.out and "1 images skipped" in captured.err
    with pytest.raises(SystemExit) as exit_info:
        predict.main([f"--weights={tiny}", str(folder), "--top=1", "--json"])
    captured = capsys.readouterr()
    assert exit_info.value.code == predict.SKIPPED_STATUS == 2
    scored = [json.loads(line)["image"] for line in captured.out.splitlines()]
    assert scored == [str(folder / n) for n in ("good.jpg", "gray.png", "rgba.png")]
    assert f"skipped {folder / 'text.jpg'}: " in captured.err and "1 of 4 images skipped" in captured.err
    # The Python call agrees: a folder gives {file: top}, the bad file skipped with a warning.
    with pytest.warns(UserWarning, match=r"skipped .*text\.jpg"):
        found = resnet_jax.classify(str(folder), weights=tiny, top=1)
    assert list(found) == scored
    with pytest.raises(ValueError, match="top=0"):
        resnet_jax.classify(str(folder / "good.jpg"), weights=tiny, top=0)
    with pytest.raises(FileNotFoundError, match=r"nope\.jpg: no such file"):
        resnet_jax.classify(str(folder / "nope.jpg"), weights=tiny)


def test_bad_input_is_one_error_line(tiny, cifar_folder, tmp_path, capsys):
    empty, loose, other = tmp_path / "empty", tmp_path / "loose", tmp_path / "other"
    empty.mkdir()
    loose.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(loose / "a.jpg")
    for name in ("cat", "dog", "zebra"):
        (other / name).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(other / name / "a.jpg")
    (tmp_path / "hollow" / "cat").mkdir(parents=True)
    w = f"--weights={tiny}"
    cases = [
        ([w, str(empty)], f"{empty} is empty: DATA must hold one folder per class"),
        ([w, str(loose)], "holds 1 image files but no class folder"),
        ([w, str(tmp_path / "hollow")], "its 1 class folders (cat) hold no image file"),
        ([w, str(tmp_path / "nope")], "nope: no such folder"),
        (
            [w, str(other)],
            "2 of the data's 3 classes are not among the weights' 4 class names: dog, zebra; 1 matched",
        ),
        ([w, str(cifar_folder), "--crop-pct=1.5"], "--crop-pct=1.5: must be in (0, 1]"),
        ([w, str(cifar_folder), "--crop-pct=0.9", "--resize=40"], "both set the resize: pass one"),
        (
            [w, str(cifar_folder), "--interpolation=nearest"],
            "--interpolation='nearest'; valid: bilinear, bicubic",
        ),
        ([w, str(cifar_folder), "--tfds=cifar10:test"], "pass one of DATA"),
        (
            [w, "--tfds=cifar_ten:test", f"--data-dir={tmp_path}"],
            "'cifar_ten' is not a TFDS dataset; did you mean",
        ),
        ([w, "--tfds=cifar10:test", f"--data-dir={tmp_path}"], f"cifar10 is not prepared in {tmp_path}"),
        ([w, str(cifar_folder), "--batch-size=0"], "--batch-size=0: must be >= 1"),
    ]
    cli.assert_one_error_line_each(evaluate.main, cases, capsys)


@pytest.mark.prepare
def test_a_tfds_split_scores_as_the_same_images_in_a_folder_without_tensorflow(tmp_path):
    pytest.importorskip("tensorflow", reason="the optional TFDS preparation extra: .[prepare]")
    import tiny_tfds  # tests/tiny_tfds: 8x8 grayscale digits, 40 in its test split

    tiny_tfds.prepare(tmp_path / "tfds")
    model = resnet_jax.create_model("resnet20", num_classes=10, in_channels=1)
    variables = jax.jit(model.init)(jax.random.key(1), np.zeros((1, 8, 8, 1), np.float32))
    meta = {"model": "resnet20", "crop_size": 8, "resize_size": 8, "mean": [0.5], "std": [0.25]}
    convert.save(variables, meta, tmp_path / "digits")
    argv = [f"--weights={tmp_path / 'digits'}", "--tfds=tiny_digits:test", f"--data-dir={tmp_path / 'tfds'}"]
    script = processes.BLOCK_TENSORFLOW + "from resnet_jax import evaluate\nevaluate.main(sys.argv[1:])\n"
    out = subprocess.run(
        [sys.executable, "-c", script, *argv, "--json"], capture_output=True, text=True, cwd=REPO,
        env={**os.environ, "EPATH_USE_TF": "false"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    from_tfds = json.loads(out.stdout)
    # The same 40 PNGs written to class folders 0..9 (the dataset's label names).
    import tensorflow_datasets as tfds

    for i, example in enumerate(
        tfds.data_source("tiny_digits", split="test", data_dir=str(tmp_path / "tfds"))
    ):
        folder = tmp_path / "folder" / str(example["label"])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(example["image"][..., 0]).save(folder / f"{i}.png")
    from_folder = evaluation.evaluate_weights(str(tmp_path / "digits"), str(tmp_path / "folder"))
    assert from_tfds["images"] == from_folder["images"] == 40
    for key in ("top1", "top5"):
        assert from_tfds[key] == from_folder[key]
    assert abs(from_tfds["loss"] - from_folder["loss"]) < 1e-6  # the same pixels, in another order


@pytest.mark.parametrize("raw", [False, True])
def test_an_export_artifact_evaluates_as_its_weights(tiny, cifar_folder, tmp_path, raw):
    # The float artifact is fed the same crops; the raw-input one takes uint8 images and
    # resizes and crops them in its graph (PIL's filter, bit for bit), so both count the
    # same hits as the converted weights they were exported from.
    from resnet_jax import export

    artifact = tmp_path / "tiny.jaxexport"
    export.main(
        [f"--weights={tiny}", f"--out={artifact}", "--platforms=cpu", *(["--raw-input"] if raw else [])]
    )
    served = evaluation.evaluate_weights(str(artifact), str(cifar_folder), batch_size=8)
    own = evaluation.evaluate_weights(tiny, str(cifar_folder), batch_size=8)
    assert (served["images"], served["top1"], served["top5"]) == (own["images"], own["top1"], own["top5"])
    assert abs(served["loss"] - own["loss"]) < 1e-4  # probabilities through a log, float32
    with pytest.raises(ValueError, match="--crop-pct: an export artifact's input is compiled in"):
        evaluation.evaluate_weights(str(artifact), str(cifar_folder), crop_pct=1.0)
