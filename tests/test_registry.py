"""Registry names, errors, and exact parameter counts."""

import math

import jax
import jax.numpy as jnp
import pytest

import resnet_jax
from resnet_jax import weights
from resnet_jax.summary import count_params

# torchvision.models (weights=None), 1000 classes: sum(p.numel() for p in m.parameters()).
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "wide_resnet50_2": 68_883_240,
    "wide_resnet101_2": 126_886_696,
    "resnext50_32x4d": 25_028_904,
    "resnext101_32x8d": 88_791_336,
    "resnext101_64x4d": 83_455_272,
}
# He et al. 2016 §4.2, option A, 10 classes (0.27M ... 19.4M in the paper's Table 6).
CIFAR_PARAMS = {
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet44": 658_586,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
    "resnet1202": 19_421_274,
}
OTHER_PARAMS = {
    # timm resnet50d, 1000 classes.
    "resnet50d": 25_576_264,
    # keras.applications.ResNet50V2(weights=None): trainable params.
    "resnet50v2": 25_568_360,
    # Zagoruyko & Komodakis 2016: WRN-28-10 on CIFAR-10, "36.5M".
    "wrn28_10": 36_479_194,
}


# Every name of timm 1.0.31's ResNet module (timm.list_models(module="resnet")) that
# resnet_jax registers, 1000 classes: sum(p.numel() for p in timm.create_model(name).parameters()),
# checked against timm itself by test_timm_names_have_timms_parameter_counts where timm is
# installed.
TIMM_PARAMS = {
    "ecaresnet26t": 16_011_916,
    "ecaresnet50d": 25_576_350,
    "ecaresnet50t": 25_573_814,
    "ecaresnet101d": 44_568_563,
    "ecaresnet200d": 64_693_400,
    "ecaresnet269d": 102_093_077,
    "ecaresnetlight": 30_162_046,
    "ecaresnext26t_32x4d": 15_406_220,
    "ecaresnext50t_32x4d": 25_045_686,
    "resnet10t": 5_435_488,
    "resnet14t": 10_081_632,
    "resnet18": 11_689_512,
    "resnet18d": 11_708_744,
    "resnet26": 15_995_176,
    "resnet26d": 16_014_408,
    "resnet26t": 16_011_872,
    "resnet34": 21_797_672,
    "resnet34d": 21_816_904,
    "resnet50": 25_557_032,
    "resnet50_gn": 25_557_032,
    "resnet50c": 25_576_264,
    "resnet50d": 25_576_264,
    "resnet50s": 25_680_808,
    "resnet50t": 25_573_728,
    "resnet101": 44_549_160,
    "resnet101c": 44_568_392,
    "resnet101d": 44_568_392,
    "resnet101s": 44_672_936,
    "resnet152": 60_192_808,
    "resnet152c": 60_212_040,
    "resnet152d": 60_212_040,
    "resnet152s": 60_316_584,
    "resnet200": 64_673_832,
    "resnet200d": 64_693_064,
    "resnext50_32x4d": 25_028_904,
    "resnext50d_32x4d": 25_048_136,
    "resnext101_32x4d": 44_177_704,
    "resnext101_32x8d": 88_791_336,
    "resnext101_32x16d": 194_026_792,
    "resnext101_32x32d": 468_530_472,
    "resnext101_64x4d": 83_455_272,
    "seresnet18": 11_779_624,
    "seresnet34": 21_960_416,
    "seresnet50": 28_088_024,
    "seresnet50t": 28_104_720,
    "seresnet101": 49_326_872,
    "seresnet152": 66_821_848,
    "seresnet152d": 66_841_080,
    "seresnet200d": 71_855_096,
    "seresnet269d": 113_672_760,
    "seresnext26d_32x4d": 16_809_512,
    "seresnext26t_32x4d": 16_806_976,
    "seresnext50_32x4d": 27_559_896,
    "seresnext101_32x4d": 48_955_416,
    "seresnext101_32x8d": 93_569_048,
    "seresnext101_64x4d": 88_232_984,
    "seresnext101d_32x8d": 93_588_280,
    "wide_resnet50_2": 68_883_240,
    "wide_resnet101_2": 126_886_696,
    "resnetaa34d": 21_816_904,
    "resnetaa50": 25_557_032,
    "resnetaa50d": 25_576_264,
    "resnetaa101d": 44_568_392,
    "seresnetaa50d": 28_107_256,
    "seresnextaa101d_32x8d": 93_588_280,
    "seresnextaa201d_32x8d": 149_394_904,
    "resnetblur18": 11_689_512,
    "resnetblur50": 25_557_032,
    "resnetblur50d": 25_576_264,
    "resnetblur101d": 44_568_392,
    "resnetrs50": 35_691_912,
    "resnetrs101": 63_618_696,
    "resnetrs152": 86_621_576,
    "resnetrs200": 93_209_992,
    "resnetrs270": 129_861_448,
    "resnetrs350": 163_956_168,
    "resnetrs420": 191_891_656,
    "resnetv2_18": 11_687_720,
    "resnetv2_34": 21_795_880,
    "resnetv2_50": 25_549_352,
    "resnetv2_101": 44_541_480,
    "resnetv2_152": 60_185_128,
    "resnetv2_18d": 11_706_952,
    "resnetv2_34d": 21_815_112,
    "resnetv2_50d": 25_568_584,
    "resnetv2_101d": 44_560_712,
    "resnetv2_152d": 60_204_360,
    "resnetv2_50t": 25_566_048,
    "resnetv2_50d_gn": 25_568_584,
    "resnetv2_50x1_bit": 25_549_352,
    "resnetv2_50x3_bit": 217_319_080,
    "resnetv2_101x1_bit": 44_541_480,
    "resnetv2_101x3_bit": 387_934_888,
    "resnetv2_152x2_bit": 236_335_208,
    "resnetv2_152x4_bit": 936_533_224,
}
# Names of timm's ResNet and ResNetV2 modules (timm.list_models(module="resnet") and
# module="resnetv2") that resnet_jax does not have yet, each with what it needs. A timm
# name in neither list fails the test below.
TIMM_NOT_YET = {
    "ecaresnet50d_pruned": "per-block pruned widths",
    "ecaresnet101d_pruned": "per-block pruned widths",
    "senet154": "SENet's own stem and 3x3 downsampling",
    "test_resnet": "timm's test model",
    "resnetv2_50d_evos": "EvoNorm-S0 in place of norm and activation",
    "resnetv2_50d_frn": "Filter Response Normalisation with a TLU",
}  # fmt: skip


