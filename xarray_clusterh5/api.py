"""Convenience wrappers that pass the engine class to xarray (no discovery cost)."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

import xarray as xr

from xarray_clusterh5.backend import ClusterH5BackendEntrypoint


def open_dataset(path: str | os.PathLike[str], **kwargs: Any) -> xr.Dataset:
    """``xr.open_dataset(path, engine="clusterh5", **kwargs)``.

    Parameters
    ----------
    path : str or PathLike
        An fmristore clustered experiment or a ModelArray HDF5 file.
    **kwargs
        ``group`` (a scan name, or "/" for the geometry), ``chunks``
        (``{}`` for one dask chunk per on-disk cluster dataset), ``lock``,
        ``locking``, ``drop_variables`` and xarray's own options.
    """
    return xr.open_dataset(path, engine=ClusterH5BackendEntrypoint, **kwargs)


def open_datatree(path: str | os.PathLike[str], **kwargs: Any) -> xr.DataTree:
    """``xr.open_datatree(path, engine="clusterh5", **kwargs)``: one node per scan."""
    return xr.open_datatree(path, engine=ClusterH5BackendEntrypoint, **kwargs)


def open_groups(path: str | os.PathLike[str], **kwargs: Any) -> dict[str, xr.Dataset]:
    """``xr.open_groups(path, engine="clusterh5", **kwargs)``."""
    return xr.open_groups(path, engine=ClusterH5BackendEntrypoint, **kwargs)


# bundled examples: name -> path under xarray_clusterh5/data (see its README)
EXAMPLES = {
    "vignette": "vignette.h5",
    "cohort": "cohort/cohort_thickness.csv",
    "results": "thickness_with_results.h5",
    "voxel_cohort": "voxel_cohort/cohort.csv",
    "fixel_cohort": "fixel_cohort/cohort.csv",
}


def example_file(name: str = "vignette") -> Path:
    """Path of a bundled example file; all were written by the R tools or ModelArrayIO.

    Parameters
    ----------
    name : str
        ``"vignette"`` (default): fmristore's vignette experiment, written by R
        fmristore. ``"cohort"``: a ModelArrayIO cohort CSV of five CIFTI
        thickness maps (paths relative to the CSV's folder). ``"results"``: that
        cohort as a ModelArray HDF5 file with ``results/lm`` written by R
        ModelArray. ``"voxel_cohort"``: a NIfTI cohort CSV (FA and MD of eight
        subjects, per-subject masks; the group mask is
        ``inputs/group_mask.nii.gz`` beside it). ``"fixel_cohort"``: a MIF
        fixel cohort CSV (FD of eight subjects, written by MRtrix; with
        ``inputs/index.mif`` and ``inputs/directions.mif``). Cohort paths are
        relative to the CSV's folder. ``xarray_clusterh5/data/README.md``
        gives their provenance.

    Raises
    ------
    ValueError
        For an unknown name.
    """
    if name not in EXAMPLES:
        raise ValueError(f"unknown example {name!r}; choose from {sorted(EXAMPLES)}")
    return Path(str(resources.files("xarray_clusterh5") / "data" / EXAMPLES[name]))
