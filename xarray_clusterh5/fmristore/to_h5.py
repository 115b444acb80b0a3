"""Write the xarray views of a clustered experiment back to fmristore HDF5.

``to_fmristore`` accepts the three views the ``clusterh5`` engine opens (and
that :func:`xarray_clusterh5.from_nifti` builds):

* the padded Dataset, ``data(run, cluster, voxel, time)`` (NaN padded) and/or
  ``summary(run, cluster, time)``;
* a one-run Dataset, ``data(voxel, time)`` with a flat ``voxel`` dim and/or
  ``summary(cluster, time)``;
* the DataTree, geometry at the root and one child per scan.

It recovers the geometry (mask, cluster map), the metadata with its on-disk
types (the ``fmristore_*`` attributes the reader leaves on coordinates) and
the header, then hands everything to
:func:`xarray_clusterh5.fmristore.write.write_experiment`.
Data is streamed one (run, cluster) block at a time; dask-backed data is
computed with ``dask.array.store`` into a bounded queue, so shared upstream
tasks (a whole NIfTI run, say) run once and at most a few blocks wait in memory.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr

from xarray_clusterh5._hdf5.chunk_write import default_threads
from xarray_clusterh5.fmristore import ops
from xarray_clusterh5.fmristore.ops import as_numpy
from xarray_clusterh5.fmristore.views import ROLE
from xarray_clusterh5.fmristore.write import (
    Run,
    check_spacing,
    row_selection,
    write_experiment,
)

__all__ = ["to_fmristore"]

# --------------------------------------------------------------------------
# pieces shared by the views
# --------------------------------------------------------------------------


def _header_kwargs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """affine/spacing/write_srow for write_experiment from the geometry attrs."""
    spacing = check_spacing(
        attrs.get("spacing", (1, 1, 1)), "the 'spacing' attribute of the Dataset"
    )
    form = ops.affine_form(attrs)
    if form == "none" or attrs.get("affine") is None:
        # R's header (zero quaternion): write it back as it was
        return {"affine": None, "spacing": spacing}
    aff = np.asarray(attrs["affine"], dtype=np.float64).reshape(4, 4)
    # a quaternion-only file keeps its form; everything else gets srow_* too
    return {"affine": aff, "write_srow": form == "srow"}


def _volume_shape(attrs: Mapping[str, Any]) -> tuple[int, int, int]:
    if "volume_shape" not in attrs:
        raise ValueError(
            "not a clustered fMRI Dataset: attribute 'volume_shape' is missing"
        )
    x, y, z = (int(n) for n in np.asarray(attrs["volume_shape"]).ravel())
    return x, y, z


def _mask_and_map(
    shape: tuple[int, ...],
    ijk: np.ndarray,
    labels: np.ndarray,
    mask_index: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (X,Y,Z) mask and the cluster map in mask order from voxel lists."""
    x, y, z = shape
    if ijk.size and (ijk.min() < 0 or (ijk >= np.array(shape)).any()):
        raise ValueError("voxel indices i/j/k fall outside volume_shape")
    linear = ijk[:, 0] + x * (ijk[:, 1] + y * ijk[:, 2])
    order = np.argsort(linear, kind="stable")
    if np.any(np.diff(linear[order]) == 0):
        raise ValueError("the same voxel appears twice in the i/j/k coordinates")
    # positions in mask order must follow the voxels' column-major order; they
    # need not be 0..N-1 (a subset of clusters keeps the original positions)
    if mask_index is not None and np.any(np.diff(mask_index[order]) <= 0):
        raise ValueError(
            "mask_index disagrees with i/j/k (positions in mask order must follow "
            "the voxels' column-major order)"
        )
    mask = np.zeros(x * y * z, dtype=bool)
    mask[linear] = True
    return mask.reshape((x, y, z), order="F"), labels[order]


