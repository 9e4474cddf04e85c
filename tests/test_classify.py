"""One call from images to class names: the preprocessing of each weights entry equals
torchvision's ``weights.transforms()`` on real JPEGs, ``classify`` gives torchvision's
top-5 end to end, and a raw-input export artifact gives ``classify``'s probabilities in
a process without resnet_jax or Flax.

The photographs are scikit-learn's two (``load_sample_images``: china.jpg and
flower.jpg, 427x640), crops of them re-encoded as JPEGs, and CIFAR-10 JPEGs from
``../shared/datasets`` upscaled to photo sizes (more crops when that file is absent).
"""

import json
import os
import pathlib
import subprocess
import sys
import tarfile

import cli
import jax
import numpy as np
import pytest
from PIL import Image

import resnet_jax
import resnet_jax.sources
from resnet_jax import (
    classes,
    classifier,
    convert,
    export,
    pil_resize,
    predict,
    preprocessing,
    weights,
    workdirs,
)
from resnet_jax.preprocessing import Preprocessing

CIFAR = pathlib.Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
NUM_PHOTOS = 24


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """24 real JPEG files of varying sizes and aspect ratios."""
    import sklearn.datasets

    root = tmp_path_factory.mktemp("photos")
    folder = pathlib.Path(sklearn.datasets.__file__).parent / "images"
    paths = []
    for name in ("china.jpg", "flower.jpg"):
        paths.append(root / name)
        paths[-1].write_bytes((folder / name).read_bytes())
    rng = np.random.default_rng(0)
    pictures = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    cifar = []
    if CIFAR.exists():
        with tarfile.open(CIFAR) as tar:
            for i, member in enumerate(tar):
                if member.isfile() and i % 37 == 0:
                    cifar.append(Image.open(tar.extractfile(member)).convert("RGB"))
                if len(cifar) == 12:
                    break
    for i in range(NUM_PHOTOS - len(paths)):
        h, w = (int(v) for v in rng.integers(180, 420, size=2))
        if i < len(cifar):  # a CIFAR-10 photo, upscaled
            image = cifar[i].resize((w, h), Image.BICUBIC)
        else:  # a crop of a photograph
            picture = pictures[i % 2]
            top, left = rng.integers(0, 427 - min(h, 427) + 1), rng.integers(0, 640 - w + 1)
            image = Image.fromarray(picture[top : top + h, left : left + w])
        paths.append(root / f"photo{i}.jpg")
        image.save(paths[-1], quality=90)
    return paths


def test_imagenet_class_names_are_torchvisions_and_the_ids_timms():
    from torch_reference import tv_models

    assert classes.imagenet_classes() == tv_models.ResNet50_Weights.IMAGENET1K_V2.meta["categories"]
    assert weights.get_weights("resnet50", "torchvision_v1").categories == classes.imagenet_classes()
    timm = pytest.importorskip("timm")
    synsets = pathlib.Path(timm.__file__).parent / "data" / "_info" / "imagenet_synsets.txt"
    assert classes.imagenet_wnids() == synsets.read_text().split()


