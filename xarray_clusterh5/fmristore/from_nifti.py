"""Build a clustered experiment from NIfTI runs and an atlas (parcellation).

:func:`from_nifti` returns the same padded ``(run, cluster, voxel, time)``
Dataset the ``clusterh5`` engine opens (built by the same code,
``views.build_padded``), backed by dask: each run is read once, in windows
of volumes, keeping only the in-mask voxels in fmristore's mask order (x
fastest); every (run, cluster) block is then one task. Write it with
``ds.clusterh5.to_fmristore(path)`` or :func:`xarray_clusterh5.to_fmristore`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

import nibabel as nib
import numpy as np
import xarray as xr

from xarray_clusterh5._hdf5.files import ClusterH5Error, named_errors
from xarray_clusterh5.cifti.read import NIBABEL_ERRORS
from xarray_clusterh5.fmristore import layout as L
from xarray_clusterh5.fmristore.read import Experiment, ScanInfo
from xarray_clusterh5.fmristore.views import build_padded
from xarray_clusterh5.fmristore.write import (
    R_FMRISTORE_VERSION,
    check_spacing,
    positive_seconds,
    r_value,
)

__all__ = ["from_nifti", "nifti_tr"]

ImageLike = str | os.PathLike[str] | nib.spatialimages.SpatialImage

#: bytes of one run read at once (a window of whole volumes)
_WINDOW_BYTES = 8 * 2**20  # pragma: no mutate - window size: memory only

_TIME_UNIT_SECONDS = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}


def _describe(src: Any) -> str:
    if isinstance(src, str | os.PathLike):
        return os.fspath(src)
    name = getattr(src, "get_filename", lambda: None)()
    return name or f"<in-memory {type(src).__name__}>"


def _load(src: ImageLike, what: str) -> Any:
    """A nibabel image from a path or an image; errors name the file."""
    if isinstance(src, str | os.PathLike):
        if not os.path.exists(src):
            raise FileNotFoundError(f"{what} {os.fspath(src)}: no such file")
        try:
            return nib.load(os.fspath(src))
        except NIBABEL_ERRORS as err:
            raise ClusterH5Error(
                src, f"{what}: not a NIfTI image, or a damaged one ({err})"
            ) from err
    if isinstance(src, nib.spatialimages.SpatialImage):
        return src
    raise TypeError(
        f"{what} must be a path or a nibabel image, got {type(src).__name__}"
    )


def nifti_tr(img: Any) -> float | None:
    """Repetition time in seconds from a NIfTI header (pixdim[4], xyzt_units).

    Returns None when the header has no usable TR (0, NaN, or a 3-D image).
    """
    header = img.header
    zooms = header.get_zooms()
    if len(zooms) < 4:
        return None
    tr = float(zooms[3])
    if not np.isfinite(tr) or tr <= 0:
        return None
    try:
        unit = header.get_xyzt_units()[1]
    except Exception:  # pragma: no cover - non-NIfTI headers
        unit = "unknown"
    return tr * _TIME_UNIT_SECONDS.get(unit, 1.0)


def _labels(atlas: Any, what: str = "atlas") -> tuple[np.ndarray, Any, str]:
    """(X,Y,Z) int64 labels, the image (None for arrays), a description."""
    img = None
    if isinstance(atlas, str | os.PathLike | nib.spatialimages.SpatialImage):
        img = _load(atlas, what)
        desc = _describe(atlas)
        with named_errors(desc, f"reading the {what}", catch=NIBABEL_ERRORS):
            arr = np.asarray(img.dataobj)
    else:
        arr, desc = np.asarray(atlas), f"{what} array"
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise ValueError(f"{what} {desc} must be a 3-D volume, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(np.int64), img, desc
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{what} {desc} contains NaN or infinite labels")
        if not np.all(arr == np.round(arr)):
            raise ValueError(f"{what} {desc} contains non-integer labels")
    elif arr.dtype.kind not in "iu":
        raise ValueError(f"{what} {desc} must hold integer labels, not {arr.dtype}")
    return arr.astype(np.int64), img, desc


def _same_affine(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.allclose(a, b, rtol=0, atol=1e-4))


def _load_masked(
    src: ImageLike, mask_index: np.ndarray, n_time: int, shape: tuple[int, int, int]
) -> np.ndarray:
    """(N, T) float32: the in-mask voxels of a 4-D run, mask order.

    Reads windows of whole volumes so that at most ~8 MiB of the 4-D image
    is in memory besides the result. Paths are opened with
    ``keep_file_open=True``: windows of a .nii.gz then continue one gzip
    stream instead of decompressing from the start each time.
    """
    with named_errors(
        _describe(src), "reading the run's volumes", catch=NIBABEL_ERRORS
    ):
        return _read_masked(src, mask_index, n_time, shape)


def _read_masked(
    src: ImageLike, mask_index: np.ndarray, n_time: int, shape: tuple[int, int, int]
) -> np.ndarray:
    img: Any = src
    if isinstance(src, str | os.PathLike):
        img = nib.load(os.fspath(src), keep_file_open=True)
    proxy = img.dataobj
    n = mask_index.size
    out = np.empty((n, n_time), dtype=np.float32)
    vol_bytes = int(np.prod(shape)) * max(4, np.dtype(img.get_data_dtype()).itemsize)
    step = max(1, _WINDOW_BYTES // max(vol_bytes, 1))  # pragma: no mutate - memory
    for t0 in range(0, n_time, step):
        t1 = min(n_time, t0 + step)
        block = np.asarray(proxy[..., t0:t1])
        flat = block.reshape(-1, t1 - t0, order="F")  # (X*Y*Z, w), x fastest
        out[:, t0:t1] = flat[mask_index]
        del block, flat  # free this window before reading the next one
    del proxy, img  # ArrayProxy.__del__ closes the kept file
    return out


def _cluster_block(
    masked: np.ndarray, rows: np.ndarray, vmax: int, tmax: int
) -> np.ndarray:
    """(1, 1, vmax, tmax) NaN-padded block of one cluster."""
    out = np.full((1, 1, vmax, tmax), np.nan, dtype=np.float32)
    out[0, 0, : rows.size, : masked.shape[1]] = masked[rows]
    return out


def _cluster_means(
    masked: np.ndarray, members: list[np.ndarray], tmax: int
) -> np.ndarray:
    """(1, K, tmax) cluster means (float32, accumulated in float64), NaN padded."""
    out = np.full((1, len(members), tmax), np.nan, dtype=np.float32)
    for c, rows in enumerate(members):
        out[0, c, : masked.shape[1]] = masked[rows].mean(axis=0, dtype=np.float64)
    return out


def _cluster_table(
    table: Any, cluster_ids: np.ndarray, atlas_ids: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, str]]:
    if hasattr(table, "columns") and hasattr(table, "to_dict"):
        columns = {str(c): np.asarray(table[c].to_numpy()) for c in table.columns}
    else:
        columns = {str(k): np.asarray(v) for k, v in dict(table).items()}
    if "cluster_id" not in columns:
        raise ValueError("cluster_metadata needs a 'cluster_id' column")
    ids = columns["cluster_id"]
    if ids.dtype.kind == "f" and not np.all(ids == np.round(ids)):
        raise ValueError("cluster_metadata['cluster_id'] holds non-integer ids")
    ids = ids.astype(np.int64)
    if len(np.unique(ids)) != len(ids):
        raise ValueError("cluster_metadata has duplicate cluster ids")
    unknown = np.setdiff1d(ids, atlas_ids)
    if unknown.size:
        raise ValueError(
            f"cluster_metadata has cluster ids {unknown.tolist()[:10]} missing from "
            "the atlas"
        )
    row_of = {int(v): r for r, v in enumerate(ids)}
    absent = [int(c) for c in cluster_ids if int(c) not in row_of]
    if absent:
        raise ValueError(
            f"atlas cluster ids {absent[:10]} are missing from cluster_metadata"
        )
    rows = np.array([row_of[int(c)] for c in cluster_ids], dtype=np.int64)
    out: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    for name, col in columns.items():
        L.check_hdf5_name(name, "cluster_metadata column")
        values = col[rows]
        if name == "cluster_id":
            values = values.astype(np.int32)
        elif values.dtype == object:
            if all(isinstance(v, str) for v in values):
                values = values.astype(str)
            elif all(isinstance(v, bool | np.bool_) for v in values):
                values = values.astype(bool)
        if values.dtype.kind not in "USO":
            what = f"cluster_metadata[{name!r}]"
            values = r_value(values, what, "error").reshape(values.shape)
        out[name] = values
        dtypes[name] = "str" if values.dtype.kind in "USO" else values.dtype.str
    missing = {k: np.zeros(cluster_ids.size, dtype=bool) for k in out}
    return out, missing, dtypes


def _typed_metadata(value: Any, what: str) -> Any:
    """Metadata values with the types the reader gives for what the writer stores."""
    arr = np.asarray(value)
    if arr.dtype.kind == "U":  # text, non-ASCII too: the writer's option decides
        return str(arr.item()) if arr.size == 1 else arr.astype(str)
    # the writer's own typing (R's int32 and double, int8 logicals)
    stored = r_value(value, what, "error")
    if stored.dtype.kind == "O":  # bytes or strings among objects, ASCII
        stored = stored.astype(bytes).astype(str)
        return str(stored) if stored.ndim == 0 else stored
    return stored[()]  # a NumPy scalar when 0-d, else the array itself


_Images = list[tuple[str, ImageLike, Any]]  # (name, source, nibabel image)


class _Space(NamedTuple):
    """The voxel space of an experiment: the reference image and the mask."""

    shape: tuple[int, int, int]
    affine: np.ndarray  # (4, 4) float64 of the reference image
    description: str  # the reference file, for messages and affine_source
    form: str  # where the affine came from ("NIfTI sform", ...), for affine_source
    mask_index: np.ndarray  # (N,) int64, mask order (x fastest)
    cluster_map: np.ndarray  # (N,) int32


def _checked_runs(
    runs: Mapping[str, ImageLike] | Sequence[tuple[str, ImageLike]],
    metadata: Mapping[str, Mapping[str, Any]] | None,
) -> tuple[list[tuple[str, ImageLike]], dict[str, Mapping[str, Any]]]:
    """``(name, source)`` pairs with unique valid names, and the metadata."""
    items = list(runs.items()) if isinstance(runs, Mapping) else list(runs)
    if not items:
        raise ValueError("runs is empty: give at least one NIfTI run")
    names = [str(n) for n, _ in items]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"duplicate scan names {dup}")
    for n in names:
        L.check_hdf5_name(n, "scan name")
    meta = dict(metadata or {})
    unknown = sorted(set(meta) - set(names))
    if unknown:
        raise ValueError(f"metadata given for scans {unknown} that are not in runs")
    return [(str(n), src) for n, src in items], meta


def _check_images(
    images: _Images,
    shape: tuple[int, ...],
    affine: np.ndarray,
    descriptions: tuple[str, str],
) -> None:
    """Every run is 4-D, on the atlas grid, with the reference affine."""
    atlas_desc, ref_desc = descriptions
    for n, src, img in images:
        if len(img.shape) != 4:
            raise ClusterH5Error(
                _describe(src),
                f"run {n!r} must be 4-D (X, Y, Z, T), got shape {img.shape}",
            )
        if tuple(img.shape[:3]) != shape:
            raise ClusterH5Error(
                _describe(src),
                f"run {n!r} has spatial shape {img.shape[:3]}, "
                f"the atlas ({atlas_desc}) {shape}",
            )
        if not _same_affine(img.affine, affine):
            raise ClusterH5Error(
                _describe(src),
                f"run {n!r} has a different affine from "
                f"{ref_desc}:\n{img.affine}\nvs\n{affine}",
            )


def _kept_voxels(
    labels: np.ndarray, mask: Any, affine: np.ndarray, ref_desc: str
) -> np.ndarray:
    """Boolean (X, Y, Z): labelled voxels, inside the mask if there is one."""
    keep = labels != 0
    if mask is None:
        return keep
    mvals, m_img, m_desc = _labels(mask, "mask")
    if mvals.shape != labels.shape:
        raise ValueError(
            f"mask ({m_desc}) has shape {mvals.shape}, the atlas {labels.shape}"
        )
    if m_img is not None and not _same_affine(m_img.affine, affine):
        raise ValueError(f"mask ({m_desc}) has a different affine from {ref_desc}")
    return keep & (mvals != 0)


def _space(atlas: Any, mask: Any, images: _Images) -> tuple[_Space, np.ndarray]:
    """The checked voxel space and the atlas labels (X, Y, Z)."""
    labels, atlas_img, atlas_desc = _labels(atlas)
    # the atlas image defines the space; with an array atlas the first run does
    ref_img = atlas_img if atlas_img is not None else images[0][2]
    affine = np.asarray(ref_img.affine, dtype=np.float64)
    ref_desc = _describe(ref_img)  # the atlas's description when it is an image
    _check_images(images, labels.shape, affine, (atlas_desc, ref_desc))
    keep = _kept_voxels(labels, mask, affine, ref_desc)
    kept = labels[keep]
    negative = kept < 0  # pragma: no mutate - keep drops label 0: < 0, <= 0, < 1 agree
    if negative.any():
        bad = np.unique(kept[negative]).tolist()[:10]
        raise ValueError(
            f"atlas ({atlas_desc}) has negative labels {bad}; fmristore cluster ids "
            "must be >= 1 for R to read them back"
        )
    mask_index = np.flatnonzero(keep.ravel(order="F")).astype(np.int64)
    if mask_index.size == 0:
        raise ValueError("no voxel is inside both the atlas and the mask")
    if labels.max() > np.iinfo(np.int32).max:
        raise ValueError("atlas labels must fit in 32-bit integers")
    space = _Space(
        shape=(int(labels.shape[0]), int(labels.shape[1]), int(labels.shape[2])),
        affine=affine,
        description=ref_desc,
        form=_affine_form(ref_img),
        mask_index=mask_index,
        cluster_map=labels.ravel(order="F")[mask_index].astype(np.int32),
    )
    return space, labels


def _affine_form(img: Any) -> str:
    """The header field nibabel took ``img.affine`` from (``get_best_affine``)."""
    header = img.header
    if not isinstance(header, nib.Nifti1Header):  # Analyze, MGH, MINC ...
        return f"{type(img).__name__} affine"
    if int(header["sform_code"]) > 0:
        return "NIfTI sform"
    if int(header["qform_code"]) > 0:
        return "NIfTI qform"
    return "NIfTI pixdim (sform_code and qform_code 0)"


def _scan_tr(
    name: str, img: Any, tr: float | Mapping[str, float] | None
) -> float | None:
    """The TR of one scan: the caller's (checked), else the NIfTI header's."""
    given = tr.get(name) if isinstance(tr, Mapping) else tr
    if given is None:
        return nifti_tr(img)
    return positive_seconds(given, f"tr of scan {name!r}")


def _scans(
    images: _Images,
    metadata: Mapping[str, Mapping[str, Any]],
    tr: float | Mapping[str, float] | None,
    summaries: bool | Literal["only"],
) -> list[ScanInfo]:
    """One ScanInfo per run, in fmristore's (HDF5 name) order."""
    with_data = summaries != "only"
    scans = []
    for n, _src, img in images:
        meta: dict[str, Any] = {}
        scan_tr = _scan_tr(n, img, tr)
        if scan_tr is not None:
            meta["TR"] = np.float64(scan_tr)
        for key, value in (metadata.get(n) or {}).items():
            L.check_hdf5_name(key, f"metadata key of scan {n!r}")
            if key == "TR":
                positive_seconds(value, f"metadata['TR'] of scan {n!r}")
            meta[key] = _typed_metadata(value, f"metadata {key!r} of scan {n!r}")
        meta = dict(sorted(meta.items(), key=lambda kv: kv[0].encode()))
        # the class string the writer will give the scan (format "2026")
        cls = (L.FULL_CLASSES if with_data else L.SUMMARY_CLASSES)["2026"]
        n_time = int(img.shape[3])
        scans.append(ScanInfo(n, with_data, bool(summaries), n_time, cls, meta))
    scans.sort(key=lambda s: s.name.encode())
    return scans


