"""Fixel-wise MIF cohorts: fixel tables, checks ModelArrayIO does not make,
from_cohort, the engine view and exports (with the differences we pin)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from tests._helpers import DATA, assert_same_file
from xarray_clusterh5.cli import main
from xarray_clusterh5.errors import ClusterH5Error
from xarray_clusterh5.mif.header import read_header
from xarray_clusterh5.mif.read import read_mif
from xarray_clusterh5.mif.write import write_mif
from xarray_clusterh5.modelarray.cohort import from_cohort, to_modelarray
from xarray_clusterh5.modelarray.convert import cohort_to_h5
from xarray_clusterh5.modelarray.fixels import read_fixel_table

MIF = DATA / "modelarray_modalities" / "mif"
FIXEL_ARGS = {
    "index_file": "inputs/index.mif",
    "directions_file": "inputs/directions.mif",
}


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A writable copy of the MIF fixtures, as the working directory."""
    w = tmp_path / "mif"
    shutil.copytree(MIF, w)
    monkeypatch.chdir(w)
    return w


def test_fixel_table_is_modelarrayios(work):
    t = read_fixel_table(**FIXEL_ARGS)
    assert (t.n_elements, t.voxel_ijk.shape) == (300, (159, 3))
    ds = from_cohort("cohort.csv", **FIXEL_ARGS)
    with xr.open_dataset("out/modelarray.h5", engine="clusterh5") as mai:
        for c in (
            "element",
            "voxel_id",
            "x",
            "y",
            "z",
            "voxel_i",
            "voxel_j",
            "voxel_k",
        ):
            np.testing.assert_array_equal(ds[c].values, mai[c].values)
        np.testing.assert_array_equal(ds["FD"].values, mai["FD"].values)
    # a voxel's fixels are consecutive and numbered in offset order
    assert (np.diff(ds["voxel_id"].values) >= 0).all()


def test_to_modelarray_from_the_dataset_equals_modelarrayio(work, tmp_path):
    ds = from_cohort("cohort.csv", batch_size=3, **FIXEL_ARGS)
    out = to_modelarray(ds, tmp_path / "x.h5", progress=False)
    assert_same_file(out[0], MIF / "out" / "modelarray.h5")
    with xr.open_dataset(MIF / "out" / "modelarray.h5", engine="clusterh5") as e:
        again = to_modelarray(e, tmp_path / "y.h5", progress=False)
    assert_same_file(again[0], MIF / "out" / "modelarray.h5")


def _write_fd(path: str, values: np.ndarray) -> None:
    h = read_header("inputs/sub-01_FD.mif")
    h = dataclasses.replace(h, dim=(values.size, 1, 1))
    write_mif(path, h, values.astype(np.float32), overwrite=True)


def test_subject_with_another_fixel_count_is_refused(work, tmp_path):
    # ModelArrayIO cuts a longer subject short and crashes on a shorter one
    _write_fd("inputs/sub-07_FD.mif", np.ones(301))
    with pytest.raises(ClusterH5Error, match="301 values") as err:
        cohort_to_h5("cohort.csv", tmp_path / "o.h5", **FIXEL_ARGS)
    assert "sub-07_FD.mif" in str(err.value)
    assert not (tmp_path / "o.h5").exists()


def test_index_and_directions_must_agree(work, tmp_path):
    h, dirs = read_mif("inputs/directions.mif")
    h = dataclasses.replace(h, dim=(299, 3, 1))
    write_mif("short_dirs.mif", h, dirs[:299])
    with pytest.raises(ClusterH5Error, match="index and directions disagree"):
        read_fixel_table("inputs/index.mif", "short_dirs.mif")


def test_bad_index_and_directions_images_are_named(work):
    h, idx = read_mif("inputs/index.mif", scaled=False)
    write_mif("float_index.mif", h, idx, dtype="<f4")
    with pytest.raises(
        ClusterH5Error, match="fixel index must be integers, not float32"
    ):
        read_fixel_table("float_index.mif", "inputs/directions.mif")
    h = dataclasses.replace(h, dim=(6, 6, 5, 1))
    write_mif("one_volume.mif", h, idx[..., :1], dtype="<u4")
    with pytest.raises(ClusterH5Error, match="4-D with 2 volumes, this one is"):
        read_fixel_table("one_volume.mif", "inputs/directions.mif")
    hd, dirs = read_mif("inputs/directions.mif")
    hd = dataclasses.replace(hd, dim=(300, 1, 3))
    write_mif("dirs_zyx.mif", hd, dirs.reshape(300, 1, 3))
    with pytest.raises(
        ClusterH5Error,
        match=r"fixel directions must be N x 3 \(x 1\), not \(300, 1, 3\)",
    ) as err:
        read_fixel_table("inputs/index.mif", "dirs_zyx.mif")
    assert "dirs_zyx.mif" in str(err.value)