@pytest.mark.parametrize(
    "tag,enum", [("torchvision_v1", "IMAGENET1K_V1"), ("torchvision_v2", "IMAGENET1K_V2")]
)
def test_preprocessing_equals_torchvisions_weights_transforms(photos, tag, enum):
    from torch_reference import torch, tv_models

    ours = weights.get_weights("resnet50", tag).preprocessing
    transforms = getattr(tv_models.ResNet50_Weights, enum).transforms()
    assert (ours.resize_size, ours.size[0]) == (transforms.resize_size[0], transforms.crop_size[0])
    assert ours.interpolation == transforms.interpolation.value and transforms.antialias
    std = np.asarray(transforms.std)
    worst = {"PIL image": 0.0, "uint8 tensor": 0.0}
    for path in photos:
        pixels = classifier.read_image(str(path))
        mine = ours(pixels)
        with Image.open(path) as pil:
            theirs = transforms(pil.convert("RGB")).permute(1, 2, 0).numpy()
        tensor = transforms(torch.from_numpy(pixels.copy()).permute(2, 0, 1)).permute(1, 2, 0).numpy()
        assert mine.shape == theirs.shape == (224, 224, 3)
        # Differences in [0, 1] pixel units: the normalised difference times the std.
        worst["PIL image"] = max(worst["PIL image"], float((np.abs(mine - theirs) * std).max()))
        worst["uint8 tensor"] = max(worst["uint8 tensor"], float((np.abs(mine - tensor) * std).max()))
    print(f"\n{tag} on {len(photos)} JPEGs: max |ours - torchvision| x std, in 1/255: ", end="")
    print({k: round(v * 255, 4) for k, v in worst.items()})
    # The PIL path runs the same PIL resize: only float32 rounding of the normalisation
    # differs. torch's own uint8 antialiased resize rounds differently from PIL's, by at
    # most one level; the bound.
    assert worst["PIL image"] < 1e-5
    assert worst["uint8 tensor"] <= 1 / 255 + 1e-6


def test_classify_gives_torchvisions_top5_end_to_end(photos, tmp_path):
    from torch_reference import randomize, torch, tv_models

    paths = [str(p) for p in photos]
    transforms = tv_models.ResNet50_Weights.IMAGENET1K_V2.transforms()
    batch = torch.stack([transforms(Image.open(p).convert("RGB")) for p in paths])
    # BatchNorm calibrated on these photographs: statistics measured on noise leave one
    # class on top for every photograph.
    torch.manual_seed(0)
    net = randomize(tv_models.resnet50(), seed=7, images=batch)
    entry = weights.get_weights("resnet50", "torchvision_v2")  # resize 232, crop 224
    convert.save(convert.from_torchvision(net.state_dict(), "resnet50"), entry.__dict__, tmp_path / "r50")
    ours = resnet_jax.Classifier.load(str(tmp_path / "r50")).probabilities(paths, batch_size=8)
    with torch.no_grad():
        theirs = torch.softmax(net(batch), -1).numpy()
    top_ours, top_theirs = np.argsort(-ours, -1)[:, :5], np.argsort(-theirs, -1)[:, :5]
    print(
        f"\nResNet-50 on {len(paths)} JPEGs: top-5 equal for {int((top_ours == top_theirs).all(1).sum())}; "
        f"max |p diff| {np.abs(ours - theirs).max():.1e}; top-1 classes {sorted(set(top_theirs[:, 0]))}"
    )
    assert len(paths) >= 20
    assert len(set(top_theirs[:, 0])) > 1  # the outputs depend on the image
    np.testing.assert_array_equal(top_ours, top_theirs)
    names = resnet_jax.classify(paths[:2], weights=str(tmp_path / "r50"), top=5)
    assert [[n for n, _ in row] for row in names] == [
        [entry.categories[i] for i in r] for r in top_theirs[:2]
    ]


