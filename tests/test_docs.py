"""The documentation: the Sphinx site builds with warnings as errors, its API reference
covers resnet_jax.__all__, its config reference every field of default.py, and the
commands and code in the guides and the README match the code they describe.
"""

import ast
import inspect
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO, "docs")
GUIDES = sorted(
    os.path.join(DOCS, "guides", f) for f in os.listdir(os.path.join(DOCS, "guides")) if f.endswith(".md")
)
PAGES = [os.path.join(REPO, "README.md"), *GUIDES]

sphinx = pytest.importorskip("sphinx", reason="the docs extra: pip install -e '.[docs]'")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site, built as .ci/run builds it (-W: any warning fails), into a temporary folder."""
    out = tmp_path_factory.mktemp("site")
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
    command += ["-d", str(out / "doctrees"), DOCS, str(out / "html")]
    build = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-5000:]
    return out / "html"


def _inventory(site):
    from sphinx.util.inventory import InventoryFile

    with open(site / "objects.inv", "rb") as f:
        inventory = InventoryFile.load(f, "", os.path.join)
    return {name: (role, item.uri) for role, entries in inventory.items() for name, item in entries.items()}


def test_every_public_name_has_a_rendered_api_entry(site):
    import resnet_jax
    from resnet_jax import convert

    entries = _inventory(site)
    public = [f"resnet_jax.{n}" for n in resnet_jax.__all__]
    public += [f"resnet_jax.convert.{n}" for n in convert.__all__]
    public += [f"resnet_jax.weights.{n}" for n in ("Weights", "list_weights", "get_weights", "REGISTRY")]
    public += [f"resnet_jax.Preprocessing.{n}" for n in ("describe", "to_dict", "from_dict")]
    public += ["resnet_jax.Classifier.load"]
    missing = [n for n in public if n not in entries]
    assert not missing, f"no API entry for {missing}: add them to docs/api/*.md"
    for name in public:  # each entry's page was written, with the entry's anchor on it
        page, _, anchor = entries[name][1].partition("#")
        assert f'id="{anchor}"' in (site / page).read_text(), name


def test_the_config_reference_lists_every_field_and_preset(site):
    sys.path.insert(0, os.path.join(DOCS, "_ext"))
    try:
        import config_reference
    finally:
        sys.path.remove(os.path.join(DOCS, "_ext"))
    from train.configs import default

    html = (site / "config" / "index.html").read_text()
    rows = config_reference.assignments(os.path.join(REPO, "train", "configs", "default.py"))
    assert sorted(field for _, field, _ in rows) == sorted(default.get_config())
    for field in default.get_config():
        assert f'<span class="pre">{field}</span></code>' in html, field
    commented = [field for _, field, comment in rows if comment]
    assert len(commented) >= 0.8 * len(rows)  # the comments came along, not only the names
    for preset in config_reference.presets():
        page = (site / "config" / f"{preset}.html").read_text()
        assert f"train/configs/{preset}.py" in page


def _blocks(path, language):
    """The ```language blocks of a Markdown file, as (first line number, text)."""
    lines = Path(path).read_text().splitlines()
    blocks, start = [], None
    for i, line in enumerate(lines):
        if start is None and line.strip() == f"```{language}":
            start = i + 1
        elif start is not None and line.strip() == "```":
            blocks.append((start + 1, textwrap.dedent("\n".join(lines[start:i]))))  # in a list item too
            start = None
    return blocks


