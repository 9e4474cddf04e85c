"""Launching ``python -m train.main`` as several JAX processes on 127.0.0.1, for the tests."""

import os
import pathlib
import socket
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
# Python source that makes TensorFlow unimportable for the rest of a ``python -c`` script,
# to show that a command runs where only the ``prepare`` extra's TensorFlow is installed.
BLOCK_TENSORFLOW = """
import sys
class NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name == 'tensorflow' or name.startswith('tensorflow.'):
            raise ModuleNotFoundError(f'No module named {name!r} (blocked by the test)', name=name)
sys.meta_path.insert(0, NoTensorFlow())
"""


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


def start_train_main(workdir, *flags, num_processes: int = 2) -> list[subprocess.Popen]:
    """Starts ``train.main`` with ``flags`` in ``num_processes`` processes of one job, each
    with its output (stdout and stderr together) in a temporary file, which no test has to
    drain while it waits for something else (a full pipe would stop the process)."""
    port = free_port()
    env = {**os.environ, "XLA_FLAGS": xla_flags(), "PYTHONPATH": str(REPO)}
    common = [f"--workdir={workdir}", *flags, f"--coordinator_address=127.0.0.1:{port}"]
    procs = []
    for i in range(num_processes):
        log = tempfile.TemporaryFile("w+")  # noqa: SIM115  (closed by finish())
        cmd = [
            sys.executable,
            "-m",
            "train.main",
            *common,
            f"--num_processes={num_processes}",
            f"--process_id={i}",
        ]
        procs.append(
            subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        )
        procs[-1].log = log
    return procs


def run_train_main(workdir, *flags, num_processes: int = 2, returncode: int = 0) -> list[str]:
    """Runs ``train.main`` with ``flags`` in ``num_processes`` processes of one job, and
    returns each one's output (stdout and stderr); fails the test unless all exit with
    ``returncode``."""
    procs = start_train_main(workdir, *flags, num_processes=num_processes)
    return finish(procs, returncode)


def finish(procs: list[subprocess.Popen], returncode: int = 0) -> list[str]:
    """Each process's output, once all have ended; fails the test unless all exit with
    ``returncode``."""
    outs = []
    for p in procs:
        p.wait(timeout=600)
        p.log.seek(0)
        outs.append(p.log.read())
        p.log.close()
    codes = [p.returncode for p in procs]
    assert all(c == returncode for c in codes), f"exit codes {codes}:\n" + "\n".join(o[-3000:] for o in outs)
    return outs
