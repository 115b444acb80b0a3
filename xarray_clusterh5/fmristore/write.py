"""Write fmristore clustered experiments from NumPy arrays (h5py, no xarray).

The file is laid out exactly as R fmristore's multi-scan writer lays it out
(``write_clustered_experiment_h5`` / ``write_parcellated_experiment_h5``):
same paths, dtypes, h5py shapes, chunk shapes, filters, maxshape and hdf5r's
attribute types. Two things are deliberately better than R:

* the true affine is stored (quaternion, offsets and ``srow_x/y/z``); R's
  writer always writes zeros there and loses origin and rotation;
* ``/scans@summary_only`` is omitted for files that mix scan kinds, so that
  both R generations open them with their default arguments (see
  :func:`write_experiment`).

Chunks are compressed on several cores and written with
``write_direct_chunk`` (:mod:`xarray_clusterh5._hdf5.chunk_write`).
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import h5py
import numpy as np
from tqdm.auto import tqdm

from xarray_clusterh5._hdf5.chunk_write import ChunkWriter
from xarray_clusterh5._hdf5.files import atomic_output, output_folder
from xarray_clusterh5.fmristore import layout as L

__all__ = ["Run", "affine_to_header", "positive_seconds", "write_experiment"]

#: ``fmristore_version`` written with format "2026": the fmristore version
#: whose layout we reproduce (HEAD e7fbbfc, 2026-08-14).
R_FMRISTORE_VERSION = "0.1.0.9000"

#: default chunk caps of fmristore's writer (h5py order), see _layout
_DEFAULT_CHUNK_CAPS = {"time": 128, "voxel": 1024, "cluster": 256}

_ASCII = h5py.string_dtype("ascii")

Format = Literal["2025", "2026"]
BlockSource = (
    Any  # (N, T) array-like | Mapping[int, (Nc, T)] | Callable[[int], (Nc, T)]
)


@dataclass(frozen=True)
class Run:
    """One scan to write.

    Parameters
    ----------
    data
        Full voxel data, one of

        * an (N, T) array-like in mask order (NumPy, dask, h5py dataset...);
          rows are read one cluster at a time with ``array[rows]``;
        * a mapping ``{cluster_id: (n_voxels_in_cluster, T) array-like}``,
          each cluster's voxels in mask order; items are materialised one at
          a time;
        * a callable ``cluster_id -> (n_voxels_in_cluster, T) array-like``;
        * an iterator of ``(cluster_id, (n_voxels_in_cluster, T))`` pairs in
          any order, each id exactly once (for producers such as dask that
          finish blocks out of order).
    summary
        (K, T) array-like, one row per cluster in ascending id order, or a
        callable returning it (called after the scan's data is written).
    """

    data: BlockSource | None = None
    summary: Any | None = None


# --------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------


def _check_name(name: Any, what: str, non_ascii: str) -> str:
    L.check_hdf5_name(name, what)
    if not name.isascii() and non_ascii == "error":
        raise ValueError(
            f"{what} {name!r} is not ASCII; R (hdf5r) cannot read it back. "
            "Rename it or pass non_ascii='utf8'"
        )
    return name


def positive_seconds(value: Any, what: str) -> float:
    """A TR (or any duration) as float, refusing zero, negative and non-finite ones."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number of seconds, got {value!r}") from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{what} must be a positive number of seconds, got {value!r}")
    return seconds


def check_spacing(spacing: Any, what: str) -> tuple[float, float, float]:
    """Voxel sizes as 3 floats, refusing zero, negative and non-finite ones."""
    try:
        sizes = tuple(float(s) for s in np.asarray(spacing, dtype=float).ravel())
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be 3 numbers, got {spacing!r}") from None
    if len(sizes) != 3 or not all(math.isfinite(s) and s > 0 for s in sizes):
        raise ValueError(
            f"{what} must be 3 positive finite voxel sizes, got {list(sizes)}"
        )
    return sizes[0], sizes[1], sizes[2]


def _as_int_ids(values: Any, what: str) -> np.ndarray:
    """Integer labels from any array; NaN and fractions are refused."""
    arr = np.asarray(values)
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{what} contains NaN or infinite labels")
        if not np.all(arr == np.round(arr)):
            raise ValueError(f"{what} contains non-integer labels")
        return arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{what} must hold integer labels, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _ascii_check(text: str, what: str, non_ascii: str) -> bytes:
    raw = text.encode("utf-8")
    if not text.isascii():
        if non_ascii == "error":
            raise ValueError(
                f"{what} holds the non-ASCII string {text!r}; hdf5r (R) cannot "
                "read it back (R drops the item). Pass non_ascii='utf8' to store "
                "UTF-8 bytes anyway, as R itself does"
            )
        warnings.warn(
            f"{what}: non-ASCII string {text!r} stored as UTF-8; R cannot read it "
            "back, Python readers can",
            UserWarning,
            stacklevel=4,
        )
    if "\x00" in text:
        raise ValueError(f"{what} holds a NUL character, which HDF5 strings cannot")
    return raw


