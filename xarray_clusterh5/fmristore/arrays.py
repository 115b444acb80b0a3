"""Lazy arrays over the per-cluster datasets, for xarray's explicit indexing.

Each array keeps only a file manager, a lock and small NumPy metadata, so it
pickles into dask tasks (process workers included) without an h5py object.
Every read of one ``__getitem__`` happens inside one lock acquisition.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np
from xarray.backends import BackendArray
from xarray.backends.file_manager import FileManager
from xarray.core import indexing

from xarray_clusterh5._hdf5 import chunk_read as _chunkread
from xarray_clusterh5._hdf5.files import named_errors
from xarray_clusterh5.fmristore import layout as L
from xarray_clusterh5.fmristore import read

_F32 = np.dtype("float32")


@dataclass(frozen=True)
class _Job:
    """One window of one ``cluster_<id>`` dataset and where its values go."""

    scan: str
    cluster_id: int
    n_voxels: int
    n_time: int
    v_idx: np.ndarray
    t_idx: np.ndarray
    dest: np.ndarray  # (len(v_idx), len(t_idx)) view of the result
    # known step-1 runs (a part of indices checked once for the whole request)
    v_contiguous: bool
    t_contiguous: bool

    def windows(self) -> tuple[tuple[slice, np.ndarray | None], ...]:
        """Covering slices and local picks of the voxel and time indices."""
        return (
            _window(self.v_idx, known=self.v_contiguous),
            _window(self.t_idx, known=self.t_contiguous),
        )


def _axis(key: Any, size: int) -> tuple[np.ndarray, bool]:
    """Indices selected along one axis and whether the axis is kept."""
    if isinstance(key, int | np.integer):
        k = int(key)
        return np.array([k + size if k < 0 else k], dtype=np.int64), False
    if isinstance(key, slice):
        return np.arange(size, dtype=np.int64)[key], True
    return np.asarray(key, dtype=np.int64).ravel(), True


def _window(idx: np.ndarray, *, known: bool = False) -> tuple[slice, np.ndarray | None]:
    """Covering slice of sorted indices, and the local picks if not contiguous.

    ``known``: the caller has checked that the indices are a step-1 run.
    """
    lo, hi = int(idx[0]), int(idx[-1]) + 1
    if known:
        return slice(lo, hi), None
    # xarray passes non-decreasing indices as they are, duplicates included
    if _is_run(idx):
        return slice(lo, hi), None
    return slice(lo, hi), idx - lo


def _is_run(idx: np.ndarray) -> bool:
    """Whether indices go up by exactly one (so does every part of them)."""
    return bool(np.all(np.diff(idx) == 1))  # also for fewer than two


def _finish(out: np.ndarray, keep: list[bool]) -> np.ndarray:
    return out[tuple(slice(None) if k else 0 for k in keep)]


class _ClusterArray(BackendArray):
    """Shared plumbing: file access under the lock, and explicit indexing."""

    indexing_support = indexing.IndexingSupport.OUTER
    dtype = _F32
    shape: tuple[int, ...]

    def __init__(self, manager: FileManager, lock: Any, path: str) -> None:
        self.manager = manager
        self.lock = lock
        self.path = path
        # where each cluster dataset's chunks are, while the file stays open
        self._tables = _chunkread.ChunkTables()

    @contextlib.contextmanager
    def _file(self) -> Iterator[h5py.File]:
        # self.lock already serialises HDF5 calls; the manager's own lock would
        # only be taken a second time
        opened = self.manager.acquire_context(needs_lock=False)  # pragma: no mutate
        with self.lock, opened as f:
            yield f

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        return indexing.explicit_indexing_adapter(
            key, self.shape, self.indexing_support, self._raw_indexing_method
        )

    def _raw_indexing_method(self, key: tuple[Any, ...]) -> np.ndarray:
        raise NotImplementedError

    def _read_blocks(self, jobs: list[_Job]) -> None:
        """Fill each job's destination with its window of one cluster dataset.

        Under the lock, every window's chunks are only located (a few
        low-level HDF5 calls per dataset); once the lock is released, batches
        of neighbouring chunks are read and inflated on the thread pool.
        Later reads build the windows from the chunk locations kept from the
        first. Whatever we do not decode ourselves, h5py reads.
        """
        pending = []
        with contextlib.ExitStack() as stack:
            with self._file() as f:
                # one window reads its few chunks directly; batching pays
                # from two on (and costs a driver check and a dup). Either
                # path reads the same chunks: tuning only, hence no mutants
                batched = len(jobs) > 1  # pragma: no mutate
                source = _chunkread.FileRanges.of(f) if batched else None
                dec = stack.enter_context(_chunkread.Decoder(source))
                groups: dict[str, h5py.Group | None] = {}
                for job in jobs:
                    (v_sl, v_pick), (t_sl, t_pick) = job.windows()
                    with self._errors(job):
                        raw = self._fetch(f, groups, job, (t_sl, v_sl), dec.has_source)
                    # decoded straight into the result, or into a block copied
                    # there after: the same values (a fast path, no mutants)
                    whole = v_pick is None and t_pick is None
                    direct = raw is not None and whole  # pragma: no mutate
                    dec.add(raw, out=job.dest.T if direct else None)
                    pending.append((job, (t_sl, v_sl), v_pick, t_pick, direct))
            blocks = dec.finish()
        for (job, sel, v_pick, t_pick, direct), block in zip(
            pending, blocks, strict=True
        ):
            if direct and block is not None:
                continue
            if block is None:  # not ours to decode, or a bad chunk: h5py reads
                with self._file() as f, self._errors(job):
                    dset = self._dataset(f, {}, job)
                    block = np.asarray(dset[sel], dtype=_F32)
            block = block.T  # on disk (T, Nc)
            if v_pick is not None:
                block = block[v_pick]
            if t_pick is not None:
                block = block[:, t_pick]
            job.dest[...] = block

    def _fetch(
        self,
        f: h5py.File,
        groups: dict[str, h5py.Group | None],
        job: _Job,
        sel: tuple[slice, slice],
        locate: bool,
    ) -> _chunkread.RawWindow | None:
        """Locate (or read) the window's chunks; known locations first."""
        tables = self._tables.of(f)
        key = (job.scan, job.cluster_id)
        if locate and key in tables:
            return tables[key].window(sel)
        if job.scan not in groups:
            groups[job.scan] = read.clusters_group_of(f, self.path, job.scan)
        group = groups[job.scan]
        found = None
        if group is not None:
            found = read.cluster_dataset_id(
                group, job.cluster_id, job.n_voxels, job.n_time
            )
        if found is None:
            dset = self._dataset(f, groups, job)  # raises what is wrong, or h5py
            return _chunkread.fetch_window(dset, sel, locate=locate)
        dsid, plist = found  # its shape is checked: (n_time, n_voxels)
        shape = (job.n_time, job.n_voxels)
        table = (
            _chunkread.locate_chunks(dsid, sel, plist=plist, shape=shape)
            if locate
            else None
        )
        if table is None:
            return _chunkread.fetch_window(dsid, sel, locate=locate, plist=plist)
        tables[key] = table
        return table.window(sel)

    def _errors(self, job: _Job) -> contextlib.AbstractContextManager[None]:
        """Errors reading one cluster dataset name the file and the dataset."""
        obj = L.cluster_path(job.scan, job.cluster_id)
        return named_errors(self.path, "reading voxel data", obj)

    def _dataset(
        self, f: h5py.File, groups: dict[str, h5py.Group | None], job: _Job
    ) -> h5py.Dataset:
        if job.scan not in groups:
            groups[job.scan] = read.clusters_group_of(f, self.path, job.scan)
        return read.cluster_dataset(
            f,
            self.path,
            job.scan,
            job.cluster_id,
            job.n_voxels,
            job.n_time,
            group=groups[job.scan],
        )


