"""Compile-only accelerators on this machine: TPU slices through libtpu, GPUs through XLA's
CUDA plugin, neither needing the hardware (``python -m train.compile``).

A target is named as libtpu names a TPU topology (``v5e:2x4``, ``v4:2x2x1``), as Cloud TPU
names a slice (``v5e-8``, ``v4-8``: translated, see ``SLICES``), or as a GPU and a count
(``h100x8``, ``a100x2``; ``GPUS``). ``CHIPS`` holds each chip's HBM, peak bf16 rate and
HBM bandwidth, with the page each figure comes from.

Call ``prepare_environment()`` before JAX is imported: it keeps JAX on the CPU backend, so
that nothing waits for TPU or GPU hardware or a metadata server, and stops the GPU
compiler from autotuning on a GPU that is not there.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

SPECS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_specs")


@dataclasses.dataclass(frozen=True)
class Chip:
    """One chip's published figures: HBM (GiB), dense bf16 (TFLOP/s), HBM bandwidth
    (GB/s), TensorCores per chip (a TPU compile-only device can be one core of it)."""

    name: str
    hbm_gib: float
    bf16_tflops: float
    hbm_gbps: float
    source: str
    cores: int = 1


# Keyed by JAX's device_kind.
CHIPS = {
    "TPU v2": Chip("TPU v2", 16, 45, 600, "https://cloud.google.com/tpu/docs/v2", cores=2),
    "TPU v3": Chip("TPU v3", 32, 123, 900, "https://cloud.google.com/tpu/docs/v3", cores=2),
    "TPU v4": Chip("TPU v4", 32, 275, 1200, "https://cloud.google.com/tpu/docs/v4", cores=2),
    "TPU v5 lite": Chip("TPU v5e", 16, 197, 819, "https://cloud.google.com/tpu/docs/v5e"),
    "TPU v5": Chip("TPU v5p", 95, 459, 2765, "https://cloud.google.com/tpu/docs/v5p", cores=2),
    "TPU v6 lite": Chip("TPU v6e", 32, 918, 1640, "https://cloud.google.com/tpu/docs/v6e"),
    "NVIDIA A100-SXM4-80GB": Chip(
        "A100 SXM 80GB", 80, 312, 2039, "https://www.nvidia.com/en-us/data-center/a100/"
    ),
    "NVIDIA H100 80GB HBM3": Chip(
        "H100 SXM", 80, 989, 3350, "https://www.nvidia.com/en-us/data-center/h100/"
    ),
    "NVIDIA H200 141GB HBM3e": Chip(
        "H200 SXM", 141, 989, 4800, "https://www.nvidia.com/en-us/data-center/h200/"
    ),
}

# Cloud TPU slice names (cores or chips, as each generation counts) -> libtpu topologies.
SLICES = {
    "v2-8": "v2:2x2",
    "v3-8": "v3:2x2",
    "v4-8": "v4:2x2x1",
    "v5e-1": "v5e:1x1",
    "v5e-4": "v5e:2x2",
    "v5e-8": "v5e:2x4",
    "v5p-8": "v5p:2x2x1",
    "v6e-1": "v6e:1x1",
    "v6e-4": "v6e:2x2",
    "v6e-8": "v6e:2x4",
}
GPUS = {"a100": "a100.txtpb", "h100": "h100.txtpb", "h200": "h200.txtpb"}
_GPU = re.compile(r"^([a-z0-9]+)x(\d+)$")
_TPU = re.compile(r"^(v[0-9][a-z]*):(\d+(?:x\d+)*)$")


@dataclasses.dataclass(frozen=True)
class Target:
    """Compile-only devices and what one of them is."""

    name: str
    platform: str  # "tpu" or "gpu"
    devices: tuple[Any, ...]
    chip: Chip

    @property
    def device_kind(self) -> str:
        return self.devices[0].device_kind

    @property
    def share(self) -> float:
        """The part of a chip one device is (a single TensorCore of a two-core chip: 0.5)."""
        return getattr(self.devices[0], "num_cores", self.chip.cores) / self.chip.cores

    @property
    def hbm_bytes(self) -> float:
        return self.chip.hbm_gib * 2**30 * self.share

    @property
    def peak_flops(self) -> float:
        return self.chip.bf16_tflops * 1e12 * self.share

    @property
    def hbm_bytes_per_s(self) -> float:
        return self.chip.hbm_gbps * 1e9 * self.share

    def describe(self) -> str:
        per = "" if self.share == 1 else f" ({self.share:g} of a chip each)"
        return f"{self.name}: {len(self.devices)} x {self.device_kind}{per}"


def prepare_environment() -> None:
    """Keeps a process that imports JAX next on the CPU backend: libtpu and the CUDA plugin
    are only loaded as compilers. Quiets libtpu's notes about the TPU it does not find."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ["TPU_SKIP_MDS_QUERY"] = "1"
    # libtpu locks /tmp/libtpu_lockfile so that one process owns a TPU; compiling needs no
    # TPU, and two compiles (the test suite's workers, say) may run at once.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_STDERR_LOG_LEVEL", "3")
    os.environ.setdefault("TPU_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_gpu_autotune_level" not in flags:
        # No GPU to time candidate kernels on: take XLA's heuristic choices.
        os.environ["XLA_FLAGS"] = f"{flags} --xla_gpu_autotune_level=0".strip()


def valid_names() -> str:
    return (
        f"a TPU topology as libtpu names it (v5e:2x4, v4:2x2x1, v5p:2x2x1, v6e:2x4, ...), a Cloud "
        f"TPU slice ({', '.join(SLICES)}), or a GPU and a count ({', '.join(f'{g}x8' for g in GPUS)})"
    )


def create(name: str) -> Target:
    """The compile-only devices of target ``name`` (see the module docstring)."""
    key = name.strip().lower()
    gpu = _GPU.match(key)
    if gpu and gpu.group(1) in GPUS:
        return _gpu_target(name, gpu.group(1), int(gpu.group(2)))
    topology = SLICES.get(key, key)
    if _TPU.match(topology):
        return _tpu_target(name, topology)
    raise ValueError(f"unknown target {name!r}; valid: {valid_names()}")


def _chip(device_kind: str, name: str) -> Chip:
    if device_kind not in CHIPS:
        raise ValueError(
            f"target {name!r} gives devices of kind {device_kind!r}, which train/targets.py's chip "
            f"table lacks; it knows {', '.join(CHIPS)}"
        )
    return CHIPS[device_kind]


def _tpu_target(name: str, topology: str) -> Target:
    from jax._src import xla_bridge
    from jax.experimental import topologies

    if xla_bridge.get_tpu_library_path() is None:
        raise ImportError(
            f"target {name!r} needs libtpu, TPU's compiler: pip install 'jax[tpu]' (about 700 MB; "
            "no TPU needed)"
        )
    dims = [int(d) for d in topology.split(":")[1].split("x")]
    kwargs: dict[str, Any] = {}
    if dims[0] % 2 or (len(dims) > 1 and dims[1] % 2):
        # Smaller than one 2x2 host: the slice is one host of its own shape.
        kwargs["chips_per_host_bounds"] = [*dims, 1, 1][:3]
    try:
        devices = topologies.get_topology_desc(topology_name=topology, platform="tpu", **kwargs).devices
    except Exception as e:  # libtpu's own message names what it refused
        raise ValueError(f"libtpu refused target {name!r} ({topology}): {str(e).splitlines()[0]}") from e
    return Target(name, "tpu", tuple(devices), _chip(devices[0].device_kind, name))


def _gpu_target(name: str, gpu: str, count: int) -> Target:
    from jax.experimental import topologies

    if count < 1:
        raise ValueError(f"target {name!r}: the GPU count must be at least 1")
    with open(os.path.join(SPECS, GPUS[gpu])) as f:
        spec = f.read()
    try:
        topology = topologies.get_topology_desc(
            "", platform="cuda", topology=f"1 x 1 x {count}", target_config=spec
        )
    except (NotImplementedError, RuntimeError) as e:
        raise ImportError(
            f"target {name!r} needs XLA's CUDA plugin, the GPU compiler: pip install --no-deps "
            f"jax-cuda12-plugin==JAX_VERSION jax-cuda12-pjrt==JAX_VERSION (about 20 MB; no GPU or "
            f"CUDA needed; add --target=DIR and run with PYTHONPATH=DIR to keep it out of other "
            f"JAX processes) ({type(e).__name__}: {str(e).splitlines()[0]})"
        ) from e
    devices = topology.devices
    return Target(name, "gpu", tuple(devices), _chip(devices[0].device_kind, name))
