"""A run stopped by a signal (a cluster's preemption notice, SLURM's warning before the
time limit, Ctrl-C, a notebook's interrupt) saves the step it reached on every process,
exits with status 75, and the same command continues it; a save that fails keeps what
was saved."""

import json
import os
import pathlib
import resource
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import processes
import pytest
from flax import traverse_util

from train import checkpointing, preemption, train_lib
from train.configs import default

REPO = pathlib.Path(__file__).resolve().parents[1]
# Digits, 100 steps, saved only at the end (as a run whose checkpoints are an epoch apart,
# stopped between two of them); every step logged, so the tests see which step it is.
FLAGS = [
    "--config.num_train_steps=100",
    "--config.checkpoint_every_steps=100",
    "--config.eval_every_steps=100",
    "--config.log_every_steps=1",
]


def _env():
    return {**os.environ, "XLA_FLAGS": processes.xla_flags(), "PYTHONPATH": str(REPO)}


def _start(workdir, *flags):
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115  (closed by _output())
    cmd = [sys.executable, "-m", "train.main", f"--workdir={workdir}", *flags]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT, text=True)
    proc.log = log
    return proc


def _output(proc):
    proc.wait(timeout=600)
    proc.log.seek(0)
    out = proc.log.read()
    proc.log.close()
    return out


def _train_steps(workdir):
    """The steps of metrics.jsonl's train records, a line still being written left out."""
    try:
        lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []
    steps = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record["split"] == "train":
            steps.append(record["step"])
    return steps


def _wait_for_step(workdir, step, procs):
    deadline = time.time() + 300
    while not any(s >= step for s in _train_steps(workdir)):
        assert all(p.poll() is None for p in procs), f"the run ended before step {step}"
        assert time.time() < deadline, f"step {step} not reached in 300 s"
        time.sleep(0.02)


def _steps_saved(workdir):
    return sorted(int(p.name) for p in (pathlib.Path(workdir) / "checkpoints").iterdir() if p.name.isdigit())


def _stop(workdir, first, second, at):
    """Runs FLAGS in ``workdir`` and sends ``first`` once step ``at`` is logged, then
    ``second`` every 20 ms from the start of the save until the process has ended: the
    saving process ignores it."""
    proc = _start(workdir, *FLAGS)
    _wait_for_step(workdir, at, [proc])
    saved_before = _steps_saved(workdir) if (workdir / "checkpoints").is_dir() else []
    proc.send_signal(first)
    # The save's temporary directory, or (when it was quicker than this loop) its step.
    while proc.poll() is None and _steps_saved(workdir) == saved_before:
        if any(".orbax-checkpoint-tmp" in p.name for p in (workdir / "checkpoints").iterdir()):
            break
        time.sleep(0.005)
    while proc.poll() is None:
        time.sleep(0.02)
        proc.send_signal(second)
    out = _output(proc)
    assert proc.returncode == preemption.EXIT_CODE, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    line = [x for x in out.splitlines() if x.startswith("stopped by ")]
    assert len(line) == 1, out[-3000:]
    step = int(line[0].split(" at step ")[1].split()[0])
    assert line[0] == (
        f"stopped by {first.name} at step {step} of 100; saved it in {workdir / 'checkpoints'}; "
        "run the same command to resume (exit status 75)"
    )
    assert at <= step < 100
    # The step reached is the newest checkpoint, and what the run logged ends there.
    assert _steps_saved(workdir)[-1] == step
    assert max(_train_steps(workdir)) == step
    summary = json.loads((workdir / "summary.json").read_text())
    assert (summary["status"], summary["stopped_by"], summary["steps"]) == ("stopped", first.name, step)
    return step


def test_sigterm_and_sigint_save_the_step_reached_and_the_rerun_ends_as_the_uninterrupted_run(tmp_path):
    # Bitwise, as the kill -9 test in test_train.py: the same compiled programs on the same
    # CPU with the same inputs, and XLA's CPU programs are deterministic run to run.
    straight = tmp_path / "straight"
    proc = _start(straight, *FLAGS)
    assert proc.wait(timeout=600) == 0, _output(proc)[-3000:]
    run = tmp_path / "run"
    first = _stop(run, signal.SIGTERM, signal.SIGINT, at=50)
    second = _stop(run, signal.SIGINT, signal.SIGTERM, at=first + 10)
    proc = _start(run, *FLAGS)
    out = _output(proc)
    assert proc.returncode == 0, out[-3000:]
    assert f"resuming from the checkpoint at step {second} of 100" in out
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["status"], summary["steps"], summary["sessions"]) == ("finished", 100, 3)
    # Nothing lost and nothing done twice: each step trained once, on the batch the
    # uninterrupted run had, to the same loss; then the same weights and eval metrics.
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["step"], r["split"], r["loss"]) for r in records]
    assert losses == [(r["step"], r["split"], r["loss"]) for r in reference]
    assert [s for s, split, _ in losses if split == "train"] == list(range(1, 101))
    ours, theirs = (
        traverse_util.flatten_dict(checkpointing.load_variables(str(d))[0]) for d in (run, straight)
    )
    assert ours.keys() == theirs.keys()
    for k in ours:
        np.testing.assert_array_equal(ours[k], theirs[k], err_msg="/".join(k))
    assert summary["final"] == json.loads((straight / "summary.json").read_text())["final"]
    print(f"\nstopped at steps {first} (SIGTERM) and {second} (SIGINT); the rerun's final {summary['final']}")


