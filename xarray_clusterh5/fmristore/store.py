"""fmristore views for the engine: lazy arrays over one file manager.

``_engine`` opens the file, reads the :class:`~.read.Experiment` and hands it
here with the file manager and lock; every array built here keeps only those
(no h5py object), so results pickle into dask.distributed workers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from xarray.backends import CachingFileManager
from xarray.core import indexing

from xarray_clusterh5.errors import ClusterH5Error
from xarray_clusterh5.fmristore import views
from xarray_clusterh5.fmristore.arrays import (
    PaddedVoxelArray,
    RunVoxelArray,
    SummaryArray,
)
from xarray_clusterh5.fmristore.read import Experiment, ScanInfo


def _lazy(array: Any) -> indexing.LazilyIndexedArray:
    return indexing.LazilyIndexedArray(array)


def _run_arrays(
    exp: Experiment,
    scan: ScanInfo,
    manager: CachingFileManager,
    lock: Any,
) -> tuple[Any, Any]:
    data = summary = None
    if scan.has_data:
        data = _lazy(
            RunVoxelArray(
                manager,
                lock,
                exp.path,
                scan.name,
                exp.cluster_ids,
                exp.n_voxels,
                scan.n_time,
            )
        )
    if scan.has_summary:
        summary = _lazy(
            SummaryArray(
                manager,
                lock,
                exp.path,
                (scan.name,),
                np.array([True]),
                np.array([scan.n_time]),
                len(exp.cluster_ids),
                squeeze_run=True,
            )
        )
    return data, summary


def _scan_for_group(exp: Experiment, group: str) -> ScanInfo:
    name = group.strip("/")
    if name.startswith("scans/"):
        name = name[len("scans/") :]
    try:
        return exp.scan(name)
    except KeyError:
        raise ClusterH5Error(
            exp.path, f"no group {group!r}; scans are {list(exp.scan_names)}"
        ) from None


def _padded(exp: Experiment, manager: CachingFileManager, lock: Any) -> xr.Dataset:
    scans = exp.scans
    names = tuple(s.name for s in scans)
    n_time = [s.n_time for s in scans]
    data = summary = None
    if any(s.has_data for s in scans):
        data = _lazy(
            PaddedVoxelArray(
                manager,
                lock,
                exp.path,
                names,
                np.array([s.has_data for s in scans]),
                np.array(n_time),
                exp.cluster_ids,
                exp.n_voxels,
            )
        )
    if any(s.has_summary for s in scans):
        summary = _lazy(
            SummaryArray(
                manager,
                lock,
                exp.path,
                names,
                np.array([s.has_summary for s in scans]),
                np.array(n_time),
                len(exp.cluster_ids),
            )
        )
    return views.build_padded(exp, data, summary)


def dataset(
    exp: Experiment, manager: CachingFileManager, lock: Any, group: str | None
) -> xr.Dataset:
    """The padded view, one scan (``group=SCAN``) or the geometry (``group="/"``)."""
    if group in (None, ""):
        return _padded(exp, manager, lock)
    if group.strip("/") == "":
        return views.build_root(exp)
    scan = _scan_for_group(exp, group)
    return views.build_run(exp, scan, *_run_arrays(exp, scan, manager, lock))


def groups(
    exp: Experiment, manager: CachingFileManager, lock: Any
) -> dict[str, xr.Dataset]:
    """``{"/": geometry, "/<scan>": run view without geometry, ...}``."""
    out = {"/": views.build_root(exp)}
    for scan in exp.scans:
        data, summary = _run_arrays(exp, scan, manager, lock)
        out[f"/{scan.name}"] = views.build_run(
            exp, scan, data, summary, with_geometry=False
        )
    return out
