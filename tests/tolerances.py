"""Tolerances for float32 results that two programs compute with other summation orders.

Two XLA programs for the same function (YNNPACK's kernels or XLA's own, 1 device or 8,
AVX-512 or AVX2, an Intel or an AMD CPU) do the same float32 operations; they differ in
how they split, vectorise and order each sum. So their results differ by rounding, and by
how much is set by the sizes of the sums:

- float32's unit roundoff is u = 2**-24 (about 6.0e-8);
- a sum of n terms in any order is, with probability at least 1 - 2 n exp(-LAMBDA**2 / 2),
  within LAMBDA * sqrt(n) * u * sum|x_i| of the exact sum (Higham and Mary, "A new
  approach to probabilistic rounding error analysis", SIAM J. Sci. Comput. 2019, Thm 2.4:
  rounding errors as independent zero-mean variables, the model that fits dot products
  and convolutions). With LAMBDA = 10 that probability is 1 - 2e-22 * n;
- through a network whose normalised activations pass relative errors on with a gain of
  about 1, the relative errors of its sums add up: ``sum over sums of LAMBDA sqrt(n) u``;
- two programs are each that far from the exact result, so twice that from each other.

``rtol(fn, *args)`` counts every sum in ``fn``'s jaxpr (dot products, convolutions in
both directions, reductions), so it grows with depth, width and batch as the rounding
does. It bounds one forward pass or one step: a training trajectory amplifies a rounding
difference every step, so a comparison over many steps needs a band of what training
reaches instead. The measured differences sit 1-3 orders of magnitude below these bounds
(each test prints its margin); a real bug (another BatchNorm, a wrong kernel) moves the
results by more than 1e-2.
"""

from __future__ import annotations

import math

import jax
import numpy as np

U = 2.0**-24  # float32 unit roundoff
LAMBDA = 10.0


def sum_sizes(fn, *args) -> list[int]:
    """The number of terms of every float sum that ``fn(*args)`` computes."""
    sizes: list[int] = []

    def walk(jaxpr) -> None:
        for eqn in jaxpr.eqns:
            name = eqn.primitive.name
            if name == "dot_general":
                (lhs_contract, _), _ = eqn.params["dimension_numbers"]
                shape = eqn.invars[0].aval.shape
                sizes.append(math.prod(shape[d] for d in lhs_contract))
            elif name == "conv_general_dilated":
                # Each output sums (input features / groups) x the kernel's window.
                rhs = eqn.invars[1].aval.shape
                spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, spatial...)
                sizes.append(rhs[spec[1]] * math.prod(rhs[d] for d in spec[2:]))
            elif name in ("reduce_sum", "cumsum", "psum"):
                shape = eqn.invars[0].aval.shape
                axes = eqn.params.get("axes", ())
                sizes.append(math.prod(shape[a] for a in axes) if axes else 1)
            for sub in jax.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return [n for n in sizes if n > 1]


def rtol(fn, *args) -> float:
    """Relative tolerance between two float32 programs computing ``fn(*args)``: twice the
    sum of ``LAMBDA sqrt(n) u`` over its sums (see the module docstring)."""
    return 2 * LAMBDA * U * float(np.sum(np.sqrt(sum_sizes(fn, *args))))


def report(name: str, measured: float, tolerance: float) -> str:
    """One line for the test's output: the difference, the bound, and the headroom."""
    margin = tolerance / measured if measured > 0 else math.inf
    return f"{name}: measured {measured:.2e}, tolerance {tolerance:.2e}, margin x{margin:.0f}"


def assert_close(name: str, got, expected, tolerance: float) -> None:
    """Asserts max |got - expected| <= ``tolerance`` x max |expected| (the bounds are
    relative to the scale of the values, as the rounding of their sums is), printing the
    margin."""
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    assert np.max(np.abs(expected)) > 0, f"{name}: a comparison of zeros shows nothing"
    measured = float(np.max(np.abs(got - expected)) / np.max(np.abs(expected)))
    print(report(name, measured, tolerance))
    assert measured <= tolerance, report(name, measured, tolerance)


def step_bounds(model, x) -> tuple[float, float, float]:
    """``rtol`` of one training step of ``model`` on a batch shaped like ``x``: its
    train-mode loss, the loss's gradients, and an eval-mode forward pass."""
    import optax

    variables = model.init(jax.random.key(0), x[:1])
    labels = np.zeros(x.shape[0], np.int32)

    def loss(params):
        stats = variables["batch_stats"]
        logits, _ = model.apply(
            {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    params = variables["params"]
    return rtol(loss, params), rtol(jax.grad(loss), params), rtol(lambda v: model.apply(v, x), variables)
