"""The ``clusterh5`` xarray engine (entry point).

xarray imports this module when it looks for engines, so it imports nothing
heavy at module level (no h5py, no dask); the work happens in ``_engine``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar

from xarray.backends import BackendEntrypoint

if TYPE_CHECKING:
    import xarray as xr


class ClusterH5BackendEntrypoint(BackendEntrypoint):
    """Open fmristore clustered experiments and ModelArray HDF5 files.

    ``xr.open_dataset(path, engine="clusterh5")`` gives the padded
    ``(run, cluster, voxel, time)`` view; ``group=SCAN`` one scan exactly;
    ``group="/"`` the shared geometry; ``xr.open_datatree`` one node per scan.
    ModelArray files (``/scalars``, ``/results``) open as element-wise Datasets.

    Parameters accepted by every open function: ``lock`` (None: xarray's
    HDF5 lock; False: none; or any lock object, as in rioxarray),
    ``locking`` (HDF5 file locking, passed to h5py), ``rdcc_nbytes``
    (h5py's chunk cache size) and ``storage_options`` (for fsspec URLs).

    Sources: a local path, an fsspec URL (``https://``, ``s3://``,
    ``memory://`` ...; needs the ``remote`` extra) or an open binary file
    object, as with xarray's h5netcdf engine.
    """

    description = "fmristore clustered fMRI and ModelArray HDF5 files (.h5)"
    url = "https://github.com/xarray-clusterh5/xarray-clusterh5"
    supports_groups: ClassVar[bool] = True

    def guess_can_open(self, filename_or_obj: Any) -> bool:
        """True for local HDF5 files holding either supported layout; never raises."""
        try:
            from xarray_clusterh5 import _engine

            return _engine.guess_can_open(filename_or_obj)
        except Exception:
            return False

    def open_dataset(
        self,
        filename_or_obj: str | os.PathLike[Any] | Any,
        *,
        drop_variables: str | Iterable[str] | None = None,
        group: str | None = None,
        lock: Any = None,
        locking: bool | None = None,
        rdcc_nbytes: int | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> xr.Dataset:
        """Open one view as a lazy Dataset (see the class docstring)."""
        from xarray_clusterh5 import _engine

        return _engine.open_dataset(
            filename_or_obj,
            drop_variables=drop_variables,
            group=group,
            lock=lock,
            locking=locking,
            rdcc_nbytes=rdcc_nbytes,
            storage_options=storage_options,
        )

    def open_groups_as_dict(
        self,
        filename_or_obj: str | os.PathLike[Any] | Any,
        *,
        drop_variables: str | Iterable[str] | None = None,
        lock: Any = None,
        locking: bool | None = None,
        rdcc_nbytes: int | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> dict[str, xr.Dataset]:
        """Root geometry plus one Dataset per scan, keyed by node path."""
        from xarray_clusterh5 import _engine

        return _engine.open_groups_as_dict(
            filename_or_obj,
            drop_variables=drop_variables,
            lock=lock,
            locking=locking,
            rdcc_nbytes=rdcc_nbytes,
            storage_options=storage_options,
        )

    def open_datatree(
        self,
        filename_or_obj: str | os.PathLike[Any] | Any,
        *,
        drop_variables: str | Iterable[str] | None = None,
        lock: Any = None,
        locking: bool | None = None,
        rdcc_nbytes: int | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> xr.DataTree:
        """The exact DataTree: geometry at the root, one child per scan."""
        from xarray_clusterh5 import _engine

        return _engine.open_datatree(
            filename_or_obj,
            drop_variables=drop_variables,
            lock=lock,
            locking=locking,
            rdcc_nbytes=rdcc_nbytes,
            storage_options=storage_options,
        )
