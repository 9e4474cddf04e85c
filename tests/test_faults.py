"""Faults and mistakes a long run meets: a corrupt newest checkpoint, a resume on other
data, a length that silently does nothing, freezing random weights, an empty class
folder, errors that must arrive as one line, and run records that must stay honest."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import resnet_jax.user_errors
from train import checkpointing, main, settings, train_lib
from train.configs import default, finetune_cifar
from train.input_pipeline import datasets

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(**overrides):
    # Short digits runs: 2 steps of 64 between checkpoints, eval at the end.
    config = default.get_config()
    config.update(
        num_train_steps=4, checkpoint_every_steps=2, eval_every_steps=4, log_every_steps=2, keep_checkpoints=5
    )
    config.update(overrides)
    return config


def _folder(root, classes=("a", "b", "c"), n=8, seed=0, size=8):
    """ROOT/{train,test}/CLASS/*.png of random RGB images."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", n), ("test", 2)):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def _files(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def test_a_corrupt_newest_checkpoint_is_moved_aside_and_the_run_resumes_before_it(tmp_path, capsys):
    train_lib.train_and_evaluate(_config(), str(tmp_path))  # checkpoints at steps 2 and 4
    ckpts = tmp_path / "checkpoints"
    # Truncate the largest array file of the newest step, as a full disk or a killed copy would.
    biggest = max((ckpts / "4" / "state").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0)
    os.truncate(biggest, 100)
    before = _files(ckpts / "4")
    capsys.readouterr()
    summary = train_lib.train_and_evaluate(_config(num_train_steps=6), str(tmp_path))
    err = capsys.readouterr().err
    aside = tmp_path / "checkpoints.unreadable" / "4"
    assert "the checkpoint at step 4 cannot be read (" in err and f"moved it to {aside}" in err
    assert "resuming from step 2" in err and "Traceback" not in err and "Event loop" not in err
    assert _files(aside) == before  # kept whole, never deleted
    assert summary["steps"] == 6 and checkpointing.Checkpointer(str(ckpts), 5, {}).all_steps() == [
        2,
        4,
        6,
    ]

    # An empty config/metadata is unreadable in the same way, and the message names the file.
    (ckpts / "6" / "config" / "metadata").write_text("")
    train_lib.train_and_evaluate(_config(num_train_steps=8), str(tmp_path))
    err = capsys.readouterr().err
    assert f"{ckpts / '6' / 'config' / 'metadata'} is not readable JSON" in err
    assert (tmp_path / "checkpoints.unreadable" / "6").is_dir()

    # When no step can be read: one error with each step's reason, and nothing is moved.
    for step in checkpointing.Checkpointer(str(ckpts), 5, {}).all_steps():
        (ckpts / str(step) / "config" / "metadata").write_text("{")
    kept = _files(ckpts)
    with pytest.raises(
        ValueError, match=r"no checkpoint in .* can be read \(step 8: .*metadata is not readable"
    ):
        train_lib.train_and_evaluate(_config(num_train_steps=10), str(tmp_path))
    assert _files(ckpts) == kept


def test_a_resume_on_other_data_or_batches_is_refused_naming_the_setting(tmp_path):
    a = _folder(tmp_path / "a")
    folder = dict(dataset="image_folder", batch_size=8, num_train_steps=2, eval_every_steps=2)
    train_lib.train_and_evaluate(_config(data_dir=str(a), **folder), str(tmp_path / "run"))
    extend = dict(folder, num_train_steps=4)
    steps = [2]

    def refused(match, **changes):
        with pytest.raises(ValueError, match=match):
            train_lib.train_and_evaluate(_config(**{**extend, **changes}), str(tmp_path / "run"))
        assert checkpointing.Checkpointer(str(tmp_path / "run" / "checkpoints"), 5, {}).all_steps() == steps

    # Other images under the same class names.
    b = _folder(tmp_path / "b", n=9, seed=1)
    refused(
        rf"data_dir: saved '{a}', now '{b}'; train_examples: saved 24, now 27; train_fingerprint",
        data_dir=str(b),
    )
    # Another class list: the head's shape would change.
    c = _folder(tmp_path / "c", classes=("a", "b", "c", "d"))
    refused(r"class_names: saved \['a', 'b', 'c'\], now \['a', 'b', 'c', 'd'\]", data_dir=str(c))
    # The saved input position counts batches: another batch size would misplace it.
    refused(r"batch_size: saved 8, now 16.*left untouched", data_dir=str(a), batch_size=16)
    # The same files under another path (a copy to local disk) resume.
    os.rename(a, tmp_path / "a_copy")
    summary = train_lib.train_and_evaluate(
        _config(data_dir=str(tmp_path / "a_copy"), **extend), str(tmp_path / "run")
    )
    assert summary["steps"] == 4 and summary["sessions"] == 2


def test_the_length_on_the_command_line_wins_and_zero_steps_is_an_error(tmp_path):
    config = _config(num_train_steps=64000, num_epochs=15.0)
    main.apply_duration_rule(config, {"num_epochs"})  # --config.num_epochs=15 given
    assert config.num_train_steps == -1 and settings.length(config).total_steps(22) == 330
    config = _config(num_train_steps=64000, num_epochs=2.0)
    main.apply_duration_rule(config, {"model"})  # only the config file's: num_train_steps wins
    assert settings.length(config).total_steps(22) == 64000
    with pytest.raises(ValueError, match=r"num_epochs=2.0 and --config.num_train_steps=100 both set"):
        main.apply_duration_rule(
            _config(num_train_steps=100, num_epochs=2.0), {"num_epochs", "num_train_steps"}
        )
    with pytest.raises(ValueError, match=r"num_epochs=0.0 and num_train_steps=-1 give a run of 0 steps"):
        train_lib.train_and_evaluate(_config(num_epochs=0.0, num_train_steps=-1), str(tmp_path / "zero"))
    with pytest.raises(ValueError, match=r"num_epochs=0.01 gives 0 steps \(22 steps of batch 64"):
        train_lib.train_and_evaluate(_config(num_epochs=0.01, num_train_steps=-1), str(tmp_path / "tiny"))
    assert not (tmp_path / "zero").exists() and not (tmp_path / "tiny").exists()  # no empty workdirs


def test_freezing_without_init_from_is_refused_unless_everything_trains(tmp_path):
    config = finetune_cifar.get_config()
    config.update(dataset="digits", classes=(), mean=(0.5,), std=(0.5,), augment="none", batch_size=64)
    with pytest.raises(ValueError, match=r"freeze='backbone' and freeze_batch_stats=True with no init_from"):
        train_lib.train_and_evaluate(config, str(tmp_path / "ft"))
    assert not (tmp_path / "ft").exists()
    # Asking for a random init explicitly trains.
    config.update(freeze="", freeze_batch_stats=False, num_train_steps=2, checkpoint_every_steps=2)
    assert train_lib.train_and_evaluate(config, str(tmp_path / "ft"))["steps"] == 2


def test_a_class_without_train_images_is_refused_naming_its_folder(tmp_path):
    root = _folder(tmp_path / "f")
    for f in (root / "train" / "b").iterdir():
        f.unlink()
    (root / "test" / "d").mkdir()
    (root / "test" / "d" / "0.png").write_bytes((root / "test" / "a" / "0.png").read_bytes())
    with pytest.raises(ValueError) as info:
        datasets.image_folder_source(str(root))
    message = str(info.value)
    assert f"{root / 'train' / 'b'} holds no image file" in message
    assert f"{root / 'train' / 'd'} does not exist" in message and "2 class(es)" in message
    # Leaving them out with classes= works.
    assert datasets.image_folder_source(str(root), classes=(0, 2)).num_classes == 2


def test_a_finished_run_is_left_as_it_is_and_a_resumed_one_counts_every_session(tmp_path, capsys):
    first = train_lib.train_and_evaluate(_config(num_train_steps=2), str(tmp_path))
    second = train_lib.train_and_evaluate(_config(num_train_steps=4), str(tmp_path))
    assert (first["sessions"], second["sessions"]) == (1, 2)
    # Time and throughput add up over both sessions.
    assert second["wall_s"] > first["wall_s"] and second["train_s"] > first["train_s"]
    assert second["compile_s"] > first["compile_s"]
    records = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.rglob("*") if p.is_file()}
    capsys.readouterr()
    again = train_lib.train_and_evaluate(_config(num_train_steps=4), str(tmp_path))
    out = capsys.readouterr().out
    assert f"{tmp_path} is finished: its checkpoint is at step 4 of 4" in out and "Nothing was changed" in out
    assert again == second
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.rglob("*") if p.is_file()} == records


def test_a_non_finite_loss_before_any_checkpoint_says_so(tmp_path):
    config = _config(learning_rate=1e30, warmup_epochs=0.0, lr_schedule="constant", checkpoint_every_steps=4)
    with pytest.raises(FloatingPointError, match="No checkpoint had been saved yet"):
        train_lib.train_and_evaluate(config, str(tmp_path / "nan"))
    assert not (tmp_path / "nan").exists()  # it failed at its first log: nothing to keep


def _cli(module, *args, cwd=REPO):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(resnet_jax.user_errors.TRACEBACK_ENV, None)
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def _timm_hub_folders(tmp_path):
    """timm Hub folders that convert must refuse, each for one reason."""
    from safetensors.numpy import save_file

    cfg = {"input_size": [3, 224, 224], "crop_pct": 0.95, "interpolation": "bicubic"}
    configs = {
        "flat": {"num_classes": 1000},
        "empty": {"architecture": "resnet18", "pretrained_cfg": cfg},
        "vit": {"architecture": "vit_small_patch16_224", "pretrained_cfg": cfg},
        "squash": {"architecture": "resnet18", "pretrained_cfg": {**cfg, "crop_mode": "squash"}},
        "nearest": {"architecture": "resnet18", "pretrained_cfg": {**cfg, "interpolation": "nearest"}},
    }
    folders = {}
    for name, config in configs.items():
        folders[name] = tmp_path / f"hub_{name}"
        folders[name].mkdir()
        (folders[name] / "config.json").write_text(json.dumps(config))
        if name != "empty":
            save_file({"fc.bias": np.zeros(1000, np.float32)}, str(folders[name] / "model.safetensors"))
    return folders


def test_user_errors_are_one_line_without_a_traceback(tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_text("not a checkpoint")
    resumed = tmp_path / "resumed"
    train_lib.train_and_evaluate(_config(num_train_steps=2), str(resumed))
    out = f"--out={tmp_path / 'o'}"
    convert = ["--model=resnet18", f"--weights={weights}", out]
    hubs = _timm_hub_folders(tmp_path)
    cases = [
        ("train.main", ["--config.batch_size=abc"], "--config.batch_size=abc: invalid literal"),
        ("train.main", ["--config.learning_rat=0.5"], 'Did you mean "learning_rate"'),
        ("train.main", ["--config=train/configs/nope.py"], "configs are: train/configs/cifar10.py"),
        ("train.main", ["--config.dataset=digitz"], "unknown dataset 'digitz'; did you mean 'digits'?"),
        (
            "train.main",
            [f"--workdir={resumed}", "--config.model=resnet32"],
            "saved 'resnet20', now 'resnet32'",
        ),
        ("train.main", ["--config.dataset=image_folder", "--config.data_dir=/none"], "is not a directory"),
        ("train.main", ["--config.num_epochs=1", "--config.num_train_steps=5"], "both set the run's length"),
        ("train.main", ["--config.num_train_steps=0"], "config.num_train_steps=0: a number of steps > 0"),
        ("train.main", ["--config.classes=abc"], "config.classes=('abc',): whole numbers, comma-separated"),
        ("train.main", ["--print_config", "--config.mix_prob=2"], "config.mix_prob=2.0 is a probability"),
        ("resnet_jax.convert", ["--source=torchvision", *convert], "failed the weights-only check"),
        ("resnet_jax.convert", ["--source=keras", *convert], "is not a Keras .h5"),
        ("resnet_jax.convert", ["--source=torch", *convert], "invalid choice: 'torch'"),
        ("resnet_jax.convert", ["--source=timm", f"--weights={weights}", out], "--model is required"),
        *[("resnet_jax.convert", ["--source=timm", f"--weights={hubs[k]}", *extra, out], expected)
          for k, extra, expected in [
              ("flat", [], "config.json is not a timm model config (no 'architecture')"),
              ("empty", [], "has a config.json but no weights: expected model.safetensors or pytorch_model"),
              ("vit", [], "holds timm's 'vit_small_patch16_224', not a resnet_jax model"),
              ("squash", ["--model=resnet50"], "holds timm's resnet18, not --model=resnet50: drop --model"),
              ("squash", [], "timm crop_mode='squash': only 'center' is supported"),
              ("nearest", [], "timm interpolation='nearest': resnet_jax resizes with bilinear, bicubic"),
          ]],
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(resnet_jax.user_errors.TRACEBACK_ENV, None)
    procs = []
    for i, (module, args, expected) in enumerate(cases):
        if module == "train.main" and not any(a.startswith("--workdir") for a in args):
            args = [f"--workdir={tmp_path / f'w{i}'}", *args]
        # All at once: each spends its seconds importing JAX, and the cases are independent.
        cmd = [sys.executable, "-m", module, *args]
        procs.append(
            (
                args,
                expected,
                subprocess.Popen(
                    cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                ),
            )
        )
    for args, expected, proc in procs:
        _, stderr = proc.communicate(timeout=300)
        lines = stderr.strip().splitlines()
        assert proc.returncode == 1, (args, stderr[-2000:])
        assert "Traceback" not in stderr and len(lines) <= 2, (args, stderr[-2000:])
        assert lines[-1].startswith("error: ") and expected in stderr, (args, stderr)
    assert not any(tmp_path.glob("w[0-9]*")) and not (tmp_path / "o").exists()
    # --config.num_epochs on the command line replaces a config file's num_train_steps.
    proc = _cli(
        "train.main", "--config=train/configs/cifar10.py", "--config.num_epochs=1", "--config.dataset=x"
    )
    assert (
        "num_epochs=1.0 from the command line replaces the config file's num_train_steps=64000" in proc.stdout
    )
    assert (
        json.loads((resumed / "summary.json").read_text())["steps"] == 2
    )  # the refused resume changed nothing
    # --print_config: the checked config, each field with where its value came from; no run.
    proc = _cli("train.main", "--config=train/configs/cifar10.py", "--config.seed=3", "--print_config")
    rows = {line.split()[0]: line.split()[1:] for line in proc.stdout.splitlines()[1:] if line.strip()}
    assert proc.returncode == 0 and rows["seed"] == ["3", "command", "line"], proc.stdout + proc.stderr
    assert rows["num_train_steps"] == ["64000", "file"] and rows["model"] == ["'resnet20'", "default"]


def test_only_errors_raised_by_the_projects_own_code_lose_their_traceback():
    from resnet_jax import user_errors

    def raised(fn):
        try:
            fn()
        except Exception as e:
            return e

    assert user_errors.is_user_error(raised(lambda: datasets.image_folder_source("/nonexistent")))
    assert user_errors.is_user_error(raised(lambda: settings.choice("optimizer", "x", ("sgd",))))
    # The same types raised inside a library are unexpected: their traceback stays.
    assert not user_errors.is_user_error(raised(lambda: np.reshape(np.zeros(3), (2, 2))))
    assert not user_errors.is_user_error(raised(lambda: json.loads("{")))
    assert not user_errors.is_user_error(raised(lambda: [][1]))
