"""Behaviour of the ResNet module: every registered model, modes, precision, API."""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tolerances

import resnet_jax
from resnet_jax.pooling import anti_alias, avg_pool_ceil


def _input(model, batch=2, size=None, seed=0):
    size = size or 32
    return jax.random.normal(jax.random.key(seed), (batch, size, size, model.in_channels))


def _filled_variables(model, x, seed=0):
    """Variables of ``model`` from numpy: no per-shape RNG compiles, unlike ``init``.

    Kernels are N(0, 1/fan_in), norms start at scale 1, bias 0, mean 0, var 1.
    """
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))

    def fill(path, s):
        leaf = path[-1].key
        if leaf == "kernel":
            return jnp.asarray(rng.normal(0, np.prod(s.shape[:-1]) ** -0.5, s.shape), s.dtype)
        return (jnp.ones if leaf in ("scale", "var") else jnp.zeros)(s.shape, s.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


# ResNet-1202 is ResNet-110's network with 200 blocks a stage instead of 18: the same
# block code, which resnet110 runs here. Its forward and backward pass took 12.5 minutes
# on the 2-core CPU (and over 3 minutes just to compile under jax.jit), most of the
# suite's time; its structure is checked by test_registry's exact parameter count.
# Likewise the 101-, 152- and 200-layer ImageNet networks stack more of the blocks that
# their family's 50-layer member runs here (the same code, other stage sizes); they took
# about 3 minutes of the suite together. They are traced below in training mode (shapes,
# dtypes, the BatchNorm statistics), and test_registry counts their parameters.
DEEP = re.compile(r"(101|152|200|269|1202)")
# timm's variants recombine parts that one representative each runs here (one block a
# stage): SE in basic and
# in grouped bottleneck blocks (seresnet18, seresnext26d_32x4d), ECA with the tiered stem
# (ecaresnet26t), the wide deep stem (resnet50s), blur
# anti-aliasing in blocks and stem (resnetblur18). Average-pool anti-aliasing and
# ResNet-RS's SE and stem conv (resnetaa50d, resnetrs50), timm's pre-activation ResNet-D
# and BiT (resnetv2_50d, resnetv2_50x1_bit; BiT's parts also run in a miniature) are
# traced in training mode below.
# The others are neither run nor traced here: test_registry's exact parameter count
# initialises each of them abstractly (jax.eval_shape of init, a whole forward pass in
# shapes), and test_convert_torch compares every timm architecture's logits with timm's.
TIMM_VARIANT = re.compile(
    r"^(se|eca)resne|^resnet(10t|14t|26|26d|26t|50t|50c|50s|50_gn)$|^resnext50d|^resnet(aa|blur|rs)"
    r"|^resnetv2_(\d+[dt]|50d_gn|\d+x\d+_bit)$"
)
TIMM_RUN = {"seresnet18", "seresnext26d_32x4d", "ecaresnet26t", "resnet50s", "resnetblur18"}
TIMM_TRACE = {"resnetaa50d", "resnetrs50", "resnetv2_50d", "resnetv2_50x1_bit"}


# Networks whose every part a smaller sibling runs here, the same block code at another
# depth or width: the deeper CIFAR nets (resnet20/32 run), the wider and deeper WRNs
# (wrn16_4 runs), Wide ResNet-50-2 (resnet50), resnet34d (resnet18d), resnetv2_34
# (resnetv2_18) and GroupNorm's resnet50_gn (BiT's miniature below trains GroupNorm).
# They are traced in training mode below, to keep the suite's time.
SIBLING_RUNS = {"resnet44", "resnet56", "resnet110", "wrn16_8", "wrn28_10", "wrn40_4", "wide_resnet50_2",
                "resnet34d", "resnetv2_34", "resnet50_gn"}  # fmt: skip


def _timm_variant(name):
    return bool(TIMM_VARIANT.search(name)) and name not in TIMM_RUN


def _eager(name):
    return not DEEP.search(name) and not _timm_variant(name) and name not in SIBLING_RUNS


@pytest.mark.parametrize("name", [n for n in resnet_jax.list_models() if _eager(n)])
def test_forward_backward_finite(name):
    # Eager on purpose: on CPU, per-op dispatch (cached across models) is much cheaper
    # than compiling each network's whole forward and backward pass. timm's variants run
    # one block a stage: their parts are what is new (test_convert_torch checks their
    # logits, test_registry their full depths' shapes).
    shallow = {"stage_sizes": (1, 1, 1, 1)} if name in TIMM_RUN else {}
    _check_forward_backward(resnet_jax.create_model(name, num_classes=3, **shallow))


def test_bit_blocks_train_and_standardise_their_kernels():
    # BiT's parts (GroupNorm, weight-standardised convs, the zero-padded stem pool) in a
    # two-stage miniature: every kernel is used standardised, and gradients reach them all.
    from resnet_jax.std_conv import standardize

    model = resnet_jax.create_model(
        "resnetv2_50x1_bit", num_classes=3, stage_sizes=(1, 1), stage_widths=(32, 32), stem_width=32
    )
    _check_forward_backward(model)
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 4, 5)) * 3 + 1
    k = standardize(kernel, 1e-8)
    np.testing.assert_allclose(jnp.mean(k, axis=(0, 1, 2)), 0, atol=1e-6)
    np.testing.assert_allclose(jnp.std(k, axis=(0, 1, 2)), 1, rtol=1e-5)


