"""Parallel raw-chunk reading equals h5py's own reading, or declines.

Every file is an in-memory HDF5 file (core driver, no backing store), closed
by its ``with`` block.
"""

from __future__ import annotations

import itertools
import os
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from xarray_clusterh5._hdf5 import chunk_read as _chunkread
from xarray_clusterh5._hdf5.chunk_write import shuffle_bytes
from xarray_clusterh5.fmristore import read as reader

_names = itertools.count()


@contextmanager
def memfile() -> Iterator[h5py.File]:
    """A fresh in-memory HDF5 file."""
    with h5py.File(
        f"chunkread-{os.getpid()}-{next(_names)}.h5",
        "w",
        driver="core",
        backing_store=False,
    ) as f:
        yield f


def check_window(dset: h5py.Dataset, sel: tuple[slice, slice]) -> None:
    """Ours equals h5py, serially, in parallel and through reader.read_window."""
    expected = np.asarray(dset[sel], dtype=np.float32)
    got = _chunkread.read_window_parallel(dset, sel)
    assert got is not None
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
    raw = _chunkread.fetch_window(dset, sel)
    assert raw is not None
    for parallel in (False, True):
        decoded = raw.decode(parallel=parallel)
        assert decoded is not None
        np.testing.assert_array_equal(decoded, expected)
    via_reader = reader.read_window(dset, sel)
    assert via_reader.dtype == np.float32
    np.testing.assert_array_equal(via_reader, expected)


