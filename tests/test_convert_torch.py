"""torchvision and timm weights into resnet_jax: logits match PyTorch's on the same input.

Only the model definitions of torchvision and timm are used (no download, no compiled
torchvision ops): random weights, non-trivial BatchNorm statistics, eval mode.
"""

import contextlib
import subprocess
import sys
from unittest import mock

import jax
import numpy as np
import pytest
import tolerances
from torch_reference import randomize as _randomize
from torch_reference import torch, tv_models

from resnet_jax import convert, create_model, weights


@pytest.fixture(autouse=True)
def _seeded_torch():
    # The kernels keep torchvision's and timm's own init, drawn from torch's global generator:
    # unseeded, timm's resnet50d once reached a 1.06e-4 logit difference in CI (4.5e-5 here).
    torch.manual_seed(0)


def _compare(torch_model, variables, name, size=64, num_classes=7, **overrides):
    x = np.random.default_rng(0).normal(size=(2, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x)).numpy()
    model = create_model(name, num_classes=num_classes, **overrides)
    x_nhwc = x.transpose(0, 2, 3, 1)
    got = np.asarray(jax.jit(model.apply)(variables, x_nhwc))
    diff = np.abs(got - expected).max()
    spread = np.abs(expected[0] - expected[1]).max()  # how much the logits depend on the input
    print(
        f"\n{name}: max |logit diff| {diff:.2e} (logits up to {np.abs(expected).max():.2f}, "
        f"input-to-input spread {spread:.2e})"
    )
    assert spread > 0.05 * np.abs(expected).max()  # logits that follow the input, not the bias
    # PyTorch and XLA compute the same float32 network with other summation orders.
    tolerances.assert_close(name, got, expected, tolerances.rtol(lambda v: model.apply(v, x_nhwc), variables))


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2"])
def test_torchvision_logits_match(name):
    torch_model = _randomize(getattr(tv_models, name)(num_classes=7), seed=1)
    variables = convert.from_torchvision(torch_model.state_dict(), name)
    _compare(torch_model, variables, name)


def test_torchvision_numpy_state_dict_and_headless():
    torch_model = _randomize(tv_models.resnet18(num_classes=7), seed=2)
    arrays = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    variables = convert.from_torchvision(arrays, "resnet18")
    _compare(torch_model, variables, "resnet18")
    headless = {k: v for k, v in arrays.items() if not k.startswith("fc.")}
    assert "head" not in convert.from_torchvision(headless, "resnet18")["params"]


@pytest.mark.parametrize("name", ["resnet18", "resnext50_32x4d"])
def test_export_to_torchvision_loads_strictly_and_matches(name):
    # Our own random init (calibrated BN statistics come from a train-mode pass), exported
    # and loaded into torchvision with strict=True: every key and shape must line up.
    # ResNeXt (grouped convs, bottlenecks) at one block a stage, to keep the suite's time.
    shallow = {"stage_sizes": (1, 1, 1, 1)} if name != "resnet18" else {}
    model = create_model(name, num_classes=7, **shallow)
    x = np.random.default_rng(5).normal(size=(8, 64, 64, 3)).astype(np.float32)
    variables = jax.jit(model.init)(jax.random.key(5), x)
    _, stats = jax.jit(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables)
    head = {"kernel": variables["params"]["head"]["kernel"] * 30, "bias": variables["params"]["head"]["bias"]}
    variables = {"params": {**variables["params"], "head": head}, **stats}  # logits that vary with x
    arrays = convert.to_torchvision(variables)
    if shallow:
        block = tv_models.resnet.Bottleneck
        torch_model = tv_models.ResNet(block, [1, 1, 1, 1], num_classes=7, groups=32, width_per_group=4)
    else:
        torch_model = getattr(tv_models, name)(num_classes=7)
    counters = {k: v for k, v in torch_model.state_dict().items() if k.endswith("num_batches_tracked")}
    torch_model.load_state_dict({**{k: torch.tensor(v) for k, v in arrays.items()}, **counters})
    _compare(torch_model.eval(), variables, name, **shallow)
    back = convert.from_torchvision(arrays, name, **shallow)
    jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, variables))


def test_export_refuses_a_layout_torchvision_lacks():
    model = create_model("resnet18d", num_classes=3)
    variables = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="stem_conv1 has no torchvision counterpart"):
        convert.to_torchvision(variables)


