"""ModelArray's HDF5 layout with h5py: write cohorts, read scalars and results.

The layout is the one ``modelarrayio to-modelarray`` (26.0.0) writes for CIFTI
dscalar cohorts, as seen from h5py (R reverses every dimension):

* ``/greyordinates``: int64 (2, n), contiguous; rows ``vertex_id`` (0..n-1)
  and ``structure_id`` (codes into ``structure_names``); attributes
  ``column_names`` and ``structure_names`` (variable-length UTF-8 arrays);
* ``/scalars/<name>/values``: (n_subjects, n_elements), float32 by default,
  chunks ``(n_subjects, items)``, gzip 4 + shuffle;
* ``/scalars/<name>/column_names``: variable-length UTF-8 strings, the cohort's
  ``source_file`` values verbatim.

Results written by R ModelArray live in ``/results/<analysis>/results_matrix``,
(n_stats, n_elements) from h5py, with statistic names in one of three places
(:func:`result_names`).

Writes stream column stripes: the caller supplies a function returning
``(n_subjects, width)`` blocks, chunks are compressed in a thread pool
(``_chunkio.encode_chunk``: zlib releases the GIL) and written with
``write_direct_chunk``, so only a few stripes are in memory at any time.

No xarray here.
"""

from __future__ import annotations

import collections
import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from xarray_clusterh5._hdf5 import remote
from xarray_clusterh5._hdf5.chunk_write import (
    default_threads,
    encode_chunk,
    filter_spec,
)
from xarray_clusterh5._hdf5.deflate import deflate
from xarray_clusterh5._hdf5.files import (
    ClusterH5Error,
    atomic_output,
    decode_str,
    get_link,
    named_errors,
    output_folder,
    read_strings,
)
from xarray_clusterh5._hdf5.names import check_hdf5_name
from xarray_clusterh5.cifti import read as cifti
from xarray_clusterh5.modelarray import layout

if TYPE_CHECKING:
    import pandas as pd

#: bytes of one stripe held in memory while writing (several chunks wide)
STRIPE_BYTES = 8 * 1024 * 1024  # pragma: no mutate - memory vs calls, same bytes


def resolve_dtype(dtype: Any) -> np.dtype:
    """float32 or float64, as ModelArrayIO's ``--dtype`` accepts."""
    dt = np.dtype(dtype)
    if dt not in (np.dtype("float32"), np.dtype("float64")):
        raise ValueError(f"dtype must be float32 or float64, not {dtype!r}")
    return dt


def resolve_compression(
    compression: str | None, level: int, shuffle: bool
) -> tuple[str | None, int | None, bool]:
    """ModelArrayIO's rule: ``none`` means no filter; gzip level clamped to 0..9.

    Shuffle is used only together with a compressor.
    """
    comp = (
        None
        if compression is None or str(compression).lower() == "none"
        else str(compression).lower()
    )
    if comp not in (None, "gzip", "lzf"):
        raise ValueError(
            f"compression {compression!r} is not available for HDF5 "
            "(gzip, lzf or none; zstd is TileDB-only)"
        )
    use_shuffle = bool(shuffle) if comp is not None else False
    gzip_level = max(0, min(9, int(level))) if comp == "gzip" else None
    return comp, gzip_level, use_shuffle


def chunk_shape(
    n_subjects: int,
    n_elements: int,
    *,
    dtype: Any = "float32",
    chunk_voxels: int = 0,
    target_chunk_mb: float = 2.0,
) -> tuple[int, int]:
    """ModelArrayIO's chunk shape: all subjects by ``items`` elements.

    ``items`` is ``chunk_voxels`` when > 0, else
    ``max(1, int(target_chunk_mb * 2**20 / (itemsize * n_subjects)))``; both
    capped at ``n_elements``. Smaller element chunks (``chunk_voxels=1024`` or
    ``target_chunk_mb=0.25``) make ModelArray's per-element reads about 3x
    faster at no cost in file size.
    """
    if n_subjects <= 0 or n_elements <= 0:
        raise ValueError(
            f"cannot chunk an empty matrix ({n_subjects} subjects, "
            f"{n_elements} elements)"
        )
    if int(chunk_voxels) > 0:
        items = min(int(chunk_voxels), n_elements)
    else:
        itemsize = resolve_dtype(dtype).itemsize
        items = max(
            1, int(float(target_chunk_mb) * 1024.0 * 1024.0 / (itemsize * n_subjects))
        )
        items = min(items, n_elements)
    return n_subjects, items


def write_greyordinates(
    f: h5py.File, structure_id: np.ndarray, structure_names: Sequence[str]
) -> h5py.Dataset:
    """``/greyordinates`` as ModelArrayIO writes it: int64 (2, n), contiguous."""
    codes = np.asarray(structure_id, dtype=np.int64)
    table = np.stack([np.arange(codes.size, dtype=np.int64), codes])
    dset = f.create_dataset(layout.GREYORDINATES.lstrip("/"), data=table)
    dset.attrs["column_names"] = list(layout.GREYORDINATE_COLUMNS)
    dset.attrs["structure_names"] = [str(s) for s in structure_names]
    return dset


