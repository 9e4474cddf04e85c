r"""python -m bench.accelerator --out=DIR [--parts=resnet50,resnet20,parity,input,trainer] [--smoke]
   [--trainer-config=train/configs/PRESET.py] [--trainer-flag=--config.FIELD=VALUE ...]

Everything this project measures on an accelerator, in one command, on whatever JAX sees:
a Markdown table on stdout and ``DIR/results.json``. Each part can run alone (``--parts``),
so a GPU session split into 10-minute calls can fill the figures in a few of them.

- ``resnet50``: the trainer's jitted step (``train.steps.make_steps``) for ResNet-50 at 224,
  batch 256, bf16 compute (float32 params) and float32, on a device-resident batch:
  images/s, step and compile time, MFU (XLA's counted FLOPs against the device's peak,
  ``bench.train_throughput.PEAK_TFLOPS``). Beside it, in the same run, PyTorch's best on
  the same device: torchvision ``resnet50``, channels_last, ``torch.autocast(bfloat16)``,
  eager and ``torch.compile``, SGD with momentum; the ratio is against the faster.
- ``resnet20``: the same at 32x32, batch 128, then resnet_jax alone at larger batches, to
  show where the latency-bound CIFAR step saturates.
- ``parity``: torchvision's ResNet-50 (random weights, BatchNorm calibrated on random
  images) converted with ``resnet_jax.convert.from_torchvision``, against torchvision on
  the same device: float32, ``jax.default_matmul_precision("highest")``, TF32 off in torch;
  the max |logit difference|.
- ``input``: ``bench.input_pipeline``'s ImageNet-style case with 1, 4, 8, 16 grain workers,
  against the ResNet-50 bf16 step's appetite: which one binds.
- ``trainer``: ``python -m train.main`` with He et al. 2016's CIFAR recipe
  (``train/configs/cifar10.py``: ResNet-20, 64k steps of 128) on the CIFAR-10 JPEGs of
  ``--cifar-archive``, in ``DIR/cifar10_run``; stopped after ``--trainer-budget-s`` and
  resumed from its checkpoint by the next call. Test error against the paper's 8.75%.
  ``--trainer-config`` runs another preset instead (``cifar10_tv2.py``; an ImageNet one
  with ``--trainer-flag=--config.data_dir=...``), in ``DIR/PRESET_run``, its results
  under ``trainer_PRESET``; ``--trainer-flag`` adds any ``--config.FIELD=VALUE``.

``--smoke`` shrinks every part to a few steps of tiny sizes, so that the command is tested
on a CPU (the test suite runs it); its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from typing import Any

from bench import input_pipeline as input_bench
from bench import train_throughput

PARTS = ("resnet50", "resnet20", "parity", "input", "trainer")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_ERROR = 8.75  # He et al. 2016, Table 6: ResNet-20 on CIFAR-10, % test error


def _throughput_args(model: str, image_size: int, batch: int, dtype: str, smoke: bool) -> argparse.Namespace:
    return argparse.Namespace(
        model=model,
        image_size=image_size,
        batch_size=batch,
        dtype=dtype,
        num_classes=0,
        steps=1 if smoke else 20,
        windows=1 if smoke else 3,
        warmup=0 if smoke else 3,
        peak_tflops=0.0,
        ynnpack="on",
        cpu_devices=0,
    )


def _report(label: str, name: str, r: dict[str, Any]) -> None:
    """One measurement as soon as it is taken: a call stopped at its limit keeps it."""
    figures = ", ".join(f"{k} {r[k]:.4g}" for k in ("images_per_s", "step_s", "compile_s") if k in r)
    print(f"  {label}: {name}: {figures or r.get('error')}", flush=True)


def _step_row(label: str, args: argparse.Namespace, torch_too: bool, smoke: bool) -> dict[str, Any]:
    """resnet_jax's step and, with ``torch_too``, PyTorch's eager and compiled steps."""
    row: dict[str, Any] = {"case": label, "resnet_jax": train_throughput.time_jax(args)}
    _report(label, "resnet_jax", row["resnet_jax"])
    if torch_too:
        # torch.compile needs minutes and a C++ toolchain on a CPU: not in smoke mode.
        for name, compiled in (("torch_eager", False), ("torch_compile", True)):
            if compiled and smoke:
                continue
            try:
                row[name] = train_throughput.time_torch(args, compiled)
            except Exception as e:
                row[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
            _report(label, name, row[name])
        rates = [
            row[k]["images_per_s"]
            for k in ("torch_eager", "torch_compile")
            if "images_per_s" in row.get(k, {})
        ]
        if rates:
            row["ratio_vs_best_torch"] = row["resnet_jax"]["images_per_s"] / max(rates)
    return row


def part_resnet50(opts: argparse.Namespace) -> list[dict[str, Any]]:
    model, size, batch = ("resnet18", 32, 2) if opts.smoke else ("resnet50", 224, 256)
    return [
        _step_row(
            f"{model} {size}x{size} b{batch} {dtype}",
            _throughput_args(model, size, batch, dtype, opts.smoke),
            True,
            opts.smoke,
        )
        for dtype in opts.dtypes
    ]


def part_resnet20(opts: argparse.Namespace) -> list[dict[str, Any]]:
    base = 8 if opts.smoke else 128
    rows = [
        _step_row(
            f"resnet20 32x32 b{base} {dtype}",
            _throughput_args("resnet20", 32, base, dtype, opts.smoke),
            True,
            opts.smoke,
        )
        for dtype in opts.dtypes
    ]
    for batch in (16,) if opts.smoke else (256, 512, 1024, 2048, 4096):
        args = _throughput_args("resnet20", 32, batch, "bfloat16", opts.smoke)
        rows.append(_step_row(f"resnet20 32x32 b{batch} bfloat16", args, False, opts.smoke))
    return rows


def part_parity(opts: argparse.Namespace) -> dict[str, Any]:
    import jax
    import numpy as np
    import torch

    import resnet_jax
    from bench import torch_models

    name, size = ("resnet18", 64) if opts.smoke else ("resnet50", 224)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    model = getattr(torch_models.import_torchvision().models, name)(num_classes=10)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.2)
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the calibration batches
        model.train()
        for _ in range(2):
            model(torch.randn(8, 3, size, size, generator=gen))
    model.eval()
    x = np.random.default_rng(0).normal(size=(4, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        expected = model.to(device)(torch.from_numpy(x).to(device)).cpu().numpy()
    variables = resnet_jax.convert.from_torchvision(model.state_dict(), name)
    jax_model = resnet_jax.create_model(name, num_classes=10)
    with jax.default_matmul_precision("highest"):
        got = np.asarray(jax.jit(jax_model.apply)(variables, x.transpose(0, 2, 3, 1)))
    return {
        "case": f"{name} {size}x{size} float32, torchvision on {device.type}",
        "max_abs_logit_diff": float(np.abs(got - expected).max()),
        "logit_scale": float(np.abs(expected).max()),
        "jax_device": jax.devices()[0].device_kind,
        "torch_device": torch.cuda.get_device_name() if cuda else "cpu",
    }


def part_input(opts: argparse.Namespace, step_images_per_s: float | None) -> list[dict[str, Any]]:
    from train.configs import imagenet_resnet50

    count, batches = (64, 1) if opts.smoke else (2048, 20)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_accel_input_") as tmp:
        root, kb = input_bench.imagenet_like_jpegs(os.path.join(tmp, "jpegs"), count)
        config = imagenet_resnet50.get_config()
        config.update(dataset="image_folder", data_dir=root, manual_dir="", eval_split="", input_threads=1)
        config.update(batch_size=8 if opts.smoke else input_bench.BATCH, lr_base_batch_size=0)
        for workers in (0, 1) if opts.smoke else (1, 4, 8, 16):
            r = input_bench.measure_grain(config, workers, batches, 1 if opts.smoke else 4)
            rows.append({"workers": workers, "images_per_s": r["images_per_s"], "jpeg_kb": kb})
    for row in rows:
        if step_images_per_s:
            row["binds"] = "input pipeline" if row["images_per_s"] < step_images_per_s else "train step"
    return rows


def _smoke_members(tar: tarfile.TarFile, per_class: int = 20) -> list[tarfile.TarInfo]:
    counts: dict[str, int] = {}
    members = []
    for member in tar:
        folder = os.path.dirname(member.name)
        if member.isfile() and counts.get(folder, 0) < per_class:
            counts[folder] = counts.get(folder, 0) + 1
            members.append(member)
    return members


def _extract_cifar(opts: argparse.Namespace) -> str:
    """The CIFAR-10 JPEG folder, extracted from ``--cifar-archive`` once."""
    data = os.path.join(opts.out, "cifar10_jpeg")
    if not os.path.isdir(os.path.join(data, "train")):
        if not os.path.exists(opts.cifar_archive):
            raise SystemExit(
                f"--cifar-archive={opts.cifar_archive} does not exist: the CIFAR-10 JPEG tarball"
            )
        with tarfile.open(opts.cifar_archive) as tar:
            # Smoke mode: the first 20 images of each class and split are enough.
            members = _smoke_members(tar) if opts.smoke else None
            tar.extractall(data + ".tmp", members=members, filter="data")
        inner = next(here for here, dirs, _ in os.walk(data + ".tmp") if "train" in dirs)
        shutil.move(inner, data)
        shutil.rmtree(data + ".tmp", ignore_errors=True)
    return data


def trainer_key(config_path: str) -> str:
    """``trainer`` for the paper's recipe, ``trainer_PRESET`` for any other config."""
    stem = os.path.splitext(os.path.basename(config_path))[0]
    return "trainer" if stem == "cifar10" else f"trainer_{stem}"


