"""CIFTI-2 reading (fast path vs nibabel, ModelArrayIO), exports, dtseries, ptseries."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
from dataclasses import replace
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nibabel.cifti2 import cifti2_axes as ca

from tests._helpers import MODELARRAY, assert_same_export
from xarray_clusterh5._hdf5.names import safe_output_name
from xarray_clusterh5.cifti import read as cifti
from xarray_clusterh5.cifti import write as cifti_write
from xarray_clusterh5.errors import ClusterH5Error, CorruptFileError
from xarray_clusterh5.modelarray import export
from xarray_clusterh5.modelarray import h5 as modelarray_io
from xarray_clusterh5.modelarray.layout import export_file_names

COHORT = MODELARRAY / "cohort"
THICK = [
    COHORT / "thickness" / f"sub-000{i}_thickness.dscalar.nii" for i in range(1, 6)
]
AREA = [COHORT / "area" / f"sub-000{i}_area.dscalar.nii" for i in range(1, 6)]
ANALYSES = {"lm": 19, "lm_stream": 13, "legacy_attr": 25}
THICK_SIZE = THICK[0].stat().st_size


def _mai_values(name: str = "thickness") -> np.ndarray:
    with h5py.File(MODELARRAY / "modelarrayio" / "two_scalars.h5", "r") as f:
        return f[f"scalars/{name}/values"][()]


def _write(path: Path, data: np.ndarray, axes: tuple, **nifti: object) -> Path:
    img = nib.Cifti2Image(data, header=axes)
    for key, value in nifti.items():
        if key == "intent":
            img.nifti_header.set_intent(value)
        elif key == "dtype":
            img.set_data_dtype(value)
    img.to_filename(path)
    return path


def _fixture_axis() -> ca.BrainModelAxis:
    return nib.load(THICK[0]).header.get_axis(1)


# --------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------


def test_reference_matches_nibabel_and_modelarrayio_greyordinates():
    ref, block = cifti.read_reference(THICK[0])
    axis = _fixture_axis()
    assert ref.n_elements == 100
    assert ref.axis == axis  # structures, vertices, voxels, affine, volume, meshes
    np.testing.assert_array_equal(ref.vertex, axis.vertex)
    np.testing.assert_array_equal(ref.voxel, axis.voxel)
    codes, names = ref.structure_table()
    with h5py.File(MODELARRAY / "modelarrayio" / "thickness.h5", "r") as f:
        grey = f["greyordinates"][()]
        expected_names = [str(s) for s in f["greyordinates"].attrs["structure_names"]]
    np.testing.assert_array_equal(codes, grey[1])
    assert names == expected_names
    assert block.n_maps == 1
    assert not block.use_nibabel


@pytest.mark.parametrize("files", [THICK, AREA], ids=["thickness", "area"])
def test_fast_reads_equal_modelarrayio_values(files):
    ref, _ = cifti.read_reference(files[0])
    expected = _mai_values(files[0].parent.name)
    for i, path in enumerate(files):
        block = cifti.check_file(path, ref)
        row = cifti.read_columns(block, 0, 100)
        np.testing.assert_array_equal(row, expected[i])
        np.testing.assert_array_equal(
            cifti.read_columns(block, 37, 61), expected[i, 37:61]
        )


def _open_fds_on(paths: list[Path]) -> int:
    names = {str(p.resolve()) for p in paths}
    fd_dir = Path("/proc/self/fd")
    return sum(1 for fd in fd_dir.iterdir() if _target(fd) in names)


def _target(link: Path) -> str:
    try:
        return str(link.resolve())
    except OSError:  # closed between listing and reading
        return ""


@pytest.mark.parametrize("limit", [0, 2, 5])
@pytest.mark.parametrize("files", [THICK, AREA], ids=["thickness", "area"])
def test_stripes_from_held_files_equal_modelarrayio_values(files, limit):
    # some files held open, the rest opened per read: the same values
    ref, _ = cifti.read_reference(files[0])
    blocks = [cifti.check_file(p, ref) for p in files]
    expected = _mai_values(files[0].parent.name)
    with cifti.OpenFiles(blocks, limit=limit) as held:
        assert [fd is not None for fd in held.fds] == [i < limit for i in range(5)]
        assert _open_fds_on(files) == limit
        for start, stop in [(0, 100), (37, 61), (99, 100)]:
            out = np.full((5, stop - start), np.nan, dtype=np.float32)
            cifti.read_stripe_rows(blocks, held.fds, start, stop, out, range(5))
            np.testing.assert_array_equal(out, expected[:, start:stop])
    assert held.fds == [None] * 5
    assert _open_fds_on(files) == 0


def test_files_read_through_nibabel_are_not_held_open():
    # pconn and scaled/unusual-dtype files are read by nibabel, not by
    # preadv on a held descriptor: holding them would only spend descriptors
    _, block = cifti.read_reference(THICK[0])
    blocks = [
        replace(block, use_nibabel=True),
        block,
        replace(block, pconn=True),
        replace(block, pconn=True, use_nibabel=True),
    ]
    with cifti.OpenFiles(blocks) as held:
        assert [fd is not None for fd in held.fds] == [False, True, False, False]
        assert _open_fds_on([THICK[0]]) == 1
    assert _open_fds_on([THICK[0]]) == 0


def test_held_file_truncated_later_is_named(tmp_path):
    copy = tmp_path / "sub.dscalar.nii"
    copy.write_bytes(THICK[0].read_bytes())
    _, block = cifti.read_reference(copy)
    with cifti.OpenFiles([block]) as held:
        with open(copy, "r+b") as fh:
            fh.truncate(block.offset + 50 * 4)
        out = np.empty((1, 100), dtype=np.float32)
        with pytest.raises(ClusterH5Error, match=r"sub\.dscalar\.nii.*truncated"):
            cifti.read_stripe_rows([block], held.fds, 0, 100, out, range(1))
        cifti.read_stripe_rows([block], held.fds, 10, 50, out[:, :40], range(1))
        np.testing.assert_array_equal(out[0, :40], _mai_values()[0, 10:50])


def test_open_files_close_what_they_opened_when_one_is_missing(tmp_path):
    copies = []
    for i, p in enumerate(THICK[:3]):
        copies.append(tmp_path / f"s{i}.dscalar.nii")
        copies[-1].write_bytes(p.read_bytes())
    ref, _ = cifti.read_reference(copies[0])
    blocks = [cifti.check_file(p, ref) for p in copies]
    copies[2].unlink()
    with pytest.raises(FileNotFoundError):
        cifti.OpenFiles(blocks)
    assert _open_fds_on(copies[:2]) == 0


def test_fixture_files_take_the_fast_path(monkeypatch):
    # every ModelArrayIO/Workbench file of the fixtures: no nibabel parse at all
    expected = {p: nib.load(p).header.get_axis(1) for p in THICK + AREA}
    monkeypatch.setattr(cifti, "_nib_load", _no_nibabel)
    for files in (THICK, AREA):
        ref, block = cifti.read_reference(files[0])
        assert ref.axis == expected[files[0]]
        assert not block.use_nibabel
        for path in files[1:]:
            assert not cifti.check_file(path, ref).use_nibabel
        assert cifti.parse_brain_models(ref.xml, 100, str(files[0])) is not None


def test_nan_greyordinates_kept():
    ref, block = cifti.read_reference(THICK[0])
    row = cifti.read_columns(block, 0, ref.n_elements)
    assert np.flatnonzero(np.isnan(row)).tolist() == [30, 41, 42, 51, 52]


def test_other_number_formatting_same_model_is_accepted(tmp_path):
    # same values, other bytes: -2.0000000000 written as -2.00000000e0
    raw = THICK[1].read_bytes()
    assert b"-2.0000000000" in raw
    other = tmp_path / "x.dscalar.nii"
    other.write_bytes(raw.replace(b"-2.0000000000", b"-2.00000000e0"))
    ref, _ = cifti.read_reference(THICK[0])
    block = cifti.check_file(other, ref)
    np.testing.assert_array_equal(cifti.read_columns(block, 0, 100), _mai_values()[1])


def test_same_count_other_vertices_is_refused(tmp_path):
    axis = _fixture_axis()
    vertex = axis.vertex.copy()
    vertex[3] += 1  # another medial-wall mask: same structures, same count
    moved = ca.BrainModelAxis(
        axis.name, voxel=axis.voxel, vertex=vertex, affine=axis.affine,
        volume_shape=axis.volume_shape, nvertices=axis.nvertices,
    )  # fmt: skip
    bad = _write(
        tmp_path / "moved.dscalar.nii",
        np.zeros((1, 100), np.float32),
        (ca.ScalarAxis(["m"]), moved),
        intent="ConnDenseScalar",
    )
    ref, _ = cifti.read_reference(THICK[0])
    with pytest.raises(ClusterH5Error, match="vertex") as err:
        cifti.check_file(bad, ref)
    assert str(bad) in str(err.value)


def test_same_count_other_structures_is_refused(tmp_path):
    axis = _fixture_axis()
    names = axis.name.copy()
    names[95] = "CIFTI_STRUCTURE_BRAIN_STEM"  # one thalamus voxel renamed
    moved = ca.BrainModelAxis(
        names, voxel=axis.voxel, vertex=axis.vertex, affine=axis.affine,
        volume_shape=axis.volume_shape, nvertices=axis.nvertices,
    )  # fmt: skip
    bad = _write(
        tmp_path / "st.dscalar.nii", np.zeros((1, 100), np.float32),
        (ca.ScalarAxis(["m"]), moved),
    )  # fmt: skip
    ref, _ = cifti.read_reference(THICK[0])
    with pytest.raises(
        ClusterH5Error,
        match="greyordinate 95 is in CIFTI_STRUCTURE_BRAIN_STEM, the first file has "
        "CIFTI_STRUCTURE_THALAMUS_RIGHT",
    ):
        cifti.check_file(bad, ref)


def test_damaged_brain_model_xml_is_named(tmp_path):
    # the fast parser gives up, nibabel refuses: a ClusterH5Error naming the file
    raw = THICK[0].read_bytes()
    for old, new in [
        (b"VolumeDimensions", b"VolumeDimensionz"),
        (b"</VoxelIndicesIJK>", b"</VoxelIndicesIJQ>"),
    ]:
        bad = tmp_path / "bad.dscalar.nii"
        bad.write_bytes(raw.replace(old, new))
        with pytest.raises(ClusterH5Error, match="nibabel cannot read its CIFTI-2 "):
            cifti.read_reference(bad)


def test_header_and_xml_disagreeing_are_named(tmp_path):
    # the NIfTI dims say 90 greyordinates, the XML lists 100
    raw = bytearray(THICK[0].read_bytes())
    raw[16:80] = np.array([6, 1, 1, 1, 1, 1, 90, 1], dtype="<i8").tobytes()
    bad = tmp_path / "dims.dscalar.nii"
    bad.write_bytes(bytes(raw))
    with pytest.raises(
        ClusterH5Error, match=r"nibabel cannot read its CIFTI-2 header: .*\(1, 90\)"
    ):
        cifti.read_reference(bad)
    # brain models along the rows: a dscalar by its intent, not by its axes
    flipped = _write(
        tmp_path / "t.dscalar.nii", np.zeros((100, 1), np.float32),
        (_fixture_axis(), ca.ScalarAxis(["m"])), intent="ConnDenseScalar",
    )  # fmt: skip
    with pytest.raises(
        ClusterH5Error, match="second axis is ScalarAxis, not brain models"
    ) as err:
        cifti.read_reference(flipped, map_index=0)
    assert str(flipped) in str(err.value)


def test_file_truncated_after_its_check_is_named(tmp_path):
    # cohorts are read lazily: a file cut between the header check and the read
    path = tmp_path / "s.dscalar.nii"
    path.write_bytes(THICK[1].read_bytes())
    ref, _ = cifti.read_reference(THICK[0])
    block = cifti.check_file(path, ref)
    path.write_bytes(THICK[1].read_bytes()[:-40])
    with pytest.raises(ClusterH5Error, match="the data block ended early") as err:
        cifti.read_columns(block, 0, 100)
    assert str(path) in str(err.value)


def test_same_count_other_voxels_is_refused(tmp_path):
    axis = _fixture_axis()
    voxel = axis.voxel.copy()
    voxel[90] = [1, 2, 3]
    moved = ca.BrainModelAxis(
        axis.name, voxel=voxel, vertex=axis.vertex, affine=axis.affine,
        volume_shape=axis.volume_shape, nvertices=axis.nvertices,
    )  # fmt: skip
    bad = _write(
        tmp_path / "vox.dscalar.nii",
        np.zeros((1, 100), np.float32),
        (ca.ScalarAxis(["m"]), moved),
    )
    ref, _ = cifti.read_reference(THICK[0])
    with pytest.raises(ClusterH5Error, match=r"voxel \[1, 2, 3\]"):
        cifti.check_file(bad, ref)


def test_other_count_is_refused(tmp_path):
    axis = _fixture_axis()[:99]
    bad = _write(
        tmp_path / "short.dscalar.nii", np.zeros((1, 99), np.float32),
        (ca.ScalarAxis(["m"]), axis),
    )  # fmt: skip
    ref, _ = cifti.read_reference(THICK[0])
    with pytest.raises(ClusterH5Error, match="99 greyordinates"):
        cifti.check_file(bad, ref)


def test_multi_map_needs_a_map_index(tmp_path):
    data = np.arange(200, dtype=np.float32).reshape(2, 100)
    path = _write(
        tmp_path / "two.dscalar.nii", data, (ca.ScalarAxis(["a", "b"]), _fixture_axis())
    )
    with pytest.raises(ClusterH5Error, match="2 maps") as err:
        cifti.read_reference(path)
    assert str(path) in str(err.value)
    _, block = cifti.read_reference(path, map_index=1)
    np.testing.assert_array_equal(cifti.read_columns(block, 0, 100), data[1])
    np.testing.assert_array_equal(cifti.read_columns(block, 10, 20), data[1, 10:20])
    with pytest.raises(ClusterH5Error, match="out of range"):
        cifti.read_reference(path, map_index=2)
    # negative indices count from the end, as in Python
    _, last = cifti.read_reference(path, map_index=-1)
    np.testing.assert_array_equal(cifti.read_columns(last, 0, 100), data[1])
    _, first = cifti.read_reference(path, map_index=-2)
    np.testing.assert_array_equal(cifti.read_columns(first, 5, 6), data[0, 5:6])
    assert cifti.read_columns(first, 7, 7).shape == (0,)
    with pytest.raises(ClusterH5Error, match="map index -3 out of range: 2 maps"):
        cifti.read_reference(path, map_index=-3)


@pytest.mark.parametrize(
    ("axis0", "kind"),
    [
        (ca.SeriesAxis(0, 2.0, 3), "dtseries"),
        (ca.LabelAxis(["a", "b", "c"], {0: ("x", (1, 1, 1, 1))}), "dlabel"),
    ],
)
def test_dtseries_and_dlabel_are_cifti(tmp_path, axis0, kind):
    data = np.arange(300, dtype=np.float32).reshape(3, 100)
    path = _write(tmp_path / f"x.{kind}.nii", data, (axis0, _fixture_axis()))
    assert cifti.cifti_kind_from_name(path) == kind
    with pytest.raises(ClusterH5Error, match=f"CIFTI-2 {kind} file, not a dscalar"):
        cifti.read_reference(path)
    _, block = cifti.read_reference(path, map_index=2)
    np.testing.assert_array_equal(cifti.read_columns(block, 0, 100), data[2])


def test_axis_without_a_type_leaves_the_intent_code_to_decide(tmp_path):
    # the maps' axis types name no known pair: the intent (dscalar) decides
    raw = THICK[0].read_bytes()
    old = b' IndicesMapToDataType="CIFTI_INDEX_TYPE_SCALARS"'
    assert raw.count(old) == 1
    path = tmp_path / "t.dscalar.nii"
    path.write_bytes(raw.replace(old, b" " * len(old)))
    _, block = cifti.read_reference(path)
    np.testing.assert_array_equal(cifti.read_columns(block, 0, 100), _mai_values()[0])


def test_intent_unknown_is_read_from_the_xml(tmp_path):

    # nibabel leaves intent 3000 (unknown) unless told; the axes decide
    data = np.ones((1, 100), np.float32)
    path = _write(
        tmp_path / "u.dscalar.nii", data, (ca.ScalarAxis(["m"]), _fixture_axis())
    )
    assert int(nib.load(path).nifti_header["intent_code"]) == 3000
    _, block = cifti.read_reference(path)
    np.testing.assert_array_equal(cifti.read_columns(block, 0, 100), data[0])


@pytest.mark.parametrize(
    "dtype", [np.float32, np.float64, np.int16, np.uint8, np.int32, np.int8, np.uint16]
)
def test_other_dtypes_equal_nibabel(tmp_path, dtype):
    rng = np.random.default_rng(0)
    data = (rng.uniform(0, 100, size=(1, 100))).astype(dtype)
    path = _write(
        tmp_path / "d.dscalar.nii", data, (ca.ScalarAxis(["m"]), _fixture_axis()),
        dtype=dtype,
    )  # fmt: skip
    _, block = cifti.read_reference(path)
    assert not block.use_nibabel  # read directly: the cast is exact for these types
    assert block.dtype == np.dtype(dtype).newbyteorder("<")
    expected = nib.load(path).get_fdata()[0].astype(np.float32)  # ModelArrayIO's rule
    np.testing.assert_array_equal(cifti.read_columns(block, 0, 100), expected)


@pytest.mark.parametrize(
    ("slope", "inter", "value"),
    [(2.5, 1.0, 3.5), (2.5, 0.0, 2.5), (1.0, 1.0, 2.0), (0.0, 0.0, 1.0)],
)
def test_scaled_data_goes_through_nibabel(tmp_path, slope, inter, value):
    data = np.ones((1, 100), np.float32)
    path = _write(
        tmp_path / "s.dscalar.nii", data, (ca.ScalarAxis(["m"]), _fixture_axis())
    )
    raw = bytearray(path.read_bytes())
    raw[176:192] = np.array([slope, inter], dtype="<f8").tobytes()  # scl_slope/inter
    path.write_bytes(bytes(raw))
    _, block = cifti.read_reference(path)
    assert block.use_nibabel == (value != 1.0)  # slope 0 means unscaled (NIfTI)
    expected = nib.load(path).get_fdata()[0].astype(np.float32)
    np.testing.assert_array_equal(expected, np.full(100, value, np.float32))
    np.testing.assert_array_equal(cifti.read_columns(block, 0, 100), expected)


def test_big_endian_file(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.normal(size=(1, 100)).astype(np.float32)
    le = _write(
        tmp_path / "le.dscalar.nii", data, (ca.ScalarAxis(["m"]), _fixture_axis())
    )
    # nibabel writes little-endian only: byte-swap header, extension sizes and data
    raw = le.read_bytes()
    hdr = np.frombuffer(raw[:540], dtype=nib.nifti2.header_dtype)
    vox_offset = int(hdr["vox_offset"][0])
    esize, ecode = np.frombuffer(raw[544:552], dtype="<i4")
    big = tmp_path / "be.dscalar.nii"
    big.write_bytes(
        hdr.astype(nib.nifti2.header_dtype.newbyteorder(">")).tobytes()
        + raw[540:544]
        + np.array([esize, ecode], dtype=">i4").tobytes()
        + raw[552:vox_offset]
        + data[0].astype(">f4").tobytes()
    )
    assert big.read_bytes()[:4] == (540).to_bytes(4, "big")
    np.testing.assert_array_equal(nib.load(big).get_fdata()[0], data[0])
    ref, block = cifti.read_reference(big)
    assert block.dtype.byteorder == ">"
    np.testing.assert_array_equal(cifti.read_columns(block, 0, 100), data[0])
    assert ref.axis == _fixture_axis()


def test_not_cifti_inputs(tmp_path):
    nii1 = tmp_path / "vol.nii"
    nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)).to_filename(nii1)
    with pytest.raises(ClusterH5Error, match="NIfTI-1") as err:
        cifti.read_reference(nii1)
    assert str(nii1) in str(err.value)
    nii2 = tmp_path / "vol2.nii"
    nib.Nifti2Image(np.zeros((2, 2, 2), np.float32), np.eye(4)).to_filename(nii2)
    with pytest.raises(ClusterH5Error, match="CIFTI"):
        cifti.read_reference(nii2)
    with pytest.raises(FileNotFoundError, match="missing"):
        cifti.read_reference(tmp_path / "missing.dscalar.nii")
    empty = tmp_path / "empty.dscalar.nii"
    empty.write_bytes(b"")
    with pytest.raises(ClusterH5Error, match="empty or truncated"):
        cifti.read_reference(empty)
    packed = tmp_path / "z.dscalar.nii"
    packed.write_bytes(gzip.compress(THICK[0].read_bytes()))
    with pytest.raises(
        ClusterH5Error, match="is gzip-compressed; CIFTI-2 files are not"
    ):
        cifti.read_reference(packed)
    two_files = tmp_path / "m.dscalar.nii"
    two_files.write_bytes(THICK[0].read_bytes().replace(b"n+2\0", b"ni2\0", 1))
    with pytest.raises(ClusterH5Error, match=r"not a single-file NIfTI-2 \(magic"):
        cifti.read_reference(two_files)
    # cut after the header size field: a NIfTI-2 start, then nothing
    cut = tmp_path / "cut.dscalar.nii"
    cut.write_bytes(THICK[0].read_bytes()[:4])
    with pytest.raises(ClusterH5Error, match="truncated NIfTI-2 header"):
        cifti.read_reference(cut)
    cut.write_bytes(THICK[0].read_bytes()[:3])
    with pytest.raises(ClusterH5Error, match="empty or truncated"):
        cifti.read_reference(cut)


@pytest.mark.parametrize(
    ("dim", "match"),
    [
        ([3, 1, 1, 1, 1, 1, 100, 1], r"dims \[3, 1, 1, 1\]"),
        ([6, 1, 1, 1, 2, 1, 100, 1], r"dims \[6, 1, 1, 1, 2, 1, 100\]"),
        ([6, 2, 1, 1, 1, 1, 100, 1], r"dims \[6, 2, 1, 1, 1, 1, 100\]"),
        ([6, 1, 1, 1, 1, 1, 10**9, 1], "impossible in a file"),
        # one byte per value would just fit the file: the XML says 100 values
        ([6, 1, 1, 1, 1, 1, THICK_SIZE, 1], r"\(1, \d+\) does not match .* \(1, 100\)"),
        ([6, 1, 1, 1, 1, 0, 100, 1], "give 0 x 100 values, impossible"),
        ([6, 1, 1, 1, 1, 1, 0, 1], "give 1 x 0 values, impossible"),
    ],
)
def test_damaged_nifti_dims_are_named(tmp_path, dim, match):
    raw = bytearray(THICK[0].read_bytes())
    raw[16:80] = np.array(dim, dtype="<i8").tobytes()  # NIfTI-2 dim[8]
    bad = tmp_path / "dims.dscalar.nii"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ClusterH5Error, match=match) as err:
        cifti.read_reference(bad)
    assert str(bad) in str(err.value)


def _with_vox_offset(src: Path, dst: Path, vox_offset: int) -> Path:
    raw = bytearray(src.read_bytes())
    raw[168:176] = np.array([vox_offset], dtype="<i8").tobytes()  # NIfTI-2 field
    dst.write_bytes(bytes(raw))
    return dst


def test_damaged_vox_offset_is_named(tmp_path):
    size = THICK[0].stat().st_size
    # pointing into the header: the data would be read from the XML bytes
    for offset in (100, 540, 543):  # 544 is the least with an extension
        low = _with_vox_offset(THICK[0], tmp_path / "low.dscalar.nii", offset)
        with pytest.raises(ClusterH5Error, match=r"vox_offset too small") as err:
            cifti.read_reference(low)
        assert str(low) in str(err.value)
    past = _with_vox_offset(THICK[0], tmp_path / "past.dscalar.nii", size + 1)
    with pytest.raises(
        CorruptFileError,
        match=rf"vox_offset {size + 1} is past the end of the file \({size} bytes\)",
    ):
        cifti.read_reference(past)
    # the header is whole, the data block is missing: the error says how much
    vox_offset = int(np.frombuffer(THICK[0].read_bytes()[168:176], "<i8")[0])
    cut = tmp_path / "cut.dscalar.nii"
    cut.write_bytes(THICK[0].read_bytes()[:vox_offset])
    need = vox_offset + 100 * 4  # 100 float32 greyordinates
    with pytest.raises(
        ClusterH5Error,
        match=rf"truncated: {vox_offset} bytes, the data block needs {need}",
    ):
        cifti.read_reference(cut)


def test_nifti2_without_extensions_is_not_cifti(tmp_path):
    # nibabel writes a plain NIfTI-2 volume with vox_offset 544: no room for XML
    nii2 = tmp_path / "vol2.nii"
    nib.Nifti2Image(np.zeros((2, 2, 2), np.float32), np.eye(4)).to_filename(nii2)
    assert np.frombuffer(nii2.read_bytes()[168:176], "<i8")[0] == 544
    with pytest.raises(ClusterH5Error, match="has no NIfTI extensions, so no CIFTI"):
        cifti.read_reference(nii2)


@pytest.mark.parametrize(
    ("intent", "match"),
    [
        # the axes (parcels x brain models) are no type we read: the intent names it
        ("ConnParcelDense", "is a CIFTI-2 pdconn file; supported are dscalar"),
        ("ConnUnknown", r"unsupported CIFTI-2 axes \('PARCELS', 'BRAIN_MODELS'\) "
         r"\(intent 3000\)"),
        (3005, r"unsupported CIFTI-2 axes .* \(intent 3005\)"),  # not a CIFTI type
    ],
)  # fmt: skip
def test_unsupported_axes_are_named_by_intent_code(tmp_path, intent, match):
    parcels = ca.ParcelsAxis.from_brain_models(
        [(f"P{i}", _fixture_axis()[i * 50 : (i + 1) * 50]) for i in range(2)]
    )
    path = _write(
        tmp_path / "x.pdconn.nii", np.zeros((2, 100), np.float32),
        (parcels, _fixture_axis()), intent=intent if isinstance(intent, str) else 3000,
    )  # fmt: skip
    if isinstance(intent, int):
        raw = bytearray(path.read_bytes())
        raw[504:508] = np.array([intent], dtype="<i4").tobytes()  # intent_code
        path.write_bytes(bytes(raw))
    with pytest.raises(ClusterH5Error, match=match) as err:
        cifti.read_reference(path)
    assert str(path) in str(err.value)


def _parcels(n: int, size: int) -> ca.ParcelsAxis:
    return ca.ParcelsAxis.from_brain_models(
        [(f"P{i}", _fixture_axis()[i * size : (i + 1) * size]) for i in range(n)]
    )


def test_pscalar_cohort_checks(tmp_path):
    data = np.arange(10, dtype=np.float32)[None]
    first = _write(
        tmp_path / "a.pscalar.nii", data, (ca.ScalarAxis(["a"]), _parcels(10, 10))
    )
    ref, _ = cifti.read_reference(first)
    # the same parcels with other number formatting, and another map name
    second = _write(
        tmp_path / "b.pscalar.nii", data * 2, (ca.ScalarAxis(["b"]), _parcels(10, 10))
    )
    raw = second.read_bytes()
    assert b"-2.0000000000" in raw
    second.write_bytes(raw.replace(b"-2.0000000000", b"-2.00000000e0"))
    block = cifti.check_file(second, ref)
    np.testing.assert_array_equal(cifti.read_columns(block, 0, 10), data[0] * 2)
    fewer = _write(
        tmp_path / "c.pscalar.nii", data[:, :5], (ca.ScalarAxis(["c"]), _parcels(5, 20))
    )
    with pytest.raises(
        ClusterH5Error,
        match=rf"has 5 values per map; the first file \({first}\) has 10",
    ):
        cifti.check_file(fewer, ref)


def test_pconn_values_are_read_row_major(tmp_path):
    # ModelArrayIO flattens a pconn matrix row-major; the file stores it by column
    rows, cols = _parcels(5, 20), _parcels(4, 25)  # other parcels on each axis
    data = np.arange(20, dtype=np.float32).reshape(5, 4) * 1.5
    path = _write(tmp_path / "c.pconn.nii", data, (rows, cols))
    ref, block = cifti.read_reference(path)
    assert ref.shape == (5, 4)
    assert ref.n_elements == 20
    names = ref.element_names()
    assert names["parcel_from"].tolist() == [f"P{i}" for i in range(5) for _ in "abcd"]
    assert names["parcel_to"].tolist() == [f"P{i}" for i in range(4)] * 5
    assert block.pconn
    np.testing.assert_array_equal(cifti.read_columns(block, 0, 20), data.ravel())
    np.testing.assert_array_equal(cifti.read_columns(block, 7, 12), data.ravel()[7:12])
    np.testing.assert_array_equal(
        cifti.read_columns(cifti.check_file(path, ref), 0, 20), data.ravel()
    )
    with pytest.raises(ClusterH5Error, match="a pconn file has no maps to pick from"):
        cifti.read_reference(path, map_index=0)


def test_parcellated_cohorts_with_other_parcels_are_refused(tmp_path):
    rows, cols = _parcels(5, 20), _parcels(4, 25)
    conn = _write(
        tmp_path / "a.pconn.nii", np.ones((5, 4), np.float32), (rows, cols)
    )  # fmt: skip
    ref, _ = cifti.read_reference(conn)
    # the rows of a pconn are parcels too: other rows, same columns
    renamed = ca.ParcelsAxis(
        [f"Q{i}" for i in range(5)], rows.voxels, rows.vertices, rows.affine,
        rows.volume_shape, rows.nvertices,
    )  # fmt: skip
    other = _write(
        tmp_path / "b.pconn.nii", np.ones((5, 4), np.float32), (renamed, cols)
    )
    with pytest.raises(
        ClusterH5Error, match=r"parcels differ from .*a\.pconn\.nii \(axis 0\): other"
    ):
        cifti.check_file(other, ref)
    square = _write(tmp_path / "c.pconn.nii", np.ones((5, 5), np.float32), (rows, rows))
    with pytest.raises(ClusterH5Error, match="has 25 values per map; the first file"):
        cifti.check_file(square, ref)

    scalar = _write(
        tmp_path / "d.pscalar.nii", np.ones((1, 4), np.float32),
        (ca.ScalarAxis(["m"]), cols),
    )  # fmt: skip
    with pytest.raises(
        ClusterH5Error, match=r"is a CIFTI-2 pscalar file; the first file .* is a pconn"
    ):
        cifti.check_file(scalar, ref)
    # pscalar: the same parcel names over other vertices or voxels
    ref, _ = cifti.read_reference(scalar)
    moved = ca.ParcelsAxis.from_brain_models(
        [(f"P{i}", _fixture_axis()[i * 25 + 1 : (i + 1) * 25 + 1]) for i in range(4)]
    )
    shifted = _write(
        tmp_path / "e.pscalar.nii", np.ones((1, 4), np.float32),
        (ca.ScalarAxis(["m"]), moved),
    )  # fmt: skip
    with pytest.raises(
        ClusterH5Error,
        match=r"\(axis 1\): same parcel names but other vertices or voxels",
    ):
        cifti.check_file(shifted, ref)


def test_truncated_pconn_after_its_check_is_named(tmp_path):
    path = _write(
        tmp_path / "c.pconn.nii", np.ones((5, 4), np.float32),
        (_parcels(5, 20), _parcels(4, 25)),
    )  # fmt: skip
    _, block = cifti.read_reference(path)
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(ClusterH5Error, match="the data block ended early") as err:
        cifti.read_columns(block, 0, 20)
    assert str(path) in str(err.value)


def test_truncated_data_block(tmp_path):

    cut = tmp_path / "cut.dscalar.nii"
    cut.write_bytes(THICK[1].read_bytes()[:-8])
    ref, _ = cifti.read_reference(THICK[0])
    with pytest.raises(ClusterH5Error, match="truncated") as err:
        cifti.check_file(cut, ref)
    assert str(cut) in str(err.value)


@st.composite
def brain_models(draw: st.DrawFn) -> ca.BrainModelAxis:
    """Random surface and volume structures, voxels in arbitrary order."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    parts = []
    n_surf = draw(st.integers(0, 2))
    for name in ["CORTEX_LEFT", "CORTEX_RIGHT"][:n_surf]:
        nv = draw(st.integers(1, 60))
        k = draw(st.integers(1, nv))
        verts = rng.choice(nv, size=k, replace=False)
        parts.append(ca.BrainModelAxis(name, vertex=verts, nvertices={name: nv}))
    shape = (7, 8, 9)
    affine = np.diag([draw(st.sampled_from([1.5, -2.0, 3.25])), 2.0, 2.0, 1.0])
    affine[:3, 3] = [-90.5, 12.0, 0.125]
    for name in ["THALAMUS_LEFT", "BRAIN_STEM"][
        : draw(st.integers(0 if n_surf else 1, 2))
    ]:
        k = draw(st.integers(1, 30))
        flat = rng.choice(int(np.prod(shape)), size=k, replace=False)
        ijk = np.stack(np.unravel_index(flat, shape), axis=1)
        parts.append(
            ca.BrainModelAxis(name, voxel=ijk, affine=affine, volume_shape=shape)
        )
    axis = parts[0]
    for p in parts[1:]:
        axis = axis + p
    return axis


