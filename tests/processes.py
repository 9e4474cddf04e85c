"""Launching ``python -m train.main`` as several JAX processes on 127.0.0.1, for the tests."""

import os
import pathlib
import socket
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def xla_flags(devices: int = 1) -> str:
    """XLA_FLAGS for a child process with ``devices`` CPU devices, keeping any other flag
    this process was given (e.g. ``--xla_cpu_max_isa=AVX2`` to test other CPU kernels)."""
    flags = [
        f for f in os.environ.get("XLA_FLAGS", "").split() if "force_host_platform_device_count" not in f
    ]
    if devices > 1:
        flags.append(f"--xla_force_host_platform_device_count={devices}")
    return " ".join(flags)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_train_main(workdir, *flags, num_processes: int = 2) -> list[str]:
    """Runs ``train.main`` with ``flags`` in ``num_processes`` processes of one job, and
    returns each one's output (stdout and stderr); fails the test unless all exit 0."""
    port = free_port()
    env = {**os.environ, "XLA_FLAGS": xla_flags(), "PYTHONPATH": str(REPO)}
    common = [f"--workdir={workdir}", *flags, f"--coordinator_address=127.0.0.1:{port}"]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "train.main",
                *common,
                f"--num_processes={num_processes}",
                f"--process_id={i}",
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(num_processes)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(out[-3000:] for out in outs)
    return outs
