"""The Colab notebooks: stored clean, and each runs end to end in smoke mode.

``RESNET_JAX_SMOKE=1`` makes a notebook run on CPU with tiny step counts and local data
(a slice of the CIFAR-10 JPEGs in ../shared/datasets when present, generated images,
scikit-learn's digits, a random stand-in for downloaded weights).
"""

import os
import re

import nbformat
import pytest

COLAB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "colab")
NOTEBOOKS = sorted(f for f in os.listdir(COLAB) if f.endswith(".ipynb"))
# What each notebook must print or show when it has run: (text in its outputs, images).
EXPECTED = {
    "01_train_cifar10.ipynb": (r"step \d+: test top-1 0\.\d+ over \d+ images", 2),
    "02_finetune_pretrained.ipynb": (
        r"restored 100 arrays, re-initialised 2(.|\n)*fine-tuned: (.|\n)*flower\.jpg: class\d \d+\.\d%"
        r"(.|\n)*flower\.jpg +1 +0\.\d+ +class\d \(\d\)",
        2,
    ),
    "03_library_in_your_code.ipynb": (
        r"every array equal: True; test accuracy(.|\n)*max \|diff\| 0\.0e\+00(.|\n)*batch 7: max \|diff\|",
        1,
    ),
}


def test_the_three_notebooks_are_there():
    assert sorted(EXPECTED) == NOTEBOOKS


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stored_clean(name):
    nb = nbformat.read(os.path.join(COLAB, name), as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "outputs must be stripped"
    badge = nb.cells[0].source
    assert nb.cells[0].cell_type == "markdown" and "colab-badge.svg" in badge
    assert re.search(rf"colab\.research\.google\.com/github/[\w.-]+/[\w.-]+/blob/main/colab/{name}\)", badge)
    parameters = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(parameters) == 1 and "RESNET_JAX_SMOKE" in parameters[0].source
    source = "\n".join(c.source for c in code)
    assert "import resnet_jax" in source
    assert "nn.Conv" not in source and "class ResNet" not in source  # models come from the library


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_smoke_mode(name, monkeypatch, tmp_path):
    from nbclient import NotebookClient

    monkeypatch.setenv("RESNET_JAX_SMOKE", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(os.path.join(COLAB, name), as_version=4)
    client = NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": COLAB}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    images = sum("image/png" in o.get("data", {}) for o in outputs)
    pattern, n_images = EXPECTED[name]
    nbformat.write(nb, str(tmp_path / name))  # for a look when it fails
    assert re.search(pattern, text), text[-3000:]
    assert images >= n_images
    # The executed copy: the docs render it with these outputs (docs/_ext/resnet_jax_docs.py),
    # written whole, so that a docs build reading it meanwhile never sees half a file.
    executed = os.path.join(os.path.dirname(COLAB), "docs", "_executed")
    os.makedirs(executed, exist_ok=True)
    partial = os.path.join(executed, f".{name}.{os.getpid()}")
    nbformat.write(nb, partial)
    os.replace(partial, os.path.join(executed, name))
