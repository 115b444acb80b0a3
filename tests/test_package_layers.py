"""The package's layers, checked from its source: every module imports only
from its own layer or the ones below, and the layers below the xarray engine
import neither xarray nor dask (the README's development section draws them)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "xarray_clusterh5"

FORMAT, HDF5, FILE_MODEL, ENGINE, USER = range(5)
LAYER_NAMES = ["format", "safe HDF5", "file model", "xarray engine", "user layer"]

# module (dotted, relative to the package) or subpackage prefix -> layer;
# the longest matching key wins, anything unlisted is in the user layer
LAYERS = {
    "": FORMAT,  # the package itself: __init__ stays light
    "errors": FORMAT,
    "_accessor_hook": FORMAT,
    "_hdf5.names": FORMAT,
    "fmristore.layout": FORMAT,
    "modelarray.layout": FORMAT,
    "stats": FORMAT,  # numerics on arrays: no files, no xarray
    "_hdf5": HDF5,
    "fmristore.read": FILE_MODEL,
    "fmristore.write": FILE_MODEL,
    "modelarray.h5": FILE_MODEL,
    "modelarray.results_h5": FILE_MODEL,
    "modelarray.export": FILE_MODEL,
    "modelarray.voxels": FILE_MODEL,
    "modelarray.fixels": FILE_MODEL,
    "modelarray.sources": FILE_MODEL,
    "modelarray.convert": FILE_MODEL,
    "cifti": FILE_MODEL,
    "mif": FILE_MODEL,
    "nifti": FILE_MODEL,
    "fmristore.arrays": ENGINE,
    "fmristore.views": ENGINE,
    "fmristore.index": ENGINE,
    "fmristore.store": ENGINE,
    "modelarray.store": ENGINE,
    "_engine": ENGINE,
    "backend": ENGINE,
}


def layer_of(module: str) -> int:
    if module == "" or module in SUBPACKAGES:
        return FORMAT  # package __init__ files hold only a docstring
    keys = [k for k in LAYERS if k and (module == k or module.startswith(k + "."))]
    return LAYERS[max(keys, key=len)] if keys else USER


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        out[".".join(parts)] = path
    return out


def _imports(path: Path, module: str) -> set[str]:
    """Every module imported anywhere in the file (function bodies included)."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                parts = (
                    ["xarray_clusterh5", *package.split(".")]
                    if package
                    else ["xarray_clusterh5"]
                )
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            # "from xarray_clusterh5.fmristore import read" imports a module too
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def _ours(name: str, modules: dict[str, Path]) -> str | None:
    if name == "xarray_clusterh5":
        return ""
    if not name.startswith("xarray_clusterh5."):
        return None
    rel = name.removeprefix("xarray_clusterh5.")
    return rel if rel in modules else None


MODULES = _modules()
SUBPACKAGES = {m for m, p in MODULES.items() if m and p.name == "__init__.py"}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_downward(module: str) -> None:
    mine = layer_of(module)
    for name in _imports(MODULES[module], module):
        target = _ours(name, MODULES)
        if target is None or target == module:
            continue
        assert layer_of(target) <= mine, (
            f"{module} ({LAYER_NAMES[mine]}) imports {target} "
            f"({LAYER_NAMES[layer_of(target)]}), a layer above it"
        )


@pytest.mark.parametrize(
    "module", sorted(m for m in MODULES if layer_of(m) < ENGINE and m)
)
def test_layers_below_the_engine_need_no_xarray(module: str) -> None:
    heavy = {n.split(".")[0] for n in _imports(MODULES[module], module)} & {
        "xarray",
        "dask",
    }
    assert not heavy, f"{module} ({LAYER_NAMES[layer_of(module)]}) imports {heavy}"


def test_the_layer_table_names_real_modules() -> None:
    for key in LAYERS:
        if key:
            assert any(m == key or m.startswith(key + ".") for m in MODULES) or key in {
                "mif",
                "nifti",
            }, key


def test_no_test_module_imports_another() -> None:
    tests = Path(__file__).parent
    for path in tests.glob("test_*.py"):
        for name in _imports(path, "tests"):
            assert not name.split(".")[-1].startswith("test_") or name == "tests", (
                f"{path.name} imports {name}; shared helpers go in tests/_helpers.py"
            )
