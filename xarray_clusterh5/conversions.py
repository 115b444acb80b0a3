"""Conversions that choose by what a Dataset holds, across formats.

Each format module exports only its own conversion; the choice between them
lives here, in the user layer, so that no format module imports another.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import xarray as xr


def to_cifti(
    obj: xr.Dataset | xr.DataTree,
    output_dir: str | os.PathLike[str],
    *,
    runs: Sequence[str] | None = None,
    analysis: str | None = None,
    example_file: str | os.PathLike[str] | None = None,
    cohort_file: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    progress: bool = False,
    parents: bool = False,
) -> list[Path]:
    """Write CIFTI files for a clustered experiment or ModelArray results.

    Parameters
    ----------
    obj
        A clustered view or DataTree (from the ``clusterh5`` engine or
        ``from_nifti``): writes ``<run>.dtseries.nii`` for full runs and
        ``<run>.ptseries.nii`` for summaries
        (:func:`~xarray_clusterh5.fmristore.to_cifti.experiment_to_cifti`). Any
        other Dataset is taken as ModelArray results and writes ModelArrayIO's
        ``<analysis>_<stat>.dscalar.nii`` exports
        (:func:`~xarray_clusterh5.modelarray.cohort.to_cifti`).
    output_dir
        Folder for the files.
    runs
        Clustered experiments only: the runs to write (default all).
    analysis, example_file, cohort_file, progress
        ModelArray results only: which analysis (default: the only one), the
        CIFTI template, or the cohort CSV whose first file is the template; a
        progress bar.
    overwrite
        Replace existing files.
    parents
        Create ``output_dir``'s missing parent folders.

    Returns
    -------
    list of Path
        The files written.
    """
    from xarray_clusterh5.fmristore import ops

    if isinstance(obj, xr.DataTree) or ops.VIEW_ATTR in obj.attrs:
        _refuse("a clustered experiment", analysis=analysis,
                example_file=example_file, cohort_file=cohort_file)  # fmt: skip
        from xarray_clusterh5.fmristore.to_cifti import experiment_to_cifti

        return experiment_to_cifti(
            obj, output_dir, runs=runs, overwrite=overwrite, parents=parents
        )
    _refuse("ModelArray results", runs=runs)
    from xarray_clusterh5.modelarray.cohort import to_cifti as results_to_cifti

    return results_to_cifti(
        obj, output_dir, analysis=analysis, example_file=example_file,
        cohort_file=cohort_file, overwrite=overwrite, progress=progress,
        parents=parents,
    )  # fmt: skip


def _refuse(what: str, **given: Any) -> None:
    extra = [name for name, value in given.items() if value is not None]
    if extra:
        raise TypeError(f"to_cifti of {what} takes no {', '.join(extra)}")
