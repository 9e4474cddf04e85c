"""``python -m train.compile``: the trainer's steps compiled for TPUs (libtpu) and GPUs (XLA's
CUDA plugin) on this CPU. Each compile runs in its own process, as a user runs it, so that
libtpu and the plugin load there and nowhere else in the suite."""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

import resnet_jax
from resnet_jax import summary
from train import compile as compile_lib
from train import targets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
# XLA's CUDA plugin logs a few lines in every process that imports JAX where it is
# installed, GPU or not; CI installs it into a folder of its own (.ci/run), which only the
# compile commands below put on their path.
GPU_COMPILER = os.environ.get("RESNET_JAX_GPU_COMPILER", "")


def _importable(name: str) -> bool:
    try:  # find_spec raises where the parent package (jax_plugins) is absent
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


HAS_CUDA_PLUGIN = _importable("jax_plugins.xla_cuda12") or os.path.isdir(
    os.path.join(GPU_COMPILER, "jax_plugins", "xla_cuda12")
)
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (GPU_COMPILER, REPO) if p)}
needs_libtpu = pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu is not installed: pip install 'jax[tpu]'")
needs_cuda_plugin = pytest.mark.skipif(
    not HAS_CUDA_PLUGIN,
    reason="XLA's CUDA plugin is not installed (pip install --no-deps jax-cuda12-plugin jax-cuda12-pjrt), "
    "nor in $RESNET_JAX_GPU_COMPILER",
)


def _compile(tmp_path, *flags, config="cifar10"):
    out = tmp_path / "report.json"
    cmd = [
        sys.executable,
        "-m",
        "train.compile",
        f"--config=train/configs/{config}.py",
        f"--json={out}",
        *flags,
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    report = json.loads(out.read_text()) if out.exists() else None
    return proc, report


def _resnet20_train_flops_per_image():
    """3 x the forward FLOPs of resnet_jax's own count (``resnet_jax.summary``)."""
    model = resnet_jax.create_model("resnet20")
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape), train=False))
    return 3 * summary.forward_flops(model, variables, x)


def _check_resnet20(proc, report, devices, eval_step=True):
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    train = report["train"]
    assert report["devices"] == devices and train["fits"]
    assert train["batch_per_device"] == 128 // devices
    per_image = train["flops"] / train["batch_per_device"]
    expected = _resnet20_train_flops_per_image()
    assert abs(per_image / expected - 1) < 0.05, (per_image, expected)
    # One gradient reduction: the float32 parameters' bytes, once.
    grad = train["collectives"]["gradient_bytes"]
    assert abs(grad / train["param_bytes"] - 1) < 0.10, (grad, train["param_bytes"])
    assert train["collectives"]["small_all_reduces"] >= 2 * train["batchnorm_layers"]
    assert train["images_per_s_per_device"] > 0 and train["bound"] in ("compute", "memory")
    assert report["eval"]["fits"] if eval_step else "eval" not in report
    assert "gradient reduction:" in proc.stdout and "roofline: >=" in proc.stdout


@needs_libtpu
def test_resnet20_compiles_for_a_4_chip_tpu_slice(tmp_path):
    # The train step only: libtpu's compile is most of this test's time, and the eval step
    # compiles for the GPU target below and for TPUs in test_exports_lower_for_tpu_*.
    proc, report = _compile(tmp_path, "--target=v5e:2x2", "--noeval")
    _check_resnet20(proc, report, 4, eval_step=False)
    assert report["device_kind"] == "TPU v5 lite"
    assert report["train"]["bytes_accessed"] > 0  # libtpu counts them


@needs_cuda_plugin
def test_resnet20_compiles_for_two_deviceless_h100s(tmp_path):
    proc, report = _compile(tmp_path, "--target=h100x2")
    _check_resnet20(proc, report, 2)
    assert report["device_kind"] == "NVIDIA H100 80GB HBM3"


