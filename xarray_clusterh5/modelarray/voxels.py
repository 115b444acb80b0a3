"""Voxel-wise NIfTI cohorts: the group mask, ``/voxels``, subject checks, reads.

ModelArrayIO's rules (26.0.0): elements are the group mask's voxels with a
value > 0 in C order of the nibabel array (``np.nonzero``: i slowest, k
fastest); ``/voxels`` is int64 ``(4, n)`` with rows ``voxel_id, i, j, k``;
a subject's value is ``float(get_fdata())`` at those voxels, NaN where the
subject's own mask (``source_mask_file``) is 0. Checks it does not make: every
image and subject mask must have the group mask's shape *and* affine (refused
by name unless ``allow_affine_mismatch``, which warns), and the mask must be
3-D. No xarray here.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from xarray_clusterh5.errors import ClusterH5Error
from xarray_clusterh5.modelarray import layout
from xarray_clusterh5.nifti.read import read_voxels, volume_info

#: affines agree when every entry is within this many millimetres
AFFINE_ATOL = 1e-4


@dataclass(frozen=True)
class VoxelGrid:
    """A group mask: its volume and the voxels that are elements."""

    path: str
    shape: tuple[int, int, int]
    affine: np.ndarray
    ijk: np.ndarray  # (n, 3) int64, C order

    @property
    def n_elements(self) -> int:
        return int(self.ijk.shape[0])

    @property
    def flat_index(self) -> np.ndarray:
        """Fortran-order flat index of each element (NIfTI's storage order)."""
        i, j, k = self.ijk.T
        nx, ny, _ = self.shape
        return i + nx * (j + ny * k)


def load_group_mask(path: str) -> VoxelGrid:
    """The group mask's voxels (> 0), refused by name unless 3-D and non-empty."""
    info = volume_info(path)
    if len(info.shape) != 3:
        raise ClusterH5Error(
            path, f"the group mask must be a 3-D volume, it has shape {info.shape}"
        )
    mask = read_voxels(path).reshape(info.shape, order="F") > 0
    ijk = np.column_stack(np.nonzero(mask)).astype(np.int64)
    if ijk.shape[0] == 0:
        raise ClusterH5Error(path, "the group mask has no voxel > 0")
    nx, ny, nz = info.shape
    return VoxelGrid(path, (nx, ny, nz), info.affine, ijk)


def voxel_table(ijk: np.ndarray) -> np.ndarray:
    """``/voxels`` as ModelArrayIO writes it: int64 rows voxel_id, i, j, k."""
    ijk = np.asarray(ijk, dtype=np.int64).reshape(-1, 3)
    return np.vstack([np.arange(ijk.shape[0], dtype=np.int64), ijk.T])


def write_voxels(f: h5py.File, ijk: np.ndarray) -> h5py.Dataset:
    """Write ``/voxels`` (contiguous int64, ``column_names`` attribute)."""
    dset = f.create_dataset(layout.VOXELS.lstrip("/"), data=voxel_table(ijk))
    dset.attrs["column_names"] = list(layout.VOXEL_COLUMNS)
    return dset


def _check_one(
    grid: VoxelGrid, path: str, what: str, allow_affine_mismatch: bool
) -> str | None:
    """Raise on a wrong shape (or affine); return the accepted mismatch's message."""
    info = volume_info(path)
    if info.shape != grid.shape:
        raise ClusterH5Error(
            path,
            f"{what} has shape {info.shape}, the group mask {grid.path} has "
            f"{grid.shape}",
        )
    if not np.allclose(info.affine, grid.affine, rtol=0, atol=AFFINE_ATOL):
        msg = (
            f"{what}'s affine differs from the group mask's ({grid.path}): "
            f"{np.round(info.affine, 4).tolist()} vs "
            f"{np.round(grid.affine, 4).tolist()}"
        )
        if not allow_affine_mismatch:
            raise ClusterH5Error(path, msg + " (allow_affine_mismatch to accept)")
        return f"{path}: {msg}"
    return None


def check_subjects(
    grid: VoxelGrid,
    sources: Sequence[str],
    masks: Sequence[str | None],
    *,
    allow_affine_mismatch: bool,
    threads: int = 1,
    progress: Callable[[Any], Any] | None = None,
) -> None:
    """Check every image and subject mask against the group mask (headers only)."""
    jobs = [(s, "image") for s in sources]
    jobs += [(m, "subject mask") for m in dict.fromkeys(m for m in masks if m)]
    with ThreadPoolExecutor(max(1, threads)) as pool:  # pragma: no mutate - pool size
        done = pool.map(
            lambda job: _check_one(grid, job[0], job[1], allow_affine_mismatch), jobs
        )
        accepted = [m for m in (progress(done) if progress else done) if m]
    for message in accepted:  # warned here, in the caller's thread
        warnings.warn(message, UserWarning, stacklevel=3)


@dataclass(frozen=True)
class VoxelRows:
    """Loads subject rows of a voxel cohort: float32 at the grid's voxels.

    Picklable (paths and indices only), so dask process workers can use it.
    """

    sources: tuple[str, ...]
    masks: tuple[str | None, ...]
    flat_index: np.ndarray

    def __len__(self) -> int:
        return len(self.sources)

    def load(self, row: int) -> np.ndarray:
        """One subject's values: float32 as stored, float64 when scaled (nibabel's
        ``get_fdata``); the caller casts to the storage type, as ModelArrayIO."""
        values = read_voxels(self.sources[row], self.flat_index)
        # a new array (read at flat_index): the mask may write into it
        if values.dtype.kind != "f":
            values = values.astype(np.float64)
        mask = self.masks[row]
        if mask is not None:
            values[~(read_voxels(mask, self.flat_index) > 0)] = np.nan
        return values

    def token(self) -> object:
        return (self.sources, self.masks, self.flat_index.tobytes())