def _no_nibabel(path: str) -> None:
    raise AssertionError(f"nibabel fallback used for {path}")


@given(axis=brain_models())
def test_fast_xml_parse_equals_nibabel(tmp_path_factory, axis):
    path = tmp_path_factory.mktemp("bm") / "r.dscalar.nii"
    data = np.arange(len(axis), dtype=np.float32)[None]
    _write(path, data, (ca.ScalarAxis(["m"]), axis))
    with pytest.MonkeyPatch.context() as mp:
        # the fast parser takes every file nibabel writes, without the fallback
        mp.setattr(cifti, "_nib_load", _no_nibabel)
        ref, block = cifti.read_reference(path)
    parsed = nib.load(path).header.get_axis(1)
    assert ref.axis == parsed
    np.testing.assert_array_equal(ref.voxel, parsed.voxel)
    np.testing.assert_array_equal(cifti.read_columns(block, 0, len(axis)), data[0])


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"91,109,91", b"91,1x9,91"),
        (b">21 1565", b">2x 1565"),
        (b'MeterExponent="-3"', b'MeterExponent="-x"'),
        (b' MeterExponent="-3"', b""),  # required by CIFTI-2, nibabel refuses
        (b'SurfaceNumberOfVertices="32492"', b'SurfaceNumberOfVertices="3249x"'),
        (b"90.0000000000", b"90.000000000x"),
        (b"20 23 31", b"20 2x 31"),
    ],
)
def test_damaged_numbers_in_the_xml_are_named(tmp_path, old, new):
    # not a bare ValueError: the fast parser gives up, nibabel's error is named
    bad = tmp_path / "n.dscalar.nii"
    raw = THICK[1].read_bytes()
    bad.write_bytes(raw.replace(old, new.ljust(len(old)), 1))
    assert cifti.parse_brain_models(_fixture_bm_xml(), 100, "x") is not None
    ref, _ = cifti.read_reference(THICK[0])
    for read in (cifti.read_reference, lambda p: cifti.check_file(p, ref)):
        with pytest.raises(ClusterH5Error, match="nibabel cannot read") as err:
            read(bad)
        assert str(bad) in str(err.value)


