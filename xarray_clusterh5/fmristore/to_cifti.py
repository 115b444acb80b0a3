"""Clustered experiments to CIFTI: full runs as ``.dtseries.nii``, summaries as
``.ptseries.nii``.

A full run becomes one volume brain model over the run's voxels, in the
view's own voxel order, with the file's affine and a series axis stepping by
the run's TR; a summary run becomes one parcel per cluster, named from the
cluster metadata (``name`` or ``label`` column) or ``cluster_<id>``.
"""

from __future__ import annotations

import itertools
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from xarray_clusterh5._hdf5.files import output_folder
from xarray_clusterh5._hdf5.names import safe_output_name
from xarray_clusterh5.cifti import write as cifti
from xarray_clusterh5.fmristore import ops

_NAME_COLUMNS = ("name", "label", "cluster_name")


def _tr(meta: dict[str, Any], run: str) -> float:
    tr = meta.get("TR", meta.get("tr"))
    if tr is None or np.size(tr) != 1 or not np.isfinite(float(np.asarray(tr))):
        warnings.warn(
            f"scan {run!r} has no TR in its metadata; the CIFTI series axis uses 1 s",
            UserWarning,
            stacklevel=3,
        )
        return 1.0
    return float(np.asarray(tr).ravel()[0])


def _parcel_names(ds: xr.Dataset) -> list[str]:
    table = ops.cluster_metadata(ds)
    ids = [int(c) for c in np.asarray(ds["cluster"].values)]
    for column in _NAME_COLUMNS:
        if column in table.columns:
            names = [str(v) for v in table[column].tolist()]
            if all(names) and len(set(names)) == len(names):
                return names
    return [f"cluster_{c}" for c in ids]


def _run_views(
    obj: xr.Dataset | xr.DataTree, runs: Sequence[str] | None
) -> list[xr.Dataset]:
    if isinstance(obj, xr.DataTree):
        names = list(runs) if runs is not None else list(obj.children)
        return [obj.clusterh5.run(n) for n in names]
    view = ops.view_of(obj)
    if view == "run":
        return [obj]
    if view != "padded":
        raise ValueError("the geometry root holds no runs to export")
    names = list(runs) if runs is not None else ops.scan_names(obj)
    return [ops.unpad(obj, n) for n in names]


def experiment_to_cifti(
    obj: xr.Dataset | xr.DataTree,
    output_dir: str | os.PathLike[str],
    *,
    runs: Sequence[str] | None = None,
    overwrite: bool = False,
    parents: bool = False,
) -> list[Path]:
    """Write each run as ``<run>.dtseries.nii`` (voxels) / ``<run>.ptseries.nii``.

    Parameters
    ----------
    obj : a padded, run or DataTree view from the ``clusterh5`` engine (or derived).
    output_dir : folder, made if its parent exists; files are written atomically.
    runs : scan names to export; default all.
    overwrite : replace existing files.
    parents : make missing parent folders of ``output_dir`` too.

    Returns
    -------
    list of Path
        The files written, in run order.
    """
    folder = output_folder(output_dir, create=True, parents=parents)
    written: list[Path] = []
    for ds in _run_views(obj, runs):
        run = str(ds.attrs["scan"])
        stem = safe_output_name(run, "scan name")
        meta = ops.scan_metadata(ds)[run]
        shape = ops.volume_shape(ds)
        affine = ops.affine(ds)
        tr = _tr(meta, run)
        ijk = np.stack([np.asarray(ds[c].values) for c in "ijk"], axis=1)
        if "data" in ds:
            data = np.asarray(ds["data"].transpose("voxel", "time").values)
            written.append(
                cifti.write_dtseries(
                    folder / f"{stem}.dtseries.nii",
                    data,
                    ijk,
                    affine,
                    shape,
                    tr,
                    overwrite=overwrite,
                )
            )
        if "summary" in ds:
            offsets = np.concatenate([[0], np.cumsum(ds["n_voxels"].values)])
            parcels = [ijk[a:b] for a, b in itertools.pairwise(offsets)]
            summary = np.asarray(ds["summary"].transpose("cluster", "time").values)
            written.append(
                cifti.write_ptseries(
                    folder / f"{stem}.ptseries.nii",
                    summary,
                    _parcel_names(ds),
                    parcels,
                    affine,
                    shape,
                    tr,
                    overwrite=overwrite,
                )
            )
    return written
