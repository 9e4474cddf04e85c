"""The training library: schedules, masked decay, losses, metrics, sharded steps."""

import functools
import os
import pathlib
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import processes
import pytest
import tolerances

import resnet_jax
from resnet_jax import preprocessing, workdirs
from train import mesh as mesh_lib
from train import optim, settings, steps
from train.configs import default

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(**overrides):
    # The defaults of train/configs/default.py, with these fields of the tests below.
    config = default.get_config()
    config.update(
        learning_rate=0.1,
        lr_schedule="cosine",
        warmup_epochs=0,
        num_epochs=10,
        num_train_steps=-1,
        lr_boundaries=(),
        lr_decay_factor=0.1,
        optimizer="sgd",
        momentum=0.9,
        weight_decay=1e-4,
        grad_clip_norm=0.0,
        grad_accum_steps=1,
    )
    config.update(overrides)
    return config


def _lr(config, steps_per_epoch):
    """The schedule of ``config``, built as the trainer builds it from its checked settings."""
    total = settings.length(config).total_steps(steps_per_epoch)
    return optim.create_learning_rate_fn(settings.optim(config), steps_per_epoch, total)


def test_piecewise_schedule_is_he_et_al_cifar():
    # lr 0.1, divided by 10 at 32k and 48k iterations (He et al. 2016 §4.2).
    config = _config(lr_schedule="piecewise", lr_boundaries=(32000, 48000), num_train_steps=64000)
    lr = _lr(config, 391)
    values = [float(lr(s)) for s in (0, 31999, 32000, 47999, 48000, 63999)]
    # Each is a float32 constant times a float32 factor: two roundings of u = 6e-8 each.
    np.testing.assert_allclose(values, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)


def test_warmup_then_cosine():
    config = _config(warmup_epochs=5, num_epochs=90, learning_rate=0.4)
    lr = _lr(config, 100)
    assert float(lr(0)) == 0.0
    # A few float32 operations (a division, a cosine, a product): each within a few u = 6e-8.
    np.testing.assert_allclose(float(lr(250)), 0.2, rtol=1e-6)  # halfway through warmup
    np.testing.assert_allclose(float(lr(500)), 0.4, rtol=1e-6)  # peak
    assert float(lr(9000)) < 1e-6  # decayed to zero at the end
    assert settings.length(_config(num_train_steps=7)).total_steps(100) == 7


@pytest.mark.parametrize(
    "field,value,match",
    [
        (
            "optimizer",
            "adagrad",
            r"unknown optimizer 'adagrad'; valid: sgd, nesterov, adam, adamw, lars, lamb",
        ),
        ("lr_schedule", "linear", r"unknown lr_schedule 'linear'; valid: cosine, piecewise, constant"),
    ],
)
def test_unknown_choices_are_named(field, value, match):
    config = _config(**{field: value})
    with pytest.raises(ValueError, match=match):
        optim.create_optimizer(settings.optim(config), _lr(config, 10))


@pytest.fixture(scope="module")
def small_params():
    model = resnet_jax.create_model("resnet20", stage_sizes=(1, 1), num_classes=3)
    return model.init(jax.random.key(0), jnp.ones((1, 8, 8, 3)))["params"]


def test_decay_mask_spares_norms_and_biases(small_params):
    mask = optim.decay_mask(small_params)
    assert mask["stem_conv"]["kernel"] and mask["head"]["kernel"]
    assert not mask["head"]["bias"]
    assert not mask["stem_norm"]["scale"] and not mask["stem_norm"]["bias"]


@pytest.mark.parametrize("name", settings.OPTIMIZERS)
def test_weight_decay_reaches_kernels_only(small_params, name):
    config = _config(optimizer=name, weight_decay=0.5, momentum=0.0 if name == "sgd" else 0.9)
    tx = optim.create_optimizer(settings.optim(config), optax.constant_schedule(0.1))
    zero_grads = jax.tree.map(jnp.zeros_like, small_params)
    updates, _ = tx.update(zero_grads, tx.init(small_params), small_params)
    assert float(jnp.abs(updates["stem_conv"]["kernel"]).max()) > 0
    for leaf in ("scale", "bias"):
        np.testing.assert_array_equal(updates["stem_norm"][leaf], 0)
    np.testing.assert_array_equal(updates["head"]["bias"], 0)
    if name == "sgd":  # PyTorch's SGD: update = -lr * wd * w
        # Two float32 products, in either order: within 2u = 1.2e-7 of each other.
        np.testing.assert_allclose(
            updates["stem_conv"]["kernel"], -0.1 * 0.5 * small_params["stem_conv"]["kernel"], rtol=1e-6
        )


