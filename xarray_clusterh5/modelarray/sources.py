"""What a cohort's files give, whatever the modality: one opener for all three.

:func:`open_cohort` checks every file of a CIFTI, NIfTI (voxel-wise) or MIF
(fixel-wise) cohort and returns a :class:`CohortSource`: the element count,
the writer of the element table (``/greyordinates`` or ``/parcels``,
``/voxels``, ``/fixels`` + ``/voxels``), one lazy picklable array per scalar
and the element coordinates. Both the CLI's direct conversion
(:mod:`~xarray_clusterh5.modelarray.convert`) and ``from_cohort`` use it. No
xarray here.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

from xarray_clusterh5._hdf5.chunk_write import default_threads
from xarray_clusterh5.cifti import read as cifti
from xarray_clusterh5.errors import ClusterH5Error
from xarray_clusterh5.modelarray import h5 as modelarray_io

#: memory for one pass over a NIfTI/MIF cohort (files are read whole, so the
#: matrix is written in as few element stripes as fit in this budget)
PASS_BYTES = 1 << 30


class RowCohortArray:
    """Array-like (n_files, n_elements) whose rows are read whole from files.

    For compressed or re-ordered images (``.nii.gz``, MIF layouts) a row is
    read and decoded at once; indexing is outer (orthogonal), as dask and
    xarray ask for it. Holds no open file, so it pickles to dask workers.
    """

    def __init__(self, rows: Any, n_elements: int) -> None:
        self.rows = rows
        self.shape = (len(rows), int(n_elements))
        self.dtype = np.dtype("float32")
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def __dask_tokenize__(self) -> object:
        return (type(self.rows).__name__, self.rows.token(), self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (2 - len(key))
        if len(key) != 2 or any(k is Ellipsis for k in key):
            key = tuple(slice(None) if k is Ellipsis else k for k in key)[:2]
        rows = np.arange(self.shape[0])[key[0]]
        cols = np.arange(self.shape[1])[key[1]]
        rows_1d = np.atleast_1d(rows)
        out = np.empty((rows_1d.size, np.atleast_1d(cols).size), self.dtype)
        for i, r in enumerate(rows_1d):
            out[i] = self.rows.load(int(r))[np.atleast_1d(cols)]
        if np.ndim(rows) == 0:
            out = out[0]
            return out[0] if np.ndim(cols) == 0 else out
        return out[:, 0] if np.ndim(cols) == 0 else out


def row_stripe_reader(
    array: RowCohortArray, pool: ThreadPoolExecutor, dtype: Any = "float32"
) -> Callable[[int, int], np.ndarray]:
    """``read(start, stop)``: every file read whole in threads, columns kept,
    cast to the storage ``dtype`` (float64 storage keeps scaled values exact)."""
    n = array.shape[0]
    by_range = getattr(array.rows, "seekable", lambda: False)()

    def read(start: int, stop: int) -> np.ndarray:
        out = np.empty((n, stop - start), dtype=dtype)

        def one(i: int) -> None:
            if by_range:  # plain .mif: only the stripe's bytes
                out[i] = array.rows.load_columns(i, start, stop)
            else:
                out[i] = array.rows.load(i)[start:stop]

        list(pool.map(one, range(n)))
        return out

    return read


@dataclass(frozen=True)
class CohortSource:
    """A checked cohort: elements, element table, lazy arrays, coordinates."""

    kind: str
    n_elements: int
    write_elements: Callable[[h5py.File], Any]
    arrays: dict[str, Any]
    #: element coordinates (name -> 1-D array along the elements)
    coords: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    #: bytes of one stripe when streaming into a ModelArray file
    stripe_bytes: int = modelarray_io.STRIPE_BYTES

    def stripe_reader(
        self,
        scalar: str,
        pool: ThreadPoolExecutor,
        threads: int,
        dtype: Any,
        held: ExitStack,
    ) -> Callable[[int, int], np.ndarray]:
        """How to read element stripes of ``scalar``; files held open are
        closed with ``held``."""
        arr = self.arrays[scalar]
        if isinstance(arr, RowCohortArray):
            return row_stripe_reader(arr, pool, dtype)
        return modelarray_io.stripe_reader(arr, pool, threads, held)


def _bar(progress: bool, total: int, desc: str) -> Callable[[Any], Any] | None:
    if not progress:
        return None
    from tqdm.auto import tqdm

    return lambda it: tqdm(it, total=total, desc=desc, unit="file", file=sys.stderr)


def _cifti_coords(ref: cifti.BrainModel | cifti.ParcelModel) -> dict[str, np.ndarray]:
    if isinstance(ref, cifti.ParcelModel):
        return {k: v.astype(object) for k, v in ref.element_names().items()}
    voxel = ref.voxel
    return {
        "structure": ref.structure.astype(object),
        "vertex": ref.vertex,
        "voxel_i": voxel[:, 0],
        "voxel_j": voxel[:, 1],
        "voxel_k": voxel[:, 2],
    }


def _open_cifti(
    resolved: Sequence[str], rows: dict[str, np.ndarray], map_index: int | None,
    progress: bool, threads: int | None,
) -> CohortSource:  # fmt: skip
    ref, blocks = modelarray_io.check_cohort_files(
        resolved, map_index, progress, threads
    )
    arrays = {
        s: modelarray_io.CohortArray([blocks[i] for i in r], ref.n_elements)
        for s, r in rows.items()
    }
    writer = modelarray_io.element_writer(ref)
    attrs = {"cifti_template": resolved[0]}
    return CohortSource(
        "cifti", ref.n_elements, writer, arrays, _cifti_coords(ref), attrs
    )


def _open_nifti(
    csv: str, table: modelarray_io.CohortTable, resolved: Sequence[str],
    rows: dict[str, np.ndarray], mask: str, relative_to: Any,
    storage_options: dict[str, Any] | None,
    allow_affine_mismatch: bool, progress: bool, threads: int,
) -> CohortSource:  # fmt: skip
    from xarray_clusterh5.modelarray import voxels

    grid = voxels.load_group_mask(mask)
    masks: list[str | None] = [None] * len(resolved)
    col = table.column("source_mask_file")
    listed = [i for i, v in enumerate(col) if v is not None]
    paths = modelarray_io.resolve_sources(
        csv, [str(col[i]) for i in listed], relative_to, storage_options
    )
    for i, p in zip(listed, paths, strict=True):
        masks[i] = p
    voxels.check_subjects(
        grid, resolved, masks, allow_affine_mismatch=allow_affine_mismatch,
        threads=threads,
        progress=_bar(progress, len(resolved), "checking NIfTI headers"),
    )  # fmt: skip
    flat = grid.flat_index
    arrays = {
        s: RowCohortArray(
            voxels.VoxelRows(
                tuple(resolved[i] for i in r), tuple(masks[i] for i in r), flat
            ),
            grid.n_elements,
        )
        for s, r in rows.items()
    }
    ijk = grid.ijk
    coords = {"i": ijk[:, 0], "j": ijk[:, 1], "k": ijk[:, 2]}
    attrs: dict[str, Any] = {
        "mask_file": os.path.abspath(grid.path),
        "volume_shape": list(grid.shape),
        "affine": grid.affine,
    }
    return CohortSource(
        "nifti", grid.n_elements, lambda f: voxels.write_voxels(f, ijk), arrays,
        coords, attrs, PASS_BYTES,
    )  # fmt: skip


def _open_mif(
    resolved: Sequence[str], rows: dict[str, np.ndarray], index_file: str,
    directions_file: str, progress: bool, threads: int,
) -> CohortSource:  # fmt: skip
    from xarray_clusterh5.modelarray import fixels

    table = fixels.read_fixel_table(index_file, directions_file)
    fixels.check_subjects(
        table, resolved, threads=threads,
        progress=_bar(progress, len(resolved), "checking MIF headers"),
    )  # fmt: skip
    arrays = {
        s: RowCohortArray(
            fixels.FixelRows(tuple(resolved[i] for i in r)), table.n_elements
        )
        for s, r in rows.items()
    }
    ijk = table.voxel_ijk[table.fixel_voxel]
    coords = {
        "voxel_id": table.fixel_voxel,
        "x": table.directions[:, 0],
        "y": table.directions[:, 1],
        "z": table.directions[:, 2],
        "voxel_i": ijk[:, 0],
        "voxel_j": ijk[:, 1],
        "voxel_k": ijk[:, 2],
    }
    attrs = {
        "index_file": os.path.abspath(table.index_file),
        "directions_file": os.path.abspath(table.directions_file),
        "mif_template": resolved[0],
    }
    seekable = all(a.rows.seekable() for a in arrays.values())
    return CohortSource(
        "mif", table.n_elements, lambda f: fixels.write_fixels(f, table), arrays,
        coords, attrs, modelarray_io.STRIPE_BYTES if seekable else PASS_BYTES,
    )  # fmt: skip


def check_modality_options(
    csv: str,
    kind: str,
    mask: Any,
    index_file: Any,
    directions_file: Any,
) -> None:
    """Each modality needs its files (ModelArrayIO's messages) and only those."""
    if kind == "nifti" and mask is None:
        raise ClusterH5Error(
            csv,
            "detected NIfTI data but no group mask was given "
            "(--mask / mask=): supply the binary group mask NIfTI file",
        )
    if kind == "mif" and (index_file is None or directions_file is None):
        raise ClusterH5Error(
            csv,
            "detected MIF/fixel data but --index-file and/or "
            "--directions-file (index_file=, directions_file=) were not given; "
            "both are required for MIF data",
        )
    if kind != "nifti" and mask is not None:
        raise ClusterH5Error(csv, f"a group mask is for NIfTI cohorts; this is {kind}")
    if kind != "mif" and (index_file is not None or directions_file is not None):
        raise ClusterH5Error(
            csv, f"index and directions files are for MIF cohorts; this is {kind}"
        )


def open_cohort(
    table: modelarray_io.CohortTable,
    rows: dict[str, np.ndarray],
    kind: str,
    *,
    relative_to: Any = None,
    storage_options: dict[str, Any] | None = None,
    map_index: int | None = None,
    mask: Any = None,
    index_file: Any = None,
    directions_file: Any = None,
    allow_affine_mismatch: bool = False,
    progress: bool = False,
    threads: int | None = None,
) -> CohortSource:
    """Check a normalised cohort's files and return its :class:`CohortSource`.

    Raises
    ------
    ClusterH5Error
        Naming the file: unreadable, another shape, affine, brain model or
        fixel count than the reference (group mask, index/directions, first file).
    """
    csv = table.path
    check_modality_options(csv, kind, mask, index_file, directions_file)
    resolved = modelarray_io.resolve_sources(
        csv, table.source_file, relative_to, storage_options
    )
    n_threads = threads or default_threads()
    if kind == "cifti":
        return _open_cifti(resolved, rows, map_index, progress, threads)
    if map_index is not None:
        raise ValueError("map_index (--cifti-map) applies to CIFTI cohorts only")
    if kind == "nifti":
        return _open_nifti(
            csv, table, resolved, rows, str(mask), relative_to, storage_options,
            allow_affine_mismatch, progress, n_threads,
        )  # fmt: skip
    if kind == "mif":
        return _open_mif(
            resolved, rows, str(index_file), str(directions_file), progress, n_threads
        )
    raise ClusterH5Error(csv, f"unknown modality {kind!r}")