def _cluster_metadata_from_coords(
    ds: xr.Dataset, cluster_ids: np.ndarray
) -> tuple[dict[str, np.ndarray] | None, bool]:
    """Columns of the cluster-metadata table, rows without data dropped."""
    columns: dict[str, np.ndarray] = {}
    absent = np.zeros(cluster_ids.size, dtype=bool)
    for name, coord in ds.coords.items():
        if coord.attrs.get(ROLE) != "cluster_metadata" or coord.dims != ("cluster",):
            continue
        key = str(coord.attrs.get("fmristore_key", name))
        missing = np.atleast_1d(coord.attrs.get("fmristore_missing", []))
        absent |= np.isin(cluster_ids, missing.astype(np.int64))
        columns[key] = ops.typed_value(
            as_numpy(coord), coord.attrs.get("fmristore_dtype")
        )
    if not columns:
        return None, False
    keep = ~absent
    table = {k: np.atleast_1d(v)[keep] for k, v in columns.items()}
    if "cluster_id" not in table:
        table["cluster_id"] = cluster_ids[keep].astype(np.int32)
    return table, bool(absent.any())


def _is_dask(obj: Any) -> bool:
    return hasattr(obj, "dask") and hasattr(obj, "chunks")


def _assembled(parts: list[tuple[Any, np.ndarray]], shape: tuple[int, ...]) -> Any:
    """One block from the chunks dask stored; one whole chunk is not copied.

    The writer casts every block to float32, so both paths give the same data.
    """
    first = parts[0][1]
    if len(parts) == 1 and first.shape == shape:  # pragma: no mutate - no-copy path
        return first
    block = np.empty(shape, dtype=np.float32)
    for k, p in parts:
        block[k] = p
    return block


class _QueueSink:
    """``dask.array.store`` target that hands each block to a bounded queue."""

    def __init__(self, cid: int, q: queue.Queue[Any], cancel: threading.Event) -> None:
        self.cid = cid
        self.q = q
        self.cancel = cancel
        self.shape: tuple[int, ...] | None = None
        self.parts: list[tuple[Any, np.ndarray]] = []

    def __setitem__(self, key: Any, value: np.ndarray) -> None:
        # one block normally arrives whole; several chunks are assembled here
        self.parts.append((key, np.asarray(value)))
        if self.shape is not None:
            covered = sum(p.size for _, p in self.parts)
            if covered < int(np.prod(self.shape)):
                return
            block = _assembled(self.parts, self.shape)
            self.parts = []
            while not self.cancel.is_set():
                with contextlib.suppress(queue.Full):
                    self.q.put((self.cid, block), timeout=0.1)
                    return
            raise RuntimeError("writing was cancelled")


