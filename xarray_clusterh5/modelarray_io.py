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
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import h5py
import numpy as np

from xarray_clusterh5 import _layout
from xarray_clusterh5._chunkio import default_threads, encode_chunk, filter_spec
from xarray_clusterh5._h5 import ClusterH5Error, decode_str, get_link, read_strings

GREYORDINATE_COLUMNS = ("vertex_id", "structure_id")
#: bytes of one stripe held in memory while writing (several chunks wide)
STRIPE_BYTES = 32 * 1024 * 1024


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
    dset = f.create_dataset(_layout.MA_GREYORDINATES.lstrip("/"), data=table)
    dset.attrs["column_names"] = list(GREYORDINATE_COLUMNS)
    dset.attrs["structure_names"] = [str(s) for s in structure_names]
    return dset


def write_column_names(f: h5py.File, scalar: str, names: Sequence[str]) -> h5py.Dataset:
    """``/scalars/<scalar>/column_names``: 1-D variable-length UTF-8 strings."""
    values = np.array([str(n) for n in names], dtype=object)
    grp = f.require_group(f"{_layout.MA_SCALARS.lstrip('/')}/{scalar}")
    return grp.create_dataset(
        "column_names",
        data=values,
        dtype=h5py.string_dtype(encoding="utf-8"),
        shape=(len(values),),
    )


