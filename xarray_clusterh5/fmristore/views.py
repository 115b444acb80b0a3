"""The three xarray views of a clustered experiment, built from its file model.

* padded: ``data(run, cluster, voxel, time)``, NaN padded; ``voxel`` is the slot
  within a cluster.
* run: one scan, exact; ``data(voxel, time)`` with ``voxel`` flat, cluster by
  cluster (ascending id), and/or ``summary(cluster, time)``.
* root: the geometry shared by every scan (flat voxels and the cluster table),
  the root of the DataTree whose children are run views without the geometry.

The builders take the data as arrays (lazy backend arrays from the engine,
dask or NumPy arrays from other callers such as the NIfTI builder), so that
every way of making a clustered Dataset yields the same coordinates.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from xarray_clusterh5.fmristore.index import ClusterIndex
from xarray_clusterh5.fmristore.read import Experiment, ScanInfo

#: coordinate and variable names the views use themselves; metadata keys that
#: collide with them get a prefix ("scan_" or "cluster_")
RESERVED = frozenset(
    {
        "run", "cluster", "voxel", "time", "data", "summary", "n_voxels", "n_time",
        "has_data", "has_summary", "mask_index", "i", "j", "k", "voxel_cluster",
    }
)  # fmt: skip

RUN_DATA_ATTRS = {"long_name": "voxel time series"}
RUN_SUMMARY_ATTRS = {"long_name": "cluster summary time series"}
VIEW_ATTR = "clusterh5_view"
#: attributes every view carries about the volume and the file (not metadata)
GEOMETRY_ATTRS = (
    "volume_shape",
    "spacing",
    "affine",
    "affine_source",
    "affine_form",
    "fmristore_generation",
    "fmristore_class",
    "fmristore_version",
)
#: every attribute a view sets itself; the run view's other attrs are metadata
VIEW_ATTRS = frozenset(
    {VIEW_ATTR, "scan", "scan_class", "scans", "padding_overhead", *GEOMETRY_ATTRS}
)
#: a metadata key that collides with a view attribute is stored with this prefix
METADATA_PREFIX = "metadata_"  # "padded", "run" or "root"
ROLE = "fmristore_role"


def geometry_attrs(exp: Experiment) -> dict[str, Any]:
    """netCDF-safe attributes describing the volume, its affine and the format."""
    attrs: dict[str, Any] = {
        "volume_shape": np.array(exp.volume_shape, dtype=np.int64),
        "spacing": np.array(exp.spacing, dtype=np.float64),
        "affine": np.asarray(exp.affine, dtype=np.float64).ravel(),
        "affine_source": exp.affine_source,
        "affine_form": exp.affine_form,
        "fmristore_generation": exp.generation,
    }
    attrs.update(exp.root_attrs)
    return attrs


def _metadata_name(key: str, prefix: str, taken: set[str]) -> str:
    name = key
    while name in RESERVED or name in taken:
        name = f"{prefix}{name}"
    return name


def cluster_table(exp: Experiment) -> dict[str, xr.Variable]:
    """``n_voxels`` and every cluster-metadata column, along ``cluster``."""
    out: dict[str, xr.Variable] = {
        "n_voxels": xr.Variable(
            ("cluster",), exp.n_voxels, {"long_name": "voxels in the cluster"}
        )
    }
    for key, values in exp.cluster_metadata.items():
        name = _metadata_name(key, "cluster_", set(out))
        attrs: dict[str, Any] = {
            ROLE: "cluster_metadata",
            "fmristore_key": key,
            "fmristore_dtype": exp.cluster_metadata_dtypes[key],
        }
        missing = exp.cluster_metadata_missing.get(key)
        if missing is not None and missing.any():
            attrs["fmristore_missing"] = exp.cluster_ids[missing].astype(np.int64)
        out[name] = xr.Variable(("cluster",), values, attrs)
    return out


#: ``fmristore_encoding`` of a scan-metadata coordinate whose values are JSON
#: texts: keys with a vector in some scan (slice timings, say) stay one value
#: per run, exactly (JSON keeps float64 exact), without adding a dimension
JSON_ENCODING = "json"


def _scan_values(
    scans: Sequence[ScanInfo], key: str
) -> tuple[np.ndarray, dict[str, Any]]:
    """One metadata key across scans: one value per run and the coordinate attrs."""
    present = [s.metadata.get(key, None) for s in scans]
    missing = [s.name for s, v in zip(scans, present, strict=True) if v is None]
    found = [v for v in present if v is not None]
    attrs: dict[str, Any] = {ROLE: "scan_metadata", "fmristore_key": key}
    if missing:
        attrs["fmristore_missing"] = missing
    if all(isinstance(v, str) for v in found):
        attrs["fmristore_dtype"] = "str"
        return np.array(["" if v is None else v for v in present], dtype=str), attrs
    arrays = [np.asarray(v) for v in found]
    # strings in some scans and numbers in others: keep them readable as text
    strings = any(a.dtype.kind in "UO" for a in arrays)
    dtype = np.result_type(*arrays)
    attrs["fmristore_dtype"] = "str" if strings else dtype.str
    if any(a.ndim > 0 for a in arrays):
        attrs["fmristore_encoding"] = JSON_ENCODING
        text = [
            "" if v is None else json.dumps(np.asarray(v).tolist()) for v in present
        ]
        return np.array(text, dtype=str), attrs
    if strings:
        text = ["" if v is None else str(v) for v in present]
        return np.array(text, dtype=str), attrs
    out_dtype = np.float64 if missing else dtype
    out = np.array([np.nan if v is None else v for v in present], dtype=out_dtype)
    return out, attrs


def scan_metadata_coords(
    scans: Sequence[ScanInfo], taken: set[str]
) -> dict[str, xr.Variable]:
    """Every scan-metadata key as a coordinate along ``run`` (and no other dim).

    Missing values are NaN (numbers) or "" (strings); attrs record the on-disk
    dtype and which runs lack the key, so the writer can restore them. Vector
    values are JSON texts (see :data:`JSON_ENCODING`).
    """
    keys = sorted({k for s in scans for k in s.metadata}, key=lambda k: k.encode())
    out: dict[str, xr.Variable] = {}
    for key in keys:
        values, attrs = _scan_values(scans, key)
        name = _metadata_name(key, "scan_", taken | set(out))
        out[name] = xr.Variable(("run",), values, attrs)
    return out


def flat_coords(
    cluster_ids: np.ndarray,
    n_voxels: np.ndarray,
    mask_index: np.ndarray,
    ijk: np.ndarray,
    cluster_vars: Mapping[str, xr.Variable],
    *,
    in_tree: bool,
) -> xr.Coordinates:
    """Coordinates of the flat views: ClusterIndex, voxel geometry, cluster table.

    ``mask_index`` and ``ijk`` (N, 3) are given in flat order (cluster by cluster).
    """
    index = ClusterIndex(cluster_ids, n_voxels, in_tree=in_tree)
    voxel_vars = {
        "mask_index": xr.Variable(
            ("voxel",),
            np.asarray(mask_index, dtype=np.int64),
            {"long_name": "0-based position in fmristore's mask order (x fastest)"},
        ),
    }
    for axis, name in enumerate("ijk"):
        voxel_vars[name] = xr.Variable(
            ("voxel",),
            np.asarray(ijk[:, axis], dtype=np.int64),
            {"long_name": f"0-based {'xyz'[axis]} index"},
        )
    return xr.Coordinates.from_xindex(index).assign({**voxel_vars, **cluster_vars})


def experiment_flat_coords(exp: Experiment, *, in_tree: bool = False) -> xr.Coordinates:
    """:func:`flat_coords` of an experiment's file model."""
    order = exp.flat_order
    return flat_coords(
        exp.cluster_ids,
        exp.n_voxels,
        order,
        exp.ijk()[order],
        cluster_table(exp),
        in_tree=in_tree,
    )