def test_timm_resnet_d_logits_match():
    timm = pytest.importorskip("timm")
    torch_model = _randomize(timm.create_model("resnet50d", pretrained=False, num_classes=7), seed=3)
    variables = convert.from_timm(torch_model.state_dict(), "resnet50d")
    _compare(torch_model, variables, "resnet50d")


# Each timm ResNet is compared at SHALLOW depth (timm's own arguments but these blocks per
# stage: a downsampling and an identity block in stage 2), so that all of timm's names fit
# the suite's time. Names that are then the same network (resnet50 and resnet101, say)
# form one case, named by the first; the full depths' shapes are checked by the parameter
# counts in test_registry.py and the full resnet50d above.
SHALLOW = (1, 2, 1, 1)


@contextlib.contextmanager
def _timm_at_shallow_depth(timm):
    """timm.create_model with ``layers=SHALLOW`` whatever the name's own depths."""
    import timm.models.resnet
    import timm.models.resnetv2

    with contextlib.ExitStack() as stack:
        for module in (timm.models.resnet, timm.models.resnetv2):
            build = module.build_model_with_cfg

            def shallow(*args, _build=build, **kwargs):
                assert len(kwargs["layers"]) == len(SHALLOW), kwargs["layers"]
                return _build(*args, **{**kwargs, "layers": SHALLOW})

            stack.enter_context(mock.patch.object(module, "build_model_with_cfg", shallow))
        yield


def _timm_architectures():
    """timm's ResNet names (less test_registry's TIMM_NOT_YET), grouped by their
    network at SHALLOW depth; [] without timm."""
    try:
        import timm
    except ImportError:
        return []
    from test_registry import TIMM_NOT_YET

    names = set(timm.list_models(module="resnet")) | set(timm.list_models(module="resnetv2"))
    groups = {}
    for name in sorted(names - set(TIMM_NOT_YET)):
        with torch.device("meta"), _timm_at_shallow_depth(timm):  # structure only
            groups.setdefault(repr(timm.create_model(name, num_classes=7)), []).append(name)
    return [pytest.param(group, id=group[0]) for group in groups.values()]


@pytest.mark.parametrize("names", _timm_architectures())
def test_every_timm_architecture_converts_with_timms_logits_at_two_sizes(names):
    # timm's own init for the weights, BatchNorm (and GroupNorm's affine) randomised and
    # calibrated; eval mode, 64 and 96 pixels.
    timm = pytest.importorskip("timm")
    name = names[0]
    with _timm_at_shallow_depth(timm):
        torch_model = _randomize(timm.create_model(name, pretrained=False, num_classes=7), seed=6)
    with torch.no_grad():
        for m in torch_model.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
    state_dict = torch_model.state_dict()
    variables = convert.from_timm(state_dict, name, stage_sizes=SHALLOW)
    # Channel attention lands in each block's attn (SE: fc1/fc2, ECA: a 1-d conv).
    attention = {k.split(".")[3] for k in state_dict if k.startswith("layer2.1.se.")}
    assert bool(attention) == name.startswith(("se", "eca", "resnetrs")), attention
    assert set(variables["params"]["stage2_block2"].get("attn", {})) == attention
    for size in (64, 96):
        _compare(torch_model, variables, name, size=size, stage_sizes=SHALLOW)


def test_mismatch_names_the_parameter_and_both_shapes():
    state = _randomize(tv_models.resnet18(num_classes=7), seed=4).state_dict()
    with pytest.raises(ValueError, match=r"torchvision 'layer1.0.conv1.weight' -> .*conv1/kernel: shape"):
        convert.from_torchvision(state, "resnet50")  # resnet18 weights into a bottleneck net
    bad = dict(state)
    bad["layer2.0.bn1.running_var"] = torch.ones(7)
    with pytest.raises(
        ValueError,
        match=r"'layer2.0.bn1.running_var' -> batch_stats/stage2_block1/norm1/var: "
        r"shape \(7,\) does not match resnet18's \(128,\)",
    ):
        convert.from_torchvision(bad, "resnet18")
    extra = {**state, "layer9.0.conv1.weight": torch.zeros(8, 8, 3, 3)}
    with pytest.raises(ValueError, match=r"'layer9\.0\.conv1\.weight': resnet18 has no variable"):
        convert.from_torchvision(extra, "resnet18")


