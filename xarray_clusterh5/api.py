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


def example_file() -> Path:
    """Path of the bundled example: fmristore's vignette file, written by R.

    See ``xarray_clusterh5/data/README.md`` for its provenance.
    """
    return Path(str(resources.files("xarray_clusterh5") / "data" / "vignette.h5"))
