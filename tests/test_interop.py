"""resnet_jax inside other JAX code: the models from Flax NNX, and exported for serving."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import resnet_jax
from resnet_jax import convert, export


def _trained_like(model, x, seed=3):
    """Variables unlike a fresh init: random params, running statistics moved off 0 and 1."""
    variables = model.init(jax.random.key(seed), x, train=False)
    rng = np.random.default_rng(seed)
    stats = jax.tree.map(
        lambda a: jnp.asarray(rng.uniform(0.5, 1.5, a.shape), a.dtype), variables["batch_stats"]
    )
    return {"params": variables["params"], "batch_stats": stats}


def test_nnx_wrapper_matches_linen_in_eval_and_train_and_trains_with_an_nnx_optimizer():
    model = resnet_jax.create_model("resnet18", num_classes=5)
    x = jax.random.normal(jax.random.key(1), (8, 32, 32, 3))
    labels = jnp.arange(8) % 5
    variables = _trained_like(model, x)
    net = resnet_jax.to_nnx(model, variables)
    assert isinstance(net, nnx.Module)

    eval_diff = float(jnp.max(jnp.abs(net(x, train=False) - model.apply(variables, x, train=False))))
    assert eval_diff <= 1e-6
    # Train mode: batch statistics, and the running averages updated as Linen's mutable apply.
    logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(net(x, train=True, mutable=["batch_stats"]), logits, atol=1e-6)
    got = resnet_jax.nnx_bridge.to_linen_variables(net)["batch_stats"]
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), got, variables["batch_stats"])
    assert min(jax.tree.leaves(moved)) > 0  # every statistic moved ...
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), got, updates["batch_stats"]
    )  # ... as Linen's

    net = resnet_jax.to_nnx(model, variables)
    optimizer = nnx.Optimizer(net, optax.sgd(0.01), wrt=nnx.Param)

    def loss_fn(net):
        logits = net(x, train=True, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    @nnx.jit
    def step(net, optimizer):
        loss, grads = nnx.value_and_grad(loss_fn)(net)
        optimizer.update(net, grads)
        return loss

    losses = [float(step(net, optimizer)) for _ in range(4)]
    print(f"\nNNX eval max |diff| {eval_diff:.1e}; nnx.Optimizer losses {losses}")
    assert losses[-1] < losses[0]


def test_nnx_wrapper_refuses_variables_of_another_shape():
    model = resnet_jax.create_model("resnet20", num_classes=10)
    other = resnet_jax.create_model("resnet20", num_classes=7)
    variables = other.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    with pytest.raises(
        ValueError, match=r"params/head/bias: shape \(7,\) in variables, \(10,\) in the model"
    ):
        resnet_jax.to_nnx(model, variables)


LOAD_AND_CALL = """
import sys, numpy as np, jax
with open(sys.argv[1], "rb") as f:
    forward = jax.export.deserialize(bytearray(f.read()))
for n in (1, 5):
    images = np.load(f"{sys.argv[2]}/x{n}.npy")
    np.save(f"{sys.argv[2]}/y{n}.npy", np.asarray(forward.call(images)))
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("resnet_jax", "flax", "train"))
assert not loaded, loaded
"""


def test_export_runs_without_the_model_code_at_any_batch_size(tmp_path):
    model = resnet_jax.create_model("resnet20", num_classes=10)
    x = jnp.zeros((1, 32, 32, 3))
    variables = _trained_like(model, x)
    convert.save(
        variables, {"source": "test", "model": "resnet20", "mean": [0.5], "std": [0.5]}, str(tmp_path / "w")
    )
    out = tmp_path / "resnet20.jaxexport"
    export.main(["--model=resnet20", f"--weights={tmp_path / 'w'}", "--image-size=32", f"--out={out}"])
    metadata = json.loads((tmp_path / "resnet20.jaxexport.json").read_text())
    assert metadata["input"]["shape"] == ["batch", 32, 32, 3] and metadata["platforms"] == ["cpu", "cuda"]
    rng = np.random.default_rng(0)
    for n in (1, 5):
        np.save(tmp_path / f"x{n}.npy", rng.normal(size=(n, 32, 32, 3)).astype(np.float32))
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_AND_CALL, str(out), str(tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for n in (1, 5):
        expected = model.apply(variables, np.load(tmp_path / f"x{n}.npy"), train=False)
        got = np.load(tmp_path / f"y{n}.npy")
        assert got.shape == (n, 10)
        diff = float(np.max(np.abs(got - expected)))
        print(f"exported resnet20, batch {n}: max |diff| {diff:.1e}")
        assert diff <= 1e-5
    # An existing artifact is never overwritten.
    with pytest.raises(SystemExit):
        export.main(["--model=resnet20", f"--weights={tmp_path / 'w'}", "--image-size=32", f"--out={out}"])