def _fixture_bm_xml() -> bytes:

    return cifti.read_reference(THICK[0])[0].xml


@pytest.mark.parametrize(
    "edits",
    [
        [(b'VolumeDimensions="91,109,91"', b'VolumeDimensions="91,109"')],
        [(b"0.0000000000 1.0000000000<", b"1.0000000000<")],  # 15 matrix numbers
        [(b' IndexCount="40"', b"")],
        [(b' IndexOffset="40"', b"")],
        [(b'IndexOffset="40"', b'IndexOffset="41"')],
        [(b'IndexCount="12"', b'IndexCount="-12"')],
        [(b'IndexCount="12"', b'IndexCount="1x"')],
        # one voxel more in the last model: its count runs past the greyordinates
        [(b'IndexCount="10"', b'IndexCount="11"'), (b"67 53 29<", b"67 53 29 1 1 1<")],
        [(b' BrainStructure="CIFTI_STRUCTURE_THALAMUS_LEFT"', b"")],
        [(b"CIFTI_STRUCTURE_CORTEX_LEFT", b"CIFTI_STRUCTURE_CORTEX&#95;LEFT")],
        [(b' SurfaceNumberOfVertices="32492"', b"")],
        [(b"<VertexIndices>21 ", b"<VertexIndices>")],
        [(b"<VoxelIndicesIJK>20 23 31", b"<VoxelIndicesIJK>20 23")],
        [(b"CIFTI_MODEL_TYPE_SURFACE", b"CIFTI_MODEL_TYPE_OTHER")],
        [(b"<Volume ", b"<Volumen ")],
        [(b"TransformationMatrixVoxelIndicesIJKtoXYZ ", b"Transform ")],
    ],
)
def test_fast_parser_gives_up_on_unexpected_xml(edits):
    # anything but the expected numbers: None, and nibabel decides
    xml = _fixture_bm_xml()
    assert cifti.parse_brain_models(xml, 100, "x") is not None
    for old, new in edits:
        assert xml.count(old) >= 1
        xml = xml.replace(old, new, 1)
    assert cifti.parse_brain_models(xml, 100, "x") is None