@needs_cuda_plugin
def test_float32_grad_reduction_reduces_a_bf16_models_gradients_in_float32(tmp_path):
    # By default a bf16 model's gradients are all-reduced in bf16 (half the float32
    # parameters' bytes); config.float32_grad_reduction sums them in float32.
    flags = ["--target=h100x2", "--config.dtype=bfloat16", "--noeval"]
    ratios = {}
    for option in (False, True):
        proc, report = _compile(tmp_path, *flags, f"--config.float32_grad_reduction={option}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        train = report["train"]
        ratios[option] = train["collectives"]["gradient_bytes"] / train["param_bytes"]
        assert ("bf16" in train["collectives"]["gradient_dtypes"]) is not option
    assert abs(ratios[False] - 0.5) < 0.05 and abs(ratios[True] - 1.0) < 0.05, ratios


@needs_cuda_plugin
def test_a_config_too_big_for_the_chip_is_one_line_naming_the_largest_batch(tmp_path):
    # ResNet-20 at 131,072 images per GPU (about 185 GiB) needs far more than an H100's 80 GiB.
    flags = ["--target=h100x1", "--config.batch_size=131072", "--train_examples=10000000"]
    proc, _ = _compile(tmp_path, *flags)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = errors[0]
    assert "does not fit on h100x1" in line and "which has 80.00 GiB" in line, line
    largest = int(line.split("the largest batch that fits is ")[1].split()[0])
    assert 1 <= largest < 131072
    assert f"--config.batch_size={largest}" in line
    assert "largest train batch that fits:" in proc.stdout


def test_an_unknown_target_names_the_valid_ones(tmp_path):
    proc, _ = _compile(tmp_path, "--target=v99-8")
    assert proc.returncode == 1
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("error: unknown target 'v99-8'; valid: a TPU topology")
    )
    assert "h100x8" in proc.stderr


def test_collectives_are_counted_from_the_hlo():
    hlo = "\n".join(
        [
            "  %ar0 = (f32[3,3,16,16]{3,2,1,0}, bf16[10]{0}) all-reduce(%a, %b), to_apply=%add",
            "  %ar1 = f32[16]{0} all-reduce-start(%c), to_apply=%add",
            "  %ar1d = f32[16]{0} all-reduce-done(%ar1)",
            "  %ar2 = f32[9000]{0} all-reduce-start(%flat), to_apply=%add",  # a packed gradient buffer
            "  %ag = (f32[4]{0}, f32[8]{0}) all-gather-start(%d), dimensions={0}",
        ]
    )
    c = compile_lib.collectives(hlo, widest=64)
    assert c.count["all-reduce"] == 3 and c.count["all-gather"] == 1
    assert c.gradient_ops == 2 and c.gradient_bytes == 9 * 16 * 16 * 4 + 10 * 2 + 9000 * 4
    assert c.small_all_reduces == 1
    assert c.bytes["all-gather"] == 8 * 4  # the result of a (operand, result) start
    assert c.gradient_dtypes == ("bf16", "f32")


def test_libtpu_refusals_give_the_memory_they_needed():
    tpu = (
        "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
        "temporaries (47.97G) exceeds available HBM (15.75G)."
    )
    assert compile_lib._oom_bytes(tpu) == int(47.97 * 2**30)
    assert compile_lib._oom_bytes("INTERNAL: something else") is None


def test_cloud_slice_names_map_to_libtpu_topologies():
    assert targets.SLICES["v5e-8"] == "v5e:2x4" and targets.SLICES["v4-8"] == "v4:2x2x1"
    with pytest.raises(ValueError, match=r"unknown target 'tpu'; valid: a TPU topology"):
        targets.create("tpu")
    with pytest.raises(ValueError, match=r"unknown target 'b200x8'"):
        targets.create("b200x8")
    # Each chip figure names its source page.
    assert all(chip.source.startswith("https://") for chip in targets.CHIPS.values())


COMPILE_FOR_TPU = r"""
import sys
from train import targets
targets.prepare_environment()
import jax
device = targets.create("v5e:1x1").devices[0]
exported = jax.export.deserialize(open(sys.argv[1], "rb").read())
spec = exported.in_avals[0]
shape = tuple(4 if not isinstance(d, int) else d for d in spec.shape)
x = jax.ShapeDtypeStruct(shape, spec.dtype, sharding=jax.sharding.SingleDeviceSharding(device))
jax.jit(exported.call).lower(x).compile()
print("compiled for", device.device_kind, shape)
"""


@pytest.mark.parametrize("platforms", ["tpu", "cpu,cuda,tpu"])
def test_exports_lower_for_tpu_and_compile_there(tmp_path, platforms):
    from resnet_jax import convert, export

    model = resnet_jax.create_model("resnet20", num_classes=3)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    convert.save(variables, {"model": "resnet20", "crop_size": 32, "resize_size": 36}, tmp_path / "w")
    for name, flags in (("float", []), ("raw", ["--raw-input"])):
        out = tmp_path / f"{name}.jaxexport"
        export.main([f"--weights={tmp_path / 'w'}", f"--out={out}", f"--platforms={platforms}", *flags])
        metadata = json.loads(out.with_name(out.name + ".json").read_text())
        assert metadata["platforms"] == platforms.split(","), metadata["platforms"]
        assert metadata["preprocessing_in_graph"] == (name == "raw")
        if not HAS_LIBTPU:
            continue  # lowered for TPU; compiling it there needs libtpu
        proc = subprocess.run(
            [sys.executable, "-c", COMPILE_FOR_TPU, str(out)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "compiled for TPU v5 lite" in proc.stdout