@pytest.mark.parametrize(
    "name,size,resize",
    [("resnet10t.c3_in1k", 224, 235), ("resnet18.a1_in1k", 288, 288)],  # crop_pct 0.95 and 1.0
)
def test_a_timm_hub_folder_converts_with_its_preprocessing_and_classifies_as_timm(
    photos, tmp_path, capsys, name, size, resize
):
    # A timm model saved as the Hub serves it (config.json beside model.safetensors):
    # its pretrained_cfg's test size, crop_pct and bicubic resize reach the converted
    # folder, and classify then preprocesses as timm's resolve_data_config(use_test_size)
    # + create_transform(is_training=False) and ranks as timm's model does.
    from torch_reference import randomize, torch

    timm = pytest.importorskip("timm")
    from timm.data import create_transform, resolve_data_config

    net = timm.create_model(name, pretrained=False)
    data_config = resolve_data_config(pretrained_cfg=net.pretrained_cfg, use_test_size=True)
    transform = create_transform(**data_config, is_training=False)
    paths = [str(p) for p in photos]
    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    randomize(net, seed=8, images=batch)
    timm.models.save_for_hf(net, str(tmp_path / "hub"), safe_serialization=True)
    convert_main = __import__("resnet_jax.convert.__main__", fromlist=["main"]).main
    convert_main(["--source=timm", f"--weights={tmp_path / 'hub'}", f"--out={tmp_path / 'out'}"])
    assert f"resize {resize} (bicubic), centre crop {size}" in capsys.readouterr().out
    loaded = resnet_jax.Classifier.load(str(tmp_path / "out"))
    prep = loaded.preprocessing
    assert (prep.size, prep.resize_size, prep.interpolation) == ((size, size), resize, "bicubic")
    std, worst = np.asarray(data_config["std"]), 0.0
    for path, theirs in zip(paths, batch.permute(0, 2, 3, 1).numpy()):
        worst = max(worst, float((np.abs(prep(classifier.read_image(path)) - theirs) * std).max()))
    print(f"\n{name}: max |ours - timm| x std on {len(paths)} JPEGs: {worst * 255:.4f} / 255")
    assert worst <= 1 / 255 + 1e-6  # PIL's bicubic both ways: float32 rounding only
    ours = loaded.probabilities(paths, batch_size=8)
    with torch.no_grad():
        theirs = torch.softmax(net(batch), -1).numpy()
    top_theirs = np.argsort(-theirs, -1)[:, :5]
    assert len(set(top_theirs[:, 0])) > 1  # the outputs depend on the image
    np.testing.assert_array_equal(np.argsort(-ours, -1)[:, :5], top_theirs)


FRESH_PROCESS = """
import json, sys
import numpy as np
import jax
from PIL import Image

artifact, out, *paths = sys.argv[1:]
with open(artifact + ".json") as f:
    meta = json.load(f)
with open(artifact, "rb") as f:
    forward = jax.export.deserialize(bytearray(f.read()))
images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
assert images.dtype == meta["input"]["dtype"] and list(images.shape[1:]) == meta["input"]["shape"][1:]
probabilities = np.concatenate([np.asarray(forward.call(images[:1])), np.asarray(forward.call(images[1:]))])
assert not [m for m in sys.modules if m.split(".")[0] in ("resnet_jax", "flax", "torch")]
np.save(out, probabilities)
print(meta["output"]["meaning"], meta["class_names"][:2])
"""


