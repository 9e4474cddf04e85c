r"""python -m bench.train_throughput --model=NAME --image-size=N --batch-size=B \
    [--dtype=bfloat16] [--compare-torch] [--ynnpack=on|off] [--cpu-devices=N] [--mixing]

Times resnet_jax's real train step: ``train.steps.make_steps``, the function ``train.main``
runs (SGD with momentum, weight decay, BatchNorm updates, metrics), on one synthetic batch
that stays on the devices, so the input pipeline is out of the picture (see
``bench/input_pipeline.py`` for it). Compilation is timed apart. Steps are timed in
windows of ``--steps``, each ended by ``block_until_ready``; the median window counts.

On a CPU the step is compiled with ``resnet_jax.xla.compiler_options()`` (XLA's YNNPACK
kernels), as the trainer compiles it; ``--ynnpack=off`` gives XLA's own kernels.

``--mixing`` also times the step with on-device mixup (alpha 0.2) and cutmix (alpha 1.0),
one per batch (torchvision's IMAGENET1K_V2 values), against the plain step: the two
compiled steps alternate window by window, so the machine's drift falls on both, and the
extra time per step is printed.

``--compare-torch`` times the same architecture from torchvision (the CIFAR ResNets from
``bench/torch_models.py``) in the same run, with PyTorch's best settings: channels_last,
bf16 autocast when ``--dtype=bfloat16`` (on a GPU also cuDNN autotuning and TF32), eager
and ``torch.compile``, both reported. The last line is ``ratio jax/torch = X.XX`` against
the faster of the two.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

# Dense peak TFLOP/s per device, for MFU: (bf16, float32 as XLA runs it). On NVIDIA GPUs
# since Ampere, JAX's default precision runs float32 convolutions in TF32.
PEAK_TFLOPS = {
    "H100 PCIe": (756.0, 378.0),
    "H100": (989.0, 495.0),  # SXM
    "H200": (989.0, 495.0),
    "A100": (312.0, 156.0),
    "L4": (121.0, 60.0),
    "TPU v4": (275.0, 275.0),
    "TPU v5 lite": (197.0, 197.0),
    "TPU v5p": (459.0, 459.0),
    "TPU v6 lite": (918.0, 918.0),
}


def peak_tflops(device_kind: str, dtype: str) -> float | None:
    for key, peaks in PEAK_TFLOPS.items():  # the more specific keys come first
        if key in device_kind:
            return peaks[0] if dtype == "bfloat16" else peaks[1]
    return None


def time_windows(
    step: Callable[[], Any], sync: Callable[[Any], None], steps: int, windows: int
) -> list[float]:
    """Seconds per step in each of ``windows`` windows of ``steps`` steps."""
    out = []
    for _ in range(windows):
        start = time.perf_counter()
        result = None
        for _ in range(steps):
            result = step()
        sync(result)
        out.append((time.perf_counter() - start) / steps)
    return out


def _setup(args: argparse.Namespace, uint8: bool = False) -> tuple[Any, ...]:
    """The trainer's optimizer (SGD, momentum 0.9, weight decay), the model's state on
    the mesh, one batch on the devices (normal floats, or uint8 pixels) and a step rng."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import resnet_jax
    from train import mesh as mesh_lib
    from train import optim, settings, steps
    from train.configs import default

    optim_settings = settings.optim(default.get_config())
    mesh = mesh_lib.create_mesh()
    mesh_lib.check_batch_size(args.batch_size, mesh)
    overrides = {"num_classes": args.num_classes} if args.num_classes else {}
    model = resnet_jax.create_model(args.model, dtype=jnp.dtype(args.dtype), **overrides)
    shape = (args.image_size, args.image_size, model.in_channels)
    tx = optim.create_optimizer(optim_settings, optim.create_learning_rate_fn(optim_settings, 100, 1500))
    data = np.random.default_rng(0)
    if uint8:
        images = data.integers(0, 256, (args.batch_size, *shape), dtype=np.uint8)
    else:
        images = data.normal(size=(args.batch_size, *shape)).astype(np.float32)
    labels = data.integers(0, model.num_classes, args.batch_size).astype(np.int32)
    batch = mesh_lib.shard_batch({"image": images, "label": labels}, mesh)

    def fresh_state():
        return mesh_lib.replicate(steps.create_train_state(model, tx, shape, jax.random.key(0)), mesh)

    return mesh, fresh_state, batch, mesh_lib.replicate(jax.random.key(1), mesh)