def part_trainer(opts: argparse.Namespace) -> dict[str, Any]:
    """A preset through ``train.main``, resumable across calls of this command."""
    config = opts.trainer_config
    if not os.path.isfile(os.path.join(REPO, config)):
        raise SystemExit(f"--trainer-config={config} does not exist (relative to {REPO})")
    stem = os.path.splitext(os.path.basename(config))[0]
    workdir = os.path.join(opts.out, f"{stem}_run")
    flags = [f"--config={config}"]
    own_data = any(f.startswith(("--config.data_dir=", "--config.dataset=")) for f in opts.trainer_flag)
    if not own_data:
        flags += ["--config.dataset=image_folder", f"--config.data_dir={_extract_cifar(opts)}"]
    flags.append(f"--config.input_workers={0 if opts.smoke else min(8, os.cpu_count() or 1)}")
    if opts.smoke:
        flags += ["--config.num_train_steps=4", "--config.batch_size=32", "--config.eval_batch_size=40"]
    elif stem == "cifar10":
        flags += ["--config.eval_every_steps=4000", "--config.checkpoint_every_steps=2000"]
    flags += opts.trainer_flag
    cmd = [sys.executable, "-m", "train.main", f"--workdir={workdir}", *flags]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=opts.trainer_budget_s)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # the newest complete checkpoint resumes it next time
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    wall = time.perf_counter() - start
    summary_path = os.path.join(workdir, "summary.json")
    result: dict[str, Any] = {
        "config": config,
        "flags": flags[1:],
        "workdir": workdir,
        "call_wall_s": wall,
        "returncode": proc.returncode,
    }
    if proc.returncode == 0 and os.path.exists(summary_path):
        with open(summary_path) as f:
            summary = json.load(f)
        result.update(
            finished=True,
            steps=summary["steps"],
            test_error_pct=100 * (1 - summary["final"]["top1"]),
            paper_error_pct=PAPER_ERROR if stem == "cifar10" else None,
            images_per_s=summary["images_per_s"],
            run_wall_s=summary["wall_s"],
        )
    else:
        steps = (
            sorted(int(p) for p in os.listdir(os.path.join(workdir, "checkpoints")) if p.isdigit())
            if os.path.isdir(os.path.join(workdir, "checkpoints"))
            else []
        )
        result.update(finished=False, newest_checkpoint=steps[-1] if steps else None, tail=out[-1500:])
        last = _last_eval(os.path.join(workdir, "metrics.jsonl"))
        if last:
            result.update(last_eval_step=last["step"], last_eval_error_pct=100 * (1 - last["top1"]))
    return result


