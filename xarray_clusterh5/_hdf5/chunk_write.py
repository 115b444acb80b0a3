"""Fast chunk I/O over h5py: encode chunks in threads, write them raw.

h5py compresses chunks one at a time, in the calling thread, while holding its
global lock. For gzip-filtered datasets we can do the filter's work ourselves:
HDF5's deflate filter output is exactly ``zlib.compress(chunk_bytes, level)``
(zlib format, header and Adler-32 included), and its shuffle filter is a byte
transpose. ``zlib`` releases the GIL, so a thread pool compresses several chunks
at once and the main thread hands the finished bytes to
``H5Dwrite_chunk`` (``dset.id.write_direct_chunk``), which skips the filter
pipeline.

Only the filters fmristore and ModelArray use are handled: optional shuffle
followed by deflate, or no filter at all. Anything else (fletcher32,
scale-offset, lzf, szip, plugins) is refused so that we never write chunks
HDF5 cannot decode.

Imports h5py and NumPy only. Readers (``read_array_chunks``) belong here too.
"""

from __future__ import annotations

import collections
import os
import zlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import product
from typing import Any

import h5py
import numpy as np

__all__ = [
    "ChunkWriter",
    "FilterSpec",
    "chunk_offsets",
    "default_threads",
    "encode_chunk",
    "filter_spec",
    "shuffle_bytes",
    "write_array_chunks",
]

# HDF5 filter ids (H5Zpublic.h)
_H5Z_FILTER_DEFLATE = 1
_H5Z_FILTER_SHUFFLE = 2


def default_threads() -> int:
    """Threads to compress with: the CPUs this process may run on."""
    try:
        # never empty; a thread count only
        return len(os.sched_getaffinity(0))  # pragma: no mutate
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1  # pragma: no mutate


@dataclass(frozen=True)
class FilterSpec:
    """The filter pipeline of a chunked dataset, as far as we can reproduce it.

    ``level`` is the deflate level, or None when the dataset has no deflate
    filter (raw chunks). ``shuffle`` is True when the shuffle filter runs
    before deflate.
    """

    level: int | None
    shuffle: bool


def filter_spec(dset: h5py.Dataset) -> FilterSpec:
    """Read the filter pipeline of ``dset`` and check we can reproduce it.

    Raises
    ------
    ValueError
        If the dataset is not chunked, or uses a filter other than shuffle and
        deflate, or shuffle after deflate.
    """
    if dset.chunks is None:
        raise ValueError(f"{dset.name}: not chunked; direct chunk writes need chunks")
    plist = dset.id.get_create_plist()
    level: int | None = None
    shuffle = False
    for i in range(plist.get_nfilters()):
        code, _flags, values, _name = plist.get_filter(i)
        if code == _H5Z_FILTER_SHUFFLE:
            if level is not None:
                raise ValueError(f"{dset.name}: shuffle after deflate is not supported")
            shuffle = True
        elif code == _H5Z_FILTER_DEFLATE:
            level = int(values[0])  # HDF5's deflate filter needs its level
        else:
            raise ValueError(
                f"{dset.name}: filter {code} is not supported for direct chunk "
                "writes (only shuffle and deflate)"
            )
    return FilterSpec(level=level, shuffle=shuffle)


def shuffle_bytes(raw: bytes | memoryview | np.ndarray, itemsize: int) -> bytes:
    """HDF5's shuffle filter: byte ``b`` of every element, for b = 0..itemsize-1.

    HDF5 leaves trailing bytes that do not fill a whole element unshuffled;
    a chunk of whole elements never has any.
    """
    buf = np.frombuffer(raw, dtype=np.uint8)
    if itemsize <= 1:
        return buf.tobytes()
    n = buf.size // itemsize
    body = buf[: n * itemsize].reshape(n, itemsize).T.tobytes()
    return body + buf[n * itemsize :].tobytes()


def encode_chunk(
    block: np.ndarray,
    chunk_shape: tuple[int, ...],
    *,
    level: int | None,
    shuffle: bool,
    fill: Any,
    compress: Any = zlib.compress,
) -> bytes:
    """The bytes HDF5 stores for one chunk.

    Parameters
    ----------
    block
        The chunk's data; at the array's edge it may be smaller than
        ``chunk_shape`` and is then padded with ``fill`` (HDF5 always stores
        whole chunks).
    chunk_shape
        The dataset's chunk shape.
    level
        Deflate level 0-9, or None for no deflate filter.
    shuffle
        Apply HDF5's byte shuffle before deflating.
    fill
        Value for the padding of edge chunks (never read back).
    compress
        ``compress(data, level)`` giving a zlib stream (default zlib's, which
        gives HDF5's own bytes; ``_hdf5.deflate.deflate`` is faster).
    """
    block = np.asarray(block)
    if block.shape != tuple(chunk_shape):
        if any(b > c for b, c in zip(block.shape, chunk_shape, strict=True)):
            raise ValueError(f"block {block.shape} larger than chunk {chunk_shape}")
        padded = np.full(chunk_shape, fill, dtype=block.dtype)
        padded[tuple(slice(0, n) for n in block.shape)] = block
        block = padded
    raw = np.ascontiguousarray(block).data
    data: bytes | memoryview = raw
    if shuffle:
        data = shuffle_bytes(raw, block.dtype.itemsize)
    if level is None:
        return bytes(data)
    if not 0 <= level <= 9:
        raise ValueError(f"deflate level must be 0-9, got {level}")
    return compress(data, level)


