"""XLA compiler options that make resnet_jax's models faster, for ``jax.jit``.

On CPUs, XLA can hand matrix products, reductions and elementwise ops to YNNPACK, its
CPU kernel library, instead of emitting them itself. For these networks that is much
faster (BENCHMARKS.md: ResNet-20's train step +90% on a 2-core Xeon), but XLA leaves it
off by default, behind an experimental flag. Pass the options to your own ``jax.jit``:

    step = jax.jit(train_step, compiler_options=resnet_jax.xla.compiler_options())

They are per compilation, so nothing else in the process changes. On other backends, or
with a jaxlib that does not know the flag, ``compiler_options()`` is ``{}``.
"""

from __future__ import annotations

import functools
import logging

import jax

# XLA's DebugOptions.LibraryFusionType values that send work to YNNPACK: single matrix
# products, matrix products with their neighbours, reductions, elementwise chains.
YNNPACK_FUSIONS = (
    "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
    "LIBRARY_FUSION_TYPE_DOT",
    "LIBRARY_FUSION_TYPE_REDUCE",
    "LIBRARY_FUSION_TYPE_ELTWISE",
)
YNNPACK_OPTION = "xla_cpu_experimental_ynn_fusion_type"


def compiler_options(backend: str | None = None, ynnpack: bool = True) -> dict[str, str]:
    """``jax.jit`` ``compiler_options`` for ``backend`` (default: JAX's default backend).

    ``ynnpack=False`` gives ``{}``: XLA's own kernels, e.g. to compare against.
    """
    backend = backend or jax.default_backend()
    if backend != "cpu" or not ynnpack:
        return {}
    options = {YNNPACK_OPTION: ",".join(YNNPACK_FUSIONS)}
    return options if _compiles_with(tuple(options.items())) else {}


@functools.cache
def _compiles_with(options: tuple[tuple[str, str], ...]) -> bool:
    """Whether this jaxlib's CPU compiler accepts ``options`` (older ones lack the flag)."""
    try:
        x = jax.device_put(1.0, jax.local_devices(backend="cpu")[0])
        jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(x).compile()
    except Exception as error:  # jaxlib's error type has moved between versions
        logging.warning("XLA compiler options %s not supported here, left out: %s", dict(options), error)
        return False
    return True
