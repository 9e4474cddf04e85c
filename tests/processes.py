"""Launching ``python -m train.main`` as several JAX processes on 127.0.0.1, for the tests."""

import os
import pathlib
import socket
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_train_main(workdir, *flags, num_processes: int = 2) -> list[str]:
    """Runs ``train.main`` with ``flags`` in ``num_processes`` processes of one job, and
    returns each one's output (stdout and stderr); fails the test unless all exit 0."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = str(REPO)
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
