"""Conversions between the views, and fmristore's read operations, on xarray objects.

These are plain functions of Datasets and DataTrees (the accessor only calls
them). They work on any object with the views' coordinates, lazy or loaded,
whether it came from a file or was derived from one. Indices are 0-based
(fmristore's R API is 1-based): ``mask_index`` m is the m-th in-mask voxel in
fmristore's mask order (x fastest).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from xarray_clusterh5.fmristore.read import AFFINE_FORMS, AffineForm
from xarray_clusterh5.fmristore.views import (
    GEOMETRY_ATTRS,
    JSON_ENCODING,
    METADATA_PREFIX,
    ROLE,
    RUN_DATA_ATTRS,
    RUN_SUMMARY_ATTRS,
    VIEW_ATTR,
    VIEW_ATTRS,
    flat_coords,
    metadata_attrs,
    time_coord,
)


def view_of(ds: xr.Dataset) -> str:
    """``"padded"``, ``"run"`` or ``"root"``, from the attrs or the dims."""
    view = ds.attrs.get(VIEW_ATTR)
    if view in ("padded", "run", "root"):
        return str(view)
    if "cluster" in ds.dims and ("run" in ds.dims or "run" in ds.coords):
        return "padded"
    if "voxel" in ds.dims or "cluster" in ds.dims:
        return "run"
    raise ValueError("not a clusterh5 view: needs 'run'/'cluster'/'voxel' dims")


#: coordinates along ``run`` besides the scan metadata
_PER_RUN_COORDS = ("n_time", "has_data", "has_summary")


def with_run_dim(ds: xr.Dataset) -> xr.Dataset:
    """A padded view reduced to one run (``ds.sel(run=name)``) with ``run`` back.

    The per-run coordinates (``n_time``, ``has_data``, metadata) get their
    ``run`` dim back too. Any other Dataset is returned as it is.
    """
    if "run" in ds.dims or "run" not in ds.coords or ds["run"].ndim != 0:
        return ds
    if ds.attrs.get(VIEW_ATTR, "padded") != "padded":
        return ds
    scalars = [
        str(name)
        for name, coord in ds.coords.items()
        if name != "run"
        and coord.ndim == 0
        and (name in _PER_RUN_COORDS or coord.attrs.get(ROLE) == "scan_metadata")
    ]
    out = ds.expand_dims("run")
    return out.assign_coords({n: out[n].expand_dims("run") for n in scalars})


def _run_name(ds: xr.Dataset, run: str | None, what: str) -> str:
    """``run``, or the only run of a padded view; else an error naming ``what``."""
    if run is not None:
        return run
    names = scan_names(ds)
    if len(names) == 1:
        return names[0]
    raise ValueError(
        f"{what} of a padded Dataset with {len(names)} runs needs run=<scan name>"
    )


def as_numpy(obj: Any) -> np.ndarray:
    """The values of a DataArray, Variable or array-like as a NumPy array."""
    return np.asarray(obj.values if hasattr(obj, "values") else obj)


def volume_shape(ds: xr.Dataset) -> tuple[int, int, int]:
    """(X, Y, Z) of the volume the clusters live in."""
    x, y, z = (int(v) for v in np.asarray(ds.attrs["volume_shape"]).ravel())
    return x, y, z


def affine(ds: xr.Dataset) -> np.ndarray:
    """The 4x4 voxel-to-world affine (see the ``affine_source`` attribute)."""
    return np.asarray(ds.attrs["affine"], dtype=float).reshape(4, 4)


def affine_form(attrs: Mapping[str, Any]) -> AffineForm:
    """Which header fields hold the affine (attribute ``affine_form``).

    Views made before the attribute existed, or by hand, have an affine
    stored in ``srow_*`` when they have one, else no orientation.
    """
    form = attrs.get("affine_form")
    if form is None:
        return "srow" if "affine" in attrs else "none"
    if form not in AFFINE_FORMS:
        raise ValueError(
            f"attribute 'affine_form' must be one of {AFFINE_FORMS}, got {form!r}"
        )
    return form


def scan_names(ds: xr.Dataset) -> list[str]:
    """Scan names in fmristore's order."""
    view = view_of(ds)
    if view == "padded":
        return [str(v) for v in np.atleast_1d(as_numpy(ds["run"]))]
    if view == "root":
        return [str(v) for v in np.atleast_1d(ds.attrs.get("scans", []))]
    return [str(ds.attrs["scan"])]


