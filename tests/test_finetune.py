"""Fine-tuning: freeze specs, frozen parameters bitwise unchanged with no optimizer state,
per-group learning rates, and init_from across a change of head."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util

import resnet_jax
import resnet_jax.sources
from resnet_jax import convert, workdirs
from train import finetune, optim, settings, train_lib
from train.configs import default


@pytest.fixture(scope="module")
def params():
    model = resnet_jax.create_model("resnet20", num_classes=5)
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))["params"]


def _frozen(params, spec):
    return sorted("/".join(k) for k, v in optim.frozen_mask(params, spec).items() if v)


def test_freeze_specs(params):
    everything = {"/".join(k) for k in traverse_util.flatten_dict(params)}
    assert set(_frozen(params, "backbone")) == everything - {"head/kernel", "head/bias"}
    assert {p.split("/")[0] for p in _frozen(params, "stem,stage1")} == {
        "stem_conv", "stem_norm", "stage1_block1", "stage1_block2", "stage1_block3",
    }  # fmt: skip
    assert _frozen(params, r"stage3_block\d/conv2") == [f"stage3_block{i}/conv2/kernel" for i in (1, 2, 3)]
    assert _frozen(params, "") == []
    assert optim.frozen_parts(params, "backbone") == ("stage1", "stage2", "stage3", "stem")
    with pytest.raises(ValueError, match=r"freeze='stage9_\.\*' matches no parameter"):
        optim.frozen_mask(params, "stage9_.*")
    with pytest.raises(ValueError, match=r"freeze='\[' is neither 'backbone'"):
        optim.frozen_mask(params, "[")


def _optim(**overrides):
    """The optimizer settings of the default config with these fields, checked as a run checks them."""
    config = default.get_config()
    config.update(dict(momentum=0.9, weight_decay=1e-4), **overrides)
    return settings.optim(config)


def _real_params():
    model = resnet_jax.create_model("resnet20", num_classes=5)
    return jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))["params"]


def test_frozen_parameters_stay_bitwise_and_hold_no_optimizer_state():
    params = _real_params()
    tx = optim.create_optimizer(_optim(freeze="backbone"), optax.constant_schedule(0.1), params)
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    new = params
    for _ in range(3):
        updates, state = tx.update(grads, state, new)
        new = optax.apply_updates(new, updates)
    flat_old, flat_new = traverse_util.flatten_dict(params), traverse_util.flatten_dict(new)
    for k in flat_old:
        same = np.array_equal(np.asarray(flat_old[k]), np.asarray(flat_new[k]))
        assert same == (k[0] != "head"), k
    # Momentum buffers exist only for the head's two arrays.
    momentum = sum(x.size for x in jax.tree.leaves(state) if getattr(x, "ndim", 0) > 0)
    assert momentum == params["head"]["kernel"].size + params["head"]["bias"].size


def test_head_multiplier_and_layer_decay():
    params = _real_params()
    grads = jax.tree.map(jnp.ones_like, params)
    config = _optim(momentum=0.0, weight_decay=0.0, head_lr_multiplier=10.0, layer_decay=0.5)
    tx = optim.create_optimizer(config, optax.constant_schedule(0.1), params)
    updates, _ = tx.update(grads, tx.init(params), params)
    # head: 0.1 * 10; stage3: 0.1 * 0.5; stem: 0.1 * 0.5**4 (stem, stage1..3, head).
    # A few float32 products each (pytest.approx: 1e-6 relative, ~16 roundings of u = 6e-8).
    assert float(updates["head"]["bias"][0]) == pytest.approx(-1.0)
    assert float(updates["stage3_block1"]["conv1"]["kernel"].ravel()[0]) == pytest.approx(-0.05)
    assert float(updates["stem_conv"]["kernel"].ravel()[0]) == pytest.approx(-0.1 * 0.5**4)


def test_restore_reinitialises_a_new_head_and_refuses_other_mismatches(tmp_path):
    src_model = resnet_jax.create_model("resnet20", num_classes=10)
    src = jax.jit(src_model.init)(jax.random.key(1), jnp.zeros((1, 8, 8, 3)))
    convert.save(src, {"source": "test", "model": "resnet20", "weights": "-"}, str(tmp_path / "src"))
    dst = jax.jit(resnet_jax.create_model("resnet20", num_classes=5).init)(
        jax.random.key(2), jnp.zeros((1, 8, 8, 3))
    )
    params, stats, report = finetune.restore_from(str(tmp_path / "src"), dst["params"], dst["batch_stats"])
    print("\n" + report)
    assert "re-initialised 2" in report and "params/head/kernel (source (64, 10), model (64, 5))" in report
    np.testing.assert_array_equal(params["stem_conv"]["kernel"], src["params"]["stem_conv"]["kernel"])
    np.testing.assert_array_equal(
        stats["stage2_block1"]["norm1"]["var"], src["batch_stats"]["stage2_block1"]["norm1"]["var"]
    )
    np.testing.assert_array_equal(params["head"]["kernel"], dst["params"]["head"]["kernel"])
    gray = jax.jit(resnet_jax.create_model("resnet20", in_channels=1).init)(
        jax.random.key(3), jnp.zeros((1, 8, 8, 1))
    )
    with pytest.raises(
        ValueError,
        match=r"params/stem_conv/kernel has shape \(3, 3, 3, 16\) in the source but "
        r"\(3, 3, 1, 16\) in the model",
    ):
        finetune.restore_from(str(tmp_path / "src"), gray["params"], gray["batch_stats"])


def test_classify_and_init_from_a_workdir_start_from_the_same_weights(tmp_path):
    # One resolver (resnet_jax.sources.load) for --weights=WORKDIR and init_from=WORKDIR: a
    # run that kept an EMA gives its EMA weights to both, and each flag gives the live ones.
    config = default.get_config()
    config.update(num_train_steps=6, eval_every_steps=6, checkpoint_every_steps=6, ema_decay=0.5)
    train_lib.train_and_evaluate(config, str(tmp_path / "source"))
    ema, _ = workdirs.load_variables(str(tmp_path / "source"), ema=True)
    live, _ = workdirs.load_variables(str(tmp_path / "source"), ema=False)
    flat = traverse_util.flatten_dict
    assert any(not np.array_equal(a, flat(live)[k]) for k, a in flat(ema).items())

    def params_of(tree):
        return {k: np.asarray(v) for k, v in flat(tree["params"]).items()}

    for no_ema, expected in ((False, ema), (True, live)):
        served = resnet_jax.Classifier.load(str(tmp_path / "source"), ema=False if no_ema else None)
        loaded = resnet_jax.sources.resolve(str(tmp_path / "source"), ema=False if no_ema else None)
        assert ("live weights" if no_ema else "EMA weights") in served.description
        # The trainer with init_from and a learning rate of 0: its first checkpoint holds the
        # weights it started from (the head has the same 10 classes, so all are restored).
        tuned = default.get_config()
        tuned.update(
            init_from=str(tmp_path / "source"), init_from_ema=not no_ema, learning_rate=0.0,
            warmup_epochs=0.0, lr_schedule="constant", weight_decay=0.0, num_train_steps=1,
            checkpoint_every_steps=1,
        )  # fmt: skip
        target = tmp_path / f"tuned_{'live' if no_ema else 'ema'}"
        train_lib.train_and_evaluate(tuned, str(target))
        started, _ = workdirs.load_variables(str(target), ema=False)
        for k, v in params_of(expected).items():
            np.testing.assert_array_equal(params_of(loaded.variables)[k], v, err_msg=str(k))
            np.testing.assert_array_equal(params_of(started)[k], v, err_msg=str(k))


def _saved(workdir, step):
    """The flat params and batch_stats of a run's checkpoint at ``step``."""
    manager = ocp.CheckpointManager(str(workdir / "checkpoints"))
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    manager.close()
    return traverse_util.flatten_dict(
        {"params": state["params"], "batch_stats": state.get("batch_stats") or {}}
    )