def _check_forward_backward(model):
    x = _input(model)
    variables = _filled_variables(model, x)

    def loss(params):
        logits, updates = model.apply(
            {"params": params, "batch_stats": variables.get("batch_stats", {})},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        return jnp.mean(logits**2), (logits, updates)

    (value, (logits, updates)), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
    assert logits.shape == (2, 3) and logits.dtype == jnp.float32
    assert np.isfinite(float(value)) and float(value) > 0
    leaves = jax.tree.leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    # Every parameter gets a gradient (none is disconnected), bar the zero-init ones.
    assert sum(bool(jnp.any(g != 0)) for g in leaves) == len(leaves)
    new_stats = jax.tree.leaves(updates.get("batch_stats", {}))
    assert all(bool(jnp.all(jnp.isfinite(s))) for s in new_stats)
    stats = (updates.get("batch_stats", {}), variables.get("batch_stats", {}))  # none for GroupNorm
    assert jax.tree.structure(stats[0]) == jax.tree.structure(stats[1])


@pytest.mark.parametrize(
    "name",
    [n for n in resnet_jax.list_models() if DEEP.search(n) and not _timm_variant(n) and n != "resnet1202"]
    + sorted(TIMM_TRACE | SIBLING_RUNS),
)
def test_deep_networks_trace_in_training_mode(name):
    model = resnet_jax.create_model(name, num_classes=3)
    x = jax.ShapeDtypeStruct((2, 64, 64, model.in_channels), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    train = functools.partial(model.apply, train=True, mutable=["batch_stats"])
    logits, updates = jax.eval_shape(train, variables, x)
    assert logits.shape == (2, 3) and logits.dtype == jnp.float32
    stats = (updates.get("batch_stats", {}), variables.get("batch_stats", {}))  # none for GroupNorm
    assert jax.tree.structure(stats[0]) == jax.tree.structure(stats[1])


@pytest.fixture(scope="module")
def resnet18_mini():
    """A two-stage ResNet-18 variant, 32x32 input: small enough to run many times."""
    model = resnet_jax.create_model("resnet18", num_classes=5, stage_sizes=(1, 1))
    x = _input(model, batch=4)
    return model, x, model.init(jax.random.key(0), x, train=False)


def test_init_gives_params_and_batch_stats(resnet18_mini):
    _, _, variables = resnet18_mini
    assert set(variables) == {"params", "batch_stats"}
    assert {"stem_conv", "stem_norm", "stage1_block1", "stage2_block1", "head"} <= set(variables["params"])


def test_train_mode_updates_batch_stats_and_eval_does_not(resnet18_mini):
    model, x, variables = resnet18_mini
    _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    before = variables["batch_stats"]["stem_norm"]["mean"]
    after = updates["batch_stats"]["stem_norm"]["mean"]
    assert not np.allclose(before, after)
    # Flax momentum 0.9 (torchvision's 0.1): new = 0.9 * old + 0.1 * batch mean.
    h = model.apply(
        variables,
        x,
        train=True,
        mutable=["batch_stats", "intermediates"],
        capture_intermediates=lambda m, _: m.name == "stem_conv",
    )[1]
    conv_out = h["intermediates"]["stem_conv"]["__call__"][0]
    # Flax's BatchNorm and this mean sum the batch in other orders: the float32 bound of
    # tests/tolerances.py for the train-mode forward pass bounds both.
    tolerance = tolerances.rtol(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]), variables)
    tolerances.assert_close(
        "running mean", after, 0.9 * before + 0.1 * conv_out.mean(axis=(0, 1, 2)), tolerance
    )
    _, eval_updates = model.apply(variables, x, train=False, mutable=["batch_stats"])
    jax.tree.map(np.testing.assert_array_equal, eval_updates["batch_stats"], variables["batch_stats"])