@pytest.mark.parametrize("n", [99, 101])
def test_fast_parser_gives_up_on_another_greyordinate_count(n):
    assert cifti.parse_brain_models(_fixture_bm_xml(), n, "x") is None


def test_fast_parser_reads_voxels_without_vertices():
    ref = cifti.parse_brain_models(_fixture_bm_xml(), 100, "x")
    assert ref is not None
    np.testing.assert_array_equal(ref.vertex[78:], -1)
    np.testing.assert_array_equal(ref.voxel[:78], -1)
    assert ref.nvertices == {
        "CIFTI_STRUCTURE_CORTEX_LEFT": 32492, "CIFTI_STRUCTURE_CORTEX_RIGHT": 32492
    }  # fmt: skip
    assert ref.volume_shape == (91, 109, 91)


@pytest.mark.parametrize("change", ["affine", "volume_shape", "nvertices"])
def test_same_greyordinates_in_another_volume_or_mesh_are_refused(tmp_path, change):
    axis = _fixture_axis()
    geometry = {
        "affine": axis.affine, "volume_shape": axis.volume_shape,
        "nvertices": dict(axis.nvertices),
    }  # fmt: skip
    if change == "affine":
        geometry["affine"] = axis.affine @ np.diag([1.0, 1.0, 1.5, 1.0])
    elif change == "volume_shape":
        geometry["volume_shape"] = (91, 109, 92)
    else:
        geometry["nvertices"]["CIFTI_STRUCTURE_CORTEX_RIGHT"] = 32000
    other = ca.BrainModelAxis(
        axis.name, voxel=axis.voxel, vertex=axis.vertex, **geometry
    )
    bad = _write(
        tmp_path / "g.dscalar.nii", np.zeros((1, 100), np.float32),
        (ca.ScalarAxis(["m"]), other),
    )  # fmt: skip
    ref, _ = cifti.read_reference(THICK[0])
    with pytest.raises(
        ClusterH5Error,
        match=r"its brain model differs from the first file's \(affine, volume or mesh",
    ) as err:
        cifti.check_file(bad, ref)
    assert str(bad) in str(err.value)


