"""Parallel reading of gzip-chunked datasets: raw chunks, zlib in threads.

h5py decompresses chunks one at a time in the calling thread, inside its
global lock, so a large read of a gzip dataset uses one core. HDF5's deflate
filter stores exactly the zlib format (header and Adler-32 included, at every
level 0-9), and its shuffle filter is a byte transpose, so we can do the
filters' work ourselves: read the stored bytes of every chunk covering a
window with ``H5Dread_chunk`` (``dset.id.read_direct_chunk``), then inflate,
unshuffle and place them on a shared thread pool (``zlib``, or ISA-L when the
``fast`` extra is installed, ~1.4x faster; both and NumPy copies release the
GIL).

The reading happens in two steps so that a caller holding an HDF5 lock only
needs it for the first: ``fetch_window`` reads the raw bytes (needs h5py and
the lock), ``RawWindow.decode`` decompresses (needs neither).
``read_window_parallel`` does both, one window at a time. ``Decoder`` lets a
caller reading many windows (one per cluster dataset) fetch the next while
the pool decodes earlier ones straight into its result; no window then waits
for another's last chunk (a window of fmristore's layout has only ~3).

The pool has one thread per CPU; a caller uses CPUs - 1 of them and decodes
in its own thread too (more threads than cores measured slower).

Only what we can reproduce exactly is handled: 2-D chunked datasets of
little-endian float32/float64 whose filter pipeline is deflate, optionally
with shuffle. Anything else (contiguous or unfiltered data, fletcher32,
scale-offset, szip, lzf, plugins, big-endian or integer data, unallocated
chunks, stepped selections, corrupt chunks) returns None so that h5py reads
it, and raises its own errors.

The pool is module-level, created on first use and forgotten in a forked
child (its threads do not survive ``fork``); arrays never hold it, so they
pickle.
"""

from __future__ import annotations

import os
import queue
import threading
import weakref
import zlib
from collections.abc import Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from xarray_clusterh5._hdf5.chunk_write import default_threads
from xarray_clusterh5._hdf5.deflate import inflate

__all__ = [
    "MIN_PARALLEL_BYTES",
    "MIN_PARALLEL_CHUNKS",
    "ByteSource",
    "ChunkTable",
    "ChunkTables",
    "Decoder",
    "FileRanges",
    "RawWindow",
    "decode_windows",
    "fetch_window",
    "locate_chunks",
    "read_window_parallel",
]

# HDF5 filter ids (H5Zpublic.h)
_DEFLATE = 1
_SHUFFLE = 2

#: windows covering fewer chunks, or fewer stored bytes, are decoded in the
#: calling thread only. Handing a chunk to a pool thread costs 30-60 us;
#: zlib inflates about 150-250 MB/s per core here, so below ~100 KB of
#: compressed data the handoff eats the gain (a chunk of fmristore's layout,
#: (128, Nc<=1024) float32, is 100-500 KB and inflates in 0.5-2 ms).
MIN_PARALLEL_CHUNKS = 2
MIN_PARALLEL_BYTES = 128 * 1024

_F32 = np.dtype("<f4")
_SUPPORTED = (np.dtype("<f4"), np.dtype("<f8"))

_pool: ThreadPoolExecutor | None = None
_pool_size = 1  # pragma: no mutate - set with the pool, before any use
_pool_lock = threading.Lock()


def _get_pool() -> tuple[ThreadPoolExecutor, int]:
    global _pool, _pool_size
    pool = _pool
    if pool is None:
        with _pool_lock:
            if _pool is None:
                _pool_size = default_threads()
                _pool = ThreadPoolExecutor(_pool_size, thread_name_prefix="chunkread")
            pool = _pool
    return pool, _pool_size


def _forget_pool() -> None:
    # after fork the child has the executor object but none of its threads
    global _pool, _pool_lock
    _pool = None
    _pool_lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # pragma: no branch
    os.register_at_fork(after_in_child=_forget_pool)


@dataclass(frozen=True)
class _Pipeline:
    """The filters to undo, in pipeline order: ``(position, filter id)``."""

    filters: tuple[tuple[int, int], ...]
    chunks: tuple[int, int]
    dtype: np.dtype