def r_value(value: Any, what: str, non_ascii: str) -> np.ndarray:
    """A value as fmristore's ``guess_h5_type`` would type it.

    character -> vlen ASCII string, logical -> int8, integer -> int32,
    double -> float64; NumPy arrays and scalars keep int8/16/32, uint8/16,
    float32/64. Length-1 values become 0-d (hdf5r writes scalars for them).
    """
    if value is None:
        raise ValueError(f"{what} is None; fmristore cannot store NULL")
    if isinstance(value, str | bytes | np.str_ | np.bytes_):
        text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
        return np.array(_ascii_check(text, what, non_ascii), dtype=_ASCII)
    if isinstance(value, bool | np.bool_):
        return np.array(value, dtype=np.int8)
    if isinstance(value, int) and not isinstance(value, np.integer):
        return _fit_int32(np.array(value), what)
    if isinstance(value, float) and not isinstance(value, np.floating):
        return np.array(value, dtype=np.float64)
    arr = np.asarray(value)
    if arr.ndim > 1:
        raise ValueError(f"{what} has shape {arr.shape}; only scalars and 1-D vectors")
    if arr.size == 0:
        raise ValueError(f"{what} is empty; fmristore cannot store empty vectors")
    if arr.size == 1:
        arr = arr.reshape(())
    kind = arr.dtype.kind
    if kind == "O" and not any(
        isinstance(v, str | bytes | np.str_ | np.bytes_) for v in arr.ravel()
    ):
        # object arrays of numbers or bools (pandas): type them by their values
        typed = np.array(arr.tolist())
        if typed.dtype == object:
            raise ValueError(f"{what} holds values fmristore cannot store: {arr!r}")
        return r_value(typed, what, non_ascii)
    if kind in "USO":
        flat = [
            _ascii_check(
                v.decode("utf-8") if isinstance(v, bytes) else str(v), what, non_ascii
            )
            if isinstance(v, str | bytes | np.str_ | np.bytes_)
            else _not_a_string(v, what)
            for v in arr.ravel()
        ]
        out = np.empty(len(flat), dtype=_ASCII)
        out[:] = flat
        return out.reshape(arr.shape)
    if kind == "b":
        return arr.astype(np.int8)
    if kind in "iu":
        if arr.dtype.itemsize < 4 or arr.dtype == np.int32:
            return arr.astype(arr.dtype.newbyteorder("<"))
        return _fit_int32(arr, what)
    if kind == "f":
        if arr.dtype.itemsize == 4:
            return arr.astype("<f4")
        return arr.astype("<f8")
    raise ValueError(f"{what} has dtype {arr.dtype}, which fmristore cannot store")


def _not_a_string(v: Any, what: str) -> bytes:
    raise ValueError(f"{what} mixes strings with {type(v).__name__} values")


def _fit_int32(arr: np.ndarray, what: str) -> np.ndarray:
    info = np.iinfo(np.int32)
    if arr.size and (arr.min() < info.min or arr.max() > info.max):
        raise ValueError(f"{what} does not fit R's 32-bit integers")
    return arr.astype("<i4")


# --------------------------------------------------------------------------
# header
# --------------------------------------------------------------------------


def affine_to_header(
    affine: Any,
) -> tuple[dict[str, float], tuple[float, float, float]]:
    """NIfTI qform fields of a 4x4 affine, in float64, as nibabel computes them.

    Returns ``({quatern_b, quatern_c, quatern_d, qoffset_x, qoffset_y,
    qoffset_z, qfac}, spacing)``. The rotation is the nearest orthogonal
    matrix (polar decomposition), as in ``Nifti1Header.set_qform``; shears
    are kept only in ``srow_*``.
    """
    from nibabel.quaternions import mat2quat

    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
        raise ValueError(f"affine must be a finite 4x4 matrix, got shape {aff.shape}")
    rzs = aff[:3, :3]
    zooms = np.sqrt((rzs * rzs).sum(axis=0))
    if np.any(zooms == 0):
        raise ValueError("affine has a zero-length axis")
    rot = rzs / zooms
    if np.linalg.matrix_rank(rot) < 3:  # no rotation (quaternion) can give it
        raise ValueError("affine is singular: its axes are not independent")
    qfac = 1.0
    if np.linalg.det(rot) < 0:  # pragma: no mutate - rot has full rank: det != 0
        qfac = -1.0
        rot[:, -1] *= -1
    p, _s, qs = np.linalg.svd(rot)
    # NIfTI keeps a >= 0 and stores only b, c, d: mat2quat returns a >= 0
    quat = mat2quat(p @ qs)
    fields = {
        "quatern_b": float(quat[1]),
        "quatern_c": float(quat[2]),
        "quatern_d": float(quat[3]),
        "qoffset_x": float(aff[0, 3]),
        "qoffset_y": float(aff[1, 3]),
        "qoffset_z": float(aff[2, 3]),
        "qfac": qfac,
    }
    return fields, (float(zooms[0]), float(zooms[1]), float(zooms[2]))


# --------------------------------------------------------------------------
# hdf5r types
# --------------------------------------------------------------------------


def _str_attr(obj: h5py.HLObject, name: str, value: str) -> None:
    # hdf5r: a length-1 character vector -> (1,) vlen ASCII NULLTERM
    obj.attrs.create(name, np.array([value.encode("ascii")], dtype=_ASCII))