def typed_value(value: Any, dtype: str | None) -> Any:
    """A metadata value with the on-disk type the reader recorded restored."""
    if dtype == "str":
        arr = np.asarray(value)
        return str(arr[()]) if arr.ndim == 0 else arr.astype(str)
    if dtype is None:
        return value
    arr = np.asarray(value).astype(np.dtype(dtype))
    return arr[()]  # a NumPy scalar when 0-d, else the array itself


def scan_metadata(ds: xr.Dataset) -> dict[str, dict[str, Any]]:
    """``{scan: {key: value}}`` with the on-disk types; keys sorted as R sorts."""
    ds = with_run_dim(ds)
    if view_of(ds) != "padded":
        meta = {}
        for name, value in ds.attrs.items():
            if name in VIEW_ATTRS:
                continue
            key = name
            if (
                name.startswith(METADATA_PREFIX)
                and name[len(METADATA_PREFIX) :] in VIEW_ATTRS
            ):
                key = name[len(METADATA_PREFIX) :]
            meta[key] = value
        return {str(ds.attrs.get("scan", "")): meta}
    runs = scan_names(ds)
    out: dict[str, dict[str, Any]] = {r: {} for r in runs}
    for coord in ds.coords.values():
        if coord.attrs.get(ROLE) != "scan_metadata":
            continue
        key = coord.attrs["fmristore_key"]
        missing = set(np.atleast_1d(coord.attrs.get("fmristore_missing", [])).tolist())
        dtype = coord.attrs.get("fmristore_dtype")
        is_json = coord.attrs.get("fmristore_encoding") == JSON_ENCODING
        values = as_numpy(coord).ravel()
        for r, run in enumerate(runs):
            if run in missing:
                continue
            value = json.loads(str(values[r])) if is_json else values[r]
            out[run][key] = typed_value(value, dtype)
    return {
        r: dict(sorted(m.items(), key=lambda kv: kv[0].encode()))
        for r, m in out.items()
    }


def cluster_metadata(ds: xr.Dataset) -> pd.DataFrame:
    """The cluster-metadata table (columns in R's order), one row per cluster."""
    cols = {}
    for coord in ds.coords.values():
        if coord.attrs.get(ROLE) == "cluster_metadata":
            values = as_numpy(coord)
            dtype = coord.attrs.get("fmristore_dtype", "str")
            if dtype != "str" and "fmristore_missing" not in coord.attrs:
                values = values.astype(dtype)
            cols[coord.attrs["fmristore_key"]] = values
    order = sorted(cols, key=lambda k: k.encode())
    return pd.DataFrame({k: cols[k] for k in order}, index=as_numpy(ds["cluster"]))


def mask_volume(ds: xr.Dataset) -> xr.DataArray:
    """The mask as a boolean (x, y, z) volume."""
    shape = volume_shape(ds)
    mask = np.zeros(int(np.prod(shape)), dtype=bool)
    idx = _mask_linear(ds)
    mask[idx] = True
    return xr.DataArray(
        mask.reshape(shape, order="F"), dims=("x", "y", "z"), name="mask"
    )


def _mask_linear(ds: xr.Dataset) -> np.ndarray:
    """0-based linear (x fastest) index of every in-mask voxel, in mask order."""
    x, y, _ = volume_shape(ds)
    ii, jj, kk = (as_numpy(ds[c]).ravel() for c in "ijk")
    valid = ii >= 0
    order = np.argsort(as_numpy(ds["mask_index"]).ravel()[valid], kind="stable")
    lin = (ii + x * (jj + y * kk))[valid]
    return lin[order]


