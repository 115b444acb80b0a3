"""The engine's one open path: one HDF5 open per file and view, open keywords
reaching h5py for both formats, xarray's lock rule, and light imports."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import xarray as xr

from tests._helpers import MODELARRAY, fmristore_path
from xarray_clusterh5 import _engine

MA_FILE = MODELARRAY / "results" / "thickness_with_results.h5"
FM_FILE = fmristore_path("vignette")


@pytest.fixture
def h5_opens(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """Every ``h5py.File`` opened while the test runs: (path, keywords)."""
    opened: list[tuple[str, dict[str, Any]]] = []
    real = h5py.File

    class Counting(real):  # type: ignore[misc, valid-type]
        def __init__(self, name: Any, *args: Any, **kwargs: Any) -> None:
            opened.append((str(name), dict(kwargs)))
            super().__init__(name, *args, **kwargs)

    monkeypatch.setattr(h5py, "File", Counting)
    return opened


@pytest.mark.parametrize("path", [FM_FILE, MA_FILE], ids=["fmristore", "modelarray"])
def test_open_dataset_opens_the_file_once(path: Path, h5_opens: list) -> None:
    with xr.open_dataset(path, engine="clusterh5") as ds:
        ds.load()
    assert [p for p, _ in h5_opens] == [str(path.resolve())]


def test_open_datatree_opens_the_file_once(h5_opens: list) -> None:
    with xr.open_datatree(FM_FILE, engine="clusterh5") as tree:
        tree.load()
    assert [p for p, _ in h5_opens] == [str(FM_FILE.resolve())]


def test_run_view_opens_the_file_once(h5_opens: list) -> None:
    with xr.open_dataset(FM_FILE, engine="clusterh5", group="rest_run") as ds:
        ds.load()
    assert len(h5_opens) == 1


@pytest.mark.parametrize("path", [FM_FILE, MA_FILE], ids=["fmristore", "modelarray"])
def test_open_keywords_reach_h5py(path: Path, h5_opens: list) -> None:
    with xr.open_dataset(
        path, engine="clusterh5", rdcc_nbytes=3 << 20, locking=False
    ) as ds:
        ds.load()
        assert len(h5_opens) == 1
        kwargs = h5_opens[0][1]
        assert kwargs["rdcc_nbytes"] == 3 << 20
        assert kwargs["locking"] is False
        # and h5py really used them
        manager = ds._close.__self__  # the CachingFileManager's close
        with manager.acquire_context() as f:
            assert f.id.get_access_plist().get_cache()[2] == 3 << 20


class _CountingLock:
    def __init__(self) -> None:
        self.entered = 0
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        self.entered += 1
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


@pytest.mark.parametrize("path", [FM_FILE, MA_FILE], ids=["fmristore", "modelarray"])
def test_a_lock_object_is_used_for_every_read(path: Path) -> None:
    lock = _CountingLock()
    with xr.open_dataset(path, engine="clusterh5", lock=lock) as ds:
        opened = lock.entered
        assert opened >= 1  # reading the layout
        ds.load()
        assert lock.entered > opened


def test_lock_rule_is_xarrays() -> None:
    from xarray.backends.locks import HDF5_LOCK

    assert _engine.resolve_lock(None) is HDF5_LOCK
    assert isinstance(_engine.resolve_lock(False), _engine.NoLock)
    lock = threading.Lock()
    assert _engine.resolve_lock(lock) is lock
    with pytest.raises(TypeError, match="lock must be None, False or a lock object"):
        xr.open_dataset(FM_FILE, engine="clusterh5", lock="yes")


@pytest.mark.parametrize("lock", [False, None])
def test_lock_false_and_none_read_the_same(lock: Any) -> None:
    with (
        xr.open_dataset(FM_FILE, engine="clusterh5", lock=lock) as a,
        xr.open_dataset(FM_FILE, engine="clusterh5") as b,
    ):
        np.testing.assert_array_equal(a["data"].values, b["data"].values)


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(out.stdout.split())


def test_entry_point_imports_neither_h5py_nor_dask() -> None:
    mods = _modules_after("import xarray_clusterh5.backend")
    assert "xarray_clusterh5.backend" in mods
    assert not {m for m in mods if m.split(".")[0] in {"h5py", "dask"}}


def test_cli_parser_imports_no_xarray_numpy_or_h5py() -> None:
    mods = _modules_after(
        "from xarray_clusterh5.cli import build_parser; build_parser()"
    )
    heavy = {"xarray", "numpy", "h5py", "pandas", "dask", "nibabel"}
    assert not {m for m in mods if m.split(".")[0] in heavy}


def test_accessor_registers_when_xarray_comes_after_the_package() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, xarray_clusterh5\n"
            "assert 'xarray' not in sys.modules\n"
            "import xarray as xr\n"
            "path = xarray_clusterh5.example_file()\n"
            "ds = xr.open_dataset(path, engine='clusterh5')\n"
            "print(ds.clusterh5.view, ds.clusterh5.n_scans); ds.close()",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["padded", "2"]


def test_cli_conversion_to_modelarray_needs_no_xarray(tmp_path: Path) -> None:
    cohort = MODELARRAY / "cohort"
    out = tmp_path / "o.h5"
    mods = _modules_after(
        "import os\n"
        f"os.chdir({str(cohort)!r})\n"
        "from xarray_clusterh5.cli import main\n"
        "assert main(['to-modelarray', '--cohort-file', 'cohort_thickness.csv',"
        f" '--output', {str(out)!r}]) == 0"
    )
    assert out.exists()
    assert "h5py" in mods  # it did the work ...
    assert "xarray" not in mods  # ... without xarray
