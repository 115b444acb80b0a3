"""Direct chunk writes must read back through h5py exactly like normal writes."""

from __future__ import annotations

import dataclasses
import zlib
from pathlib import Path

import h5py
import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from xarray_clusterh5._hdf5.chunk_write import (
    ChunkWriter,
    chunk_offsets,
    encode_chunk,
    filter_spec,
    shuffle_bytes,
    write_array_chunks,
)

FILTERS = [
    pytest.param({"compression": "gzip", "compression_opts": 4}, id="gzip4"),
    pytest.param({"compression": "gzip", "compression_opts": 0}, id="gzip0"),
    pytest.param(
        {"compression": "gzip", "compression_opts": 9, "shuffle": True},
        id="shuffle-gzip9",
    ),
    pytest.param({}, id="nofilter"),
]


@pytest.mark.parametrize("kwargs", FILTERS)
@pytest.mark.parametrize("dtype", ["<f4", "<i2", "<f8", "|u1"])
def test_roundtrip_with_edge_chunks(tmp_path: Path, kwargs: dict, dtype: str) -> None:
    rng = np.random.default_rng(0)
    # 300 x 70 with chunks 128 x 32: edge chunks in both dimensions
    arr = (rng.normal(size=(300, 70)) * 50).astype(dtype)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        d = f.create_dataset(
            "x", shape=arr.shape, dtype=dtype, chunks=(128, 32), **kwargs
        )
        write_array_chunks(d, arr, threads=2)
        ref = f.create_dataset(
            "ref", shape=arr.shape, dtype=dtype, chunks=(128, 32), **kwargs
        )
        ref[...] = arr
    with h5py.File(tmp_path / "a.h5", "r") as f:
        np.testing.assert_array_equal(f["x"][()], arr)
        # partial reads of an edge chunk go through HDF5's own filter pipeline
        np.testing.assert_array_equal(f["x"][290:, 60:], arr[290:, 60:])
        # same stored size as HDF5's own filter (same bytes for deflate)
        for off in [(0, 0), (256, 64)]:
            ours = f["x"].id.read_direct_chunk(off)
            theirs = f["ref"].id.read_direct_chunk(off)
            assert ours == theirs


def test_encode_chunk_matches_hdf5_filter_bytes(tmp_path: Path) -> None:
    arr = np.arange(6 * 5, dtype="<f4").reshape(6, 5)
    with h5py.File(tmp_path / "b.h5", "w") as f:
        d = f.create_dataset(
            "x",
            data=arr,
            chunks=(4, 4),
            compression="gzip",
            compression_opts=4,
            shuffle=True,
        )
        stored = d.id.read_direct_chunk((4, 4))
    mask, raw = stored
    assert mask == 0
    expected = encode_chunk(arr[4:, 4:], (4, 4), level=4, shuffle=True, fill=0)
    assert raw == expected


def test_shuffle_bytes_is_byte_transpose() -> None:
    a = np.array([0x01020304, 0x05060708], dtype="<u4")
    out = shuffle_bytes(a.tobytes(), 4)
    assert out == bytes([4, 8, 3, 7, 2, 6, 1, 5])
    assert shuffle_bytes(b"abc", 1) == b"abc"


def test_filter_spec_and_refusals(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "c.h5", "w") as f:
        d = f.create_dataset("g", shape=(4,), dtype="f4", chunks=(2,), compression=3)
        assert filter_spec(d).level == 3
        assert filter_spec(d).shuffle is False
        with pytest.raises(ValueError, match="level 4 differs"):
            write_array_chunks(d, np.zeros(4), level=4)
        with pytest.raises(ValueError, match="shuffle=True differs"):
            write_array_chunks(d, np.zeros(4), shuffle=True)
        write_array_chunks(d, np.arange(4.0), level=3, shuffle=False)  # they agree
        np.testing.assert_array_equal(d[()], np.arange(4.0))
        with pytest.raises(ValueError, match="shape"):
            write_array_chunks(d, np.zeros(5))
        contiguous = f.create_dataset("c", shape=(4,), dtype="f4")
        with pytest.raises(ValueError, match="not chunked"):
            write_array_chunks(contiguous, np.zeros(4))
        fl = f.create_dataset("f", shape=(4,), dtype="f4", chunks=(2,), fletcher32=True)
        with pytest.raises(ValueError, match="not supported"):
            write_array_chunks(fl, np.zeros(4))
        lzf = f.create_dataset(
            "l", shape=(4,), dtype="f4", chunks=(2,), compression="lzf"
        )
        with pytest.raises(ValueError, match="not supported"):
            write_array_chunks(lzf, np.zeros(4))