def _locate(ds: xr.Dataset, mask_index: Sequence[int] | np.ndarray) -> tuple[Any, ...]:
    """Where each mask index lives: (cluster position, slot) or flat voxel position."""
    wanted = np.asarray(mask_index, dtype=np.int64).ravel()
    mi = as_numpy(ds["mask_index"])
    n_mask = int((mi >= 0).sum())
    bad = (wanted < 0) | (wanted >= n_mask)
    if bad.any():
        raise IndexError(
            f"mask indices {wanted[bad][:5].tolist()} outside 0..{n_mask - 1} "
            "(0-based; fmristore's R indices are 1-based)"
        )
    flat = mi.ravel()
    where = np.empty(n_mask, dtype=np.int64)
    valid = np.flatnonzero(flat >= 0)
    where[flat[valid]] = valid
    pos = where[wanted]
    if mi.ndim == 2:
        return np.divmod(pos, mi.shape[1])
    return (pos,)


def series(
    ds: xr.Dataset, mask_index: Sequence[int] | np.ndarray, run: str | None = None
) -> xr.DataArray:
    """Time series of voxels given by mask index: fmristore's ``series(run, i)``.

    Returns a ``(time, voxel)`` DataArray (R's ``[T, n]``) with a ``mask_index``
    coordinate; lazy when the Dataset is.
    """
    ds = with_run_dim(ds)
    view = view_of(ds)
    if view == "padded":
        run = _run_name(ds, run, "series")
        sub = ds.sel(run=run)
        if not bool(sub["has_data"]):
            raise ValueError(f"scan {run!r} is summary-only: it has no voxel series")
        n_time = int(sub["n_time"])
        c, s = _locate(ds, mask_index)
        data = sub["data"].isel(time=slice(0, n_time))
        out = data.isel(
            cluster=xr.DataArray(c, dims="voxel_pick"),
            voxel=xr.DataArray(s, dims="voxel_pick"),
        )
    else:
        if "data" not in ds:
            raise ValueError(f"scan {ds.attrs.get('scan')!r} has no voxel data")
        (p,) = _locate(ds, mask_index)
        out = ds["data"].isel(voxel=xr.DataArray(p, dims="voxel_pick"))
    out = out.drop_vars([v for v in out.coords if v not in ("time",)])
    out = out.rename({"voxel_pick": "voxel"}).transpose("time", "voxel")
    return out.assign_coords(mask_index=("voxel", np.asarray(mask_index).ravel()))


def series_concat(
    ds: xr.Dataset,
    mask_index: Sequence[int] | np.ndarray,
    runs: Sequence[str] | None = None,
) -> xr.DataArray:
    """``series`` of several full runs stacked along time (R's ``series_concat``).

    ``runs`` defaults to every run with voxel data (R's default fails on mixed
    experiments; here summary runs are skipped).
    """
    ds = with_run_dim(ds)
    if runs is None:
        runs = np.array(scan_names(ds))[as_numpy(ds["has_data"]).astype(bool)].tolist()
    parts = []
    for r in runs:
        s = series(ds, mask_index, run=r)
        parts.append(s.assign_coords(run=("time", np.full(s.sizes["time"], r))))
    return xr.concat(parts, dim="time")


def summary_matrix(ds: xr.Dataset, run: str | None = None) -> xr.DataArray:
    """A summary run as ``(time, cluster)``: fmristore's ``as.matrix(run)``."""
    ds = with_run_dim(ds)
    if view_of(ds) == "padded":
        run = _run_name(ds, run, "summary_matrix")
        sub = ds.sel(run=run)
        if "summary" not in ds or not bool(sub["has_summary"]):
            raise ValueError(f"scan {run!r} has no summary")
        out = sub["summary"].isel(time=slice(0, int(sub["n_time"])))
    else:
        if "summary" not in ds:
            raise ValueError(f"scan {ds.attrs.get('scan')!r} has no summary")
        out = ds["summary"]
    keep = {"time", "cluster"}
    out = out.drop_vars([v for v in out.coords if v not in keep])
    return out.transpose("time", "cluster")