def test_gradient_clipping_and_accumulation(small_params):
    big = jax.tree.map(lambda p: jnp.full_like(p, 100.0), small_params)
    clip = optim.create_optimizer(
        settings.optim(_config(momentum=0.0, weight_decay=0.0, grad_clip_norm=1.0)),
        optax.constant_schedule(1.0),
    )
    updates, _ = clip.update(big, clip.init(small_params), small_params)
    # A global norm sums every parameter's square: the float32 bound of its sums.
    norm_tol = tolerances.rtol(optax.tree.norm, big)
    np.testing.assert_allclose(float(optax.tree.norm(updates)), 1.0, rtol=norm_tol)

    accum = optim.create_optimizer(
        settings.optim(_config(weight_decay=0.0, grad_accum_steps=2)), optax.constant_schedule(1.0)
    )
    state = accum.init(small_params)
    first, state = accum.update(big, state, small_params)
    assert float(optax.tree.norm(first)) == 0.0  # nothing applied until the second micro-batch
    second, _ = accum.update(big, state, small_params)
    assert float(optax.tree.norm(second)) > 0.0
    # The schedule is in micro-batch steps: update u runs at the lr of step u * k.
    sgd = optim.create_optimizer(
        settings.optim(_config(momentum=0.0, weight_decay=0.0, grad_accum_steps=4)),
        lambda step: 1.0 / (1.0 + step),
    )
    state, norms = sgd.init(small_params), []
    for _ in range(8):
        update, state = sgd.update(big, state, small_params)
        norms.append(float(optax.tree.norm(update)))
    assert norms[0] == norms[1] == norms[2] == 0.0 and norms[3] > 0
    np.testing.assert_allclose(norms[7] / norms[3], 1.0 / 5.0, rtol=2 * norm_tol)  # lr(4) / lr(0), two norms


def test_label_smoothing_and_loss():
    logits = jnp.array([[10.0, 0.0, 0.0]])
    labels = jnp.array([0])
    plain = float(steps.cross_entropy_loss(logits, labels)[0])
    smooth = float(steps.cross_entropy_loss(logits, labels, label_smoothing=0.3)[0])
    logp = jax.nn.log_softmax(logits[0])
    # A softmax over 3 classes: a handful of float32 operations, each within u = 6e-8.
    np.testing.assert_allclose(plain, -logp[0], rtol=1e-6)
    # Target (1 - 0.3) on the label plus 0.3 / 3 spread on every class.
    np.testing.assert_allclose(smooth, -(0.8 * logp[0] + 0.1 * logp[1] + 0.1 * logp[2]), rtol=1e-5)


def test_metrics_count_only_real_examples():
    logits = jnp.array([[3.0, 2, 1, 0, -1, -2], [0.0, 1, 2, 3, 4, 5], [5.0, 0, 0, 0, 0, 0]])
    labels = jnp.array([0, 0, 1])
    m = steps.compute_metrics(logits, labels, mask=jnp.array([1, 1, 0]))
    assert float(m["count"]) == 2 and float(m["top1"]) == 1
    # Example 2's label 0 ranks 6th: not in its top 5.
    assert float(m["top5"]) == 1
    full = steps.compute_metrics(logits[:2], labels[:2])
    np.testing.assert_allclose(float(m["loss"]), float(full["loss"]), rtol=1e-6)  # sums of 2 or 3 terms


def test_normalize_images_on_the_device():
    images = jnp.asarray([[[[0, 255, 51]]]], jnp.uint8)
    out = preprocessing.normalize(images, mean=(0.0, 0.5, 0.2), std=(1.0, 0.5, 0.1))
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, [[[[0.0, 1.0, 0.0]]]], atol=1e-6)  # one multiply-add of values ~1
    floats = jnp.ones((1, 2, 2, 3), jnp.float32)  # already model inputs: left alone
    assert preprocessing.normalize(floats, (0.5,), (0.5,)) is floats


