"""resnet_jax.xla: the CPU compiler options, and that they change speed, not results."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tolerances

import resnet_jax
from train import mesh as mesh_lib
from train import settings
from train import steps as train_steps


def test_options_only_on_cpu_and_only_when_asked():
    on = resnet_jax.xla.compiler_options("cpu")
    assert set(on) == {resnet_jax.xla.YNNPACK_OPTION}
    assert on[resnet_jax.xla.YNNPACK_OPTION].split(",") == list(resnet_jax.xla.YNNPACK_FUSIONS)
    assert resnet_jax.xla.compiler_options("cpu", ynnpack=False) == {}
    assert resnet_jax.xla.compiler_options("gpu") == {}
    assert resnet_jax.xla.compiler_options("tpu") == {}


def test_an_option_this_jaxlib_lacks_is_left_out_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        assert not resnet_jax.xla._compiles_with((("xla_cpu_no_such_option", "1"),))
    assert "xla_cpu_no_such_option" in caplog.text
    assert resnet_jax.xla._compiles_with(((resnet_jax.xla.YNNPACK_OPTION, "LIBRARY_FUSION_TYPE_DOT"),))


MODELS = [
    ("resnet20", {}),  # basic blocks, CIFAR stem
    ("resnet50d", {"stage_sizes": (1, 1)}),  # bottlenecks, deep stem, avg-pool shortcut
    ("resnext50_32x4d", {"stage_sizes": (1,)}),  # grouped convolutions
    ("resnetv2_18", {"stage_sizes": (1, 1)}),  # pre-activation
]


def _gradients(model, params, stats, x, y, options):
    def loss(params):
        logits, _ = model.apply(
            {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return jax.jit(jax.grad(loss), compiler_options=options)(params)


@pytest.mark.parametrize("name, overrides", MODELS)
def test_ynnpack_gradients_are_as_accurate_as_xlas_own(name, overrides):
    # Against a float64 model, the float32 gradients with YNNPACK kernels are as close
    # as those from XLA's own kernels: the speed-up costs no accuracy.
    model = resnet_jax.create_model(name, num_classes=5, **overrides)
    model64 = resnet_jax.create_model(name, num_classes=5, dtype=jnp.float64, **overrides)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 32, 32, 3))
    y = jnp.asarray(rng.integers(0, 5, 16), jnp.int32)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    params, stats = variables["params"], variables["batch_stats"]
    x32 = jnp.asarray(x, jnp.float32)
    on = _gradients(model, params, stats, x32, y, resnet_jax.xla.compiler_options("cpu"))
    off = _gradients(model, params, stats, x32, y, {})
    with jax.enable_x64():
        to64 = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)  # noqa: E731
        reference = jax.device_get(_gradients(model64, to64(params), to64(stats), jnp.asarray(x), y, {}))
    # Each float32 program is within half the two-program bound of the exact gradient
    # (tests/tolerances.py), float64 standing in for exact. The bound is relative to the
    # scale of the sums, so it is checked on all gradients together: a single leaf can be
    # near 0 by cancellation (a weight whose BatchNorm makes the loss nearly invariant to
    # it), and its own relative error is then large in either program (1.5e-2 for XLA's
    # worst resnet20 leaf, 9.5e-3 for YNNPACK's).
    err_on, err_off = _tree_rel_diff(on, reference), _tree_rel_diff(off, reference)
    bound = tolerances.rtol(lambda p: _gradients(model, p, stats, x32, y, {}), params) / 2
    print(tolerances.report(f"{name} gradients, YNNPACK vs float64", err_on, bound))
    print(tolerances.report(f"{name} gradients, XLA vs float64", err_off, bound))
    assert err_on <= bound and err_off <= bound


def _run(model, ynnpack, steps=3):
    """The trainer's jitted steps on one batch: its HLO, the state and metrics after step 1,
    the eval loss of that state, and the train losses of ``steps`` steps."""
    mesh = mesh_lib.create_mesh(jax.devices()[:1])
    state = train_steps.create_train_state(
        model, optax.sgd(0.1, momentum=0.9), (32, 32, 3), jax.random.key(0)
    )
    state = mesh_lib.replicate(state, mesh)
    train_fn, eval_fn = train_steps.make_steps(mesh, settings.Step(ynnpack=ynnpack))
    rng = np.random.default_rng(0)
    batch = mesh_lib.shard_batch(
        {
            "image": rng.normal(size=(8, 32, 32, 3)).astype(np.float32),
            "label": rng.integers(0, model.num_classes, 8).astype(np.int32),
        },
        mesh,
    )
    key = mesh_lib.replicate(jax.random.key(1), mesh)
    hlo = train_fn.lower(state, batch, key).compile().as_text()
    params = jax.device_get(state.params)
    losses = []
    for step in range(steps):
        state, metrics = train_fn(state, batch, key)
        losses.append(float(metrics["loss"]) / float(metrics["count"]))
        if step == 0:
            mask = mesh_lib.shard_batch({"m": np.ones(8, np.float32)}, mesh)["m"]
            first = {
                "update": jax.tree.map(np.subtract, jax.device_get(state.params), params),
                "batch_stats": jax.device_get(state.batch_stats),
                "eval_loss": float(eval_fn(state, {**batch, "mask": mask})["loss"]) / 8,
            }
    return hlo, first, losses


def _tree_rel_diff(a, b):
    """|a - b| / |b| over every leaf together (Euclidean norms)."""
    diff = np.sqrt(sum(float(np.sum((x - y) ** 2)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))))
    return diff / np.sqrt(sum(float(np.sum(y**2)) for y in jax.tree.leaves(b)))


def test_the_trainers_steps_use_ynnpack_and_compute_the_same_step():
    model = resnet_jax.create_model("resnet20", num_classes=5)
    hlo_on, on, losses_on = _run(model, ynnpack=True)
    hlo_off, off, losses_off = _run(model, ynnpack=False)
    # The option reached XLA: more of the program runs in YNNPACK fusions.
    assert hlo_on.count("__ynn_fusion") > hlo_off.count("__ynn_fusion")
    print("losses with YNNPACK", losses_on, "without", losses_off)
    # One step is the same computation summed in other orders: its loss, its update (the
    # gradients, times the lr), the batch statistics and the next eval loss agree within
    # the float32 bound for the sums involved (tests/tolerances.py).
    forward, backward, evaluate = tolerances.step_bounds(model, jnp.zeros((8, 32, 32, 3)))
    checks = [
        ("step 1 loss", abs(losses_on[0] - losses_off[0]) / abs(losses_off[0]), forward),
        ("step 1 update", _tree_rel_diff(on["update"], off["update"]), backward),
        ("step 1 batch stats", _tree_rel_diff(on["batch_stats"], off["batch_stats"]), forward),
        (
            "eval loss after step 1",
            abs(on["eval_loss"] - off["eval_loss"]) / abs(off["eval_loss"]),
            forward + evaluate,
        ),
    ]
    for name, measured, tolerance in checks:
        print(tolerances.report(name, measured, tolerance))
        assert measured <= tolerance, name
    # Later steps are not compared: each step amplifies the rounding difference of the one
    # before (about 3x per step here; by step 3 it was 1.6e-3 on an AMD EPYC and below 1e-4
    # on an Intel Xeon). Both train.
    assert losses_on[-1] < losses_on[0] and losses_off[-1] < losses_off[0]
