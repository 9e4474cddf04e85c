r"""python -m bench.compiled_targets --out=DIR [--rows=all|gpu|tpu|cifar|calibration] [--timeout=900]

The presets compiled for TPU slices and GPU nodes on this CPU (``python -m train.compile``,
one process per row), as BENCHMARKS.md's "Compiled for TPUs and GPUs on a CPU" shows
them: whether the train step fits, its memory per device, FLOPs per image, bytes per
step, the roofline bound in images/s per device, and the largest batch per device that
fits (searched for ``imagenet_resnet50`` on the GPUs and the v5e-8, and ``cifar10`` on the
v5e-1: each search compiles several times, minutes each for a TPU here). Each row's JSON
goes to ``DIR/NAME.json``; a Markdown table is printed at the end, and rows already in DIR
are not compiled again.

Rows: ``imagenet_resnet50``, ``imagenet_resnet50_tv2``, ``rsb_a1`` and ``rsb_a3`` (ResNet-50,
bf16) at their published global batch on 8 H100s, 8 H200s, v5e-8, v6e-8, v5p-8 and v4-8
(and v3-8 for ``imagenet_resnet50``, beside a published TPU v3 throughput); ``cifar10``
(ResNet-20) on the single-chip TPUs Colab offers; and ``imagenet_resnet50`` at batch 256
on one H200, beside what ``bench.accelerator`` measured on one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

IMAGENET = ("imagenet_resnet50", "imagenet_resnet50_tv2", "rsb_a1", "rsb_a3")
GPUS = ("h100x8", "h200x8")
TPUS = ("v5e-8", "v6e-8", "v5p-8", "v4-8")


def rows(which: str) -> list[tuple[str, str, tuple[str, ...], bool]]:
    """(name, config, target and flags, search the largest batch)."""
    out: list[tuple[str, str, tuple[str, ...], bool]] = []
    if which in ("all", "calibration"):
        out.append(
            (
                "imagenet_resnet50@h200x1_b256",
                "imagenet_resnet50",
                ("h200x1", "--config.batch_size=256"),
                False,
            )
        )
    if which in ("all", "gpu"):
        out += [(f"{c}@{t}", c, (t,), c == IMAGENET[0]) for c in IMAGENET for t in GPUS]
    if which in ("all", "tpu"):
        # imagenet_resnet50 first, its largest batch on the v5e-8 only (each compile takes
        # minutes here), then the other presets.
        out += [(f"imagenet_resnet50@{t}", "imagenet_resnet50", (t,), t == "v5e-8") for t in (*TPUS, "v3-8")]
        out += [(f"{c}@{t}", c, (t,), False) for t in TPUS for c in IMAGENET[1:]]
    if which in ("all", "cifar"):
        out += [(f"cifar10@{t}", "cifar10", (t,), t == "v5e-1") for t in ("v5e-1", "v6e-1", "v2-8")]
    return out


def compile_row(
    out: str, name: str, config: str, args: tuple[str, ...], search: bool, timeout: float
) -> dict:
    path = os.path.join(out, f"{name}.json")
    if os.path.exists(path):
        with open(path) as f:
            return {"name": name, "wall_s": 0.0, **json.load(f)}
    cmd = [sys.executable, "-m", "train.compile", f"--config=train/configs/{config}.py"]
    cmd += [f"--target={args[0]}", *args[1:], "--noeval", f"--json={path}"]
    cmd += ["--max_batch"] if search else []
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        output, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired:
        output, code = f"timed out after {timeout:.0f}s", -1
    if code == 0 and os.path.exists(path):
        with open(path) as f:
            result = json.load(f)
    else:
        errors = [line for line in output.splitlines() if line.startswith("error:")]
        result = {"error": (errors[-1] if errors else output.strip().splitlines()[-1])[:300]}
    result.update(name=name, wall_s=time.perf_counter() - start)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    return result


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "| preset | target | batch per device | fits | memory per device (of HBM) | GFLOP per image "
        "| GB per step | bound: images/s per device | largest batch per device | compile |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        preset, target = r["name"].split("@")
        if "error" in r:
            lines.append(f"| {preset} | {target} | | {r['error']} | | | | | | |")
            continue
        t = r["train"]
        mem = t["memory"]["total"] / 2**30
        gflop = t["flops"] / t["batch_per_device"] / 1e9 if t["flops"] else 0
        gb = f"{t['bytes_accessed'] / 1e9:.1f}" if t.get("bytes_accessed") else "-"
        bound = (
            f"{t['images_per_s_per_device']:,.0f} ({t['bound']})" if "images_per_s_per_device" in t else "-"
        )
        lines.append(
            f"| {preset} | {target} ({r['devices']} x {r['device_kind']}) | {t['batch_per_device']} | "
            f"{'yes' if t['fits'] else 'no'} | {mem:.2f} GiB ({r['hbm_gib']:g}) | {gflop:.2f} | {gb} | "
            f"{bound} | "
            f"{r.get('max_batch_per_device', '-')} | {t['compile_s']:.0f}s |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.compiled_targets", description=__doc__.split("\n\n")[1]
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--rows", default="all", choices=("all", "gpu", "tpu", "cifar", "calibration"))
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per row")
    opts = parser.parse_args(sys.argv[1:] if argv is None else argv)
    os.makedirs(opts.out, exist_ok=True)
    results = []
    for name, config, args, search in rows(opts.rows):
        r = compile_row(opts.out, name, config, args, search, opts.timeout)
        print(f"{name}: {r.get('error') or 'done'} ({r['wall_s']:.0f}s)", flush=True)
        results.append(r)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