def run_volume(
    ds: xr.Dataset, run: str | None = None, fill_value: float = 0.0
) -> np.ndarray:
    """A full run as a 4-D (X, Y, Z, T) NumPy array; ``fill_value`` outside the mask.

    fmristore returns 0 outside the mask, hence the default.
    """
    ds = with_run_dim(ds)
    shape = volume_shape(ds)
    flat = ds
    if view_of(ds) == "padded":
        flat = unpad(ds, _run_name(ds, run, "to_volume"))
    if "data" not in flat:
        raise ValueError(f"scan {flat.attrs.get('scan')!r} has no voxel data")
    data = np.asarray(flat["data"].transpose("voxel", "time").values)
    x, y, _ = shape
    lin = as_numpy(flat["i"]) + x * (as_numpy(flat["j"]) + y * as_numpy(flat["k"]))
    out = np.full((int(np.prod(shape)), data.shape[1]), fill_value, dtype=np.float32)
    out[lin] = data
    return out.reshape((*shape, data.shape[1]), order="F")


def to_nifti(ds: xr.Dataset, run: str | None = None, fill_value: float = 0.0) -> Any:
    """A full run as a ``nibabel.Nifti1Image`` with the file's affine (and TR)."""
    import nibabel as nib

    ds = with_run_dim(ds)
    if view_of(ds) == "padded":
        run = _run_name(ds, run, "to_nifti")
    volume = run_volume(ds, run, fill_value)
    img = nib.Nifti1Image(volume, affine(ds))
    meta = scan_metadata(ds).get(
        run if run is not None else str(ds.attrs.get("scan")), {}
    )
    tr = meta.get("TR")
    if tr is not None and np.size(tr) == 1:
        zooms = img.header.get_zooms()
        img.header.set_zooms((*zooms[:3], float(tr)))
        img.header.set_xyzt_units("mm", "sec")
    return img


def cluster_means(ds: xr.Dataset) -> xr.DataArray:
    """Mean time series of every cluster of every full run, lazily, in float64.

    Sums are accumulated in float64 (float32 sums of a large cluster lose
    digits) and the means are returned as float64. Padded view:
    ``(run, cluster, time)`` (NaN for summary-only runs and past each run's
    end). Run view: ``(cluster, time)``.
    """
    if "data" not in ds:
        raise ValueError("no voxel data: nothing to average")
    ds = with_run_dim(ds)
    if view_of(ds) == "padded":
        # sum / size instead of nanmean: no "mean of empty slice" for padding;
        # dtype= converts block by block, cheaper than a float64 copy
        total = ds["data"].sum("voxel", skipna=True, dtype=np.float64)
        valid = ds["has_data"] & (ds["time"] < ds["n_time"])
        mean = (total / ds["n_voxels"]).where(valid)
        return mean.rename("cluster_mean")
    out = ds["data"].astype(np.float64).groupby(ds["voxel_cluster"]).mean()
    return out.rename({"voxel_cluster": "cluster"}).rename("cluster_mean")


def unpad(ds: xr.Dataset, run: str) -> xr.Dataset:
    """One run of a padded Dataset as an exact run view (lazy when ``ds`` is)."""
    ds = with_run_dim(ds)
    if view_of(ds) != "padded":
        raise ValueError("unpad needs the padded (run, cluster, voxel, time) view")
    sub = ds.sel(run=run)
    n_time = int(sub["n_time"])
    n_vox = as_numpy(ds["n_voxels"]).astype(np.int64)
    out_vars: dict[str, Any] = {}
    if "data" in ds and bool(sub["has_data"]):
        blocks = [
            sub["data"]
            .isel(cluster=c, voxel=slice(0, int(n)), time=slice(0, n_time))
            .drop_vars([v for v in sub["data"].coords if v != "time"], errors="ignore")
            for c, n in enumerate(n_vox)
        ]
        data = xr.concat(blocks, dim="voxel", coords="minimal", compat="override")
        out_vars["data"] = xr.Variable(
            ("voxel", "time"), data.variable.data, dict(RUN_DATA_ATTRS)
        )
    if "summary" in ds and bool(sub["has_summary"]):
        summary = (
            sub["summary"].isel(time=slice(0, n_time)).transpose("cluster", "time")
        )
        out_vars["summary"] = xr.Variable(
            ("cluster", "time"), summary.variable.data, dict(RUN_SUMMARY_ATTRS)
        )
    flat = _flat_coords_of_padded(ds)
    result = xr.Dataset(out_vars, coords=flat).assign_coords(time=time_coord(n_time))
    attrs: dict[str, Any] = {VIEW_ATTR: "run", "scan": run}
    classes = np.atleast_1d(ds.attrs.get("scan_class", []))
    runs = scan_names(ds)
    if len(classes) == len(runs) and classes[runs.index(run)]:
        attrs["scan_class"] = str(classes[runs.index(run)])
    attrs.update({k: ds.attrs[k] for k in GEOMETRY_ATTRS if k in ds.attrs})
    attrs.update(metadata_attrs(scan_metadata(ds)[run]))
    result.attrs = attrs
    return result


