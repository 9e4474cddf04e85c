"""Registry names, errors, and exact parameter counts."""

import jax
import jax.numpy as jnp
import pytest

import resnet_jax
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


def n_params(name, **overrides):
    model = resnet_jax.create_model(name, **overrides)
    size = 32 if model.stem == "cifar" else 64
    x = jnp.zeros((1, size, size, model.in_channels))
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    return count_params(shapes)


@pytest.mark.parametrize(
    "name,expected", sorted({**TORCHVISION_PARAMS, **CIFAR_PARAMS, **OTHER_PARAMS}.items())
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