def _logical_attr(obj: h5py.HLObject, name: str, value: bool | None) -> None:
    """hdf5r's logical: enum FALSE/TRUE/NA over uint8 with precision 2, shape (1,)."""
    base = h5py.h5t.NATIVE_UINT8.copy()
    base.set_precision(2)
    tid = h5py.h5t.enum_create(base)
    for member, code in L.R_LOGICAL_ENUM.items():
        tid.enum_insert(member.encode("ascii"), code)
    space = h5py.h5s.create_simple((1,))
    attr = h5py.h5a.create(obj.id, name.encode("ascii"), tid, space)
    code = L.R_LOGICAL_ENUM["NA" if value is None else ("TRUE" if value else "FALSE")]
    attr.write(np.array([code], dtype=np.uint8))
    attr.close()


def _small_dataset(group: h5py.Group, name: str, value: np.ndarray) -> None:
    # contiguous, no filter, scalar dataspace for 0-d: what h5_write does
    group.create_dataset(name, data=value, dtype=value.dtype)


# --------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Geometry:
    shape: tuple[int, int, int]
    mask_index: np.ndarray  # (N,) 0-based F-order linear indices
    cluster_map: np.ndarray  # (N,) int32
    cluster_ids: np.ndarray  # (K,) int32
    members: list[np.ndarray]  # K arrays of mask positions, ascending


def _geometry(mask: Any, cluster_map: Any, nonpositive_ids: str) -> _Geometry:
    vol = np.asarray(mask)
    if vol.ndim != 3:
        raise ValueError(f"mask must be a 3-D (X, Y, Z) volume, got shape {vol.shape}")
    if cluster_map is None:
        if vol.dtype == bool:
            raise ValueError(
                "cluster_map is required with a boolean mask (or pass a labelled "
                "volume as mask, 0 = outside)"
            )
        labels = _as_int_ids(vol, "labelled mask volume")
        flat = labels.ravel(order="F")
        mask_index = np.flatnonzero(flat != 0)
        cmap = flat[mask_index]
    else:
        m = _as_int_ids(vol, "mask")
        if not np.isin(m, (0, 1)).all():
            raise ValueError(
                "mask must be boolean (0/1) when cluster_map is given; to use a "
                "labelled volume, pass cluster_map=None"
            )
        mask_index = np.flatnonzero(m.ravel(order="F"))
        cmap = _as_int_ids(cluster_map, "cluster_map").ravel()
        if cmap.size != mask_index.size:
            raise ValueError(
                f"cluster_map has {cmap.size} entries but the mask has "
                f"{mask_index.size} voxels (one id per mask voxel, in mask order)"
            )
    if mask_index.size == 0:
        raise ValueError("the mask is empty")
    info = np.iinfo(np.int32)
    if cmap.min() < info.min or cmap.max() > info.max:
        raise ValueError("cluster ids must fit in 32-bit integers")
    bad = np.unique(cmap[cmap <= 0])
    if bad.size:
        msg = (
            f"cluster ids {bad.tolist()[:10]} are <= 0: R fmristore cannot read "
            "the voxels of such clusters back (it rejects cluster_<id> with id <= 0)"
        )
        if nonpositive_ids == "error":
            raise ValueError(msg + "; relabel them or pass nonpositive_ids='warn'")
        warnings.warn(msg, UserWarning, stacklevel=3)
    cmap = cmap.astype(np.int32)
    order = np.argsort(cmap, kind="stable")
    ids, starts = np.unique(cmap[order], return_index=True)
    members = np.split(order, starts[1:])
    return _Geometry(
        shape=(int(vol.shape[0]), int(vol.shape[1]), int(vol.shape[2])),
        mask_index=mask_index.astype(np.int64),
        cluster_map=cmap,
        cluster_ids=ids.astype(np.int32),
        members=members,
    )


def row_selection(rows: np.ndarray) -> slice | np.ndarray:
    """``rows`` as a slice when they are consecutive and ascending (cheap on
    h5py, zarr, dask), else as they are."""
    # first and last alone do not tell: [0, 2, 1, 3] spans 0..3 but is shuffled
    if rows.size and np.all(np.diff(rows) == 1):
        return slice(int(rows[0]), int(rows[-1]) + 1)
    return rows


