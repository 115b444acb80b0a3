"""Sphinx configuration of the xarray_clusterh5 documentation.

Build with ``sphinx-build -W --keep-going -b html docs docs/_build/html``.
The notebooks in ``../notebooks`` are linked as ``docs/notebooks`` (not
tracked) and executed by MyST-NB during the build: this is the one place CI
runs them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import xarray_clusterh5

DOCS = Path(__file__).parent
ROOT = DOCS.parent


def _link_notebooks() -> None:
    # Sphinx reads only files under docs/; the notebooks live at the top level
    # (for `pytest --nbmake notebooks` and for users of a clone). A symlink, not
    # a copy: the kernel's working directory is then the real notebooks/ folder,
    # so the notebooks' relative paths (../tests/data/...) hold.
    link = DOCS / "notebooks"
    if link.is_symlink():
        return
    if link.exists():
        shutil.rmtree(link)
    link.symlink_to(Path("..") / "notebooks", target_is_directory=True)


_link_notebooks()


def _write_cli_help() -> None:
    # the CLI page shows exactly what `clusterh5 ... --help` prints, regenerated
    # at every build from the parser (user-guide/cli.md includes this file)
    from xarray_clusterh5.cli import build_parser

    os.environ["COLUMNS"] = "88"  # argparse wraps to the terminal width
    parser = build_parser()
    sub = next(a for a in parser._actions if a.choices and a.dest == "command")
    parts = ["```text", parser.format_help().rstrip(), "```"]
    for name, subparser in sub.choices.items():
        parts += ["", f"## `clusterh5 {name}`", "", "```text"]
        parts += [subparser.format_help().rstrip(), "```"]
    (DOCS / "user-guide" / "_cli_help.md").write_text("\n".join(parts) + "\n")


_write_cli_help()

project = "xarray_clusterh5"
author = "the xarray_clusterh5 developers"
copyright = "2026, the xarray_clusterh5 developers"  # noqa: A001
release = xarray_clusterh5.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "myst_nb",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = [
    "_build",
    "notebooks/_out",
    "**.ipynb_checkpoints",
    "jupyter_execute",
]
templates_path = ["_templates"]

# -- API reference ---------------------------------------------------------
autosummary_generate = True
autosummary_imported_members = False
autodoc_typehints = "description"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False
# Type hints name classes of h5py, nibabel, dask and our private helpers that
# have no page here; cross-reference warnings for them would say nothing useful.
nitpicky = False
intersphinx_mapping: dict[str, tuple[str, None]] = {}

# -- notebooks -------------------------------------------------------------
nb_execution_mode = os.environ.get("CLUSTERH5_NB_EXECUTION", "force")
nb_execution_timeout = 600
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3
# README sections included into the guide start at "##"/"###" headings
suppress_warnings = [
    "myst.header",
    # docstrings write shapes as "(n_elements, shape)"; Sphinx links such names
    # to same-named attributes of several classes and warns about the ambiguity
    "ref.python",
]

# -- HTML --------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"xarray_clusterh5 {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
}
html_show_sourcelink = False