def test_train_and_eval_outputs_differ_with_nontrivial_stats(resnet18_mini):
    model, x, variables = resnet18_mini
    train_out, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
    eval_out = model.apply(variables, x, train=False)
    assert not np.allclose(train_out, eval_out, atol=1e-3)


def test_bfloat16_forward_agrees_with_float32(resnet18_mini):
    model, x, variables = resnet18_mini
    ref = model.apply(variables, x)
    bf16 = model.clone(dtype=jnp.bfloat16)
    # Same variables: param_dtype stays float32, only the compute is bf16.
    assert jax.tree.structure(bf16.init(jax.random.key(0), x)) == jax.tree.structure(variables)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(bf16.init(jax.random.key(0), x)))
    out, feats = bf16.apply(variables, x, return_features=True)
    assert feats["stage1"].dtype == jnp.bfloat16 and out.dtype == jnp.float32
    # Not a summation-order difference but a precision one: bf16 keeps 8 significant bits
    # (unit roundoff 2**-9 = 0.2%), and each of this net's 7 convolutions and its head
    # rounds its inputs and weights to it, up to 2 x 8 x 0.2% = 3.1% in the worst case and
    # sqrt(16) x 0.2% = 0.8% as a random walk. Measured: 0.55% of the logits' scale on an
    # Intel Xeon, 0.30% on an AMD EPYC; the tolerance is 2%.
    scale = float(jnp.abs(ref).max())
    assert float(jnp.abs(out - ref).max()) < 0.02 * scale
    assert float(jnp.abs(out - ref).max()) > 0  # it really ran in bf16


@pytest.mark.parametrize(
    "shape,match",
    [
        ((32, 32, 3), r"expected NHWC input of shape \(batch, height, width, 3\), got shape \(32, 32, 3\)"),
        ((2, 32, 32, 1), r"expected NHWC input of shape \(batch, height, width, 3\).*in_channels=1"),
        ((2, 3, 32, 32), r"got shape \(2, 3, 32, 32\)"),
    ],
)
def test_bad_input_names_the_expected_shape(resnet18_mini, shape, match):
    model, _, variables = resnet18_mini
    with pytest.raises(ValueError, match=match):
        model.apply(variables, jnp.zeros(shape))


def test_any_channels_and_classes():
    model = resnet_jax.create_model("resnet20", in_channels=1, num_classes=4)
    x = jnp.ones((3, 28, 28, 1))
    variables = model.init(jax.random.key(0), x)
    assert variables["params"]["stem_conv"]["kernel"].shape == (3, 3, 1, 16)
    assert model.apply(variables, x).shape == (3, 4)


