"""Write ``/results/<analysis>`` into a ModelArray file as R's ``writeResults`` does.

The layout (h5py's view of what hdf5r writes, see the lm fixtures' listings):

* ``/results/<analysis>/results_matrix``: float64, (n_statistics, n_rows), the
  data.frame transposed; chunked, ``maxshape=(None, None)``, gzip 4;
* ``/results/<analysis>/column_names``: 1-D variable-length ASCII strings,
  chunks (1024,), ``maxshape=(None,)``, gzip 4.

Nothing else in the file is touched. The group is written under a hidden name
(``/results/.<analysis>.partial``) and renamed into place only when complete, so
an interrupted run never leaves a half-written analysis under its final name;
an existing analysis is replaced only with ``overwrite=True``.

No xarray here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import h5py
import numpy as np

from xarray_clusterh5._hdf5.names import check_hdf5_name
from xarray_clusterh5.errors import ClusterH5Error
from xarray_clusterh5.modelarray import layout

#: bytes per results_matrix chunk (R's hdf5r picks (32, 32), slow to write)
CHUNK_BYTES = 1 << 20
PARTIAL_SUFFIX = ".partial"


def results_chunks(n_stats: int, n_rows: int) -> tuple[int, int]:
    """All statistics of a run of rows per chunk, about :data:`CHUNK_BYTES`."""
    width = max(1, min(n_rows, CHUNK_BYTES // (8 * max(n_stats, 1))))
    return (max(n_stats, 1), width)


def write_results(
    path: str | os.PathLike[str],
    analysis: str,
    names: Sequence[str],
    matrix: np.ndarray,
    *,
    overwrite: bool = False,
) -> None:
    """Add one analysis's ``(n_statistics, n_rows)`` matrix to a ModelArray file.

    Parameters
    ----------
    path : an existing ModelArray HDF5 file (opened for appending).
    analysis : the group name under ``/results``.
    names : one column name per statistic (``element_id`` first).
    matrix : (len(names), n_rows) values, stored as float64.
    overwrite : replace an existing analysis of that name.

    Raises
    ------
    ClusterH5Error
        Bad analysis name, shape mismatch, the analysis exists without
        ``overwrite``, or the file cannot be opened for writing.
    """
    path = os.fspath(path)
    check_hdf5_name(analysis, "analysis name")
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != len(names):
        raise ClusterH5Error(
            path, f"{len(names)} column names for a results matrix of {matrix.shape}"
        )
    with _open_for_append(path) as f:
        results = f.require_group(layout.RESULTS.lstrip("/"))
        if analysis in results and not overwrite:
            raise ClusterH5Error(
                path, f"results/{analysis} exists; pass overwrite=True to replace it"
            )
        tmp = f".{analysis}{PARTIAL_SUFFIX}"
        if tmp in results:  # left by an interrupted run
            del results[tmp]
        try:
            _write_group(results.create_group(tmp), names, matrix)
            if analysis in results:
                del results[analysis]
            results.move(tmp, analysis)
        except BaseException:
            if tmp in results:
                del results[tmp]
            raise


def _write_group(grp: h5py.Group, names: Sequence[str], matrix: np.ndarray) -> None:
    grp.create_dataset(
        "results_matrix",
        data=matrix,
        chunks=results_chunks(*matrix.shape),
        maxshape=(None, None),
        compression="gzip",
        compression_opts=4,
    )
    grp.create_dataset(
        "column_names",
        data=np.array([str(n).encode("utf-8") for n in names], dtype=object),
        dtype=h5py.string_dtype(encoding="ascii"),
        chunks=(1024,),
        maxshape=(None,),
        compression="gzip",
        compression_opts=4,
    )


def _open_for_append(path: str) -> h5py.File:
    if not os.path.isfile(path):
        raise ClusterH5Error(path, "no such ModelArray file to add results to")
    try:
        f = h5py.File(path, "r+")
    except OSError as err:
        raise ClusterH5Error(
            path,
            f"cannot be opened for writing ({err}); if a Dataset opened from this "
            "file is still open in this process, compute the results and close it "
            "first",
        ) from err
    if not isinstance(f.get(layout.SCALARS), h5py.Group):
        f.close()
        raise ClusterH5Error(path, "is not a ModelArray file (no /scalars group)")
    return f