@st.composite
def layouts(draw: st.DrawFn) -> dict:
    """Shape, chunks, filters and a window of a 2-D gzip dataset."""
    shape = (draw(st.integers(1, 50)), draw(st.integers(1, 50)))
    chunks = tuple(draw(st.integers(1, n)) for n in shape)
    window = []
    for n in shape:
        a = draw(st.integers(0, n - 1))
        b = draw(st.integers(a + 1, n))
        # None bounds and negative starts go through slice.indices like h5py's
        window.append(
            draw(
                st.sampled_from(
                    [slice(a, b), slice(a - n, b), slice(None, b), slice(a, None)]
                )
            )
        )
    return {
        "shape": shape,
        "chunks": chunks,
        "level": draw(st.integers(0, 9)),
        "shuffle": draw(st.booleans()),
        "dtype": draw(st.sampled_from(["<f4", "<f8"])),
        "sel": tuple(window),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


@settings(max_examples=80, suppress_health_check=[HealthCheck.too_slow])
@given(layouts())
def test_random_windows_equal_h5py(case: dict) -> None:
    rng = np.random.default_rng(case["seed"])
    data = rng.standard_normal(case["shape"]).astype(case["dtype"])
    data[rng.random(case["shape"]) < 0.3] = 0.5  # something to compress
    with memfile() as f:
        dset = f.create_dataset(
            "x",
            data=data,
            chunks=case["chunks"],
            compression="gzip",
            compression_opts=case["level"],
            shuffle=case["shuffle"],
        )
        check_window(dset, case["sel"])
        check_window(dset, (slice(None), slice(None)))


@pytest.mark.parametrize("shuffle", [False, True])
def test_fmristore_layout_edge_chunks(shuffle: bool) -> None:
    # R's chunking: (min(T,128), min(Nc,1024)); T=300 leaves a padded edge chunk
    data = np.random.default_rng(1).standard_normal((300, 1500)).astype(np.float32)
    with memfile() as f:
        dset = f.create_dataset(
            "cluster_1",
            data=data,
            chunks=(128, 1024),
            compression="gzip",
            compression_opts=4,
            shuffle=shuffle,
            maxshape=(None, None),
        )
        raw = _chunkread.fetch_window(dset, (slice(None), slice(None)))
        assert raw is not None
        assert raw.n_chunks == 6
        check_window(dset, (slice(None), slice(None)))
        check_window(dset, (slice(250, 300), slice(1020, 1500)))
        check_window(dset, (slice(127, 129), slice(1023, 1025)))


def test_resized_dataset_reads_current_extent() -> None:
    # maxshape (None, None) as R writes it; growing leaves fill in new chunks
    with memfile() as f:
        dset = f.create_dataset(
            "x",
            data=np.arange(60, dtype=np.float32).reshape(6, 10),
            chunks=(4, 4),
            compression="gzip",
            maxshape=(None, None),
        )
        dset.resize((6, 7))
        check_window(dset, (slice(None), slice(None)))


@pytest.mark.parametrize("skip", ["deflate", "shuffle", "both"])
def test_filter_mask_skips_filters(skip: str, tmp_path: Path) -> None:
    # a chunk whose filter_mask says a filter was not applied must not be
    # undone by that filter (HDF5 does the same on read). The file is closed
    # and reopened: in the writing handle HDF5 2.0 still reports mask 0.
    data = np.random.default_rng(2).standard_normal((8, 8)).astype(np.float32)
    path = tmp_path / "mask.h5"
    block = np.ascontiguousarray(data[4:8])
    if skip == "deflate":  # deflate is filter 1 of (shuffle, deflate)
        raw, mask = shuffle_bytes(block.data, 4), 0b10
    elif skip == "shuffle":
        raw, mask = zlib.compress(block.tobytes(), 4), 0b01
    else:
        raw, mask = block.tobytes(), 0b11
    with h5py.File(path, "w") as f:
        dset = f.create_dataset(
            "x", data=data, chunks=(4, 8), compression="gzip", shuffle=True
        )
        dset.id.write_direct_chunk((4, 0), raw, filter_mask=mask)
    with h5py.File(path, "r") as f:
        dset = f["x"]
        assert dset.id.read_direct_chunk((4, 0))[0] == mask
        np.testing.assert_array_equal(dset[...], data)  # h5py agrees
        check_window(dset, (slice(None), slice(None)))
        check_window(dset, (slice(3, 6), slice(1, 7)))


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({}, id="contiguous"),
        pytest.param({"chunks": (4, 4)}, id="chunked-unfiltered"),
        pytest.param({"chunks": (4, 4), "shuffle": True}, id="shuffle-only"),
        pytest.param(
            {"chunks": (4, 4), "compression": "gzip", "fletcher32": True},
            id="fletcher32",
        ),
        pytest.param({"chunks": (4, 4), "compression": "lzf"}, id="lzf"),
        pytest.param(
            {"chunks": (4, 4), "compression": "gzip", "scaleoffset": 2},
            id="scaleoffset",
        ),
        pytest.param(
            {"chunks": (4, 4), "compression": "gzip", "dtype": ">f4"}, id="big-endian"
        ),
        pytest.param(
            {"chunks": (4, 4), "compression": "gzip", "dtype": "<i4"}, id="int32"
        ),
        pytest.param(
            {"chunks": (4, 4), "compression": "gzip", "dtype": "<f2"}, id="float16"
        ),
    ],
)
def test_unsupported_layouts_decline(kwargs: dict) -> None:
    data = np.arange(80, dtype=np.float32).reshape(8, 10)
    with memfile() as f:
        dset = f.create_dataset("x", data=data, **kwargs)
        sel = (slice(None), slice(None))
        assert _chunkread.fetch_window(dset, sel) is None
        assert _chunkread.read_window_parallel(dset, sel) is None
        # the reader falls back to h5py and still gives the values
        np.testing.assert_array_equal(reader.read_window(dset, sel), data)


def test_pipeline_of_each_dataset_even_when_they_alternate() -> None:
    # _pipeline remembers the last creation property list: datasets that
    # differ only in a filter, in the chunk shape or in the dtype, read in
    # turn, must each get their own pipeline
    data = np.random.default_rng(5).standard_normal((12, 10))
    variants = {
        "gzip": {"chunks": (4, 5), "compression": "gzip"},
        "fletcher": {"chunks": (4, 5), "compression": "gzip", "fletcher32": True},
        "shuffle": {"chunks": (4, 5), "compression": "gzip", "shuffle": True},
        "rows": {"chunks": (3, 5), "compression": "gzip"},
        # H5Pequal calls this list equal to the first one (HDF5 2.0, measured)
        "cols": {"chunks": (4, 2), "compression": "gzip"},
        "f8": {"chunks": (4, 5), "compression": "gzip", "dtype": "<f8"},
        "plain": {"chunks": (4, 5)},
    }
    sel = (slice(None), slice(None))
    with memfile() as f:
        dsets = {}
        for name, kw in variants.items():
            dsets[name] = f.create_dataset(
                name, data=data.astype(kw.pop("dtype", "<f4")), **kw
            )
        for name in [*variants, *reversed(variants), "gzip", "fletcher", "gzip"]:
            raw = _chunkread.fetch_window(dsets[name], sel)
            if name in ("fletcher", "plain"):
                assert raw is None  # ours to decline, h5py's to read
                continue
            assert raw is not None
            assert raw.pipeline.chunks == variants[name]["chunks"]
            shuffled = any(code == 2 for _, code in raw.pipeline.filters)
            assert shuffled == (name == "shuffle")
            np.testing.assert_array_equal(
                raw.decode(), np.asarray(dsets[name][sel], np.float32)
            )