def _pipeline(
    dset: h5py.Dataset | h5py.h5d.DatasetID,
    plist: h5py.h5p.PropDCID | None = None,
    shape: tuple[int, ...] | None = None,
) -> _Pipeline | None:
    """The dataset's filters if we can undo all of them, else None.

    Works on the low-level ``DatasetID`` (and its creation property list and
    shape, if the caller already has them): per dataset this costs a few
    microseconds where the high-level properties cost tens, which matters
    with thousands of small cluster datasets.
    """
    dsid = dset.id if isinstance(dset, h5py.Dataset) else dset
    dtype = dsid.dtype  # h5py caches it; shape and rank are HDF5 calls
    rank = dsid.rank if shape is None else len(shape)
    if rank != 2 or dtype not in _SUPPORTED:
        return None
    if plist is None:
        plist = dsid.get_create_plist()
    # (H5Pequal against the last dataset's list would save these calls, but
    # it calls creation lists with other chunk shapes equal: measured)
    if plist.get_layout() != h5py.h5d.CHUNKED:
        return None
    filters = []
    for i in range(plist.get_nfilters()):
        code = plist.get_filter(i)[0]
        if code not in (_DEFLATE, _SHUFFLE):
            return None  # fletcher32, scale-offset, szip, lzf, plugins ...
        filters.append((i, int(code)))
    if not any(code == _DEFLATE for _, code in filters):
        return None  # nothing to decompress: h5py reads raw chunks as fast
    rows, cols = plist.get_chunk()
    return _Pipeline(tuple(filters), (int(rows), int(cols)), dtype)


def _bounds(sel: object, n: int) -> tuple[int, int] | None:
    """``(start, stop)`` of a step-1 slice, or None for anything else."""
    if not isinstance(sel, slice):
        return None
    start, stop, step = sel.indices(n)
    if step != 1:
        return None
    return start, max(start, stop)


@dataclass
class _Chunk:
    """One stored chunk and where its part of the window goes.

    ``raw`` is None for a chunk only located so far (``fetch_window(...,
    locate=True)``): ``at`` then gives its ``(byte offset, stored size)`` in
    the file, for a ``ByteSource`` to read together with its neighbours.
    """

    raw: bytes | memoryview | None
    filter_mask: int
    src: tuple[slice, slice]  # inside the chunk
    dst: tuple[slice, slice]  # inside the window
    at: tuple[int, int]

    @property
    def stored(self) -> int:
        return self.at[1] if self.raw is None else len(self.raw)


@dataclass(frozen=True)
class RawWindow:
    """The stored bytes of every chunk covering a window, not yet decoded.

    Made by ``fetch_window`` (under the HDF5 lock); ``decode`` needs no h5py
    object and no lock.
    """

    shape: tuple[int, int]
    pipeline: _Pipeline
    chunks: list[_Chunk]

    @property
    def n_chunks(self) -> int:
        """Number of stored chunks covering the window."""
        return len(self.chunks)

    @property
    def nbytes(self) -> int:
        """Stored (compressed) bytes of those chunks."""
        return sum(c.stored for c in self.chunks)

    def decode(self, *, parallel: bool | None = None) -> np.ndarray | None:
        """Undo the filters and assemble the window as float32.

        Parameters
        ----------
        parallel : bool, optional
            Decode on the shared thread pool (and in the calling thread).
            Default: when the window covers at least ``MIN_PARALLEL_CHUNKS``
            chunks and ``MIN_PARALLEL_BYTES`` stored bytes.

        Returns
        -------
        numpy.ndarray or None
            The ``(rows, cols)`` window, float32. It is Fortran-ordered: the
            engine transposes windows to ``(voxel, time)``, which then is a
            contiguous array, and the transposing copy happens in the worker
            threads. None if a chunk does not decode (h5py should then read
            the window and report the problem).
        """
        out = np.empty(self.shape[::-1], dtype=_F32).T
        if parallel is None:
            parallel = _worth_parallel(self.n_chunks, self.nbytes)
        try:
            if parallel and self.n_chunks > 1:
                _run_parallel(self, out)
            else:
                for chunk in self.chunks:
                    _decode_into(self.pipeline, chunk, out)
        except (zlib.error, ValueError):
            return None
        return out