class RunVoxelArray(_ClusterArray):
    """``data(voxel, time)`` of one full scan, voxels cluster by cluster."""

    def __init__(
        self,
        manager: FileManager,
        lock: Any,
        path: str,
        scan: str,
        cluster_ids: np.ndarray,
        n_voxels: np.ndarray,
        n_time: int,
    ) -> None:
        super().__init__(manager, lock, path)
        self.scan = scan
        self.cluster_ids = np.asarray(cluster_ids, dtype=np.int64)
        self.n_voxels = np.asarray(n_voxels, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.n_voxels)])
        self.shape = (int(self.offsets[-1]), int(n_time))

    def _raw_indexing_method(self, key: tuple[Any, ...]) -> np.ndarray:
        v_idx, keep_v = _axis(key[0], self.shape[0])
        t_idx, keep_t = _axis(key[1], self.shape[1])
        out = np.empty((len(v_idx), len(t_idx)), dtype=_F32)
        if out.size == 0:
            return _finish(out, [keep_v, keep_t])
        # requested voxels are sorted: each cluster is one contiguous run of them
        pos = np.searchsorted(self.offsets, v_idx, side="right") - 1
        starts = np.flatnonzero(np.r_[True, pos[1:] != pos[:-1]])
        v_run, t_run = _is_run(v_idx), _is_run(t_idx)
        jobs = []
        for a, b in itertools.pairwise(np.r_[starts, len(pos)]):
            c = int(pos[a])
            jobs.append(
                _Job(
                    self.scan,
                    int(self.cluster_ids[c]),
                    int(self.n_voxels[c]),
                    self.shape[1],
                    v_idx[a:b] - self.offsets[c],
                    t_idx,
                    out[a:b],
                    v_run,
                    t_run,
                )
            )
        self._read_blocks(jobs)
        return _finish(out, [keep_v, keep_t])


