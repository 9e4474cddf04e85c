"""Packaging contract: light imports, the summary command, py.typed."""

import pathlib
import subprocess
import sys

import pytest

import resnet_jax
from resnet_jax.summary import main, summarize


def test_import_pulls_in_neither_tensorflow_nor_torch():
    code = (
        "import sys, resnet_jax, resnet_jax.convert, resnet_jax.summary; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'torch', 'keras')); "
        "print(bad); sys.exit(bool(bad))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ships_py_typed():
    assert (pathlib.Path(resnet_jax.__file__).parent / "py.typed").is_file()


def test_public_api():
    for name in (
        "create_model",
        "list_models",
        "ResNet",
        "BasicBlock",
        "Bottleneck",
        "PreActBasicBlock",
        "PreActBottleneck",
        "BatchNorm",
        "FrozenBatchNorm",
    ):
        assert name in resnet_jax.__all__ and hasattr(resnet_jax, name)


def test_summary_prints_table_params_and_flops():
    text = summarize("resnet20", num_classes=10)
    assert "stage3_block3" in text and "float32[1,8,8,64]" in text
    assert "params:       269,722" in text
    gflops = float(text.split("forward:")[1].split()[0])
    # ResNet-20 is ~41 M multiply-adds at 32x32 (He et al. 2016): ~0.08 GFLOPs.
    assert 0.07 < gflops < 0.095


def test_summary_cli_rejects_unknown_model(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["resnet5O"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown model 'resnet5O'" in err and "'resnet50'" in err


def test_summary_table_has_exact_counts_and_flops(capsys):
    assert main(["--table", "resnet20", "resnet18"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert rows[0].startswith("| model | input | params | GFLOPs")
    assert rows[2].startswith("| `resnet20` | 32x32x3 | 269,722 | 0.0")
    # torchvision lists ResNet-18 as 1.81 G multiply-adds at 224; XLA on CPU counts 1.69.
    name, size, params, gflops, macs = (c.strip() for c in rows[3].strip("|").split("|"))
    assert (name, size, params) == ("`resnet18`", "224x224x3", "11,689,512")
    assert 1.6 < float(macs) < 1.9 and float(gflops) == pytest.approx(2 * float(macs), abs=0.02)
    with pytest.raises(SystemExit):
        main(["--table", "resnet5O"])
    assert "unknown model(s) resnet5O" in capsys.readouterr().err


def _internal_imports(package: pathlib.Path) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}``, at any depth of its code (function-
    level imports included): the graph that must have no cycle."""
    import ast

    def module_of(path: pathlib.Path) -> str:
        parts = path.relative_to(package.parent).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    modules = {module_of(p): p for p in package.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from resnet_jax import convert` imports the module convert when there is one.
                targets = [f"{node.module}.{a.name}" for a in node.names]
                targets = [t if t in modules else node.module for t in targets]
            else:
                continue
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def test_the_library_imports_one_way_and_keeps_its_files_short():
    package = pathlib.Path(resnet_jax.__file__).parent
    graph = _internal_imports(package)
    # The package itself re-exports the public names: it may import anything, and nothing
    # below may import it back.
    graph.pop("resnet_jax")
    assert not [m for m, edges in graph.items() if "resnet_jax" in edges]
    done, path = set(), []

    def visit(module):
        if module in path:
            cycle = [*path[path.index(module) :], module]
            raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
        if module in done:
            return
        path.append(module)
        for target in sorted(graph[module]):
            visit(target)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
    # The layers, bottom to top.
    assert not graph["resnet_jax.registry"] - {
        "resnet_jax.blocks",
        "resnet_jax.resnet",
        "resnet_jax.std_conv",
    }
    # The catalogue describes each entry's preprocessing and class names, two leaves.
    assert graph["resnet_jax.weights"] <= {"resnet_jax.preprocessing", "resnet_jax.classes"}
    assert not graph["resnet_jax.preprocessing"] and not graph["resnet_jax.classes"]
    assert "resnet_jax.pretrained" not in set().union(
        *(
            graph[m]
            for m in graph
            if m.startswith("resnet_jax.convert.") and m != "resnet_jax.convert.__main__"
        )
    )
    long = {
        str(p.relative_to(package)): n
        for p in package.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 300
    }
    assert not long, long


def test_functions_are_kept_short_by_the_linter():
    # The file-length caps this replaces pushed code into more files; what a newcomer
    # cannot read is a long function. ruff (run by CI) checks every function in train/ and
    # resnet_jax/ against McCabe complexity 15 (C901) and 50 statements (PLR0915).
    import tomllib

    root = pathlib.Path(__file__).resolve().parents[1]
    lint = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["ruff"]["lint"]
    assert {"C901", "PLR0915"} <= set(lint["select"])
    assert lint["mccabe"]["max-complexity"] <= 15 and lint["pylint"]["max-statements"] <= 50
    exempt = {path for path, rules in lint["per-file-ignores"].items() if {"C901", "PLR0915"} & set(rules)}
    assert not {p for p in exempt if p.startswith(("train/", "resnet_jax/"))}


def test_ci_constraints_pin_every_requirement_within_the_users_ranges():
    # .ci/constraints.txt fixes the versions CI installs; pyproject.toml's ranges are what
    # users get. Each pin must lie inside its range, or CI would test a set no user can have.
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    root = pathlib.Path(__file__).resolve().parents[1]
    pins = {}
    for line in (root / ".ci" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"].values()
    requirements = [*project["dependencies"], *(r for extra in extras for r in extra)]
    for text in requirements:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not pinned in .ci/constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (text, pins[name])


def test_the_trainer_has_no_re_export_layers():
    # Each name is imported from the module that defines it: train_lib (the loop) imports
    # optim, steps and mesh as modules and holds none of their functions or classes, and
    # input_pipeline's package module holds nothing but its docstring.
    import inspect

    from train import input_pipeline, train_lib

    borrowed = [
        name
        for name, value in vars(train_lib).items()
        if (inspect.isfunction(value) or inspect.isclass(value))
        and (getattr(value, "__module__", "") or "").startswith("train.")
        and value.__module__ != "train.train_lib"
    ]
    assert borrowed == []
    names = [n for n in vars(input_pipeline) if not n.startswith("__")]
    assert all(inspect.ismodule(getattr(input_pipeline, n)) for n in names), names  # submodules only