def chunk_offsets(
    shape: tuple[int, ...], chunks: tuple[int, ...]
) -> Iterator[tuple[int, ...]]:
    """Offsets of every chunk of an array, in C order of the chunk grid."""
    ranges = [range(0, n, c) for n, c in zip(shape, chunks, strict=True)]
    return product(*ranges)


class ChunkWriter:
    """Compress chunks of many datasets in a thread pool; write them in order.

    Chunks are encoded by worker threads while the calling thread writes the
    finished ones with ``write_direct_chunk`` (h5py is not thread-safe for
    writing; one writer thread keeps it simple). At most ``max_pending``
    chunks are in flight, which bounds memory, and several datasets can be
    in flight at once, so many small datasets still keep every core busy.

    Use as a context manager; leaving the block writes what is pending. The
    datasets (and their file) must stay open until then.

    Parameters
    ----------
    threads
        Worker threads; default: the CPUs available to this process.
    max_pending
        Chunks encoded or waiting to be written at any time; default
        ``4 * threads``.
    """

    def __init__(self, threads: int | None = None, max_pending: int | None = None):
        self.threads = threads or default_threads()
        depth = 4 * self.threads  # pragma: no mutate - queue depth: tuning only
        self.max_pending = max_pending or depth
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="chunkio")
        self._pending: collections.deque[
            tuple[h5py.Dataset, tuple[int, ...], Future[bytes]]
        ] = collections.deque()

    def __enter__(self) -> ChunkWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None:
                self.flush()
        finally:
            for _, _, fut in self._pending:
                fut.cancel()
            self._pending.clear()
            self._pool.shutdown(wait=True)

    def write(
        self,
        dset: h5py.Dataset,
        array: Any,
        *,
        level: int | None = None,
        shuffle: bool | None = None,
    ) -> None:
        """Schedule writing ``array`` (same shape as ``dset``) into ``dset``.

        ``level`` and ``shuffle`` default to the dataset's own filters; when
        given they must match them (a mismatch would make the chunks
        undecodable).
        """
        spec = filter_spec(dset)
        if level is not None and level != spec.level:
            raise ValueError(
                f"{dset.name}: level {level} differs from the dataset's "
                f"deflate level {spec.level}"
            )
        if shuffle is not None and bool(shuffle) != spec.shuffle:
            raise ValueError(
                f"{dset.name}: shuffle={shuffle} differs from the dataset's filters"
            )
        if dset.dtype.kind not in "biuf":
            raise ValueError(f"{dset.name}: direct chunk writes need a numeric dtype")
        arr = np.asarray(array, dtype=dset.dtype)
        if arr.shape != dset.shape:
            raise ValueError(
                f"{dset.name}: array shape {arr.shape} differs from dataset "
                f"shape {dset.shape}"
            )
        if arr.size == 0:
            return
        chunks = tuple(dset.chunks)
        fill = dset.fillvalue
        for offset in chunk_offsets(arr.shape, chunks):
            sel = tuple(
                slice(o, min(o + c, n))
                for o, c, n in zip(offset, chunks, arr.shape, strict=True)
            )
            fut = self._pool.submit(
                encode_chunk,
                arr[sel],
                chunks,
                level=spec.level,
                shuffle=spec.shuffle,
                fill=fill,
            )
            self._pending.append((dset, offset, fut))
            while len(self._pending) > self.max_pending:
                self._write_one()

    def flush(self) -> None:
        """Write every pending chunk."""
        while self._pending:
            self._write_one()

    def _write_one(self) -> None:
        dset, offset, fut = self._pending.popleft()
        dset.id.write_direct_chunk(offset, fut.result(), filter_mask=0)


def write_array_chunks(
    dset: h5py.Dataset,
    array: Any,
    *,
    level: int | None = None,
    shuffle: bool | None = None,
    threads: int | None = None,
) -> None:
    """Write a whole array into a chunked dataset, compressing in threads.

    Equivalent to ``dset[...] = array`` for datasets whose filters are
    deflate (any level, 0 included), shuffle + deflate, or none, but the
    chunks are encoded on ``threads`` cores. Edge chunks are padded to the
    full chunk shape as HDF5 does.

    Parameters
    ----------
    dset
        A chunked dataset of the array's shape, open for writing.
    array
        Array-like; converted to the dataset's dtype.
    level, shuffle
        Expected filters; default the dataset's own (a mismatch raises).
    threads
        Worker threads (default: available CPUs).
    """
    with ChunkWriter(threads) as writer:
        writer.write(dset, array, level=level, shuffle=shuffle)
