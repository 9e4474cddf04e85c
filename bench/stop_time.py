r"""python -m bench.stop_time [--signal=SIGTERM] [--after-step=K] [--repeats=N] [--workdir=DIR] \
    [-- TRAIN.MAIN FLAGS ...]

How long a run takes to stop on a signal: the grace a cluster must give it (SLURM's
``--signal=USR1@SECONDS``, Kubernetes' ``terminationGracePeriodSeconds``, a spot VM's
notice). Each repeat starts ``python -m train.main`` with the flags after ``--`` in a
fresh workdir, waits until ``metrics.jsonl`` logs step K (``log_every_steps=1`` is
added), sends the signal, and times it to the process's exit. That covers the rest of
the step in progress, the save with its wait for completion, the summary and the exit.
It prints each repeat, the step stopped at, the size of the saved step, the time to the
line that reports the save complete, and the exit status, which must be 75.

The tests drive ``train.main`` with the same helpers (``start``, ``wait_for_step``,
``stop``).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
EXIT_CODE = 75  # train.preemption.EXIT_CODE, without importing JAX here


def start(
    workdir, *flags, env: dict[str, str] | None = None, cmd: list[str] | None = None
) -> subprocess.Popen:
    """``python -m train.main --workdir=WORKDIR FLAGS`` (or ``cmd``), its output (stdout
    and stderr) in a temporary file, which nobody has to drain meanwhile (a full pipe would
    stop the process); ``output(proc)`` reads it."""
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115  (closed by output())
    cmd = cmd or [sys.executable, "-m", "train.main", f"--workdir={workdir}", *flags]
    env = env or {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    proc.log = log
    return proc


def output(proc: subprocess.Popen) -> str:
    """``proc``'s output, once it has ended."""
    proc.wait(timeout=900)
    proc.log.seek(0)
    text = proc.log.read()
    proc.log.close()
    return text


def train_steps(workdir) -> list[int]:
    """The steps of ``metrics.jsonl``'s train records (a line still being written is left out)."""
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


def wait_for_step(workdir, step: int, procs: list[subprocess.Popen], timeout: float = 600) -> None:
    """Until ``metrics.jsonl`` logs ``step``; an error if a process ends first."""
    deadline = time.time() + timeout
    while not any(s >= step for s in train_steps(workdir)):
        if not all(p.poll() is None for p in procs):
            raise RuntimeError(f"the run ended before step {step}:\n{output(procs[0])[-3000:]}")
        if time.time() > deadline:
            raise TimeoutError(f"step {step} not reached in {timeout:.0f} s")
        time.sleep(0.02)


def saved_steps(workdir) -> list[int]:
    folder = pathlib.Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def stop(
    proc: subprocess.Popen, workdir, first: int, second: int | None = None, marks: dict | None = None
) -> float:
    """Sends ``first`` to ``proc`` and returns the seconds until it exits. With ``second``,
    that one follows every 20 ms from the moment the save starts (its temporary directory
    appears, or, if the save was quicker than this loop, its step) until the exit. With
    ``marks``, ``marks['saved']`` is the seconds until the output says the step is saved."""
    before = saved_steps(workdir)
    t = time.perf_counter()
    proc.send_signal(first)
    if marks is not None:
        # A file description of its own: the process's shares its offset with proc.log.
        with open(f"/proc/self/fd/{proc.log.fileno()}") as log:
            while proc.poll() is None and "stopped by " not in log.read():
                time.sleep(0.005)
                log.seek(0)
        marks["saved"] = time.perf_counter() - t
    if second is not None:
        folder = pathlib.Path(workdir) / "checkpoints"
        while proc.poll() is None and saved_steps(workdir) == before:
            if any(".orbax-checkpoint-tmp" in p.name for p in folder.iterdir()):
                break
            time.sleep(0.005)
        while proc.poll() is None:
            time.sleep(0.02)
            proc.send_signal(second)
    proc.wait(timeout=900)
    return time.perf_counter() - t


def _size(path: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ours, flags = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(prog="python -m bench.stop_time", description=__doc__.split("\n\n")[1])
    parser.add_argument("--signal", default="SIGTERM", help="the signal's name (default SIGTERM)")
    parser.add_argument("--after-step", type=int, default=5, help="send it once this step is logged")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default="", help="where the runs go (default: a temporary directory)")
    args = parser.parse_args(ours)
    name = args.signal.upper() if args.signal.upper().startswith("SIG") else "SIG" + args.signal.upper()
    if name not in signal.Signals.__members__:
        parser.error(f"--signal={args.signal} is not a signal here; e.g. SIGTERM, SIGINT, SIGUSR1")
    if args.after_step < 1 or args.repeats < 1:
        parser.error(f"--after-step={args.after_step} and --repeats={args.repeats} must be >= 1")
    root = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="stop_time-"))
    command = f"python -m train.main {' '.join(flags)} --config.log_every_steps=1"
    print(f"{command}; {name} after step {args.after_step}")
    times = []
    for i in range(args.repeats):
        workdir = root / f"run{i}"
        shutil.rmtree(workdir, ignore_errors=True)
        proc = start(workdir, *flags, "--config.log_every_steps=1")
        wait_for_step(workdir, args.after_step, [proc])
        marks: dict[str, float] = {}
        seconds = stop(proc, workdir, signal.Signals[name], marks=marks)
        text = output(proc)
        if proc.returncode != EXIT_CODE:
            raise SystemExit(f"repeat {i}: exit status {proc.returncode}, not {EXIT_CODE}:\n{text[-3000:]}")
        step = saved_steps(workdir)[-1]
        size = _size(workdir / "checkpoints" / str(step)) / 2**20
        times.append(seconds)
        print(
            f"repeat {i}: {name} after step {args.after_step}, stopped at step {step}, {size:.1f} MiB "
            f"saved, exit {proc.returncode}; from the signal: {marks['saved']:.2f} s to the line saying "
            f"it is saved, {seconds:.2f} s to the exit"
        )
    median = sorted(times)[len(times) // 2]
    print(f"signal to exit: median {median:.2f} s, max {max(times):.2f} s over {len(times)} repeats")
    if not args.workdir:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