class _FullSource:
    """Yields one cluster's (Nc, T) block at a time, checking shapes."""

    def __init__(self, scan: str, data: BlockSource, geom: _Geometry) -> None:
        self.scan = scan
        self.geom = geom
        self.n_time: int | None = None
        self._array: Any = None
        self._get: Callable[[int], Any]
        self._iter: Any = None
        n = geom.mask_index.size
        if hasattr(data, "__next__"):
            self._iter = data
        elif callable(data) and not hasattr(data, "shape"):
            self._get = data
        elif isinstance(data, Mapping):
            keys = {int(k) for k in data}
            ids = {int(c) for c in geom.cluster_ids}
            missing, extra = sorted(ids - keys), sorted(keys - ids)
            if missing:
                raise ValueError(
                    f"scan {scan!r}: no data for cluster ids {missing[:10]} "
                    "present in the cluster map"
                )
            if extra:
                raise ValueError(
                    f"scan {scan!r}: data for cluster ids {extra[:10]} missing "
                    "from the cluster map"
                )
            lookup = {int(k): v for k, v in data.items()}
            self._get = lookup.__getitem__
            times = {
                int(v.shape[1]) for v in lookup.values() if getattr(v, "ndim", 0) == 2
            }
            if len(times) > 1:
                raise ValueError(
                    f"scan {scan!r}: clusters have different numbers of time "
                    f"points {sorted(times)}"
                )
            for cid, v in lookup.items():
                nc = len(geom.members[int(np.searchsorted(geom.cluster_ids, cid))])
                shape = getattr(v, "shape", None)
                if shape is not None and (len(shape) != 2 or shape[0] != nc):
                    raise ValueError(
                        f"scan {scan!r}: cluster {cid} data has shape {tuple(shape)}, "
                        f"expected ({nc}, T) (voxels x time)"
                    )
        else:
            shape = getattr(data, "shape", None)
            if shape is None:
                data = np.asarray(data)
                shape = data.shape
            if len(shape) != 2 or shape[0] != n:
                raise ValueError(
                    f"scan {scan!r}: full data has shape {tuple(shape)}, expected "
                    f"(n_mask_voxels={n}, T) in mask order"
                )
            self._array = data
            self.n_time = int(shape[1])
            self._get = self._rows

    def _rows(self, cid: int) -> Any:
        rows = self.geom.members[int(np.searchsorted(self.geom.cluster_ids, cid))]
        return self._array[row_selection(rows)]

    def blocks(self) -> Generator[tuple[int, np.ndarray], None, None]:
        """(cluster id, (Nc, T) float32) for every cluster, one at a time."""
        ids = self.geom.cluster_ids
        if self._iter is None:
            for pos, cid in enumerate(ids):
                yield int(cid), self._check(pos, self._get(int(cid)))
            return
        done: set[int] = set()
        try:
            for cid, block in self._iter:
                cid = int(cid)
                pos = int(np.searchsorted(ids, cid))
                if pos >= ids.size or ids[pos] != cid:
                    raise ValueError(
                        f"scan {self.scan!r}: data for cluster id {cid} missing "
                        "from the cluster map"
                    )
                if cid in done:
                    raise ValueError(f"scan {self.scan!r}: cluster {cid} given twice")
                done.add(cid)
                yield cid, self._check(pos, block)
        finally:
            # a producer (dask thread) behind the iterator must stop on errors
            close = getattr(self._iter, "close", None)
            if close is not None:
                close()
        missing = sorted(set(ids.tolist()) - done)
        if missing:
            raise ValueError(
                f"scan {self.scan!r}: no data for cluster ids {missing[:10]} "
                "present in the cluster map"
            )

    def _check(self, pos: int, block: Any) -> np.ndarray:
        cid = int(self.geom.cluster_ids[pos])
        arr = np.asarray(block, dtype=L.DATA_DTYPE)
        nc = len(self.geom.members[pos])
        if arr.ndim != 2 or arr.shape[0] != nc:
            raise ValueError(
                f"scan {self.scan!r}: cluster {cid} data has shape {arr.shape}, "
                f"expected ({nc}, T) (voxels x time)"
            )
        if self.n_time is None:
            self.n_time = int(arr.shape[1])
        elif arr.shape[1] != self.n_time:
            raise ValueError(
                f"scan {self.scan!r}: cluster {cid} has {arr.shape[1]} time points, "
                f"other clusters {self.n_time}"
            )
        return arr


def _check_summary(name: str, summ: Any, k: int, src: _FullSource | None) -> None:
    if len(summ.shape) != 2 or summ.shape[0] != k:
        raise ValueError(
            f"scan {name!r}: summary has shape {tuple(summ.shape)}, expected "
            f"(n_clusters={k}, T) with rows in ascending cluster id order"
        )
    if src is not None and src.n_time is not None and src.n_time != summ.shape[1]:
        raise ValueError(
            f"scan {name!r}: summary has {summ.shape[1]} time points, data {src.n_time}"
        )


def _normalise_runs(runs: Any) -> list[tuple[str, Run]]:
    items: Iterable[tuple[Any, Any]] = (
        runs.items() if isinstance(runs, Mapping) else list(runs)
    )
    out: list[tuple[str, Run]] = []
    seen: set[str] = set()
    for name, spec in items:
        if name in seen:
            raise ValueError(f"duplicate scan name {name!r}")
        seen.add(name)
        if isinstance(spec, Run):
            run = spec
        elif isinstance(spec, Mapping) and spec and set(spec) <= {"data", "summary"}:
            run = Run(data=spec.get("data"), summary=spec.get("summary"))
        else:
            run = Run(data=spec)
        if run.data is None and run.summary is None:
            raise ValueError(f"scan {name!r} has neither data nor summary")
        out.append((name, run))
    return out