def _experiment(
    space: _Space,
    scans: Sequence[ScanInfo],
    cluster_table: tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, str]],
) -> Experiment:
    """The file model the writer would produce, for the views' builder."""
    cluster_ids, n_voxels = np.unique(space.cluster_map, return_counts=True)
    columns, missing, dtypes = cluster_table
    try:
        spacing = check_spacing(
            np.sqrt((space.affine[:3, :3] ** 2).sum(axis=0)), "voxel size"
        )
    except ValueError as err:
        raise ClusterH5Error(space.description, f"affine: {err}") from None
    return Experiment(
        path="",
        volume_shape=space.shape,
        spacing=spacing,
        affine=space.affine,
        affine_source=f"{space.form} of {space.description}",
        affine_form="srow",  # the writer stores srow_* and the quaternion
        mask_index=space.mask_index,
        cluster_map=space.cluster_map,
        cluster_ids=cluster_ids.astype(np.int32),
        n_voxels=n_voxels.astype(np.int64),
        scans=tuple(scans),
        cluster_metadata=columns,
        cluster_metadata_missing=missing,
        cluster_metadata_dtypes=dtypes,
        generation="2026",
        # what writing adds, so that from_nifti -> write -> open differs only
        # in affine_source and source_files
        root_attrs={
            L.ATTR_ROOT_CLASS: L.EXPERIMENT_CLASSES["2026"],
            L.ATTR_ROOT_VERSION: R_FMRISTORE_VERSION,
        },
    )