def test_features_and_headless_model():
    model = resnet_jax.create_model("resnet50", num_classes=0)
    x = jnp.ones((2, 64, 64, 3))
    variables = model.init(jax.random.key(0), x)
    assert "head" not in variables["params"]
    pooled, feats = model.apply(variables, x, return_features=True)
    assert pooled.shape == (2, 2048)
    np.testing.assert_array_equal(pooled, feats["pooled"])
    shapes = {k: v.shape for k, v in feats.items()}
    assert shapes == {
        "stem": (2, 16, 16, 64),
        "stage1": (2, 16, 16, 256),
        "stage2": (2, 8, 8, 512),
        "stage3": (2, 4, 4, 1024),
        "stage4": (2, 2, 2, 2048),
        "pooled": (2, 2048),
    }


def test_features_match_head_input(resnet18_mini):
    model, x, variables = resnet18_mini
    logits, feats = model.apply(variables, x, return_features=True)
    head = variables["params"]["head"]
    # One dot product of the pooled features, summed in other orders (tests/tolerances.py).
    tolerance = tolerances.rtol(lambda p: p @ head["kernel"] + head["bias"][None, :], feats["pooled"])
    tolerances.assert_close(
        "head", logits, feats["pooled"] @ head["kernel"] + head["bias"][None, :], tolerance
    )


def test_custom_architecture_is_plain_arguments():
    model = resnet_jax.ResNet(
        stage_sizes=(1, 2, 1),
        block=resnet_jax.Bottleneck,
        stem_width=8,
        stage_widths=(4, 8, 12),
        stage_strides=(1, 2, 1),
        num_classes=3,
        act=nn.swish,
        stem="cifar",
    )
    x = jnp.ones((2, 16, 16, 3))
    variables = model.init(jax.random.key(0), x)
    _, feats = model.apply(variables, x, return_features=True)
    assert feats["stage3"].shape == (2, 8, 8, 48)
    assert variables["params"]["stage2_block2"]["conv2"]["kernel"].shape == (3, 3, 8, 8)
    with pytest.raises(ValueError, match=r"stage_widths=\(4, 8\) has 2 entries.*3 stages"):
        model.clone(stage_widths=(4, 8)).init(jax.random.key(0), x)


def test_bad_field_values_name_the_choices():
    x = jnp.ones((1, 32, 32, 3))
    with pytest.raises(ValueError, match=r"unknown stem 'big'; valid: imagenet, deep, tiered, cifar"):
        resnet_jax.create_model("resnet18", stem="big").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"unknown shortcut 'C'; valid: A, B, D"):
        resnet_jax.create_model("resnet18", shortcut="C").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"aa_layer='max': avg, blur or None, in post-activation"):
        resnet_jax.create_model("resnet18", aa_layer="max").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"aa_layer='avg': .* post-activation blocks"):
        resnet_jax.create_model("resnetv2_18", aa_layer="avg").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"stem_pool='avg': max, conv"):
        resnet_jax.create_model("resnet18", stem_pool="avg").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"attn_ratio=0.25 sizes attn_layer='se' only, not 'eca'"):
        resnet_jax.create_model("ecaresnet26t", attn_ratio=0.25).init(jax.random.key(0), x)


def test_option_a_shortcut_is_parameter_free():
    model = resnet_jax.create_model("resnet20")
    variables = model.init(jax.random.key(0), jnp.ones((1, 32, 32, 3)))
    block = variables["params"]["stage2_block1"]
    assert set(block) == {"conv1", "norm1", "conv2", "norm2"}
    b = resnet_jax.create_model("resnet20", shortcut="B").init(jax.random.key(0), jnp.ones((1, 32, 32, 3)))
    assert b["params"]["stage2_block1"]["shortcut_conv"]["kernel"].shape == (1, 1, 16, 32)


