"""ModelArray HDF5 files as lazy xarray Datasets.

``xr.open_dataset(path, engine="clusterh5")`` on a ModelArray file (``/scalars``
or ``/results``, no ``/cluster_map``) gives:

* one variable per scalar, ``<scalar>(subject, element)``, from
  ``scalars/<scalar>/values``; its source names (``column_names``, the cohort's
  ``source_file`` strings) are the coordinate ``source_file`` when there is one
  scalar, ``source_file_<scalar>`` otherwise (the variable's
  ``modelarray_sources`` attribute names it). Scalars with different subject
  counts get their own dimension ``subject_<scalar>``;
* one variable per analysis, ``<analysis>(stat, element)``, from
  ``results/<analysis>/results_matrix``, with the statistic names as the ``stat``
  index, read from whichever of the three writers' places holds them (R
  ``writeResults``: variable-length dataset; R's streaming writer: fixed-length
  dataset; legacy: ``colnames`` attribute). Analyses with different statistic
  lists get their own dimension ``stat_<analysis>``. An analysis named like a
  scalar becomes ``results_<analysis>`` (attribute ``modelarray_name`` keeps the
  name). A transposed (n_elements, n_stats) matrix is accepted, as ModelArray does;
* along ``element``: the greyordinate index ``element`` (``vertex_id``) and
  ``structure`` (the structure name), from ``/greyordinates``; for parcellated
  files ``parcel`` (pscalar) or ``parcel_from``/``parcel_to`` (pconn, flattened
  row-major as ModelArrayIO stores it), from ``/parcels``.

The same Dataset writes back with ``cohort.to_modelarray`` and exports with
``cohort.to_cifti`` (given a template, since ModelArray files store no
brain-model geometry). Variables carry ``modelarray_group`` = ``"scalars"`` or
``"results"``. Arrays read lazily through a ``CachingFileManager`` and hold no
h5py object, so they pickle to dask process workers; ``encoding`` has the HDF5
chunks as ``preferred_chunks``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import h5py
import numpy as np
import xarray as xr
from xarray.backends import BackendArray, CachingFileManager
from xarray.backends.locks import HDF5_LOCK
from xarray.core import indexing

from xarray_clusterh5._hdf5.files import ClusterH5Error, get_link, named_errors, open_h5
from xarray_clusterh5.fmristore import layout as _layout
from xarray_clusterh5.modelarray import h5 as modelarray_io

GROUP_ATTR = "modelarray_group"
SOURCES_ATTR = "modelarray_sources"
NAME_ATTR = "modelarray_name"
ELEMENT_DIM = "element"


def is_modelarray_file(f: h5py.File) -> bool:
    """True when the file has ModelArray groups and is not an fmristore file."""
    names = set(f.keys())
    return "cluster_map" not in names and bool(names & {"scalars", "results"})


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


class ModelArrayMatrix(BackendArray):
    """A 2-D HDF5 dataset, optionally seen transposed, read lazily."""

    def __init__(
        self,
        manager: CachingFileManager,
        lock: Any,
        path: str,
        dataset: str,
        shape: tuple[int, int],
        dtype: np.dtype,
        transposed: bool = False,
    ) -> None:
        self.manager = manager
        self.lock = lock
        self.path = path
        self.dataset = dataset
        self.transposed = transposed
        self.shape = shape
        self.dtype = dtype

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        return indexing.explicit_indexing_adapter(
            key, self.shape, indexing.IndexingSupport.OUTER_1VECTOR, self._raw
        )

    def _raw(self, key: tuple[Any, ...]) -> np.ndarray:
        if self.transposed:
            key = key[::-1]
        with self.lock, self.manager.acquire_context(needs_lock=False) as f:
            dset = get_link(self.path, f, self.dataset)
            if not isinstance(dset, h5py.Dataset):
                raise ClusterH5Error(self.path, f"{self.dataset} disappeared")
            with named_errors(self.path, "reading values", self.dataset):
                out = np.asarray(dset[key])
        if self.transposed:
            out = out.T
        return out


def _lazy(arr: ModelArrayMatrix) -> indexing.LazilyIndexedArray:
    return indexing.LazilyIndexedArray(arr)


def _encoding(dset: h5py.Dataset, dims: tuple[str, str], transposed: bool) -> dict:
    enc: dict[str, Any] = {"dtype": dset.dtype}
    if dset.chunks is not None:
        chunks = tuple(dset.chunks)[::-1] if transposed else tuple(dset.chunks)
        enc["preferred_chunks"] = dict(zip(dims, chunks, strict=True))
        enc["chunksizes"] = chunks
    if dset.compression:
        enc["compression"] = dset.compression
        enc["compression_opts"] = dset.compression_opts
    enc["shuffle"] = bool(dset.shuffle)
    return enc


def open_modelarray_dataset(
    filename: str | os.PathLike[str],
    *,
    drop_variables: str | Iterable[str] | None = None,
    lock: Any = None,
    locking: bool | None = None,
) -> xr.Dataset:
    """Open a ModelArray HDF5 file (scalars and results) as a lazy Dataset.

    Parameters
    ----------
    filename : local path.
    drop_variables : variables to leave out.
    lock : None for xarray's HDF5 lock, False for none, or a lock object.
    locking : HDF5 file locking, passed to h5py.

    Returns
    -------
    xarray.Dataset
        See the module docstring for the model.

    Raises
    ------
    ClusterH5Error
        Not a ModelArray file, or inconsistent shapes, names or links to other files.
    """
    path = os.path.abspath(os.fspath(filename))
    if lock is None or lock is True:
        lock = HDF5_LOCK
    elif lock is False:
        lock = _NoLock()
    kwargs = {"locking": locking} if locking is not None else {}
    open_h5(path, "r", **kwargs).close()
    manager = CachingFileManager(open_h5, path, mode="r", kwargs=kwargs)
    try:
        with (
            lock,
            manager.acquire_context(needs_lock=False) as f,
            named_errors(path, "reading the file's layout"),
        ):
            ds = _build(path, f, manager, lock)
        if drop_variables is not None:
            names = (
                [drop_variables] if isinstance(drop_variables, str) else drop_variables
            )
            ds = ds.drop_vars([n for n in names if n in ds.variables])
    except BaseException:
        manager.close()
        raise
    ds.set_close(manager.close)
    return ds


def _build(
    path: str, f: h5py.File, manager: CachingFileManager, lock: Any
) -> xr.Dataset:
    if not is_modelarray_file(f):
        raise ClusterH5Error(path, "is not a ModelArray file (no /scalars or /results)")
    coords: dict[str, Any] = {}
    data_vars: dict[str, Any] = {}
    n_el: int | None = None

    def check_elements(n: int, what: str) -> None:
        nonlocal n_el
        if n_el is None:
            n_el = n
        elif n != n_el:
            raise ClusterH5Error(path, f"{what} has {n} elements, others have {n_el}")

    # scalars
    scalars = modelarray_io.list_scalars(path, f)
    infos = []
    for s in scalars:
        dset = get_link(path, f, _layout.ma_values_path(s))
        assert isinstance(dset, h5py.Dataset)
        if dset.ndim != 2:
            raise ClusterH5Error(
                path, f"{dset.name} must be 2-D, has shape {dset.shape}"
            )
        with named_errors(path, "reading the source names", f"/scalars/{s}"):
            sources = modelarray_io.scalar_column_names(path, f, s)
        if dset.shape[0] == len(sources):
            transposed = False
        elif dset.shape[1] == len(sources):
            transposed = True
        else:
            raise ClusterH5Error(
                path,
                f"{dset.name} has shape {dset.shape} but {len(sources)} column names",
            )
        shape = dset.shape[::-1] if transposed else dset.shape
        check_elements(shape[1], dset.name)
        infos.append((s, dset, sources, transposed, shape))
    shared = len({len(i[2]) for i in infos}) <= 1
    for s, dset, sources, transposed, shape in infos:
        dim = "subject" if shared else f"subject_{s}"
        src = "source_file" if len(infos) == 1 else f"source_file_{s}"
        coords[src] = (dim, np.asarray(sources, dtype=object))
        arr = ModelArrayMatrix(
            manager, lock, path, dset.name, shape, dset.dtype, transposed
        )
        var = xr.Variable(
            (dim, ELEMENT_DIM),
            _lazy(arr),
            attrs={GROUP_ATTR: "scalars", SOURCES_ATTR: src},
        )
        var.encoding = _encoding(dset, (dim, ELEMENT_DIM), transposed)
        data_vars[s] = var

    # results
    analyses = modelarray_io.list_analyses(path, f)
    rinfos = []
    for a in analyses:
        dset = get_link(path, f, _layout.ma_results_matrix_path(a))
        assert isinstance(dset, h5py.Dataset)
        with named_errors(path, "reading the statistic names", f"/results/{a}"):
            names = modelarray_io.result_names(path, f, a)
        transposed = modelarray_io.results_orientation(
            path, dset.shape, None if names is None else len(names)
        )
        shape = dset.shape[::-1] if transposed else dset.shape
        if names is None:
            names = [f"component{i + 1:03d}" for i in range(shape[0])]
        names = [n if n else f"component{i + 1:03d}" for i, n in enumerate(names)]
        check_elements(shape[1], dset.name)
        rinfos.append((a, dset, names, transposed, shape))
    same_stats = len({tuple(r[2]) for r in rinfos}) <= 1
    for a, dset, names, transposed, shape in rinfos:
        dim = "stat" if same_stats else f"stat_{a}"
        coords[dim] = (dim, np.asarray(names, dtype=object))
        arr = ModelArrayMatrix(
            manager, lock, path, dset.name, shape, dset.dtype, transposed
        )
        var_name = a if a not in data_vars else f"results_{a}"
        var = xr.Variable(
            (dim, ELEMENT_DIM),
            _lazy(arr),
            attrs={GROUP_ATTR: "results", NAME_ATTR: a},
        )
        var.encoding = _encoding(dset, (dim, ELEMENT_DIM), transposed)
        data_vars[var_name] = var

    grey = modelarray_io.read_greyordinates(path, f)
    if grey is not None:
        vertex_id, structure = grey
        if n_el is not None and vertex_id.size != n_el:
            raise ClusterH5Error(
                path, f"/greyordinates has {vertex_id.size} elements, data has {n_el}"
            )
        coords[ELEMENT_DIM] = (ELEMENT_DIM, vertex_id)
        coords["structure"] = (ELEMENT_DIM, structure.astype(object))
    parcels = modelarray_io.read_parcels(path, f)
    if parcels is not None and grey is None and n_el is not None:
        for k, v in modelarray_io.parcel_element_names(path, parcels, n_el).items():
            coords[k] = (ELEMENT_DIM, v.astype(object))
    return xr.Dataset(data_vars, coords=coords)