def _flops(stage: Any) -> float:
    """XLA's FLOP count of a lowered or compiled step, per device; 0 where it gives none
    (a compiled GPU executable's ``cost_analysis()`` is None)."""
    cost = stage.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
    return float((cost or {}).get("flops", 0.0))


def model_train_flops(args: argparse.Namespace) -> float:
    """3 x the forward FLOPs of a batch (the usual count of a training step: the backward
    pass costs twice the forward), lowered for the CPU whatever the backend. A compiled GPU
    executable counts no FLOPs, and its lowered module miscounts them (0.49 GFLOP per
    ResNet-50 image against the forward's 8.0, measured on an H200 with jax 0.11.2)."""
    import jax
    import jax.numpy as jnp

    import resnet_jax

    overrides = {"num_classes": args.num_classes} if args.num_classes else {}
    model = resnet_jax.create_model(args.model, dtype=jnp.dtype(args.dtype), **overrides)
    shape = (args.batch_size, args.image_size, args.image_size, model.in_channels)
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape), train=False))
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
    return 3 * _flops(forward.trace(variables, x).lower(lowering_platforms=("cpu",)))


def time_jax(args: argparse.Namespace) -> dict[str, Any]:
    import jax

    import resnet_jax
    from train import settings, steps

    if args.cpu_devices:
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    mesh, fresh_state, batch, rng = _setup(args)
    state = fresh_state()
    train_fn, _ = steps.make_steps(mesh, settings.Step(ynnpack=args.ynnpack == "on"))
    start = time.perf_counter()
    compiled = train_fn.lower(state, batch, rng).compile()
    compile_s = time.perf_counter() - start
    flops, flops_source = _flops(compiled), "XLA (compiled step)"
    if not flops:
        flops, flops_source = model_train_flops(args), "3 x forward (CPU lowering)"

    holder = {"state": state}

    def step():
        holder["state"], metrics = compiled(holder["state"], batch, rng)
        return metrics

    for _ in range(args.warmup):
        jax.block_until_ready(step())
    windows = time_windows(step, jax.block_until_ready, args.steps, args.windows)
    step_s = statistics.median(windows)
    device = jax.devices()[0]
    peak = args.peak_tflops or peak_tflops(device.device_kind, args.dtype)
    return {
        "compile_s": compile_s,
        "step_s": step_s,
        "best_step_s": min(windows),
        "images_per_s": args.batch_size / step_s,
        "flops_per_step": flops,
        "flops_source": flops_source,
        "mfu": flops / step_s / (peak * 1e12) if peak and flops else None,
        "peak_tflops": peak,
        "devices": mesh.devices.size,
        "device_kind": device.device_kind,
        "platform": device.platform,
        "xla_options": resnet_jax.xla.compiler_options(device.platform, args.ynnpack == "on"),
    }


def time_mixing(args: argparse.Namespace) -> dict[str, float]:
    """Median seconds per step of the plain step and of the mixup/cutmix step, timed in
    alternating windows on the same batch (A-B, B-A, ...)."""
    import jax

    from train import mixing, settings, steps

    mesh, fresh_state, batch, rng = _setup(args, uint8=True)
    runs = {}
    for name, mix in (("plain", mixing.NO_MIXING), ("mixup+cutmix", mixing.MixConfig(0.2, 1.0))):
        state = fresh_state()
        train_fn, _ = steps.make_steps(mesh, settings.Step(ynnpack=args.ynnpack == "on", mix=mix))
        compiled = train_fn.lower(state, batch, rng).compile()
        holder = {"state": state}

        def step(compiled=compiled, holder=holder):
            holder["state"], metrics = compiled(holder["state"], batch, rng)
            return metrics

        for _ in range(args.warmup):
            jax.block_until_ready(step())
        runs[name] = (step, [])
    order = list(runs.values())
    for i in range(args.windows):
        # A-B then B-A: whichever runs second in a pair is not always the same one.
        for step, windows in order if i % 2 == 0 else order[::-1]:
            windows.extend(time_windows(step, jax.block_until_ready, args.steps, 1))
    return {name: statistics.median(windows) for name, (_, windows) in runs.items()}