def _cluster_metadata_columns(
    table: Any, geom: _Geometry, allow_missing_rows: bool, non_ascii: str
) -> dict[str, np.ndarray]:
    if hasattr(table, "to_dict") and hasattr(table, "columns"):  # pandas DataFrame
        columns = {str(c): table[c].to_numpy() for c in table.columns}
    else:
        columns = {str(k): v for k, v in dict(table).items()}
    if not columns:
        return {}
    if "cluster_id" not in columns:
        raise ValueError("cluster_metadata needs a 'cluster_id' column")
    lengths = {
        k: len(np.atleast_1d(np.asarray(v, dtype=object))) for k, v in columns.items()
    }
    if len(set(lengths.values())) != 1:
        raise ValueError(f"cluster_metadata columns differ in length: {lengths}")
    ids = _as_int_ids(columns["cluster_id"], "cluster_metadata['cluster_id']").ravel()
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise ValueError(
            f"cluster_metadata has duplicate cluster ids {uniq[counts > 1].tolist()}"
        )
    unknown = np.setdiff1d(ids, geom.cluster_ids)
    if unknown.size:
        raise ValueError(
            f"cluster_metadata has cluster ids {unknown.tolist()[:10]} missing from "
            "the cluster map"
        )
    absent = np.setdiff1d(geom.cluster_ids, ids)
    if absent.size and not allow_missing_rows:
        raise ValueError(
            f"cluster ids {absent.tolist()[:10]} of the cluster map are missing from "
            "cluster_metadata (fmristore >= 2026 requires the same id sets); pass "
            "allow_missing_rows=True to write them anyway"
        )
    out: dict[str, np.ndarray] = {}
    for name, col in columns.items():
        _check_name(name, "cluster_metadata column", non_ascii)
        what = f"cluster_metadata[{name!r}]"
        if name == "cluster_id":
            out[name] = r_value(ids.astype(np.int32), what, non_ascii)
            continue
        # r_value types pandas' object columns by their values
        out[name] = r_value(np.asarray(col), what, non_ascii)
    return out


# --------------------------------------------------------------------------
# validate and plan: everything is checked before the file is created
# --------------------------------------------------------------------------


class _Header(NamedTuple):
    """The ``/header`` fields: ``pixdim`` spacing, qform scalars, ``srow_*``."""

    pixdim: tuple[float, float, float]
    qform: dict[str, float]
    srow: np.ndarray | None  # (3, 4) rows of the affine, or None


@dataclass(frozen=True)
class _Plan:
    """A checked experiment, ready to be written."""

    geom: _Geometry
    names: list[str]
    header: _Header
    scan_metadata: dict[str, dict[str, np.ndarray]]
    cluster_columns: dict[str, np.ndarray]
    sources: dict[str, _FullSource]
    summaries: dict[str, Any]
    summary_only: bool | None  # None: attribute omitted
    format: Format
    fmristore_version: str
    caps: dict[str, int]
    filters: dict[str, Any]

    @property
    def n_blocks(self) -> int:
        """(scan, cluster) data blocks plus summaries: the progress bar's total."""
        k = self.geom.cluster_ids.size
        return len(self.sources) * k + len(self.summaries)


def _check_options(
    format: Any, compression: Any, non_ascii: Any, nonpositive_ids: Any
) -> dict[str, Any]:
    """The HDF5 filter keywords, after checking the keyword options."""
    if format not in L.GENERATIONS:
        raise ValueError(f"format must be one of {L.GENERATIONS}, got {format!r}")
    if compression is not None and not (
        isinstance(compression, int | np.integer) and 0 <= compression <= 9
    ):
        raise ValueError(
            f"compression must be a gzip level 0-9 or None, got {compression!r}"
        )
    if non_ascii not in ("error", "utf8"):
        raise ValueError(f"non_ascii must be 'error' or 'utf8', got {non_ascii!r}")
    if nonpositive_ids not in ("error", "warn"):
        raise ValueError(
            f"nonpositive_ids must be 'error' or 'warn', got {nonpositive_ids!r}"
        )
    if compression is None:
        return {}
    return {"compression": "gzip", "compression_opts": int(compression)}


def _chunk_caps(chunks: Mapping[str, int] | None) -> dict[str, int]:
    """R's chunk caps, updated with the caller's."""
    caps = dict(_DEFAULT_CHUNK_CAPS)
    if chunks is not None:
        unknown = set(chunks) - set(caps)
        if unknown:
            raise ValueError(
                f"unknown chunk keys {sorted(unknown)}; use {sorted(caps)}"
            )
        caps.update({k: int(v) for k, v in chunks.items()})
        if min(caps.values()) < 1:
            raise ValueError(f"chunk caps must be >= 1, got {caps}")
    return caps


def _header(affine: Any, spacing: Sequence[float] | None, write_srow: bool) -> _Header:
    """Header fields from an affine, or R's header from the spacing alone."""
    if spacing is not None:
        spacing = check_spacing(spacing, "spacing")
    if affine is not None:
        qform, zooms = affine_to_header(affine)
        if spacing is not None and not np.allclose(np.abs(spacing), zooms):
            raise ValueError(
                f"spacing {list(spacing)} disagrees with the affine's {zooms}"
            )
        srow = np.asarray(affine, dtype="<f8")[:3].copy() if write_srow else None
        return _Header(zooms, qform, srow)
    pix = check_spacing(spacing if spacing is not None else (1, 1, 1), "spacing")
    # R: matrixToQuatern(diag(spacing))$qfac = 1 for positive sizes; nothing
    # else survives R's writer
    qform = dict.fromkeys(L.HEADER_SCALARS, 0.0)
    qform["qfac"] = 1.0
    return _Header(pix, qform, None)


def _typed_scan_metadata(
    names: Sequence[str],
    scan_metadata: Mapping[str, Mapping[str, Any]] | None,
    non_ascii: str,
) -> dict[str, dict[str, np.ndarray]]:
    """Every scan's metadata typed as R types it, keys and values checked."""
    given = dict(scan_metadata or {})
    unknown_scans = sorted(set(given) - set(names))
    if unknown_scans:
        raise ValueError(f"scan_metadata for scans {unknown_scans} not in runs")
    typed: dict[str, dict[str, np.ndarray]] = {}
    for name in names:
        typed[name] = {}
        for key, value in (given.get(name) or {}).items():
            _check_name(key, f"metadata key of scan {name!r}", non_ascii)
            if key == "TR":
                positive_seconds(value, f"TR (metadata) of scan {name!r}")
            typed[name][key] = r_value(
                value, f"metadata {key!r} of scan {name!r}", non_ascii
            )
    return typed