def _lazy_runs(
    exp: Experiment, sources: Mapping[str, Any], shape: tuple[int, int, int]
) -> tuple[Any, Any]:
    """Dask ``data (run, cluster, voxel, time)`` and ``summary``: one task per block.

    Each run is read once (one task) and shared by its cluster blocks.
    """
    import dask
    import dask.array as da

    members = np.split(np.argsort(exp.cluster_map, kind="stable"), exp.offsets[1:-1])
    vmax = exp.max_voxels
    tmax = max(s.n_time for s in exp.scans)
    data_rows, summary_rows = [], []
    for scan in exp.scans:
        # not pure: hashing an in-memory image would read all of it
        # (pure=True gives the same values, only the hashing costs)
        masked = dask.delayed(_load_masked, pure=False)(  # pragma: no mutate
            sources[scan.name], exp.mask_index, scan.n_time, shape
        )
        if scan.has_data:
            blocks = [
                da.from_delayed(
                    dask.delayed(_cluster_block, pure=True)(masked, rows, vmax, tmax),
                    shape=(1, 1, vmax, tmax),
                    dtype=np.float32,
                )
                for rows in members
            ]
            data_rows.append(da.concatenate(blocks, axis=1))
        if scan.has_summary:
            means = dask.delayed(_cluster_means, pure=True)(masked, members, tmax)
            summary_rows.append(
                da.from_delayed(means, shape=(1, len(members), tmax), dtype=np.float32)
            )
    data = da.concatenate(data_rows, axis=0) if data_rows else None
    summary = da.concatenate(summary_rows, axis=0) if summary_rows else None
    return data, summary


