"""Our ``.mif`` reader and writer: MRtrix-written fixtures, layouts, types, errors."""

from __future__ import annotations

import dataclasses
import gzip
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests._helpers import DATA
from xarray_clusterh5.errors import ClusterH5Error
from xarray_clusterh5.mif.header import (
    MifHeader,
    dtype_name,
    format_header,
    parse_header,
    read_header,
)
from xarray_clusterh5.mif.read import raw_values, read_mif, read_range, read_values
from xarray_clusterh5.mif.write import mif_bytes, write_mif

MIF = DATA / "modelarray_modalities" / "mif"
INPUTS = MIF / "inputs"
SUBJECTS = sorted(INPUTS.glob("sub-*"))


def _modelarrayio_rows() -> np.ndarray:
    # checks.txt: these rows equal what MRtrix's mrconvert reads from each file
    with h5py.File(MIF / "out" / "modelarray_float64_nocomp.h5", "r") as f:
        return f["scalars/FD/values"][()]


@pytest.mark.parametrize("row", range(8))
def test_every_fixture_subject_reads_to_mrtrix_values(row):
    path = SUBJECTS[row]
    h, data = read_mif(path)
    assert h.dim == (300, 1, 1)
    expected = _modelarrayio_rows()[row]
    np.testing.assert_array_equal(data.reshape(-1).astype(np.float32), expected)
    np.testing.assert_array_equal(read_values(str(path)), expected)


def test_fixture_headers():
    types = {p.name: read_header(p).dtype.str for p in SUBJECTS}
    assert types == {
        "sub-01_FD.mif": "<f4", "sub-02_FD.mif.gz": "<f4",
        "sub-03_FD_float64.mif": "<f8", "sub-04_FD_int16scaled.mif": "<i2",
        "sub-05_FD_revstrides.mif": "<f4", "sub-06_FD_float32be.mif": ">f4",
        "sub-07_FD.mif": "<f4", "sub-08_FD.mif": "<f4",
    }  # fmt: skip
    rev = read_header(INPUTS / "sub-05_FD_revstrides.mif")
    assert rev.reversed_axes == (True, False, False)
    assert read_header(INPUTS / "sub-04_FD_int16scaled.mif").scaling == (0.25, 0.001)
    idx = read_header(INPUTS / "index.mif")
    assert (idx.dim, idx.order, idx.reversed_axes) == (
        (6, 6, 5, 2), (0, 1, 2, 3), (True, False, False, False)
    )  # fmt: skip
    np.testing.assert_array_equal(idx.transform[:, 3], [-6.25, -7.5, -5])
    assert idx.affine()[0, 0] == 2.5
    # mrinfo.txt: voxel size 2.5 (the 4th axis is not spatial) and its transform
    np.testing.assert_array_equal(
        idx.affine(),
        [[2.5, 0, 0, -6.25], [0, 2.5, 0, -7.5], [0, 0, 2.5, -5], [0, 0, 0, 1]],
    )

    assert [k for k, _ in idx.keyvals] == ["command_history", "mrtrix_version"]


def test_scaling_is_applied_in_float64():
    _h, raw = read_mif(INPUTS / "sub-04_FD_int16scaled.mif", scaled=False)
    _, scaled = read_mif(INPUTS / "sub-04_FD_int16scaled.mif")
    assert raw.dtype == np.int16
    assert scaled.dtype == np.float64
    np.testing.assert_array_equal(scaled, 0.25 + 0.001 * raw.astype(np.float64))


def test_reversed_strides_equal_the_plain_file():
    # sub-05 was converted with -strides -1,2,3: on disk reversed, logically not
    raw = (INPUTS / "sub-05_FD_revstrides.mif").read_bytes()
    h = parse_header("x", raw)
    disk = np.frombuffer(raw, "<f4", count=300, offset=h.data_offset)
    _, data = read_mif(INPUTS / "sub-05_FD_revstrides.mif")
    np.testing.assert_array_equal(data.reshape(-1), disk[::-1])


_DTYPES = ["i1", "u1", "<i2", ">i2", "<u2", ">u2", "<i4", ">i4", "<u4", ">u4",
           "<i8", ">u8", "<f4", ">f4", "<f8", ">f8"]  # fmt: skip


