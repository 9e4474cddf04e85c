"""resnet_jax inside other JAX code: the models from Flax NNX, and exported for serving."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tolerances
from flax import nnx

import resnet_jax
from resnet_jax import convert, export


def _trained_like(model, x, seed=3):
    """Variables unlike a fresh init: running means off 0 and variances off 1, and a random
    head (init zeroes it). The means stay small, as trained ones do: means of the order of
    the activations would zero every ReLU and the logits with them."""
    variables = model.init(jax.random.key(seed), x, train=False)
    rng = np.random.default_rng(seed)

    def stat(path, a):
        moved = rng.normal(0, 0.1, a.shape) if path[-1].key == "mean" else rng.uniform(0.5, 1.5, a.shape)
        return jnp.asarray(moved, a.dtype)

    stats = jax.tree_util.tree_map_with_path(stat, variables["batch_stats"])
    kernel = variables["params"]["head"]["kernel"]
    random_kernel = jnp.asarray(rng.normal(0, 0.1, kernel.shape), kernel.dtype)
    head = {**variables["params"]["head"], "kernel": random_kernel}
    return {"params": {**variables["params"], "head": head}, "batch_stats": stats}


def test_nnx_wrapper_matches_linen_in_eval_and_train_and_trains_with_an_nnx_optimizer():
    model = resnet_jax.create_model("resnet18", num_classes=5)
    x = jax.random.normal(jax.random.key(1), (8, 32, 32, 3))
    labels = jnp.arange(8) % 5
    variables = _trained_like(model, x)
    net = resnet_jax.to_nnx(model, variables)
    assert isinstance(net, nnx.Module)

    # The NNX module runs the Linen module's operations, so at most the summation orders
    # differ: the float32 bounds of tests/tolerances.py for eval and for train mode.
    eval_tol = tolerances.rtol(lambda v: model.apply(v, x, train=False), variables)
    train_tol = tolerances.rtol(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]), variables)
    linen_eval = model.apply(variables, x, train=False)
    eval_diff = float(jnp.max(jnp.abs(net(x, train=False) - linen_eval)))
    tolerances.assert_close("NNX eval logits", net(x, train=False), linen_eval, eval_tol)
    # Train mode: batch statistics, and the running averages updated as Linen's mutable apply.
    logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    tolerances.assert_close(
        "NNX train logits", net(x, train=True, mutable=["batch_stats"]), logits, train_tol
    )
    got = resnet_jax.nnx_bridge.to_linen_variables(net)["batch_stats"]
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), got, variables["batch_stats"])
    assert min(jax.tree.leaves(moved)) > 0  # every statistic moved ...
    flat = [np.concatenate([np.ravel(a) for a in jax.tree.leaves(t)]) for t in (got, updates["batch_stats"])]
    tolerances.assert_close("NNX batch statistics", *flat, train_tol)  # ... as Linen's

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
        images = np.load(tmp_path / f"x{n}.npy")
        expected = model.apply(variables, images, train=False)
        got = np.load(tmp_path / f"y{n}.npy")
        assert got.shape == (n, 10)
        # Compiled in another process from the serialized StableHLO: other summation orders.
        tolerance = tolerances.rtol(lambda v, images=images: model.apply(v, images, train=False), variables)
        tolerances.assert_close(f"exported resnet20, batch {n}", got, expected, tolerance)
    # An existing artifact is never overwritten.
    with pytest.raises(SystemExit):
        export.main(["--model=resnet20", f"--weights={tmp_path / 'w'}", "--image-size=32", f"--out={out}"])