def _decode_into(pipe: _Pipeline, chunk: _Chunk, out: np.ndarray) -> None:
    """Undo the chunk's filters (last applied first) and copy its part to ``out``."""
    if chunk.raw is None:
        raise ValueError("chunk located but not read")
    data: Any = chunk.raw
    itemsize = pipe.dtype.itemsize
    nbytes = pipe.chunks[0] * pipe.chunks[1] * itemsize
    for pos, code in reversed(pipe.filters):
        if chunk.filter_mask & (1 << pos):
            continue  # this filter was skipped when the chunk was written
        if code == _DEFLATE:
            data = inflate(data, nbytes)
        else:  # shuffle: byte b of every element is stored contiguously
            buf = np.frombuffer(data, dtype=np.uint8)
            n = buf.size // itemsize
            body = buf[: n * itemsize].reshape(itemsize, n).T
            data = np.concatenate([body.ravel(), buf[n * itemsize :]])
    values = np.frombuffer(data, dtype=pipe.dtype)
    if values.size != pipe.chunks[0] * pipe.chunks[1]:
        raise ValueError("decoded chunk has the wrong size")
    out[chunk.dst] = values.reshape(pipe.chunks)[chunk.src]


def _worth_parallel(n_chunks: int, nbytes: int) -> bool:
    # tuning only: the pool and the caller's thread decode the same values
    enough = n_chunks >= MIN_PARALLEL_CHUNKS  # pragma: no mutate
    return enough and nbytes >= MIN_PARALLEL_BYTES  # pragma: no mutate


def _run_parallel(window: RawWindow, out: np.ndarray) -> None:
    _drain_all([(window.pipeline, chunk, out) for chunk in window.chunks])


def _drain_all(jobs: list[tuple[_Pipeline, _Chunk, np.ndarray]]) -> None:
    """Decode every job on the pool; the calling thread decodes too.

    Helpers pull jobs from one shared iterator, so uneven chunks balance out
    and progress never waits on a pool busy with another caller's work.
    """
    pool, size = _get_pool()
    it = iter(jobs)
    lock = threading.Lock()

    def drain() -> None:
        while True:
            with lock:
                job = next(it, None)
            if job is None:
                return
            _decode_into(*job)

    # the calling thread is one of the `size` workers: more threads than
    # cores only adds switching (measured: 3 threads on 2 cores were slower)
    n_helpers = min(size - 1, len(jobs) - 1)  # pragma: no mutate - tuning
    helpers: list[Future[None]] = [pool.submit(drain) for _ in range(n_helpers)]
    try:
        drain()
    finally:
        for f in helpers:
            f.cancel()  # not started (pool busy elsewhere): nothing left for it
        errors = [f.exception() for f in helpers if not f.cancelled()]
    for err in errors:
        if err is not None:
            raise err


def decode_windows(windows: list[RawWindow | None]) -> list[np.ndarray | None]:
    """Decode many fetched windows at once, all their chunks on the pool.

    Decoding windows one by one waits for each window's last chunk before
    the next starts (a window of fmristore's layout has about 3 chunks, so
    one core idles part of the time); pooling the chunks of many windows
    keeps every core busy. Needs no h5py object and no lock.

    Parameters
    ----------
    windows : list of RawWindow or None
        From ``fetch_window``; None entries stay None.

    Returns
    -------
    list of numpy.ndarray or None
        Fortran-ordered float32 windows, aligned with ``windows``; None for
        a None input or a window with a chunk that does not decode (read
        that one with h5py).
    """
    outs: list[np.ndarray | None] = []
    jobs: list[tuple[_Pipeline, _Chunk, np.ndarray]] = []
    for w in windows:
        if w is None:
            outs.append(None)
            continue
        out = np.empty(w.shape[::-1], dtype=_F32).T
        outs.append(out)
        jobs.extend((w.pipeline, chunk, out) for chunk in w.chunks)
    try:
        if _worth_parallel(len(jobs), sum(job[1].stored for job in jobs)):
            _drain_all(jobs)
        else:
            for job in jobs:
                _decode_into(*job)
    except (zlib.error, ValueError):
        # find which windows are bad; the good ones decode again (rare path)
        return [None if w is None else w.decode(parallel=False) for w in windows]
    return outs