def write_parcels(
    f: h5py.File, arrays: Mapping[str, Sequence[str] | np.ndarray]
) -> None:
    """``/parcels/<name>`` string datasets (pscalar: ``parcel_id``; pconn:
    ``parcel_id_from``/``parcel_id_to``), as ModelArrayIO writes them."""
    grp = f.require_group("parcels")
    for name, values in arrays.items():
        grp.create_dataset(
            name,
            data=np.array([str(v) for v in values], dtype=object),
            dtype=h5py.string_dtype(),
        )


def element_writer(
    ref: cifti.BrainModel | cifti.ParcelModel,
) -> Callable[[h5py.File], Any]:
    """Writes what the file says about its elements: greyordinates or parcels."""
    if isinstance(ref, cifti.ParcelModel):
        arrays = ref.parcel_arrays()
        return lambda f: write_parcels(f, arrays)
    codes, names = ref.structure_table()
    return lambda f: write_greyordinates(f, codes, names)


def write_column_names(f: h5py.File, scalar: str, names: Sequence[str]) -> h5py.Dataset:
    """``/scalars/<scalar>/column_names``: 1-D variable-length UTF-8 strings."""
    values = np.array([str(n) for n in names], dtype=object)
    grp = f.require_group(f"{layout.SCALARS.lstrip('/')}/{scalar}")
    return grp.create_dataset(
        "column_names",
        data=values,
        dtype=h5py.string_dtype(encoding="utf-8"),
        shape=(len(values),),
    )


@dataclass(frozen=True)
class StorageOptions:
    """How ``scalars/<name>/values`` is stored: ModelArrayIO's flags.

    ``dtype`` float32 or float64; ``compression`` gzip, lzf or none (level
    clamped to 0..9, shuffle only with a compressor); ``chunk_voxels`` elements
    per chunk, 0 = from ``target_chunk_mb`` (see :func:`chunk_shape`);
    ``threads`` compression threads (default: available CPUs).
    """

    dtype: Any = "float32"
    compression: str | None = "gzip"
    compression_level: int = 4
    shuffle: bool = True
    chunk_voxels: int = 0
    target_chunk_mb: float = 2.0
    threads: int | None = None

    def check(self) -> None:
        """Refuse a bad dtype or compression before anything is read."""
        resolve_dtype(self.dtype)
        resolve_compression(self.compression, self.compression_level, self.shuffle)

    def n_threads(self) -> int:
        """Threads to use: ``threads`` or the available CPUs."""
        return self.threads or default_threads()

    def create_values(
        self, f: h5py.File, scalar: str, n_subjects: int, n_elements: int
    ) -> h5py.Dataset:
        """Create (not fill) ``/scalars/<scalar>/values`` with these options."""
        dt = resolve_dtype(self.dtype)
        comp, level, use_shuffle = resolve_compression(
            self.compression, self.compression_level, self.shuffle
        )
        chunks = chunk_shape(
            n_subjects,
            n_elements,
            dtype=dt,
            chunk_voxels=self.chunk_voxels,
            target_chunk_mb=self.target_chunk_mb,
        )
        return f.create_dataset(
            layout.values_path(scalar).lstrip("/"),
            shape=(n_subjects, n_elements),
            dtype=dt,
            chunks=chunks,
            compression=comp,
            compression_opts=level if comp == "gzip" else None,
            shuffle=use_shuffle,
        )


def write_scalar(
    f: h5py.File,
    scalar: str,
    n_subjects: int,
    n_elements: int,
    column_names: Sequence[str],
    read_stripe: Callable[[int, int], np.ndarray],
    options: StorageOptions | None = None,
    *,
    stripe_bytes: int = STRIPE_BYTES,
    progress: Callable[[int], Any] | None = None,
) -> h5py.Dataset:
    """Write ``/scalars/<scalar>/values`` and ``column_names``, streaming stripes.

    Parameters
    ----------
    f : file open for writing.
    scalar : scalar name (one HDF5 link name: no ``/``).
    n_subjects, n_elements : shape of ``values``.
    column_names : one source string per subject, stored verbatim.
    read_stripe : ``read_stripe(start, stop)`` returns the values of elements
        ``start:stop``, shape ``(n_subjects, stop - start)``; called once per
        stripe, in order. A stripe is a whole number of chunks wide and about
        ``stripe_bytes`` large, so memory stays bounded whatever the cohort size.
    options : dtype, filters, chunks and threads, as ModelArrayIO's flags
        (default: ModelArrayIO's defaults, see :class:`StorageOptions`).
    stripe_bytes : about how many bytes of values one stripe holds.
    progress : called with the number of elements finished after each stripe.
    """
    check_hdf5_name(scalar, "scalar name")
    if len(column_names) != n_subjects:
        raise ValueError(
            f"scalar {scalar!r}: {len(column_names)} column names for "
            f"{n_subjects} subjects"
        )
    options = options or StorageOptions()
    dset = options.create_values(f, scalar, n_subjects, n_elements)
    write_column_names(f, scalar, column_names)
    _fill_values(dset, scalar, read_stripe, options.n_threads(), stripe_bytes, progress)
    return dset


