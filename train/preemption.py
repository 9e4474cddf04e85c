"""Stopping a run on a signal: the step in progress ends, every process saves the same
step, and the run exits with ``EXIT_CODE`` so that a job script can requeue it.

SIGTERM, SIGINT and SIGUSR1 stop a run, and so does any signal named in the config's
``stop_signals``. How the processes agree on the step:

- **One process** (no ``jax.distributed``): a Python handler records the signal, and the
  loop stops after the step in progress.
- **Several processes**: JAX's distributed runtime already listens for SIGTERM (its
  preemption notifier, installed by ``jax.distributed.initialize``). A notice on any
  process reaches the others through the coordination service, and
  ``multihost_utils.reached_preemption_sync_point(step)``, asked at every step, turns True
  at the same step everywhere: one past the furthest any process had reached. The other
  signals are handed to that notifier (their handler sends SIGTERM to its own process),
  so a SIGUSR1 to one process stops them all at one step too.

A second signal while the step is saved is recorded and ignored: it cannot cut the save
short, and SIGKILL, which nothing can catch, leaves the last complete checkpoint readable
(Orbax writes each step into a temporary directory and renames it when complete).
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

# sysexits.h's EX_TEMPFAIL, "a temporary failure; the user is invited to retry": the step
# reached is saved, and the same command resumes it. 0 is a finished run, 1 an error.
EXIT_CODE = 75
DEFAULT = ("SIGTERM", "SIGINT", "SIGUSR1")
_UNCATCHABLE = ("SIGKILL", "SIGSTOP")


def catchable() -> list[str]:
    """The signal names a run can be stopped by on this system."""
    names = {s.name for s in signal.Signals if s.name.startswith("SIG") and not s.name.startswith("SIG_")}
    return sorted(names - set(_UNCATCHABLE))


def parse(text: str) -> tuple[signal.Signals, ...]:
    """``DEFAULT`` and the comma-separated names in ``text`` ('SIGUSR2,HUP')."""
    names = list(DEFAULT)
    for raw in (t.strip() for t in str(text).split(",")):
        if not raw:
            continue
        name = raw.upper() if raw.upper().startswith("SIG") else "SIG" + raw.upper()
        if name not in catchable():
            why = "cannot be caught" if name in _UNCATCHABLE else "is not a signal here"
            raise ValueError(
                f"config.stop_signals names {raw!r}, which {why}; give comma-separated names "
                f"from: {', '.join(catchable())}"
            )
        if name not in names:
            names.append(name)
    return tuple(signal.Signals[n] for n in names)


class Stopped(KeyboardInterrupt):
    """Raised by ``train_and_evaluate`` once a stop signal's step is saved; running the
    same call (or command) again resumes from it. A KeyboardInterrupt, so that a notebook
    cell stops as an interrupted cell does, and ``except Exception`` does not swallow it."""

    def __init__(self, signal_name: str, step: int, total: int, directory: str):
        self.signal_name, self.step, self.total, self.directory = signal_name, step, total, directory
        super().__init__(
            f"stopped by {signal_name} at step {step} of {total}; saved it in {directory}; call "
            "train_and_evaluate again with the same config and workdir (or run the same command) "
            "to resume"
        )

    def line(self) -> str:
        """The command line tool's one-line report."""
        return (
            f"stopped by {self.signal_name} at step {self.step} of {self.total}; saved it in "
            f"{self.directory}; run the same command to resume (exit status {EXIT_CODE})"
        )


def _jax_notifier() -> bool:
    """Whether JAX's distributed runtime runs here with its preemption service, whose
    SIGTERM handler is then installed."""
    return jax.distributed.is_initialized() and bool(jax.config.jax_enable_preemption_service)


class StopSignals:
    """While entered (in the main thread), the stop signals are caught; ``reached(step)``,
    called after every step on every process, says whether to save that step and stop.
    On leaving, the previous handlers come back, except after a stop when
    ``keep_after_stop`` is set: the command line tool sets it, and a further signal
    between the save and the process's exit is then ignored too.

    Outside the main thread (where Python cannot install handlers) only JAX's SIGTERM
    notifier works, in a multi-process run; any other signal has its usual effect.
    """

    keep_after_stop = False

    def __init__(self, extra: str = ""):
        self.signals = parse(extra)
        self.received: list[int] = []  # in arrival order; only the first one counts
        self.name: str | None = None  # set when reached() turns True
        self._previous: dict[signal.Signals, Any] = {}
        self._jax = False

    def __enter__(self) -> StopSignals:
        self._jax = _jax_notifier()  # its SIGTERM works from any thread
        if threading.current_thread() is not threading.main_thread():
            return self
        if jax.process_count() > 1 and not self._jax:
            print(
                "warning: jax_enable_preemption_service is off, so the processes cannot agree on a "
                "step to save at: a stop signal ends this run without saving",
                flush=True,
            )
            return self
        for sig in self.signals:
            if self._jax and sig == signal.SIGTERM:
                continue  # JAX's notifier has it
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        # SIG_IGN rather than this handler: Python puts SIG_DFL back for a Python handler as
        # the interpreter shuts down, but leaves SIG_IGN.
        ignore = self.keep_after_stop and bool(self.received or self.name)
        for sig, handler in self._previous.items():
            signal.signal(
                sig, signal.SIG_IGN if ignore else handler if handler is not None else signal.SIG_DFL
            )
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        self.received.append(signum)
        if self._jax and len(self.received) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # to JAX's notifier, which tells every process

    def reached(self, step: int) -> bool:
        """Whether every process stops after ``step``; the same answer in all of them."""
        if not self._jax:
            if self.received and self.name is None:
                self.name = signal.Signals(self.received[0]).name
            return bool(self.received)
        if not multihost_utils.reached_preemption_sync_point(step):
            return False
        # Every process is here, at this step: name the signal, and which process had it.
        first = self.received[0] if self.received else 0
        got = np.asarray(multihost_utils.process_allgather(np.asarray(first, np.int32))).reshape(-1)
        senders = [(i, int(s)) for i, s in enumerate(got) if s]
        if senders:
            i, s = senders[0]
            self.name = (
                f"{signal.Signals(s).name} (to process {i})"
                if jax.process_count() > 1
                else signal.Signals(s).name
            )
        else:
            self.name = "SIGTERM"  # the one signal JAX's notifier receives itself
        return True
