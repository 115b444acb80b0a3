"""``modelarrayio to-modelarray`` without xarray: the CLI's direct conversion.

Every modality (CIFTI, NIfTI voxel-wise, MIF fixel-wise) goes through the same
steps: the CSV normalised as ModelArrayIO does, every file checked
(:func:`~xarray_clusterh5.modelarray.sources.open_cohort`), then each scalar
streamed into compressed chunks by the one writing loop
(:func:`~xarray_clusterh5.modelarray.h5.write_modelarray`) that
``cohort.to_modelarray`` also uses, so both write the same files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from xarray_clusterh5.modelarray import h5 as modelarray_io
from xarray_clusterh5.modelarray.sources import check_modality_options, open_cohort


def cohort_to_h5(
    cohort_csv: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    scalar_columns: Sequence[str] | None = None,
    split_files: bool | None = None,
    relative_to: str | os.PathLike[str] | None = None,
    map_index: int | None = None,
    mask: str | os.PathLike[str] | None = None,
    index_file: str | os.PathLike[str] | None = None,
    directions_file: str | os.PathLike[str] | None = None,
    allow_affine_mismatch: bool = False,
    dtype: Any = "float32",
    compression: str | None = "gzip",
    compression_level: int = 4,
    shuffle: bool = True,
    chunk_voxels: int = 0,
    target_chunk_mb: float = 2.0,
    overwrite: bool = False,
    progress: bool = False,
    threads: int | None = None,
    parents: bool = False,
) -> list[Path]:
    """Convert a cohort CSV to ModelArray HDF5 file(s), as ModelArrayIO does.

    Parameters
    ----------
    cohort_csv, output : the cohort and the output ``.h5``.
    scalar_columns : wide format: the columns holding file paths.
    split_files : one file per scalar; None = split wide cohorts only.
    relative_to : base of relative paths (see ``h5.resolve_sources``).
    map_index : CIFTI only: map of multi-map files.
    mask : NIfTI only (required): the group mask.
    index_file, directions_file : MIF only (both required).
    allow_affine_mismatch : NIfTI: accept images whose affine differs from the
        group mask's (with a warning) instead of refusing them.
    dtype, compression, compression_level, shuffle, chunk_voxels, target_chunk_mb :
        storage (``h5.StorageOptions``).
    overwrite, progress, threads : replace outputs, progress bars, threads.
    parents : make the output's missing folders (ModelArrayIO does; the CLI
        passes True); otherwise a missing folder is refused before any reading.

    Returns
    -------
    The files written, each renamed into place only when complete.
    """
    csv = os.fspath(cohort_csv)
    table = modelarray_io.read_cohort_table(csv, scalar_columns)
    kind = modelarray_io.check_modality(csv, table.source_file)
    check_modality_options(csv, kind, mask, index_file, directions_file)
    options = modelarray_io.StorageOptions(
        dtype, compression, compression_level, shuffle, chunk_voxels,
        target_chunk_mb, threads,
    )  # fmt: skip
    options.check()  # refuse bad options before reading any file
    rows = modelarray_io.scalar_rows(table.scalar_name)
    if split_files is None:
        split_files = bool(scalar_columns)
    plan = modelarray_io.output_plan(output, list(rows), split_files)
    modelarray_io.check_outputs(plan, overwrite, parents)
    src = open_cohort(
        table, rows, kind, relative_to=relative_to, map_index=map_index,
        mask=mask, index_file=index_file, directions_file=directions_file,
        allow_affine_mismatch=allow_affine_mismatch, progress=progress,
        threads=threads,
    )  # fmt: skip
    sources = table.source_file
    n_threads = options.n_threads()
    with (
        ThreadPoolExecutor(n_threads, thread_name_prefix="cohort-read") as pool,
        ExitStack() as held_files,
    ):
        streams = {
            s: modelarray_io.ScalarStream(
                s,
                [sources[i] for i in r],
                src.stripe_reader(s, pool, n_threads, options.dtype, held_files),
                src.stripe_bytes,
            )
            for s, r in rows.items()
        }
        return modelarray_io.write_modelarray(
            plan, src.write_elements, streams, src.n_elements, options,
            overwrite=overwrite, progress=progress, parents=parents,
        )  # fmt: skip
