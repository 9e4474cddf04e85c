"""Strict JAX settings for every test (silent rank promotion is a bug here), and a check
that no test leaves a process behind."""

import contextlib
import os
import shutil
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
# The suite runs on the CPU, also where libtpu and XLA's CUDA plugin are installed (CI
# installs them for tests/test_compile.py, which loads them as compilers only): JAX then
# initialises neither, so nothing waits for TPU or GPU hardware or a metadata server, and
# no process prints their start-up notes. Every process a test starts inherits this.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")

import jax
import psutil
import pytest

# One persistent XLA compilation cache for the whole run, shared by every process a test
# starts (they inherit the environment): the suite launches `train.main` dozens of times
# on a few models, and a launch otherwise spends about half its time compiling what an
# earlier one compiled. A cached executable is the compiled program itself, so no result
# changes. The test processes themselves do without (jax_enable_compilation_cache, below):
# their eager tests compile thousands of small ops, for which the cache's lookups cost
# more than they save. Only compiles over 0.5 s are written (a step, an init). The
# size limit turns on JAX's file lock, so that no process reads an entry another is still
# writing. The xdist controller creates it, and removes it at the end, before it starts
# the workers, which inherit the variable.
_OWN_XLA_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_XLA_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="resnet_jax-tests-xla-cache-")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
    os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(8 << 30)
jax.config.update("jax_enable_compilation_cache", False)  # a config, not inherited

jax.config.update("jax_numpy_rank_promotion", "raise")
# Eager init compiles one random-normal kernel per parameter shape; the partitionable
# threefry makes each of those compiles ~5x slower on CPU, and no test shards keys.
jax.config.update("jax_threefry_partitionable", False)

# Every process a test starts inherits this variable, naming the pytest process (an xdist
# worker) that ran it, and keeps it when its own parent dies and it is re-parented. So a
# process left behind is found by its environment, not by a process tree it has left.
RUN_MARK = "RESNET_JAX_TESTS_OF"
os.environ[RUN_MARK] = str(os.getpid())
# How long a test's processes may take to end after it returns: a grain worker notices a
# killed parent within 0.5 s, and a resource tracker ends once its last writer has.
GRACE_S = float(os.environ.get("RESNET_JAX_TESTS_GRACE_S", "10"))


def _ours() -> list[psutil.Process]:
    """Live processes started under this pytest process, bar the ones it keeps for life."""
    me, found = os.getpid(), []
    for proc in psutil.process_iter(["pid", "ppid", "cmdline", "status"]):
        if proc.pid == me or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if proc.environ().get(RUN_MARK) != str(me):
                continue
        except (psutil.AccessDenied, psutil.NoSuchProcess, OSError):
            continue
        cmdline = " ".join(proc.info["cmdline"] or [])
        # multiprocessing's resource tracker for this process itself lives as long as it does.
        if proc.info["ppid"] == me and "multiprocessing.resource_tracker" in cmdline:
            continue
        found.append(proc)
    return found


@pytest.fixture(autouse=True)
def no_process_left_behind():
    """Fails the test that leaves a process running (a grain worker, a launched trainer,
    a notebook kernel, its resource tracker), names it, and kills it."""
    yield
    deadline = time.monotonic() + GRACE_S
    while (left := _ours()) and time.monotonic() < deadline:
        time.sleep(0.2)
    if not left:
        return
    described = {
        p: f"pid {p.pid} (parent {p.info['ppid']}): {' '.join(p.info['cmdline'] or [])[:200]}" for p in left
    }
    # Trackers last: once the processes that hold their pipe are gone, they remove the
    # shared memory those registered, which a killed tracker would leave in /dev/shm.
    for trackers in (False, True):
        for proc in psutil.wait_procs(left, timeout=0)[1]:
            if ("multiprocessing.resource_tracker" in described[proc]) == trackers:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.kill()
        psutil.wait_procs(left, timeout=GRACE_S / 2)
    pytest.fail(
        f"the test left {len(left)} process(es) running {GRACE_S:.0f}s after it ended "
        "(now killed):\n" + "\n".join(described.values()),
        pytrace=False,
    )


# The longest tests (40 s to 3 minutes each on the 2-core CI machine: the --durations
# table at the end of every run) start first. xdist hands tests out in collection order,
# so under `-n 2` these alternate between the two workers, and the run ends on short tests
# instead of one worker finishing a long one alone while the other waits.
SLOW_FIRST = (
    "test_cifar10_transfer_frozen_backbone_beats_scratch",
    "test_devices_and_processes_give_the_one_device_result",
    "test_accelerator_suite_runs_every_part_in_smoke_mode",
    "test_kill_9_then_restart_reaches_the_uninterrupted_result_bitwise",
    "test_sigterm_and_sigint_save_the_step_reached_and_the_rerun_ends_as_the_uninterrupted_run",
    "test_a_signal_to_one_of_two_processes_stops_both_at_one_saved_step_and_both_agree_to_skip_a_broken_one",
    "test_notebook_runs_in_smoke_mode",
    "test_user_errors_are_one_line_without_a_traceback",
    "test_eight_devices_reproduce_one_device",
    "test_default_command_reaches_95_percent",
    "test_trains_on_digits_and_an_image_folder_without_tensorflow",
)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.originalname not in SLOW_FIRST)  # stable: the rest keep their order


def pytest_sessionfinish(session, exitstatus):
    if _OWN_XLA_CACHE and "PYTEST_XDIST_WORKER" not in os.environ:
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