def test_finetune_10_to_5_classes_with_a_frozen_backbone(tmp_path):
    # Train on all 10 digits, then fine-tune on digits 5-9 only through the command line's
    # --config.init_from=WORKDIR --config.freeze=backbone, BatchNorm frozen too: the
    # backbone must come out bitwise identical.
    config = default.get_config()
    config.update(num_train_steps=22, eval_every_steps=22, checkpoint_every_steps=22)
    train_lib.train_and_evaluate(config, str(tmp_path / "source"))
    repo = pathlib.Path(__file__).resolve().parents[1]
    cmd = [
        sys.executable, "-m", "train.main", f"--workdir={tmp_path / 'target'}",
        f"--config.init_from={tmp_path / 'source'}", "--config.freeze=backbone",
        "--config.freeze_batch_stats=True", "--config.classes=(5,6,7,8,9)",
        "--config.num_train_steps=22", "--config.eval_every_steps=22", "--config.checkpoint_every_steps=22",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "re-initialised 2" in proc.stdout
    summary = json.loads((tmp_path / "target" / "summary.json").read_text())
    assert summary["final"]["count"] == 180 and summary["final"]["top1"] > 0.5

    before, after = _saved(tmp_path / "source", 22), _saved(tmp_path / "target", 22)
    for k, v in after.items():
        if k[1] == "head":
            assert v.shape[-1] == 5
        else:
            np.testing.assert_array_equal(v, before[k], err_msg="/".join(k))


def _timm_converted(name, out, seed=0):
    """timm's ``name`` with its own random init, converted as ``python -m resnet_jax.convert``
    writes it."""
    from torch_reference import torch

    timm = pytest.importorskip("timm")
    torch.manual_seed(seed)
    net = timm.create_model(name, pretrained=False).eval()
    convert.save(convert.from_timm(net.state_dict(), name), {"model": name, "source": "timm"}, str(out))
    return out


NEW_FAMILIES = ["seresnet18", "ecaresnet26t", "resnetblur18", "resnetrs50", "resnetv2_50x1_bit"]


@pytest.mark.parametrize("name", NEW_FAMILIES)
def test_each_timm_family_restores_into_a_new_head_and_freezes_its_backbone(tmp_path, name):
    # SE, ECA, blur anti-aliasing, ResNet-RS and BiT: init_from a converted folder restores
    # every array but the head (5 classes here, 1000 there), and freeze=backbone freezes
    # every parameter but the head, its attention and stem pool included.
    source = _timm_converted(name, tmp_path / name)
    model = resnet_jax.create_model(name, num_classes=5)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), variables)
    params, stats, report = finetune.restore_from(
        str(source), variables["params"], variables.get("batch_stats")
    )
    flat = traverse_util.flatten_dict(params)
    assert f"restored {len(flat) - 2 + len(jax.tree.leaves(stats or {}))} arrays, re-initialised 2" in report
    saved = traverse_util.flatten_dict(resnet_jax.sources.resolve(str(source)).variables["params"])
    for k, v in flat.items():
        if k[0] != "head":
            np.testing.assert_array_equal(v, saved[k], err_msg="/".join(k))
    mask = optim.frozen_mask(params, "backbone")
    assert {k for k, frozen in mask.items() if not frozen} == {("head", "kernel"), ("head", "bias")}
    assert optim.frozen_parts(params, "backbone") == ("stage1", "stage2", "stage3", "stage4", "stem")