def test_surface_only_cohorts_compare_without_a_volume(tmp_path, monkeypatch):
    surface = _fixture_axis()[:78]  # both cortices, no voxels: no affine
    first = _write(
        tmp_path / "a.dscalar.nii", np.ones((1, 78), np.float32),
        (ca.ScalarAxis(["a"]), surface),
    )  # fmt: skip
    with monkeypatch.context() as fast:  # no volume: still the fast parser
        fast.setattr(cifti, "_nib_load", _no_nibabel)
        ref, _ = cifti.read_reference(first)
    assert ref.affine is None
    # the same model, other bytes (a tab for a space): compared by numbers
    second = tmp_path / "b.dscalar.nii"
    raw = first.read_bytes()
    assert raw.count(b"<VertexIndices>21 1565") == 1
    second.write_bytes(raw.replace(b"<VertexIndices>21 ", b"<VertexIndices>21\t"))
    assert cifti.read_columns(cifti.check_file(second, ref), 0, 78).tolist() == [1] * 78
    other, _ = cifti.read_reference(second)
    assert ref.same_as(other)
    assert other.same_as(ref)
    with_volume = replace(other, affine=np.eye(4))
    assert not ref.same_as(with_volume)
    assert not with_volume.same_as(ref)
    # nibabel's reading of the file (no volume, so no units to scale) is the same
    monkeypatch.setattr(cifti, "parse_brain_models", lambda *a: None)
    slow, _ = cifti.read_reference(second)
    assert slow.affine is None
    assert slow.same_as(ref)
    assert slow.axis == surface