def _flat_coords_of_padded(ds: xr.Dataset, *, in_tree: bool = False) -> xr.Coordinates:
    """:func:`~xarray_clusterh5.fmristore.views.flat_coords` of a padded view."""
    n_vox = as_numpy(ds["n_voxels"]).astype(np.int64)
    valid = np.arange(ds.sizes["voxel"])[None, :] < n_vox[:, None]
    ijk = np.stack([as_numpy(ds[c])[valid] for c in "ijk"], axis=1)
    cluster_vars = {
        str(name): coord.variable
        for name, coord in ds.coords.items()
        if coord.dims == ("cluster",) and name != "cluster"
    }
    return flat_coords(
        as_numpy(ds["cluster"]),
        n_vox,
        as_numpy(ds["mask_index"])[valid],
        ijk,
        cluster_vars,
        in_tree=in_tree,
    )


def to_tree(ds: xr.Dataset) -> xr.DataTree:
    """The padded view as the exact DataTree (root geometry, one node per run)."""
    ds = with_run_dim(ds)
    runs = scan_names(ds)
    root = xr.Dataset(coords=_flat_coords_of_padded(ds, in_tree=True))
    root.attrs = {
        VIEW_ATTR: "root",
        **{k: ds.attrs[k] for k in GEOMETRY_ATTRS if k in ds.attrs},
    }
    root.attrs["scans"] = runs
    nodes: dict[str, xr.Dataset] = {"/": root}
    for run in runs:
        node = unpad(ds, run)
        node = node.drop_vars([v for v in node.coords if v in root.coords])
        node.attrs = {k: v for k, v in node.attrs.items() if k not in GEOMETRY_ATTRS}
        nodes[f"/{run}"] = node
    return xr.DataTree.from_dict(nodes)


def matrix_concat(ds: xr.Dataset, runs: Sequence[str] | None = None) -> xr.DataArray:
    """Summary runs stacked along time (R's ``matrix_concat``)."""
    ds = with_run_dim(ds)
    if runs is None:
        runs = np.array(scan_names(ds))[
            as_numpy(ds["has_summary"]).astype(bool)
        ].tolist()
    parts = []
    for r in runs:
        m = summary_matrix(ds, r)
        parts.append(m.assign_coords(run=("time", np.full(m.sizes["time"], r))))
    return xr.concat(parts, dim="time")


def _cluster_columns(ds: xr.Dataset) -> tuple[dict, dict, dict]:
    columns: dict[str, np.ndarray] = {}
    missing: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    ids = as_numpy(ds["cluster"])
    for coord in ds.coords.values():
        if coord.attrs.get(ROLE) != "cluster_metadata":
            continue
        key = coord.attrs["fmristore_key"]
        columns[key] = as_numpy(coord)
        gone = np.atleast_1d(coord.attrs.get("fmristore_missing", []))
        missing[key] = np.isin(ids, gone)
        dtypes[key] = str(coord.attrs.get("fmristore_dtype", "str"))
    return columns, missing, dtypes