class ByteSource:
    """Reads byte ranges of an open file, for chunks located but not read.

    Subclasses say how (``read``) and how to group ranges: ranges closer
    than ``max_gap`` bytes are read as one span, and a ``Decoder`` hands
    its pool about ``batch_bytes`` of stored data at a time, so a batch of
    many small chunks costs one hand-off and a few reads.
    """

    max_gap = 64 * 1024  # pragma: no mutate - tuning
    batch_bytes = 512 * 1024  # pragma: no mutate - per helper handoff: same values

    def read(self, spans: list[tuple[int, int]]) -> list[bytes]:
        """The bytes of each ``(offset, size)`` span (short at end of file)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what ``read`` needs."""

    def fetch(self, chunks: list[_Chunk]) -> None:
        """Fill ``raw`` of every located chunk, neighbours read together."""
        todo = sorted((c for c in chunks if c.raw is None), key=lambda c: c.at[0])
        spans: list[tuple[int, int]] = []
        members: list[list[_Chunk]] = []
        for c in todo:
            off, size = c.at
            if spans and off - (spans[-1][0] + spans[-1][1]) <= self.max_gap:
                start = spans[-1][0]
                spans[-1] = (start, max(spans[-1][1], off + size - start))
                members[-1].append(c)
            else:
                spans.append((off, size))
                members.append([c])
        for (start, _), data, group in zip(
            spans, self.read(spans), members, strict=True
        ):
            view = memoryview(data)
            for c in group:
                c.raw = view[c.at[0] - start : c.at[0] - start + c.at[1]]


class FileRanges(ByteSource):
    """``pread`` on a duplicate of h5py's own descriptor of a local file.

    The duplicate stays valid if the file manager closes the h5py file while
    a batch is still being read; ``pread`` releases the GIL and needs no
    HDF5 lock, so pool threads read and inflate at once.
    """

    def __init__(self, fd: int) -> None:
        self._fd = os.dup(fd)

    @classmethod
    def of(cls, f: h5py.File) -> FileRanges | None:
        """For a file on the default driver without a user block, else None.

        Chunk addresses are then plain offsets into the file.
        """
        if f.driver != "sec2" or f.userblock_size:
            return None
        try:
            return cls(f.id.get_vfd_handle())
        except (OSError, ValueError, TypeError):  # pragma: no cover - defensive
            return None

    def read(self, spans: list[tuple[int, int]]) -> list[bytes]:
        return [os.pread(self._fd, size, off) for off, size in spans]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


_Job = tuple[int, _Pipeline, _Chunk]