def test_overlapping_fixel_blocks_are_refused(work):
    h, idx = read_mif("inputs/index.mif", scaled=False)
    idx = idx.copy()
    first = np.argwhere(idx[..., 0] > 0)[0]
    idx[(*tuple(first), 1)] += 1  # one voxel's block starts one fixel late
    write_mif("bad_index.mif", h, idx, dtype="<u4")
    with pytest.raises(ClusterH5Error, match="consecutive blocks"):
        read_fixel_table("bad_index.mif", "inputs/directions.mif")


def _one_slice_files() -> None:
    """index and directions of a one-slice grid, in the working folder."""
    h, idx = read_mif("inputs/index.mif", scaled=False)
    count = np.zeros((6, 6, 1), np.uint32)
    count[:, :, 0] = idx[:, :, 0, 0][:, :]  # same counts, one slice only
    n = int(count.sum())
    offset = np.zeros_like(count)
    flat = count.reshape(-1)
    offset.reshape(-1)[flat > 0] = np.concatenate([[0], np.cumsum(flat[flat > 0])[:-1]])
    h = dataclasses.replace(h, dim=(6, 6, 1, 2))
    write_mif("slice_index.mif", h, np.stack([count, offset], axis=-1), dtype="<u4")
    hd, dirs = read_mif("inputs/directions.mif")
    hd = dataclasses.replace(hd, dim=(n, 3, 1))
    write_mif("slice_dirs.mif", hd, dirs[:n])


def test_one_slice_grid_keeps_three_axes(work):
    # ModelArrayIO squeezes the index image, so a one-slice grid loses an axis
    _one_slice_files()
    t = read_fixel_table("slice_index.mif", "slice_dirs.mif")
    assert t.voxel_ijk.shape[1] == 3
    assert (t.voxel_ijk[:, 2] == 0).all()


def test_modelarrayio_loses_the_one_slice_axis(work):
    # the other half of the difference, where ModelArrayIO is installed (the
    # bench extra); CI's test extra does not pull it and its TileDB stack in
    gather_fixels = pytest.importorskip("modelarrayio.utils.mif").gather_fixels
    _one_slice_files()
    with pytest.raises(IndexError):
        gather_fixels("slice_index.mif", "slice_dirs.mif")


def test_large_offsets_are_read_exactly(tmp_path):
    # ModelArrayIO reads index.mif as float32: 2**24 + 1 would become 2**24
    h = read_header(MIF / "inputs" / "index.mif")
    data = np.zeros(h.dim, np.uint32)
    data[0, 0, 0, 1] = 2**24 + 1
    write_mif(tmp_path / "i.mif", h, data, dtype="<u4")
    _, back = read_mif(tmp_path / "i.mif")
    assert int(back[0, 0, 0, 1]) == 2**24 + 1
    assert int(np.float32(back[0, 0, 0, 1])) == 2**24


def test_scaled_template_export_is_read_back_right(work, tmp_path):
    # ModelArrayIO copies the template's scaling line onto float32 results,
    # so reading its file applies offset + scale * x; ours stores x plainly
    argv = ["export-results", "--analysis-name", "lm", "--input-hdf5",
            "out/modelarray_with_results.h5", "--output-dir", str(tmp_path / "e"),
            "--index-file", "inputs/index.mif", "--directions-file",
            "inputs/directions.mif", "--example-file",
            "inputs/sub-04_FD_int16scaled.mif"]  # fmt: skip
    assert main(argv) == 0
    with xr.open_dataset("out/modelarray_with_results.h5", engine="clusterh5") as r:
        estimate = r["lm"].sel(stat="age.estimate").values.astype(np.float32)
    ours_h, ours = read_mif(tmp_path / "e" / "lm_age.estimate.mif.gz")
    theirs_h, theirs = read_mif("exports_scaledtemplate/lm_age.estimate.mif.gz")
    assert ours_h.scaling is None
    assert theirs_h.scaling == (0.25, 0.001)
    np.testing.assert_array_equal(ours.reshape(-1), estimate)
    np.testing.assert_allclose(theirs.reshape(-1), 0.25 + 0.001 * estimate, rtol=1e-6)


def test_export_replaces_stale_results(work, tmp_path):
    # ModelArrayIO warns "Not overwriting" and keeps an old result file
    out = tmp_path / "e"
    out.mkdir()
    (out / "lm_age.estimate.mif.gz").write_bytes(b"stale")
    argv = ["export-results", "--analysis-name", "lm", "--input-hdf5",
            "out/modelarray_with_results.h5", "--output-dir", str(out),
            "--index-file", "inputs/index.mif", "--directions-file",
            "inputs/directions.mif", "--cohort-file", "cohort.csv"]  # fmt: skip
    assert main(argv) == 0
    fresh = (out / "lm_age.estimate.mif.gz").read_bytes()
    assert fresh != b"stale"
    _, a = read_mif(out / "lm_age.estimate.mif.gz")
    _, b = read_mif("exports/lm_age.estimate.mif.gz")
    np.testing.assert_array_equal(a, b)