def test_uint8_batches_train_as_their_normalised_floats():
    # The pipeline hands the steps uint8 images; the steps normalise them on the device.
    model = resnet_jax.create_model("resnet20", stage_sizes=(1,), num_classes=3)
    mesh = mesh_lib.create_mesh(jax.devices()[:1])
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (4, 8, 8, 3)).astype(np.uint8)
    labels = rng.integers(0, 3, 4).astype(np.int32)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    results = []
    for image, fns in (
        (pixels, steps.make_steps(mesh, settings.Step(mean=mean, std=std))),
        (((pixels / 255.0 - mean) / std).astype(np.float32), steps.make_steps(mesh)),
    ):
        state = steps.create_train_state(model, optax.sgd(0.1), (8, 8, 3), jax.random.key(0))
        batch = mesh_lib.shard_batch({"image": image, "label": labels}, mesh)
        state, metrics = fns[0](state, batch, mesh_lib.replicate(jax.random.key(1), mesh))
        evaluation = fns[1](state, {**batch, "mask": jnp.ones(4)})
        results.append((float(metrics["loss"]), float(evaluation["loss"])))
    # The images differ by the rounding of the normalisation (float32 on the device, float64
    # then float32 on the host), then one step and one eval: the float32 bounds of those.
    forward, _, evaluate = tolerances.step_bounds(model, jnp.zeros((4, 8, 8, 3)))
    print(tolerances.report("step loss", abs(results[0][0] - results[1][0]) / results[1][0], forward))
    np.testing.assert_allclose(results[0], results[1], rtol=forward + evaluate)


def test_batch_size_must_divide_over_devices():
    mesh = SimpleNamespace(devices=np.empty(8))
    with pytest.raises(ValueError, match=r"batch_size=100 does not divide over 8 devices.*96 or 104"):
        mesh_lib.check_batch_size(100, mesh)
    mesh_lib.check_batch_size(128, mesh)