class Decoder:
    """Read and decode windows on the pool while the caller locates more.

    ``add`` collects a fetched or located window's chunks into batches of
    about ``source.batch_bytes`` stored bytes; each full batch goes to the
    pool at once (helpers start when the work is worth it), where located
    chunks are read from ``source`` (neighbours in one read) and every chunk
    is inflated straight into its window. ``finish`` does what is left in
    the calling thread too, waits, and returns the windows. Use it as a
    context manager so helpers and the source are released even when
    fetching fails::

        with Decoder(FileRanges.of(f)) as dec:
            with lock:
                for dset, sel, dst in work:
                    dec.add(fetch_window(dset, sel, locate=True), out=dst)
            blocks = dec.finish()

    Fetched windows (bytes in hand) are decoded while the caller fetches
    more; located ones wait for ``finish`` (they hold no bytes, and decoding
    alongside the caller's many small HDF5 calls only contends for the GIL).
    A batch of many small windows costs one thread hand-off, and no window
    waits for another's last chunk. Needs no h5py object.

    Parameters
    ----------
    source : ByteSource, optional
        Reads located chunks; required to ``add`` windows from
        ``fetch_window(..., locate=True)``. Closed by ``finish`` / on exit.
    """

    def __init__(self, source: ByteSource | None = None) -> None:
        self._source = source
        self._batch_bytes = (source or ByteSource).batch_bytes
        self._queue: queue.SimpleQueue[list[_Job] | None] = queue.SimpleQueue()
        self._outs: list[np.ndarray | None] = []
        self._failed: set[int] = set()
        self._helpers: list[Future[None]] = []
        self._batch: list[_Job] = []
        self._batch_stored = 0
        self._queued = 0  # pragma: no mutate - only decides on helper threads
        self._queued_bytes = 0  # pragma: no mutate - tuning
        self._done = False

    def __enter__(self) -> Decoder:
        return self

    @property
    def has_source(self) -> bool:
        """Whether located (not yet read) windows may be added."""
        return self._source is not None

    def __exit__(self, *exc: object) -> None:
        try:
            self._stop_helpers()
        finally:
            if self._source is not None:
                self._source.close()

    def add(self, window: RawWindow | None, out: np.ndarray | None = None) -> int:
        """Queue ``window`` (None is kept as None); return its position.

        ``out``, if given, is the float32 array (any strides, e.g. a
        transposed view of the caller's result) to decode into; its shape
        must be the window's.
        """
        if self._done:
            raise RuntimeError("Decoder.add after finish")
        idx = len(self._outs)
        if window is None:
            self._outs.append(None)
            return idx
        if out is None:
            out = np.empty(window.shape[::-1], dtype=_F32).T
        elif out.shape != window.shape or out.dtype != _F32:
            raise ValueError(
                f"out has shape {out.shape} and dtype {out.dtype}, "
                f"expected {window.shape} float32"
            )
        if self._source is None and any(c.raw is None for c in window.chunks):
            raise ValueError("a located window needs a Decoder with a source")
        self._outs.append(out)
        for chunk in window.chunks:
            self._batch.append((idx, window.pipeline, chunk))
            self._batch_stored += chunk.stored
        if self._batch_stored >= self._batch_bytes:
            self._seal()
        return idx

    def _seal(self) -> None:
        """Hand the current batch to the pool (helpers start if worth it)."""
        if self._batch:
            self._queue.put(self._batch)
            self._queued += len(self._batch)
            self._queued_bytes += self._batch_stored
            # a batch's byte count decides only when it is handed over
            self._batch, self._batch_stored = [], 0  # pragma: no mutate
        # Located chunks hold no bytes, so they can wait: decoding while the
        # caller still locates only makes both fight for the GIL (3,488 small
        # datasets, first read: 0.66-0.69x raw h5py deferred, 0.74-0.77x
        # overlapped even with a 0.1 ms switch interval; 1.03x at 5 ms).
        # Fetched chunks hold their bytes: decode them as they come.
        # (When helpers start changes timing only: same chunks, same values.)
        if self._source is not None and not self._done:  # pragma: no mutate
            return
        if not self._helpers and _worth_parallel(self._queued, self._queued_bytes):
            pool, size = _get_pool()
            self._helpers = [pool.submit(self._drain, True) for _ in range(size - 1)]

    def _drain(self, wait: bool) -> None:
        while True:
            try:
                batch = self._queue.get() if wait else self._queue.get_nowait()
            except queue.Empty:
                return
            if batch is None:
                return
            self._run(batch)

    def _run(self, batch: list[_Job]) -> None:
        if self._source is not None:
            try:
                self._source.fetch([chunk for _, _, chunk in batch])
            except (OSError, ValueError):
                self._failed.update(idx for idx, _, _ in batch)
                return
        for idx, pipe, chunk in batch:
            out = self._outs[idx]
            if idx in self._failed or out is None:
                continue
            try:
                _decode_into(pipe, chunk, out)
            except (zlib.error, ValueError):
                self._failed.add(idx)
            chunk.raw = None if chunk.at[1] else chunk.raw  # free read bytes

    def _stop_helpers(self) -> None:
        helpers, self._helpers = self._helpers, []
        running = [f for f in helpers if not f.cancel()]
        for _ in running:
            self._queue.put(None)
        for f in running:
            f.result()

    def finish(self) -> list[np.ndarray | None]:
        """Decode the rest, wait for the helpers, return the windows.

        Returns
        -------
        list of numpy.ndarray or None
            In the order added; None for a None window or one with a chunk
            that does not decode or read (read that one with h5py).
        """
        self._done = True
        try:
            self._seal()
            self._drain(False)
        finally:
            self._stop_helpers()
        return [None if i in self._failed else o for i, o in enumerate(self._outs)]