@given(
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=4),
    perm_seed=st.integers(0, 10_000),
    dtype=st.sampled_from(_DTYPES),
    gz=st.booleans(),
)
def test_written_files_read_back(tmp_path_factory, shape, perm_seed, dtype, gz):
    rng = np.random.default_rng(perm_seed)
    order = tuple(int(v) for v in rng.permutation(len(shape)))
    rev = tuple(bool(v) for v in rng.integers(0, 2, len(shape)))
    dt = np.dtype(dtype)
    data = rng.integers(0, 100, size=shape).astype(dt)
    h = MifHeader("t", tuple(shape), (1.5,) * len(shape), order, rev, dt,
                  np.eye(3, 4), None, [("comment", "made by a test")])  # fmt: skip
    path = tmp_path_factory.mktemp("m") / ("x.mif.gz" if gz else "x.mif")
    write_mif(path, h, data, dtype=dt)
    back_h, back = read_mif(path)
    np.testing.assert_array_equal(back, data)
    assert back_h.dtype == dt
    assert back_h.order == order
    assert back_h.reversed_axes == rev
    assert back_h.keyvals == [("comment", "made by a test")]
    raw = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
    _assert_mrtrix_header_rules(raw, back_h)


def _assert_mrtrix_header_rules(raw: bytes, h: MifHeader) -> None:
    assert raw.startswith(b"mrtrix image\n")
    head = raw[: raw.index(b"\nEND\n") + 5].decode("latin-1")
    assert head.splitlines()[-2] == f"file: . {h.data_offset}"
    assert h.data_offset % 4 == 0
    # the first multiple of 4 after END, as MRtrix writes it: at most 3 pad bytes
    assert len(head) <= h.data_offset < len(head) + 4
    assert set(raw[len(head) : h.data_offset]) <= {0}
    assert len(raw) == h.data_offset + h.n_values * h.dtype.itemsize


def test_dtype_names_follow_mrtrix():
    assert dtype_name(np.dtype("<f4")) == "Float32LE"
    assert dtype_name(np.dtype(">u2")) == "UInt16BE"
    assert dtype_name(np.dtype("u1")) == "UInt8"
    with pytest.raises(ValueError, match="cannot be stored"):
        dtype_name(np.dtype("U3"))


def test_header_formatting_is_modelarrayios(tmp_path):
    # ModelArrayIO's writer (and MRtrix's reader) on the fixture template
    h = read_header(INPUTS / "sub-01_FD.mif")
    text = format_header(h, np.dtype("<f4")).decode("latin-1")
    assert text.startswith("mrtrix image\ndim: 300,1,1\nvox: 1.0,1.0,1.0\n")
    assert "layout: +0,+1,+2\ndatatype: Float32LE\ntransform: 1.0, 0.0, 0.0, 0.0\n" in (
        text
    )
    assert "scaling" not in text


def _header_text(**over: str) -> str:
    lines = {"dim": "2,1,1", "vox": "1,1,1", "layout": "+0,+1,+2",
             "datatype": "Float32LE", "file": ". 200"}  # fmt: skip
    lines.update(over)
    body = "".join(f"{k}: {v}\n" for k, v in lines.items() if v)
    return "mrtrix image\n" + body + "END\n"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (_header_text(file="fd.dat 0"), "separate file"),
        (_header_text(datatype="Bit"), "Bit"),
        (_header_text(datatype="Float16LE"), "unknown MIF datatype"),
        (_header_text(layout="+0,+0,+2"), "not a permutation"),
        (_header_text(layout="+0,+1"), "2 axes, dim 3"),
        (_header_text(dim="2,0,1"), "empty axis"),
        (_header_text(dim=""), "no 'dim:' line"),
        (_header_text(file=""), "0 'file:' entries"),
        (_header_text(file=". 8"), "inside the header"),
        (_header_text(file=". 200").replace("END\n", ""), "no END"),
        ("nifti\n", "not a MIF file"),
        (_header_text(file=". 200"), "truncated"),
        (_header_text(transform="1,0,0,0\ntransform: 0,1,0,0"), "3 rows of 4 numbers"),
        (_header_text(scaling="0,1,2"), r"bad MIF scaling '0,1,2'"),
        (_header_text(vox="1,x,1"), r"bad MIF vox: '1,x,1'"),
        (_header_text(dim="2,a,1"), r"bad MIF dim '2,a,1'"),
        (_header_text(layout="+0,+1,+x"), r"bad MIF layout '\+0,\+1,\+x'"),
        (_header_text(file=". 2x0"), r"bad MIF data offset '2x0'"),
        (_header_text(dim="2,1,1\nnonsense"), "MIF header line without ':'"),
        (
            _header_text(transform="1,0,0,0\ntransform: 0,1,0\ntransform: 0,0,1,0"),
            "3 rows of 4 numbers",
        ),
    ],
)
def test_bad_files_are_named(tmp_path, text, match):
    path = tmp_path / "bad.mif"
    path.write_bytes(
        text.encode().ljust(200, b"\0") if "END" in text else text.encode()
    )
    with pytest.raises(ClusterH5Error, match=match) as err:
        read_mif(path)
    assert str(path) in str(err.value)