def _check_n_time(name: str, meta: Mapping[str, np.ndarray], t: int | None) -> None:
    """A metadata ``n_time`` must agree with the data (R would believe it)."""
    n_time = meta.get(L.ATTR_N_TIME)
    if n_time is None or t is None:
        return
    if n_time.size != 1 or int(n_time) != t:
        raise ValueError(
            f"scan {name!r}: metadata n_time={n_time.tolist()} but the "
            f"data have {t} time points (R would use n_time)"
        )


def _scan_sources(
    run_list: Sequence[tuple[str, Run]],
    geom: _Geometry,
    typed_meta: Mapping[str, Mapping[str, np.ndarray]],
) -> tuple[dict[str, _FullSource], dict[str, Any]]:
    """Checked voxel-data sources and summaries (arrays or callables) per scan."""
    k = geom.cluster_ids.size
    sources: dict[str, _FullSource] = {}
    summaries: dict[str, Any] = {}
    for name, run in run_list:
        if run.data is not None:
            sources[name] = _FullSource(name, run.data, geom)
        summ = run.summary
        if summ is not None:
            if not callable(summ) or hasattr(summ, "shape"):
                summ = summ if hasattr(summ, "shape") else np.asarray(summ)
                _check_summary(name, summ, k, sources.get(name))
            summaries[name] = summ
        t = (
            sources[name].n_time
            if name in sources
            else getattr(summaries[name], "shape", (None, None))[1]
        )
        _check_n_time(name, typed_meta[name], t)
    return sources, summaries


def _summary_only_value(summary_only: Any, all_summary: bool) -> bool | None:
    """``/scans@summary_only`` to write (None: omit it), see write_experiment."""
    if summary_only == "auto":
        return True if all_summary else None
    if summary_only == "r":
        return all_summary
    if isinstance(summary_only, bool | np.bool_):
        return bool(summary_only)
    raise ValueError(
        f"summary_only must be 'auto', 'r', True or False, not {summary_only!r}"
    )


def _plan(
    *,
    mask: Any,
    cluster_map: Any,
    runs: Any,
    scan_metadata: Mapping[str, Mapping[str, Any]] | None,
    cluster_metadata: Any,
    header: _Header,
    nonpositive_ids: str,
    non_ascii: str,
    allow_missing_rows: bool,
    summary_only: Any,
) -> tuple[_Geometry, list[str], dict[str, Any]]:
    """Geometry, scan names and the checked per-scan content of an experiment."""
    geom = _geometry(mask, cluster_map, nonpositive_ids)
    run_list = _normalise_runs(runs)
    names = [_check_name(name, "scan name", non_ascii) for name, _ in run_list]
    typed_meta = _typed_scan_metadata(names, scan_metadata, non_ascii)
    columns = (
        _cluster_metadata_columns(cluster_metadata, geom, allow_missing_rows, non_ascii)
        if cluster_metadata is not None
        else {}
    )
    sources, summaries = _scan_sources(run_list, geom, typed_meta)
    content = {
        "header": header,
        "scan_metadata": typed_meta,
        "cluster_columns": columns,
        "sources": sources,
        "summaries": summaries,
        "summary_only": _summary_only_value(
            summary_only, bool(run_list) and not sources
        ),
    }
    return geom, names, content


# --------------------------------------------------------------------------
# the writer
# --------------------------------------------------------------------------


def _write_geometry(f: h5py.File, plan: _Plan) -> None:
    """Root attributes, mask, cluster map, voxel coordinates, header, clusters."""
    geom = plan.geom
    if plan.format == "2026":
        _str_attr(f, L.ATTR_ROOT_CLASS, L.EXPERIMENT_CLASSES["2026"])
        _str_attr(f, L.ATTR_ROOT_VERSION, plan.fmristore_version)
    x, y, z = geom.shape
    mask_zyx = np.zeros(x * y * z, dtype=np.uint8)
    mask_zyx[geom.mask_index] = 1
    f.create_dataset(L.MASK, data=mask_zyx.reshape(z, y, x))
    f.create_dataset(L.CLUSTER_MAP, data=geom.cluster_map.astype("<i4"))
    ijk = np.unravel_index(geom.mask_index, geom.shape, order="F")
    f.create_dataset(L.VOXEL_COORDS, data=np.stack(ijk).astype("<i4") + 1)  # 1-based
    _write_header(f.create_group(L.HEADER), plan.header, geom.shape, len(plan.names))
    clusters = f.create_group(L.CLUSTERS)
    ids = geom.cluster_ids.astype("<i4")
    _small_dataset(clusters, "cluster_ids", ids.reshape(()) if ids.size == 1 else ids)
    if plan.cluster_columns:
        cm = f.create_group(L.CLUSTER_META)
        for col, values in plan.cluster_columns.items():
            _small_dataset(cm, col, values)