class PaddedVoxelArray(_ClusterArray):
    """``data(run, cluster, voxel, time)``: NaN outside each cluster and run.

    Padding is produced in memory; a request that lies wholly in padding
    touches no file.
    """

    def __init__(
        self,
        manager: FileManager,
        lock: Any,
        path: str,
        scans: tuple[str, ...],
        has_data: np.ndarray,
        n_time: np.ndarray,
        cluster_ids: np.ndarray,
        n_voxels: np.ndarray,
    ) -> None:
        super().__init__(manager, lock, path)
        self.scans = tuple(scans)
        self.has_data = np.asarray(has_data, dtype=bool)
        self.n_time = np.asarray(n_time, dtype=np.int64)
        self.cluster_ids = np.asarray(cluster_ids, dtype=np.int64)
        self.n_voxels = np.asarray(n_voxels, dtype=np.int64)
        self.shape = (
            len(self.scans),
            len(self.cluster_ids),
            int(self.n_voxels.max()),  # the reader refuses files without clusters
            int(self.n_time.max(initial=0)),
        )

    def _raw_indexing_method(self, key: tuple[Any, ...]) -> np.ndarray:
        axes = [_axis(k, n) for k, n in zip(key, self.shape, strict=True)]
        (r_idx, _), (c_idx, _), (v_idx, _), (t_idx, _) = axes
        keep = [k for _, k in axes]
        out = np.full((len(r_idx), len(c_idx), len(v_idx), len(t_idx)), np.nan, _F32)
        v_run, t_run = _is_run(v_idx), _is_run(t_idx)
        jobs = []
        for a, r in enumerate(r_idx):
            if not self.has_data[r]:
                continue
            nt = int(np.searchsorted(t_idx, self.n_time[r]))  # indices are sorted
            if nt == 0:
                continue
            for b, c in enumerate(c_idx):
                nv = int(np.searchsorted(v_idx, self.n_voxels[c]))
                if nv:
                    jobs.append((a, int(r), b, int(c), nv, nt))
        self._read_blocks(
            [
                _Job(
                    self.scans[r],
                    int(self.cluster_ids[c]),
                    int(self.n_voxels[c]),
                    int(self.n_time[r]),
                    v_idx[:nv],
                    t_idx[:nt],
                    out[a, b, :nv, :nt],
                    v_run,
                    t_run,
                )
                for a, r, b, c, nv, nt in jobs
            ]
        )
        return _finish(out, keep)


class SummaryArray(_ClusterArray):
    """``summary(run, cluster, time)`` (padded) or ``summary(cluster, time)``."""

    def __init__(
        self,
        manager: FileManager,
        lock: Any,
        path: str,
        scans: tuple[str, ...],
        has_summary: np.ndarray,
        n_time: np.ndarray,
        n_clusters: int,
        *,
        squeeze_run: bool = False,
    ) -> None:
        super().__init__(manager, lock, path)
        self.scans = tuple(scans)
        self.has_summary = np.asarray(has_summary, dtype=bool)
        self.n_time = np.asarray(n_time, dtype=np.int64)
        self.squeeze_run = squeeze_run
        full = (len(self.scans), int(n_clusters), int(self.n_time.max(initial=0)))
        self.shape = full[1:] if squeeze_run else full

    def _raw_indexing_method(self, key: tuple[Any, ...]) -> np.ndarray:
        if self.squeeze_run:
            key = (0, *key)
        shape = (len(self.scans), *self.shape[-2:])
        axes = [_axis(k, n) for k, n in zip(key, shape, strict=True)]
        (r_idx, _), (c_idx, _), (t_idx, _) = axes
        keep = [k for _, k in axes]
        out = np.full((len(r_idx), len(c_idx), len(t_idx)), np.nan, _F32)
        if len(c_idx) == 0:
            return _finish(out, keep)
        c_sl, c_pick = _window(c_idx)
        jobs = []
        for a, r in enumerate(r_idx):
            nt = int(np.searchsorted(t_idx, self.n_time[r]))
            if self.has_summary[r] and nt:
                jobs.append((a, int(r), nt))
        if jobs:
            with self._file() as f:
                for a, r, nt in jobs:
                    t_sl, t_pick = _window(t_idx[:nt])
                    name = L.summary_path(self.scans[r])
                    with named_errors(self.path, "reading cluster summaries", name):
                        dset = read.summary_dataset(f, self.path, self.scans[r])
                        block = read.read_window(dset, (c_sl, t_sl))
                    if c_pick is not None:
                        block = block[c_pick]
                    if t_pick is not None:
                        block = block[:, t_pick]
                    out[a, :, :nt] = block
        return _finish(out, keep)
