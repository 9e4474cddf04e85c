"""A run stopped by a signal (a cluster's preemption notice, SLURM's warning before the
time limit, Ctrl-C, a notebook's interrupt) saves the step it reached on every process,
exits with status 75, and the same command continues it; a save that fails keeps what
was saved."""

import json
import os
import pathlib
import resource
import signal
import sys
import time

import numpy as np
import processes
import psutil
import pytest
from flax import traverse_util

from bench import stop_time
from resnet_jax import workdirs
from train import preemption, train_lib
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
    return stop_time.start(workdir, *flags, env=_env())


def _stop(workdir, first, second, at, proc=None):
    """Runs FLAGS in ``workdir`` (or watches ``proc``), sends ``first`` once step ``at``
    is logged, then ``second`` every 20 ms from the start of the save to the exit, which
    the saving process ignores; checks what the run left, and returns the step saved."""
    proc = proc or _start(workdir, *FLAGS)
    stop_time.wait_for_step(workdir, at, [proc])
    stop_time.stop(proc, workdir, first, second)
    out = stop_time.output(proc)
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
    assert stop_time.saved_steps(workdir)[-1] == step
    assert max(stop_time.train_steps(workdir)) == step
    summary = json.loads((workdir / "summary.json").read_text())
    assert (summary["status"], summary["stopped_by"], summary["steps"]) == ("stopped", first.name, step)
    return step


def _slurm_script(tmp_path, workdir):
    """The training guide's SLURM batch script, its srun line's command swapped for this test's run,
    with stub srun (runs its command) and scontrol (writes its arguments to a file)."""
    guide = (REPO / "docs" / "guides" / "training.md").read_text()
    script = guide.split("**SLURM.**", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    srun = [line for line in script.splitlines() if line.startswith("srun ")]
    assert len(srun) == 1, script
    flags = " ".join(f"'{f}'" for f in FLAGS)
    ours = f"srun {sys.executable} -m train.main --workdir={workdir} {flags}"
    (tmp_path / "job.sbatch").write_text(script.replace(srun[0], ours))
    stubs = tmp_path / "stubs"
    stubs.mkdir(exist_ok=True)
    (stubs / "srun").write_text('#!/bin/bash\nexec "$@"\n')
    (stubs / "scontrol").write_text(f'#!/bin/bash\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    env = {**_env(), "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": "4242"}
    return ["bash", str(tmp_path / "job.sbatch")], env


def _trainer(job):
    """The trainer process under the job script (the stub srun execs it)."""
    deadline = time.time() + 60
    while time.time() < deadline:
        for child in psutil.Process(job.pid).children():
            if "train.main" in " ".join(child.cmdline()):
                return child
        time.sleep(0.02)
    raise AssertionError("the job script started no trainer")


def test_sigterm_and_sigint_save_the_step_reached_and_the_rerun_ends_as_the_uninterrupted_run(tmp_path):
    # Bitwise, as the kill -9 test in test_train.py: the same compiled programs on the same
    # CPU with the same inputs, and XLA's CPU programs are deterministic run to run.
    straight = tmp_path / "straight"
    proc = _start(straight, *FLAGS)
    assert proc.wait(timeout=600) == 0, stop_time.output(proc)[-3000:]
    run = tmp_path / "run"
    first = _stop(run, signal.SIGTERM, signal.SIGINT, at=50)
    # The second session and the last run as the training guide's SLURM job: stopped, its exit
    # status 75 has the script requeue the job, and the requeued job finishes the run.
    cmd, env = _slurm_script(tmp_path, run)
    job = stop_time.start(run, cmd=cmd, env=env)
    trainer = _trainer(job)
    stop_time.wait_for_step(run, first + 10, [job])
    trainer.send_signal(signal.SIGINT)  # as SLURM's --signal=USR1, Ctrl-C or scancel would
    out = stop_time.output(job)
    assert job.returncode == preemption.EXIT_CODE, out[-3000:]
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"
    second = stop_time.saved_steps(run)[-1]
    assert f"stopped by SIGINT at step {second} of 100" in out and second >= first + 10
    assert "tracked_metric" not in out  # Orbax's note on a save without eval metrics
    job = stop_time.start(run, cmd=cmd, env=env)  # the requeued job
    out = stop_time.output(job)
    assert job.returncode == 0, out[-3000:]
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"  # not requeued again
    assert f"resuming from the checkpoint at step {second} of 100" in out
    assert "img_s=" in out and "img_s=0]" not in out and "img_s=0," not in out  # no speed until measured
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["status"], summary["steps"], summary["sessions"]) == ("finished", 100, 3)
    # Nothing lost and nothing done twice: each step trained once, on the batch the
    # uninterrupted run had, to the same loss; then the same weights and eval metrics.
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["step"], r["split"], r["loss"]) for r in records]
    assert losses == [(r["step"], r["split"], r["loss"]) for r in reference]
    assert [s for s, split, _ in losses if split == "train"] == list(range(1, 101))
    ours, theirs = (traverse_util.flatten_dict(workdirs.load_variables(str(d))[0]) for d in (run, straight))
    assert ours.keys() == theirs.keys()
    for k in ours:
        np.testing.assert_array_equal(ours[k], theirs[k], err_msg="/".join(k))
    assert summary["final"] == json.loads((straight / "summary.json").read_text())["final"]
    print(f"\nstopped at steps {first} (SIGTERM) and {second} (SIGINT); the rerun's final {summary['final']}")