@pytest.mark.parametrize("size", [8, 16])
def test_other_extensions_before_the_cifti_one_are_skipped(tmp_path, size):
    # a comment extension (code 6) first: the CIFTI XML is the second one
    raw = THICK[0].read_bytes()
    vox_offset = int(np.frombuffer(raw[168:176], "<i8")[0])
    comment = np.array([size, 6], "<i4").tobytes() + b"x" * (size - 8)
    new = bytearray(raw[:544] + comment + raw[544:])
    new[168:176] = np.array([vox_offset + size], "<i8").tobytes()
    path = tmp_path / "ext.dscalar.nii"
    path.write_bytes(bytes(new))
    ref, block = cifti.read_reference(path)
    assert ref.axis == _fixture_axis()
    np.testing.assert_array_equal(cifti.read_columns(block, 0, 100), _mai_values()[0])


def test_nibabel_errors_are_computed_on_first_use():
    import nibabel.filebasedimages

    errors = cifti.NIBABEL_ERRORS
    assert nibabel.filebasedimages.ImageFileError in errors
    assert OSError in errors
    assert errors == cifti.nibabel_errors()
    with pytest.raises(AttributeError, match="has no attribute 'NIBABEL_ERROR'"):
        cifti.NIBABEL_ERROR  # noqa: B018


def test_file_shrinking_while_its_header_is_read_is_named(tmp_path, monkeypatch):
    # another process truncates the file between its size check and the read
    path = tmp_path / "s.dscalar.nii"
    path.write_bytes(THICK[0].read_bytes()[:1000])  # inside the XML
    real = cifti.os.fstat

    class _Stat:
        st_size = 10**6

    monkeypatch.setattr(cifti.os, "fstat", lambda fd: _Stat() if fd > 2 else real(fd))
    with pytest.raises(
        ClusterH5Error, match="truncated: the file ends inside the header extension"
    ) as err:
        cifti.read_reference(path)
    assert str(path) in str(err.value)


def test_empty_cifti_extension_has_no_maps(tmp_path):
    # an extension of code 32 holding no XML, last in the header
    raw = bytearray(THICK[0].read_bytes())
    vox_offset = int(np.frombuffer(raw[168:176], "<i8")[0])
    raw[168:176] = np.array([552], "<i8").tobytes()
    empty = np.array([8, 32], "<i4").tobytes()
    path = tmp_path / "empty.dscalar.nii"
    path.write_bytes(bytes(raw[:544]) + empty + bytes(raw[vox_offset:]))
    with pytest.raises(ClusterH5Error, match="CIFTI XML has no brain-model map"):
        cifti.read_reference(path)


@pytest.mark.parametrize("kind", ["dscalar", "pscalar"])
def test_map_never_closed_is_named(tmp_path, kind):
    # the element holding the greyordinates or parcels is not closed
    if kind == "dscalar":
        raw = THICK[0].read_bytes()
        match = "CIFTI XML has no brain-model map"
    else:
        src = _write(
            tmp_path / "a.pscalar.nii", np.ones((1, 10), np.float32),
            (ca.ScalarAxis(["a"]), _parcels(10, 10)),
        )  # fmt: skip
        raw = src.read_bytes()
        match = "CIFTI XML has no parcels map"
    end = raw.rindex(b"</MatrixIndicesMap>")
    path = tmp_path / f"open.{kind}.nii"
    path.write_bytes(raw[:end] + b"<MatrixIndicesMaq/>" + raw[end + 19 :])
    with pytest.raises(ClusterH5Error, match=match) as err:
        cifti.read_reference(path)
    assert str(path) in str(err.value)
    if kind == "dscalar":  # also as a later file of a cohort
        ref, _ = cifti.read_reference(THICK[0])
        with pytest.raises(ClusterH5Error, match=match) as err:
            cifti.check_file(path, ref)
        assert str(path) in str(err.value)


def test_cifti_xml_is_the_extension_content():
    raw = THICK[0].read_bytes()
    vox_offset = int(np.frombuffer(raw[168:176], "<i8")[0])
    xml = cifti._cifti_xml(cifti._read_header(str(THICK[0])))
    assert xml.startswith(b"<?xml") or xml.startswith(b"<CIFTI")
    assert xml == raw[552:vox_offset].rstrip(b"\0")


def test_extension_running_past_the_header_is_refused(tmp_path):

    # the CIFTI extension's size says it ends 16 bytes after vox_offset
    raw = bytearray(THICK[0].read_bytes())
    esize = int(np.frombuffer(raw[544:548], "<i4")[0])
    raw[544:548] = np.array([esize + 16], "<i4").tobytes()
    bad = tmp_path / "long.dscalar.nii"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ClusterH5Error, match=r"has no CIFTI-2 extension \(code 32\)"):
        cifti.read_reference(bad)


