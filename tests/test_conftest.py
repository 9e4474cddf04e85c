"""The suite's own check: a test that leaves a process running fails, and the process ends."""

import os
import pathlib
import subprocess
import sys

import psutil

HERE = pathlib.Path(__file__).resolve().parent

LEAKY = """
import subprocess, sys, time

def test_orphans_a_sleeper(tmp_path):
    # A child starts a grandchild and is killed: the grandchild is re-parented, out of the tree.
    child = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
        "print(p.pid, flush=True); time.sleep(120)"
    )], stdout=subprocess.PIPE, text=True)
    (tmp_path.parent / "pid").write_text(child.stdout.readline())
    child.kill()
    child.wait()

def test_cleans_up():
    subprocess.run([sys.executable, "-c", "pass"], check=True)
"""


def test_a_test_that_leaves_a_process_running_fails_and_the_process_is_killed(tmp_path):
    (tmp_path / "conftest.py").write_text((HERE / "conftest.py").read_text())
    (tmp_path / "test_leaky.py").write_text(LEAKY)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'base'}", "-q"],
        cwd=tmp_path,
        env={**os.environ, "RESNET_JAX_TESTS_GRACE_S": "1"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "ERROR test_leaky.py::test_orphans_a_sleeper" in proc.stdout
    assert "1 process(es) running 1s after it ended (now killed)" in proc.stdout
    assert "2 passed, 1 error" in proc.stdout
    pid = int((tmp_path / "base" / "pid").read_text())
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