def _last_eval(metrics_path: str) -> dict[str, Any] | None:
    """The newest evaluation record the trainer wrote, if any."""
    if not os.path.exists(metrics_path):
        return None
    last = None
    with open(metrics_path) as f:
        for line in f:
            record = json.loads(line)
            if record.get("split") == "eval" and "top1" in record:
                last = record
    return last


def environment() -> dict[str, str]:
    import jax

    env = {
        "device": f"{jax.device_count()} x {jax.devices()[0].device_kind} ({jax.default_backend()})",
        "versions": train_throughput.versions(torch_too=True),
        "cpu": f"{os.cpu_count()} cores, {train_throughput.cpu_name()}",
        "host": platform.node(),
    }
    try:
        query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
        env["nvidia_smi"] = subprocess.run(query, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return env


def _fmt(r: dict[str, Any] | None, key: str, scale: float = 1.0, digits: int = 1) -> str:
    if not r or key not in r or r[key] is None:
        return (r or {}).get("error", "-")[:60] if r else "-"
    return f"{r[key] * scale:,.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    lines = [f"device: {results['environment']['device']}", f"versions: {results['environment']['versions']}"]
    if "nvidia_smi" in results["environment"]:
        lines.append(f"nvidia-smi: {results['environment']['nvidia_smi']}")
    steps = results.get("resnet50", []) + results.get("resnet20", [])
    if steps:
        lines += [
            "",
            "| case | resnet_jax images/s | step ms | compile s | MFU % | torch eager | torch.compile "
            "| ratio |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in steps:
            jx = row["resnet_jax"]
            lines.append(
                f"| {row['case']} | {_fmt(jx, 'images_per_s')} | {_fmt(jx, 'step_s', 1e3)} | "
                f"{_fmt(jx, 'compile_s')} | {_fmt(jx, 'mfu', 100)} | "
                f"{_fmt(row.get('torch_eager'), 'images_per_s')} | "
                f"{_fmt(row.get('torch_compile'), 'images_per_s')} | "
                f"{_fmt(row, 'ratio_vs_best_torch', 1.0, 2)} |"
            )
    if "parity" in results:
        p = results["parity"]
        lines += [
            "",
            f"parity: {p['case']}: max |logit diff| {p['max_abs_logit_diff']:.2e} "
            f"(logits up to {p['logit_scale']:.1f})",
        ]
    if "input" in results:
        lines += ["", "| grain workers | ImageNet-style images/s | binds |", "|---|---|---|"]
        lines += [
            f"| {r['workers']} | {r['images_per_s']:,.0f} | {r.get('binds', '-')} |" for r in results["input"]
        ]
    for key, error in results.get("errors", {}).items():
        lines.append(f"\n{key}: FAILED: {error.splitlines()[0][:300]}")
    for key in (k for k in results if k.startswith("trainer")):
        t = results[key]
        name = key if key == "trainer" else f"trainer {t.get('config', key)}"
        if t.get("finished"):
            paper = f" (paper {t['paper_error_pct']}%)" if t.get("paper_error_pct") else ""
            lines.append(
                f"\n{name}: {t['steps']} steps, test error {t['test_error_pct']:.2f}%{paper}, "
                f"{t['images_per_s']:,.0f} train images/s, last call {t['call_wall_s']:.0f}s"
            )
        else:
            at = (
                f"; test error {t['last_eval_error_pct']:.2f}% at step {t['last_eval_step']}"
                if "last_eval_step" in t
                else ""
            )
            lines.append(
                f"\n{name}: not finished this call ({t['call_wall_s']:.0f}s); newest checkpoint "
                f"{t.get('newest_checkpoint')}{at}; rerun to resume"
            )
    return "\n".join(lines)


def _run_part(part: str, opts: argparse.Namespace, results: dict[str, Any]) -> Any:
    if part == "resnet50":
        return part_resnet50(opts)
    if part == "resnet20":
        return part_resnet20(opts)
    if part == "parity":
        return part_parity(opts)
    if part == "input":
        bf16 = next((r for r in results.get("resnet50", []) if "bfloat16" in r["case"]), None)
        return part_input(opts, bf16["resnet_jax"]["images_per_s"] if bf16 else None)
    return part_trainer(opts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.accelerator", description=__doc__.split("\n\n")[1])
    parser.add_argument("--out", required=True, help="a directory for results.json and the trainer's run")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated: {', '.join(PARTS)}")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and a few steps: a CPU check")
    parser.add_argument(
        "--dtypes", default="bfloat16,float32", help="compute dtypes of the resnet50/resnet20 parts"
    )
    parser.add_argument("--cifar-archive", default=input_bench.DEFAULT_ARCHIVE)
    parser.add_argument("--trainer-budget-s", type=float, default=480.0, help="stop the trainer after this")
    parser.add_argument(
        "--trainer-config", default="train/configs/cifar10.py", help="the preset the trainer part runs"
    )
    parser.add_argument(
        "--trainer-flag", action="append", default=[], help="--config.FIELD=VALUE for the trainer; repeatable"
    )
    opts = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if opts.smoke:  # a CPU check beside other work: no thread pools over every core
        import torch

        torch.set_num_threads(1)
    parts = [p.strip() for p in opts.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        parser.error(f"--parts={opts.parts!r}: unknown {unknown}; valid: {', '.join(PARTS)}")
    opts.dtypes = [d.strip() for d in opts.dtypes.split(",") if d.strip()]
    bad = sorted(set(opts.dtypes) - {"bfloat16", "float32"})
    if bad or not opts.dtypes:
        parser.error(f"--dtypes={','.join(opts.dtypes)!r}: unknown {bad}; valid: bfloat16, float32")
    os.makedirs(opts.out, exist_ok=True)
    path = os.path.join(opts.out, "results.json")
    results: dict[str, Any] = {}
    if os.path.exists(path):  # parts measured by earlier calls stay
        with open(path) as f:
            results = json.load(f)
    results["environment"] = environment()
    results["smoke"] = opts.smoke
    print(f"{results['environment']['device']}; {results['environment']['versions']}", flush=True)
    for part in (p for p in PARTS if p in parts):
        start = time.perf_counter()
        key = trainer_key(opts.trainer_config) if part == "trainer" else part
        try:
            results[key] = _run_part(part, opts, results)
            results.get("errors", {}).pop(key, None)
        except Exception as e:  # one broken part must not cost the others' figures
            traceback.print_exc()
            results.setdefault("errors", {})[key] = f"{type(e).__name__}: {e}"[:500]
        print(f"{part}: done in {time.perf_counter() - start:.0f}s", flush=True)
        with open(path, "w") as f:
            json.dump(results, f, indent=1)
    print("\n" + markdown(results))
    print(f"\nwrote {path}")
    return 1 if results.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
