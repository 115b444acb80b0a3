"""One open path for every file the ``clusterh5`` engine reads.

``open_dataset``, ``open_groups_as_dict`` and ``open_datatree`` all go
through :func:`open_source`: the lock is resolved once (xarray's rule), one
picklable ``CachingFileManager`` is made with every open keyword for h5py,
the file is opened once and its format sniffed once, then the format's store
builds the view. Every returned Dataset closes that one manager.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import h5py
import xarray as xr
from xarray.backends import CachingFileManager
from xarray.backends.locks import HDF5_LOCK

from xarray_clusterh5._hdf5 import remote
from xarray_clusterh5._hdf5.files import has_hdf5_signature, named_errors, open_h5
from xarray_clusterh5.errors import ClusterH5Error
from xarray_clusterh5.fmristore import read as fm_read
from xarray_clusterh5.fmristore import store as fm_store
from xarray_clusterh5.modelarray import store as ma_store

_EXTENSIONS = (".h5", ".hdf5", ".he5")
FMRISTORE = "fmristore"
MODELARRAY = "modelarray"


class NoLock:
    """``lock=False``: a do-nothing context manager that pickles."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def resolve_lock(lock: Any) -> Any:
    """xarray's rule: ``None`` (or True) → its HDF5 lock, ``False`` → none, else
    a lock object (anything usable in ``with``), checked here."""
    if lock is None or lock is True:
        return HDF5_LOCK
    if lock is False:
        return NoLock()
    if not (hasattr(lock, "__enter__") and hasattr(lock, "__exit__")):
        raise TypeError(f"lock must be None, False or a lock object, got {lock!r}")
    return lock


@dataclass(frozen=True)
class Source:
    """An opened file: its absolute path, its one file manager and its lock."""

    path: str
    manager: CachingFileManager
    lock: Any


def _source_key(filename_or_obj: Any) -> tuple[Any, str]:
    """What the file manager opens (absolute path, URL or file object) and
    how messages name it."""
    if remote.is_url(filename_or_obj) or remote.is_file_like(filename_or_obj):
        return filename_or_obj, remote.display_name(filename_or_obj)
    if isinstance(filename_or_obj, str) and filename_or_obj.startswith("file://"):
        filename_or_obj = filename_or_obj[len("file://") :]
    if isinstance(filename_or_obj, str | os.PathLike):
        path = os.path.abspath(os.fspath(filename_or_obj))
        return path, path
    raise TypeError(
        "the clusterh5 engine opens local paths, fsspec URLs and binary file "
        f"objects, not {type(filename_or_obj).__name__}"
    )


def open_source(
    filename_or_obj: Any,
    *,
    lock: Any = None,
    locking: bool | None = None,
    rdcc_nbytes: int | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Source:
    """Resolve the lock and make the file manager; h5py gets every open keyword.

    Local paths, fsspec URLs (with ``storage_options``) and open file objects
    all go through the same opener, ``open_h5``.
    """
    lock = resolve_lock(lock)
    target, name = _source_key(filename_or_obj)
    kwargs: dict[str, Any] = {
        k: v
        for k, v in (("locking", locking), ("rdcc_nbytes", rdcc_nbytes))
        if v is not None
    }
    if storage_options:
        if not remote.is_url(target):
            raise TypeError("storage_options apply to fsspec URLs only")
        kwargs["storage_options"] = remote.Options(storage_options)
    manager = CachingFileManager(open_h5, target, mode="r", kwargs=kwargs)
    return Source(name, manager, lock)


def sniff(path: str, f: h5py.File) -> str:
    """``"fmristore"`` or ``"modelarray"``; anything else is refused by name."""
    if fm_read.is_clustered_experiment(f):
        return FMRISTORE
    if ma_store.is_modelarray_file(f):
        return MODELARRAY
    raise ClusterH5Error(
        path,
        "has neither fmristore's clustered layout (/scans and /cluster_map) "
        "nor ModelArray's (/scalars or /results)",
    )


@contextlib.contextmanager
def _closed_on_error(source: Source) -> Iterator[None]:
    try:
        yield
    except BaseException:
        source.manager.close()
        raise


def _read(source: Source) -> tuple[str, Any]:
    """Sniff and read the file's model (fmristore) or Dataset (ModelArray)."""
    with source.lock, source.manager.acquire_context(needs_lock=False) as f:
        with named_errors(source.path, "recognising the file's format"):
            kind = sniff(source.path, f)
        if kind == FMRISTORE:
            return kind, fm_read.read_experiment(f, source.path)
        return kind, ma_store.read_dataset(source.path, f, source.manager, source.lock)


def _drop(ds: xr.Dataset, drop_variables: str | Iterable[str] | None) -> xr.Dataset:
    if drop_variables is None:
        return ds
    names = (
        [drop_variables] if isinstance(drop_variables, str) else list(drop_variables)
    )
    return ds.drop_vars([n for n in names if n in ds.variables])


def open_dataset(
    filename_or_obj: Any,
    *,
    drop_variables: str | Iterable[str] | None = None,
    group: str | None = None,
    lock: Any = None,
    locking: bool | None = None,
    rdcc_nbytes: int | None = None,
    storage_options: dict[str, Any] | None = None,
) -> xr.Dataset:
    """The Dataset view of either format (see ``ClusterH5BackendEntrypoint``)."""
    source = open_source(
        filename_or_obj,
        lock=lock,
        locking=locking,
        rdcc_nbytes=rdcc_nbytes,
        storage_options=storage_options,
    )
    with _closed_on_error(source):
        kind, model = _read(source)
        if kind == MODELARRAY:
            if group not in (None, "", "/"):
                raise ClusterH5Error(
                    source.path, f"ModelArray files have no group {group!r} to open"
                )
            ds = model
        else:
            ds = fm_store.dataset(model, source.manager, source.lock, group)
        ds = _drop(ds, drop_variables)
    ds.set_close(source.manager.close)
    return ds


def open_groups_as_dict(
    filename_or_obj: Any,
    *,
    drop_variables: str | Iterable[str] | None = None,
    lock: Any = None,
    locking: bool | None = None,
    rdcc_nbytes: int | None = None,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, xr.Dataset]:
    """``{"/": geometry, "/<scan>": run view without geometry, ...}``."""
    source = open_source(
        filename_or_obj,
        lock=lock,
        locking=locking,
        rdcc_nbytes=rdcc_nbytes,
        storage_options=storage_options,
    )
    with _closed_on_error(source):
        kind, model = _read(source)
        if kind == MODELARRAY:
            raise ClusterH5Error(
                source.path, "is a ModelArray file; open it with xr.open_dataset"
            )
        groups = fm_store.groups(model, source.manager, source.lock)
        groups = {k: _drop(ds, drop_variables) for k, ds in groups.items()}
    for ds in groups.values():
        ds.set_close(source.manager.close)
    return groups


def open_datatree(
    filename_or_obj: Any,
    *,
    drop_variables: str | Iterable[str] | None = None,
    lock: Any = None,
    locking: bool | None = None,
    rdcc_nbytes: int | None = None,
    storage_options: dict[str, Any] | None = None,
) -> xr.DataTree:
    """The exact DataTree; every node closes the one shared file manager."""
    groups = open_groups_as_dict(
        filename_or_obj,
        drop_variables=drop_variables,
        lock=lock,
        locking=locking,
        rdcc_nbytes=rdcc_nbytes,
        storage_options=storage_options,
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
            sniff(path, f)
    except Exception:
        return False
    return True