def test_a_signal_to_one_of_two_processes_stops_both_at_one_saved_step_and_both_agree_to_skip_a_broken_one(
    tmp_path,
):
    flags = [f.replace("100", "40") for f in FLAGS]
    procs = processes.start_train_main(tmp_path, *flags)
    stop_time.wait_for_step(tmp_path, 5, procs)
    procs[1].send_signal(signal.SIGUSR1)  # SLURM's --signal=USR1@120, here to one process only
    outs = processes.finish(procs, returncode=preemption.EXIT_CODE)
    line = [x for x in outs[0].splitlines() if x.startswith("stopped by ")]
    assert len(line) == 1, outs[0][-3000:]
    assert line[0].startswith("stopped by SIGUSR1 (to process 1) at step ")
    step = int(line[0].split(" at step ")[1].split()[0])
    assert 5 <= step < 40
    assert not any(x.startswith("stopped by ") for x in outs[1].splitlines())  # process 0 reports
    # One step, saved by both: each process's input position is in it.
    assert stop_time.saved_steps(tmp_path) == [step]
    data = sorted(p.name for p in (tmp_path / "checkpoints" / str(step) / "data").glob("process_*"))
    assert data == ["process_0-of-2.json", "process_1-of-2.json"]
    outs = processes.run_train_main(tmp_path, *flags)
    assert f"resuming from the checkpoint at step {step} of 40" in outs[0]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["status"], summary["steps"], summary["sessions"]) == ("finished", 40, 2)
    assert stop_time.train_steps(tmp_path) == list(range(1, 41))
    # The newest step broken (its largest array file cut short, as a full disk or a killed
    # copy leaves it): both processes fail to read it, agree, and resume from the stop's
    # step; process 0 moves the broken one aside.
    state = tmp_path / "checkpoints" / "40" / "state"
    os.truncate(max(state.rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0), 100)
    outs = processes.run_train_main(tmp_path, *[f.replace("100", "44") for f in FLAGS])
    assert "moved it to" in outs[0] and f"resuming from step {step}" in outs[0]
    for i, out in enumerate(outs):  # the lines around a traceback, not the whole log
        at = max(out.find("Traceback"), out.find("Task exception"))
        assert at < 0, f"process {i}:\n{out[max(0, at - 500) : at + 4000]}"
    assert (tmp_path / "checkpoints.unreadable" / "40" / "state").is_dir()
    summary = json.loads((tmp_path / "summary.json").read_text())
    # Counted from the step resumed: the session that trained past it is discarded with it.
    assert (summary["steps"], summary["sessions"]) == (44, 2)


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
        assert proc.poll() is None and time.time() < deadline, stop_time.output(proc)[-3000:]
        time.sleep(0.01)
    # From now on the process cannot write a file past 256 KB: a quota, or a disk filling up.
    # The metrics and TensorBoard files stay far below it; a checkpoint's arrays do not.
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (256 << 10, resource.RLIM_INFINITY))
    before = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "checkpoints" / "15").rglob("*"))
    out = stop_time.output(proc)
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
    assert stop_time.saved_steps(tmp_path)[-1] == step - 15
    variables, restored = workdirs.load_variables(str(tmp_path), step=15)
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
    before = signal.getsignal(signal.SIGINT)  # Python's default_int_handler; SIG_IGN in an xdist worker
    with pytest.raises(KeyboardInterrupt) as info:
        train_lib.train_and_evaluate(config, str(tmp_path))
    assert isinstance(info.value, preemption.Stopped)
    step = info.value.step
    assert step in (10, 11) and str(info.value).startswith(
        f"stopped by SIGINT at step {step} of 30; saved it"
    )
    assert signal.getsignal(signal.SIGINT) is before  # Ctrl-C works as it did
    assert stop_time.saved_steps(tmp_path) == [step]
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
