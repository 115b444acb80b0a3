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

from typing import Any, NamedTuple

import h5py
import numpy as np
import xarray as xr
from xarray.backends import BackendArray, CachingFileManager
from xarray.core import indexing

from xarray_clusterh5._hdf5.files import get_link, named_errors
from xarray_clusterh5.errors import ClusterH5Error
from xarray_clusterh5.modelarray import h5 as modelarray_io
from xarray_clusterh5.modelarray import layout

GROUP_ATTR = "modelarray_group"
SOURCES_ATTR = "modelarray_sources"
NAME_ATTR = "modelarray_name"
ELEMENT_DIM = "element"


def is_modelarray_file(f: h5py.File) -> bool:
    """True when the file has ModelArray groups and is not an fmristore file."""
    names = set(f.keys())
    return "cluster_map" not in names and bool(names & {"scalars", "results"})


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


def read_dataset(
    path: str, f: h5py.File, manager: CachingFileManager, lock: Any
) -> xr.Dataset:
    """The lazy Dataset of an open ModelArray file (the engine's view).

    Parameters
    ----------
    path : the file's path, for messages and the lazy arrays.
    f : the open file (read under ``lock`` by the caller).
    manager, lock : what the lazy arrays read through later.

    Returns
    -------
    xarray.Dataset
        See the module docstring for the model.

    Raises
    ------
    ClusterH5Error
        Not a ModelArray file, or inconsistent shapes, names or links to other files.
    """
    with named_errors(path, "reading the file's layout"):
        return _build(path, f, manager, lock)


def subject_dims(counts: dict[str, int]) -> dict[str, tuple[str, str]]:
    """The subject naming rule: each scalar's subject dim and source coordinate.

    Scalars share the dimension ``subject`` when they all have the same number
    of subjects, else each gets ``subject_<scalar>``; the source names are
    ``source_file`` for a single scalar, ``source_file_<scalar>`` otherwise.
    """
    shared = len(set(counts.values())) <= 1
    single = len(counts) == 1
    return {
        s: (
            "subject" if shared else f"subject_{s}",
            "source_file" if single else f"source_file_{s}",
        )
        for s in counts
    }


class _Matrix(NamedTuple):
    """A scalar's or an analysis's 2-D dataset, oriented (rows, element)."""

    name: str
    dset: h5py.Dataset
    labels: list[str]
    transposed: bool
    shape: tuple[int, int]


def _oriented(dset: h5py.Dataset, transposed: bool) -> tuple[int, int]:
    shape = tuple(dset.shape)
    return (shape[1], shape[0]) if transposed else (shape[0], shape[1])


def _scalar_matrices(path: str, f: h5py.File) -> list[_Matrix]:
    out = []
    for s in modelarray_io.list_scalars(path, f):
        dset = get_link(path, f, layout.values_path(s))
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
        out.append(_Matrix(s, dset, sources, transposed, _oriented(dset, transposed)))
    return out


def _result_matrices(path: str, f: h5py.File) -> list[_Matrix]:
    out = []
    for a in modelarray_io.list_analyses(path, f):
        dset = get_link(path, f, layout.results_matrix_path(a))
        assert isinstance(dset, h5py.Dataset)
        with named_errors(path, "reading the statistic names", f"/results/{a}"):
            names = modelarray_io.result_names(path, f, a)
        transposed = modelarray_io.results_orientation(
            path, dset.shape, None if names is None else len(names)
        )
        shape = _oriented(dset, transposed)
        labels = layout.component_names(names, shape[0])
        out.append(_Matrix(a, dset, labels, transposed, shape))
    return out


def _n_elements(path: str, matrices: list[_Matrix]) -> int | None:
    """The common element count of every matrix (None without any)."""
    n_el: int | None = None
    for m in matrices:
        if n_el is None:
            n_el = m.shape[1]
        elif m.shape[1] != n_el:
            raise ClusterH5Error(
                path, f"{m.dset.name} has {m.shape[1]} elements, others have {n_el}"
            )
    return n_el


def _variable(
    m: _Matrix, dims: tuple[str, str], attrs: dict[str, str], lazy: Any
) -> xr.Variable:
    var = xr.Variable(dims, lazy(m), attrs=attrs)
    var.encoding = _encoding(m.dset, dims, m.transposed)
    return var