def test_mif_export_needs_a_template(work, tmp_path, capsys):
    argv = ["export-results", "--analysis-name", "lm", "--input-hdf5",
            "out/modelarray_with_results.h5", "--output-dir", str(tmp_path / "e"),
            "--index-file", "inputs/index.mif", "--directions-file",
            "inputs/directions.mif"]  # fmt: skip
    assert main(argv) == 1
    assert "--cohort-file or --example-file is required" in capsys.readouterr().err


def test_accessor_export_copies_index_and_directions(work, tmp_path):
    ds = from_cohort("cohort.csv", **FIXEL_ARGS)
    with xr.open_dataset("out/modelarray_with_results.h5", engine="clusterh5") as r:
        ds["lm"] = r["lm"].load().drop_vars(list(r["lm"].coords))
    ds["lm"] = ds["lm"].assign_coords(stat=r["stat"].values)
    out = ds.clusterh5.export_results(tmp_path / "e", compress=False)
    assert sorted(p.name for p in out) == sorted(
        p.name for p in (MIF / "exports_nocompress").iterdir()
    )
    for p in out:
        assert p.read_bytes() == (MIF / "exports_nocompress" / p.name).read_bytes()


def test_plain_mif_cohorts_stream_stripes(work, tmp_path, monkeypatch):
    # without .mif.gz subjects each stripe reads only its bytes: tiny stripes
    # must give ModelArrayIO's values (sub-02 is the gzipped one: left out)
    from xarray_clusterh5.modelarray import h5 as modelarray_io

    lines = Path("cohort.csv").read_text().splitlines()
    Path("plain.csv").write_text("\n".join(r for r in lines if ".gz" not in r) + "\n")
    monkeypatch.setattr(modelarray_io, "STRIPE_BYTES", 8 * 64 * 4)
    out = tmp_path / "p.h5"
    cohort_to_h5("plain.csv", out, chunk_voxels=16, **FIXEL_ARGS)
    with (
        xr.open_dataset(out, engine="clusterh5") as ours,
        xr.open_dataset(MIF / "out" / "modelarray.h5", engine="clusterh5") as mai,
    ):
        want = np.delete(mai["FD"].values, 1, axis=0)
        np.testing.assert_array_equal(ours["FD"].values, want)


@pytest.mark.parametrize(
    "text",
    [
        "scalar_name,source_file\nFD,inputs/sub-03_FD_float64.mif\nFD,x.mif\n",
        "scalar_name,source_file\nNA,inputs/sub-01_FD.mif\n ,x\n"
        "FD, inputs/sub-03_FD_float64.mif \n",
        'id,scalar_name,source_file\n1,FD,"inputs/sub-03_FD_float64.mif"\n',
    ],
)
def test_template_is_the_first_kept_row_as_read_cohort_says(work, text):
    from xarray_clusterh5.modelarray import h5 as modelarray_io
    from xarray_clusterh5.modelarray.export import template_from_cohort

    Path("c.csv").write_text(text)
    first = modelarray_io.read_cohort("c.csv")["source_file"].iloc[0]
    assert first == "inputs/sub-03_FD_float64.mif"
    assert template_from_cohort("c.csv") == str(work / first)


def test_directions_with_a_second_volume_are_refused(work):
    hd, dirs = read_mif("inputs/directions.mif")
    hd = dataclasses.replace(hd, dim=(300, 3, 2))
    write_mif("dirs2.mif", hd, np.concatenate([dirs, dirs], axis=2))
    with pytest.raises(
        ClusterH5Error, match=r"must be N x 3 \(x 1\), not \(300, 3, 2\)"
    ):
        read_fixel_table("inputs/index.mif", "dirs2.mif")


def test_negative_fixel_counts_are_refused(work):
    h, idx = read_mif("inputs/index.mif", scaled=False)
    idx = idx.astype(np.int64)
    empty = np.argwhere(idx[..., 0] == 0)[0]
    idx[(*tuple(empty), 0)] = -1  # an empty voxel claims -1 fixels
    write_mif("neg_index.mif", h, idx, dtype="<i4")
    with pytest.raises(ClusterH5Error, match="negative fixel counts") as err:
        read_fixel_table("neg_index.mif", "inputs/directions.mif")
    assert "neg_index.mif" in str(err.value)


@pytest.mark.parametrize(
    ("dim", "dtype", "match"),
    [
        # the right number of values, but over two axes: not one value per fixel
        ((150, 2, 1), "<f4", r"fixel data has dim \(150, 2, 1\)"),
        ((300, 1, 1), "<c8", "complex MIF data"),
    ],
)
def test_subject_data_must_be_one_real_value_per_fixel(
    work, tmp_path, dim, dtype, match
):
    h = read_header("inputs/sub-01_FD.mif")
    h = dataclasses.replace(h, dim=dim)
    write_mif("inputs/sub-07_FD.mif", h, np.ones(300), dtype=dtype, overwrite=True)
    with pytest.raises(ClusterH5Error, match=match) as err:
        cohort_to_h5("cohort.csv", tmp_path / "o.h5", **FIXEL_ARGS)
    assert "sub-07_FD.mif" in str(err.value)
