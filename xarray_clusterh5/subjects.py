"""Many subjects, one file each, as one object.

``open_subjects`` stacks the padded views of several fmristore files along a
leading ``subject`` dimension; ``open_subjects_datatree`` puts each subject's
exact DataTree under a node of its own. Both check first, from the metadata
only (no voxel data is read), that every subject shares the first one's
volume, mask, cluster map and cluster ids, and name the first file that does
not and how. Runs and run lengths may differ: the stacked view is the union
of the run names, padded with NaN as in one file's padded view.

``xr.open_mfdataset(paths, engine="clusterh5", combine="nested",
concat_dim="subject", join="outer")`` works too, but checks nothing and
compares the geometry coordinates of every file value by value.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from xarray.backends import BackendArray
from xarray.core import indexing

from xarray_clusterh5.api import open_dataset, open_datatree
from xarray_clusterh5.errors import ClusterH5Error

__all__ = ["check_same_geometry", "open_subjects", "open_subjects_datatree"]

#: fill values for per-run coordinates of runs a subject does not have
_RUN_FILL = {"n_time": 0, "has_data": False, "has_summary": False}


def _subject_names(
    paths: Sequence[str | os.PathLike[str]], subjects: Sequence[str] | None
) -> list[str]:
    if subjects is None:
        names = [Path(p).name.split(".")[0] for p in paths]
    else:
        names = [str(s) for s in subjects]
        if len(names) != len(paths):
            raise ValueError(f"{len(names)} subject names for {len(paths)} files")
    if len(set(names)) != len(names):
        dup = pd.Index(names)[pd.Index(names).duplicated()][0]
        raise ValueError(f"subject name {dup!r} is used twice; pass subjects=")
    return names


def _geometry(ds: xr.Dataset) -> dict[str, np.ndarray]:
    """What subjects must share, from coordinates built from metadata only."""
    flat = "voxel_cluster" in ds.coords  # root or run view: voxels cluster by cluster
    out = {
        "volume shape": np.asarray(ds.attrs["volume_shape"]),
        "cluster ids": np.asarray(ds["cluster"].values),
        "voxels per cluster": np.asarray(ds["n_voxels"].values),
    }
    for axis in "ijk":
        values = np.asarray(ds[axis].values)
        out[f"voxel {axis}"] = values if flat else values[values >= 0]
    return out


def _difference(mine: dict[str, np.ndarray], first: dict[str, np.ndarray]) -> str:
    """How ``mine`` differs from ``first`` (empty when it does not)."""
    for what in ("volume shape", "cluster ids"):
        a, b = mine[what], first[what]
        if a.shape != b.shape or np.any(a != b):
            return f"{what} {_short(a)} where the first file has {_short(b)}"
    a, b = mine["voxels per cluster"], first["voxels per cluster"]
    bad = np.flatnonzero(a != b)
    if bad.size:
        i = int(bad[0])
        return (
            f"mask or cluster map differ: cluster {first['cluster ids'][i]} has "
            f"{a[i]} voxels where the first file has {b[i]} "
            f"({bad.size} cluster(s) differ in size)"
        )
    moved = sum(
        int(np.count_nonzero(mine[f"voxel {a}"] != first[f"voxel {a}"])) for a in "ijk"
    )
    if moved:
        return (
            "mask or cluster map differ: clusters of the same sizes hold voxels "
            f"at other positions ({moved} voxel coordinates differ)"
        )
    return ""


def _short(values: np.ndarray, n: int = 6) -> str:
    items = ", ".join(str(v) for v in values.ravel()[:n].tolist())
    more = f", ... ({values.size} in all)" if values.size > n else ""
    return f"({items}{more})"


def check_same_geometry(
    datasets: Sequence[xr.Dataset], paths: Sequence[str | os.PathLike[str]]
) -> None:
    """Raise ``ClusterH5Error`` naming the first file whose geometry differs.

    Parameters
    ----------
    datasets : sequence of xarray.Dataset
        Engine-opened views (padded, root or run) of each file; only their
        geometry coordinates are read, never voxel data.
    paths : sequence of path
        The files, in the same order, for the message.
    """
    if not datasets:
        return
    first = _geometry(datasets[0])
    for ds, path in zip(datasets[1:], paths[1:], strict=True):
        how = _difference(_geometry(ds), first)
        if how:
            raise ClusterH5Error(
                path,
                f"does not share the geometry of {os.fspath(paths[0])}: {how}",
            )


def _close_all(datasets: Sequence[xr.Dataset | xr.DataTree]) -> None:
    for ds in datasets:
        ds.close()


def open_subjects(
    paths: Sequence[str | os.PathLike[str]],
    subjects: Sequence[str] | None = None,
    *,
    chunks: Any = None,
    **kwargs: Any,
) -> xr.Dataset:
    """Open one fmristore file per subject as one lazy Dataset.

    Parameters
    ----------
    paths : sequence of path
        One fmristore clustered experiment per subject.
    subjects : sequence of str, optional
        The ``subject`` coordinate; default: each file name up to its first dot.
    chunks : None, dict or "auto"
        None (default): lazy without dask, reading only what is indexed.
        ``{}``: one dask chunk per (subject, run, cluster), as the padded
        view's ``chunks={}``; otherwise as ``Dataset.chunk`` (e.g.
        ``{"cluster": 20}``: see ``benchmarks/README.md``). Only ``data``
        and ``summary`` are chunked: coordinates stay NumPy arrays.
    **kwargs
        Passed to ``xr.open_dataset`` for every file: ``lock`` and the
        engine's other options.

    Returns
    -------
    xarray.Dataset
        The padded view with a leading ``subject`` dimension:
        ``data(subject, run, cluster, voxel, time)``; runs are the union of
        every subject's run names, NaN where a subject lacks a run or time
        point. Per-run coordinates (``n_time``, ``TR`` ...) gain the
        ``subject`` dimension; the geometry is the first subject's.
        ``close()`` closes every file.

    Raises
    ------
    ClusterH5Error
        Naming the first file whose volume, mask, cluster map or cluster ids
        differ from the first file's, and how.
    """
    if not paths:
        raise ValueError("open_subjects needs at least one file")
    names = _subject_names(paths, subjects)
    if kwargs.get("group") not in (None, ""):
        raise ValueError("open_subjects stacks padded views; do not pass group=")
    kwargs.setdefault("cache", False)  # the stacked arrays read through
    datasets: list[xr.Dataset] = []
    try:
        for path in paths:
            datasets.append(open_dataset(path, **kwargs))
        check_same_geometry(datasets, paths)
        stacked = _stack(datasets, names)
        if chunks is not None:
            stacked = _chunk_voxel_data(
                stacked,
                {"subject": 1, "run": 1, "cluster": 1} if chunks == {} else chunks,
            )
    except BaseException:
        _close_all(datasets)
        raise
    stacked.set_close(lambda: _close_all(datasets))
    return stacked


_STACKED = ("data", "summary")  # lazy voxel data: stacked without reading


def _chunk_voxel_data(stacked: xr.Dataset, chunks: Any) -> xr.Dataset:
    """Dask-chunk the voxel data only: the small coordinates stay NumPy.

    ``Dataset.chunk`` would make every non-index coordinate a dask array too;
    they hold no file data, and NumPy coordinates write to Zarr as they are.
    """
    names = [n for n in _STACKED if n in stacked]
    chunked = stacked[names].reset_coords(drop=True).chunk(chunks)
    return stacked.assign({n: chunked.variables[n] for n in names})


def _stack(datasets: list[xr.Dataset], names: list[str]) -> xr.Dataset:
    """Concatenate along ``subject``; per-run variables vary, geometry does not.

    The voxel data are stacked lazily (``SubjectStack``): ``xr.concat`` of
    backend arrays would read them.
    """
    # the coordinates are built in memory from the file's metadata: loading
    # them reads no voxel data, and the stacked view keeps them NumPy
    small = [
        ds.drop_vars([v for v in _STACKED if v in ds], errors="ignore").compute()
        for ds in datasets
    ]
    per_run = sorted(
        {
            str(name)
            for ds in small
            for name, var in ds.variables.items()
            if "run" in var.dims and name != "run"
        }
    )
    fill = {name: _RUN_FILL.get(name, np.nan) for name in per_run}
    stacked = xr.concat(
        small,
        dim=pd.Index(names, name="subject"),
        data_vars=[n for n in per_run if n in small[0].data_vars],
        coords=[n for n in per_run if n in small[0].coords],
        compat="override",
        join="outer",
        fill_value=fill,
        combine_attrs="drop_conflicts",
    )
    runs = [str(r) for r in stacked["run"].values]
    for name in _STACKED:
        if all(name in ds for ds in datasets):
            stacked[name] = _stacked_variable(datasets, name, runs, stacked.sizes)
    stacked = stacked.assign_coords(subject=np.asarray(names, dtype=str))
    stacked.attrs["clusterh5_view"] = "subjects"
    return stacked


def _stacked_variable(
    datasets: list[xr.Dataset], name: str, runs: list[str], sizes: Any
) -> xr.Variable:
    first = datasets[0].variables[name]
    dims = ("subject", *first.dims)
    run_index = np.array(
        [[_position(ds["run"].values, r) for r in runs] for ds in datasets],
        dtype=np.int64,
    )
    shape = tuple(len(datasets) if d == "subject" else int(sizes[d]) for d in dims)
    array = SubjectStack(
        [ds.variables[name]._data for ds in datasets], run_index, shape, first.dtype
    )
    return xr.Variable(dims, indexing.LazilyIndexedArray(array), first.attrs)


def _position(values: np.ndarray, name: str) -> int:
    hits = np.flatnonzero(values.astype(str) == name)
    return int(hits[0]) if hits.size else -1


class SubjectStack(BackendArray):
    """Lazy ``(subject, run, ...)`` over each subject's lazy ``(run, ...)`` array.

    ``run_index[s, r]`` is subject ``s``'s position of stacked run ``r`` (-1:
    absent); trailing axes may be shorter in a subject (fewer time points)
    and are NaN beyond its end. Indexing reads only the subjects, runs and
    windows asked for, through each subject's own lazy array.
    """

    indexing_support = indexing.IndexingSupport.OUTER

    def __init__(
        self,
        parts: list[Any],
        run_index: np.ndarray,
        shape: tuple[int, ...],
        dtype: np.dtype,
    ) -> None:
        self.parts = parts
        self.run_index = run_index
        self.shape = shape
        self.dtype = np.dtype(dtype)

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        return indexing.explicit_indexing_adapter(
            key, self.shape, self.indexing_support, self._raw_indexing_method
        )

    def _raw_indexing_method(self, key: tuple[Any, ...]) -> np.ndarray:
        axes = [_indices(k, n) for k, n in zip(key, self.shape, strict=True)]
        idx = [a for a, _ in axes]
        out = np.full([len(i) for i in idx], np.nan, dtype=self.dtype)
        for a, s in enumerate(idx[0]):
            part = self.parts[int(s)]
            local = self.run_index[int(s), idx[1]]
            sel = [local >= 0] + [
                i < n for i, n in zip(idx[2:], part.shape[1:], strict=True)
            ]
            if not all(m.any() for m in sel):
                continue
            picks = [local[sel[0]]] + [
                i[m] for i, m in zip(idx[2:], sel[1:], strict=True)
            ]
            block = np.asarray(part.oindex[indexing.OuterIndexer(tuple(picks))])
            out[a][np.ix_(*sel)] = block
        return out[tuple(slice(None) if keep else 0 for _, keep in axes)]


def _indices(key: Any, size: int) -> tuple[np.ndarray, bool]:
    """Indices selected along one axis and whether the axis is kept."""
    if isinstance(key, int | np.integer):
        return np.array([int(key) % size], dtype=np.int64), False
    if isinstance(key, slice):
        return np.arange(size, dtype=np.int64)[key], True
    return np.asarray(key, dtype=np.int64).ravel(), True


def open_subjects_datatree(
    paths: Sequence[str | os.PathLike[str]],
    subjects: Sequence[str] | None = None,
    **kwargs: Any,
) -> xr.DataTree:
    """Open one fmristore file per subject as a DataTree, one node per subject.

    Parameters
    ----------
    paths : sequence of path
        One fmristore clustered experiment per subject.
    subjects : sequence of str, optional
        Node names; default: each file name up to its first dot.
    **kwargs
        Passed to ``xr.open_datatree`` for every file.

    Returns
    -------
    xarray.DataTree
        ``/<subject>`` holds that file's geometry and ``/<subject>/<scan>``
        its exact run views (as ``xr.open_datatree`` of the file gives).
        ``close()`` closes every file.

    Raises
    ------
    ClusterH5Error
        As ``open_subjects``.
    """
    if not paths:
        raise ValueError("open_subjects_datatree needs at least one file")
    names = _subject_names(paths, subjects)
    trees: list[xr.DataTree] = []
    try:
        for path in paths:
            trees.append(open_datatree(path, **kwargs))
        check_same_geometry([t.to_dataset(inherit=False) for t in trees], paths)
        tree = xr.DataTree(
            name="subjects", children=dict(zip(names, trees, strict=True))
        )
    except BaseException:
        _close_all(trees)
        raise
    tree.set_close(lambda: _close_all(trees))
    return tree