def test_a_signal_to_one_of_two_processes_stops_both_at_one_saved_step(tmp_path):
    flags = [f.replace("100", "80") for f in FLAGS]
    procs = processes.start_train_main(tmp_path, *flags)
    _wait_for_step(tmp_path, 10, procs)
    procs[1].send_signal(signal.SIGUSR1)  # SLURM's --signal=USR1@120, here to one process only
    outs = processes.finish(procs, returncode=preemption.EXIT_CODE)
    line = [x for x in outs[0].splitlines() if x.startswith("stopped by ")]
    assert len(line) == 1, outs[0][-3000:]
    assert line[0].startswith("stopped by SIGUSR1 (to process 1) at step ")
    step = int(line[0].split(" at step ")[1].split()[0])
    assert 10 <= step < 80
    assert not any(x.startswith("stopped by ") for x in outs[1].splitlines())  # process 0 reports
    # One step, saved by both: each process's input position is in it.
    assert _steps_saved(tmp_path) == [step]
    data = sorted(p.name for p in (tmp_path / "checkpoints" / str(step) / "data").glob("process_*"))
    assert data == ["process_0-of-2.json", "process_1-of-2.json"]
    outs = processes.run_train_main(tmp_path, *flags)
    assert f"resuming from the checkpoint at step {step} of 80" in outs[0]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["status"], summary["steps"], summary["sessions"]) == ("finished", 80, 2)
    assert [s for s in _train_steps(tmp_path)] == list(range(1, 81))


def test_a_save_that_fails_stops_the_run_and_keeps_every_saved_step(tmp_path):
    flags = [
        "--config.num_train_steps=60",
        "--config.checkpoint_every_steps=15",
        "--config.eval_every_steps=15",
        "--config.log_every_steps=1",
    ]
    proc = _start(tmp_path, *flags)
    deadline = time.time() + 300
    while not (tmp_path / "checkpoints" / "15").is_dir():  # renamed from its temporary name: complete
        assert proc.poll() is None and time.time() < deadline, _output(proc)[-3000:]
        time.sleep(0.01)
    # From now on the process cannot write a file past 256 KB: a quota, or a disk filling up.
    # The metrics and TensorBoard files stay far below it; a checkpoint's arrays do not.
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (256 << 10, resource.RLIM_INFINITY))
    before = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "checkpoints" / "15").rglob("*"))
    out = _output(proc)
    assert proc.returncode == 1, out[-3000:]
    errors = [x for x in out.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in out, out[-3000:]
    step = int(errors[0].split("saving the checkpoint at step ")[1].split()[0])
    assert step in (30, 45)  # the first save after the limit
    assert f" in {tmp_path / 'checkpoints'} failed: [Errno 27] File too large (EFBIG)" in errors[0]
    assert "Nothing saved was deleted: steps [15" in errors[0]
    # Step 15 is as it was, and reads back.
    assert (
        sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "checkpoints" / "15").rglob("*")) == before
    )
    assert _steps_saved(tmp_path)[-1] == step - 15
    variables, restored = checkpointing.load_variables(str(tmp_path), step=15)
    assert restored == 15 and variables["params"]
    assert not (tmp_path / "summary.json").exists()


def test_a_keyboard_interrupt_in_process_saves_and_calling_again_resumes(tmp_path, monkeypatch):
    # As a notebook's interrupt button does: SIGINT to the kernel, in the middle of a cell
    # that runs train_and_evaluate. Sent from the loop itself here, so that it arrives while
    # the run's handler is installed.
    config = default.get_config()
    config.update(num_train_steps=30, checkpoint_every_steps=30, eval_every_steps=30, log_every_steps=5)
    reached = preemption.StopSignals.reached

    def interrupt_at_step_10(self, step):
        if step == 10:
            os.kill(os.getpid(), signal.SIGINT)
        return reached(self, step)

    monkeypatch.setattr(preemption.StopSignals, "reached", interrupt_at_step_10)
    with pytest.raises(KeyboardInterrupt) as info:
        train_lib.train_and_evaluate(config, str(tmp_path))
    assert isinstance(info.value, preemption.Stopped)
    step = info.value.step
    assert step in (10, 11) and str(info.value).startswith(
        f"stopped by SIGINT at step {step} of 30; saved it"
    )
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C works as before
    assert _steps_saved(tmp_path) == [step]
    monkeypatch.undo()
    summary = train_lib.train_and_evaluate(config, str(tmp_path))  # the cell, run again
    assert (summary["status"], summary["steps"], summary["sessions"]) == ("finished", 30, 2)


def test_stop_signals_are_checked_by_name():
    assert preemption.parse("") == (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
    assert preemption.parse("usr2, SIGHUP,SIGTERM")[3:] == (signal.SIGUSR2, signal.SIGHUP)
    for bad, why in (("SIGKILL", "cannot be caught"), ("SIGFOO", "is not a signal here")):
        with pytest.raises(
            ValueError, match=f"names '{bad}', which {why}; give comma-separated names from: "
        ):
            preemption.parse(bad)
