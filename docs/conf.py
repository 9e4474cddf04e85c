"""Sphinx configuration: MyST guides, an autodoc API reference, the trainer's config
reference generated from train/configs, and the Colab notebooks with the outputs CI's
run gave them.

Build (from the repository root): ``python -m sphinx -W --keep-going -b html docs docs/_build/html``.
Offline and strict: no intersphinx, every warning is an error (``-W``), a reference to a
Python name that does not exist warns (``nitpicky``), and so does a public name without
a docstring (``_ext/resnet_jax_docs.py``).
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "docs", "_ext")]

project = "resnet_jax"
author = "the resnet_jax developers"
copyright = "2026, the resnet_jax developers"
release = "0.1.0"

extensions = [
    "myst_nb",  # MyST Markdown pages and .ipynb notebooks (it includes myst_parser)
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # the docstrings' Google style: Args:, Returns:, Raises:
    "sphinx.ext.viewcode",
    "resnet_jax_docs",
]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "_executed", "Thumbs.db", ".DS_Store"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3  # [text](page.md#a-heading) links, checked at build time
smartquotes = False  # flags such as --lr-warmup-decay stay two hyphens, not a dash

# The notebooks are not run here: CI's test_notebooks runs them and leaves the executed
# copies in docs/_executed, which _ext/resnet_jax_docs.py renders (the stored, clean ones
# where a local build has none).
nb_execution_mode = "off"

nitpicky = True
# Types from other libraries: no intersphinx inventories (the build is offline), so their
# names are plain text rather than links.
nitpick_ignore_regex = [
    (r"py:.*", r"(jax|jnp|flax|nn|optax|orbax|np|numpy|ml_collections|PIL|torch|grain|chex)(\..*)?"),
    (r"py:.*", r"(Any|Callable|Sequence|Mapping|Iterable|Iterator|Literal|Optional|Union|Path)"),
    (r"py:.*", r"(dataclasses|os|collections\.abc|typing|pathlib)\..*"),
    (r"py:class", r"(Array|ArrayLike|PRNGKey|Dtype|PyTree|ModuleDef|Shape)"),
]

autodoc_default_options = {"members": True, "member-order": "bysource", "undoc-members": True}
autodoc_typehints = "description"
autodoc_class_signature = "separated"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # a class's Attributes: section as a field list, not a second entry per field

html_theme = "sphinx_book_theme"
html_title = "resnet_jax"
html_theme_options = {"show_toc_level": 2, "use_download_button": False}
