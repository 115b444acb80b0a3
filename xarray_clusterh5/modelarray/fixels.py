"""Fixel-wise MIF cohorts: ``index.mif``/``directions.mif`` to ``/fixels`` and
``/voxels``, subject checks and reads.

ModelArrayIO's rules (26.0.0): the index image (MRtrix logical order) holds per
voxel the fixel count (volume 0) and the first fixel's offset (volume 1);
``/voxels`` int64 ``(4, n_voxels)`` lists the non-empty voxels (``voxel_id, i,
j, k``) sorted by first-fixel offset; ``/fixels`` float64 ``(5, n_fixels)``
holds ``fixel_id, voxel_id, x, y, z`` (directions widened from float32). What
we do differently: offsets are read as integers (ModelArrayIO reads them as
float32, wrong past 2**24 fixels), a one-slice grid keeps its three axes
(ModelArrayIO's ``squeeze`` drops one and fails), each voxel's fixels must form
one contiguous block covering every direction exactly once, and every subject
must hold exactly the template's fixel count (ModelArrayIO cuts longer subjects
short). No xarray here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from xarray_clusterh5.errors import ClusterH5Error
from xarray_clusterh5.mif.header import is_gzip, read_header
from xarray_clusterh5.mif.read import read_mif, read_range, read_values
from xarray_clusterh5.modelarray import layout


@dataclass(frozen=True)
class FixelTable:
    """Where every fixel is: its voxel and direction."""

    index_file: str
    directions_file: str
    voxel_ijk: np.ndarray  # (n_voxels, 3) int64, sorted by first-fixel offset
    fixel_voxel: np.ndarray  # (n_fixels,) int64 voxel_id of each fixel
    directions: np.ndarray  # (n_fixels, 3) float32

    @property
    def n_elements(self) -> int:
        return int(self.fixel_voxel.size)


def _index_volumes(path: str) -> tuple[np.ndarray, np.ndarray]:
    h, data = read_mif(path, scaled=False)
    if data.ndim != 4 or data.shape[3] != 2:
        raise ClusterH5Error(
            path, f"a fixel index image is 4-D with 2 volumes, this one is {h.dim}"
        )
    if data.dtype.kind not in "iu":
        raise ClusterH5Error(path, f"fixel index must be integers, not {data.dtype}")
    return data[..., 0].astype(np.int64), data[..., 1].astype(np.int64)


def _directions(path: str) -> np.ndarray:
    _, data = read_mif(path)
    extra = data.shape[2:]
    if data.ndim < 2 or data.shape[1] != 3 or any(s != 1 for s in extra):
        raise ClusterH5Error(
            path, f"fixel directions must be N x 3 (x 1), not {data.shape}"
        )
    return np.asarray(data.reshape(data.shape[0], 3), dtype=np.float32)


def read_fixel_table(
    index_file: str | os.PathLike[str], directions_file: str | os.PathLike[str]
) -> FixelTable:
    """Read and check the index and directions images."""
    ipath, dpath = os.fspath(index_file), os.fspath(directions_file)
    count, offset = _index_volumes(ipath)
    directions = _directions(dpath)
    if (count < 0).any():
        raise ClusterH5Error(ipath, "negative fixel counts in the index image")
    nonempty = count > 0
    ijk = np.column_stack(np.nonzero(nonempty)).astype(np.int64)
    order = np.argsort(offset[nonempty], kind="stable")
    counts, starts = count[nonempty][order], offset[nonempty][order]
    expected = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    if not np.array_equal(starts, expected):
        raise ClusterH5Error(
            ipath,
            "voxels' fixels do not form consecutive blocks from fixel 0 (offsets "
            "overlap or leave gaps)",
        )
    n_fixels = int(counts.sum())
    if n_fixels != directions.shape[0]:
        raise ClusterH5Error(
            ipath,
            f"index and directions disagree: the index lists {n_fixels} fixels, "
            f"{dpath} has {directions.shape[0]} directions",
        )
    fixel_voxel = np.repeat(np.arange(counts.size, dtype=np.int64), counts)
    return FixelTable(ipath, dpath, ijk[order], fixel_voxel, directions)


def fixel_table_array(t: FixelTable) -> np.ndarray:
    """``/fixels`` as ModelArrayIO writes it: float64 fixel_id, voxel_id, x, y, z."""
    n = t.n_elements
    ids = np.arange(n, dtype=np.float64)
    return np.vstack(
        [ids, t.fixel_voxel.astype(np.float64), t.directions.T.astype(np.float64)]
    )


def write_fixels(f: h5py.File, t: FixelTable) -> None:
    """Write ``/fixels`` and ``/voxels`` (contiguous, ``column_names`` attributes)."""
    from xarray_clusterh5.modelarray.voxels import write_voxels

    dset = f.create_dataset(layout.FIXELS.lstrip("/"), data=fixel_table_array(t))
    dset.attrs["column_names"] = list(layout.FIXEL_COLUMNS)
    write_voxels(f, t.voxel_ijk)


def _check_one(path: str, n_fixels: int) -> None:
    h = read_header(path)
    if h.n_values != n_fixels or sum(d > 1 for d in h.dim) > 1:
        raise ClusterH5Error(
            path,
            f"fixel data has dim {h.dim} ({h.n_values} values); the index and "
            f"directions list {n_fixels} fixels",
        )
    if h.dtype.kind == "c":
        raise ClusterH5Error(path, "complex MIF data cannot be read as scalars")


def check_subjects(
    table: FixelTable,
    sources: Sequence[str],
    *,
    threads: int = 1,
    progress: Callable[[Any], Any] | None = None,
) -> None:
    """Every subject file must be MIF with exactly the table's fixel count."""
    with ThreadPoolExecutor(max(1, threads)) as pool:  # pragma: no mutate - pool size
        done = pool.map(lambda p: _check_one(p, table.n_elements), sources)
        list(progress(done) if progress is not None else done)


@dataclass(frozen=True)
class FixelRows:
    """Loads subject rows of a fixel cohort as float32; picklable."""

    sources: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.sources)

    def load(self, row: int) -> np.ndarray:
        return read_values(self.sources[row])

    def seekable(self) -> bool:
        """True when no file is gzipped: stripes then read only their bytes."""
        return not any(is_gzip(p) for p in self.sources)

    def load_columns(self, row: int, start: int, stop: int) -> np.ndarray:
        """Fixels ``start:stop`` of one subject, reading only those bytes."""
        path = self.sources[row]
        return read_range(path, read_header(path), start, stop)

    def token(self) -> object:
        return self.sources