def breakdown(args: argparse.Namespace) -> dict[str, float]:
    """Milliseconds per call of the train step's parts, one device: where the time goes."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import resnet_jax

    model = resnet_jax.create_model(args.model, dtype=jnp.dtype(args.dtype))
    data = np.random.default_rng(0)
    x = jnp.asarray(data.normal(size=(args.batch_size, args.image_size, args.image_size, model.in_channels)))
    x = x.astype(jnp.float32)
    y = jnp.asarray(data.integers(0, model.num_classes, args.batch_size), jnp.int32)
    variables = jax.jit(model.init)(jax.random.key(0), x[:1])

    def loss(params, stats, x, y):
        logits, _ = model.apply(
            {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    # Arrays go in as arguments: closed over, XLA could fold them as constants.
    parts = {
        "eval forward": lambda p, s, x, y: model.apply({"params": p, "batch_stats": s}, x),
        "train forward": lambda p, s, x, y: model.apply(
            {"params": p, "batch_stats": s}, x, train=True, mutable=["batch_stats"]
        )[0],
        "forward + input gradients": jax.grad(loss, argnums=2),
        "forward + all gradients": jax.grad(loss, argnums=(0, 2)),
    }
    out = {}
    options = resnet_jax.xla.compiler_options(ynnpack=args.ynnpack == "on")
    for name, fn in parts.items():
        fn = jax.jit(fn, compiler_options=options)
        call = functools.partial(fn, variables["params"], variables["batch_stats"], x, y)
        jax.block_until_ready(call())
        out[name] = 1e3 * statistics.median(
            time_windows(call, jax.block_until_ready, args.steps, args.windows)
        )
    return out


def time_torch(args: argparse.Namespace, compile_model: bool) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from bench import torch_models

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cudnn.benchmark = True  # cuDNN autotuning
        torch.backends.cuda.matmul.allow_tf32 = True  # as XLA's default precision does
        torch.backends.cudnn.allow_tf32 = True
    num_classes = args.num_classes or (10 if torch_models.is_cifar(args.model) else 1000)
    model = torch_models.create(args.model, num_classes).to(device, memory_format=torch.channels_last)
    model.train()
    # The trainer's optimizer; torch decays every parameter, resnet_jax only the kernels.
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=config_weight_decay())
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=gen)
    x = x.to(device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (args.batch_size,), generator=gen).to(device)
    forward = torch.compile(model) if compile_model else model
    bf16 = args.dtype == "bfloat16"

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(forward(x), y)
        loss.backward()
        opt.step()
        return loss

    def sync(_):
        if cuda:
            torch.cuda.synchronize()

    start = time.perf_counter()
    step()  # eager: the first call allocates; compiled: it compiles
    sync(None)
    first_s = time.perf_counter() - start
    for _ in range(max(args.warmup - 1, 0)):
        step()
    sync(None)
    windows = time_windows(step, sync, args.steps, args.windows)
    step_s = statistics.median(windows)
    return {
        "compile_s": first_s if compile_model else 0.0,
        "step_s": step_s,
        "best_step_s": min(windows),
        "images_per_s": args.batch_size / step_s,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "threads": torch.get_num_threads(),
    }


def config_weight_decay() -> float:
    from train.configs import default

    return float(default.get_config().weight_decay)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def versions(torch_too: bool) -> str:
    import flax
    import jax
    import optax

    parts = [f"python {platform.python_version()}", f"jax {jax.__version__}", f"flax {flax.__version__}"]
    parts.append(f"optax {optax.__version__}")
    if torch_too:
        import torch

        from bench import torch_models

        parts += [
            f"torch {torch.__version__}",
            f"torchvision {torch_models.import_torchvision().__version__}",
        ]
    return ", ".join(parts)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.train_throughput", description=__doc__.split("\n\n")[1]
    )
    parser.add_argument("--model", default="resnet20", help="a resnet_jax model name")
    parser.add_argument("--image-size", type=int, default=0, help="default: 32 for CIFAR nets, else 224")
    parser.add_argument("--batch-size", type=int, default=128, help="global, over all devices")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--num-classes", type=int, default=0, help="default: the model's (10 or 1000)")
    parser.add_argument("--steps", type=int, default=20, help="steps per timed window")
    parser.add_argument("--windows", type=int, default=3, help="timed windows; the median counts")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="the device's peak, for MFU")
    parser.add_argument("--compare-torch", action="store_true", help="also time PyTorch")
    parser.add_argument("--breakdown", action="store_true", help="also time the step's parts")
    parser.add_argument(
        "--ynnpack",
        default="on",
        choices=("on", "off"),
        help="CPU: compile with resnet_jax.xla.compiler_options() as the trainer does (default on)",
    )
    parser.add_argument(
        "--cpu-devices", type=int, default=0, help="CPU: split it into N JAX devices (default: JAX's, 1)"
    )
    parser.add_argument(
        "--mixing", action="store_true", help="also time the step with on-device mixup and cutmix"
    )
    parser.add_argument(
        "--torch-compile", default="on", choices=("on", "off"), help="also time torch.compile (default on)"
    )
    args = parser.parse_args(argv)
    import resnet_jax

    if args.model not in resnet_jax.list_models():
        parser.error(f"unknown --model {args.model!r}; valid: {', '.join(resnet_jax.list_models())}")
    if args.cpu_devices < 0:
        parser.error(f"--cpu-devices={args.cpu_devices} must be >= 0")
    for name in ("batch_size", "steps", "windows"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    if args.compare_torch:
        from bench import torch_models

        if args.model not in torch_models.names():
            valid = ", ".join(torch_models.names())
            parser.error(f"--compare-torch: {args.model!r} has no PyTorch counterpart; valid: {valid}")
    if not args.image_size:
        args.image_size = 32 if resnet_jax.create_model(args.model).stem == "cifar" else 224
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    what = f"{args.model} {args.image_size}x{args.image_size}, batch {args.batch_size}, {args.dtype}"
    print(f"{versions(args.compare_torch)}; {os.cpu_count()} CPU core(s) ({cpu_name()})")
    jx = time_jax(args)
    print(f"resnet_jax {what} on {jx['devices']} x {jx['device_kind']} ({jx['platform']})")
    print(f"  XLA compiler options: {jx['xla_options'] or 'none'}")
    print(f"  compile:   {jx['compile_s']:.1f} s")
    print(
        f"  step:      {jx['step_s'] * 1e3:.1f} ms (median of {args.windows} windows of {args.steps}; "
        f"best {jx['best_step_s'] * 1e3:.1f} ms)"
    )
    print(f"  images/s:  {jx['images_per_s']:.1f}")
    mfu = (
        f"{100 * jx['mfu']:.1f}% of {jx['peak_tflops']:.0f} TFLOP/s"
        if jx["mfu"]
        else "n/a (peak unknown: --peak-tflops)"
    )
    print(f"  XLA flops: {jx['flops_per_step'] / 1e9:.1f} GFLOP per step per device; MFU {mfu}")
    if args.mixing:
        times = time_mixing(args)
        plain, mixed = times["plain"], times["mixup+cutmix"]
        print(
            f"  mixing:    plain {plain * 1e3:.1f} ms, with mixup+cutmix {mixed * 1e3:.1f} ms per step "
            f"(uint8 batch; medians of {args.windows} alternating windows of {args.steps}): "
            f"{100 * (mixed / plain - 1):+.1f}%"
        )
    if args.breakdown:
        for name, ms in breakdown(args).items():
            print(f"  {name + ':':28s}{ms:8.1f} ms")
    if not args.compare_torch:
        return 0
    results = {}
    for compiled in (False, True) if args.torch_compile == "on" else (False,):
        label = "torch.compile" if compiled else "torch eager"
        try:
            r = time_torch(args, compiled)
        except Exception as e:  # torch.compile needs a working C++ toolchain on the CPU
            print(f"{label}: failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
            continue
        results[label] = r
        print(
            f"{label}, channels_last, {args.dtype} on {r['device']} ({r['threads']} threads): "
            f"compile {r['compile_s']:.1f} s, step {r['step_s'] * 1e3:.1f} ms, "
            f"{r['images_per_s']:.1f} images/s"
        )
    if not results:
        print("ratio jax/torch = n/a")
        return 1
    best = max(results, key=lambda k: results[k]["images_per_s"])
    print(f"PyTorch's best here: {best}")
    print(f"ratio jax/torch = {jx['images_per_s'] / results[best]['images_per_s']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
