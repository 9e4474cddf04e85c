"""What the command-line tools (``python -m train.main``, ``python -m resnet_jax.convert``)
do with an exception: a mistake of the user's becomes one ``error: ...`` line on stderr
and exit status 1; anything else keeps its traceback.

A user error is an exception of the kinds below raised by this project's own code
(``resnet_jax`` or ``train``), whose messages are written to be read by a user: they
name the value and the valid choices. The same type raised inside JAX, Orbax or another
library is unexpected here, and its traceback is what a bug report needs.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

USER_ERRORS = (ValueError, OSError, RuntimeError, FloatingPointError, ImportError)
PACKAGES = ("resnet_jax", "train")
TRACEBACK_ENV = "RESNET_JAX_TRACEBACK"  # =1: always show the traceback


def is_user_error(error: BaseException) -> bool:
    """Whether ``error`` is a deliberate, explained refusal of this project's code."""
    if not isinstance(error, USER_ERRORS) or os.environ.get(TRACEBACK_ENV) == "1":
        return False
    tb, last = error.__traceback__, None
    while tb is not None:
        last, tb = tb, tb.tb_next
    if last is None:
        return False
    # A module run with -m is __main__; its spec keeps the real name.
    spec = last.tb_frame.f_globals.get("__spec__")
    module = spec.name if spec is not None else last.tb_frame.f_globals.get("__name__", "")
    return module.split(".")[0] in PACKAGES


def fail(message: str) -> NoReturn:
    """Prints ``error: message`` on stderr and exits with status 1."""
    sys.stdout.flush()
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


class Parser(argparse.ArgumentParser):
    """argparse, with its errors in the same one-line form."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} ({self.prog} --help lists the options)")
