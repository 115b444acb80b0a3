"""The file model of an fmristore clustered experiment, read with h5py (no xarray).

``read_experiment`` reads everything needed to describe a file (geometry,
clusters, scans, metadata) without touching voxel data and without visiting
every ``cluster_<id>`` dataset: cluster sizes follow from ``/cluster_map``,
and one dataset per scan gives its number of time points. ``read_block``
then reads one window of one cluster dataset, checking its shape lazily.

Conventions (0-based, NumPy): *mask order* is R's ``which(mask)``, x fastest;
the *flat voxel order* used by the xarray views lists voxels cluster by
cluster (ascending id), each cluster's voxels in mask order, which is
exactly the concatenation of the on-disk ``cluster_<id>`` datasets.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Any, Literal

import h5py
import numpy as np

from xarray_clusterh5._hdf5.files import (
    ClusterH5Error,
    check_local_object,
    decode_str,
    get_link,
    named_errors,
    read_attr_str,
    read_strings,
)
from xarray_clusterh5.fmristore import layout as L

#: Which header fields hold the orientation (the views' ``affine_form``
#: attribute, which tells a writer what header to write back): ``"srow"``:
#: ``srow_x/y/z`` (and the quaternion); ``"quaternion"``: ``quatern_b/c/d`` and
#: ``qoffset_*`` only; ``"none"``: no orientation (R's all-zero header), the
#: affine is ``diag(spacing)``.
AffineForm = Literal["srow", "quaternion", "none"]
AFFINE_FORMS: tuple[AffineForm, ...] = ("srow", "quaternion", "none")

NO_QUATERNION_NOTE = "header without quaternions: diag(spacing)"
ZERO_HEADER_NOTE = (
    "fmristore header with all quaternion and offset fields zero (fmristore's "
    "writer never stores them), so rotation and origin are unknown; "
    "diag(spacing) with the sign of qfac and origin 0, exactly as R reads it"
)


@dataclass(frozen=True)
class ScanInfo:
    """One scan (run) as described by the file.

    Attributes
    ----------
    name : str
        Group name under ``/scans``.
    has_data : bool
        Whether the scan has voxel data (``clusters/cluster_<id>``).
    has_summary : bool
        Whether it has ``clusters_summary/summary_data``.
    n_time : int
        Number of time points.
    class_attr : str or None
        The scan's ``class`` attribute, if any.
    metadata : dict
        ``metadata/<key>`` values with their on-disk types (NumPy scalars for
        length-1 values, arrays for vectors, ``str`` for strings).
    """

    name: str
    has_data: bool
    has_summary: bool
    n_time: int
    class_attr: str | None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Experiment:
    """Everything about a clustered experiment except its voxel values."""

    path: str
    volume_shape: tuple[int, int, int]  # (X, Y, Z)
    spacing: tuple[float, float, float]
    affine: np.ndarray  # (4, 4): 0-based voxel index -> world
    affine_source: str  # for people: where the affine comes from
    affine_form: AffineForm  # for programs: which header fields hold it
    mask_index: np.ndarray  # (N,) int64, 0-based linear index, x fastest, ascending
    cluster_map: np.ndarray  # (N,) int32, cluster id per mask voxel in mask order
    cluster_ids: np.ndarray  # (K,) int32, ascending
    n_voxels: np.ndarray  # (K,) int64
    scans: tuple[ScanInfo, ...]
    cluster_metadata: dict[str, np.ndarray]  # columns aligned with cluster_ids
    cluster_metadata_missing: dict[str, np.ndarray]  # column -> bool (K,) no row
    cluster_metadata_dtypes: dict[str, str]  # column -> on-disk dtype ("str", "<i4")
    generation: str  # "2025" or "2026"
    root_attrs: dict[str, str]

    @property
    def offsets(self) -> np.ndarray:
        """(K+1,) start of each cluster in the flat voxel order."""
        return np.concatenate([[0], np.cumsum(self.n_voxels)]).astype(np.int64)

    @property
    def max_voxels(self) -> int:
        """Voxels of the largest cluster (the reader refuses files without one)."""
        return int(self.n_voxels.max())

    @functools.cached_property
    def flat_order(self) -> np.ndarray:
        """(N,) mask positions in flat voxel order (cluster by cluster)."""
        return np.argsort(self.cluster_map, kind="stable").astype(np.int64)

    @property
    def scan_names(self) -> tuple[str, ...]:
        """Scan names in fmristore's order (HDF5 name order, bytewise)."""
        return tuple(s.name for s in self.scans)

    def scan(self, name: str) -> ScanInfo:
        """The scan called ``name``; KeyError naming the file otherwise."""
        for s in self.scans:
            if s.name == name:
                return s
        raise KeyError(
            f"{self.path}: no scan {name!r}; scans are {list(self.scan_names)}"
        )

    def ijk(self) -> np.ndarray:
        """(N, 3) 0-based voxel indices (x, y, z) of the mask voxels, mask order."""
        x, y, _ = self.volume_shape
        idx = self.mask_index
        return np.stack([idx % x, (idx // x) % y, idx // (x * y)], axis=1)


# --------------------------------------------------------------------------
# reading values
# --------------------------------------------------------------------------


def _read_value(path: str, dset: h5py.Dataset) -> Any:
    """A metadata value with R's types: scalar or vector; strings decoded."""
    if h5py.check_string_dtype(dset.dtype) is not None:
        values = read_strings(path, dset)
        return str(values) if values.ndim == 0 else values
    if dset.dtype.kind not in "biuf":
        raise ClusterH5Error(
            path, f"{dset.name} has unsupported dtype {dset.dtype} for metadata"
        )
    with named_errors(path, "reading metadata", dset.name):
        value = dset[()]
    if np.ndim(value) == 0:
        return np.asarray(value).reshape(()).astype(dset.dtype)[()]
    return np.asarray(value)


def _dtype_name(value: Any) -> str:
    if isinstance(value, str):
        return "str"
    arr = np.asarray(value)
    return "str" if arr.dtype.kind in "SUO" else arr.dtype.str


def _read_header(
    path: str, f: h5py.File
) -> tuple[
    tuple[int, int, int], tuple[float, float, float], np.ndarray, str, AffineForm
]:
    header = get_link(path, f, L.HEADER)
    if not isinstance(header, h5py.Group) or "dim" not in header:
        raise ClusterH5Error(path, "no /header/dim: not an fmristore clustered file")
    dim = np.asarray(header["dim"][()]).ravel()
    if dim.size < 4 or int(dim[0]) != 4:
        raise ClusterH5Error(
            path, f"/header/dim must start with 4 and give X, Y, Z, got {dim.tolist()}"
        )
    shape = (int(dim[1]), int(dim[2]), int(dim[3]))
    if min(shape) < 1:
        raise ClusterH5Error(path, f"/header/dim gives an empty volume {shape}")
    spacing = (1.0, 1.0, 1.0)  # NIfTI's default
    if "pixdim" in header:
        pixdim = np.asarray(header["pixdim"][()], dtype=float).ravel()
        if pixdim.size < 4:
            raise ClusterH5Error(path, f"/header/pixdim too short: {pixdim.tolist()}")
        spacing = (float(pixdim[1]), float(pixdim[2]), float(pixdim[3]))

    def scalar(name: str) -> float | None:
        if name not in header:
            return None
        return float(np.asarray(header[name][()]).ravel()[0])

    if all(s in header for s in L.SROWS):
        rows = [np.asarray(header[s][()], dtype=float).ravel() for s in L.SROWS]
        if all(r.size == 4 for r in rows):
            affine = np.vstack([*rows, [0.0, 0.0, 0.0, 1.0]])
            return shape, spacing, affine, "header srow_x/y/z (sform)", "srow"
    q = {name: scalar(name) for name in L.HEADER_SCALARS}
    qfac = -1.0 if (q["qfac"] or 0.0) < 0 else 1.0  # NIfTI: 0 or none means 1
    zoom = np.diag([spacing[0], spacing[1], qfac * spacing[2]])
    if any(q[n] is None for n in L.HEADER_SCALARS if n != "qfac"):
        offset = [q[n] or 0.0 for n in ("qoffset_x", "qoffset_y", "qoffset_z")]
        affine = np.eye(4)
        affine[:3, :3] = zoom
        affine[:3, 3] = offset
        return shape, spacing, affine, NO_QUATERNION_NOTE, "none"
    # every field is present here
    b, c, d = (float(q[n] or 0.0) for n in ("quatern_b", "quatern_c", "quatern_d"))
    offset = [float(q[n] or 0.0) for n in ("qoffset_x", "qoffset_y", "qoffset_z")]
    if b == c == d == 0.0 and all(o == 0.0 for o in offset):
        affine = np.eye(4)
        affine[:3, :3] = zoom
        return shape, spacing, affine, ZERO_HEADER_NOTE, "none"
    a = np.sqrt(max(0.0, 1.0 - (b * b + c * c + d * d)))
    rot = np.array(
        [
            [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
            [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
            [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b],
        ]
    )
    affine = np.eye(4)
    affine[:3, :3] = rot @ zoom
    affine[:3, 3] = offset
    source = "header quaternion (qform: quatern_b/c/d, qoffset)"
    return shape, spacing, affine, source, "quaternion"


def _read_cluster_metadata(
    path: str, f: h5py.File, cluster_ids: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, str]]:
    meta = get_link(path, f, L.CLUSTER_META)
    if meta is None:
        return {}, {}, {}
    raw: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    if isinstance(meta, h5py.Group):
        for name in meta:  # name order, as R lists them
            obj = get_link(path, meta, name)
            if not isinstance(obj, h5py.Dataset):
                continue
            value = _read_value(path, obj)
            raw[name] = np.atleast_1d(np.asarray(value))
            dtypes[name] = _dtype_name(value)
    elif isinstance(meta, h5py.Dataset) and meta.dtype.names:
        table = meta[()]
        table = np.atleast_1d(table)
        for name in sorted(meta.dtype.names):
            col = table[name]
            if col.dtype.kind in "SO":
                col = np.array([decode_str(v) for v in col], dtype=str)
            raw[name] = col
            dtypes[name] = "str" if col.dtype.kind in "SUO" else col.dtype.str
    else:
        raise ClusterH5Error(
            path, f"{L.CLUSTER_META} is neither a group of columns nor a compound table"
        )
    lengths = {len(v) for v in raw.values()}
    if len(lengths) > 1:
        raise ClusterH5Error(
            path,
            f"{L.CLUSTER_META} columns have different lengths "
            f"{ {k: len(v) for k, v in raw.items()} }",
        )
    if not raw:
        return {}, {}, {}
    n_rows = lengths.pop()
    # join on cluster_id: R keeps the caller's row order, which need not be sorted
    if "cluster_id" in raw:
        ids = np.asarray(raw["cluster_id"])
        if ids.dtype.kind not in "iuf" or (
            ids.dtype.kind == "f"
            and not np.all(np.isfinite(ids) & (ids == np.round(ids)))
        ):
            raise ClusterH5Error(path, f"{L.CLUSTER_META}/cluster_id is not integer")
        ids = ids.astype(np.int64)
        if len(np.unique(ids)) != len(ids):
            raise ClusterH5Error(path, f"{L.CLUSTER_META}/cluster_id has duplicates")
        row_of = {int(v): r for r, v in enumerate(ids)}
        rows = np.array([row_of.get(int(c), -1) for c in cluster_ids], dtype=np.int64)
    elif n_rows == len(cluster_ids):
        rows = np.arange(n_rows)
    else:
        raise ClusterH5Error(
            path,
            f"{L.CLUSTER_META} has {n_rows} rows and no cluster_id column, "
            f"but the file has {len(cluster_ids)} clusters",
        )
    missing = rows < 0
    columns: dict[str, np.ndarray] = {}
    for name, col in raw.items():
        if col.dtype.kind in "SUO":
            out = np.where(missing, "", col[np.where(missing, 0, rows)]).astype(str)
        elif missing.any():
            out = np.where(
                missing, np.nan, col[np.where(missing, 0, rows)].astype(float)
            )
        else:
            out = col[rows]
        columns[name] = out
    return columns, dict.fromkeys(columns, missing), dtypes


def _read_scan_metadata(path: str, f: h5py.File, name: str) -> dict[str, Any]:
    """``metadata/<key>`` values of a scan with their on-disk types."""
    metadata: dict[str, Any] = {}
    meta = get_link(path, f, L.metadata_group(name))
    if isinstance(meta, h5py.Group):
        for key in meta:
            obj = get_link(path, meta, key)
            if isinstance(obj, h5py.Dataset):
                metadata[key] = _read_value(path, obj)
    return metadata


def _check_scan_kind(
    path: str, name: str, class_attr: str | None, clusters: Any, has_summary: bool
) -> None:
    """The class attribute names the kind; the datasets must be there."""
    if class_attr in L.SUMMARY_CLASSES.values() and not has_summary:
        raise ClusterH5Error(
            path, f"scan {name!r} is a {class_attr} but has no {L.summary_path(name)}"
        )
    if class_attr in L.FULL_CLASSES.values() and not isinstance(clusters, h5py.Group):
        raise ClusterH5Error(
            path, f"scan {name!r} is a {class_attr} but has no {L.clusters_group(name)}"
        )


def _full_scan_n_time(
    path: str,
    f: h5py.File,
    name: str,
    clusters: h5py.Group,
    cluster_ids: np.ndarray,
    n_voxels: np.ndarray,
    first_cluster: int | None,
    n_time: int | None,
) -> int:
    """Time points of a full scan, from one first_cluster cluster dataset (as R does).

    Locally, a scan lacking cluster datasets is reported here; counting the
    links of an old-style group reads every symbol-table node, which HDF5
    scatters through the file, so on a remote file (fsspec, block cache) it
    would fetch most of the file: there the missing dataset is reported when
    it is read.
    """
    if f.driver != "fileobj" and len(clusters) < len(cluster_ids):
        present = set(clusters)
        missing = [f"cluster_{c}" for c in cluster_ids if f"cluster_{c}" not in present]
        raise ClusterH5Error(
            path,
            f"scan {name!r} lacks cluster datasets {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''} for ids in /cluster_map",
        )
    # a scan has data only when the cluster map has voxels; id 0 is valid too
    assert first_cluster is not None
    probe = get_link(path, f, L.cluster_path(name, first_cluster))
    if not isinstance(probe, h5py.Dataset):
        raise ClusterH5Error(
            path, f"missing dataset {L.cluster_path(name, first_cluster)}"
        )
    _check_data_dtype(path, probe)
    if probe.ndim != 2:
        raise ClusterH5Error(path, f"{probe.name} must be 2-D (T, n_voxels)")
    if n_time is None:
        n_time = int(probe.shape[0])
    pos = int(np.searchsorted(cluster_ids, first_cluster))
    if probe.shape != (n_time, int(n_voxels[pos])):
        raise ClusterH5Error(
            path,
            f"{probe.name} has shape {probe.shape}, expected "
            f"(n_time={n_time}, n_voxels={int(n_voxels[pos])})",
        )
    return n_time


def _summary_n_time(
    path: str, summary: h5py.Dataset, k: int, n_time: int | None
) -> int:
    """Time points of a summary, checked against the voxel data's."""
    _check_data_dtype(path, summary)
    if summary.ndim != 2 or summary.shape[0] != k:
        raise ClusterH5Error(
            path,
            f"{summary.name} has shape {summary.shape}, expected "
            f"(n_clusters={k}, n_time)",
        )
    if n_time is None:
        return int(summary.shape[1])
    if summary.shape[1] != n_time:
        raise ClusterH5Error(
            path,
            f"{summary.name} has {summary.shape[1]} time points, "
            f"the scan's voxel data {n_time}",
        )
    return n_time


def _read_scan(
    path: str,
    f: h5py.File,
    name: str,
    cluster_ids: np.ndarray,
    n_voxels: np.ndarray,
    first_cluster: int | None,
) -> ScanInfo:
    group = get_link(path, f, L.scan_path(name))
    if not isinstance(group, h5py.Group):
        raise ClusterH5Error(path, f"{L.scan_path(name)} is not a group")
    class_attr = read_attr_str(group, L.ATTR_CLASS)
    metadata = _read_scan_metadata(path, f, name)
    clusters = get_link(path, f, L.clusters_group(name))
    summary = get_link(path, f, L.summary_path(name))
    has_summary = isinstance(summary, h5py.Dataset)
    has_data = isinstance(clusters, h5py.Group) and len(cluster_ids) > 0
    # the class attribute names the kind; datasets decide when it is absent or
    # unknown (R's "prefer" rule, which reads every generation's files)
    _check_scan_kind(path, name, class_attr, clusters, has_summary)
    if not has_data and not has_summary:
        raise ClusterH5Error(
            path, f"scan {name!r} has neither cluster datasets nor summary_data"
        )
    n_time: int | None = None
    for source in (metadata.get("n_time"), group.attrs.get(L.ATTR_N_TIME)):
        if source is not None and np.size(source) == 1:
            n_time = int(np.asarray(source).item())
            break
    if has_data:
        assert isinstance(clusters, h5py.Group)
        n_time = _full_scan_n_time(
            path, f, name, clusters, cluster_ids, n_voxels, first_cluster, n_time
        )
    if has_summary:
        assert isinstance(summary, h5py.Dataset)
        n_time = _summary_n_time(path, summary, len(cluster_ids), n_time)
    assert n_time is not None
    return ScanInfo(name, has_data, has_summary, n_time, class_attr, metadata)


def _check_data_dtype(path: str, dset: h5py.Dataset) -> None:
    if dset.dtype.kind not in "fiu":
        raise ClusterH5Error(
            path, f"{dset.name} has dtype {dset.dtype}; expected floating point"
        )


def is_clustered_experiment(f: h5py.File) -> bool:
    """True for files with fmristore's multi-scan layout (either generation)."""
    if read_attr_str(f, L.ATTR_ROOT_CLASS) in L.EXPERIMENT_CLASSES.values():
        return True
    return isinstance(f.get("scans"), h5py.Group) and isinstance(
        f.get("cluster_map"), h5py.Dataset
    )


def _read_mask_and_map(
    path: str, f: h5py.File, shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Mask positions (0-based, x fastest) and the cluster id of each."""
    mask_obj = get_link(path, f, L.MASK)
    if not isinstance(mask_obj, h5py.Dataset):
        raise ClusterH5Error(path, "no /mask dataset")
    with named_errors(path, "reading the mask", L.MASK):
        mask_zyx = np.asarray(mask_obj[()])
    if mask_zyx.shape != shape[::-1]:
        raise ClusterH5Error(
            path,
            f"/mask has h5py shape {mask_zyx.shape}, header dims (X,Y,Z)={shape} "
            f"need {shape[::-1]}",
        )
    # C order over (Z, Y, X) is R's column-major order over (X, Y, Z)
    mask_index = np.flatnonzero(mask_zyx.ravel() != 0).astype(np.int64)
    cmap_obj = get_link(path, f, L.CLUSTER_MAP)
    if not isinstance(cmap_obj, h5py.Dataset):
        raise ClusterH5Error(path, "/cluster_map is not a dataset")
    if cmap_obj.dtype.kind not in "iu":
        raise ClusterH5Error(
            path, f"/cluster_map has dtype {cmap_obj.dtype}, not integer"
        )
    with named_errors(path, "reading the cluster map", L.CLUSTER_MAP):
        cluster_map = np.atleast_1d(np.asarray(cmap_obj[()])).astype(np.int32)
    if cluster_map.ndim != 1:
        raise ClusterH5Error(path, f"/cluster_map must be 1-D, got {cluster_map.shape}")
    if len(cluster_map) != len(mask_index):
        raise ClusterH5Error(
            path,
            f"/cluster_map has {len(cluster_map)} entries but /mask has "
            f"{len(mask_index)} voxels",
        )
    coords = get_link(path, f, L.VOXEL_COORDS)
    if isinstance(coords, h5py.Dataset) and coords.shape != (3, len(mask_index)):
        raise ClusterH5Error(
            path, f"/voxel_coords has shape {coords.shape}, expected (3, N)"
        )
    return mask_index, cluster_map


def _generation(root_attrs: dict[str, str], scans: tuple[ScanInfo, ...]) -> str:
    """``"2026"`` or ``"2025"``: the scans' class strings decide, else the root."""
    generation = "2026" if L.ATTR_ROOT_CLASS in root_attrs else "2025"
    for s in scans:
        gen = L.generation_of_class(s.class_attr or "")
        if gen is not None:
            generation = gen
            break
    return generation


def read_experiment(
    f: h5py.File, path: str | os.PathLike[str] | None = None
) -> Experiment:
    """Describe the clustered experiment in an open file, reading no voxel data.

    Parameters
    ----------
    f : h5py.File
        Open file.
    path : str, optional
        Name used in error messages (defaults to ``f.filename``).

    Raises
    ------
    ClusterH5Error
        When the file does not have fmristore's layout or contradicts itself.
    """
    path = os.fspath(path) if path is not None else f.filename
    with named_errors(path, "reading the file's layout"):
        return _read_experiment(f, path)


def _read_experiment(f: h5py.File, path: str) -> Experiment:
    root_cls = read_attr_str(f, L.ATTR_ROOT_CLASS)
    if root_cls in (L.FULL_CLASSES["2026"], L.SUMMARY_CLASSES["2026"]):
        raise ClusterH5Error(
            path,
            f"is a single-scan fmristore file ({root_cls}); only multi-scan "
            "experiments (H5ParcellatedMultiScan / H5ClusterExperiment) are supported",
        )
    if not is_clustered_experiment(f):
        raise ClusterH5Error(
            path,
            "HDF5 file without fmristore's clustered layout "
            "(needs /scans and /cluster_map)",
        )
    with named_errors(path, "reading the NIfTI header", L.HEADER):
        shape, spacing, affine, affine_source, affine_form = _read_header(path, f)
    mask_index, cluster_map = _read_mask_and_map(path, f, shape)
    cluster_ids, _first_pos, n_voxels = np.unique(
        cluster_map, return_index=True, return_counts=True
    )
    cluster_ids = cluster_ids.astype(np.int32)
    # R infers n_time from the cluster of the first mask voxel
    first_cluster = int(cluster_map[0]) if len(cluster_map) else None
    scans_group = get_link(path, f, L.SCANS)
    assert isinstance(scans_group, h5py.Group)
    with named_errors(path, "listing the scans", L.SCANS):
        scan_names = list(scans_group)  # HDF5 name order = R's scan order
    scans = []
    for name in scan_names:
        with named_errors(path, "reading the scan's description", L.scan_path(name)):
            scans.append(
                _read_scan(path, f, name, cluster_ids, n_voxels, first_cluster)
            )
    with named_errors(path, "reading the cluster metadata", L.CLUSTER_META):
        columns, missing, dtypes = _read_cluster_metadata(path, f, cluster_ids)
    root_attrs = {
        k: read_attr_str(f, k) or ""
        for k in (L.ATTR_ROOT_CLASS, L.ATTR_ROOT_VERSION)
        if k in f.attrs
    }
    generation = _generation(root_attrs, tuple(scans))
    return Experiment(
        path=path,
        volume_shape=shape,
        spacing=spacing,
        affine=affine,
        affine_source=affine_source,
        affine_form=affine_form,
        mask_index=mask_index,
        cluster_map=cluster_map,
        cluster_ids=cluster_ids,
        n_voxels=n_voxels.astype(np.int64),
        scans=tuple(scans),
        cluster_metadata=columns,
        cluster_metadata_missing=missing,
        cluster_metadata_dtypes=dtypes,
        generation=generation,
        root_attrs=root_attrs,
    )


def clusters_group_of(f: h5py.File, path: str, scan: str) -> h5py.Group | None:
    """The ``clusters`` group of a scan (None if absent), links checked once."""
    name = L.clusters_group(scan)
    parts = name.strip("/").split("/")
    links = f.id.links
    try:  # all hard links (the usual case): no object opened on the way
        prefixes = ("/".join(parts[: i + 1]).encode() for i in range(len(parts)))
        # a fast path: the general path below gives the same group
        hard = h5py.h5l.TYPE_HARD
        if all(links.get_info(p).type == hard for p in prefixes):  # pragma: no mutate
            group = f[name]
            return group if isinstance(group, h5py.Group) else None
    except (KeyError, RuntimeError, OSError, ValueError):
        pass
    group = get_link(path, f, name)  # absent, soft or external: the checked walk
    return group if isinstance(group, h5py.Group) else None


def cluster_dataset(
    f: h5py.File,
    path: str,
    scan: str,
    cluster_id: int,
    n_voxels: int,
    n_time: int,
    *,
    group: h5py.Group | None = None,
) -> h5py.Dataset:
    """The ``cluster_<id>`` dataset of a full scan, checked against the cluster map.

    Its shape is ``(T, Nc)`` on disk (hdf5r reverses dimensions). Shapes are
    checked here, lazily, rather than for every cluster at open time. With
    ``group`` (from ``clusters_group_of``) a hard link is looked up directly,
    which is several times cheaper than resolving the whole path.
    """
    name = L.cluster_path(scan, cluster_id)
    dset: Any = None
    if group is not None:
        # fast path only: anything but a HardLink falls back to get_link below
        key = f"cluster_{int(cluster_id)}"
        link = group.get(key, getlink=True)  # pragma: no mutate - fast path only
        if isinstance(link, h5py.HardLink):
            dset = group[key]
            check_local_object(path, dset)
    if dset is None:
        dset = get_link(path, f, name)
    if not isinstance(dset, h5py.Dataset):
        raise ClusterH5Error(path, f"missing dataset {name}")
    if dset.shape != (n_time, n_voxels):
        raise ClusterH5Error(
            path,
            f"{name} has shape {dset.shape}, expected (n_time={n_time}, "
            f"n_voxels={n_voxels}) from /cluster_map",
        )
    _check_data_dtype(path, dset)
    return dset


def cluster_dataset_id(
    group: h5py.Group, cluster_id: int, n_voxels: int, n_time: int
) -> tuple[h5py.h5d.DatasetID, h5py.h5p.PropDCID] | None:
    """Low-level lookup of a chunked ``cluster_<id>`` hard link, or None.

    The fast path for reading many small cluster datasets: a few
    microseconds per dataset where ``cluster_dataset`` costs ~100. A chunked
    layout rules out virtual and external storage. Anything unusual (soft
    or external links, a wrong shape or dtype, another layout) returns None:
    the caller then uses ``cluster_dataset``, which raises the precise error.
    """
    name = f"cluster_{int(cluster_id)}".encode()
    gid = group.id
    try:
        if gid.links.get_info(name).type != h5py.h5l.TYPE_HARD:
            return None
        dsid = h5py.h5d.open(gid, name)
    except (KeyError, RuntimeError, OSError, ValueError):
        return None
    if dsid.shape != (n_time, n_voxels) or dsid.dtype.kind not in "fiu":
        return None
    plist = dsid.get_create_plist()
    if plist.get_layout() != h5py.h5d.CHUNKED:
        return None
    return dsid, plist


def summary_dataset(f: h5py.File, path: str, scan: str) -> h5py.Dataset:
    """The ``summary_data`` dataset of a scan (shape checked at open time)."""
    name = L.summary_path(scan)
    dset = get_link(path, f, name)
    if not isinstance(dset, h5py.Dataset):
        raise ClusterH5Error(path, f"missing dataset {name}")
    return dset


def read_window(dset: h5py.Dataset, selection: tuple[slice, slice]) -> np.ndarray:
    """Read a 2-D window of a dataset as float32.

    Large windows of gzip-chunked datasets are decompressed on several
    threads (zlib releases the GIL); everything else goes through h5py.
    """
    from xarray_clusterh5._hdf5 import chunk_read as _chunkread

    out = _chunkread.read_window_parallel(dset, selection)
    if out is not None:
        return out
    return np.asarray(dset[selection], dtype=np.float32)