def write_scalar(
    f: h5py.File,
    scalar: str,
    n_subjects: int,
    n_elements: int,
    column_names: Sequence[str],
    read_stripe: Callable[[int, int], np.ndarray],
    *,
    dtype: Any = "float32",
    compression: str | None = "gzip",
    compression_level: int = 4,
    shuffle: bool = True,
    chunk_voxels: int = 0,
    target_chunk_mb: float = 2.0,
    threads: int | None = None,
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
    read_stripe : ``read_stripe(start, stop)`` returns the ``(n_subjects,
        stop - start)`` values of elements ``start:stop``; called once per
        stripe, in order. A stripe is a whole number of chunks wide and about
        ``stripe_bytes`` large, so memory stays bounded whatever the cohort size.
    dtype, compression, compression_level, shuffle, chunk_voxels, target_chunk_mb :
        as ModelArrayIO's flags (see :func:`chunk_shape`, :func:`resolve_compression`).
    threads : compression threads (default: available CPUs).
    progress : called with the number of elements finished after each stripe.
    """
    _layout.check_hdf5_name(scalar, "scalar name")
    if len(column_names) != n_subjects:
        raise ValueError(
            f"scalar {scalar!r}: {len(column_names)} column names for "
            f"{n_subjects} subjects"
        )
    dt = resolve_dtype(dtype)
    comp, level, use_shuffle = resolve_compression(
        compression, compression_level, shuffle
    )
    chunks = chunk_shape(
        n_subjects,
        n_elements,
        dtype=dt,
        chunk_voxels=chunk_voxels,
        target_chunk_mb=target_chunk_mb,
    )
    dset = f.create_dataset(
        _layout.ma_values_path(scalar).lstrip("/"),
        shape=(n_subjects, n_elements),
        dtype=dt,
        chunks=chunks,
        compression=comp,
        compression_opts=level if comp == "gzip" else None,
        shuffle=use_shuffle,
    )
    write_column_names(f, scalar, column_names)
    cw = chunks[1]
    per_chunk = n_subjects * cw * dt.itemsize
    width = cw * max(1, int(stripe_bytes // max(per_chunk, 1)))
    direct = comp != "lzf"
    spec = filter_spec(dset) if direct else None
    pending: collections.deque[tuple[tuple[int, int], Future[bytes]]] = (
        collections.deque()
    )
    n_threads = threads or default_threads()
    max_pending = max(4 * n_threads, 2 * (width // cw))

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
                block = block.astype(dt, copy=False)
                if not direct:
                    dset[:, start:stop] = block
                else:
                    assert spec is not None
                    for c0 in range(start, stop, cw):
                        part = block[:, c0 - start : min(c0 + cw, stop) - start]
                        fut = pool.submit(
                            encode_chunk,
                            part,
                            chunks,
                            level=spec.level,
                            shuffle=spec.shuffle,
                            fill=0,
                        )
                        pending.append(((0, c0), fut))
                    drain(max_pending)
                if progress is not None:
                    progress(stop - start)
            drain(0)
        finally:
            for _, fut in pending:
                fut.cancel()
    return dset


# --------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------


def _decode_names(path: str, values: Any) -> list[str]:
    """Names from an attribute or dataset value: bytes or str, vlen or fixed."""
    arr = np.asarray(values, dtype=object).reshape(-1)
    return [decode_str(v).rstrip("\x00").strip() for v in arr]


def list_scalars(path: str, f: h5py.File) -> list[str]:
    """Names of the groups under ``/scalars`` that hold a ``values`` dataset."""
    grp = get_link(path, f, _layout.MA_SCALARS)
    if not isinstance(grp, h5py.Group):
        return []
    return [
        k for k in grp if isinstance(get_link(path, grp, f"{k}/values"), h5py.Dataset)
    ]


def list_analyses(path: str, f: h5py.File) -> list[str]:
    """Names of the groups under ``/results`` that hold a ``results_matrix``."""
    grp = get_link(path, f, _layout.MA_RESULTS)
    if not isinstance(grp, h5py.Group):
        return []
    return [
        k
        for k in grp
        if isinstance(get_link(path, grp, f"{k}/results_matrix"), h5py.Dataset)
    ]


def scalar_column_names(path: str, f: h5py.File, scalar: str) -> list[str]:
    """Source names of a scalar, looked up in ModelArray's order.

    The attribute ``column_names`` on ``values`` first, then the datasets
    ``scalars/<s>/column_names``, ``scalars/<s>/values/column_names``,
    ``scalars/scalars/<s>/values/column_names`` and
    ``scalars/scalars/<s>/column_names``.
    """
    values = get_link(path, f, _layout.ma_values_path(scalar))
    if values is not None and "column_names" in values.attrs:
        return _decode_names(path, values.attrs["column_names"])
    for p in (
        _layout.ma_column_names_path(scalar),
        f"{_layout.MA_SCALARS}/{scalar}/values/column_names",
        f"{_layout.MA_SCALARS}/scalars/{scalar}/values/column_names",
        f"{_layout.MA_SCALARS}/scalars/{scalar}/column_names",
    ):
        obj = get_link(path, f, p)
        if isinstance(obj, h5py.Dataset):
            return [str(s) for s in read_strings(path, obj).reshape(-1)]
    raise ClusterH5Error(path, f"scalar {scalar!r} has no column_names (source files)")


def result_names(path: str, f: h5py.File, analysis: str) -> list[str] | None:
    """Statistic names of an analysis, in ModelArrayIO's lookup order, or None.

    1. attribute ``colnames`` on ``results_matrix`` (legacy writers);
    2. dataset ``results/<a>/column_names`` (R ``writeResults``: variable-length;
       the streaming writer: fixed-length, NUL-padded);
    3. dataset ``results/<a>/results_matrix/column_names``.

    Names are decoded as UTF-8 with trailing NULs and whitespace stripped. Unlike
    ModelArrayIO, empty names are kept in place (ModelArrayIO drops them, which
    shifts every later name onto the wrong row).
    """
    matrix = get_link(path, f, _layout.ma_results_matrix_path(analysis))
    if matrix is None:
        raise ClusterH5Error(path, f"no results for analysis {analysis!r}")
    if "colnames" in matrix.attrs:
        names = _decode_names(path, matrix.attrs["colnames"])
        if any(names):
            return names
    for p in (
        f"{_layout.MA_RESULTS}/{analysis}/column_names",
        f"{_layout.ma_results_matrix_path(analysis)}/column_names",
    ):
        obj = get_link(path, f, p)
        if isinstance(obj, h5py.Dataset):
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


def read_results(
    path: str | os.PathLike[str], analysis: str, f: h5py.File | None = None
) -> tuple[list[str], np.ndarray]:
    """Statistic names and the (n_stats, n_elements) matrix of one analysis.

    The whole matrix is read at once (R's (32, 32) chunks make row reads slow).
    Missing names become ``component001``... as in ModelArrayIO.
    """
    from xarray_clusterh5._h5 import open_h5

    path = os.fspath(path)
    if f is None:
        with open_h5(path) as fh:
            return read_results(path, analysis, fh)
    names = result_names(path, f, analysis)
    dset = get_link(path, f, _layout.ma_results_matrix_path(analysis))
    assert isinstance(dset, h5py.Dataset)
    transposed = results_orientation(
        path, dset.shape, None if names is None else len(names)
    )
    matrix = dset[()]
    if transposed:
        matrix = matrix.T
    if names is None:
        names = [f"component{i + 1:03d}" for i in range(matrix.shape[0])]
    names = [n if n else f"component{i + 1:03d}" for i, n in enumerate(names)]
    return names, matrix


def read_greyordinates(path: str, f: h5py.File) -> tuple[np.ndarray, np.ndarray] | None:
    """``(vertex_id, structure name per element)`` from ``/greyordinates``, or None."""
    dset = get_link(path, f, _layout.MA_GREYORDINATES)
    if not isinstance(dset, h5py.Dataset):
        return None
    table = dset[()]
    cols = [
        decode_str(c)
        for c in np.asarray(dset.attrs.get("column_names", []), dtype=object)
    ]
    if table.ndim != 2:
        raise ClusterH5Error(
            path, f"/greyordinates must be 2-D, has shape {table.shape}"
        )
    if table.shape[0] != 2 and table.shape[1] == 2:
        table = table.T  # R-written (n, 2) seen from h5py as (2, n) normally
    vi = cols.index("vertex_id") if "vertex_id" in cols else 0
    si = cols.index("structure_id") if "structure_id" in cols else 1
    names = [
        decode_str(s)
        for s in np.asarray(dset.attrs.get("structure_names", []), dtype=object)
    ]
    codes = table[si].astype(np.int64)
    if names and (codes.min(initial=0) < 0 or codes.max(initial=0) >= len(names)):
        raise ClusterH5Error(
            path, "/greyordinates structure_id outside structure_names"
        )
    structure = np.asarray(names, dtype=str)[codes] if names else codes.astype(str)
    return table[vi].astype(np.int64), structure
