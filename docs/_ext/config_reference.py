"""The trainer's config reference, read from train/configs: every field of default.py
with its default and its comments, and each preset's fields with the comments and the
module docstring that give their sources. Written as MyST pages at build time, so the
reference cannot drift from the code; tests/test_docs.py checks it covers every field.
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import tokenize

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(ROOT, "train", "configs")
HEADING = re.compile(r"[A-Z][\w -]*\.")


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def presets() -> list[str]:
    """The preset modules of train/configs (every one but default)."""
    skip = ("__init__.py", "default.py")
    return sorted(f[:-3] for f in os.listdir(CONFIGS) if f.endswith(".py") and f not in skip)


def _comments(path: str) -> dict[int, str]:
    """line number -> the comment on it (without '#')."""
    with open(path, "rb") as f:
        return {
            t.start[0]: t.string.lstrip("#").strip()
            for t in tokenize.tokenize(f.readline)
            if t.type == tokenize.COMMENT and "fmt:" not in t.string and "noqa" not in t.string
        }


def assignments(path: str) -> list[tuple[str, str, str]]:
    """(section, field, comment) for each ``config.FIELD = ...`` in the file, in order.

    The comment is the block of whole-line comments just above the assignment (down to
    a blank line or code) followed by the assignment's own trailing comment; the section
    is the enclosing function's docstring.
    """
    source = _read(path)
    lines = source.splitlines()
    comments = _comments(path)
    found = {}  # line -> entry; a nested function's assignment is also its outer one's: kept once
    for func in ast.walk(ast.parse(source)):
        if not isinstance(func, ast.FunctionDef):
            continue
        section = (ast.get_docstring(func) or "").strip()
        for node in ast.walk(func):
            if not isinstance(node, ast.Assign):
                continue
            target = node.targets[0]
            if not (isinstance(target, ast.Attribute) and getattr(target.value, "id", "") == "config"):
                continue
            above, line = [], node.lineno - 1
            while line >= 1 and lines[line - 1].strip().startswith("#"):
                if not HEADING.fullmatch(comments.get(line, "")):  # "# Optimisation." heads a group
                    above.insert(0, comments.get(line, ""))
                line -= 1
            own = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
            text = " ".join(c for c in [*above, *own] if c)
            found[node.lineno] = (section, target.attr, text)
    return [found[line] for line in sorted(found)]


def _value(value) -> str:
    return f"`{tuple(value) if isinstance(value, list) else value!r}`"


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("*", "\\*").replace("<", "&lt;")


def default_page() -> str:
    default = importlib.import_module("train.configs.default").get_config()
    rows, section = [], None
    out = [
        "# Config reference",
        "",
        "Every field of the trainer's config, `train/configs/default.py`, with its default and",
        "the comments beside it in that file (this page is generated from it at build time).",
        "Set any of them on the command line: `--config.FIELD=VALUE`. The presets below",
        "start from these and change a few.",
        "",
        "```{toctree}",
        ":maxdepth: 1",
        ":caption: Presets",
        "",
        *[f"{name}" for name in presets()],
        "```",
        "",
    ]
    for sec, field, comment in assignments(os.path.join(CONFIGS, "default.py")):
        if sec != section:
            section = sec
            out += [*rows, "", f"## {sec.rstrip('.')}", ""]
            out += ["| field | default | what it does |", "|---|---|---|"]
            rows = []
        rows.append(f"| `{field}` | {_escape(_value(default[field]))} | {_escape(comment)} |")
    return "\n".join([*out, *rows, ""])


def preset_page(name: str) -> str:
    module = importlib.import_module(f"train.configs.{name}")
    config = module.get_config()
    default = importlib.import_module("train.configs.default").get_config()
    doc = (module.__doc__ or "").strip()
    command, _, about = doc.partition("\n")
    comments = {}  # field -> (the preset that sets it, its comment): this one, then those it imports
    for source in _chain(name):
        for _, field, comment in assignments(os.path.join(CONFIGS, f"{source}.py")):
            comments.setdefault(field, (source, comment))
    out = [f"# `{name}`", "", "```bash", command.strip(), "```", "", about.strip(), ""]
    out += [
        f"Fields that differ from the [defaults](index.md) (from `train/configs/{name}.py`):",
        "",
        "| field | value | default | source / note |",
        "|---|---|---|---|",
    ]
    for field in default:
        if config[field] != default[field]:
            source, note = comments.get(field, (name, ""))
            note = note if source == name else f"{note} (set in [`{source}`]({source}.md))".lstrip()
            values = f"{_escape(_value(config[field]))} | {_escape(_value(default[field]))}"
            out.append(f"| `{field}` | {values} | {_escape(note)} |")
    return "\n".join(out) + "\n"


def _chain(name: str) -> list[str]:
    """name, then the presets it imports (from train.configs), depth first."""
    tree = ast.parse(_read(os.path.join(CONFIGS, f"{name}.py")))
    imported = [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "train.configs"
        for alias in node.names
    ]
    parents = [n for parent in imported if parent != "default" for n in _chain(parent)]
    return [name, *parents]


def write(out_dir: str) -> list[str]:
    """Writes index.md and one page per preset into out_dir; returns the files."""
    os.makedirs(out_dir, exist_ok=True)
    pages = {"index": default_page(), **{name: preset_page(name) for name in presets()}}
    paths = []
    for name, text in pages.items():
        path = os.path.join(out_dir, f"{name}.md")
        old = _read(path) if os.path.exists(path) else None
        if old != text:  # unchanged pages keep their mtime, so Sphinx need not reread them
            with open(path, "w") as f:
                f.write(text)
        paths.append(path)
    return paths