def experiment_of(tree: xr.DataTree) -> Any:
    """The file model (``reader.Experiment``) that a DataTree view describes."""
    from xarray_clusterh5.fmristore.read import Experiment, ScanInfo

    root = tree.to_dataset()
    x, y, _ = volume_shape(root)
    order = np.argsort(as_numpy(root["mask_index"]), kind="stable")
    lin = as_numpy(root["i"]) + x * (as_numpy(root["j"]) + y * as_numpy(root["k"]))
    scans = []
    for name, node in tree.children.items():
        ds = node.to_dataset()
        run_attrs = {**root.attrs, **node.attrs, "scan": name, VIEW_ATTR: "run"}
        meta = scan_metadata(ds.assign_attrs(run_attrs))[name]
        if "time" not in ds.dims:
            raise ValueError(
                f"run {name!r} has no time dimension (reduced over time?): "
                "a DataTree view needs every run's time series"
            )
        scans.append(
            ScanInfo(
                name=str(name),
                has_data="data" in ds,
                has_summary="summary" in ds,
                n_time=int(ds.sizes["time"]),
                class_attr=node.attrs.get("scan_class"),
                metadata=meta,
            )
        )
    columns, missing, dtypes = _cluster_columns(root)
    return Experiment(
        path=str(tree.encoding.get("source", "<memory>")),
        volume_shape=volume_shape(root),
        spacing=tuple(float(v) for v in np.asarray(root.attrs["spacing"])),  # type: ignore[arg-type]
        affine=affine(root),
        affine_source=str(root.attrs.get("affine_source", "")),
        affine_form=affine_form(root.attrs),
        mask_index=lin[order].astype(np.int64),
        cluster_map=as_numpy(root["voxel_cluster"])[order].astype(np.int32),
        cluster_ids=as_numpy(root["cluster"]).astype(np.int32),
        n_voxels=as_numpy(root["n_voxels"]).astype(np.int64),
        scans=tuple(scans),
        cluster_metadata=columns,
        cluster_metadata_missing=missing,
        cluster_metadata_dtypes=dtypes,
        generation=str(root.attrs.get("fmristore_generation", "2026")),
        root_attrs={
            k: str(root.attrs[k])
            for k in ("fmristore_class", "fmristore_version")
            if k in root.attrs
        },
    )


def tree_to_padded(tree: xr.DataTree) -> xr.Dataset:
    """The DataTree view as the padded Dataset (lazy when the tree is dask-backed)."""
    import dask.array as da

    from xarray_clusterh5.fmristore.views import build_padded

    exp = experiment_of(tree)
    offsets = exp.offsets
    vmax = exp.max_voxels
    tmax = max((s.n_time for s in exp.scans), default=0)

    def pad(block: Any, shape: tuple[int, ...]) -> Any:
        widths = [
            (0, full - have) for have, full in zip(block.shape, shape, strict=True)
        ]
        return da.pad(da.asarray(block), widths, constant_values=np.nan)

    data_runs, summary_runs = [], []
    for scan in exp.scans:
        node = tree[scan.name].to_dataset()
        if "data" in node:
            values = node["data"].transpose("voxel", "time").data
            blocks = [
                pad(values[offsets[c] : offsets[c + 1]], (vmax, tmax))
                for c in range(len(exp.cluster_ids))
            ]
            data_runs.append(da.stack(blocks))
        else:
            data_runs.append(
                da.full((len(exp.cluster_ids), vmax, tmax), np.nan, dtype=np.float32)
            )
        if "summary" in node:
            summ = node["summary"].transpose("cluster", "time").data
            summary_runs.append(pad(summ, (len(exp.cluster_ids), tmax)))
        else:
            summary_runs.append(
                da.full((len(exp.cluster_ids), tmax), np.nan, dtype=np.float32)
            )
    any_data = any(s.has_data for s in exp.scans)
    any_summary = any(s.has_summary for s in exp.scans)
    data = da.stack(data_runs).astype(np.float32) if any_data else None
    summary = da.stack(summary_runs).astype(np.float32) if any_summary else None
    return build_padded(exp, data, summary)