def test_gzipped_and_plain_files_agree(tmp_path):
    plain = tmp_path / "a.mif"
    shutil.copy(INPUTS / "sub-01_FD.mif", plain)
    packed = tmp_path / "a.mif.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    np.testing.assert_array_equal(read_mif(plain)[1], read_mif(packed)[1])


def test_writer_keeps_template_geometry_and_refuses_overwrite(tmp_path):
    h = read_header(INPUTS / "index.mif")
    data = np.arange(h.n_values, dtype=np.float32).reshape(h.dim)
    out = write_mif(tmp_path / "i.mif", h, data)
    back_h, back = read_mif(out)
    np.testing.assert_array_equal(back, data)
    assert back_h.reversed_axes == h.reversed_axes
    np.testing.assert_array_equal(back_h.affine(), h.affine())
    with pytest.raises(FileExistsError):
        write_mif(out, h, data)
    with pytest.raises(ValueError, match="template has 360 values"):
        mif_bytes(h, data[:1])


@pytest.mark.skipif(shutil.which("mrinfo") is None, reason="MRtrix not installed")
def test_mrtrix_reads_our_files(tmp_path):
    h = read_header(INPUTS / "sub-05_FD_revstrides.mif")
    data = np.linspace(0, 1, 300, dtype=np.float32)
    out = write_mif(tmp_path / "r.mif.gz", h, data)
    dump = subprocess.run(
        ["mrdump", str(out)], capture_output=True, text=True, check=True
    ).stdout.split()
    np.testing.assert_allclose(np.array(dump, float), data, rtol=1e-5)  # 6 digits


def test_path_objects_and_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"none\.mif: no such file$"):
        read_mif(Path(tmp_path / "none.mif"))
    with pytest.raises(FileNotFoundError, match=r"none\.mif: no such file$"):
        read_header(tmp_path / "none.mif")


@pytest.mark.parametrize("pad", range(8))
def test_header_padding_for_every_header_length(tmp_path, pad):
    # a key of every length modulo 4 (and a 2-digit to 3-digit offset change)
    h = read_header(INPUTS / "sub-01_FD.mif")
    h = dataclasses.replace(h, keyvals=[("comment", "x" * pad)])
    out = write_mif(tmp_path / "p.mif", h, np.arange(300, dtype=np.float32))
    back_h, back = read_mif(out)
    _assert_mrtrix_header_rules(out.read_bytes(), back_h)
    np.testing.assert_array_equal(back.reshape(-1), np.arange(300))


@pytest.mark.parametrize("dim", [(2, 1, 1), (1, 3, 1), (1, 1, 4), (5,)])
@pytest.mark.parametrize("rev", [False, True])
def test_range_reads_along_any_axis(tmp_path, dim, rev):
    ndim = len(dim)
    axis = int(np.argmax(dim))
    h = MifHeader("t", dim, (1.0,) * ndim, tuple(range(ndim)),
                  tuple(rev and a == axis for a in range(ndim)), np.dtype("<f4"),
                  np.eye(3, 4), None)  # fmt: skip
    values = np.arange(1, max(dim) + 1, dtype=np.float32)
    out = write_mif(tmp_path / "r.mif", h, values.reshape(dim))
    h = read_header(out)
    np.testing.assert_array_equal(read_range(str(out), h, 0, max(dim)), values)
    np.testing.assert_array_equal(read_range(str(out), h, 1, 2), values[1:2])
    with pytest.raises(IndexError, match=rf"outside 0:{max(dim)}"):
        read_range(str(out), h, 0, max(dim) + 1)