def _stream_dask(
    blocks: Mapping[int, Any], threads: int | None
) -> Iterator[tuple[int, Any]]:
    """Compute dask blocks in one graph, yielding them as they finish.

    At most ``2 * threads`` finished blocks wait in the queue; shared upstream
    tasks run once because every block is in the same ``store`` call.
    """
    import dask
    import dask.array as da

    n_threads = threads or default_threads()
    depth = max(2, 2 * n_threads)  # pragma: no mutate - queue depth: tuning only
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    cancel = threading.Event()
    sinks: list[Any] = []
    for cid, arr in blocks.items():
        sink = _QueueSink(cid, q, cancel)
        sink.shape = tuple(int(n) for n in arr.shape)
        sinks.append(sink)
    done = object()
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            with dask.config.set(scheduler="threads", num_workers=n_threads):
                # dask accepts any object with __setitem__ as a target
                da.store(list(blocks.values()), sinks, lock=False, compute=True)
        except BaseException as err:  # handed to the consumer
            errors.append(err)
        finally:
            while True:
                try:
                    q.put(done, timeout=0.1)
                    break
                except queue.Full:
                    if cancel.is_set():
                        with contextlib.suppress(queue.Empty):
                            q.get_nowait()

    thread = threading.Thread(target=produce, name="clusterh5-dask-store", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                break
            yield item
        if errors and not cancel.is_set():
            raise errors[0]
    finally:
        cancel.set()
        while thread.is_alive():
            with contextlib.suppress(queue.Empty):
                q.get(timeout=0.1)
        thread.join()


def _run_blocks(
    var: xr.Variable, keys: dict[int, tuple[Any, ...]], threads: int | None
) -> Any:
    """Full data for write_experiment: a dask stream or a per-cluster callable.

    ``keys`` maps cluster id -> indexer of ``var`` giving its (Nc, T) block.
    Blocks are indexed when needed: a Variable kept around would cache its
    values (xarray's MemoryCachedArray) and hold the whole run in memory.
    """
    # Variable.data would load a lazily indexed array whole; chunks is cheap
    if var.chunks is not None and _is_dask(var.data):
        return _stream_dask({cid: var.data[key] for cid, key in keys.items()}, threads)
    return lambda cid: np.asarray(var[keys[cid]].values)


# --------------------------------------------------------------------------
# the three views
# --------------------------------------------------------------------------


def _padded_mask_and_slots(
    ds: xr.Dataset,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """Mask, cluster map, ids, voxels per cluster, and slot orders.

    The last item gives, per cluster, its slots in mask order (identity for
    the reader's views).
    """
    for name in ("run", "cluster", "i", "j", "k"):
        if name not in ds.variables:
            raise ValueError(f"padded clustered Dataset lacks the coordinate {name!r}")
    shape = _volume_shape(ds.attrs)
    cluster_ids = as_numpy(ds["cluster"]).astype(np.int64)
    ijk_slots = np.stack([as_numpy(ds[c]) for c in "ijk"], axis=-1)  # (K, V, 3)
    valid = ijk_slots[..., 0] >= 0
    n_voxels = valid.sum(axis=1)
    if "n_voxels" in ds.coords and not np.array_equal(
        as_numpy(ds["n_voxels"]), n_voxels
    ):
        raise ValueError("n_voxels disagrees with the i/j/k padding")
    if not np.array_equal(
        valid, np.arange(valid.shape[1])[None, :] < n_voxels[:, None]
    ):
        raise ValueError("padding (-1) must come after the voxels of each cluster")
    ijk = ijk_slots[valid]
    labels = np.repeat(cluster_ids, n_voxels)
    mask_index = (
        as_numpy(ds["mask_index"])[valid] if "mask_index" in ds.coords else None
    )
    mask, cmap = _mask_and_map(shape, ijk, labels, mask_index)
    # each cluster's slots in mask order (the reader's are already)
    mpos = np.empty(labels.size, dtype=np.int64)
    mpos[np.argsort(ijk[:, 0] + shape[0] * (ijk[:, 1] + shape[1] * ijk[:, 2]))] = (
        np.arange(labels.size)
    )
    offsets = np.concatenate([[0], np.cumsum(n_voxels)])
    perms = [
        np.argsort(mpos[offsets[c] : offsets[c + 1]]) for c in range(len(cluster_ids))
    ]
    return mask, cmap, cluster_ids, n_voxels, perms


def _from_padded(ds: xr.Dataset, threads: int | None) -> dict[str, Any]:
    mask, cmap, cluster_ids, n_voxels, perms = _padded_mask_and_slots(ds)
    runs = [str(r) for r in as_numpy(ds["run"])]
    if len(set(runs)) != len(runs):
        dup = sorted({r for r in runs if runs.count(r) > 1})
        raise ValueError(f"duplicate scan names {dup} in the 'run' coordinate")

    def flag(name: str, var: str) -> np.ndarray:
        if name in ds.coords:
            return as_numpy(ds[name]).astype(bool)
        return np.full(len(runs), var in ds.data_vars)

    has_data, has_summary = flag("has_data", "data"), flag("has_summary", "summary")
    if "time" not in ds.dims:
        raise ValueError("padded clustered Dataset lacks the dimension 'time'")
    n_time = np.full(len(runs), ds.sizes["time"])
    if "n_time" in ds.coords:  # a time slice of the view can shorten runs
        n_time = np.minimum(as_numpy(ds["n_time"]).astype(int), n_time)
    run_specs: dict[str, Run] = {}
    for r, name in enumerate(runs):
        t = int(n_time[r])
        data = summary = None
        if has_data[r]:
            if "data" not in ds.data_vars:
                raise ValueError(f"run {name!r} has_data but there is no 'data'")
            var = ds["data"].variable.transpose("run", "cluster", "voxel", "time")
            keys: dict[int, tuple[Any, ...]] = {}
            for c, cid in enumerate(cluster_ids):
                slots: Any = slice(0, int(n_voxels[c]))
                if not np.array_equal(perms[c], np.arange(perms[c].size)):
                    slots = perms[c]
                keys[int(cid)] = (r, c, slots, slice(0, t))
            data = _run_blocks(var, keys, threads)
        if has_summary[r]:
            if "summary" not in ds.data_vars:
                raise ValueError(f"run {name!r} has_summary but there is no 'summary'")
            svar = ds["summary"].variable.transpose("run", "cluster", "time")
            summary = _lazy_values(svar, (r, slice(None), slice(0, t)))
        if data is None and summary is None:
            raise ValueError(f"run {name!r} has neither data nor summary")
        run_specs[name] = Run(data=data, summary=summary)
    table, partial = _cluster_metadata_from_coords(ds, cluster_ids)
    return {
        "mask": mask,
        "cluster_map": cmap,
        "runs": run_specs,
        "scan_metadata": ops.scan_metadata(ds),
        "cluster_metadata": table,
        "allow_missing_rows": partial,
        **_header_kwargs(ds.attrs),
    }


def _lazy_values(var: xr.Variable, key: tuple[Any, ...]) -> Any:
    """A callable the writer calls when it gets to this array (streams it)."""
    return lambda: np.asarray(var[key].values)


def _mask_map_and_rows(
    geo: xr.Dataset, attrs: Mapping[str, Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """mask, cluster map, cluster ids, and each cluster's voxel rows in mask order."""
    for name in ("voxel_cluster", "cluster", "i", "j", "k"):
        if name not in geo.variables:
            raise ValueError(f"clustered Dataset lacks the coordinate {name!r}")
    shape = _volume_shape(attrs)
    labels = as_numpy(geo["voxel_cluster"]).astype(np.int64)
    ijk = np.stack([as_numpy(geo[c]) for c in "ijk"], axis=-1).astype(np.int64)
    mask_index = as_numpy(geo["mask_index"]) if "mask_index" in geo.variables else None
    mask, cmap = _mask_and_map(shape, ijk, labels, mask_index)
    cluster_ids = as_numpy(geo["cluster"]).astype(np.int64)
    if not np.array_equal(np.sort(cluster_ids), np.unique(labels)):
        raise ValueError(
            "cluster ids of the 'cluster' coordinate differ from 'voxel_cluster'"
        )
    linear = ijk[:, 0] + shape[0] * (ijk[:, 1] + shape[1] * ijk[:, 2])
    rows = []
    for cid in cluster_ids:
        members = np.flatnonzero(labels == cid)
        rows.append(members[np.argsort(linear[members], kind="stable")])
    return mask, cmap, cluster_ids, labels, rows


def _flat_run(
    node: xr.Dataset,
    cluster_ids: np.ndarray,
    rows: list[np.ndarray],
    threads: int | None,
) -> Run:
    data = summary = None
    if "data" in node.data_vars:
        var = node["data"].variable.transpose("voxel", "time")
        keys: dict[int, tuple[Any, ...]] = {}
        # one row block per cluster by construction
        for cid, r in zip(cluster_ids, rows, strict=True):  # pragma: no mutate
            keys[int(cid)] = (row_selection(r),)
        data = _run_blocks(var, keys, threads)
    if "summary" in node.data_vars:
        svar = node["summary"].variable.transpose("cluster", "time")
        # cluster_ids is the node's own 'cluster' (a tree's children inherit it)
        order = np.argsort(cluster_ids)
        sel: Any = slice(None)
        if not np.array_equal(order, np.arange(order.size)):
            sel = order
        summary = _lazy_values(svar, (sel, slice(None)))
    if data is None and summary is None:
        raise ValueError(
            f"scan {node.attrs.get('scan')!r} has neither data nor summary"
        )
    return Run(data=data, summary=summary)


def _from_run_view(ds: xr.Dataset, threads: int | None) -> dict[str, Any]:
    mask, cmap, ids, _labels, rows = _mask_map_and_rows(ds, ds.attrs)
    name = str(ds.attrs.get("scan", "scan_001"))
    table, partial = _cluster_metadata_from_coords(ds, ids)
    return {
        "mask": mask,
        "cluster_map": cmap,
        "runs": {name: _flat_run(ds, ids, rows, threads)},
        "scan_metadata": {name: ops.scan_metadata(ds)[name]},
        "cluster_metadata": table,
        "allow_missing_rows": partial,
        **_header_kwargs(ds.attrs),
    }


def _from_tree(tree: xr.DataTree, threads: int | None) -> dict[str, Any]:
    # the root has no parent to inherit from: inherit=True gives the same Dataset
    root = tree.to_dataset(inherit=False)  # pragma: no mutate
    mask, cmap, ids, _labels, rows = _mask_map_and_rows(root, root.attrs)
    runs: dict[str, Run] = {}
    meta: dict[str, dict[str, Any]] = {}
    for child_name, child in tree.children.items():
        node = child.to_dataset(inherit=True)
        name = str(node.attrs.get("scan", child_name))
        runs[name] = _flat_run(node, ids, rows, threads)
        meta[name] = ops.scan_metadata(node.assign_attrs(scan=name))[name]
    table, partial = _cluster_metadata_from_coords(root, ids)
    return {
        "mask": mask,
        "cluster_map": cmap,
        "runs": runs,
        "scan_metadata": meta,
        "cluster_metadata": table,
        "allow_missing_rows": partial,
        **_header_kwargs(root.attrs),
    }


def to_fmristore(
    obj: xr.Dataset | xr.DataTree,
    path: str | os.PathLike[str],
    *,
    format: Literal["2025", "2026"] | None = None,
    compression: int | None = 4,
    chunks: Mapping[str, int] | None = None,
    overwrite: bool = False,
    progress: bool = False,
    summary_only: Literal["auto", "r"] | bool = "auto",
    threads: int | None = None,
    **kwargs: Any,
) -> Path:
    """Write a clustered Dataset or DataTree as an fmristore HDF5 file.

    Parameters
    ----------
    obj
        The padded view (``xr.open_dataset(path, engine="clusterh5")`` or
        :func:`~xarray_clusterh5.from_nifti`), a one-run view
        (``group=SCAN``), or the DataTree (``xr.open_datatree``).
    path
        Output file; written atomically (temporary file + rename).
    format
        ``"2025"`` or ``"2026"``; default: the generation recorded in the
        object (attribute ``fmristore_generation``), else ``"2026"``, so that
        open -> write -> open gives an identical object.
    compression, chunks, summary_only, threads
        As in :func:`xarray_clusterh5.fmristore.write.write_experiment` (defaults are
        R's: gzip 4, R's chunk shapes; ``summary_only`` omitted on mixed files).
    overwrite
        Replace an existing file (default False).
    progress
        tqdm progress bar over the (scan, cluster) blocks.
    **kwargs
        Passed to :func:`~xarray_clusterh5.fmristore.write.write_experiment`
        (``nonpositive_ids``, ``non_ascii``, ``fmristore_version``, ``parents``
        to make missing folders, ...).

    Returns
    -------
    Path
        The written file.
    """
    if isinstance(obj, xr.DataTree):
        attrs = obj.attrs
        content = _from_tree(obj, threads)
    elif isinstance(obj, xr.Dataset):
        attrs = obj.attrs
        if "run" in obj.dims or attrs.get("clusterh5_view") == "padded":
            content = _from_padded(ops.with_run_dim(obj), threads)
        else:
            content = _from_run_view(obj, threads)
    else:
        raise TypeError(
            f"expected an xarray Dataset or DataTree, got {type(obj).__name__}"
        )
    fmt = format or str(attrs.get("fmristore_generation", "2026"))
    if "fmristore_version" in attrs:  # written with format "2026" only
        kwargs.setdefault("fmristore_version", str(attrs["fmristore_version"]))
    content.update(kwargs)
    return write_experiment(
        path,
        format=fmt,  # type: ignore[arg-type]
        compression=compression,
        chunks=chunks,
        overwrite=overwrite,
        progress=progress,
        summary_only=summary_only,
        threads=threads,
        **content,
    )