# --------------------------------------------------------------------------
# exports (against ModelArrayIO's files)
# --------------------------------------------------------------------------


@pytest.mark.parametrize("analysis", sorted(ANALYSES))
def test_export_equals_modelarrayio(tmp_path, analysis):
    out = export.export_results(
        MODELARRAY / "results" / "thickness_with_results.h5",
        analysis,
        tmp_path / analysis,
        example_file=THICK[0],
    )
    assert len(out) == ANALYSES[analysis]
    assert_same_export(tmp_path / analysis, MODELARRAY / "export" / analysis)
    # a nibabel-written template: ModelArrayIO's files are byte for byte ours
    for p in out:
        assert (
            p.read_bytes() == (MODELARRAY / "export" / analysis / p.name).read_bytes()
        )


def test_export_one_minus_p_values(tmp_path):
    out = export.export_results(
        MODELARRAY / "results" / "thickness_with_results.h5", "lm", tmp_path,
        example_file=THICK[0],
    )  # fmt: skip
    names, matrix = modelarray_io.read_results(
        MODELARRAY / "results" / "thickness_with_results.h5", "lm"
    )
    row = matrix[names.index("age.p.value.fdr")]
    got = np.asarray(nib.load(tmp_path / "lm_age.1m.p.value.fdr.dscalar.nii").dataobj)[
        0
    ]
    np.testing.assert_array_equal(got, (1 - row).astype(np.float32))
    assert np.isnan(got[[30, 41, 42, 51, 52]]).all()
    assert len(out) == 19


def test_export_refuses_to_overwrite_before_writing(tmp_path):
    h5 = MODELARRAY / "results" / "thickness_with_results.h5"
    export.export_results(h5, "lm_stream", tmp_path, example_file=THICK[0])
    victim = tmp_path / "lm_stream_age.estimate.dscalar.nii"
    victim.write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="lm_stream_"):
        export.export_results(h5, "lm_stream", tmp_path, example_file=THICK[0])
    assert victim.read_bytes() == b"keep"
    export.export_results(
        h5, "lm_stream", tmp_path, example_file=THICK[0], overwrite=True
    )
    assert victim.read_bytes() != b"keep"


def test_export_with_multi_map_template_is_refused(tmp_path):
    data = np.zeros((2, 100), np.float32)
    tmpl = _write(
        tmp_path / "t.dscalar.nii", data, (ca.ScalarAxis(["a", "b"]), _fixture_axis())
    )
    with pytest.raises(ClusterH5Error, match="single-map dscalar"):
        cifti_write.load_template(tmpl)


@pytest.mark.parametrize("shape", [(99,), (100, 1), (1, 100)])
def test_export_row_of_another_shape_is_refused(tmp_path, shape):
    template = cifti_write.load_template(THICK[0])
    with pytest.raises(
        ClusterH5Error,
        match=rf"template has 100 greyordinates but the data has shape {shape}".replace(
            "(", r"\("
        ).replace(")", r"\)"),
    ) as err:
        cifti_write.write_dscalar_row(
            tmp_path / "o.dscalar.nii", np.zeros(shape), template, overwrite=False
        )
    assert str(THICK[0]) in str(err.value)
    assert not list(tmp_path.iterdir())


def test_export_with_integer_template_goes_through_nibabel(tmp_path):
    tmpl = _write(
        tmp_path / "t.dscalar.nii",
        np.zeros((1, 100), np.float32),
        (ca.ScalarAxis(["t"]), _fixture_axis()),
        dtype=np.int16,
    )
    template = cifti_write.load_template(tmpl)
    assert template.header_bytes is None
    row = np.arange(100, dtype=np.float64)
    out = export.write_cifti_results(tmp_path / "o", "a", ["s"], row[None], template)
    back = nib.load(out[0])
    assert back.get_data_dtype() == np.int16
    # exactly what ModelArrayIO's h5_to_cifti does with such a template
    t = nib.load(tmpl)
    ref = tmp_path / "mai.dscalar.nii"
    nib.Cifti2Image(
        row.reshape(1, -1), header=t.header, nifti_header=t.nifti_header
    ).to_filename(ref)
    np.testing.assert_array_equal(back.get_fdata(), nib.load(ref).get_fdata())
    np.testing.assert_allclose(back.get_fdata()[0], row, rtol=1e-3)
    assert back.header.get_axis(1) == _fixture_axis()


def test_export_with_scaled_float_template_goes_through_nibabel(tmp_path):
    tmpl = _write(
        tmp_path / "t.dscalar.nii",
        np.zeros((1, 100), np.float32),
        (ca.ScalarAxis(["t"]), _fixture_axis()),
    )
    raw = bytearray(tmpl.read_bytes())
    raw[176:192] = np.array([2.5, 1.0], dtype="<f8").tobytes()  # scl_slope/inter
    tmpl.write_bytes(bytes(raw))
    template = cifti_write.load_template(tmpl)
    # the template's header bytes would rescale the values a reader sees
    assert template.header_bytes is None
    row = np.arange(100, dtype=np.float64)
    out = export.write_cifti_results(tmp_path / "o", "a", ["s"], row[None], template)
    np.testing.assert_array_equal(nib.load(out[0]).get_fdata()[0], row)


@pytest.mark.parametrize(
    ("analysis", "stat"),
    [
        ("lm", "../../escape"),
        ("../../escape", "x"),
        ("a/b", "c/d"),
        ("..", ".."),
        ("lm", "..\\..\\x"),
        ("lm", "/etc/passwd"),
        ("lm", "p.value/../../x"),
    ],
)
def test_export_names_never_leave_the_folder(tmp_path, analysis, stat):
    folder = tmp_path / "deep" / "out"
    folder.parent.mkdir()  # the output folder is made, not its parents
    template = cifti_write.load_template(THICK[0])
    out = export.write_cifti_results(
        folder, analysis, [stat], np.zeros((1, 100)), template
    )
    for p in out:
        assert p.parent == folder
        assert p.exists()
    written = sorted(q for q in tmp_path.rglob("*") if q.is_file())
    assert written == sorted(out)


@given(
    analysis=st.text(min_size=1, max_size=12),
    stats=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=4),
)
def test_export_file_names_stay_inside(analysis, stats):
    try:
        plan = export_file_names(analysis, stats)
    except ValueError:
        return  # names such as "." are refused outright
    folder = Path("/nonexistent/out")
    for _, stem, _ in plan:
        target = folder / f"{stem}.dscalar.nii"
        assert target.parent == folder
        assert "/" not in stem
        assert "\x00" not in stem


def test_name_sanitising():
    with pytest.raises(ValueError, match="cannot be used"):
        safe_output_name("")
    # ModelArrayIO's rule (spaces and / to _), plus backslashes and control chars
    assert safe_output_name("age p.value/x") == "age_p.value_x"
    assert safe_output_name("a\\b\x00c\nd") == "a_b_c_d"
    assert safe_output_name("..") == ".."  # only ever a part of a file name


# --------------------------------------------------------------------------
# dtseries / ptseries from clustered experiments
# --------------------------------------------------------------------------

AFFINE = np.array([[-3.0, 0, 0, 90], [0, 3.0, 0, -126], [0, 0, 3.0, -72], [0, 0, 0, 1]])