def _write_header(
    group: h5py.Group, header: _Header, shape: tuple[int, int, int], n_scans: int
) -> None:
    x, y, z = shape
    group.create_dataset("dim", data=np.array([4, x, y, z, n_scans, 1, 1, 1], "<i4"))
    pixdim = np.array([0.0, *header.pixdim, 0.0, 0.0, 0.0, 0.0], dtype="<f8")
    group.create_dataset("pixdim", data=pixdim)
    for fname in L.HEADER_SCALARS:
        group.create_dataset(fname, data=np.float64(header.qform[fname]), dtype="<f8")
    if header.srow is not None:
        for row, fname in enumerate(L.SROWS):
            group.create_dataset(fname, data=header.srow[row].copy())


def _write_full_scan(
    group: h5py.Group, src: _FullSource, writer: ChunkWriter, plan: _Plan, bar: Any
) -> None:
    """``cluster_<id>`` datasets of one scan, one cluster in memory at a time."""
    caps = plan.caps
    # closing(): an error while writing also stops a producer behind the blocks
    with contextlib.closing(src.blocks()) as blocks:
        for cid, block in blocks:
            t, nc = block.shape[1], block.shape[0]
            name = f"cluster_{cid}"
            if t == 0:  # R: empty matrices are contiguous, unfiltered
                group.create_dataset(name, shape=(0, nc), dtype=L.DATA_DTYPE)
            else:
                d = group.create_dataset(
                    name,
                    shape=(t, nc),
                    dtype=L.DATA_DTYPE,
                    chunks=(min(t, caps["time"]), min(nc, caps["voxel"])),
                    maxshape=(None, None),
                    **plan.filters,
                )
                writer.write(d, block.T)  # (T, Nc) on disk: hdf5r's reversal
            bar.update(1)


def _write_summary(
    group: h5py.Group, name: str, writer: ChunkWriter, plan: _Plan, bar: Any
) -> int:
    """``clusters_summary/summary_data`` (K, T) of one scan; returns T."""
    k = plan.geom.cluster_ids.size
    summ = plan.summaries[name]
    summ = np.asarray(summ() if callable(summ) else summ, L.DATA_DTYPE)
    _check_summary(name, summ, k, plan.sources.get(name))
    t = summ.shape[1]
    sg = group.create_group("clusters_summary")
    if t == 0:
        sg.create_dataset("summary_data", shape=(k, 0), dtype=L.DATA_DTYPE)
    else:
        d = sg.create_dataset(
            "summary_data",
            shape=(k, t),
            dtype=L.DATA_DTYPE,
            chunks=(min(k, plan.caps["cluster"]), min(t, plan.caps["time"])),
            maxshape=(None, None),
            **plan.filters,
        )
        writer.write(d, summ)
    bar.update(1)
    return t


def _write_scans(f: h5py.File, plan: _Plan, writer: ChunkWriter, bar: Any) -> None:
    """``/scans/<name>``: class, metadata, cluster datasets and summary."""
    scans = f.create_group(L.SCANS)
    if plan.summary_only is not None:
        _logical_attr(scans, L.ATTR_SUMMARY_ONLY, plan.summary_only)
    for name in plan.names:
        g = scans.create_group(name)
        full = name in plan.sources
        _str_attr(
            g,
            L.ATTR_CLASS,
            (L.FULL_CLASSES if full else L.SUMMARY_CLASSES)[plan.format],
        )
        if plan.scan_metadata[name]:
            mg = g.create_group("metadata")
            for key, value in plan.scan_metadata[name].items():
                _small_dataset(mg, key, value)
        t: int | None = None
        if full:
            cg = g.create_group("clusters")
            _write_full_scan(cg, plan.sources[name], writer, plan, bar)
            t = plan.sources[name].n_time
        if name in plan.summaries:
            t = _write_summary(g, name, writer, plan, bar)
        # data and summaries given as callables show their length only now
        _check_n_time(name, plan.scan_metadata[name], t)


def _write_plan(
    path: str | os.PathLike[str],
    plan: _Plan,
    *,
    overwrite: bool,
    progress: bool,
    threads: int | None,
) -> None:
    """Write a checked plan to a temporary file renamed into place."""
    with (
        atomic_output(path, overwrite=overwrite, suffix=".h5.tmp") as tmp,
        h5py.File(tmp, "w") as f,
        ChunkWriter(threads) as writer,
        tqdm(
            total=plan.n_blocks,
            disable=not progress,
            desc=f"writing {Path(path).name}",
            unit="block",
        ) as bar,
    ):
        _write_geometry(f, plan)
        _write_scans(f, plan, writer, bar)
        writer.flush()


