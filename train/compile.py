r"""python -m train.compile --config=train/configs/NAME.py --target=TARGET [--config.FIELD=VALUE ...]
   [--max_batch] [--json=PATH]

Compiles the trainer's own train and eval steps for a TPU slice or a GPU node on this
machine, with no accelerator and no data, and says whether the config fits, how many FLOPs
and bytes a step costs, what its collectives move, and how fast it can run at best.
TARGET is a TPU topology (``v5e:2x4``), a Cloud TPU slice (``v5e-8``) or GPUs (``h100x8``):
``train.targets``. TPUs need libtpu (``pip install 'jax[tpu]'``), GPUs XLA's CUDA plugin
(``pip install --no-deps jax-cuda12-plugin jax-cuda12-pjrt``, at jax's version).

The steps are built by the code ``python -m train.main`` runs (``train.settings``,
``train_lib.initial_state``, ``train.optim``, ``train.steps.make_steps`` over
``train.mesh``), from abstract arrays: the dataset's size, classes and image shape come from
``DATASETS`` (or ``--train_examples`` and ``--num_classes``).

A config that does not fit ends with one ``error:`` line: the memory it needs, the chip's
and the largest batch that fits (searched by compiling). ``--max_batch`` searches for it
when the config does fit too.
"""

from __future__ import annotations

from train import targets

if __name__ == "__main__":  # the command, before JAX is imported; not an importer's process
    targets.prepare_environment()

import dataclasses
import functools
import json
import math
import re
import time
from typing import Any

from absl import app, flags

from resnet_jax import user_errors
from train import main as main_lib

FLAGS = flags.FLAGS
GIB = 2**30
# Train examples, classes, image shape (None: varying sizes, set by config.image_size).
DATASETS = {
    "imagenet2012": (1_281_167, 1000, None),
    "imagenette": (9_469, 10, None),
    "cifar10": (50_000, 10, (32, 32, 3)),
    "cifar100": (50_000, 100, (32, 32, 3)),
    "mnist": (60_000, 10, (28, 28, 1)),
    "fashion_mnist": (60_000, 10, (28, 28, 1)),
    "digits": (1_437, 10, (8, 8, 1)),
}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_OP = re.compile(r"=\s*(.+?)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(")
_ARRAY = re.compile(r"\b(pred|s8|u8|s16|u16|s32|u32|s64|u64|f16|bf16|f32|f64)\[([\d,]*)\]")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2}
# libtpu's refusals: "... required for HLO temporaries (47.97G) exceeds available HBM
# (15.75G)", or "Used 20.5G of 15.75G hbm".
_OOM = re.compile(r"(?:required for [^(]*\(|Used )([\d.]+)([KMGT])\)? (?:exceeds available HBM|of)")


@dataclasses.dataclass(frozen=True)
class DataFacts:
    """What the steps need to know of the data: no file is read."""

    num_train: int
    num_classes: int
    image_shape: tuple[int, int, int]
    train_image_shape: tuple[int, int, int]
    steps_per_epoch: int


@dataclasses.dataclass
class Collectives:
    """The collectives of a compiled step: count and bytes per kind, and the all-reduces
    that carry the gradients: those holding a kernel (an array of rank >= 2), or more
    elements than 4 BatchNorm statistics of the widest layer (the GPU compiler packs the
    gradients into one flat buffer). The rest are BatchNorm statistics and metrics."""

    count: dict[str, int]
    bytes: dict[str, int]
    gradient_ops: int
    gradient_bytes: int
    gradient_dtypes: tuple[str, ...]
    small_all_reduces: int


@dataclasses.dataclass
class StepReport:
    """One compiled step on one target."""

    name: str
    batch_per_device: int
    compile_s: float
    memory: dict[str, int]
    fits: bool
    flops: float  # per device
    flops_source: str
    bytes_accessed: float | None
    collectives: Collectives | None = None
    xla_estimate_s: float | None = None  # libtpu's own estimate of the step's time

    @property
    def total_bytes(self) -> int:
        return self.memory["total"]