def test_resnet_d_uses_deep_stem_and_avgpool_shortcut():
    variables = resnet_jax.create_model("resnet50d").init(jax.random.key(0), jnp.ones((1, 64, 64, 3)))
    p = variables["params"]
    assert [p[f"stem_conv{i}"]["kernel"].shape for i in (1, 2, 3)] == [
        (3, 3, 3, 32),
        (3, 3, 32, 32),
        (3, 3, 32, 64),
    ]
    assert p["stage2_block1"]["shortcut_conv"]["kernel"].shape == (1, 1, 256, 512)


def test_avg_pool_ceil_matches_pytorch_semantics():
    # AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False) on a 3x3 map.
    x = jnp.arange(9.0).reshape(1, 3, 3, 1)
    expected = np.array([[(0 + 1 + 3 + 4) / 4, (2 + 5) / 2], [(6 + 7) / 2, 8.0]])
    np.testing.assert_allclose(avg_pool_ceil(x, 2)[0, :, :, 0], expected)


def test_blur_pool_is_timms_binomial_filter_with_reflected_edges():
    # timm's BlurPool2d(filt_size=3, stride=2): [1, 2, 1] / 4 each way, reflect padding 1.
    x = jnp.arange(25.0).reshape(1, 5, 5, 1) ** 2
    taps = np.array([1.0, 2.0, 1.0]) / 4
    padded = np.pad(np.asarray(x[0, :, :, 0]), 1, mode="reflect")
    expected = [[(np.outer(taps, taps) * padded[i : i + 3, j : j + 3]).sum() for j in (0, 2, 4)]
                for i in (0, 2, 4)]  # fmt: skip
    got = anti_alias(jnp.concatenate([x, 2 * x], axis=-1), "blur")
    np.testing.assert_allclose(got[0, :, :, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(got[0, :, :, 1], 2 * np.asarray(expected), rtol=1e-6)  # per channel
    assert anti_alias(x, "avg").shape == (1, 2, 2, 1)  # timm's AvgPool2d(2): floor


def test_v1_puts_the_stride_on_the_first_1x1():
    x = jnp.ones((1, 64, 64, 3))
    grab = lambda mdl, _: mdl.name in ("conv1", "conv2")  # noqa: E731
    for v1, conv1_hw in ((False, 16), (True, 8)):
        model = resnet_jax.create_model("resnet50", stride_in_1x1=v1)
        variables = model.init(jax.random.key(0), x)
        _, state = model.apply(variables, x, capture_intermediates=grab, mutable=["intermediates"])
        block = state["intermediates"]["stage2_block1"]
        assert block["conv1"]["__call__"][0].shape[1] == conv1_hw
        assert block["conv2"]["__call__"][0].shape[1] == 8


def test_zero_init_last_starts_each_block_as_identity():
    model = resnet_jax.create_model("resnet18", zero_init_last=True, stage_sizes=(2,))
    x = _input(model)
    variables = model.init(jax.random.key(0), x)
    assert not np.any(variables["params"]["stage1_block1"]["norm2"]["scale"])
    _, feats = model.apply(variables, x, return_features=True)
    # Identity shortcuts and a zero branch: act(0 + x) = x for the post-ReLU stem output,
    # exactly, since 0 times a finite float is 0 in any order.
    np.testing.assert_array_equal(feats["stage1"], feats["stem"])
    pre = resnet_jax.create_model("resnetv2_18", zero_init_last=True)
    pv = pre.init(jax.random.key(0), x)
    assert not np.any(pv["params"]["stage1_block2"]["conv2"]["kernel"])


def test_norm_is_injected():
    x = _input(resnet_jax.create_model("resnet18"), batch=4)
    gn = resnet_jax.create_model(
        "resnet18", stage_sizes=(1, 1), norm=functools.partial(nn.GroupNorm, num_groups=8)
    )
    variables = gn.init(jax.random.key(0), x)
    assert "batch_stats" not in variables
    assert variables["params"]["stem_norm"]["scale"].shape == (64,)
    assert gn.apply(variables, x, train=True).shape == (4, 1000)

    frozen = resnet_jax.create_model("resnet18", stage_sizes=(1, 1), norm=resnet_jax.FrozenBatchNorm)
    fv = frozen.init(jax.random.key(0), x)
    fv = {"params": fv["params"], "batch_stats": jax.tree.map(lambda s: s + 0.5, fv["batch_stats"])}
    out, updates = frozen.apply(fv, x, train=True, mutable=["batch_stats"])
    jax.tree.map(np.testing.assert_array_equal, updates["batch_stats"], fv["batch_stats"])
    np.testing.assert_array_equal(out, frozen.apply(fv, x, train=False))


def test_dropout_before_head_needs_rng_in_train_only(resnet18_mini):
    model, x, variables = resnet18_mini
    drop = model.clone(drop_rate=0.5)
    a, _ = drop.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)})
    b, _ = drop.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(drop.apply(variables, x), model.apply(variables, x))