def _element_coords(path: str, f: h5py.File, n_el: int | None) -> dict[str, Any]:
    """``element``/``structure`` (greyordinates) or parcel names along element."""
    coords: dict[str, Any] = {}
    grey = modelarray_io.read_greyordinates(path, f)
    if grey is not None:
        vertex_id, structure = grey
        if n_el is not None and vertex_id.size != n_el:
            raise ClusterH5Error(
                path, f"/greyordinates has {vertex_id.size} elements, data has {n_el}"
            )
        coords[ELEMENT_DIM] = (ELEMENT_DIM, vertex_id)
        coords["structure"] = (ELEMENT_DIM, structure.astype(object))
        return coords
    parcels = modelarray_io.read_parcels(path, f)
    if parcels is not None and n_el is not None:
        for k, v in modelarray_io.parcel_element_names(path, parcels, n_el).items():
            coords[k] = (ELEMENT_DIM, v.astype(object))
        return coords
    return _voxel_fixel_coords(path, f, n_el)


def _voxel_fixel_coords(path: str, f: h5py.File, n_el: int | None) -> dict[str, Any]:
    """``/fixels`` (+ ``/voxels``): fixel id, voxel id, x, y, z and the voxel's
    i, j, k; ``/voxels`` alone: voxel id and i, j, k (as ``from_cohort`` gives)."""
    voxels = modelarray_io.read_table(path, f, layout.VOXELS, layout.VOXEL_COLUMNS)
    fixels = modelarray_io.read_table(path, f, layout.FIXELS, layout.FIXEL_COLUMNS)
    table = fixels if fixels is not None else voxels
    if table is None:
        return {}
    element = table["fixel_id" if fixels is not None else "voxel_id"].astype(np.int64)
    if n_el is not None and element.size != n_el:
        what = layout.FIXELS if fixels is not None else layout.VOXELS
        raise ClusterH5Error(path, f"{what} has {element.size} rows, data has {n_el}")
    coords: dict[str, Any] = {ELEMENT_DIM: (ELEMENT_DIM, element)}
    if fixels is None:
        assert voxels is not None
        for c in "ijk":
            coords[c] = (ELEMENT_DIM, voxels[c].astype(np.int64))
        return coords
    voxel_id = fixels["voxel_id"].astype(np.int64)
    coords["voxel_id"] = (ELEMENT_DIM, voxel_id)
    for c in "xyz":  # directions are float32, widened by ModelArrayIO
        coords[c] = (ELEMENT_DIM, fixels[c].astype(np.float32))
    if voxels is not None:
        if voxel_id.size and (voxel_id.min() < 0 or voxel_id.max() >= voxels["i"].size):
            raise ClusterH5Error(path, "/fixels voxel_id outside /voxels")
        for c in "ijk":
            coords[f"voxel_{c}"] = (ELEMENT_DIM, voxels[c].astype(np.int64)[voxel_id])
    return coords


def _build(
    path: str, f: h5py.File, manager: CachingFileManager, lock: Any
) -> xr.Dataset:
    if not is_modelarray_file(f):
        raise ClusterH5Error(path, "is not a ModelArray file (no /scalars or /results)")

    def lazy(m: _Matrix) -> indexing.LazilyIndexedArray:
        arr = ModelArrayMatrix(
            manager, lock, path, m.dset.name, m.shape, m.dset.dtype, m.transposed
        )
        return indexing.LazilyIndexedArray(arr)

    scalars = _scalar_matrices(path, f)
    results = _result_matrices(path, f)
    # an analysis with fewer rows than the scalars' elements is an
    # element.subset run (R writes only those rows): its own element dim
    n_scalar = _n_elements(path, scalars)
    subset = {m.name for m in results if n_scalar not in (None, m.shape[1])}
    n_el = _n_elements(path, scalars + [m for m in results if m.name not in subset])
    coords: dict[str, Any] = {}
    data_vars: dict[str, Any] = {}
    names = subject_dims({m.name: len(m.labels) for m in scalars})
    for m in scalars:
        dim, src = names[m.name]
        coords[src] = (dim, np.asarray(m.labels, dtype=object))
        attrs = {GROUP_ATTR: "scalars", SOURCES_ATTR: src}
        data_vars[m.name] = _variable(m, (dim, ELEMENT_DIM), attrs, lazy)
    same_stats = len({tuple(m.labels) for m in results}) <= 1
    for m in results:
        dim = "stat" if same_stats else f"stat_{m.name}"
        coords[dim] = (dim, np.asarray(m.labels, dtype=object))
        var_name = m.name if m.name not in data_vars else f"results_{m.name}"
        attrs = {GROUP_ATTR: "results", NAME_ATTR: m.name}
        edim = f"{ELEMENT_DIM}_{m.name}" if m.name in subset else ELEMENT_DIM
        data_vars[var_name] = _variable(m, (dim, edim), attrs, lazy)
    coords.update(_element_coords(path, f, n_el))
    return xr.Dataset(data_vars, coords=coords)
