"""Opening files for the engine: one file manager and lock per file, the views.

Every returned Dataset and DataTree node closes the shared manager; nothing
keeps an h5py object, so results pickle into dask.distributed workers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import h5py
import xarray as xr
from xarray.backends import CachingFileManager
from xarray.backends.locks import HDF5_LOCK
from xarray.core import indexing

from xarray_clusterh5._hdf5.files import ClusterH5Error, has_hdf5_signature, open_h5
from xarray_clusterh5.fmristore import read as reader
from xarray_clusterh5.fmristore import views as _views
from xarray_clusterh5.fmristore.arrays import (
    PaddedVoxelArray,
    RunVoxelArray,
    SummaryArray,
)

_EXTENSIONS = (".h5", ".hdf5", ".he5")


class _NoLock:
    """``lock=False``: a do-nothing context manager that pickles."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def resolve_lock(lock: Any) -> Any:
    """``None`` → xarray's shared HDF5 lock; ``False`` → no lock; else the lock."""
    if lock is None or lock is True:
        return HDF5_LOCK
    if lock is False:
        return _NoLock()
    if not (hasattr(lock, "__enter__") and hasattr(lock, "__exit__")):
        raise TypeError(f"lock must be None, False or a lock object, got {lock!r}")
    return lock


def _path(filename_or_obj: Any) -> str:
    if isinstance(filename_or_obj, str | os.PathLike):
        return os.fspath(os.path.abspath(os.fspath(filename_or_obj)))
    raise TypeError(
        "the clusterh5 engine opens local files given by path "
        f"(str or os.PathLike), not {type(filename_or_obj).__name__}"
    )


def make_manager(
    filename_or_obj: Any, *, locking: bool | None, rdcc_nbytes: int | None
) -> tuple[str, CachingFileManager]:
    """A picklable file manager whose opener is ``_h5.open_h5`` (read-only)."""
    path = _path(filename_or_obj)
    kwargs = {
        k: v
        for k, v in (("locking", locking), ("rdcc_nbytes", rdcc_nbytes))
        if v is not None
    }
    # the first acquire (reading the layout) raises errors that name the file
    return path, CachingFileManager(open_h5, path, mode="r", kwargs=kwargs)


def guess_can_open(filename_or_obj: Any) -> bool:
    """True for local ``.h5``-like files with the fmristore or ModelArray layout."""
    if not isinstance(filename_or_obj, str | os.PathLike):
        return False
    path = os.fspath(filename_or_obj)
    if not path.lower().endswith(_EXTENSIONS) or not os.path.isfile(path):
        return False
    if not has_hdf5_signature(path):
        return False
    try:
        with h5py.File(path, "r") as f:
            return reader.is_clustered_experiment(f) or _is_modelarray(f)
    except Exception:
        return False


def _is_modelarray(f: h5py.File) -> bool:
    names = set(f.keys())
    return "cluster_map" not in names and bool(names & {"scalars", "results"})


def _drop(ds: xr.Dataset, drop_variables: str | Iterable[str] | None) -> xr.Dataset:
    if drop_variables is None:
        return ds
    names = (
        [drop_variables] if isinstance(drop_variables, str) else list(drop_variables)
    )
    return ds.drop_vars([n for n in names if n in ds.variables])


def _lazy(array: Any) -> indexing.LazilyIndexedArray:
    return indexing.LazilyIndexedArray(array)


def _read_model(
    path: str, manager: CachingFileManager, lock: Any
) -> tuple[reader.Experiment | None, bool]:
    with lock, manager.acquire_context(needs_lock=False) as f:
        if not reader.is_clustered_experiment(f) and _is_modelarray(f):
            return None, True
        return reader.read_experiment(f, path), False


def _run_arrays(
    exp: reader.Experiment,
    scan: reader.ScanInfo,
    path: str,
    manager: CachingFileManager,
    lock: Any,
) -> tuple[Any, Any]:
    data = summary = None
    if scan.has_data:
        data = _lazy(
            RunVoxelArray(
                manager,
                lock,
                path,
                scan.name,
                exp.cluster_ids,
                exp.n_voxels,
                scan.n_time,
            )
        )
    if scan.has_summary:
        summary = _lazy(
            SummaryArray(
                manager,
                lock,
                path,
                (scan.name,),
                [True],
                [scan.n_time],
                len(exp.cluster_ids),
                squeeze_run=True,
            )
        )
    return data, summary


def _scan_for_group(exp: reader.Experiment, group: str) -> reader.ScanInfo:
    name = group.strip("/")
    if name.startswith("scans/"):
        name = name[len("scans/") :]
    try:
        return exp.scan(name)
    except KeyError:
        raise ClusterH5Error(
            exp.path, f"no group {group!r}; scans are {list(exp.scan_names)}"
        ) from None