class _Payload:
    """Unpickling this would create a file: the attack a weights_only load must refuse."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickled_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned.txt"
    weights = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "extra": _Payload(str(marker))}, weights)
    assert not marker.exists()
    with pytest.raises(
        convert.UnsafeWeightsError,
        match=r"evil\.pth.*asks for io\.open.*weights_only=True\) refused it without",
    ):
        convert.load_state_dict(str(weights))
    assert not marker.exists()


def test_pth_and_safetensors_files_convert(tmp_path):
    from safetensors.torch import save_file

    torch_model = _randomize(tv_models.resnet18(num_classes=7), seed=5)
    state = torch_model.state_dict()
    torch.save({"state_dict": state}, tmp_path / "w.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "w.safetensors")
    for name in ("w.pth", "w.safetensors"):
        arrays = convert.load_state_dict(str(tmp_path / name))
        _compare(torch_model, convert.from_torchvision(arrays, "resnet18"), "resnet18")
    # A .safetensors file needs no torch: a fresh interpreter reads it and never imports torch.
    code = (
        "import sys; from resnet_jax import convert; "
        f"a = convert.load_state_dict({str(tmp_path / 'w.safetensors')!r}); "
        "assert 'torch' not in sys.modules; print(len(a), a['fc.weight'].shape)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split()[0] == str(len(state)) and "(7, 512)" in out


def test_pth_reader_handles_views_half_precision_and_parameters(tmp_path):
    tensors = {
        "bf16": torch.randn(3, 4).to(torch.bfloat16),
        "fp16": torch.randn(3).half(),
        "strided": torch.randn(5, 6)[:, ::2],
        "param": torch.nn.Parameter(torch.randn(2, 2)),
    }
    torch.save(tensors, tmp_path / "t.pth")
    arrays = convert.load_state_dict(str(tmp_path / "t.pth"))
    for k, v in tensors.items():
        np.testing.assert_array_equal(arrays[k], v.detach().float().numpy(), err_msg=k)


def test_cli_writes_an_orbax_checkpoint_with_metadata(tmp_path, monkeypatch, capsys):
    from resnet_jax.convert import __main__ as cli

    torch_model = _randomize(tv_models.resnet18(num_classes=7), seed=6)
    torch.save(torch_model.state_dict(), tmp_path / "r18.pth")
    out = tmp_path / "converted"
    cli.main(
        ["--source=torchvision", "--model=resnet18", f"--weights={tmp_path / 'r18.pth'}", f"--out={out}"]
    )
    variables, metadata = convert.load_converted(str(out))
    _compare(torch_model, variables, "resnet18")
    assert metadata["sha256"] == weights.sha256_of(str(tmp_path / "r18.pth"))
    assert metadata["source"] == "torchvision" and metadata["num_classes"] == 7
    assert metadata["mean"] == [0.485, 0.456, 0.406] and metadata["crop_size"] == 224
    # An existing --out is never overwritten.
    with pytest.raises(SystemExit):
        cli.main(
            ["--source=torchvision", "--model=resnet18", f"--weights={tmp_path / 'r18.pth'}", f"--out={out}"]
        )
    # A URL is downloaded into the cache and verified; an unregistered one needs --sha256.
    monkeypatch.setenv("RESNET_JAX_CACHE", str(tmp_path / "cache"))
    url = (tmp_path / "r18.pth").as_uri()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--source=torchvision", "--model=resnet18", f"--weights={url}", f"--out={tmp_path / 'u'}"])
    assert exit_info.value.code == 1 and "error: " in capsys.readouterr().err.splitlines()[-1]
    sha = weights.sha256_of(str(tmp_path / "r18.pth"))
    cli.main(
        [
            "--source=torchvision",
            "--model=resnet18",
            f"--weights={url}",
            f"--sha256={sha}",
            f"--out={tmp_path / 'u'}",
        ]
    )
    assert (tmp_path / "cache" / "r18.pth").exists() and convert.load_converted(str(tmp_path / "u"))[1][
        "url"
    ] == url


def test_cli_refuses_a_pickled_payload_and_writes_nothing(tmp_path, capsys):
    from resnet_jax.convert import __main__ as cli

    marker = tmp_path / "pwned.txt"
    torch.save({"fc.weight": torch.zeros(2, 2), "x": _Payload(str(marker))}, tmp_path / "evil.pth")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(
            [
                "--source=torchvision",
                "--model=resnet18",
                f"--weights={tmp_path / 'evil.pth'}",
                f"--out={tmp_path / 'o'}",
            ]
        )
    assert exit_info.value.code == 1 and not marker.exists() and not (tmp_path / "o").exists()
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not a plain weights file: its pickle asks for" in err