def test_range_reads_need_one_axis(tmp_path):
    h = MifHeader("t", (2, 2, 1), (1.0,) * 3, (0, 1, 2), (False,) * 3,
                  np.dtype("<f4"), np.eye(3, 4), None)  # fmt: skip
    out = write_mif(tmp_path / "two.mif", h, np.zeros((2, 2, 1)))
    with pytest.raises(ValueError, match=r"one non-singleton axis, dim \(2, 2, 1\)"):
        read_range(str(out), read_header(out), 0, 1)


def test_one_fixel_image_range_reads(tmp_path):
    # a fixel image of one fixel: every axis has size 1
    h = MifHeader("t", (1, 1, 1), (1.0, 1.0, 1.0), (0, 1, 2), (False,) * 3,
                  np.dtype("<f4"), np.eye(3, 4), None)  # fmt: skip
    out = write_mif(tmp_path / "one.mif", h, np.array([0.25], np.float32))
    h = read_header(out)
    np.testing.assert_array_equal(read_range(str(out), h, 0, 1), [0.25])
    assert read_range(str(out), h, 1, 1).size == 0
    with pytest.raises(IndexError, match="range 0:2 outside 0:1"):
        read_range(str(out), h, 0, 2)


@pytest.mark.parametrize("path", [p for p in SUBJECTS if not p.name.endswith(".gz")])
def test_range_reads_equal_whole_reads(path):
    h = read_header(path)
    whole = read_values(str(path))
    for start, stop in [(0, 300), (17, 123), (299, 300), (5, 5)]:
        np.testing.assert_array_equal(
            read_range(str(path), h, start, stop), whole[start:stop]
        )
    with pytest.raises(IndexError):
        read_range(str(path), h, 10, 301)


def test_header_built_by_hand_reads_a_bare_buffer():
    # no file: the data start at offset 0 of the bytes given
    h = MifHeader("t", (3, 2), (1.0, 1.0), (1, 0), (False, True), np.dtype(">i2"),
                  np.eye(3, 4), None)  # fmt: skip
    assert h.data_offset == 0
    disk = np.array([1, 2, 3, 4, 5, 6], ">i2")
    np.testing.assert_array_equal(raw_values(h, disk.tobytes()), disk)
    with pytest.raises(ClusterH5Error, match="truncated: 6 >i2 values need 12 bytes"):
        raw_values(h, disk.tobytes()[:10])


@pytest.mark.parametrize("dtype", ["<f4", "u1", ">f4"])
def test_reading_does_not_copy_native_data(tmp_path, dtype):
    # peak memory: the file's bytes once; only another byte order needs a copy
    h = MifHeader("t", (500, 400, 1), (1.0,) * 3, (0, 1, 2), (False,) * 3,
                  np.dtype(dtype), np.eye(3, 4), None)  # fmt: skip
    data = np.arange(h.n_values).reshape(h.dim) % 200
    out = write_mif(tmp_path / "big.mif", h, data, dtype=dtype)
    tracemalloc.start()
    try:
        _, back = read_mif(out)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(back, data)
    assert back.dtype.isnative
    copies = 1 if np.dtype(dtype).isnative else 2
    assert copies * back.nbytes <= peak < (copies + 0.25) * back.nbytes


def test_datatypes_without_byte_order_are_native():
    native = "<" if sys.byteorder == "little" else ">"
    assert parse_header("x", _header_text(datatype="Float32").encode()).dtype == (
        np.dtype(native + "f4")
    )
    assert parse_header("x", _header_text(datatype="UInt8").encode()).dtype == "u1"
    assert parse_header("x", _header_text(datatype="Int16BE").encode()).dtype == ">i2"


def _one_value_file(text: str, value: float = 2.5) -> bytes:
    return text.encode() + np.array([value, 4.0], "<f4").tobytes()


def _data_right_after_end(text: str) -> str:
    """``text`` (with ``file: . OFFSET``) with the offset just after END."""
    for n in range(len(text) - 10, len(text) + 10):
        head = text.replace("file: . OFFSET", f"file: . {n}")
        if len(head) == n:
            return head
    raise AssertionError(text)