def open_dataset(
    filename_or_obj: Any,
    *,
    drop_variables: str | Iterable[str] | None = None,
    group: str | None = None,
    lock: Any = None,
    locking: bool | None = None,
    rdcc_nbytes: int | None = None,
) -> xr.Dataset:
    """The padded view, one scan (``group=SCAN``) or the geometry (``group="/"``)."""
    lock = resolve_lock(lock)
    path, manager = make_manager(
        filename_or_obj, locking=locking, rdcc_nbytes=rdcc_nbytes
    )
    try:
        exp, is_modelarray = _read_model(path, manager, lock)
        if is_modelarray:
            manager.close()
            return _open_modelarray(path, drop_variables, group, lock, locking)
        assert exp is not None
        if group in (None, ""):
            ds = _padded(exp, path, manager, lock)
        elif group.strip("/") == "":
            ds = _views.build_root(exp)
        else:
            scan = _scan_for_group(exp, group)
            ds = _views.build_run(
                exp, scan, *_run_arrays(exp, scan, path, manager, lock)
            )
        ds = _drop(ds, drop_variables)
    except BaseException:
        manager.close()
        raise
    ds.set_close(manager.close)
    return ds


def _padded(
    exp: reader.Experiment, path: str, manager: CachingFileManager, lock: Any
) -> xr.Dataset:
    scans = exp.scans
    names = tuple(s.name for s in scans)
    n_time = [s.n_time for s in scans]
    data = summary = None
    if any(s.has_data for s in scans):
        data = _lazy(
            PaddedVoxelArray(
                manager,
                lock,
                path,
                names,
                [s.has_data for s in scans],
                n_time,
                exp.cluster_ids,
                exp.n_voxels,
            )
        )
    if any(s.has_summary for s in scans):
        summary = _lazy(
            SummaryArray(
                manager,
                lock,
                path,
                names,
                [s.has_summary for s in scans],
                n_time,
                len(exp.cluster_ids),
            )
        )
    return _views.build_padded(exp, data, summary)


def _open_modelarray(
    path: str,
    drop_variables: str | Iterable[str] | None,
    group: str | None,
    lock: Any,
    locking: bool | None,
) -> xr.Dataset:
    from xarray_clusterh5.modelarray import store as _modelarray_backend

    if group not in (None, "", "/"):
        raise ClusterH5Error(path, f"ModelArray files have no group {group!r} to open")
    return _modelarray_backend.open_modelarray_dataset(
        path, drop_variables=drop_variables, lock=lock, locking=locking
    )


def open_groups_as_dict(
    filename_or_obj: Any,
    *,
    drop_variables: str | Iterable[str] | None = None,
    lock: Any = None,
    locking: bool | None = None,
    rdcc_nbytes: int | None = None,
) -> dict[str, xr.Dataset]:
    """``{"/": geometry, "/<scan>": run view without geometry, ...}``."""
    lock = resolve_lock(lock)
    path, manager = make_manager(
        filename_or_obj, locking=locking, rdcc_nbytes=rdcc_nbytes
    )
    try:
        exp, is_modelarray = _read_model(path, manager, lock)
        if is_modelarray or exp is None:
            raise ClusterH5Error(
                path, "is a ModelArray file; open it with xr.open_dataset"
            )
        groups = {"/": _drop(_views.build_root(exp), drop_variables)}
        for scan in exp.scans:
            data, summary = _run_arrays(exp, scan, path, manager, lock)
            node = _views.build_run(exp, scan, data, summary, with_geometry=False)
            groups[f"/{scan.name}"] = _drop(node, drop_variables)
    except BaseException:
        manager.close()
        raise
    for ds in groups.values():
        ds.set_close(manager.close)
    return groups


def open_datatree(
    filename_or_obj: Any,
    *,
    drop_variables: str | Iterable[str] | None = None,
    lock: Any = None,
    locking: bool | None = None,
    rdcc_nbytes: int | None = None,
) -> xr.DataTree:
    """The exact DataTree; every node closes the one shared file manager."""
    groups = open_groups_as_dict(
        filename_or_obj,
        drop_variables=drop_variables,
        lock=lock,
        locking=locking,
        rdcc_nbytes=rdcc_nbytes,
    )
    try:
        tree = xr.DataTree.from_dict(groups)
    except Exception:
        for ds in groups.values():
            ds.close()
        raise
    for path, ds in groups.items():
        tree[path].set_close(ds._close)
    return tree