def fetch_window(
    dset: h5py.Dataset | h5py.h5d.DatasetID,
    selection: tuple[slice, slice],
    *,
    locate: bool = False,
    plist: h5py.h5p.PropDCID | None = None,
) -> RawWindow | None:
    """Read (or only locate) the stored chunks covering ``dset[selection]``.

    Needs the file open (and, in the engine, the HDF5 lock); decoding the
    result does not.

    Parameters
    ----------
    dset : h5py.Dataset or h5py.h5d.DatasetID
        A 2-D dataset (the low-level id saves per-dataset overhead).
    selection : tuple of two slices
        Step-1 slices (``None`` steps allowed).
    locate : bool
        Only look up each chunk's byte offset and size (``H5Dget_chunk_info``)
        instead of reading it; a ``Decoder`` with a ``ByteSource`` then reads
        neighbouring chunks of many windows in one go.
    plist : h5py.h5p.PropDCID, optional
        The dataset's creation property list, if the caller has it.

    Returns
    -------
    RawWindow or None
        None when the dataset or selection is not one we decode ourselves.
    """
    if locate:
        table = locate_chunks(dset, selection, plist=plist)
        if table is not None:
            return table.window(selection)
    dsid = dset.id if isinstance(dset, h5py.Dataset) else dset
    pipe = _pipeline(dsid, plist)
    if pipe is None or not _is_window(selection):
        return None
    return _build_window(
        dsid.shape, pipe, selection, lambda at: _stored_chunk(dsid, at, locate)
    )


_Stored = tuple[bytes | None, int, tuple[int, int]]


@dataclass(frozen=True)
class ChunkTable:
    """Where every stored chunk of one dataset is, from one ``H5Dchunk_iter``.

    Made under the HDF5 lock by ``locate_chunks``; ``window`` needs neither
    h5py nor the lock, so a caller may keep the table while the file stays
    open and build later windows of the dataset without any HDF5 call.
    """

    shape: tuple[int, int]
    pipeline: _Pipeline
    #: chunk offset -> (None, filter mask, (byte offset, stored size))
    located: dict[tuple[int, int], _Stored]

    def window(self, selection: tuple[slice, slice]) -> RawWindow | None:
        """The located chunks covering ``selection`` (None if one is unallocated)."""
        if not _is_window(selection):
            return None
        return _build_window(self.shape, self.pipeline, selection, self.located.get)


class ChunkTables:
    """``ChunkTable``s of the datasets of one open file, by the caller's key.

    Chunk locations do not change while a file is open read-only, so a lazy
    array keeps them and a second read of the same datasets makes no HDF5
    call at all (what HDF5's own metadata cache does for h5py, one level
    up). Given another file object (the file manager reopened the file) the
    tables are forgotten. Pickles empty: no h5py object travels to workers.
    Callers hold the HDF5 lock while using it.
    """

    def __init__(self) -> None:
        self._file: weakref.ref[h5py.h5f.FileID] | None = None
        self._tables: dict[Hashable, ChunkTable] = {}

    def __reduce__(self) -> tuple[type[ChunkTables], tuple[()]]:
        return ChunkTables, ()

    def of(self, f: h5py.File) -> dict[Hashable, ChunkTable]:
        """The tables of ``f``, empty the first time or after a reopen."""
        fid = f.id
        if self._file is None or self._file() is not fid:
            self._file, self._tables = weakref.ref(fid), {}
        return self._tables


def locate_chunks(
    dset: h5py.Dataset | h5py.h5d.DatasetID,
    selection: tuple[slice, slice],
    *,
    plist: h5py.h5p.PropDCID | None = None,
    shape: tuple[int, int] | None = None,
) -> ChunkTable | None:
    """Every stored chunk's location, when ``selection`` needs most of them.

    One ``H5Dchunk_iter`` pass costs about what one
    ``get_chunk_info_by_coord`` lookup does, so it pays when the window needs
    at least half of the dataset's chunks (a whole small cluster dataset: the
    common case). None when it does not pay, or the dataset is not one we
    decode ourselves. ``plist`` and ``shape``, if the caller has them, save
    HDF5 calls.
    """
    dsid = dset.id if isinstance(dset, h5py.Dataset) else dset
    if not hasattr(dsid, "chunk_iter") or not _is_window(selection):
        return None  # HDF5 older than 1.14 has no H5Dchunk_iter
    pipe = _pipeline(dsid, plist, shape)
    if pipe is None:
        return None
    if shape is None:
        shape = dsid.shape
    b0, b1 = _bounds(selection[0], shape[0]), _bounds(selection[1], shape[1])
    if b0 is None or b1 is None or not _mostly_needed(shape, pipe.chunks, b0, b1):
        return None
    located: dict[tuple[int, int], _Stored] = {}

    def visit(info: Any) -> None:  # called for allocated chunks only
        where = (int(info.byte_offset), int(info.size))
        located[tuple(info.chunk_offset)] = (None, int(info.filter_mask), where)

    try:
        dsid.chunk_iter(visit)
    except (RuntimeError, OSError, KeyError, ValueError):
        return None
    return ChunkTable((int(shape[0]), int(shape[1])), pipe, located)