def test_raw_input_artifact_in_a_fresh_process_matches_classify(photos, tmp_path, capsys):
    from torch_reference import randomize, tv_models

    net = randomize(tv_models.resnet18(), seed=8)
    entry = weights.get_weights("resnet18", "torchvision_v1")
    convert.save(convert.from_torchvision(net.state_dict(), "resnet18"), entry.__dict__, tmp_path / "r18")
    artifact = str(tmp_path / "r18.jaxexport")
    flags = ["--raw-input=300x400", "--output=probabilities", "--platforms=cpu"]
    export.main([f"--weights={tmp_path / 'r18'}", f"--out={artifact}", *flags])
    assert "input (batch x 300 x 400 x 3) uint8, output probabilities" in capsys.readouterr().out
    paths = []
    for i, photo in enumerate(photos[:6]):  # PNG: the fresh process decodes the same pixels
        with Image.open(photo) as pil:
            paths.append(str(tmp_path / f"{i}.png"))
            pil.convert("RGB").resize((400, 300), Image.BILINEAR).save(paths[-1])

    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    run = [sys.executable, "-c", FRESH_PROCESS, artifact, str(tmp_path / "p.npy"), *paths]
    proc = subprocess.run(run, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[0] == "probabilities" and "'tench', 'goldfish'" in proc.stdout
    served = np.load(tmp_path / "p.npy")
    ours = resnet_jax.Classifier.load(str(tmp_path / "r18")).probabilities(paths)
    via_artifact = resnet_jax.Classifier.load(artifact).probabilities(paths)
    diffs = np.abs(served - ours).max(), np.abs(via_artifact - ours).max()
    print(
        f"\nraw-input artifact, batches of 1 and 5: max |p diff| {diffs[0]:.1e} (probabilities up to "
        f"{ours.max():.3f}); through Classifier.load: {diffs[1]:.1e}"
    )
    # The same pixels reach the same network (pil_resize is bit-equal to PIL); only XLA's
    # float32 summation orders of two compilations differ.
    np.testing.assert_allclose(served, ours, atol=1e-4, rtol=0)
    np.testing.assert_allclose(via_artifact, ours, atol=1e-4, rtol=0)
    assert ours.std(0).max() > 1e-3  # the probabilities depend on the image


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_pil_resize_in_a_graph_equals_pil_bit_for_bit(photos, interpolation):
    preps = [
        Preprocessing((224, 224), 256, interpolation),
        Preprocessing((64, 64), 73, interpolation),
        Preprocessing((24, 40), 0, interpolation),  # the whole image, squashed
    ]
    for path, prep in zip(photos[:6], preps * 2):
        pixels = classifier.read_image(str(path))
        expected = prep.crop(pixels)
        got = np.asarray(jax.jit(lambda x, p=prep: pil_resize.resize_crop(x, p))(pixels[None]))[0]
        np.testing.assert_array_equal(got, expected, err_msg=f"{path.name} {prep.describe()}")


@pytest.mark.parametrize(
    "fields",
    [
        dict(augment="imagenet", image_size=64, eval_resize_size=80, interpolation="bicubic"),
        dict(augment="imagenet", image_size=48, eval_resize_size=0, interpolation="bilinear"),
        dict(augment="cifar", image_size=40, eval_resize_size=0, interpolation="bilinear"),
    ],
)
def test_a_workdirs_preprocessing_is_its_evaluation_pipelines(photos, fields):
    # What the trainer's eval split does to an image (train.input_pipeline.augment), and
    # what serving its workdir does: the Preprocessing the trainer saves with each
    # checkpoint (augment.Crop.evaluation), and the one the library rebuilds from the saved
    # config of a checkpoint written before runs kept it (sources.legacy_preprocessing).
    from train.input_pipeline import augment

    config = {**fields, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
    crop = augment.Crop(
        augment=fields["augment"],
        image_size=fields["image_size"],
        padding=4,
        interpolation=fields["interpolation"],
        eval_resize_size=fields["eval_resize_size"],
    )
    size = fields["image_size"]
    prep = crop.evaluation((size, size, 3), tuple(config["mean"]), tuple(config["std"]))
    assert prep == resnet_jax.sources.legacy_preprocessing(config, None, 3)
    for path in photos[:4]:
        image = classifier.read_image(str(path))
        evaluated = augment.preprocess(image, crop, train=False)
        np.testing.assert_array_equal(prep.crop(image), evaluated)
        expected = np.asarray(
            preprocessing.normalize(jax.numpy.asarray(evaluated), config["mean"], config["std"])
        )
        np.testing.assert_allclose(prep(image), expected, rtol=0, atol=1e-6)
    digits = resnet_jax.sources.legacy_preprocessing({"augment": "none", "image_size": 0}, [8, 8, 1], 1)
    assert (digits.size, digits.resize_size, digits.channels) == ((8, 8), 0, 1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A converted resnet20 (random weights) that expects 32x32 RGB, and 3 class names."""
    model = resnet_jax.create_model("resnet20", num_classes=3)
    variables = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
    out = tmp_path_factory.mktemp("tiny") / "converted"
    meta = {"model": "resnet20", "crop_size": 32, "resize_size": 36, "class_names": ["ant", "bee", "cow"]}
    convert.save(variables, meta, out)
    return str(out)


def test_cli_table_json_and_a_folder(tiny, photos, capsys):
    predict.main([f"--weights={tiny}", str(photos[0].parent), "--top=2", "--batch-size=5"])
    lines = capsys.readouterr().out.splitlines()
    assert "resize 36 (bilinear, antialiased), centre crop 32" in lines[0]
    assert lines[1].split() == ["image", "rank", "probability", "class"]
    rows = [line.split() for line in lines[2:]]
    assert len(rows) == 2 * NUM_PHOTOS and {r[-2] for r in rows} <= {"ant", "bee", "cow"}
    predict.main([f"--weights={tiny}", str(photos[3]), str(photos[0]), "--json", "--top=3"])
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["image"] for r in records] == [str(photos[3]), str(photos[0])]
    top = records[0]["top"]
    assert sorted(t["name"] for t in top) == ["ant", "bee", "cow"]
    assert abs(sum(t["probability"] for t in top) - 1) < 1e-5
    # The one-call form, on a path, a PIL image and an array: one list per image.
    single = resnet_jax.classify(str(photos[3]), weights=tiny, top=1)
    assert single == [(top[0]["name"], pytest.approx(top[0]["probability"], abs=1e-6))]
    with Image.open(photos[3]) as pil:
        again = resnet_jax.classify([pil, np.asarray(pil)], weights=tiny, top=1)
    assert again == [single, single]


def test_cli_errors_name_the_file_or_the_source(tiny, photos, tmp_path, capsys):
    gray, empty = tmp_path / "gray.png", tmp_path / "empty"
    Image.fromarray(np.full((40, 50), 99, np.uint8)).save(gray)
    empty.mkdir()
    # A grayscale file is no error any more: every reader converts it as the trainer does
    # (to RGB for this RGB model), so it classifies as the same picture in RGB would.
    predict.main([f"--weights={tiny}", "--top=1", "--json", str(gray)])
    rgb = np.repeat(np.asarray(Image.open(gray))[..., None], 3, axis=-1)
    expected = classifier.Classifier.load(str(tiny))(rgb, top=1)[0]
    shown = json.loads(capsys.readouterr().out)["top"][0]
    assert (shown["name"], shown["probability"]) == (expected[0], pytest.approx(expected[1], abs=1e-6))
    cases = [
        ([f"--weights={tiny}", str(tmp_path / "nope.jpg")], f"{tmp_path / 'nope.jpg'}: no such file"),
        ([f"--weights={tiny}", str(empty)], f"{empty}: a folder with no image files"),
        (["--weights=/no/such/dir", str(photos[0])], "'/no/such/dir': no such file or directory, and not a"),
        (["--weights=torchvision_v2", str(photos[0])], "name the model, e.g. resnet50.torchvision_v2"),
        (
            [f"--weights={tmp_path}", str(photos[0])],
            "neither a workdir (no checkpoint in it) nor a converted",
        ),
        ([f"--weights={tiny}", str(photos[0]), "--top=0"], "--top=0: must be >= 1"),
    ]
    cli.assert_one_error_line_each(predict.main, cases, capsys)


def _shapes_and_modes(rng):
    """A square, a landscape, a portrait and an RGBA image, and a grayscale one."""
    return [
        rng.integers(0, 256, (24, 24, 3), np.uint8),
        rng.integers(0, 256, (30, 52, 3), np.uint8),
        rng.integers(0, 256, (52, 30, 3), np.uint8),
        Image.fromarray(rng.integers(0, 256, (40, 32, 4), np.uint8), "RGBA"),
        rng.integers(0, 256, (20, 28, 1), np.uint8),
    ]


def test_a_workdir_and_its_exports_classify_every_image_alike(tmp_path, tiny, capsys):
    # One preprocessing and one image policy: a workdir (which resizes its 24x24 images
    # whole) and its float and raw-input exports score square, landscape, portrait, RGBA
    # and grayscale images alike, as does a centre-cropping source (tiny: resize 36, crop
    # 32) and its raw-input export. Each pair runs the same float32 network on the same
    # uint8 crop; only XLA's fusion of the normalisation into the first convolution
    # differs (measured below 2e-7), far inside 1e-5.
    from train import train_lib
    from train.configs import default

    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 3)):
        for name in ("heron", "otter"):
            (tmp_path / "data" / split / name).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (24, 24, 3), np.uint8)).save(
                    tmp_path / "data" / split / name / f"{i}.jpg"
                )
    # A grayscale JPEG among them: the trainer reads it as RGB, and so must its workdir.
    gray = tmp_path / "data" / "train" / "otter" / "gray.jpg"
    Image.fromarray(rng.integers(0, 256, (24, 24), np.uint8), "L").save(gray)
    config = default.get_config()
    config.update(
        dataset="image_folder", data_dir=str(tmp_path / "data"), batch_size=8, num_train_steps=2,
        eval_every_steps=2, checkpoint_every_steps=2, ema_decay=0.5, mean=(0.5, 0.4, 0.3),
        std=(0.2, 0.2, 0.2),
    )  # fmt: skip
    workdir = str(tmp_path / "run")
    train_lib.train_and_evaluate(config, workdir)
    images, report = _shapes_and_modes(rng), []
    for source in (workdir, tiny):
        reference = classifier.Classifier.load(source).probabilities(images)
        flags = (["--raw-input"], []) if source == workdir else (["--raw-input"],)
        for extra in flags:
            artifact = tmp_path / f"{os.path.basename(source)}{len(extra)}.jaxexport"
            export.main([f"--weights={source}", f"--out={artifact}", "--platforms=cpu", *extra])
            served = classifier.Classifier.load(str(artifact)).probabilities(images)
            worst = float(np.abs(served - reference).max())
            report.append(f"{source} {extra or 'float'}: worst |p difference| {worst:.2e}")
            assert worst <= 1e-5, (source, extra)
    capsys.readouterr()
    with capsys.disabled():
        print("\n" + "\n".join(report))
    # The grayscale JPEG, through the workdir that trained on it: as the trainer decodes it.
    served = classifier.Classifier.load(workdir)
    from_file = served.probabilities([str(gray)])
    trainer_view = preprocessing.decode_image(gray.read_bytes(), 3)
    np.testing.assert_array_equal(from_file, served.probabilities([trainer_view]))
    assert served([str(gray)], top=1)[0][0][0] in ("heron", "otter")


def test_a_workdir_saved_before_runs_kept_their_preprocessing_still_serves(tmp_path, monkeypatch):
    # Checkpoints written before the trainer saved its evaluation Preprocessing (their run
    # item has none) are served with the one rebuilt from their saved config, which is the
    # same transform.
    from train import checkpointing, train_lib
    from train.configs import default

    config = default.get_config()
    config.update(num_train_steps=2, checkpoint_every_steps=2, eval_every_steps=2, image_size=12)
    train_lib.train_and_evaluate(config, str(tmp_path / "new"))
    with monkeypatch.context() as m:
        m.setattr(checkpointing.Checkpointer, "__setattr__", _keep_empty_preprocessing)
        train_lib.train_and_evaluate(config, str(tmp_path / "old"))
    for name, kept in (("new", True), ("old", False)):
        with workdirs.Workdir(str(tmp_path / name)) as workdir:
            assert bool(workdir.item(2, workdirs.RUN).get("preprocessing")) == kept
    new, old = (resnet_jax.sources.resolve(str(tmp_path / name)) for name in ("new", "old"))
    assert new.preprocessing == old.preprocessing
    assert new.preprocessing.size == (12, 12) and new.preprocessing.mean == (0.5,)


def _keep_empty_preprocessing(self, name, value):
    """A Checkpointer that saves no preprocessing, as those before this change did."""
    object.__setattr__(self, name, {} if name == "preprocessing" else value)