def n_params(name, **overrides):
    model = resnet_jax.create_model(name, **overrides)
    size = 32 if model.stem == "cifar" else 64
    x = jnp.zeros((1, size, size, model.in_channels))
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    return count_params(shapes)


@pytest.mark.parametrize(
    "name,expected",
    sorted({**TORCHVISION_PARAMS, **CIFAR_PARAMS, **OTHER_PARAMS, **TIMM_PARAMS}.items()),
)
def test_param_count(name, expected):
    assert n_params(name) == expected


def test_param_count_follows_classes_and_channels():
    # Head: 2048 * K + K; stem: 7 * 7 * C * 64.
    base = TORCHVISION_PARAMS["resnet50"]
    assert n_params("resnet50", num_classes=10) == base - 2049 * 1000 + 2049 * 10
    assert n_params("resnet50", in_channels=1) == base - 7 * 7 * 2 * 64
    assert n_params("resnet50", num_classes=0) == base - 2049 * 1000


def test_list_models_covers_the_families():
    names = resnet_jax.list_models()
    assert names == sorted(names)
    for name in [
        *TORCHVISION_PARAMS,
        *CIFAR_PARAMS,
        "resnet200",
        "resnet50d",
        "resnetv2_50",
        "resnet50v2",
        "wrn28_10",
    ]:
        assert name in names


def test_unknown_name_suggests_close_ones():
    with pytest.raises(ValueError, match=r"unknown model 'resnet5'.*'resnet50'"):
        resnet_jax.create_model("resnet5")
    with pytest.raises(ValueError, match=r"'resnext50_32x4d'"):
        resnet_jax.create_model("resnext50_32x4")


def test_unknown_override_names_the_valid_fields():
    with pytest.raises(ValueError, match=r"unknown ResNet field.*'num_class'.*num_classes"):
        resnet_jax.create_model("resnet18", num_class=10)


def test_overrides_reach_the_module():
    model = resnet_jax.create_model("resnet18", num_classes=7, stage_sizes=(1, 1))
    assert model.num_classes == 7 and tuple(model.stage_sizes) == (1, 1)


def test_timm_names_have_timms_parameter_counts():
    from torch_reference import torch

    timm = pytest.importorskip("timm")
    for name, expected in TIMM_PARAMS.items():
        with torch.device("meta"):  # shapes only: no memory, no initialisation
            model = timm.create_model(name)
        assert sum(p.numel() for p in model.parameters()) == expected, name


def test_every_timm_resnet_name_is_registered_or_listed_as_not_yet():
    from torch_reference import torch  # noqa: F401  (skips without torch)

    timm = pytest.importorskip("timm")
    names = set(timm.list_models(module="resnet")) | set(timm.list_models(module="resnetv2"))
    assert set(TIMM_PARAMS) <= set(resnet_jax.list_models())
    missing = names - set(TIMM_PARAMS)
    assert missing == set(TIMM_NOT_YET), (missing - set(TIMM_NOT_YET), set(TIMM_NOT_YET) - missing)


def test_timm_weights_entries_are_timms_published_files_and_evaluation():
    # Field by field against timm's own pretrained_cfg for each tag: the release file (whose
    # name carries its SHA-256 prefix), and the test-size evaluation timm's validate.py runs
    # (resolve_data_config(use_test_size=True)); the registered model has timm's shapes.
    from torch_reference import torch  # noqa: F401  (skips without torch)

    pytest.importorskip("timm")
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    entries = [w for w in weights.list_weights() if w.source == "timm"]
    assert {"resnet50", "seresnext50_32x4d", "ecaresnet50d", "resnetrs50"} <= {w.model for w in entries}
    for w in entries:
        cfg = get_pretrained_cfg(f"{w.model}.{w.tag}").to_dict()
        assert w.url == cfg["url"] and w.url.endswith(f"-{w.sha256}.pth"), w
        data = resolve_data_config(pretrained_cfg=cfg, use_test_size=True)
        assert (w.crop_size, w.crop_size) == tuple(data["input_size"][1:]), w
        assert w.resize_size == math.floor(w.crop_size / data["crop_pct"]), w
        assert (w.interpolation, w.mean, w.std) == (data["interpolation"], data["mean"], data["std"]), w
        assert w.num_classes == cfg["num_classes"] and w.model in resnet_jax.list_models()