def from_nifti(
    runs: Mapping[str, ImageLike] | Sequence[tuple[str, ImageLike]],
    atlas: ImageLike | np.ndarray,
    mask: ImageLike | np.ndarray | None = None,
    metadata: Mapping[str, Mapping[str, Any]] | None = None,
    tr: float | Mapping[str, float] | None = None,
    summaries: bool | Literal["only"] = False,
    cluster_metadata: Any = None,
) -> xr.Dataset:
    """A clustered Dataset from 4-D NIfTI runs and a 3-D atlas, ready to write.

    Parameters
    ----------
    runs
        Scan name -> 4-D NIfTI path or nibabel image (or ``(name, image)``
        pairs). Names become HDF5 group names and must be valid ones.
    atlas
        3-D integer labels (path, image or array): 0 is background, any other
        value a cluster id. Non-integer or NaN labels are refused. Negative
        labels are refused too, since R fmristore cannot read them back.
    mask
        Optional 3-D mask (path, image or array); voxels outside it are
        dropped. Voxels inside it with atlas label 0 are dropped as well (every
        fmristore voxel needs a cluster id >= 1).
    metadata
        Scan name -> {key: value}, added to each scan's metadata.
    tr
        Repetition time in seconds (one value, or one per scan). Default: from
        each NIfTI header (pixdim[4] converted from ``xyzt_units``); stored as
        scan metadata ``TR`` (float64) when known.
    summaries
        True: add ``summary(run, cluster, time)`` with cluster means; ``"only"``:
        summaries and no voxel data (summary scans).
    cluster_metadata
        Table (DataFrame or mapping) with a ``cluster_id`` column and one row
        per cluster of the atlas; stored as cluster-metadata coordinates.

    Returns
    -------
    xarray.Dataset
        The padded view (``data(run, cluster, voxel, time)`` NaN padded,
        dask-backed) with the same coordinates and attributes as the
        ``clusterh5`` engine's, voxels in fmristore's mask order.

    Raises
    ------
    ValueError
        When runs, atlas and mask disagree in shape or affine (the message
        names the file), for bad labels, duplicate or invalid scan names.
    """
    items, metadata = _checked_runs(runs, metadata)
    images: _Images = [(n, src, _load(src, f"run {n!r}")) for n, src in items]
    space, labels = _space(atlas, mask, images)
    scans = _scans(images, metadata, tr, summaries)
    table: tuple[dict[str, Any], dict[str, Any], dict[str, str]] = ({}, {}, {})
    if cluster_metadata is not None:
        table = _cluster_table(
            cluster_metadata,
            np.unique(space.cluster_map),
            np.unique(labels[labels != 0]),
        )
    exp = _experiment(space, scans, table)
    # paths are reloaded inside the tasks (picklable for distributed);
    # in-memory images are passed as they are
    sources = {
        n: src if isinstance(src, str | os.PathLike) else img for n, src, img in images
    }
    ds = build_padded(exp, *_lazy_runs(exp, sources, space.shape))
    described = {n: _describe(src) for n, src in items}
    ds.attrs["source_files"] = [described[s.name] for s in scans]
    return ds