CIFAR = pathlib.Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


@pytest.mark.skipif(not CIFAR.exists(), reason="needs ../shared/datasets/cifar10-jpeg.tar.gz")
def test_finetune_a_converted_bit_backbone_end_to_end_on_cifar10_jpegs(tmp_path):
    # BiT, the transfer-learning backbone: timm's resnetv2_50x1_bit converted, then the
    # finetune_cifar config (frozen backbone, new 5-class head) on real CIFAR-10 JPEGs from
    # the shared folder (60 training and 20 test images of each of classes 5-9, 32 px).
    # GroupNorm has no statistics: the frozen backbone must come out bitwise, the head move.
    import tarfile

    source = _timm_converted("resnetv2_50x1_bit", tmp_path / "bit")
    wanted = {"train": 60, "test": 20}
    with tarfile.open(CIFAR) as tar:
        names = sorted({m.name.split("/")[-2] for m in tar if m.isfile() and m.name.count("/") >= 2})
        counts = {}
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) < 3 or parts[-2] not in names[5:]:
                continue
            key = (parts[-3], parts[-2])
            if counts.get(key, 0) < wanted.get(parts[-3], 0):
                counts[key] = counts.get(key, 0) + 1
                out = tmp_path / "cifar10" / parts[-3] / parts[-2] / parts[-1]
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(tar.extractfile(member).read())
    repo = pathlib.Path(__file__).resolve().parents[1]
    cmd = [
        sys.executable, "-m", "train.main", f"--workdir={tmp_path / 'run'}",
        "--config=train/configs/finetune_cifar.py", f"--config.data_dir={tmp_path / 'cifar10'}",
        f"--config.init_from={source}", "--config.model=resnetv2_50x1_bit", "--config.classes=(0,1,2,3,4)",
        "--config.image_size=32", "--config.batch_size=16", "--config.num_train_steps=4",
        "--config.checkpoint_every_steps=2", "--config.eval_batch_size=100",
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)}, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "re-initialised 2" in proc.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["final"]["count"] == 100 and summary["steps"] == 4
    start = traverse_util.flatten_dict(resnet_jax.sources.resolve(str(source)).variables["params"])
    middle, end = _saved(tmp_path / "run", 2), _saved(tmp_path / "run", 4)
    for k, v in end.items():
        if k[1] == "head":
            assert v.shape[-1] == 5 and not np.array_equal(v, middle[k]), k  # the head trains
        else:
            np.testing.assert_array_equal(v, start[k[1:]], err_msg="/".join(k))