def _is_window(selection: object) -> bool:
    return isinstance(selection, tuple) and len(selection) == 2


def _mostly_needed(
    shape: tuple[int, ...],
    chunk: tuple[int, int],
    rows: tuple[int, int],
    cols: tuple[int, int],
) -> bool:
    """Whether the window covers at least half of the dataset's chunks."""
    total = -(-shape[0] // chunk[0]) * -(-shape[1] // chunk[1])
    needed = (-(-rows[1] // chunk[0]) - rows[0] // chunk[0]) * (
        -(-cols[1] // chunk[1]) - cols[0] // chunk[1]
    )
    return 2 * needed >= total


def _build_window(
    shape: tuple[int, ...],
    pipe: _Pipeline,
    selection: tuple[slice, slice],
    stored_at: Any,
) -> RawWindow | None:
    """The window's chunks, each from ``stored_at(chunk offset)`` (None: give up)."""
    b0 = _bounds(selection[0], shape[0])
    b1 = _bounds(selection[1], shape[1])
    if b0 is None or b1 is None:
        return None
    (r0, r1), (c0, c1) = b0, b1
    if r1 <= r0 or c1 <= c0:
        return None
    cr, cc = pipe.chunks
    chunks: list[_Chunk] = []
    for orow in range(r0 - r0 % cr, r1, cr):
        rs, re = max(r0, orow), min(r1, orow + cr)
        for ocol in range(c0 - c0 % cc, c1, cc):
            cs, ce = max(c0, ocol), min(c1, ocol + cc)
            stored = stored_at((orow, ocol))
            if stored is None:
                return None  # unallocated chunk (fill value): let h5py do it
            raw, mask, at = stored
            chunks.append(
                _Chunk(
                    raw,
                    mask,
                    (slice(rs - orow, re - orow), slice(cs - ocol, ce - ocol)),
                    (slice(rs - r0, re - r0), slice(cs - c0, ce - c0)),
                    at,
                )
            )
    return RawWindow((r1 - r0, c1 - c0), pipe, chunks)


def _stored_chunk(
    dsid: h5py.h5d.DatasetID, offset: tuple[int, int], locate: bool
) -> _Stored | None:
    """``(bytes or None, filter mask, (byte offset, size))`` of one chunk."""
    try:
        if not locate:
            mask, raw = dsid.read_direct_chunk(offset)
            return raw, int(mask), (0, 0)
        info = dsid.get_chunk_info_by_coord(offset)
    except (RuntimeError, OSError, KeyError, ValueError):
        return None
    # HDF5 reports an unallocated chunk as both (no address, size 0)
    if info.byte_offset is None or info.size <= 0:  # pragma: no mutate
        return None
    return None, int(info.filter_mask), (int(info.byte_offset), int(info.size))


def read_window_parallel(
    dset: h5py.Dataset, selection: tuple[slice, slice]
) -> np.ndarray | None:
    """Read ``dset[selection]`` as float32, decompressing chunks in threads.

    Parameters
    ----------
    dset : h5py.Dataset
        A 2-D dataset; gzip (deflate) chunked, optionally shuffled,
        little-endian float32 or float64 for this path to apply.
    selection : tuple of two slices
        Step-1 slices.

    Returns
    -------
    numpy.ndarray or None
        The window (Fortran-ordered float32), or None when h5py should read
        it (unsupported layout or filters, or a chunk that does not decode).
    """
    raw = fetch_window(dset, selection)
    if raw is None:
        return None
    return raw.decode()
