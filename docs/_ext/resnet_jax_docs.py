"""Sphinx extension for resnet_jax's docs.

- Writes the config reference (``config_reference``) into ``docs/config/`` and the
  notebooks into ``docs/notebooks/`` before the build reads its sources: the executed
  copies CI's notebook tests leave in ``docs/_executed/`` when there are any, else the
  stored ones from ``colab/`` (without outputs).
- Warns (an error under ``-W``) for a public module, class, function, method or
  exception whose docstring is empty.
"""

from __future__ import annotations

import filecmp
import os
import shutil

import config_reference
from sphinx.util import logging

logger = logging.getLogger(__name__)
DOCS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(DOCS)
EXECUTED = os.path.join(DOCS, "_executed")


def _generate(app) -> None:
    config_reference.write(os.path.join(DOCS, "config"))
    out = os.path.join(DOCS, "notebooks")
    os.makedirs(out, exist_ok=True)
    colab = os.path.join(ROOT, "colab")
    for name in sorted(f for f in os.listdir(colab) if f.endswith(".ipynb")):
        executed = os.path.join(EXECUTED, name)
        source = executed if os.path.exists(executed) else os.path.join(colab, name)
        target = os.path.join(out, name)
        if not os.path.exists(target) or not filecmp.cmp(source, target, shallow=False):
            shutil.copyfile(source, target)
        if source != executed:
            logger.info(f"{name}: no executed copy in docs/_executed, rendered without outputs")


def _require_docstring(app, what, name, obj, options, lines) -> None:
    if what not in ("module", "class", "function", "method", "exception"):
        return  # dataclass fields and constants are described by their class or module
    if name.rpartition(".")[2].startswith("_"):
        return
    if not any(line.strip() for line in lines):
        logger.warning(f"public {what} {name} has no docstring", type="resnet_jax", subtype="docstring")


def setup(app):
    app.connect("builder-inited", _generate)
    app.connect("autodoc-process-docstring", _require_docstring)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