@pytest.mark.parametrize(
    "sel",
    [
        (slice(None, None, 2), slice(None)),
        (slice(None), 3),
        (slice(None),),
        (slice(5, 5), slice(None)),
        [slice(None), slice(None)],
    ],
)
def test_unsupported_selections_decline(sel: object) -> None:
    with memfile() as f:
        dset = f.create_dataset(
            "x",
            data=np.ones((8, 10), np.float32),
            chunks=(4, 4),
            compression="gzip",
        )
        assert _chunkread.read_window_parallel(dset, sel) is None  # type: ignore[arg-type]
        # the located path declines them too (an empty window may have a table)
        table = _chunkread.locate_chunks(dset, sel)  # type: ignore[arg-type]
        assert table is None or table.window(sel) is None  # type: ignore[arg-type]
        assert _chunkread.fetch_window(dset, sel, locate=True) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [(12,), (4, 4, 4)])
def test_not_2d_declines(shape: tuple[int, ...]) -> None:
    with memfile() as f:
        dset = f.create_dataset(
            "x", data=np.ones(shape, np.float32), chunks=True, compression="gzip"
        )
        sel = (slice(None), slice(None))
        assert _chunkread.read_window_parallel(dset, sel) is None


def test_unallocated_chunk_declines_and_h5py_fills() -> None:
    with memfile() as f:
        dset = f.create_dataset(
            "x",
            shape=(8, 8),
            dtype=np.float32,
            chunks=(4, 4),
            compression="gzip",
            fillvalue=3.5,
        )
        dset[:4, :4] = 1.0
        sel = (slice(None), slice(None))
        assert _chunkread.read_window_parallel(dset, sel) is None
        got = reader.read_window(dset, sel)
        assert got[0, 0] == 1.0
        assert got[7, 7] == 3.5
        # a window of allocated chunks only is still ours
        check_window(dset, (slice(0, 4), slice(0, 4)))


def test_corrupt_chunk_declines_and_h5py_raises() -> None:
    with memfile() as f:
        dset = f.create_dataset(
            "x",
            data=np.ones((8, 8), np.float32),
            chunks=(4, 4),
            compression="gzip",
        )
        dset.id.write_direct_chunk((4, 4), b"not zlib data", filter_mask=0)
        sel = (slice(None), slice(None))
        assert _chunkread.read_window_parallel(dset, sel) is None
        with pytest.raises(OSError, match=r"(?i)filter|read|inflate"):
            reader.read_window(dset, sel)


def test_wrong_size_chunk_declines() -> None:
    # valid zlib data that inflates to the wrong number of bytes
    with memfile() as f:
        dset = f.create_dataset(
            "x",
            data=np.ones((8, 8), np.float32),
            chunks=(4, 4),
            compression="gzip",
        )
        dset.id.write_direct_chunk((0, 0), zlib.compress(b"\0" * 12), filter_mask=0)
        raw = _chunkread.fetch_window(dset, (slice(None), slice(None)))
        assert raw is not None
        assert raw.decode(parallel=False) is None
        assert raw.decode(parallel=True) is None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_pool_is_usable_after_fork() -> None:
    # a forked child (dask/multiprocessing workers) gets a fresh pool, not the
    # parent's executor whose threads it does not have
    data = np.random.default_rng(3).standard_normal((300, 600)).astype(np.float32)
    with memfile() as f:
        dset = f.create_dataset(
            "x", data=data, chunks=(128, 256), compression="gzip", compression_opts=4
        )
        sel = (slice(None), slice(None))
        assert _chunkread.read_window_parallel(dset, sel) is not None  # pool made
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                got = _chunkread.read_window_parallel(dset, sel)
                code = 0 if np.array_equal(got, data) else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0


@settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(layouts(), min_size=1, max_size=4), st.data())
def test_decode_windows_equals_h5py(cases: list[dict], data: st.DataObject) -> None:
    # many windows decoded in one pool pass, with unsupported ones (None)
    with memfile() as f:
        dsets, windows = [], []
        for n, case in enumerate(cases):
            rng = np.random.default_rng(case["seed"])
            values = rng.standard_normal(case["shape"]).astype(case["dtype"])
            dset = f.create_dataset(
                f"x{n}",
                data=values,
                chunks=case["chunks"],
                compression="gzip",
                compression_opts=case["level"],
                shuffle=case["shuffle"],
            )
            dsets.append(dset)
            skip = data.draw(st.booleans())
            windows.append(None if skip else _chunkread.fetch_window(dset, case["sel"]))
        with pytest.MonkeyPatch.context() as mp:
            # small test chunks: force the pool path as well as the default
            for min_bytes in (_chunkread.MIN_PARALLEL_BYTES, 0):
                mp.setattr(_chunkread, "MIN_PARALLEL_BYTES", min_bytes)
                decoded = _chunkread.decode_windows(windows)
                for dset, case, win, got in zip(
                    dsets, cases, windows, decoded, strict=True
                ):
                    if win is None:
                        assert got is None
                    else:
                        assert got is not None
                        np.testing.assert_array_equal(
                            got, np.asarray(dset[case["sel"]], np.float32)
                        )


def test_decode_windows_isolates_a_corrupt_window() -> None:
    data = np.arange(64, dtype=np.float32).reshape(8, 8)
    with memfile() as f:
        good = f.create_dataset("good", data=data, chunks=(4, 4), compression="gzip")
        bad = f.create_dataset("bad", data=data, chunks=(4, 4), compression="gzip")
        bad.id.write_direct_chunk((0, 0), b"garbage", filter_mask=0)
        sel = (slice(None), slice(None))
        wins = [_chunkread.fetch_window(good, sel), _chunkread.fetch_window(bad, sel)]
        with pytest.MonkeyPatch.context() as mp:
            for min_bytes in (_chunkread.MIN_PARALLEL_BYTES, 0):
                mp.setattr(_chunkread, "MIN_PARALLEL_BYTES", min_bytes)
                got = _chunkread.decode_windows(wins)
                assert got[1] is None
                assert got[0] is not None
                np.testing.assert_array_equal(got[0], data)
        assert _chunkread.decode_windows([]) == []


class _InlinePool:
    """Runs each helper at submission: the helpers, not the caller, decode."""

    def submit(self, fn: Callable[[], None]) -> Future[None]:
        future: Future[None] = Future()
        try:
            future.set_result(fn())
        except BaseException as err:  # handed over, as a pool does
            future.set_exception(err)
        return future