def _preferred(var: xr.Variable, chunks: Mapping[str, Any]) -> xr.Variable:
    preferred = {d: chunks[str(d)] for d in var.dims if d in chunks}
    var.encoding["preferred_chunks"] = preferred
    if any(isinstance(c, tuple) for c in preferred.values()):
        # one chunk per cluster is uneven, which Zarr's regular grid cannot
        # hold: propose a grid of the largest cluster, which
        # ``to_zarr(..., align_chunks=True)`` rechunks the dask blocks onto
        var.encoding["chunks"] = tuple(
            max(max(c) if isinstance(c, tuple) else c, 1)
            for c in (preferred.get(d, size) for d, size in var.sizes.items())
        )
    return var


def _set_preferred(ds: xr.Dataset, chunks: Mapping[str, Any]) -> None:
    # every non-index variable gets the same chunks per dim, or ds.chunks fails
    for name, var in ds.variables.items():
        if name not in ds.xindexes:
            _preferred(var, chunks)


def metadata_attrs(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Scan metadata as run-view attributes, keys prefixed where a view uses them."""
    return {
        key if key not in VIEW_ATTRS else f"{METADATA_PREFIX}{key}": value
        for key, value in metadata.items()
    }


def time_coord(n_time: int) -> xr.Variable:
    return xr.Variable(
        ("time",), np.arange(n_time, dtype=np.int64), {"long_name": "frame index"}
    )


def build_run(
    exp: Experiment,
    scan: ScanInfo,
    data: Any | None,
    summary: Any | None,
    *,
    with_geometry: bool = True,
) -> xr.Dataset:
    """One scan, exact: ``data(voxel, time)`` and/or ``summary(cluster, time)``."""
    variables: dict[str, xr.Variable] = {}
    if data is not None:
        variables["data"] = xr.Variable(("voxel", "time"), data, RUN_DATA_ATTRS)
    if summary is not None:
        variables["summary"] = xr.Variable(
            ("cluster", "time"), summary, RUN_SUMMARY_ATTRS
        )
    coords = experiment_flat_coords(exp) if with_geometry else xr.Coordinates()
    ds = xr.Dataset(variables, coords=coords)
    ds = ds.assign_coords(time=time_coord(scan.n_time))
    attrs: dict[str, Any] = {VIEW_ATTR: "run", "scan": scan.name}
    if scan.class_attr is not None:
        attrs["scan_class"] = scan.class_attr
    if with_geometry:
        attrs.update(geometry_attrs(exp))
    attrs.update(metadata_attrs(scan.metadata))
    ds.attrs = attrs
    _set_preferred(
        ds,
        {
            "voxel": tuple(int(n) for n in exp.n_voxels),
            "cluster": len(exp.cluster_ids),
            "time": scan.n_time,
        },
    )
    return ds


def build_root(exp: Experiment) -> xr.Dataset:
    """The geometry shared by all scans: the DataTree's root node."""
    ds = xr.Dataset(coords=experiment_flat_coords(exp, in_tree=True))
    ds.attrs = {VIEW_ATTR: "root", **geometry_attrs(exp), "scans": list(exp.scan_names)}
    _set_preferred(
        ds,
        {"voxel": tuple(int(n) for n in exp.n_voxels), "cluster": len(exp.cluster_ids)},
    )
    return ds


def padded_geometry(exp: Experiment) -> dict[str, xr.Variable]:
    """``mask_index``, ``i``, ``j``, ``k`` on (cluster, voxel-slot), -1 in padding."""
    k = len(exp.cluster_ids)
    vmax = exp.max_voxels
    slot_valid = np.arange(vmax)[None, :] < exp.n_voxels[:, None]
    mask_index = np.full((k, vmax), -1, dtype=np.int64)
    mask_index[slot_valid] = exp.flat_order  # row-major fill = cluster by cluster
    ijk = exp.ijk()
    out = {
        "mask_index": xr.Variable(
            ("cluster", "voxel"),
            mask_index,
            {"long_name": "0-based position in fmristore's mask order; -1 is padding"},
        )
    }
    for axis, name in enumerate("ijk"):
        values = np.full((k, vmax), -1, dtype=np.int64)
        values[slot_valid] = ijk[exp.flat_order, axis]
        out[name] = xr.Variable(
            ("cluster", "voxel"),
            values,
            {"long_name": f"0-based {'xyz'[axis]} index; -1 is padding"},
        )
    return out


def build_padded(exp: Experiment, data: Any | None, summary: Any | None) -> xr.Dataset:
    """The padded ``(run, cluster, voxel, time)`` view of every scan."""
    scans = exp.scans
    n_time = np.array([s.n_time for s in scans], dtype=np.int64)
    vmax = exp.max_voxels
    tmax = int(n_time.max(initial=0))
    variables: dict[str, xr.Variable] = {}
    if data is not None:
        variables["data"] = xr.Variable(
            ("run", "cluster", "voxel", "time"),
            data,
            {"long_name": "voxel time series, NaN padded"},
        )
    if summary is not None:
        variables["summary"] = xr.Variable(
            ("run", "cluster", "time"),
            summary,
            {"long_name": "cluster summary time series, NaN padded"},
        )
    coords: dict[str, Any] = {
        "run": xr.Variable(("run",), np.array([s.name for s in scans], dtype=str)),
        "cluster": xr.Variable(("cluster",), exp.cluster_ids),
        "voxel": xr.Variable(
            ("voxel",),
            np.arange(vmax, dtype=np.int64),
            {"long_name": "slot within the cluster"},
        ),
        "time": time_coord(tmax),
        "n_time": xr.Variable(
            ("run",), n_time, {"long_name": "time points of the run"}
        ),
        "has_data": xr.Variable(("run",), np.array([s.has_data for s in scans])),
        "has_summary": xr.Variable(("run",), np.array([s.has_summary for s in scans])),
        **padded_geometry(exp),
    }
    coords.update(cluster_table(exp))
    coords.update(scan_metadata_coords(scans, set(coords)))
    ds = xr.Dataset(variables, coords=coords)
    real = int(exp.n_voxels.sum()) * int(sum(s.n_time for s in scans if s.has_data))
    padded = len(exp.cluster_ids) * vmax * tmax * sum(s.has_data for s in scans)
    ds.attrs = {
        VIEW_ATTR: "padded",
        **geometry_attrs(exp),
        "padding_overhead": float(padded / real) if real else 1.0,
        "scan_class": [s.class_attr or "" for s in scans],
    }
    cluster_chunk = 1 if data is not None else len(exp.cluster_ids)
    _set_preferred(
        ds, {"run": 1, "cluster": cluster_chunk, "voxel": vmax, "time": tmax}
    )
    return ds