def write_experiment(
    path: str | os.PathLike[str],
    *,
    mask: Any,
    cluster_map: Any = None,
    runs: Mapping[str, Any] | Sequence[tuple[str, Any]],
    scan_metadata: Mapping[str, Mapping[str, Any]] | None = None,
    cluster_metadata: Any = None,
    affine: Any = None,
    spacing: Sequence[float] | None = None,
    format: Format = "2026",
    compression: int | None = 4,
    chunks: Mapping[str, int] | None = None,
    summary_only: Literal["auto", "r"] | bool = "auto",
    fmristore_version: str | None = None,
    write_srow: bool = True,
    nonpositive_ids: Literal["error", "warn"] = "error",
    non_ascii: Literal["error", "utf8"] = "error",
    allow_missing_rows: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    threads: int | None = None,
    parents: bool = False,
) -> Path:
    """Write an fmristore clustered experiment that R fmristore reads.

    Parameters
    ----------
    path
        Output file. Written to a temporary file in the same folder and renamed
        into place, so a failure leaves no partial file and never harms an
        existing one.
    mask
        (X, Y, Z) volume. Boolean (or 0/1) together with ``cluster_map``, or a
        labelled integer volume (0 = outside, any other value = cluster id)
        with ``cluster_map=None``. Mask order is R's ``which(mask)``: x
        fastest (``np.flatnonzero(mask.ravel(order="F"))``).
    cluster_map
        (N,) cluster id of every mask voxel, in mask order.
    runs
        Scan name -> :class:`Run`, a dict with keys ``"data"`` and/or
        ``"summary"``, or the full data alone (see :class:`Run` for the forms
        accepted). A sequence of ``(name, run)`` pairs is also accepted.
        Scans with data are written as full scans (``clusters/cluster_<id>``,
        float32 (T, Nc)); scans with a summary get
        ``clusters_summary/summary_data`` (float32 (K, T)). A scan with both
        gets both and the full class string.
    scan_metadata
        Scan name -> {key: value}. Types as R's writer: str -> vlen ASCII
        string, bool -> int8 (R reads logicals back as integers), int ->
        int32, float -> float64; NumPy scalars and 1-D arrays keep their
        (R-readable) dtype; length-1 values are written as scalars.
        ``n_time`` is written only when given here.
    cluster_metadata
        Table (DataFrame or mapping column -> values) with a ``cluster_id``
        column; one dataset per column, rows in the given order.
    affine
        4x4 voxel (0-based) -> world matrix. Stored as NIfTI quaternion,
        offsets and qfac (the fields R reads) plus ``srow_x/y/z``.
        Without it the header is exactly R's: zero quaternion and offsets,
        ``pixdim`` from ``spacing`` and qfac from its sign.
    spacing
        Voxel size when no affine is given (default 1, 1, 1).
    format
        ``"2026"`` (default): ``H5ParcellatedScan[Summary]`` class strings and
        the root ``fmristore_class`` / ``fmristore_version`` attributes, as
        fmristore HEAD writes. ``"2025"``: ``H5ClusterRun[Summary]``, no root
        attributes, as fmristore da98ae5 writes.
    compression
        gzip level 0-9 (default 4, R's). ``None`` writes chunked data without
        a filter; R's ``compress=FALSE`` is level 0.
    chunks
        Caps of the chunk shape, keys ``"time"`` (128), ``"voxel"`` (1024),
        ``"cluster"`` (256): cluster datasets get chunks
        ``(min(T, time), min(Nc, voxel))``, summaries
        ``(min(K, cluster), min(T, time))`` -- R's defaults.
    summary_only
        ``"auto"`` (default): write ``/scans@summary_only = TRUE`` when every
        scan is summary-only and omit the attribute otherwise. R's writers
        always write it, and FALSE on a file that mixes full and summary scans
        makes each R generation fail on the other's files with default
        arguments; without the attribute both classify scans by the data
        present (fmristore format notes, section 2.9). ``"r"``: exactly R's
        rule (TRUE iff all scans are summaries, else FALSE). ``True`` /
        ``False``: force the value.
    fmristore_version
        Root ``fmristore_version`` for format "2026" (default
        :data:`R_FMRISTORE_VERSION`).
    write_srow
        Also write ``srow_x/y/z`` when an affine is given (default True).
    nonpositive_ids
        Cluster ids <= 0 (id 0 in particular) cannot be read back by R for
        full scans. ``"error"`` (default) refuses them; ``"warn"`` writes them
        with a warning.
    non_ascii
        hdf5r flags strings ASCII and cannot read non-ASCII ones back.
        ``"error"`` (default) refuses them (values and names); ``"utf8"``
        stores UTF-8 bytes, as R does, with a warning.
    allow_missing_rows
        Allow ``cluster_metadata`` without a row for some cluster ids (files
        written by fmristore da98ae5 can be like that; HEAD refuses).
    overwrite
        Replace an existing file (default False: raise FileExistsError).
    progress
        Show a tqdm progress bar over the (scan, cluster) blocks.
    threads
        Threads for chunk compression (default: available CPUs).
    parents
        Make the output's missing folders (default False: a missing folder is
        a ``ClusterH5Error``, raised before any work).

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    ValueError
        For inputs that disagree (shapes, ids, names, types); the message
        names what is wrong.
    FileExistsError
        If ``path`` exists and ``overwrite`` is False.
    """
    output_folder(Path(path).absolute().parent, parents=parents)
    filters = _check_options(format, compression, non_ascii, nonpositive_ids)
    caps = _chunk_caps(chunks)
    geom, names, content = _plan(
        mask=mask,
        cluster_map=cluster_map,
        runs=runs,
        scan_metadata=scan_metadata,
        cluster_metadata=cluster_metadata,
        header=_header(affine, spacing, write_srow),
        nonpositive_ids=nonpositive_ids,
        non_ascii=non_ascii,
        allow_missing_rows=allow_missing_rows,
        summary_only=summary_only,
    )
    plan = _Plan(
        geom=geom,
        names=names,
        format=format,
        fmristore_version=fmristore_version or R_FMRISTORE_VERSION,
        caps=caps,
        filters=filters,
        **content,
    )
    _write_plan(path, plan, overwrite=overwrite, progress=progress, threads=threads)
    return Path(path)