def test_a_chunk_a_helper_cannot_decode_reaches_the_caller(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the failure is raised in a helper thread; the window must still be
    # reported as not decoded (None), never returned half-filled
    monkeypatch.setattr(_chunkread, "_get_pool", lambda: (_InlinePool(), 2))
    monkeypatch.setattr(_chunkread, "MIN_PARALLEL_BYTES", 0)
    data = np.arange(64, dtype=np.float32).reshape(8, 8)
    sel = (slice(None), slice(None))
    with memfile() as f:
        bad = f.create_dataset("bad", data=data, chunks=(4, 4), compression="gzip")
        bad.id.write_direct_chunk((4, 4), b"garbage", filter_mask=0)
        good = f.create_dataset("good", data=data, chunks=(4, 4), compression="gzip")
        window = _chunkread.fetch_window(bad, sel)
        assert window is not None
        assert window.decode(parallel=True) is None
        got = _chunkread.decode_windows([_chunkread.fetch_window(good, sel), window])
    assert got[1] is None
    np.testing.assert_array_equal(got[0], data)


def test_parallel_heuristic() -> None:
    # fmristore-size windows (several ~100-500 KB chunks) go to the pool,
    # one chunk or a few KB stay in the calling thread
    worth = _chunkread._worth_parallel
    assert worth(3, 3 * 200_000)
    assert worth(2, 2 * 200_000)  # MIN_PARALLEL_CHUNKS chunks are enough
    assert not worth(1, 10**7)
    assert not worth(12, 4_000)


def test_chunk_table_is_worth_it_for_half_the_chunks() -> None:
    # one pass over every chunk (H5Dchunk_iter) pays when the window covers
    # at least half of them; fewer are looked up one by one
    mostly = _chunkread._mostly_needed
    assert mostly((100, 100), (10, 10), (0, 100), (0, 50))  # 50 of 100 chunks
    assert not mostly((100, 100), (10, 10), (0, 100), (90, 100))  # 10
    assert not mostly((100, 100), (10, 10), (90, 100), (0, 100))  # 10
    assert not mostly((100, 100), (10, 10), (0, 40), (0, 100))  # 40
    # partial chunks count whole: rows 5..95 touch all 10 chunk rows
    assert mostly((100, 100), (10, 10), (5, 95), (45, 95))  # 10 x 6 = 60
    assert not mostly((100, 100), (10, 10), (5, 95), (61, 95))  # 10 x 4 = 40
    assert mostly((30, 7), (8, 7), (0, 16), (0, 7))  # 2 of 4 (ragged last)
    # chunks taller than wide: rows count in chunk rows, columns in columns
    assert mostly((100, 100), (10, 50), (0, 100), (0, 50))  # 10 x 1 of 20
    assert not mostly((100, 100), (10, 50), (60, 100), (0, 100))  # 4 x 2 of 20
    assert not mostly((100, 100), (50, 10), (0, 50), (60, 100))  # 1 x 4 of 20


class _CountingPool:
    """The real pool, counting helper submissions."""

    def __init__(self) -> None:
        self.pool, _ = _chunkread._get_pool()
        self.submitted = 0

    def submit(self, *args: object, **kwargs: object) -> object:
        self.submitted += 1
        return self.pool.submit(*args, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("worth", [True, False])
def test_decoder_starts_helpers_once_and_only_when_worth_it(
    worth: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # size - 1 helpers (the caller is the last), started at the first batch
    # worth it, never again; none for work too small to share
    pool = _CountingPool()
    monkeypatch.setattr(_chunkread, "_get_pool", lambda: (pool, 3))
    monkeypatch.setattr(_chunkread, "MIN_PARALLEL_BYTES", 0 if worth else 10**12)
    monkeypatch.setattr(_chunkread.ByteSource, "batch_bytes", 1)  # a batch per add
    rng = np.random.default_rng(8)
    data = rng.standard_normal((6, 32, 24)).astype(np.float32)
    sel = (slice(None), slice(None))
    with memfile() as f:
        dsets = [
            f.create_dataset(f"c{n}", data=d, chunks=(8, 8), compression="gzip")
            for n, d in enumerate(data)
        ]
        with _chunkread.Decoder() as dec:
            for d in dsets:
                dec.add(_chunkread.fetch_window(d, sel))
            got = dec.finish()
    assert pool.submitted == (2 if worth else 0)
    for g, d in zip(got, data, strict=True):
        np.testing.assert_array_equal(g, d)


@pytest.mark.parametrize("min_bytes", [None, 0])
def test_decoder_streams_windows_into_given_outputs(min_bytes: int | None) -> None:
    rng = np.random.default_rng(4)
    with memfile() as f, pytest.MonkeyPatch.context() as mp:
        if min_bytes is not None:
            mp.setattr(_chunkread, "MIN_PARALLEL_BYTES", min_bytes)
        dsets = [
            f.create_dataset(
                f"c{n}",
                data=rng.standard_normal((30, nc)).astype(np.float32),
                chunks=(8, min(nc, 16)),
                compression="gzip",
                shuffle=bool(n % 2),
            )
            for n, nc in enumerate([5, 40, 17, 1])
        ]
        # the engine's use: (voxel, time) result, each window decoded into
        # a transposed view of its rows
        offsets = np.cumsum([0] + [d.shape[1] for d in dsets])
        result = np.full((offsets[-1], 30), np.nan, np.float32)
        sel = (slice(None), slice(None))
        with _chunkread.Decoder() as dec:
            for n, d in enumerate(dsets):
                dst = result[offsets[n] : offsets[n + 1]].T
                assert dec.add(_chunkread.fetch_window(d, sel), out=dst) == n
            assert dec.add(None) == len(dsets)
            got = dec.finish()
        assert got[-1] is None
        for n, d in enumerate(dsets):
            np.testing.assert_array_equal(result[offsets[n] : offsets[n + 1]].T, d[...])
            np.testing.assert_array_equal(got[n], d[...])
        with pytest.raises(RuntimeError, match="after finish"):
            dec.add(None)


def test_decoder_marks_corrupt_window_and_checks_out() -> None:
    data = np.arange(64, dtype=np.float32).reshape(8, 8)
    with memfile() as f, pytest.MonkeyPatch.context() as mp:
        mp.setattr(_chunkread, "MIN_PARALLEL_BYTES", 0)
        good = f.create_dataset("good", data=data, chunks=(4, 4), compression="gzip")
        bad = f.create_dataset("bad", data=data, chunks=(4, 4), compression="gzip")
        bad.id.write_direct_chunk((4, 4), b"garbage", filter_mask=0)
        sel = (slice(None), slice(None))
        with _chunkread.Decoder() as dec:
            dec.add(_chunkread.fetch_window(bad, sel))
            dec.add(_chunkread.fetch_window(good, sel))
            for wrong in (np.empty((8, 7)), np.empty((8, 8)), np.empty((8, 7), "f4")):
                # wrong shape, wrong dtype, or both: each is refused
                with pytest.raises(ValueError, match="expected"):
                    dec.add(_chunkread.fetch_window(good, sel), out=wrong)
            got = dec.finish()
        assert got[0] is None
        assert got[1] is not None
        np.testing.assert_array_equal(got[1], data)


def test_decoder_releases_helpers_when_fetching_fails() -> None:
    data = np.ones((64, 64), np.float32)
    with memfile() as f, pytest.MonkeyPatch.context() as mp:
        mp.setattr(_chunkread, "MIN_PARALLEL_BYTES", 0)
        d = f.create_dataset("x", data=data, chunks=(8, 8), compression="gzip")

        def fetch_then_fail() -> None:
            with _chunkread.Decoder() as dec:
                dec.add(_chunkread.fetch_window(d, (slice(None), slice(None))))
                raise KeyError("fetch failed")

        with pytest.raises(KeyError):
            fetch_then_fail()
        # the pool is free again: a later parallel read completes
        got = _chunkread.read_window_parallel(d, (slice(None), slice(None)))
        np.testing.assert_array_equal(got, data)


class _CountingSource(_chunkread.FileRanges):
    """FileRanges that records the spans it reads."""

    def __init__(self, fd: int, *, max_gap: int, batch_bytes: int) -> None:
        super().__init__(fd)
        self.max_gap = max_gap
        self.batch_bytes = batch_bytes
        self.spans: list[tuple[int, int]] = []

    def read(self, spans: list[tuple[int, int]]) -> list[bytes]:
        self.spans.extend(spans)
        return super().read(spans)


def _write_many(path: Path, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``n`` small gzip datasets (R's chunking), some shuffled, one float64."""
    arrays = []
    with h5py.File(path, "w") as f:
        for i in range(n):
            nc = int(rng.integers(1, 60))
            dtype = "<f8" if i == 3 else "<f4"
            data = (rng.standard_normal((300, nc)) * 10).astype(dtype)
            f.create_dataset(
                f"c{i}",
                data=data,
                chunks=(128, nc),
                compression="gzip",
                compression_opts=4,
                shuffle=i % 3 == 0,
            )
            arrays.append(data)
    return arrays


@pytest.mark.parametrize(("max_gap", "batch_bytes"), [(-1, 1), (1 << 20, 1 << 30)])
def test_located_windows_read_in_batches_equal_h5py(
    tmp_path: Path, max_gap: int, batch_bytes: int
) -> None:
    # the engine's many-small-clusters path: chunks located under the lock,
    # read from the file (neighbours together) and inflated in batches
    rng = np.random.default_rng(11)
    path = tmp_path / "many.h5"
    arrays = _write_many(path, 40, rng)
    windows = [(slice(None), slice(None)), (slice(100, 290), slice(0, 1))]
    with h5py.File(path, "r") as f, pytest.MonkeyPatch.context() as mp:
        mp.setattr(_chunkread, "MIN_PARALLEL_BYTES", 0)
        fd = f.id.get_vfd_handle()
        for sel in windows:
            src = _CountingSource(fd, max_gap=max_gap, batch_bytes=batch_bytes)
            with _chunkread.Decoder(src) as dec:
                assert dec.has_source
                for i in range(len(arrays)):
                    win = _chunkread.fetch_window(f[f"c{i}"].id, sel, locate=True)
                    assert win is not None
                    assert all(c.raw is None for c in win.chunks)
                    dec.add(win)
                got = dec.finish()
            for data, block in zip(arrays, got, strict=True):
                np.testing.assert_array_equal(block, data[sel].astype(np.float32))
            n_chunks = 3 * len(arrays)  # both windows touch all 3 row chunks
            if max_gap < 0:  # not even adjacent chunks merge: one read each
                assert len(src.spans) == n_chunks
            else:  # everything in a single span
                assert len(src.spans) == 1
        assert src._fd == -1  # the duplicate descriptor is closed


def test_chunk_table_only_when_the_window_needs_half_the_chunks(
    tmp_path: Path,
) -> None:
    # one H5Dchunk_iter pass visits every chunk: for a window of few of many
    # chunks the per-chunk lookups are cheaper, so no table is made
    data = np.arange(16 * 16, dtype=np.float32).reshape(16, 16)
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=data, chunks=(4, 4), compression="gzip")
    with h5py.File(path, "r") as f:
        dset = f["x"]
        assert _chunkread.locate_chunks(dset, (slice(0, 4), slice(0, 4))) is None
        assert _chunkread.locate_chunks(dset, (slice(0, 8), slice(0, 4))) is None
        half = _chunkread.locate_chunks(dset, (slice(0, 16), slice(0, 8)))
        assert half is not None  # 8 of 16 chunks
        every = [(r, c) for r in range(0, 16, 4) for c in range(0, 16, 4)]
        assert sorted(half.located) == every
        # any window of the dataset then builds from the table alone
        sels = [(slice(0, 4), slice(0, 4)), (slice(3, 13), slice(5, 16))]
        with _chunkread.Decoder(_chunkread.FileRanges.of(f)) as dec:
            for sel in sels:
                dec.add(half.window(sel))
            got = dec.finish()
    for sel, block in zip(sels, got, strict=True):
        np.testing.assert_array_equal(block, data[sel])


def test_located_path_declines_and_isolates_failures(tmp_path: Path) -> None:
    path = tmp_path / "bad.h5"
    data = np.arange(600, dtype=np.float32).reshape(300, 2)
    with h5py.File(path, "w") as f:
        for name in ("good", "bad"):
            f.create_dataset(name, data=data, chunks=(128, 2), compression="gzip")
        f.create_dataset(
            "sparse", shape=(300, 2), dtype="f4", chunks=(128, 2), compression="gzip"
        )
        f["sparse"][:10] = 1.0  # chunks 2 and 3 stay unallocated
    with h5py.File(path, "r") as f:
        offset = f["bad"].id.get_chunk_info_by_coord((128, 0)).byte_offset
    with open(path, "r+b") as fh:  # corrupt the stored bytes of one chunk
        fh.seek(offset)
        fh.write(b"\xff" * 16)
    sel = (slice(None), slice(None))
    with h5py.File(path, "r") as f:
        assert _chunkread.fetch_window(f["sparse"], sel, locate=True) is None
        with _chunkread.Decoder(_chunkread.FileRanges.of(f)) as dec:
            dec.add(_chunkread.fetch_window(f["bad"].id, sel, locate=True))
            dec.add(_chunkread.fetch_window(f["good"].id, sel, locate=True))
            got = dec.finish()
        assert got[0] is None  # h5py reads it and reports the problem
        np.testing.assert_array_equal(got[1], data)
        # a located window needs something to read it with
        with _chunkread.Decoder() as dec, pytest.raises(ValueError, match="source"):
            dec.add(_chunkread.fetch_window(f["good"], sel, locate=True))

    class ShortSource(_chunkread.ByteSource):
        def read(self, spans: list[tuple[int, int]]) -> list[bytes]:
            return [b"\x00" * (size // 2) for _, size in spans]

    with h5py.File(path, "r") as f, _chunkread.Decoder(ShortSource()) as dec:
        dec.add(_chunkread.fetch_window(f["good"], sel, locate=True))
        assert dec.finish() == [None]


def test_file_ranges_only_for_plain_local_files(tmp_path: Path) -> None:
    with memfile() as f:
        assert _chunkread.FileRanges.of(f) is None  # core driver: no offsets
    path = tmp_path / "ub.h5"
    with h5py.File(path, "w", userblock_size=512) as f:
        f["x"] = np.ones(3)
    with h5py.File(path, "r") as f:
        assert _chunkread.FileRanges.of(f) is None  # addresses shifted


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 70),
    cols=st.integers(1, 12),
    chunk=st.tuples(st.integers(1, 32), st.integers(1, 5)),
    window=st.tuples(
        st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1)
    ),
)
@example(rows=1, cols=1, chunk=(1, 1), window=(0.0, 0.0, 1.0, 1.0))
def test_located_chunks_are_where_hdf5_says(
    rows: int, cols: int, chunk: tuple[int, int], window: tuple[float, ...]
) -> None:
    # whole windows locate every chunk in one H5Dchunk_iter pass, small ones
    # look chunks up one by one: both must give HDF5's own byte ranges
    chunk = (min(chunk[0], rows), min(chunk[1], cols))
    r0, r1 = sorted(int(w * rows) for w in window[:2])
    c0, c1 = sorted(int(w * cols) for w in window[2:])
    r0, c0 = min(r0, rows - 1), min(c0, cols - 1)  # a non-empty window inside
    r1, c1 = max(r1, r0 + 1), max(c1, c0 + 1)
    data = np.arange(rows * cols, dtype=np.float32).reshape(rows, cols)
    with memfile() as f:
        dset = f.create_dataset("d", data=data, chunks=chunk, compression="gzip")
        sel = (slice(r0, r1), slice(c0, c1))
        win = _chunkread.fetch_window(dset.id, sel, locate=True)
        assert win is not None
        got = sorted(c.at for c in win.chunks)
        want = sorted(
            (info.byte_offset, info.size)
            for orow in range(r0 - r0 % chunk[0], r1, chunk[0])
            for ocol in range(c0 - c0 % chunk[1], c1, chunk[1])
            for info in [dset.id.get_chunk_info_by_coord((orow, ocol))]
        )
        assert got == want


def test_byte_source_reads_neighbours_as_one_span() -> None:
    """Ranges closer than ``max_gap`` are one read; every chunk gets its bytes."""
    buf = bytes(range(256)) * 1024

    class Recording(_chunkread.ByteSource):
        def __init__(self) -> None:
            self.spans: list[tuple[int, int]] = []

        def read(self, spans: list[tuple[int, int]]) -> list[bytes]:
            self.spans += spans
            return [buf[o : o + n] for o, n in spans]

    src = Recording()
    gap = src.max_gap
    far = 135 + gap + 1  # one byte too far from the end of the first span
    ranges = [(115, 20), (100, 10), (102, 3), (far, 7), (far + 7 + gap, 9)]
    full = (slice(None), slice(None))
    chunks = [_chunkread._Chunk(None, 0, full, full, at) for at in ranges]
    src.fetch(chunks)
    assert src.spans == [(100, 35), (far, 7 + gap + 9)]
    for c in chunks:
        assert bytes(c.raw) == buf[c.at[0] : c.at[0] + c.at[1]]


def test_file_ranges_close_their_descriptor_even_when_it_is_zero(tmp_path) -> None:
    # with stdin closed, the duplicate descriptor is 0: it is still closed
    path = tmp_path / "x.bin"
    path.write_bytes(b"abcdef")
    saved = os.dup(0)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.close(0)
        ranges = _chunkread.FileRanges(fd)
        assert ranges.read([(1, 3)]) == [b"bcd"]
        ranges.close()
        with pytest.raises(OSError, match="Bad file descriptor"):
            os.fstat(0)
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(fd)