def test_data_offset_may_end_the_header(tmp_path):
    # data right after END: at the offset given, or with no offset at all
    text = _data_right_after_end(_header_text(file=". OFFSET"))
    no_offset = _header_text(file=".")
    for i, head in enumerate([text, no_offset]):
        path = tmp_path / f"{i}.mif"
        path.write_bytes(_one_value_file(head))
        h, data = read_mif(path)
        assert h.data_offset == len(head)
        np.testing.assert_array_equal(data.reshape(-1), [2.5, 4.0])


def test_blank_and_comment_lines_are_skipped(tmp_path):
    text = _header_text(file=". OFFSET").replace("vox:", "\n# by hand\n  \nvox:")
    text = _data_right_after_end(text)
    path = tmp_path / "c.mif"

    path.write_bytes(_one_value_file(text))
    h, data = read_mif(path)
    assert h.keyvals == []
    assert h.vox == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(data.reshape(-1), [2.5, 4.0])
    # no transform line: identity, written back as 3 rows of 4 numbers
    np.testing.assert_array_equal(h.affine(), np.eye(4))
    back_h, back = read_mif(write_mif(tmp_path / "back.mif", h, data))
    np.testing.assert_array_equal(back_h.transform, np.eye(3, 4))
    np.testing.assert_array_equal(back, data)


def test_layout_with_a_missing_axis_is_not_written(tmp_path):
    # a hand-built header with 3 axes but 2 reversed flags: refused, not cut
    h = MifHeader("t", (2, 1, 1), (1.0,) * 3, (0, 1, 2), (False, False),
                  np.dtype("<f4"), np.eye(3, 4), None)  # fmt: skip
    with pytest.raises(ValueError, match="zip"):
        write_mif(tmp_path / "x.mif", h, np.zeros((2, 1, 1)))
    assert not (tmp_path / "x.mif").exists()


def test_complex_data_are_not_scalars(tmp_path):
    h = MifHeader("t", (3, 1, 1), (1.0,) * 3, (0, 1, 2), (False,) * 3,
                  np.dtype("<c8"), np.eye(3, 4), None)  # fmt: skip
    data = np.array([1 + 2j, 3, -1j], np.complex64).reshape(h.dim)
    out = write_mif(tmp_path / "c.mif", h, data, dtype="<c8")
    np.testing.assert_array_equal(read_mif(out)[1], data)  # read as stored
    with pytest.raises(ClusterH5Error, match="complex MIF data cannot be read") as err:
        read_values(str(out))
    assert str(out) in str(err.value)


def test_range_read_of_a_truncated_file_is_named(tmp_path):
    src = INPUTS / "sub-01_FD.mif"
    cut = tmp_path / "cut.mif"
    cut.write_bytes(src.read_bytes()[:-8])  # the last two values are missing
    h = read_header(cut)
    assert read_range(str(cut), h, 0, 298).size == 298
    with pytest.raises(ClusterH5Error, match="the file ends inside the data") as err:
        read_range(str(cut), h, 290, 300)
    assert str(cut) in str(err.value)


def test_header_reads_stop_after_one_mebibyte(tmp_path):
    # read_header looks for END in the first MiB only, not through a large file
    # whole: here END lies 100 bytes past it
    text = _header_text(file=". OFFSET")
    end = text.index("file:")
    pad = (1 << 20) + 100 - len(text)
    text = _data_right_after_end(text[:end] + f"comment: {'x' * pad}\n" + text[end:])
    assert (1 << 20) < text.index("\nEND\n") < (1 << 20) + 4096
    path = tmp_path / "long.mif"
    path.write_bytes(_one_value_file(text))
    with pytest.raises(ClusterH5Error, match="no END line") as err:
        read_header(path)
    assert str(path) in str(err.value)
    # a header of a few chunks is read whole
    text = _header_text(file=". OFFSET")
    end = text.index("file:")
    text = _data_right_after_end(text[:end] + f"comment: {'y' * 10_000}\n" + text[end:])
    path.write_bytes(_one_value_file(text))
    assert read_header(path).keyvals == [("comment", "y" * 10_000)]
