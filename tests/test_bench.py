"""The benchmark commands: they run, print the figures BENCHMARKS.md quotes, and refuse bad input.

Nothing here times anything against a threshold: speed is for the benchmarks to print.
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR = pathlib.Path(REPO).parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


def _run(*args, timeout=600):
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_train_throughput_against_torch_ends_with_the_ratio():
    pytest.importorskip("torch")
    proc = _run(
        "bench.train_throughput", "--model=resnet20", "--image-size=16", "--batch-size=8",
        "--steps=2", "--windows=1", "--warmup=1", "--compare-torch", "--torch-compile=off",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    text = "\n".join(lines)
    assert re.search(r"resnet_jax resnet20 16x16, batch 8, float32 on 1 x cpu", text)
    assert "XLA compiler options: {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_" in text
    assert re.search(r"compile: +\d+\.\d s", text) and re.search(r"images/s: +\d+\.\d", text)
    assert re.search(r"XLA flops: [\d.]+ GFLOP per step per device; MFU n/a", text)
    assert re.search(r"torch eager, channels_last, float32 on cpu .* \d+\.\d images/s", text)
    assert re.fullmatch(r"ratio jax/torch = \d+\.\d\d", lines[-1])


def test_train_throughput_levers_xla_kernels_and_cpu_devices():
    proc = _run(
        "bench.train_throughput", "--model=resnet20", "--image-size=16", "--batch-size=8",
        "--steps=2", "--windows=1", "--warmup=1", "--ynnpack=off", "--cpu-devices=2", "--mixing",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resnet20 16x16, batch 8, float32 on 2 x cpu" in proc.stdout
    assert "XLA compiler options: none" in proc.stdout
    assert re.search(
        r"mixing: +plain [\d.]+ ms, with mixup\+cutmix [\d.]+ ms per step .*: [+-]\d+\.\d%", proc.stdout
    )


def test_train_throughput_refuses_bad_input(capsys):
    from bench import train_throughput

    for argv, message in [
        (["--model=resnet5O"], "unknown --model 'resnet5O'; valid: "),
        (["--model=resnet20", "--batch-size=0"], "--batch-size=0 must be >= 1"),
        (["--model=resnet20", "--cpu-devices=-1"], "--cpu-devices=-1 must be >= 0"),
        (["--model=resnet20", "--ynnpack=maybe"], "invalid choice: 'maybe'"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            train_throughput.parse_args(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    pytest.importorskip("torch")
    with pytest.raises(SystemExit):
        train_throughput.parse_args(["--model=resnetv2_50", "--compare-torch"])
    err = capsys.readouterr().err
    assert "'resnetv2_50' has no PyTorch counterpart; valid:" in err and "resnext50_32x4d" in err


@pytest.mark.parametrize("depth, params", [(20, 269_722), (56, 853_018)])
def test_the_torch_cifar_resnets_are_the_same_architecture(depth, params):
    torch = pytest.importorskip("torch")
    from bench import torch_models

    model = torch_models.cifar_resnet(depth)
    assert sum(p.numel() for p in model.parameters()) == params  # resnet_jax's exact count
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_input_pipeline_bench_prints_grain_beside_torchvision():
    pytest.importorskip("torch")
    proc = _run(
        "bench.input_pipeline",
        "--which=imagenet,v2",
        "--imagenet-images=150",
        "--workers=0,1",
        "--batches=1",
        "--warmup=0",
        "--train-antialias=off",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"generated 150 ImageNet-sized JPEGs \(\d+ KB on average\)", proc.stdout)
    what = r"ImageNet-sized JPEGs: decode, inception crop, flip, bilinear resize to 224"
    rows = re.findall(
        rf"\| {what} \| (resnet_jax \(grain\)|torchvision \(PIL\)) \| (\d) \| [\d,]+ \| 1 \| [\d,]+ \|",
        proc.stdout,
    )
    assert rows == [
        ("resnet_jax (grain)", "0"), ("torchvision (PIL)", "0"),
        ("resnet_jax (grain)", "1"), ("torchvision (PIL)", "1"),
    ], proc.stdout  # fmt: skip
    # The IMAGENET1K_V2 recipe's pipeline, on both sides (the images generated once).
    assert proc.stdout.count("generated 150 ImageNet-sized JPEGs") == 1
    what = r"ImageNet-sized JPEGs, IMAGENET1K_V2 recipe: decode, inception crop to 176, flip, "
    what += "TrivialAugmentWide, "
    rows = re.findall(
        rf"\| {what}normalise, random erasing 0.1 \| (resnet_jax \(grain\)|torchvision \(PIL\)) \|",
        proc.stdout,
    )
    assert rows == ["resnet_jax (grain)", "torchvision (PIL)"] * 2, proc.stdout


def test_folder_startup_bench_prints_each_loader_and_the_listing_memory(tmp_path):
    pytest.importorskip("torch")
    proc = _run(
        "bench.folder_startup",
        f"--root={tmp_path}",
        "--small=400",
        "--large=8",
        "--batch=16",
        "--batches=1",
        "--workers=1",
        "--repeats=1",
        "--listing-files=20000",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaders = ("resnet_jax, new run", "resnet_jax, resumed", "torchvision ImageFolder")
    for loader in loaders:
        row = rf"\| {loader} \| [\d.]+ \| [\d.]+ \| -?[\d.]+ \| -?\d+ \| \d+ / \d+ \|"
        assert re.search(row, proc.stdout), proc.stdout
    assert re.search(r"resnet_jax, resumed, 408 files: [\d.]+s to the first batch", proc.stdout)
    ways = re.findall(r"\| (paths as a tuple of strings \(before\)|listing arrays, [a-z-]+)", proc.stdout)
    assert len(ways) == 3, proc.stdout
    # The memory-mapped listing pickles as the name of its files: a few hundred bytes.
    mapped = re.search(r"\| listing arrays, memory-mapped \(the trainer\) \| ([\d.]+) \|", proc.stdout)
    assert float(mapped.group(1)) < 0.01, proc.stdout
    assert re.search(r"the old start-up \(every file decoded, \d+ threads\): [\d,]+ small", proc.stdout)
    # The folders are kept under --root and reused.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big_folder_400_8", "small_folder_40_8"]


def test_folder_startup_bench_refuses_bad_counts(capsys):
    from bench import folder_startup

    with pytest.raises(SystemExit):
        folder_startup.main(["--small=0"])
    assert "--small=0 must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        folder_startup.main(["--small=100", "--large=1", "--batch=256"])
    assert "--batch=256 exceeds the small folder's 11 files" in capsys.readouterr().err


def test_input_pipeline_bench_refuses_an_unknown_pipeline(capsys):
    from bench import input_pipeline

    with pytest.raises(SystemExit) as exit_info:
        input_pipeline.main(["--which=cifar,mnist"])
    assert exit_info.value.code == 2
    assert "unknown ['mnist']; valid: cifar, imagenet, v2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        input_pipeline.main(["--workers=two"])
    assert "--workers='two': expected comma-separated counts >= 0" in capsys.readouterr().err


def test_conv_layer_bench_prints_one_row_per_stage():
    proc = _run("bench.conv_layer", "--batch-size=2", "--ynnpack=off")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if re.match(r"2x\d+x\d+x\d+ \|", line)]
    assert [row.split(" |")[0] for row in rows] == ["2x32x32x16", "2x16x16x32", "2x8x8x64"]
    assert all(re.search(r"\d+\.\d ms \( *\d+\)", row) for row in rows)


@pytest.mark.skipif(not CIFAR.exists(), reason="needs ../shared/datasets/cifar10-jpeg.tar.gz")
def test_accelerator_suite_runs_every_part_in_smoke_mode(tmp_path):
    # The GPU suite, shrunk to tiny sizes on the CPU, so that it works when a GPU is lent.
    pytest.importorskip("torch")
    # The trainer part runs a preset: the CIFAR one with V2's ingredients (TrivialAugment,
    # erasing, repeated augmentation, mixup/cutmix, EMA every 32 steps).
    preset = "--trainer-config=train/configs/cifar10_tv2.py"
    proc = _run("bench.accelerator", f"--out={tmp_path}", "--smoke", f"--cifar-archive={CIFAR}", preset)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    parts = {"resnet50", "resnet20", "parity", "input", "trainer_cifar10_tv2"}
    assert results["smoke"] and set(results) >= parts
    for row in results["resnet50"] + results["resnet20"][:2]:
        assert row["resnet_jax"]["images_per_s"] > 0 and row["torch_eager"]["images_per_s"] > 0
        assert row["ratio_vs_best_torch"] > 0
    assert results["parity"]["max_abs_logit_diff"] <= 1e-4
    assert [r["workers"] for r in results["input"]] == [0, 1]
    trainer = results["trainer_cifar10_tv2"]
    assert trainer["finished"] and trainer["steps"] == 4
    assert trainer["config"] == "train/configs/cifar10_tv2.py"
    assert re.search(r"\| resnet20 32x32 b8 bfloat16 \| [\d,.]+ \|", proc.stdout)
    assert "parity: resnet18 64x64 float32" in proc.stdout
    assert re.search(r"trainer train/configs/cifar10_tv2.py: 4 steps, test error [\d.]+%,", proc.stdout)


def test_accelerator_names_each_presets_results():
    from bench import accelerator

    # The paper's recipe keeps its key (and its comparison with the paper's 8.75%).
    assert accelerator.trainer_key("train/configs/cifar10.py") == "trainer"
    assert accelerator.trainer_key("train/configs/rsb_a3.py") == "trainer_rsb_a3"


def test_accelerator_suite_refuses_an_unknown_part(capsys):
    from bench import accelerator

    with pytest.raises(SystemExit):
        accelerator.main(["--out=/nonexistent", "--parts=resnet50,imagenet"])
    assert (
        "unknown ['imagenet']; valid: resnet50, resnet20, parity, input, trainer" in capsys.readouterr().err
    )


def test_export_bench_prints_size_times_and_the_difference(capsys):
    from bench import export

    export.main(["--model=resnet20", "--image-size=32", "--batch-size=2"])
    row = capsys.readouterr().out.splitlines()[2]
    assert row.startswith("| resnet20 | 32x32x3 |") and "MB" in row
    diff = float(row.split("|")[6].split()[0])
    assert diff <= 1e-4


def test_stop_time_prints_each_repeat_and_the_time_to_exit(tmp_path):
    proc = _run("bench.stop_time", "--repeats=1", "--after-step=2", f"--workdir={tmp_path}", "--",
                "--config.num_train_steps=200")  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = re.search(
        r"repeat 0: SIGTERM after step 2, stopped at step (\d+), [\d.]+ MiB saved, exit 75; from the "
        r"signal: ([\d.]+) s to the line saying it is saved, ([\d.]+) s to the exit",
        proc.stdout,
    )
    assert line, proc.stdout
    assert 2 <= int(line.group(1)) < 200 and float(line.group(2)) <= float(line.group(3))
    assert "signal to exit: median" in proc.stdout


def test_stop_time_refuses_an_unknown_signal(capsys):
    from bench import stop_time

    with pytest.raises(SystemExit):
        stop_time.main(["--signal=SIGFOO"])
    assert "--signal=SIGFOO is not a signal here" in capsys.readouterr().err


def test_accelerator_suite_refuses_an_unknown_dtype(capsys):
    from bench import accelerator

    with pytest.raises(SystemExit):
        accelerator.main(["--out=/nonexistent", "--parts=resnet50", "--dtypes=bfloat16,fp8"])
    assert "--dtypes='bfloat16,fp8': unknown ['fp8']; valid: bfloat16, float32" in capsys.readouterr().err


def test_accelerator_keeps_the_other_parts_when_one_fails(tmp_path, monkeypatch, capsys):
    # A GPU call is rare: a part that breaks (a newer jax there, say) must not cost the
    # figures of the parts after it, and the command says so by its exit status.
    from bench import accelerator

    def broken(opts):
        raise RuntimeError("no such kernel")

    monkeypatch.setattr(accelerator, "part_resnet50", broken)
    monkeypatch.setattr(
        accelerator, "part_parity", lambda opts: {"case": "c", "max_abs_logit_diff": 0.0, "logit_scale": 1.0}
    )
    assert accelerator.main([f"--out={tmp_path}", "--parts=resnet50,parity"]) == 1
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["errors"] == {"resnet50": "RuntimeError: no such kernel"}
    assert results["parity"]["case"] == "c"
    assert "resnet50: FAILED: RuntimeError: no such kernel" in capsys.readouterr().out


def test_accelerator_reports_the_last_evaluation_of_an_unfinished_run(tmp_path):
    from bench import accelerator

    records = [
        {"step": 100, "split": "train", "top1": 0.5},
        {"step": 2000, "split": "eval", "top1": 0.8},
        {"step": 2100, "split": "train", "top1": 0.9},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert accelerator._last_eval(str(tmp_path / "metrics.jsonl"))["step"] == 2000
    assert accelerator._last_eval(str(tmp_path / "missing.jsonl")) is None


@pytest.mark.skipif(not CIFAR.exists(), reason="needs ../shared/datasets/cifar10-jpeg.tar.gz")
def test_evaluate_bench_prints_both_loops_counting_alike():
    pytest.importorskip("torch")
    proc = _run("bench.evaluate", "--model=resnet18", "--images=12", "--batch-size=4", "--workers=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [
        line.split("|")
        for line in proc.stdout.splitlines()
        if line.startswith("| resnet_jax") or line.startswith("| torchvision")
    ]
    assert len(rows) == 2, proc.stdout
    ours, theirs = ([cell.strip() for cell in row[2:6]] for row in rows)
    assert ours[:2] == theirs[:2] and abs(float(ours[2]) - float(theirs[2])) < 1e-4
    assert float(ours[3]) > 0 and float(theirs[3]) > 0


def test_evaluate_bench_refuses_bad_input(capsys):
    pytest.importorskip("torch")
    from bench import evaluate

    for argv, message in (
        (["--images=0"], "--images=0: must be >= 1"),
        (["--model=vgg16"], "--model=vgg16: valid:"),
    ):
        with pytest.raises(SystemExit):
            evaluate.main(argv)
        assert message in capsys.readouterr().err