def test_dtseries_keeps_the_voxel_order(tmp_path):
    rng = np.random.default_rng(3)
    shape = (5, 6, 7)
    flat = rng.choice(int(np.prod(shape)), size=40, replace=False)  # not C order
    ijk = np.stack(np.unravel_index(flat, shape), axis=1)
    data = rng.normal(size=(40, 12)).astype(np.float32)
    path = cifti_write.write_dtseries(
        tmp_path / "run.dtseries.nii", data, ijk, AFFINE, shape, 2.5
    )
    img = nib.load(path)
    series, bm = img.header.get_axis(0), img.header.get_axis(1)
    assert isinstance(series, ca.SeriesAxis)
    assert (series.start, series.step, series.size, series.unit) == (
        0.0,
        2.5,
        12,
        "SECOND",
    )
    np.testing.assert_array_equal(bm.voxel, ijk)
    assert set(bm.name) == {"CIFTI_STRUCTURE_OTHER"}
    np.testing.assert_array_equal(bm.affine, AFFINE)
    assert tuple(bm.volume_shape) == shape
    np.testing.assert_array_equal(np.asarray(img.dataobj), data.T)
    # our reader finds the same values per voxel
    _, block = cifti.read_reference(path, map_index=4)
    np.testing.assert_array_equal(cifti.read_columns(block, 0, 40), data[:, 4])
    with pytest.raises(FileExistsError):
        cifti_write.write_dtseries(path, data, ijk, AFFINE, shape, 2.5)


def test_dtseries_bad_inputs(tmp_path):
    ijk = np.array([[0, 0, 0], [1, 1, 1]])
    data = np.zeros((2, 3))
    for outside in (ijk + 4, ijk - 1, np.array([[0, 0, 0], [4, 4, 5]])):
        with pytest.raises(ValueError, match=r"outside the volume \(5, 5, 5\)"):
            cifti_write.write_dtseries(
                tmp_path / "a.dtseries.nii", data, outside, AFFINE, (5, 5, 5), 1
            )
    with pytest.raises(ValueError, match="repeated"):
        cifti_write.write_dtseries(
            tmp_path / "a.dtseries.nii",
            data,
            np.zeros((2, 3), int),
            AFFINE,
            (5, 5, 5),
            1,
        )
    for bad_ijk in (ijk[:, :2], ijk.ravel()):
        with pytest.raises(ValueError, match=r"must have shape \(n, 3\), got"):
            cifti_write.write_dtseries(
                tmp_path / "a.dtseries.nii", data, bad_ijk, AFFINE, (5, 5, 5), 1
            )
    with pytest.raises(ValueError, match="no voxels to write"):
        cifti_write.write_dtseries(
            tmp_path / "a.dtseries.nii", data[:0], ijk[:0], AFFINE, (5, 5, 5), 1
        )
    with pytest.raises(ValueError, match="TR"):
        cifti_write.write_dtseries(
            tmp_path / "a.dtseries.nii", data, ijk, AFFINE, (5, 5, 5), 0
        )
    with pytest.raises(ValueError, match="does not match"):
        cifti_write.write_dtseries(
            tmp_path / "a.dtseries.nii", data.T, ijk, AFFINE, (5, 5, 5), 1
        )
    assert not list(tmp_path.iterdir())


def test_ptseries_one_parcel_per_cluster(tmp_path):
    rng = np.random.default_rng(4)
    shape = (6, 6, 6)
    flat = rng.choice(216, size=30, replace=False)
    ijk = np.stack(np.unravel_index(flat, shape), axis=1)
    parcels = [ijk[:10], ijk[10:25], ijk[25:]]
    names = ["cluster_3", "cluster_7", "cluster_12"]
    summary = rng.normal(size=(3, 9)).astype(np.float32)
    path = cifti_write.write_ptseries(
        tmp_path / "s.ptseries.nii", summary, names, parcels, AFFINE, shape, 0.8
    )
    img = nib.load(path)
    series, pax = img.header.get_axis(0), img.header.get_axis(1)
    assert isinstance(pax, ca.ParcelsAxis)
    assert list(pax.name) == names
    for got, want in zip(pax.voxels, parcels, strict=True):
        np.testing.assert_array_equal(got, want)
    assert series.step == 0.8
    assert series.size == 9
    np.testing.assert_array_equal(np.asarray(img.dataobj), summary.T)
    with pytest.raises(
        ValueError,
        match=r"summary shape \(3, 9\), 2 names and 3 voxel lists must agree",
    ):
        cifti_write.write_ptseries(
            tmp_path / "d.ptseries.nii", summary, names[:2], parcels, AFFINE, shape, 1.0
        )
    with pytest.raises(ValueError, match="unique"):
        cifti_write.write_ptseries(
            tmp_path / "d.ptseries.nii", summary, ["a", "a", "b"], parcels, AFFINE,
            shape, 1.0,
        )  # fmt: skip
    outside = [*parcels[:2], np.array([[0, 0, -1]])]
    with pytest.raises(ValueError, match=r"outside the volume \(6, 6, 6\)"):
        cifti_write.write_ptseries(
            tmp_path / "d.ptseries.nii", summary, names, outside, AFFINE, shape, 1.0
        )
    with pytest.raises(FileExistsError):
        cifti_write.write_ptseries(path, summary, names, parcels, AFFINE, shape, 0.8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.ptseries.nii"]


@pytest.mark.parametrize("name", ["pconn", "pscalar", "dscalar"])
def test_export_templates_are_fixed_once_loaded(tmp_path, name):
    # a template's shape gives each written matrix: rows x columns for pconn
    if name == "dscalar":
        path, shape = THICK[0], (1, 100)
    else:
        axes = (_parcels(5, 20), _parcels(4, 25))
        if name == "pscalar":
            axes = (ca.ScalarAxis(["m"]), axes[1])
        shape = (len(axes[0]), 4)
        path = _write(tmp_path / f"t.{name}.nii", np.zeros(shape, np.float32), axes)
    template = cifti_write.load_template(path)
    assert template.shape == shape
    assert template.n_elements == shape[0] * shape[1]
    with pytest.raises(dataclasses.FrozenInstanceError):
        template.shape = (1, 1)  # type: ignore[misc]
    _, block = cifti.read_reference(path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        block.offset = 0  # type: ignore[misc]


def test_fixtures_are_modelarrayio_files():
    # expected values come from ModelArrayIO's and R's files: they must be unchanged
    for line in (MODELARRAY / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        path = MODELARRAY / name.lstrip("*").strip()
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, name


@pytest.mark.parametrize("fast", [True, False])
def test_volume_affine_in_millimetres_whatever_the_meter_exponent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast: bool
) -> None:
    # CIFTI-2 stores the volume matrix in units of 10^MeterExponent m; the
    # fast parser and the nibabel fallback must both give millimetres
    src = MODELARRAY / "export" / "lm" / "lm_age.estimate.dscalar.nii"
    raw = src.read_bytes()
    assert raw.count(b'MeterExponent="-3"') == 1
    path = tmp_path / "cm.dscalar.nii"  # same matrix, now read as centimetres
    path.write_bytes(raw.replace(b'MeterExponent="-3"', b'MeterExponent="-2"'))
    if not fast:
        monkeypatch.setattr(cifti, "parse_brain_models", lambda *a: None)
    mm, _ = cifti.read_reference(src)
    cm, _ = cifti.read_reference(path)
    stored = nib.load(src).header.get_axis(1).affine
    np.testing.assert_array_equal(mm.affine, stored)
    want = stored.copy()
    want[:3] *= 10.0
    np.testing.assert_allclose(cm.affine, want, rtol=1e-15)
    assert not np.allclose(cm.affine, mm.affine)


def test_open_files_hold_half_the_open_file_limit(tmp_path):
    # the other half is left to the process: with a soft limit of 64, a
    # cohort of 80 files holds 32 open and opens the rest per read
    import resource

    _, block = cifti.read_reference(THICK[0])
    blocks = [block] * 80
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    try:
        with cifti.OpenFiles(blocks) as held:
            assert sum(fd is not None for fd in held.fds) == 32
            out = np.empty((80, 100), dtype=np.float32)
            cifti.read_stripe_rows(blocks, held.fds, 0, 100, out, range(80))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    np.testing.assert_array_equal(out, np.tile(_mai_values()[0], (80, 1)))