def _fill_values(
    dset: h5py.Dataset,
    scalar: str,
    read_stripe: Callable[[int, int], np.ndarray],
    n_threads: int,
    stripe_bytes: int,
    progress: Callable[[int], Any] | None,
) -> None:
    """Read stripes in order; compress their chunks on a pool, write them direct."""
    n_subjects, n_elements = dset.shape
    chunks = dset.chunks
    cw = chunks[1]
    per_chunk = n_subjects * cw * dset.dtype.itemsize  # pragma: no mutate - tuning
    width = cw * max(1, int(stripe_bytes // max(per_chunk, 1)))
    # lzf has no encoder here: h5py compresses those stripes itself
    spec = filter_spec(dset) if dset.compression != "lzf" else None
    pending: collections.deque[tuple[tuple[int, int], Future[bytes]]] = (
        collections.deque()
    )
    # chunks compress while later ones are cut and the next stripe is read; at
    # most about STRIPE_BYTES of chunks wait, so a stripe as large as the whole
    # matrix (NIfTI/MIF cohorts) does not also hold all its compressed chunks
    # (queue depth: tuning only, every depth writes the same chunks)
    fit = STRIPE_BYTES // max(per_chunk, 1)  # pragma: no mutate - queue depth
    max_pending = max(2 * n_threads, fit)  # pragma: no mutate - queue depth

    def drain(limit: int) -> None:
        while len(pending) > limit:
            offset, fut = pending.popleft()
            dset.id.write_direct_chunk(offset, fut.result(), filter_mask=0)

    with ThreadPoolExecutor(n_threads, thread_name_prefix="modelarray") as pool:
        try:
            for start in range(0, n_elements, width):
                stop = min(start + width, n_elements)
                block = np.asarray(read_stripe(start, stop))
                if block.shape != (n_subjects, stop - start):
                    raise ValueError(
                        f"scalar {scalar!r}: stripe {start}:{stop} has shape "
                        f"{block.shape}, expected {(n_subjects, stop - start)}"
                    )
                block = np.asarray(block, dtype=dset.dtype)
                if spec is None:
                    dset[:, start:stop] = block
                else:
                    for c0 in range(start, stop, cw):
                        part = block[:, c0 - start : min(c0 + cw, stop) - start]
                        fut = pool.submit(
                            encode_chunk, part, chunks, level=spec.level,
                            shuffle=spec.shuffle, fill=0, compress=deflate,
                        )  # fmt: skip
                        pending.append(((0, c0), fut))
                        drain(max_pending)
                if progress is not None:
                    progress(stop - start)
            drain(0)
        finally:
            for _, fut in pending:
                fut.cancel()


# --------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------


def _decode_names(path: str, values: Any) -> list[str]:
    """Names from an attribute or dataset value: bytes or str, vlen or fixed."""
    arr = np.asarray(values, dtype=object).ravel()
    return [decode_str(v).rstrip("\x00").strip() for v in arr]


def list_scalars(path: str, f: h5py.File) -> list[str]:
    """Names of the groups under ``/scalars`` that hold a ``values`` dataset."""
    grp = get_link(path, f, layout.SCALARS)
    if not isinstance(grp, h5py.Group):
        return []
    return [
        k for k in grp if isinstance(get_link(path, grp, f"{k}/values"), h5py.Dataset)
    ]


def list_analyses(path: str, f: h5py.File) -> list[str]:
    """Names of the groups under ``/results`` that hold a ``results_matrix``."""
    grp = get_link(path, f, layout.RESULTS)
    if not isinstance(grp, h5py.Group):
        return []
    return [
        k
        for k in grp
        if not k.startswith(".")  # .<name>.partial: a write in progress
        and isinstance(get_link(path, grp, f"{k}/results_matrix"), h5py.Dataset)
    ]


def scalar_column_names(path: str, f: h5py.File, scalar: str) -> list[str]:
    """Source names of a scalar, looked up in ModelArray's order.

    The attribute ``column_names`` on ``values`` first, then the datasets
    ``scalars/<s>/column_names``, ``scalars/<s>/values/column_names``,
    ``scalars/scalars/<s>/values/column_names`` and
    ``scalars/scalars/<s>/column_names``.
    """
    values = get_link(path, f, layout.values_path(scalar))
    if values is not None and "column_names" in values.attrs:
        return _decode_names(path, values.attrs["column_names"])
    for p in (
        layout.column_names_path(scalar),
        f"{layout.SCALARS}/{scalar}/values/column_names",
        f"{layout.SCALARS}/scalars/{scalar}/values/column_names",
        f"{layout.SCALARS}/scalars/{scalar}/column_names",
    ):
        obj = get_link(path, f, p)
        if isinstance(obj, h5py.Dataset):
            return [str(s) for s in read_strings(path, obj).ravel()]
    raise ClusterH5Error(path, f"scalar {scalar!r} has no column_names (source files)")


def result_names(path: str, f: h5py.File, analysis: str) -> list[str] | None:
    """Statistic names of an analysis, in ModelArrayIO's lookup order, or None.

    1. attribute ``colnames`` on ``results_matrix`` (legacy writers);
    2. dataset ``results/<a>/column_names`` (R ``writeResults``: variable-length;
       the streaming writer: fixed-length, NUL-padded).

    ModelArrayIO also looks for ``results/<a>/results_matrix/column_names``,
    which cannot exist: ``results_matrix`` is a dataset, and HDF5 datasets hold
    no links.

    Names are decoded as UTF-8 with trailing NULs and whitespace stripped. Unlike
    ModelArrayIO, empty names are kept in place (ModelArrayIO drops them, which
    shifts every later name onto the wrong row).
    """
    matrix = get_link(path, f, layout.results_matrix_path(analysis))
    if matrix is None:
        raise ClusterH5Error(path, f"no results for analysis {analysis!r}")
    if "colnames" in matrix.attrs:
        names = _decode_names(path, matrix.attrs["colnames"])
        if any(names):
            return names
    p = f"{layout.RESULTS}/{analysis}/column_names"
    obj = get_link(path, f, p)
    if isinstance(obj, h5py.Dataset):
        with named_errors(path, "reading the statistic names", p):
            names = _decode_names(path, obj[()])
        if any(names):
            return names
    return None


def results_orientation(path: str, shape: tuple[int, ...], n_names: int | None) -> bool:
    """True when a results matrix is stored transposed, (n_elements, n_stats).

    R writes (n_stats, n_elements) from h5py's view; ModelArray also accepts the
    transpose, and so do we when only the second dimension matches the names.
    """
    if len(shape) != 2:
        raise ClusterH5Error(path, f"results_matrix must be 2-D, has shape {shape}")
    if n_names is None or shape[0] == n_names:
        return False
    if shape[1] == n_names:
        return True
    raise ClusterH5Error(
        path,
        f"{n_names} statistic names do not match results_matrix of shape {shape}",
    )


def check_results_file(path: str, f: h5py.File) -> None:
    """Refuse a file that is not a ModelArray file with ``/results``, by kind."""
    with named_errors(path, "recognising the file's format"):
        names = set(f.keys())
    if {"scans", "cluster_map"} <= names:
        raise ClusterH5Error(
            path,
            "is an fmristore clustered experiment (/scans, /cluster_map), not a "
            "ModelArray file; results are exported from ModelArray files "
            "(/results/<analysis>/results_matrix)",
        )
    if "results" not in names:
        kind = (
            "a ModelArray file without results"
            if "scalars" in names
            else ("not a ModelArray file")
        )
        raise ClusterH5Error(
            path, f"is {kind}: it has no /results group (fit a model first)"
        )


def read_results(
    path: str | os.PathLike[str], analysis: str, f: h5py.File | None = None
) -> tuple[list[str], np.ndarray]:
    """Statistic names and the (n_stats, n_elements) matrix of one analysis.

    The whole matrix is read at once (R's (32, 32) chunks make row reads slow).
    Missing names become ``component001``... as in ModelArrayIO.
    """
    from xarray_clusterh5._hdf5.files import open_h5

    path = os.fspath(path)
    if f is None:
        with open_h5(path) as fh:
            return read_results(path, analysis, fh)
    check_results_file(path, f)
    where = layout.results_matrix_path(analysis)
    with named_errors(path, "reading the statistic names", f"/results/{analysis}"):
        names = result_names(path, f, analysis)
    dset = get_link(path, f, where)
    if not isinstance(dset, h5py.Dataset):
        raise ClusterH5Error(path, f"no results for analysis {analysis!r}")
    transposed = results_orientation(
        path, dset.shape, None if names is None else len(names)
    )
    with named_errors(path, "reading results", where):
        matrix = dset[()]
    if transposed:
        matrix = matrix.T
    return layout.component_names(names, matrix.shape[0]), matrix


def read_greyordinates(path: str, f: h5py.File) -> tuple[np.ndarray, np.ndarray] | None:
    """``(vertex_id, structure name per element)`` from ``/greyordinates``, or None."""
    dset = get_link(path, f, layout.GREYORDINATES)
    if not isinstance(dset, h5py.Dataset):
        return None
    with named_errors(path, "reading greyordinates", layout.GREYORDINATES):
        table = dset[()]
        cols = [
            decode_str(c)
            for c in np.asarray(dset.attrs.get("column_names", []), dtype=object)
        ]
        raw_names = dset.attrs.get("structure_names", [])
    if table.ndim != 2:
        raise ClusterH5Error(
            path, f"/greyordinates must be 2-D, has shape {table.shape}"
        )
    if table.shape[0] != 2 and table.shape[1] == 2:
        table = table.T  # R-written (n, 2) seen from h5py as (2, n) normally
    vi = cols.index("vertex_id") if "vertex_id" in cols else 0
    si = cols.index("structure_id") if "structure_id" in cols else 1
    names = [decode_str(s) for s in np.asarray(raw_names, dtype=object)]
    codes = table[si].astype(np.int64)
    if names and not np.all((codes >= 0) & (codes < len(names))):
        raise ClusterH5Error(
            path, "/greyordinates structure_id outside structure_names"
        )
    structure = np.asarray(names, dtype=str)[codes] if names else codes.astype(str)
    return table[vi].astype(np.int64), structure


def read_table(
    path: str, f: h5py.File, name: str, columns: Sequence[str]
) -> dict[str, np.ndarray] | None:
    """A ModelArrayIO element table (``/voxels``, ``/fixels``) by column, or None.

    Tables are stored transposed, ``(n_columns, n_rows)``, with the column
    names in the ``column_names`` attribute; every name in ``columns`` must be
    there.
    """
    dset = get_link(path, f, name)
    if not isinstance(dset, h5py.Dataset):
        return None
    with named_errors(path, "reading the element table", name):
        cols = [
            decode_str(c)
            for c in np.asarray(dset.attrs.get("column_names", []), dtype=object)
        ]
        table = dset[()]
    if table.ndim != 2 or table.shape[0] != len(cols):
        raise ClusterH5Error(
            path, f"{name} has shape {table.shape} but column names {cols}"
        )
    missing = [c for c in columns if c not in cols]
    if missing:
        raise ClusterH5Error(path, f"{name} lacks columns {missing} (has {cols})")
    return {c: table[cols.index(c)] for c in columns}


def read_parcels(path: str, f: h5py.File) -> dict[str, np.ndarray] | None:
    """The ``/parcels`` string datasets of a pscalar/pconn file, or None."""
    grp = get_link(path, f, layout.PARCELS)
    if not isinstance(grp, h5py.Group):
        return None
    out = {}
    for name in ("parcel_id", "parcel_id_from", "parcel_id_to"):
        obj = get_link(path, grp, name)
        if isinstance(obj, h5py.Dataset):
            out[name] = read_strings(path, obj).ravel()
    return out or None


def parcel_element_names(
    path: str, parcels: dict[str, np.ndarray], n_elements: int
) -> dict[str, np.ndarray]:
    """Per-element parcel names; pconn elements are row-major (from, to) pairs."""
    if "parcel_id" in parcels:
        names = {"parcel": parcels["parcel_id"]}
    elif {"parcel_id_from", "parcel_id_to"} <= parcels.keys():
        rows, cols = parcels["parcel_id_from"], parcels["parcel_id_to"]
        names = {
            "parcel_from": np.repeat(rows, cols.size),
            "parcel_to": np.tile(cols, rows.size),
        }
    else:
        raise ClusterH5Error(path, f"/parcels has {sorted(parcels)}, not parcel ids")
    for k, v in names.items():
        if v.size != n_elements:
            raise ClusterH5Error(
                path, f"/parcels gives {v.size} {k} names for {n_elements} elements"
            )
    return names


# --------------------------------------------------------------------------
# cohorts (ModelArrayIO's CSV rules) and the direct conversion
# --------------------------------------------------------------------------

NIFTI_SUFFIXES = (".nii", ".nii.gz")
MIF_SUFFIXES = (".mif", ".mif.gz")


# --------------------------------------------------------------------------
# cohort CSV
# --------------------------------------------------------------------------


#: strings pandas.read_csv (and so ModelArrayIO) reads as missing: its default na_values
NA_STRINGS = frozenset(
    ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
     "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]
)  # fmt: skip


@dataclass(frozen=True)
class CohortTable:
    """A cohort CSV normalised as ModelArrayIO does, without pandas.

    One entry per (subject, scalar): ``scalar_name`` and ``source_file``
    stripped, ``row`` the CSV data row it comes from; ``cells`` holds every data
    row's raw cells (None where missing) for the other columns.
    """

    path: str
    header: list[str]
    scalar_name: list[str]
    source_file: list[str]
    row: list[int]
    cells: list[list[str | None]]
    wide: bool

    def column(self, name: str) -> list[str | None]:
        """Each entry's cell of column ``name`` (stripped; None if missing)."""
        if name not in self.header:
            return [None] * len(self.row)
        j = self.header.index(name)
        out: list[str | None] = []
        for r in self.row:
            v = self.cells[r][j]
            out.append(v.strip() if v is not None and v.strip() else None)
        return out


def _csv_rows(path: str) -> tuple[list[str], list[list[str | None]]]:
    import csv

    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = [r for r in csv.reader(fh) if r]  # blank lines are skipped, as pandas
    if not rows:
        raise ClusterH5Error(path, "cohort file is empty")
    header, data = rows[0], rows[1:]
    cells: list[list[str | None]] = []
    for i, r in enumerate(data):
        if len(r) > len(header):
            raise ClusterH5Error(
                path, f"data row {i + 1} has {len(r)} fields, the header {len(header)}"
            )
        padded = r + [""] * (len(header) - len(r))
        cells.append([None if v in NA_STRINGS else v for v in padded])
    return header, cells


def read_cohort_table(
    cohort_csv: str | os.PathLike[str], scalar_columns: Sequence[str] | None = None
) -> CohortTable:
    """A cohort CSV normalised as ModelArrayIO does: long ``scalar_name, source_file``.

    Long format needs columns ``scalar_name`` and ``source_file``; rows where
    either is missing or empty are dropped. Wide format (``scalar_columns``)
    melts each row into one entry per scalar column, skipping empty cells.
    Values are stripped of surrounding whitespace and otherwise kept verbatim
    (``001.nii`` stays ``001.nii``); pandas' missing-value strings (``NA``,
    ``null``...) count as missing, as in ModelArrayIO.
    """
    path = os.fspath(cohort_csv)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: cohort file does not exist")
    header, cells = _csv_rows(path)
    wanted = [c for c in (scalar_columns or []) if c]
    pairs: list[tuple[str, str, int]] = []
    if wanted:
        missing = [c for c in wanted if c not in header]
        if missing:
            raise ClusterH5Error(
                path, f"wide-format cohort is missing scalar columns {missing}"
            )
        for i, r in enumerate(cells):
            for sc in wanted:
                v = r[header.index(sc)]
                if v is not None and v.strip():
                    pairs.append((sc, v.strip(), i))
    else:
        missing = [c for c in ("scalar_name", "source_file") if c not in header]
        if missing:
            raise ClusterH5Error(
                path,
                "cohort file must contain columns ['scalar_name', 'source_file'] "
                f"(missing {missing}); for a wide cohort give scalar_columns",
            )
        jn, js = header.index("scalar_name"), header.index("source_file")
        for i, r in enumerate(cells):
            n, src = r[jn], r[js]
            if n is not None and src is not None and n.strip() and src.strip():
                pairs.append((n.strip(), src.strip(), i))
    if not pairs:
        raise ClusterH5Error(
            path, "cohort file has no scalar entries after normalisation"
        )
    columns = zip(*pairs, strict=True)  # pragma: no mutate - triples by construction
    names, sources, rows = (list(t) for t in columns)
    return CohortTable(path, header, names, sources, rows, cells, bool(wanted))


def read_cohort(
    cohort_csv: str | os.PathLike[str], scalar_columns: Sequence[str] | None = None
) -> pd.DataFrame:
    """:func:`read_cohort_table` as a DataFrame, with the other columns typed
    by pandas (coordinates of ``from_cohort``): ``scalar_name``,
    ``source_file``, ``_row`` (the CSV data row) and the other columns."""
    return cohort_frame(read_cohort_table(cohort_csv, scalar_columns))


def cohort_frame(table: CohortTable) -> pd.DataFrame:
    """The DataFrame of a :class:`CohortTable`; pandas types the other columns."""
    import pandas as pd

    # the frame's own columns (a wide cohort's are made from its cells)
    made = ["_row", "scalar_name", "source_file"] if table.wide else ["_row"]
    clash = [c for c in made if c in table.header]
    if clash:
        raise ClusterH5Error(
            table.path, f"cohort column(s) {clash} clash with the table's; rename them"
        )
    df = pd.read_csv(table.path)
    if len(df) != len(table.cells) or list(df.columns) != table.header:
        raise ClusterH5Error(
            table.path, "pandas and the csv module read this cohort differently"
        )
    scalar_cols = (
        list(dict.fromkeys(table.scalar_name))
        if table.wide
        else ["scalar_name", "source_file"]
    )
    extra = [c for c in table.header if c not in scalar_cols]
    long = df.iloc[table.row][extra].reset_index(drop=True)
    long.insert(0, "_row", table.row)
    long.insert(0, "source_file", table.source_file)
    long.insert(0, "scalar_name", table.scalar_name)
    return long


def check_modality(csv: str, sources: Sequence[str]) -> str:
    """The cohort's modality from file names: ``cifti``, ``nifti`` or ``mif``.

    As ModelArrayIO decides it (CIFTI: ``.dscalar/.pscalar/.pconn.nii``, here
    also ``.dtseries``/``.dlabel``; MIF: ``.mif[.gz]``; NIfTI: ``.nii[.gz]``);
    mixed cohorts and unknown names are refused naming the CSV.
    """
    kinds: dict[str, str] = {}
    for s in sources:
        if cifti.cifti_kind_from_name(s):
            kinds.setdefault("cifti", s)
        elif s.endswith(MIF_SUFFIXES):
            kinds.setdefault("mif", s)
        elif s.endswith(NIFTI_SUFFIXES):
            kinds.setdefault("nifti", s)
        else:
            raise ClusterH5Error(
                csv,
                f"cannot tell the type of {s!r}: expected .mif, .nii, .nii.gz or a "
                "CIFTI file such as .dscalar.nii",
            )
    if len(kinds) > 1:
        raise ClusterH5Error(
            csv, f"cohort mixes modalities ({', '.join(sorted(kinds))}); e.g. {kinds}"
        )
    return next(iter(kinds))


def resolve_sources(
    cohort_csv: str | os.PathLike[str],
    sources: Sequence[str],
    relative_to: str | os.PathLike[str] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> list[str]:
    """Absolute paths of ``source_file`` values (local copies of URLs).

    URLs (``https://``, ``s3://``, any fsspec protocol; credentials from
    ``storage_options`` or fsspec's usual configuration) are downloaded once
    into a temporary folder removed at exit: a conversion reads every byte of
    every file.

    Rule: with ``relative_to=None`` a relative path is looked up as ModelArrayIO
    does, against the current working directory; if it is not there, the cohort
    CSV's folder is tried and a warning says so. ``relative_to="cwd"``,
    ``"csv"`` or a folder uses that base only. The strings stored in the output
    are never changed, only the paths opened.
    """
    csv_dir = Path(os.fspath(cohort_csv)).resolve().parent
    cwd = Path.cwd()
    fixed: Path | None = None
    if relative_to is not None:
        fixed = {"cwd": cwd, "csv": csv_dir}.get(str(relative_to), Path(relative_to))
    out: list[str] = []
    fell_back = 0
    urls = [s for s in sources if remote.is_url(s)]
    fetched = remote.local_copies(urls, storage_options) if urls else []
    copies = dict(zip(urls, fetched, strict=True))  # pragma: no mutate - 1 per URL
    for s in sources:
        if s in copies:  # fetched once into a temporary cache: conversions read it all
            out.append(copies[s])
            continue
        p = Path(s).expanduser()
        if p.is_absolute():
            out.append(str(p))
            continue
        if fixed is not None:
            cand = fixed / p
            if not cand.exists():
                raise FileNotFoundError(f"{s}: no such file (looked in {fixed})")
            out.append(str(cand))
            continue
        if (cwd / p).exists():
            out.append(str(cwd / p))
        elif (csv_dir / p).exists():
            out.append(str(csv_dir / p))
            fell_back += 1
        else:
            raise FileNotFoundError(
                f"{s}: no such file, neither relative to the working directory "
                f"{cwd} (ModelArrayIO's rule) nor to the cohort file's folder {csv_dir}"
            )
    if fell_back:
        warnings.warn(
            f"{fell_back} source file(s) of {os.fspath(cohort_csv)} were not found "
            f"relative to the working directory {cwd} (where ModelArrayIO looks); "
            f"read them relative to the cohort file's folder {csv_dir}",
            UserWarning,
            stacklevel=3,
        )
    return out


# --------------------------------------------------------------------------
# lazy reads
# --------------------------------------------------------------------------


class CohortArray:
    """Array-like (n_files, n_elements) over a cohort's data blocks.

    Indexing is outer (orthogonal, one key per axis, as dask and xarray's
    backends ask for it) and reads only the requested greyordinates of the
    requested files (``os.pread`` at ``vox_offset``), so column stripes are
    cheap. Holds no open files: it pickles to dask workers.
    """

    def __init__(self, blocks: Sequence[cifti.DataBlock], n_elements: int) -> None:
        self.blocks = list(blocks)
        self.shape = (len(self.blocks), int(n_elements))
        self.dtype = np.dtype("float32")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __dask_tokenize__(self) -> object:
        return [(b.path, b.offset, str(b.dtype), b.map_index) for b in self.blocks]

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            i = next(i for i, k in enumerate(key) if k is Ellipsis)
            fill = (slice(None),) * (3 - len(key))
            key = key[:i] + fill + key[i + 1 :]
        key = key + (slice(None),) * (2 - len(key))
        if len(key) != 2:
            raise IndexError(f"too many indices for a 2-D cohort array: {key!r}")
        rows_key, cols_key = key
        rows = np.arange(self.shape[0])[rows_key]
        cols = np.arange(self.shape[1])[cols_key]
        rows_1d = np.atleast_1d(rows)
        cols_1d = np.atleast_1d(cols)
        if cols_1d.size == 0 or rows_1d.size == 0:
            out = np.empty((rows_1d.size, cols_1d.size), dtype=self.dtype)
        else:
            lo, hi = int(cols_1d.min()), int(cols_1d.max()) + 1
            out = np.empty((rows_1d.size, cols_1d.size), dtype=self.dtype)
            contiguous = np.array_equal(cols_1d, np.arange(lo, hi))
            buf = np.empty(hi - lo, dtype=self.dtype)
            for i, r in enumerate(rows_1d):
                if contiguous:
                    cifti.read_columns(self.blocks[int(r)], lo, hi, out[i])
                else:
                    cifti.read_columns(self.blocks[int(r)], lo, hi, buf)
                    out[i] = buf[cols_1d - lo]
        if np.ndim(rows) == 0:
            out = out[0]
            return out[0] if np.ndim(cols) == 0 else out
        return out[:, 0] if np.ndim(cols) == 0 else out


def check_cohort_files(
    paths: Sequence[str],
    map_index: int | None,
    progress: bool,
    threads: int | None,
) -> tuple[cifti.BrainModel | cifti.ParcelModel, list[cifti.DataBlock]]:
    """Check every file of a cohort against the first; where each one's data is.

    Parameters
    ----------
    paths : resolved paths, the first one the reference.
    map_index : map to take from multi-map files (None: single-map files only).
    progress : progress bar on stderr.
    threads : threads reading headers (default: available CPUs).

    Returns
    -------
    The first file's brain model (or parcels) and one ``DataBlock`` per file.

    Raises
    ------
    ClusterH5Error
        Naming the first file that is not CIFTI-2, of another type or brain model.
    """
    with named_errors(
        paths[0], "reading the CIFTI header", catch=cifti.nibabel_errors()
    ):
        ref, first = cifti.read_reference(paths[0], map_index=map_index)
    rest = paths[1:]
    n_threads = threads or default_threads()
    blocks = [first]

    def check(p: str) -> cifti.DataBlock:
        with named_errors(p, "checking the CIFTI header", catch=cifti.nibabel_errors()):
            return cifti.check_file(p, ref, map_index=map_index)

    with ThreadPoolExecutor(max(1, n_threads)) as pool:  # pragma: no mutate - pool size
        results = pool.map(check, rest)
        if progress:
            from tqdm.auto import tqdm

            results = tqdm(
                results,
                total=len(rest),
                desc="checking CIFTI headers",
                unit="file",
                file=sys.stderr,
            )
        blocks.extend(results)
    return ref, blocks


def output_plan(
    output: str | os.PathLike[str], scalars: Sequence[str], split: bool
) -> list[tuple[Path, list[str]]]:
    """Which scalars go to which file (ModelArrayIO's split naming).

    Split outputs are ``<scalar>_<name of output>`` in the output's folder, the
    scalar name sanitised as ModelArrayIO does (``/`` and spaces to ``_``; here
    also backslashes and control characters) so it cannot leave that folder.
    """
    target = Path(output)
    if not split:
        return [(target, list(scalars))]
    plan = []
    for s in scalars:
        name = layout.split_output_name(s, target.name)
        plan.append((target.with_name(name), [s]))
    if len({p for p, _ in plan}) != len(plan):
        raise ValueError("two scalar names give the same split output file name")
    return plan


def stripe_reader(
    array: CohortArray,
    pool: ThreadPoolExecutor,
    threads: int,
    held: ExitStack,
) -> Callable[[int, int], np.ndarray]:
    """``read(start, stop)``: elements ``start:stop`` of every file, read in threads.

    Each file's bytes come from one ``os.pread`` (no GIL), so the pool's
    threads read several files at once while other threads compress.
    The array's files are held open until ``held`` closes (one ``pread`` per
    file and stripe instead of an open, a read and a close).
    """
    n = len(array.blocks)
    fds = held.enter_context(cifti.OpenFiles(array.blocks)).fds
    # files per task, about 4 tasks per thread (threads >= 1: the pool's size)
    step = max(1, int(n // (4 * threads)))  # pragma: no mutate - tuning only

    def read(start: int, stop: int) -> np.ndarray:
        out = np.empty((n, stop - start), dtype=np.float32)

        def part(i0: int) -> None:
            rows = range(i0, min(i0 + step, n))
            cifti.read_stripe_rows(array.blocks, fds, start, stop, out, rows)

        list(pool.map(part, range(0, n, step)))
        return out

    return read


@dataclass(frozen=True)
class ScalarStream:
    """One scalar to write: its source names and how to read element stripes."""

    name: str
    column_names: list[str]
    read_stripe: Callable[[int, int], np.ndarray]
    #: stripe size: small for cheap column reads (CIFTI), large when every
    #: stripe reads whole files (compressed NIfTI, MIF)
    stripe_bytes: int = STRIPE_BYTES


def check_outputs(
    plan: Sequence[tuple[Path, list[str]]], overwrite: bool, parents: bool
) -> None:
    """Refuse existing outputs unless ``overwrite``, and missing folders unless
    ``parents`` (before anything is read)."""
    for out, _ in plan:
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out}: exists; pass overwrite=True to replace it")
        output_folder(out.parent, parents=parents)


def write_modelarray(
    plan: Sequence[tuple[Path, list[str]]],
    write_elements: Callable[[h5py.File], Any],
    streams: dict[str, ScalarStream],
    n_elements: int,
    options: StorageOptions,
    *,
    overwrite: bool,
    progress: bool,
    parents: bool,
) -> list[Path]:
    """Write ModelArray files: the one loop of ``to_modelarray`` and the CLI.

    Parameters
    ----------
    plan : ``(file, scalar names)`` pairs (:func:`output_plan`).
    write_elements : writes the element table (``/greyordinates``, ``/parcels``,
        ``/voxels``, ``/fixels``) into each file.
    streams : the scalars by name.
    n_elements : columns of every ``values`` dataset.
    options : storage (dtype, filters, chunks, threads).
    overwrite : replace existing files.
    progress : progress bar on stderr.
    parents : make missing folders (ModelArrayIO does); else they are refused.

    Returns
    -------
    The files written. Each is written to a temporary name and renamed into
    place, so a failure leaves no partial file.
    """
    check_outputs(plan, overwrite, parents)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = n_elements * sum(len(names) for _, names in plan)
        bar = tqdm(
            total=total, desc="writing ModelArray HDF5", unit="el",
            unit_scale=True, file=sys.stderr,
        )  # fmt: skip
    written = []
    try:
        for out, names in plan:
            with (
                atomic_output(out, overwrite=overwrite, suffix=".h5") as tmp,
                h5py.File(tmp, "w") as f,
            ):
                write_elements(f)
                for name in names:
                    _write_stream(f, streams[name], n_elements, options, bar)
            written.append(out)
    finally:
        if bar is not None:
            bar.close()
    return written


def _write_stream(
    f: h5py.File,
    stream: ScalarStream,
    n_elements: int,
    options: StorageOptions,
    bar: Any,
) -> None:
    write_scalar(
        f, stream.name, len(stream.column_names), n_elements, stream.column_names,
        stream.read_stripe, options, stripe_bytes=stream.stripe_bytes,
        progress=bar.update if bar is not None else None,
    )  # fmt: skip


def scalar_rows(scalar_name: Sequence[str]) -> dict[str, np.ndarray]:
    """Entries of each scalar in a normalised cohort, scalars in CSV order.

    Scalar names must be HDF5 link names (ValueError otherwise).
    """
    names = list(dict.fromkeys(scalar_name))
    for s in names:
        check_hdf5_name(s, "scalar name")
    col = np.asarray(list(scalar_name), dtype=object)
    return {s: np.flatnonzero(col == s) for s in names}
