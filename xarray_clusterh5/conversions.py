"""Conversions that choose by what a Dataset holds, across formats.

Each format module exports only its own conversion; the choice between them
lives here, in the user layer, so that no format module imports another.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import xarray as xr


def to_cifti(
    obj: xr.Dataset | xr.DataTree, output_dir: str | os.PathLike[str], **kwargs: Any
) -> list[Path]:
    """Write CIFTI files for a clustered experiment or ModelArray results.

    A clustered view or DataTree (from the ``clusterh5`` engine) writes
    ``<run>.dtseries.nii`` / ``<run>.ptseries.nii``
    (:func:`xarray_clusterh5.fmristore.to_cifti.experiment_to_cifti`); any other
    Dataset is taken as ModelArray results and writes ModelArrayIO's
    ``<analysis>_<stat>.dscalar.nii`` exports
    (:func:`xarray_clusterh5.modelarray.cohort.to_cifti`). ``kwargs`` go to the
    chosen function.
    """
    from xarray_clusterh5.fmristore import ops

    if isinstance(obj, xr.DataTree) or ops.VIEW_ATTR in obj.attrs:
        from xarray_clusterh5.fmristore.to_cifti import experiment_to_cifti

        return experiment_to_cifti(obj, output_dir, **kwargs)
    from xarray_clusterh5.modelarray.cohort import to_cifti as results_to_cifti

    return results_to_cifti(obj, output_dir, **kwargs)