def test_many_datasets_through_one_writer(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    arrays = [
        rng.normal(size=(rng.integers(1, 200), rng.integers(1, 40))) for _ in range(25)
    ]
    with h5py.File(tmp_path / "d.h5", "w") as f:
        with ChunkWriter(threads=2, max_pending=3) as w:
            for i, a in enumerate(arrays):
                d = f.create_dataset(
                    f"d{i}",
                    shape=a.shape,
                    dtype="<f4",
                    chunks=(64, 16),
                    compression="gzip",
                    compression_opts=4,
                    maxshape=(None, None),
                )
                w.write(d, a)
        empty = f.create_dataset(
            "empty",
            shape=(0, 3),
            dtype="<f4",
            chunks=(1, 3),
            compression="gzip",
            maxshape=(None, None),
        )
        write_array_chunks(empty, np.zeros((0, 3)))
    with h5py.File(tmp_path / "d.h5", "r") as f:
        for i, a in enumerate(arrays):
            np.testing.assert_array_equal(f[f"d{i}"][()], a.astype("<f4"))
        assert f["empty"].shape == (0, 3)


def _fail_inside(w: ChunkWriter) -> None:
    with w:
        raise RuntimeError("boom")


def test_error_in_writer_does_not_hang(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "e.h5", "w") as f:
        d = f.create_dataset("x", shape=(10,), dtype="f4", chunks=(3,), compression=1)
        w = ChunkWriter(threads=2)
        w.write(d, np.ones(10))
        # an error inside the block cancels pending chunks and re-raises
        with pytest.raises(RuntimeError, match="boom"):
            _fail_inside(w)
        assert not w._pending


@given(
    arr=hnp.arrays(
        dtype=st.sampled_from([np.dtype("<f4"), np.dtype("<i4"), np.dtype("<u2")]),
        shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=9),
    ),
    data=st.data(),
)
def test_property_any_shape_and_chunks(tmp_path_factory, arr, data) -> None:
    chunks = tuple(data.draw(st.integers(1, n + 2)) for n in arr.shape)
    level = data.draw(st.sampled_from([None, 0, 1, 4]))
    shuffle = level is not None and data.draw(st.booleans())
    kwargs = {} if level is None else {"compression": "gzip", "compression_opts": level}
    path = tmp_path_factory.mktemp("prop") / "p.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset(
            "x",
            shape=arr.shape,
            dtype=arr.dtype,
            chunks=chunks,
            shuffle=shuffle,
            maxshape=(None,) * arr.ndim,
            **kwargs,
        )
        write_array_chunks(d, arr, threads=2)
    with h5py.File(path, "r") as f:
        back = f["x"][()]
    np.testing.assert_array_equal(back, arr)


@pytest.mark.parametrize("use_isal", [True, False])
@pytest.mark.parametrize("level", [0, 1, 4, 9])
def test_fast_deflate_streams_are_zlib_and_gzip(monkeypatch, use_isal, level) -> None:
    import gzip

    from xarray_clusterh5._hdf5 import deflate as dmod

    if not use_isal:
        monkeypatch.setattr(dmod, "_isal", None)
    elif not dmod.has_isal():
        pytest.skip("isal not installed")
    data = np.linspace(0, 1, 5000, dtype=np.float32).tobytes() + b"\0" * 999
    assert zlib.decompress(dmod.deflate(data, level)) == data
    packed = dmod.deflate(data, level, gzip=True)
    assert gzip.decompress(packed) == data
    assert dmod.inflate_gzip(packed) == data
    with pytest.raises(zlib.error):
        dmod.inflate_gzip(packed[:-9] + b"garbage!!")


def test_encode_chunk_refuses_what_hdf5_cannot_store() -> None:
    block = np.arange(6, dtype="<i4").reshape(2, 3)
    for level in (0, 9):  # the ends of deflate's range are zlib streams
        out = encode_chunk(block, (2, 3), level=level, shuffle=False, fill=0)
        assert zlib.decompress(out) == block.tobytes()
    for level in (-1, 10):  # zlib takes -1 (its default level); HDF5 does not
        with pytest.raises(ValueError, match=f"deflate level must be 0-9, got {level}"):
            encode_chunk(block, (2, 3), level=level, shuffle=False, fill=0)
    # edge blocks are padded with the fill value; larger blocks are refused
    raw = encode_chunk(block[:1, :2], (2, 3), level=None, shuffle=False, fill=-7)
    padded = np.frombuffer(raw, dtype="<i4").reshape(2, 3)
    np.testing.assert_array_equal(padded, [[0, 1, -7], [-7, -7, -7]])
    raw = encode_chunk(block[:, :2], (2, 3), level=None, shuffle=False, fill=-7)
    padded = np.frombuffer(raw, dtype="<i4").reshape(2, 3)
    np.testing.assert_array_equal(padded, [[0, 1, -7], [3, 4, -7]])
    # a block of another rank is refused, not broadcast
    with pytest.raises(ValueError, match="argument 2 is longer"):
        encode_chunk(block[0, :2], (2, 2), level=None, shuffle=False, fill=0)
    with pytest.raises(ValueError, match=r"block \(2, 3\) larger than chunk"):
        encode_chunk(block, (2, 2), level=None, shuffle=False, fill=0)
    with pytest.raises(ValueError, match=r"larger than chunk \(1, 3\)"):
        encode_chunk(block, (1, 3), level=None, shuffle=False, fill=0)


def test_non_numeric_and_shuffle_after_deflate_are_refused(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "n.h5", "w") as f:
        text = f.create_dataset("t", shape=(4,), dtype="S4", chunks=(2,), compression=4)
        with pytest.raises(ValueError, match="/t: direct chunk writes need a numeric"):
            write_array_chunks(text, np.array([b"a", b"b", b"c", b"d"]))
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((2,))
        dcpl.set_deflate(4)
        dcpl.set_shuffle()  # after deflate: the bytes would be shuffled last
        space = h5py.h5s.create_simple((4,))
        h5py.h5d.create(f.id, b"late", h5py.h5t.IEEE_F32LE, space, dcpl=dcpl)
        with pytest.raises(ValueError, match="/late: shuffle after deflate"):
            filter_spec(f["late"])
        spec = filter_spec(
            f.create_dataset(
                "s", shape=(4,), dtype="f4", chunks=(2,), compression=4, shuffle=True
            )
        )
        assert (spec.level, spec.shuffle) == (4, True)
        with pytest.raises(dataclasses.FrozenInstanceError):
            spec.level = 9  # type: ignore[misc]  # a spec describes the file


def test_chunk_offsets_need_one_chunk_size_per_axis() -> None:
    assert list(chunk_offsets((4, 3), (2, 2))) == [
        (0, 0), (0, 2), (2, 0), (2, 2)
    ]  # fmt: skip
    with pytest.raises(ValueError, match="zip"):
        list(chunk_offsets((4, 3), (2,)))