@pytest.mark.prepare
def test_finetune_imagenet_resnet50_config_end_to_end_on_mock_flowers(tmp_path, monkeypatch, capsys):
    # The flowers config as shipped (ResNet-50 at 224, init_from='torchvision_v1', inception
    # crop, every BatchNorm frozen), for 2 steps on TFDS mock data (which needs TensorFlow:
    # the preparation extra). The tag resolves through the weights registry's cache, where
    # a random stand-in for the converted file is put: nothing is downloaded, and torch is
    # not needed.
    pytest.importorskip("tensorflow", reason="TFDS mock data: the optional preparation extra, .[prepare]")
    import tensorflow_datasets as tfds

    from train.configs import finetune_imagenet_resnet50

    monkeypatch.setenv("RESNET_JAX_CACHE", str(tmp_path / "cache"))
    source = jax.jit(resnet_jax.create_model("resnet50").init)(jax.random.key(4), jnp.zeros((1, 32, 32, 3)))
    convert.save(
        source,
        {"source": "torchvision", "model": "resnet50", "weights": "stand-in"},
        str(tmp_path / "cache" / "converted" / "resnet50-torchvision_v1"),
    )
    config = finetune_imagenet_resnet50.get_config()
    assert (config.model, config.image_size, config.freeze, config.freeze_batch_stats) == (
        "resnet50", 224, "", True,
    )  # fmt: skip
    # TFDS mock data ignores split slices, so the held-out slice becomes mock 'test' data.
    config.update(batch_size=4, num_train_steps=2, validation_examples=0, input_workers=0)
    config.update(checkpoint_every_steps=2, eval_every_steps=2, log_every_steps=1)
    with tfds.testing.mock_data(num_examples=24):
        summary = train_lib.train_and_evaluate(config, str(tmp_path / "run"))
    assert "re-initialised 2" in capsys.readouterr().out  # 1000 ImageNet classes -> 5 flowers
    assert summary["final"]["count"] == 24 and np.isfinite(summary["final"]["loss"])

    manager = ocp.CheckpointManager(str(tmp_path / "run" / "checkpoints"))
    state = manager.restore(2, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    manager.close()
    # Every parameter trained, every BatchNorm statistic stayed the pretrained one.
    assert state["params"]["head"]["kernel"].shape == (2048, 5)
    assert not np.array_equal(
        state["params"]["stage1_block1"]["conv1"]["kernel"],
        source["params"]["stage1_block1"]["conv1"]["kernel"],
    )
    for k, v in traverse_util.flatten_dict(state["batch_stats"]).items():
        np.testing.assert_array_equal(v, traverse_util.flatten_dict(source["batch_stats"])[k], err_msg=str(k))
    # Served from the workdir: the TFDS dataset's label names, the config's evaluation crop.
    served = resnet_jax.sources.resolve(str(tmp_path / "run"))
    assert served.class_names == tfds.builder("tf_flowers").info.features["label"].names
    assert served.preprocessing.describe() == (
        "resize 256 (bilinear, antialiased), centre crop 224, "
        "mean [0.485, 0.456, 0.406], std [0.229, 0.224, 0.225]"
    )


def test_linear_probe_preset():
    from train.configs import linear_probe

    for base, model in (("finetune_imagenet_resnet50", "resnet50"), ("finetune_cifar", "resnet20")):
        config = linear_probe.get_config(base)
        assert config.model == model and config.freeze == "backbone" and config.freeze_batch_stats
        assert config.reinit_head and config.weight_decay == 0.0 and config.label_smoothing == 0.0
    with pytest.raises(
        ValueError, match=r"linear_probe\.py:cifar.*valid: finetune_imagenet_resnet50, finetune"
    ):
        linear_probe.get_config("cifar")