def _split(where, line):
    """The ``python -m`` commands of one shell line: the shell's own word splitting, cut at
    ``&&``, ``|`` and ``;``, without redirections; a synopsis' ``[--flag]`` as ``--flag``."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    found, segment, redirect = [], [], False
    for token in [*lexer, ";"]:
        if token and set(token) <= set("&|;<>()"):
            if token[0] in "<>":
                redirect = True
                if segment[-1:] in (["1"], ["2"]):
                    segment.pop()  # 2>&1
                continue
            if "python" in segment and segment[segment.index("python") + 1 :][:1] == ["-m"]:
                at = segment.index("python")
                args = [a.strip("[]") for a in segment[at + 3 :]]
                found.append((where, segment[at + 2], [a for a in args if a not in ("", "...")]))
            segment, redirect = [], False
        elif redirect:
            redirect = False  # the redirection's target
        else:
            segment.append(token)
    return found


def _commands():
    """Every ``python -m MODULE ...`` of the README and the guides, in bash blocks and in
    inline code, as (where, module, arguments)."""
    found = []
    for path in PAGES:
        name = os.path.relpath(path, REPO)
        for line_no, block in _blocks(path, "bash"):
            for line in block.replace("\\\n", " ").splitlines():
                found += _split(f"{name}:{line_no}", line.split(" # ")[0])
        prose = Path(path).read_text().split("```")[::2]  # outside the fenced blocks
        for span in re.findall(r"`(python -m [^`]+)`", "".join(prose)):
            found += _split(f"{name} (inline)", span)
    return found


COMMANDS = _commands()
ABSL = {"train.main", "train.compile"}


def test_the_guides_show_the_commands():
    modules = {module for _, module, _ in COMMANDS}
    assert {"train.main", "train.compile", "resnet_jax.predict", "resnet_jax.evaluate"} <= modules
    assert {"resnet_jax.convert", "resnet_jax.export", "resnet_jax.summary"} <= modules


class _Parsed(BaseException):  # not caught by a CLI's own "except Exception"
    pass


# A synopsis' placeholders: the flag's name is checked, not its value.
SYNOPSIS = re.compile(r"^--config=(CONFIG|train/configs/NAME\.py)$|^--config\.FIELD=VALUE$|^--target=TARGET$")


def test_each_command_names_a_module_that_exists():
    import importlib.util

    for where, module, args in COMMANDS:
        assert importlib.util.find_spec(module) is not None, f"{where}: python -m {module}: no such module"
        if module == "pytest":
            paths = [a.split("::")[0] for a in args if a.startswith("tests/")]
            assert all(os.path.exists(os.path.join(REPO, p)) for p in paths), (where, args)


@pytest.mark.parametrize(
    "where,module,args",
    [c for c in COMMANDS if c[1] not in ABSL | {"pytest", "sphinx"} and c[2]],
    ids=lambda v: v if isinstance(v, str) and ":" in v else None,
)
def test_each_argparse_command_in_the_guides_parses(where, module, args, monkeypatch):
    # The command's own parser: an unknown or misspelt flag, a missing required argument or
    # a bad value exits with its usage error; a good command line stops right after parsing.
    import argparse
    import importlib

    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, argv=None, namespace=None):
        raise _Parsed(argv if self is None else parse(self, argv, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [module, *args])
    entry = importlib.import_module(f"{module}.__main__" if module == "resnet_jax.convert" else module)
    if module == "resnet_jax.summary":  # --table checks its names, then computes: stop there
        monkeypatch.setattr(entry, "table_rows", lambda names: parse_then_stop(None, names))
    with pytest.raises(_Parsed):
        try:
            entry.main(args)
        except SystemExit as e:
            pytest.fail(f"{where}: python -m {module} {shlex.join(args)}: exit {e.code}")


def test_each_trainer_command_in_the_guides_parses(tmp_path):
    # train.main and train.compile use absl flags and ml_collections' --config.FIELD
    # overrides: the config file must exist, every field be one of its fields and every
    # value parse, and the other flags be the tool's. One process checks them all (the
    # overrides are read while --config is defined, so each command gets fresh FlagValues).
    commands = [(w, m, a) for w, m, a in COMMANDS if m in ABSL]
    assert len(commands) >= 10
    compile_source = Path(REPO, "train", "compile.py").read_text()
    compile_flags = [*re.findall(r'flags\.DEFINE_\w+\(\s*"(\w+)"', compile_source), "config"]
    script = textwrap.dedent(
        """
        import json, sys
        from absl import flags
        from ml_collections import config_flags
        import re
        import train.main as main_lib
        synopsis = re.compile(sys.argv[3])
        main_lib._define_flags()
        tools = {"train.main": set(flags.FLAGS), "train.compile": set(json.loads(sys.argv[2]))}
        problems = []
        for where, module, args in json.loads(open(sys.argv[1]).read()):
            names = [a[2:].split("=", 1)[0] for a in args if a.startswith("--") and a != "--"]
            for name in names:
                base = name[2:] if name.startswith("no") and name[2:] in tools[module] else name
                if not base.startswith("config") and base not in tools[module]:
                    problems.append(f"{where}: {module}: no flag --{name}")
            config_args = [a for a in args if a.startswith("--config") and not synopsis.search(a)]
            fv = flags.FlagValues()
            sys.argv = [module, *config_args]
            try:
                config_flags.DEFINE_config_file(
                    "config", "train/configs/default.py", "", flag_values=fv, lock_config=True
                )
                fv(sys.argv)
                config = fv.config
            except Exception as e:
                problems.append(f"{where}: {module} {' '.join(config_args)}: {type(e).__name__}: {e}")
        print(json.dumps(problems))
        """
    )
    (tmp_path / "commands.json").write_text(json.dumps(commands))
    run = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "commands.json"), json.dumps(compile_flags),
         SYNOPSIS.pattern],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == []


def _python_blocks():
    return [(f"{os.path.relpath(p, REPO)}:{n}", code) for p in PAGES for n, code in _blocks(p, "python")]


# Examples that need nothing but the library: run verbatim. The others load weights,
# workdirs or photographs the suite does not have; they are parsed and every call into
# resnet_jax is bound to the real signature below.
RUNS = ["docs/guides/use_from_code.md"]


@pytest.mark.parametrize("where,code", _python_blocks(), ids=lambda v: v if ":" in str(v)[:60] else None)
def test_each_python_example_in_the_guides_matches_the_api(where, code):
    import resnet_jax

    tree = ast.parse(code)  # a syntax error fails here
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        parts, f = [], node.func
        while isinstance(f, ast.Attribute):
            parts.insert(0, f.attr)
            f = f.value
        if not (isinstance(f, ast.Name) and f.id == "resnet_jax"):
            continue
        target = resnet_jax
        for part in parts:
            assert hasattr(target, part), f"{where}: resnet_jax.{'.'.join(parts)} does not exist"
            target = getattr(target, part)
        if callable(target):
            signature = inspect.signature(target)
            args = [None] * len(node.args)
            kwargs = {k.arg: None for k in node.keywords if k.arg}
            try:
                signature.bind(*args, **kwargs)
            except TypeError as e:
                pytest.fail(f"{where}: resnet_jax.{'.'.join(parts)}{signature}: {e}")


def test_the_self_contained_example_runs():
    # The first example of "Use from code": a ResNet-18, its init, eval and train passes.
    where, code = next((w, c) for w, c in _python_blocks() if w.startswith(RUNS[0]))
    namespace = {}
    exec(compile(code, where, "exec"), namespace)  # the docs' own example
    assert namespace["logits"].shape == (8, 10)
    assert set(namespace["variables"]) == {"params", "batch_stats"}


def test_the_readme_is_a_front_page_that_links_into_the_docs():
    text = Path(REPO, "README.md").read_text()
    assert len(text.splitlines()) <= 250
    links = re.findall(r"\]\((docs/[^)#]+)", text)
    guides = {f"docs/guides/{os.path.basename(g)}" for g in GUIDES} - {"docs/guides/benchmarks.md"}
    assert guides <= set(links)
    for link in links:
        generated = link.startswith("docs/config/")  # written at build time
        assert generated or os.path.exists(os.path.join(REPO, link)), link