def test_model_is_jittable_and_batch_sharding_agnostic(resnet18_mini):
    model, x, variables = resnet18_mini
    eager = model.apply(variables, x)
    jitted = jax.jit(lambda v, x: model.apply(v, x))(variables, x)
    # Op by op or fused, one example or four: other summation orders (tests/tolerances.py).
    tolerance = tolerances.rtol(lambda v: model.apply(v, x), variables)
    tolerances.assert_close("jitted", jitted, eager, tolerance)
    # Each example is independent in eval mode.
    tolerances.assert_close("batch of 1", model.apply(variables, x[:1]), eager[:1], tolerance)


def test_drop_path_keeps_the_expectation_and_drops_whole_examples():
    from resnet_jax.blocks import drop_path

    x = jnp.ones((200_000, 2, 2, 3))
    out = drop_path(x, 0.3, jax.random.key(0))
    per_example = np.asarray(out).reshape(len(out), -1)
    # Each example is dropped whole (all 0) or kept whole, scaled by 1 / 0.7.
    values = np.unique(per_example)
    assert len(values) == 2 and values[0] == 0.0 and values[1] == np.float32(1.0) / np.float32(0.7)
    assert np.all(per_example.min(1) == per_example.max(1))
    # Unbiased: the mean over 200k draws is within 1% of 1 (its std is 0.0015).
    assert abs(float(out.mean()) - 1.0) < 0.01
    assert abs(np.mean(per_example[:, 0] == 0) - 0.3) < 0.01


def test_stochastic_depth_follows_timms_per_block_rates_and_is_the_identity_at_eval():
    model = resnet_jax.create_model("resnet20", num_classes=10, drop_path_rate=0.2)
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    variables = model.init(jax.random.key(1), x)
    rates = {}

    def record(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and hasattr(context.module, "drop_path"):
            rates[context.module.name] = context.module.drop_path
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        model.apply(variables, x)
    # timm's rule: 0 at the first of the 9 blocks, rising linearly to the rate at the last.
    names = [f"stage{i}_block{j}" for i in (1, 2, 3) for j in (1, 2, 3)]
    np.testing.assert_allclose([rates[n] for n in names], 0.2 * np.arange(9) / 8, rtol=0, atol=1e-12)
    plain = resnet_jax.create_model("resnet20", num_classes=10)
    # Eval: exactly the network without it.
    np.testing.assert_array_equal(model.apply(variables, x), plain.apply(variables, x))
    # Train: a 'dropout' rng is needed, and the output changes with it.
    run = lambda m, seed: m.apply(  # noqa: E731
        variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(seed)}
    )[0]
    assert not np.array_equal(run(model, 0), run(plain, 0))
    assert not np.array_equal(run(model, 0), run(model, 1))
    with pytest.raises(ValueError, match=r"drop_path_rate=1.0 must be in \[0, 1\)"):
        resnet_jax.create_model("resnet20", drop_path_rate=1.0).init(jax.random.key(0), x)