def data_facts(settings: Any, train_examples: int, num_classes: int) -> DataFacts:
    """The dataset's size, classes and image shapes from ``DATASETS`` and the config;
    ``train_examples``/``num_classes`` > 0 replace the table's."""
    i = settings.input
    known = DATASETS.get(i.dataset)
    if known is None and (train_examples <= 0 or num_classes <= 0):
        raise ValueError(
            f"dataset {i.dataset!r}: give --train_examples and --num_classes (no data is read); "
            f"known without them: {', '.join(DATASETS)}"
        )
    num_train = train_examples if train_examples > 0 else known[0]
    classes = num_classes if num_classes > 0 else (len(i.classes) if i.classes else known[1])
    num_train -= i.validation_examples
    native = known[2] if known else None
    channels = native[2] if native else 3
    size = i.crop.image_size
    if not size and native is None:
        raise ValueError(f"dataset {i.dataset!r} has images of varying sizes; set --config.image_size")
    image_shape = (size, size, channels) if size else native
    train_size = i.crop.train_image_size or size
    train_shape = (train_size, train_size, channels) if train_size else image_shape
    steps_per_epoch = num_train // i.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size={i.batch_size} exceeds the {num_train} train examples")
    return DataFacts(num_train, classes, image_shape, train_shape, steps_per_epoch)


def _abstract(tree: Any, sharding: Any) -> Any:
    import jax

    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def _batch(batch: int, shape: tuple[int, ...], sharding: Any, mask: bool = False) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    out = {
        "image": jax.ShapeDtypeStruct((batch, *shape), jnp.uint8, sharding=sharding),
        "label": jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=sharding),
    }
    if mask:
        out["mask"] = jax.ShapeDtypeStruct((batch,), jnp.float32, sharding=sharding)
    return out


def memory(compiled: Any) -> dict[str, int]:
    """Bytes per device: the donated state's outputs reuse its arguments (``alias``)."""
    m = compiled.memory_analysis()
    out = {
        "arguments": m.argument_size_in_bytes,
        "outputs": m.output_size_in_bytes,
        "alias": m.alias_size_in_bytes,
        "temporaries": m.temp_size_in_bytes,
        "code": m.generated_code_size_in_bytes,
    }
    out["total"] = out["arguments"] + out["outputs"] - out["alias"] + out["temporaries"] + out["code"]
    return out


def collectives(hlo: str, widest: int = 0) -> Collectives:
    """Counts and sizes of the collectives in an optimised HLO module's text (an async
    ``-start`` op counted once; its ``-done`` is not); ``widest``: the most channels of a
    BatchNorm layer."""
    count = {k: 0 for k in COLLECTIVES}
    sizes = {k: 0 for k in COLLECTIVES}
    grad_ops = grad_bytes = small = 0
    dtypes: set[str] = set()
    for line in hlo.splitlines():
        m = _OP.search(line)
        if not m:
            continue
        kind, arrays = m.group(2), _ARRAY.findall(m.group(1))
        if m.group(3) and kind != "all-reduce" and len(arrays) > 1:
            arrays = arrays[len(arrays) // 2 :]  # (operands, results): the results
        nbytes = sum(_BYTES.get(t, 8 if t.endswith("64") else 4) * math.prod(_dims(d)) for t, d in arrays)
        count[kind] += 1
        sizes[kind] += nbytes
        if kind == "all-reduce":
            elements = sum(math.prod(_dims(d)) for _, d in arrays)
            if any(len(_dims(d)) >= 2 for _, d in arrays) or elements > 4 * widest:
                grad_ops, grad_bytes = grad_ops + 1, grad_bytes + nbytes
                dtypes.update(t for t, _ in arrays)
            else:
                small += 1
    return Collectives(count, sizes, grad_ops, grad_bytes, tuple(sorted(dtypes)), small)


def _dims(text: str) -> list[int]:
    return [int(d) for d in text.split(",") if d]


def _cpu_flops(fn: Any, *args: Any) -> tuple[float, float]:
    """FLOPs and bytes of ``fn``'s unpartitioned program, lowered for the CPU: a GPU
    executable counts none."""
    import jax

    cost = jax.jit(fn).trace(*args).lower(lowering_platforms=("cpu",)).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))


