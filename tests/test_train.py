"""End to end: `python -m train.main` on real data, across devices and processes, killed
and resumed, and every bad input it must refuse."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import processes
import pytest
from flax import traverse_util

from resnet_jax import workdirs
from train import checkpointing, settings, train_lib
from train.configs import default

REPO = pathlib.Path(__file__).resolve().parents[1]
CIFAR = REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
# A short digits run, fixed for the comparisons below: low lr, so that float
# reassociation between device layouts stays at rounding level.
SHORT = [
    "--config.num_train_steps=12",
    "--config.log_every_steps=1",
    "--config.eval_every_steps=12",
    "--config.checkpoint_every_steps=12",
    "--config.learning_rate=0.02",
]


def _env(devices=1):
    return {**os.environ, "XLA_FLAGS": processes.xla_flags(devices), "PYTHONPATH": str(REPO)}


def _main(workdir, *flags, devices=1, check=True, **kwargs):
    cmd = [sys.executable, "-m", "train.main", f"--workdir={workdir}", *flags]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(devices), capture_output=True, text=True, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def _records(workdir, split):
    lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def _summary(workdir):
    return json.loads((pathlib.Path(workdir) / "summary.json").read_text())


def test_default_command_reaches_95_percent(tmp_path):
    # The README's quickstart, verbatim but for the workdir: digits, resnet20, 15 epochs.
    proc = _main(tmp_path / "run")
    assert f"writing to {tmp_path / 'run'}" in proc.stdout
    summary = _summary(tmp_path / "run")
    print(f"\ndefault config: {summary}")
    assert summary["final"]["top1"] >= 0.95
    assert summary["final"]["count"] == 360
    assert "done: final top-1" in proc.stdout
    evals = _records(tmp_path / "run", "eval")
    assert [r["step"] for r in evals] == [22 * (i + 1) for i in range(15)]  # once per epoch
    assert {"loss", "top1", "top5", "lr", "images_per_s"} <= set(_records(tmp_path / "run", "train")[0])
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "run" / "curves.png").read_bytes()[:4] == b"\x89PNG"
    # The last 3 checkpoints plus the best, each with its config.
    steps = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit())
    best = max(r["top1"] for r in evals)
    kept_best = [r for r in evals if r["step"] == summary["best_step"]]
    assert steps[-3:] == [286, 308, 330] and summary["best_step"] in steps and len(steps) <= 4
    assert kept_best[0]["top1"] == best == summary["best_top1"]
    saved = json.loads((tmp_path / "run" / "checkpoints" / "330" / "config" / "metadata").read_text())
    assert saved["model"] == "resnet20" and saved["dataset"] == "digits"


def _digits_tolerances():
    """tests/tolerances.py's bounds for the digits runs of SHORT: the first train step's loss
    (ResNet-20, batch 64 of 8x8x1, train-mode BatchNorm) and an evaluation of the 360 test
    images (eval mode, batches of 64, summed over the split)."""
    import jax.numpy as jnp
    import tolerances

    import resnet_jax

    model = resnet_jax.create_model("resnet20", num_classes=10, in_channels=1)
    forward, _, evaluate = tolerances.step_bounds(model, jnp.zeros((64, 8, 8, 1)))
    split_sum = 2 * tolerances.LAMBDA * tolerances.U * np.sqrt(360)  # the loss summed over the split
    return forward, evaluate + split_sum


def test_devices_and_processes_give_the_one_device_result(tmp_path):
    import tolerances

    one = tmp_path / "one"
    _main(one, *SHORT)
    _main(tmp_path / "eight", *SHORT, devices=8)
    outs = processes.run_train_main(tmp_path / "two_processes", *SHORT)
    assert "on 2 device(s)" in outs[0]
    reference = [r["loss"] for r in _records(one, "train")]
    assert len(reference) == 12
    step_tol, eval_tol = _digits_tolerances()
    for name in ("eight", "two_processes"):
        losses = [r["loss"] for r in _records(tmp_path / name, "train")]
        final, final_one = _summary(tmp_path / name)["final"], _summary(one)["final"]
        print(f"\n{name}: train losses {losses}\n1 device: {reference}\nfinal {final}\n1 device: {final_one}")
        # Global-batch BatchNorm: the first step (the initial weights on the first global
        # batch) is the 1-device step, up to the rounding of other summation orders
        # (test_train_lib.py checks that per-device statistics fall far outside that bound).
        measured = abs(losses[0] - reference[0]) / reference[0]
        print(tolerances.report(f"{name}, step 1 train loss", measured, step_tol))
        assert measured <= step_tol, name
        # Each later step amplifies the rounding difference of the steps before, so the
        # runs are compared by what they reach, not step by step: the same final eval loss
        # within 2% and top-1 within 3 of the 360 images. Rounding moved them by < 1e-6 on
        # the 2-core EPYC; seeds 1 and 2 instead of 0 moved the loss by 3.5% and 4.5% and
        # the top-1 by 41 and 24 images (1.930 / 42.2%, 1.997 / 30.8%, 2.016 / 35.6%).
        assert abs(final["loss"] - final_one["loss"]) <= 0.02 * final_one["loss"], name
        assert abs(final["top1"] - final_one["top1"]) <= 3 / 360, name
    assert _summary(tmp_path / "eight")["devices"] == 8
    eight_final = _summary(tmp_path / "eight")["final"]["loss"]
    # A checkpoint written on 8 devices restores on 1. Without its summary (as when a run is
    # killed after its last checkpoint), the resumed run finds it complete and evaluates the
    # restored state to the loss the 8-device run reported for it.
    (tmp_path / "eight" / "summary.json").unlink()
    proc = _main(tmp_path / "eight", *SHORT)
    assert "resuming from the checkpoint at step 12 of 12" in proc.stdout
    restored = _summary(tmp_path / "eight")
    assert restored["devices"] == 1
    # One evaluation of the same weights on 1 device instead of 8: equal up to rounding.
    measured = abs(restored["final"]["loss"] - eight_final) / eight_final
    print(tolerances.report("eval of the 8-device checkpoint on 1 device", measured, eval_tol))
    assert measured <= eval_tol
    # The input stream's grain state is per process: 2 processes' checkpoint does not
    # resume in 1, and says so before touching anything.
    before = sorted(p.name for p in (tmp_path / "two_processes" / "checkpoints").iterdir())
    proc = _main(tmp_path / "two_processes", *SHORT, check=False)
    assert proc.returncode != 0
    assert "was written by 2 process(es), this run has 1" in proc.stderr, proc.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "two_processes" / "checkpoints").iterdir()) == before


def _kill_9_after_checkpoint(killed, flags, step):
    """Starts ``train.main`` into ``killed`` and kills it with SIGKILL once checkpoint
    ``step`` exists, before the run ends."""
    cmd = [sys.executable, "-m", "train.main", f"--workdir={killed}", *flags]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / str(step)).is_dir():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its second checkpoint"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists(), "killed too late: the run had finished"
    return killed


def test_kill_9_then_restart_reaches_the_uninterrupted_result_bitwise(tmp_path):
    # Bitwise, not a tolerance: both runs execute the same compiled programs on the same
    # CPU with the same inputs, and XLA's CPU programs are deterministic run to run.
    # The input stream comes back from grain's iterator state in the Orbax checkpoint (here
    # with a grain worker process, whose position is part of that state); the resumed run
    # must end with the uninterrupted run's parameters, bit for bit.
    flags = [
        "--config.num_train_steps=44",
        "--config.eval_every_steps=44",
        "--config.checkpoint_every_steps=13",  # never at an epoch's end (22 steps): resumes mid-epoch
        "--config.log_every_steps=11",
        "--config.augment=cifar",
        "--config.crop_padding=1",
        "--config.input_workers=1",
        # Today's recipe's augmentations, repeated augmentation included (k = 4: a round of
        # 4 epochs), whose stream must continue exactly too.
        "--config.auto_augment=trivialaugment",
        "--config.random_erasing=0.25",
        "--config.repeated_augmentations=4",
        "--config.drop_path_rate=0.1",  # stochastic depth draws from the step's rng: resumes too
        # and so do mixup and cutmix, on the device, with the BCE loss.
        "--config.mixup_alpha=0.2",
        "--config.cutmix_alpha=1.0",
        "--config.loss=bce",
        # torchvision's EMA (every 4th step of an epoch, adjusted, a copy through the
        # 1-epoch warmup) and schedule (from 1% of the peak, held through each epoch).
        "--config.ema_decay=0.999",
        "--config.ema_every_steps=4",
        "--config.ema_adjust=True",
        "--config.ema_copy_during_warmup=True",
        "--config.warmup_start_factor=0.01",
        "--config.lr_unit=epoch",
    ]
    _main(tmp_path / "straight", *flags)
    killed = _kill_9_after_checkpoint(tmp_path / "killed", flags, 26)
    saved = json.loads(next((killed / "checkpoints" / "26" / "data").glob("process_0-of-1.json")).read_text())
    assert saved, "the grain iterator state is in the checkpoint"
    resumed = _main(killed, *flags)
    start = int(resumed.stdout.split("resuming from the checkpoint at step ")[1].split()[0])
    assert 26 <= start < 44 and start % 22, start
    final, straight = _summary(killed)["final"], _summary(tmp_path / "straight")["final"]
    print(f"\nkilled after step >= 26, resumed from {start}: eval loss {final['loss']} vs {straight['loss']}")
    for ema in (False, True):  # the weights, and the EMA of weights and BN statistics
        ours, theirs = (
            workdirs.load_variables(str(tmp_path / r), ema=ema)[0] for r in ("killed", "straight")
        )
        flat_ours, flat_theirs = (traverse_util.flatten_dict(v) for v in (ours, theirs))
        assert flat_ours.keys() == flat_theirs.keys()
        for k in flat_ours:
            np.testing.assert_array_equal(flat_ours[k], flat_theirs[k], err_msg="/".join(k))
    assert final == straight
    weights, averaged = (workdirs.load_variables(str(tmp_path / "straight"), ema=e)[0] for e in (False, True))
    assert not np.array_equal(weights["params"]["head"]["kernel"], averaged["params"]["head"]["kernel"])


def _odd_folder(root):
    """2 classes of 16x16 JPEGs (60 train, 8 test each) and, in train/b, one of each odd
    file: a JPEG cut short after its header, a PNG named .jpg, a CMYK and a grayscale JPEG."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("test", 8)):
        for label, base in (("a", 60), ("b", 190)):
            (root / split / label).mkdir(parents=True)
            for i in range(n):
                image = np.clip(rng.normal(base, 40, (16, 16, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(image).save(root / split / label / f"{i:02d}.jpg", quality=90)
    odd, image = root / "train" / "b", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    full = (root / "train" / "b" / "00.jpg").read_bytes()
    (odd / "truncated.jpg").write_bytes(full[: full.index(b"\xff\xda") + 40])  # header intact
    Image.fromarray(image).save(odd / "png_inside.jpg", format="PNG")
    Image.fromarray(image).convert("CMYK").save(odd / "cmyk.jpg")
    Image.fromarray(image).convert("L").save(odd / "gray.jpg")
    return root


def test_an_image_folder_with_odd_files_trains_names_the_bad_one_once_and_resumes_bitwise(tmp_path):
    # The folder's listing reads no pixels; the truncated JPEG is found while training,
    # replaced by the next image of the split each time it is drawn (a choice made by the
    # files alone), named once, and listed in summary.json. A kill -9 and resume then ends
    # bit for bit where the uninterrupted run does (as the digits test above, with a grain
    # worker process reading the files).
    folder = _odd_folder(tmp_path / "folder")
    flags = [
        "--config=train/configs/image_folder.py",
        f"--config.data_dir={folder}",
        "--config.batch_size=16",
        "--config.num_train_steps=30",
        "--config.eval_every_steps=30",
        "--config.checkpoint_every_steps=9",
        "--config.log_every_steps=10",
        "--config.input_workers=1",
        "--config.learning_rate=0.02",
    ]
    straight = _main(tmp_path / "straight", *flags)
    output = straight.stdout + straight.stderr
    truncated = str(folder / "train" / "b" / "truncated.jpg")
    assert output.count("truncated.jpg") == 1 and f"skipping {truncated}" in output, output[-3000:]
    assert "skipped undecodable images: 1 of split 'train' (summary.json lists them)" in output
    summary = _summary(tmp_path / "straight")
    assert summary["undecodable"] == {"train": [truncated]}
    assert summary["final"]["count"] == 16
    # The listing was kept with the run.
    assert (tmp_path / "straight" / "listing" / "listing.json").is_file()
    killed = _kill_9_after_checkpoint(tmp_path / "killed", flags, 18)
    resumed = _main(killed, *flags)
    start = int(resumed.stdout.split("resuming from the checkpoint at step ")[1].split()[0])
    assert 18 <= start < 30, start
    ours, theirs = (
        traverse_util.flatten_dict(workdirs.load_variables(str(tmp_path / r))[0])
        for r in ("killed", "straight")
    )
    assert ours.keys() == theirs.keys()
    for k in ours:
        np.testing.assert_array_equal(ours[k], theirs[k], err_msg="/".join(k))
    assert _summary(killed)["final"] == summary["final"]
    assert _summary(killed)["undecodable"] == summary["undecodable"]


# `python -m train.main` with TensorFlow made unimportable, as on a host without it: a
# meta-path finder refuses it. etils probes for TensorFlow with find_spec, which the finder
# would break, so EPATH_USE_TF=false tells it the answer (on a host without TF it finds none).
NO_TENSORFLOW = (
    processes.BLOCK_TENSORFLOW
    + """
import runpy
sys.argv = ['train.main', *sys.argv[1:]]
try:
    runpy.run_module('train.main', run_name='__main__', alter_sys=True)
finally:
    print('tensorflow imported:', 'tensorflow' in sys.modules, flush=True)
"""
)


def _main_without_tensorflow(workdir, *flags):
    env = {**_env(), "EPATH_USE_TF": "false"}
    cmd = [sys.executable, "-c", NO_TENSORFLOW, f"--workdir={workdir}", *flags]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert "tensorflow imported: False" in proc.stdout and "done: final top-1" in proc.stdout
    return _summary(workdir)


def test_trains_on_digits_and_an_image_folder_without_tensorflow(tmp_path):
    # The image-folder run then classifies images with python -m resnet_jax.predict: the
    # class names, preprocessing and EMA weights come from its workdir alone.
    from PIL import Image

    rng = np.random.default_rng(0)
    names = ("heron", "otter", "willow")
    for split, n in (("train", 8), ("test", 4)):
        for label in names:
            (tmp_path / "folder" / split / label).mkdir(parents=True)
            for i in range(n):
                image = rng.integers(0, 256, (rng.integers(20, 40), 30, 3), dtype=np.uint8)
                Image.fromarray(image).save(tmp_path / "folder" / split / label / f"{i}.jpg")
    short = ["--config.num_train_steps=4", "--config.log_every_steps=2"]
    summary = _main_without_tensorflow(tmp_path / "digits", *short)
    assert summary["final"]["count"] == 360
    assert list((tmp_path / "digits" / "tensorboard").glob("events.out.tfevents.*"))
    folder = [f"--config.data_dir={tmp_path / 'folder'}", "--config.image_size=24", "--config.batch_size=8"]
    summary = _main_without_tensorflow(
        tmp_path / "folder_run",
        "--config=train/configs/image_folder.py",
        *folder,
        *short,
        "--config.ema_decay=0.9",
    )
    assert summary["final"]["count"] == 12

    cmd = [sys.executable, "-m", "resnet_jax.predict", f"--weights={tmp_path / 'folder_run'}", "--top=3"]
    proc = subprocess.run(
        [*cmd, str(tmp_path / "folder" / "test")], env=_env(), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert "step 4 (EMA weights): resize to 24x24 (bilinear, antialiased), mean [0.485" in lines[0], lines[0]
    rows = [line.split() for line in lines[2:]]
    assert len(rows) == 3 * 12 and all(len(row) in (4, 5) for row in rows)
    for first in range(0, len(rows), 3):  # each image: its three classes, by name
        assert sorted(row[-2] for row in rows[first : first + 3]) == sorted(names)
    assert not proc.stderr.strip(), proc.stderr[-2000:]


@pytest.mark.prepare
def test_trains_on_a_prepared_tfds_dataset_without_tensorflow(tmp_path):
    # Preparing the dataset needs TensorFlow (the optional extra); training on it does not.
    pytest.importorskip("tensorflow", reason="the optional TFDS preparation extra: .[prepare]")
    import tiny_tfds  # tests/tiny_tfds

    tiny_tfds.prepare(tmp_path / "tfds")
    summary = _main_without_tensorflow(
        tmp_path / "run",
        "--config.dataset=tiny_digits",
        f"--config.data_dir={tmp_path / 'tfds'}",
        "--config.batch_size=16",
        "--config.num_train_steps=4",
        "--config.input_workers=1",  # the TFDS source, pickled into a grain worker process
    )
    assert summary["final"]["count"] == 40


def _config(**overrides):
    config = default.get_config()
    config.update(overrides)
    return config


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    # The lr jumps by 1e30 at step 10: the weights overflow, and the run must stop
    # before saving anything from the broken state.
    config = _config(
        num_train_steps=40,
        lr_schedule="piecewise",
        warmup_epochs=0.0,
        lr_boundaries=(10,),
        lr_decay_factor=1e30,
        checkpoint_every_steps=5,
        eval_every_steps=40,
        log_every_steps=5,
    )
    with pytest.raises(FloatingPointError, match=r"non-finite train loss.*last good checkpoint \(step 10\)"):
        train_lib.train_and_evaluate(config, str(tmp_path))
    ckpt = checkpointing.Checkpointer(
        str(tmp_path / "checkpoints"), 3, settings.saved_config(settings.check(config))
    )
    assert ckpt.all_steps() == [5, 10]
    # A different model must not resume from (or overwrite) these checkpoints.
    with pytest.raises(ValueError, match=r"model: saved 'resnet20', now 'resnet32'.*left untouched"):
        train_lib.train_and_evaluate(_config(model="resnet32", num_train_steps=40), str(tmp_path))
    assert ckpt.all_steps() == [5, 10]


def test_a_checkpoint_without_the_input_streams_state_is_refused_untouched(tmp_path):
    # Workdirs of the tf.data pipeline saved a JSON position as the 'data' item; grain's
    # iterator state cannot be restored from it, so the run must stop and say why.
    config = _config(num_train_steps=2, checkpoint_every_steps=2, eval_every_steps=2, log_every_steps=1)
    train_lib.train_and_evaluate(config, str(tmp_path))
    data = tmp_path / "checkpoints" / "2" / "data"
    for f in data.iterdir():
        f.unlink()
    (data / "metadata").write_text(json.dumps({"step": 2, "epoch": 0, "batch_in_epoch": 2, "seed": 0}))
    config.num_train_steps = 4
    with pytest.raises(ValueError, match=r"step 2 .* holds no input-stream state .* left untouched"):
        train_lib.train_and_evaluate(config, str(tmp_path))
    assert [p.name for p in data.iterdir()] == ["metadata"]


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"model": "resnet21"}, r"unknown model 'resnet21'.*did you mean"),
        (
            {"optimizer": "adagrad"},
            r"unknown optimizer 'adagrad'; valid: sgd, nesterov, adam, adamw, lars, lamb",
        ),
        ({"dtype": "float16"}, r"unknown dtype 'float16'; valid: float32, bfloat16"),
        ({"dataset": "imagenet2013"}, r"unknown dataset 'imagenet2013'; did you mean .*'imagenet2012'"),
        ({"batch_size": 5000}, r"batch_size=5000 exceeds the 1437 train examples"),
    ],
)
def test_bad_config_values_are_named_with_the_choices(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        train_lib.train_and_evaluate(_config(**overrides), str(tmp_path))


def test_unwritable_workdir_fails_before_training(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ValueError, match=r"workdir '.*a_file/run' is not writable"):
        train_lib.train_and_evaluate(_config(), str(blocker / "run"))


@pytest.mark.skipif(not CIFAR.exists(), reason="needs ../shared/datasets/cifar10-jpeg.tar.gz")
def test_cifar10_transfer_frozen_backbone_beats_scratch(tmp_path):
    # Real CIFAR-10 JPEGs through the image-folder path. A ResNet-20 source is trained on
    # classes 0-4; on classes 5-9, K steps of the finetune_cifar config (backbone and BN
    # frozen, fresh head) must beat K steps from scratch. Measured on the 2-core CPU:
    # source 52.9% (5 classes), frozen 51.2%, scratch 42.2%, on 5,000 test images each.
    with tarfile.open(CIFAR) as tar:
        tar.extractall(tmp_path / "cifar10", filter="data")
    data = f"--config.data_dir={tmp_path / 'cifar10'}"
    _main(
        tmp_path / "source", "--config=train/configs/cifar10.py", "--config.dataset=image_folder", data,
        "--config.classes=(0,1,2,3,4)", "--config.num_train_steps=60", "--config.lr_schedule=cosine",
        "--config.lr_boundaries=()",
    )  # fmt: skip
    target = ["--config=train/configs/finetune_cifar.py", data, "--config.num_train_steps=30"]
    _main(tmp_path / "frozen", *target, f"--config.init_from={tmp_path / 'source'}")
    _main(
        tmp_path / "scratch", *target, "--config.init_from=", "--config.freeze=",
        "--config.freeze_batch_stats=False",
    )  # fmt: skip
    source, frozen, scratch = (_summary(tmp_path / r)["final"] for r in ("source", "frozen", "scratch"))
    print(f"\nCIFAR-10 transfer: source {source}\n frozen {frozen}\n scratch {scratch}")
    assert source["count"] == frozen["count"] == scratch["count"] == 5000
    assert source["top1"] >= 0.35  # chance is 0.20
    assert frozen["top1"] >= scratch["top1"] + 0.02
    # resnet_jax.evaluate on the fine-tuned run's test classes scores what the trainer's
    # final eval scored: the same weights, decoding and preprocessing, so the same count.
    from resnet_jax import evaluation

    folder = tmp_path / "frozen_test"
    folder.mkdir()
    for name in sorted(os.listdir(tmp_path / "cifar10" / "test"))[5:]:
        (folder / name).symlink_to(tmp_path / "cifar10" / "test" / name)
    ours = evaluation.evaluate_weights(str(tmp_path / "frozen"), str(folder), progress=False)
    print(f" frozen: evaluate top-1 {ours['top1']}% of {ours['images']}, loss {ours['loss']:.5f}")
    assert ours["images"] == frozen["count"] and not ours["skipped"]
    assert round(ours["top1"] * ours["images"] / 100) == round(frozen["top1"] * frozen["count"])
    assert abs(ours["loss"] - frozen["loss"]) < 1e-4


def test_an_ema_checkpoint_from_before_the_ema_averaged_bn_statistics_resumes(tmp_path, monkeypatch):
    # Such a checkpoint has no ema_batch_stats in its state and no ema_every_steps in its
    # config: it must resume (its EMA statistics start from the live ones), not be moved
    # aside as unreadable.
    config = _config(
        num_train_steps=2, checkpoint_every_steps=2, eval_every_steps=2, log_every_steps=1, ema_decay=0.9
    )
    to_state_dict = checkpointing.serialization.to_state_dict

    def old_state_dict(x):  # the state as it was saved before the field existed
        d = to_state_dict(x)
        return {k: v for k, v in d.items() if k != "ema_batch_stats"} if isinstance(d, dict) else d

    with monkeypatch.context() as m:
        m.setattr(checkpointing.serialization, "to_state_dict", old_state_dict)
        train_lib.train_and_evaluate(config, str(tmp_path))
    saved = tmp_path / "checkpoints" / "2" / "config" / "metadata"
    fields = json.loads(saved.read_text())
    for field in ("ema_every_steps", "ema_adjust", "ema_copy_during_warmup"):
        del fields[field]
    saved.write_text(json.dumps(fields))
    config.num_train_steps = 4
    summary = train_lib.train_and_evaluate(config, str(tmp_path))
    assert summary["sessions"] == 2 and summary["steps"] == 4
    assert not (tmp_path / "checkpoints.unreadable").exists()