_EIGHT_DEVICES = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np, optax, resnet_jax, tolerances
    from train import mesh as mesh_lib, settings, steps
    assert jax.device_count() == 8, jax.devices()
    model = resnet_jax.create_model("resnet20", stage_sizes=(1, 1), num_classes=4)
    rng = np.random.default_rng(0)
    batches = [{"image": rng.normal(size=(16, 8, 8, 3)).astype(np.float32),
                "label": rng.integers(0, 4, 16).astype(np.int32)} for _ in range(3)]
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = mesh_lib.create_mesh(devices)
        tx = optax.sgd(0.1, momentum=0.9)
        state = steps.create_train_state(model, tx, (8, 8, 3), jax.random.key(0))
        state = mesh_lib.replicate(state, mesh)
        params = jax.device_get(state.params)
        train_fn, eval_fn = steps.make_steps(mesh)
        losses = []
        for i, b in enumerate(batches):
            key = mesh_lib.replicate(jax.random.key(1), mesh)
            state, m = train_fn(state, mesh_lib.shard_batch(b, mesh), key)
            losses.append(float(m["loss"]) / float(m["count"]))
            if i == 0:
                ev = eval_fn(state, mesh_lib.shard_batch({**b, "mask": np.ones(16, np.float32)}, mesh))
                first = (jax.tree.map(np.subtract, jax.device_get(state.params), params),
                         jax.device_get(state.batch_stats), float(ev["loss"]) / 16)
        results.append((losses, *first))
    (l1, u1, s1, e1), (l8, u8, s8, e8) = results

    def rel(a, b):
        a, b = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)]) for t in (a, b))
        return float(np.linalg.norm(a - b) / np.linalg.norm(b))

    v = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    x, y = jnp.asarray(batches[0]["image"]), jnp.asarray(batches[0]["label"])
    def loss(params, x=x, y=y):
        logits, _ = model.apply({"params": params, "batch_stats": v["batch_stats"]}, x, train=True,
                                mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    forward, backward, evaluate = tolerances.step_bounds(model, x)
    # What a bug would give: BatchNorm over each device's 2 examples instead of all 16.
    per_device = float(jnp.mean(jax.vmap(loss, in_axes=(None, 0, 0))(
        v["params"], x.reshape(8, 2, 8, 8, 3), y.reshape(8, 2))))
    checks = [("step 1 loss", abs(l8[0] - l1[0]) / l1[0], forward),
              ("step 1 update", rel(u8, u1), backward),
              ("step 1 batch stats", rel(s8, s1), forward),
              ("eval loss after step 1", abs(e8 - e1) / e1, forward + evaluate)]
    for name, measured, tolerance in checks:
        print(tolerances.report(name, measured, tolerance))
        assert measured <= tolerance, name
    print(f"per-device BatchNorm would move the step 1 loss by {abs(per_device - l1[0]) / l1[0]:.2e}")
    assert abs(per_device - l1[0]) / l1[0] > 10 * forward
    print("losses 1 device:", l1, "8 devices:", l8)
    assert l1[-1] < l1[0] and l8[-1] < l8[0]  # later steps amplify rounding: both train, not compared

    # Mixup/cutmix on the device, with BCE: the partner of each example is its neighbour in
    # the global batch, so the sharded step mixes the same pairs as the 1-device one.
    from train import mixing
    mixed = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = mesh_lib.create_mesh(devices)
        tx = optax.sgd(0.1, momentum=0.9)
        state = steps.create_train_state(model, tx, (8, 8, 3), jax.random.key(0))
        state = mesh_lib.replicate(state, mesh)
        train_fn, _ = steps.make_steps(
            mesh, settings.Step(mix=mixing.MixConfig(mixup_alpha=0.2, cutmix_alpha=1.0), loss="bce"))
        losses = []
        for i in range(10):
            b = batches[i % 3]
            key = mesh_lib.replicate(jax.random.key(1), mesh)
            state, m = train_fn(state, mesh_lib.shard_batch(b, mesh), key)
            losses.append(float(m["loss"]) / float(m["count"]))
        mixed.append(np.asarray(losses))
    worst = np.max(np.abs(mixed[1] - mixed[0]) / mixed[0])
    print("mixed, BCE: losses 1 device:", mixed[0].tolist(), "8 devices:", mixed[1].tolist())
    print(f"mixed, BCE: worst relative difference over 10 steps {worst:.2e}")
    print(tolerances.report("mixed step 1 loss", abs(mixed[1][0] - mixed[0][0]) / mixed[0][0], forward))
    assert abs(mixed[1][0] - mixed[0][0]) / mixed[0][0] <= forward
    # The issue's bound for the first 10 losses, 1e-5: measured 1.1e-7 on an AMD EPYC. Ten
    # SGD steps of this 2-block net carry the step-1 rounding (7e-8) on with a gain of
    # about 3; the bound leaves 90x for other CPUs' kernels.
    assert worst <= 1e-5
    print("OK")
    """
)


def test_eight_devices_reproduce_one_device():
    # Global-batch BatchNorm: the 8-way sharded step computes the 1-device step, up to the
    # rounding of other summation orders (tests/tolerances.py), and per-device statistics
    # would be far outside that bound.
    env = {
        **os.environ,
        "XLA_FLAGS": processes.xla_flags(devices=8),
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)]),
    }
    proc = subprocess.run([sys.executable, "-c", _EIGHT_DEVICES], capture_output=True, text=True, env=env)
    print(proc.stdout)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr[-3000:]


_FLOAT32_REDUCTION = textwrap.dedent(
    """
    import functools, jax, jax.numpy as jnp, numpy as np, optax, resnet_jax, tolerances
    from resnet_jax import resnet as resnet_lib
    from train import mesh as mesh_lib, settings, steps
    assert jax.device_count() == 8, jax.devices()
    rng = np.random.default_rng(0)
    b = {"image": rng.normal(size=(16, 8, 8, 3)).astype(np.float32),
         "label": rng.integers(0, 4, 16).astype(np.int32)}
    out = []
    for devices, f32 in ((jax.devices()[:1], False), (jax.devices(), True)):
        # The option's model: BatchNorm averages its statistics over the devices' shares.
        norm = resnet_lib.BatchNorm
        if f32:
            norm = functools.partial(norm, axis_name=steps.DEVICE_AXIS)
        model = resnet_jax.create_model("resnet20", stage_sizes=(1, 1), num_classes=4, norm=norm)
        mesh = mesh_lib.create_mesh(devices)
        tx = optax.sgd(0.1, momentum=0.9)
        state = mesh_lib.replicate(steps.create_train_state(model, tx, (8, 8, 3), jax.random.key(0)), mesh)
        params = jax.device_get(state.params)
        train_fn, _ = steps.make_steps(mesh, settings.Step(float32_grad_reduction=f32))
        key = mesh_lib.replicate(jax.random.key(1), mesh)
        state, m = train_fn(state, mesh_lib.shard_batch(b, mesh), key)
        out.append((float(m["loss"]) / float(m["count"]), float(m["count"]),
                    jax.tree.map(np.subtract, jax.device_get(state.params), params),
                    jax.device_get(state.batch_stats)))
    (l1, n1, u1, s1), (l8, n8, u8, s8) = out
    assert n1 == n8 == 16

    def rel(a, b):
        a, b = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)]) for t in (a, b))
        return float(np.linalg.norm(a - b) / np.linalg.norm(b))

    model = resnet_jax.create_model("resnet20", stage_sizes=(1, 1), num_classes=4)
    forward, backward, _ = tolerances.step_bounds(model, jnp.asarray(b["image"]))
    checks = [("step 1 loss", abs(l8 - l1) / l1, forward), ("step 1 update", rel(u8, u1), backward),
              ("step 1 batch stats", rel(s8, s1), forward)]
    for name, measured, tolerance in checks:
        print(tolerances.report(name, measured, tolerance))
        assert measured <= tolerance, name
    print("OK")
    """
)


def test_float32_gradient_reduction_computes_the_same_step():
    # The per-device gradients summed in float32 (config.float32_grad_reduction): on 8
    # devices, with the statistics of the global batch, the float32 model's step equals
    # the 1-device step up to the rounding of other summation orders, the bound of the
    # 8-device test above.
    env = {
        **os.environ,
        "XLA_FLAGS": processes.xla_flags(devices=8),
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)]),
    }
    proc = subprocess.run([sys.executable, "-c", _FLOAT32_REDUCTION], capture_output=True, text=True, env=env)
    print(proc.stdout)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr[-3000:]


def _tiny_state(ema=False, dtype=jnp.float32):
    model = resnet_jax.create_model("resnet20", stage_sizes=(1, 1), num_classes=4, dtype=dtype)
    return steps.create_train_state(model, optax.sgd(0.1), (8, 8, 3), jax.random.key(0), ema=ema)


def _tiny_batch():
    rng = np.random.default_rng(0)
    return {
        "image": jnp.asarray(rng.normal(size=(4, 8, 8, 3)).astype(np.float32)),
        "label": jnp.asarray(rng.integers(0, 4, 4).astype(np.int32)),
    }


def test_ema_follows_the_params_and_is_what_eval_uses():
    state = _tiny_state(ema=True)
    before, state_stats = state.params, state.batch_stats
    new, _ = jax.jit(functools.partial(steps.train_step, ema=steps.Ema(enabled=True, decay=0.9)))(
        state, _tiny_batch(), jax.random.key(1)
    )
    jax.tree.map(
        # optax's incremental_update against the same mix in numpy: 3 float32 roundings of
        # values ~0.1, well inside 1e-5 relative (1e-7 absolute for weights near 0).
        lambda e, old, p: np.testing.assert_allclose(e, 0.9 * old + 0.1 * p, rtol=1e-5, atol=1e-7),
        new.ema_params,
        before,
        new.params,
    )
    # The BatchNorm statistics are averaged the same way (torchvision's use_buffers=True).
    jax.tree.map(
        lambda e, old, p: np.testing.assert_allclose(e, 0.9 * old + 0.1 * p, rtol=1e-5, atol=1e-7),
        new.ema_batch_stats,
        state_stats,
        new.batch_stats,
    )
    # Eval uses the EMA weights: swapping them in changes the logits' loss.
    batch = {**_tiny_batch(), "mask": jnp.ones(4)}
    with_ema = steps.eval_step(new, batch)["loss"]
    without = steps.eval_step(new.replace(ema_params=None, ema_batch_stats=None), batch)["loss"]
    assert float(with_ema) != float(without)
    assert _tiny_state().ema_params is None


def test_bfloat16_computes_in_bf16_and_keeps_float32_state():
    state = _tiny_state(dtype=jnp.bfloat16)
    new, metrics = jax.jit(steps.train_step)(state, _tiny_batch(), jax.random.key(1))
    dtypes = {x.dtype for x in jax.tree.leaves((new.params, new.batch_stats, new.opt_state))}
    assert dtypes == {jnp.dtype(jnp.float32)}
    assert np.isfinite(float(metrics["loss"]))
    # The convolutions really run in bf16.
    hlo = jax.jit(steps.train_step).lower(state, _tiny_batch(), jax.random.key(1)).as_text()
    assert "bf16" in hlo


def test_load_variables_reads_a_workdir_and_names_bad_steps(tmp_path):
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager(str(tmp_path / "run" / "checkpoints"))
    for step in (3, 7):
        state = {
            "params": {"w": np.full(2, step, np.float32)},
            "batch_stats": {"m": np.ones(2, np.float32)},
            "ema_params": {"w": np.full(2, -step, np.float32)},
        }
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
    manager.wait_until_finished()
    manager.close()
    variables, step = workdirs.load_variables(str(tmp_path / "run"))
    assert step == 7 and variables["params"]["w"].tolist() == [7, 7]
    assert variables["batch_stats"]["m"].tolist() == [1, 1]
    variables, step = workdirs.load_variables(str(tmp_path / "run" / "checkpoints"), step=3, ema=True)
    assert step == 3 and variables["params"]["w"].tolist() == [-3, -3]
    with pytest.raises(ValueError, match=r"step=5 is not saved .*saved: \[3, 7\]"):
        workdirs.load_variables(str(tmp_path / "run"), step=5)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no checkpoint in"):
        workdirs.load_variables(str(tmp_path / "empty"))