class Compiler:
    """The trainer's steps for one config on one target, compiled at any batch per device."""

    def __init__(self, settings: Any, facts: DataFacts, target: targets.Target):
        import jax

        from train import mesh as mesh_lib
        from train import optim, steps, train_lib

        self.settings, self.facts, self.target = settings, facts, target
        self.mesh = mesh_lib.create_mesh(list(target.devices))
        self.total_steps = settings.run.length.total_steps(facts.steps_per_epoch)
        lr_fn = optim.create_learning_rate_fn(settings.optim, facts.steps_per_epoch, self.total_steps)
        state = jax.eval_shape(
            lambda key: train_lib.initial_state(settings, facts, lr_fn, key, fresh=False),
            jax.random.key(0),
        )
        self.replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        self.data = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(mesh_lib.DATA_AXIS))
        self.state = _abstract(state, self.replicated)
        self.rng = _abstract(jax.eval_shape(lambda: jax.random.key(0)), self.replicated)
        self.ema = steps.ema_schedule(
            settings.ema,
            facts.steps_per_epoch,
            self.total_steps,
            settings.batch_size,
            settings.optim.warmup_epochs,
        )
        self.train_fn, self.eval_fn = steps.make_steps(self.mesh, settings.step, self.ema)

    @property
    def devices(self) -> int:
        return len(self.target.devices)

    def train(self, per_device: int, analyse: bool = True) -> StepReport:
        batch = _batch(per_device * self.devices, self.facts.train_image_shape, self.data)
        return self._compile("train", per_device, self.train_fn, (self.state, batch, self.rng), analyse)

    def eval(self, per_device: int) -> StepReport:
        batch = _batch(per_device * self.devices, self.facts.image_shape, self.data, mask=True)
        return self._compile("eval", per_device, self.eval_fn, (self.state, batch), True)

    def _compile(self, name: str, per_device: int, fn: Any, args: tuple, analyse: bool) -> StepReport:
        start = time.perf_counter()
        try:
            compiled = fn.lower(*args).compile()
        except Exception as e:  # libtpu refuses a program over the chip's HBM
            needed = _oom_bytes(str(e))
            if needed is None:
                raise
            mem = {"total": needed}
            return StepReport(name, per_device, time.perf_counter() - start, mem, False, 0.0, "", None)
        compile_s = time.perf_counter() - start
        mem = memory(compiled)
        report = StepReport(
            name, per_device, compile_s, mem, mem["total"] <= self.target.hbm_bytes, 0.0, "", None
        )
        if analyse and report.fits:
            self._analyse(report, compiled, fn, args)
        return report

    def _analyse(self, report: StepReport, compiled: Any, fn: Any, args: tuple) -> None:
        import jax

        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
        if cost and cost.get("flops"):
            report.flops, report.flops_source = float(cost["flops"]), "XLA, compiled for the target"
            report.bytes_accessed = float(cost.get("bytes accessed", 0.0)) or None
            estimate = float(cost.get("optimal_seconds", 0.0))
            report.xla_estimate_s = estimate if estimate > 0 else None
        else:
            report.flops, report.flops_source = self._unpartitioned_flops(report, args)
            report.bytes_accessed = _optimised_bytes(compiled)
        stats = self.state.batch_stats
        widest = max((x.size for x in jax.tree.leaves(stats)), default=0) if stats else 0
        report.collectives = collectives(compiled.as_text(), widest)

    def _unpartitioned_flops(self, report: StepReport, args: tuple) -> tuple[float, str]:
        """One device's share of the step, counted on its unsharded program at the
        per-device batch (the compiled GPU program counts none)."""
        import jax

        from train import steps

        local = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)  # noqa: E731
        state = jax.tree.map(local, args[0])
        # Per-device gradients (float32_grad_reduction) need the whole batch's program.
        whole = report.name == "train" and self.settings.step.float32_grad_reduction
        size = report.batch_per_device * (self.devices if whole else 1)
        batch = {k: jax.ShapeDtypeStruct((size, *v.shape[1:]), v.dtype) for k, v in args[1].items()}
        if report.name == "train":
            fn = functools.partial(
                steps.train_step, step=self.settings.step, ema=self.ema, devices=self.devices if whole else 1
            )
            flops, _ = _cpu_flops(fn, state, batch, local(args[2]))
            flops /= self.devices if whole else 1
        else:
            flops, _ = _cpu_flops(functools.partial(steps.eval_step, step=self.settings.step), state, batch)
        return flops, "XLA, the step lowered for the CPU at the per-device batch"

    def max_batch(self, start: int, granularity: int) -> int:
        """The largest batch per device (a multiple of ``granularity``) whose train step
        fits. Memory grows about linearly with the batch: two compiles give that line and
        its guess, steps that double from the guess bracket the answer, bisection ends it."""
        fits: dict[int, bool] = {}
        mem: dict[int, int] = {}

        def probe(b: int) -> bool:
            if b not in fits:
                r = self.train(b, analyse=False)
                fits[b], mem[b] = r.fits, r.total_bytes
            return fits[b]

        g = granularity
        first = max(g, start // g * g)
        probe(first)
        second = max(g, first // 2 // g * g) if first > g else 2 * first
        probe(second)
        (b0, m0), (b1, m1) = sorted((b, mem[b]) for b in (first, second))
        slope = max((m1 - m0) / (b1 - b0), 1.0)
        guess = max(g, int((self.target.hbm_bytes - m0) / slope + b0) // g * g)
        lo = max((b for b, ok in fits.items() if ok), default=0)
        hi = min((b for b, ok in fits.items() if not ok), default=None)
        step, b = g, guess
        while hi is None or hi - lo > g:  # gallop from the guess until bracketed
            if (hi is not None and b >= hi) or b <= lo:
                break
            if probe(b):
                lo, b, step = b, b + step, 2 * step
            else:
                hi, b, step = b, max(lo + g, b - step), 2 * step
        while hi is not None and hi - lo > g:
            mid = (lo + hi) // 2 // g * g
            if mid <= lo:
                break
            lo, hi = (mid, hi) if probe(mid) else (lo, mid)
        return lo


def _optimised_bytes(compiled: Any) -> float | None:
    """The bytes that the optimised (fused) program moves, by XLA's cost model run on its
    HLO module: a compiled GPU program reports no cost itself. A cuDNN call counts its
    operands and result. None where this jaxlib lacks the hook."""
    import jax
    from jax._src.lib import xla_client

    try:
        module = compiled.runtime_executable().hlo_modules()[0]
        cost = xla_client._xla.hlo_module_cost_analysis(jax.devices("cpu")[0].client, module)
        return float(cost["bytes accessed"]) or None
    except Exception:  # a private hook: the report says the bytes were not counted
        return None


def _oom_bytes(message: str) -> int | None:
    m = _OOM.search(message)
    if not m:
        return None
    scale = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    return int(float(m.group(1)) * scale[m.group(2)])


def roofline(report: StepReport, target: targets.Target) -> tuple[float, str]:
    """The least time one step can take on one device: its FLOPs at the chip's bf16 peak,
    or its bytes at the HBM bandwidth, whichever is longer; and which one binds."""
    compute = report.flops / target.peak_flops
    traffic = (report.bytes_accessed or 0.0) / target.hbm_bytes_per_s
    return (compute, "compute") if compute >= traffic else (traffic, "memory")


def ideal_reduction_bytes(compiler: Compiler) -> tuple[int, int, int]:
    """Bytes of the parameters (float32: one gradient reduction), of the BatchNorm
    statistics (mean and variance per channel of each layer) and the BatchNorm layers."""
    import jax

    params = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(compiler.state.params))
    stats = jax.tree.leaves(compiler.state.batch_stats) if compiler.state.batch_stats else []
    return params, sum(x.size * 4 for x in stats), len(stats) // 2


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def describe(report: StepReport, compiler: Compiler) -> list[str]:
    """The report's lines for one step."""
    t, m = compiler.target, report.memory
    fit = "fits" if report.fits else "DOES NOT FIT"
    lines = [f"{report.name} step, {report.batch_per_device} per device: compiled in {report.compile_s:.1f}s"]
    if "arguments" in m:
        lines.append(
            f"  memory per device: {_gib(m['total'])} ({_gib(m['arguments'])} arguments + "
            f"{_gib(m['outputs'])} "
            f"outputs - {_gib(m['alias'])} donated + {_gib(m['temporaries'])} temporaries + "
            f"{_gib(m['code'])} code) of {_gib(t.hbm_bytes)}: {fit}"
        )
    else:
        lines.append(
            f"  memory per device: {_gib(m['total'])} (libtpu's count) of {_gib(t.hbm_bytes)}: {fit}"
        )
    if not report.flops:
        return lines
    bytes_text = (
        f"{report.bytes_accessed / 1e9:.1f} GB accessed" if report.bytes_accessed else "bytes: not counted"
    )
    lines.append(
        f"  {report.flops / 1e12:.3f} TFLOP per device, "
        f"{report.flops / report.batch_per_device / 1e9:.2f} GFLOP "
        f"per image ({report.flops_source}); {bytes_text}"
    )
    step_s, bound = roofline(report, t)
    line = f"  roofline: >= {step_s * 1e3:.2f} ms per step ({bound}-bound at {t.chip.bf16_tflops:g} TFLOP/s"
    line += f", {t.chip.hbm_gbps:g} GB/s per chip): "
    line += f"<= {report.batch_per_device / step_s:,.0f} images/s per device"
    if report.name == "train":
        line += f"; {compiler.total_steps} steps >= {compiler.total_steps * step_s / 3600:.2f} h"
    lines.append(line)
    if report.bytes_accessed is None:
        lines.append("  (the bytes were not counted: this bound is the FLOPs' alone)")
    if report.xla_estimate_s:
        s = report.xla_estimate_s
        lines.append(
            f"  the compiler's own estimate: {s * 1e3:.2f} ms per step, "
            f"{report.batch_per_device / s:,.0f} images/s per device"
        )
    c = report.collectives
    if c is not None:
        kinds = ", ".join(
            f"{c.count[k]} {k} ({c.bytes[k] / 2**20:.2f} MiB)" for k in COLLECTIVES if c.count[k]
        )
        lines.append(f"  collectives: {kinds or 'none'}")
        if report.name == "train" and compiler.devices > 1:
            params, stats, layers = ideal_reduction_bytes(compiler)
            lines.append(
                f"  gradient reduction: {c.gradient_ops} all-reduce(s), {c.gradient_bytes / 2**20:.2f} MiB "
                f"in {'/'.join(c.gradient_dtypes) or '-'} against the float32 parameters' "
                f"{params / 2**20:.2f} MiB ({c.gradient_bytes / params:.2f}x); {c.small_all_reduces} small "
                f"all-reduces (BatchNorm statistics: {layers} layers, {stats / 2**10:.1f} KiB)"
            )
    return lines


def _define_flags() -> None:
    main_lib.define_config_flag()
    flags.DEFINE_string("target", None, f"What to compile for: {targets.valid_names()}.")
    flags.DEFINE_bool("max_batch", False, "Also search for the largest train batch per device that fits.")
    flags.DEFINE_integer("train_examples", 0, "Train examples, for a dataset train.compile does not know.")
    flags.DEFINE_integer("num_classes", 0, "Classes, for a dataset train.compile does not know.")
    flags.DEFINE_bool("eval", True, "Compile the eval step too.")
    flags.DEFINE_string("json", None, "Also write the figures to this JSON file.")


def compile_config(
    config: Any,
    target_name: str,
    train_examples: int = 0,
    num_classes: int = 0,
    search: bool = False,
    with_eval: bool = True,
) -> dict[str, Any]:
    """Compiles ``config``'s steps for ``target_name`` and prints the report; returns its
    figures. Raises ``ValueError`` when the train step does not fit."""
    from train import settings as settings_lib

    settings = settings_lib.check(config)
    target = targets.create(target_name)
    facts = data_facts(settings, train_examples, num_classes)
    compiler = Compiler(settings, facts, target)
    for batch in (settings.input.batch_size, settings.input.eval_batch_size):
        if batch % compiler.devices:
            raise ValueError(
                f"batch {batch} does not divide over the {compiler.devices} devices of {target.name}"
            )
    per_device = settings.input.batch_size // compiler.devices
    print(
        f"{target.describe()}; {settings.model.name} ({settings.model.dtype}), global batch "
        f"{settings.input.batch_size}, {facts.train_image_shape[0]}x{facts.train_image_shape[1]}",
        flush=True,
    )
    train = compiler.train(per_device)
    for line in describe(train, compiler):
        print(line, flush=True)
    result: dict[str, Any] = {
        "target": target.name,
        "device_kind": target.device_kind,
        "devices": compiler.devices,
        "hbm_gib": target.hbm_bytes / GIB,
        "total_steps": compiler.total_steps,
        "train": _figures(train, compiler),
    }
    # Multiples of 8, or about 1/64 of a large batch: a finer answer costs compiles and
    # means nothing at that size.
    granularity = 1 if per_device < 8 else max(8, 2 ** int(math.log2(per_device / 64)))
    if search or not train.fits:
        result["max_batch_per_device"] = compiler.max_batch(per_device, granularity)
        print(
            f"largest train batch that fits: {result['max_batch_per_device']} per device "
            f"(multiples of {granularity})",
            flush=True,
        )
    if not train.fits:
        raise ValueError(
            f"{settings.model.name} at {per_device} per device does not fit on {target.describe()}: the "
            f"train step needs {_gib(train.total_bytes)} per device, which has {_gib(target.hbm_bytes)}; "
            "the largest "
            f"batch that fits is {result['max_batch_per_device']} per device "
            f"(--config.batch_size={result['max_batch_per_device'] * compiler.devices})"
        )
    if with_eval:
        evaluation = compiler.eval(settings.input.eval_batch_size // compiler.devices)
        for line in describe(evaluation, compiler):
            print(line, flush=True)
        result["eval"] = _figures(evaluation, compiler)
    return result


def _figures(report: StepReport, compiler: Compiler) -> dict[str, Any]:
    out: dict[str, Any] = {
        "batch_per_device": report.batch_per_device,
        "compile_s": report.compile_s,
        "memory": report.memory,
        "fits": report.fits,
        "flops": report.flops,
        "flops_source": report.flops_source,
        "bytes_accessed": report.bytes_accessed,
        "xla_estimate_s": report.xla_estimate_s,
    }
    if report.flops:
        step_s, bound = roofline(report, compiler.target)
        out.update(
            roofline_step_s=step_s, bound=bound, images_per_s_per_device=report.batch_per_device / step_s
        )
    if report.collectives is not None:
        out["collectives"] = dataclasses.asdict(report.collectives)
        params, stats, layers = ideal_reduction_bytes(compiler)
        out.update(param_bytes=params, batch_stat_bytes=stats, batchnorm_layers=layers)
    return out


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.target:
        raise ValueError(f"--target is required: {targets.valid_names()}")
    config, path = main_lib.load_config()
    print(f"config {path}", flush=True)
    result = compile_config(
        config, FLAGS.target, FLAGS.train_examples, FLAGS.num_classes, FLAGS.max_batch, FLAGS.eval
    )
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump({"config": path, **result}, f, indent=1)


def run() -> None:
    try:
        _define_flags()
    except (AttributeError, KeyError) as e:
        user_errors.fail(main_lib.field_error(e))
    try:
        app.run(main, flags_parser=main_lib.parse_flags)
    except Exception as e:
        if not user_errors.is_user_error(e):
            raise
        user_errors.fail(str(e))


if __name__ == "__main__":
    run()
