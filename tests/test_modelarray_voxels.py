"""Voxel-wise NIfTI cohorts: from_cohort, the engine view, checks, exports, 4-D."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import xarray as xr

from tests._helpers import DATA, assert_same_file
from xarray_clusterh5.cli import main
from xarray_clusterh5.errors import ClusterH5Error
from xarray_clusterh5.modelarray.cohort import from_cohort, to_modelarray
from xarray_clusterh5.modelarray.convert import cohort_to_h5
from xarray_clusterh5.modelarray.export import export_results

NIFTI = DATA / "modelarray_modalities" / "nifti"
MASK = "inputs/group_mask.nii.gz"


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A writable copy of the NIfTI fixtures, as the working directory."""
    w = tmp_path / "nifti"
    shutil.copytree(NIFTI, w)
    monkeypatch.chdir(w)
    return w


def test_from_cohort_equals_modelarrayios_file_and_engine_view(work):
    ds = from_cohort("cohort.csv", mask=MASK)
    with xr.open_dataset("out/modelarray.h5", engine="clusterh5") as mai:
        for c in ("element", "i", "j", "k"):
            np.testing.assert_array_equal(ds[c].values, mai[c].values)
        for s in ("FA", "MD"):
            np.testing.assert_array_equal(ds[s].values, mai[s].values)
    mask = nib.load(MASK)
    np.testing.assert_array_equal(ds["affine"].values, mask.affine)
    assert ds.attrs["volume_shape"] == [12, 14, 10]
    assert list(ds["sex"].values[:2]) == ["M", "F"]
    # sub-02's own mask lacks 60 group voxels; sub-07 has one NaN of its own
    assert np.isnan(ds["FA"].values).sum(axis=1).tolist() == [0, 60, 0, 0, 0, 0, 1, 0]


def test_to_modelarray_from_the_dataset_equals_modelarrayio(work, tmp_path):
    ds = from_cohort("cohort.csv", mask=MASK, batch_size=3)
    out = to_modelarray(ds, tmp_path / "x.h5", progress=False)
    assert_same_file(out[0], NIFTI / "out" / "modelarray.h5")


def test_engine_file_round_trip(work, tmp_path):
    with xr.open_dataset("out/modelarray.h5", engine="clusterh5") as ds:
        out = to_modelarray(ds, tmp_path / "r.h5", progress=False)
    assert_same_file(out[0], NIFTI / "out" / "modelarray.h5")


def test_dataset_with_only_ijk_coordinates_writes_voxels(work, tmp_path):
    # a Dataset built by hand: values and i, j, k only, then source file names
    with xr.open_dataset("out/modelarray.h5", engine="clusterh5") as mai:
        ds = xr.Dataset(
            {s: (("subject", "element"), mai[s].values) for s in ("FA", "MD")},
            coords={c: ("element", mai[c].values) for c in ("i", "j", "k")},
        )
    # the element table is understood; what is missing is named
    with pytest.raises(ValueError, match="'FA': no source-file coordinate along"):
        to_modelarray(ds, tmp_path / "h.h5", progress=False)
    ds = ds.assign_coords(source_file=("subject", [f"s{n}.nii" for n in range(8)]))
    out = to_modelarray(ds, tmp_path / "h.h5", progress=False)
    with h5py.File(out[0], "r") as got, h5py.File("out/modelarray.h5", "r") as want:
        np.testing.assert_array_equal(got["voxels"][()], want["voxels"][()])
        for s in ("FA", "MD"):
            np.testing.assert_array_equal(
                got[f"scalars/{s}/values"][()], want[f"scalars/{s}/values"][()]
            )


def _shift_affine(path: str, dx: float) -> None:
    img = nib.load(path)
    affine = img.affine.copy()
    affine[0, 3] += dx
    nib.Nifti1Image(np.asarray(img.dataobj), affine, img.header).to_filename(path)


def test_affine_mismatch_is_refused_by_name_and_nothing_is_written(work, tmp_path):
    _shift_affine("inputs/sub-04_MD.nii.gz", 2.0)
    out = tmp_path / "o.h5"
    with pytest.raises(ClusterH5Error, match="affine differs") as err:
        cohort_to_h5("cohort.csv", out, mask=MASK)
    assert "sub-04_MD.nii.gz" in str(err.value)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [work]
    with pytest.raises(ClusterH5Error, match="affine differs") as err:
        from_cohort("cohort.csv", mask=MASK)  # refused by default here too
    assert "sub-04_MD.nii.gz" in str(err.value)
    with pytest.warns(UserWarning, match="sub-04_MD.nii.gz"):
        cohort_to_h5("cohort.csv", out, mask=MASK, allow_affine_mismatch=True)
    assert_same_file(out, NIFTI / "out" / "modelarray.h5")


def test_subject_mask_affine_is_checked_too(work, tmp_path, capsys):
    _shift_affine("inputs/sub-06_mask.nii.gz", -1.0)
    argv = ["to-modelarray", "--cohort-file", "cohort.csv", "--mask", MASK,
            "--output", str(tmp_path / "o.h5")]  # fmt: skip
    assert main(argv) == 1
    assert "sub-06_mask.nii.gz" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="sub-06_mask.nii.gz: subject mask's affine"):
        assert main([*argv, "--allow_affine_mismatch"]) == 0
    assert_same_file(tmp_path / "o.h5", NIFTI / "out" / "modelarray.h5")


def test_shape_mismatch_and_4d_mask_are_refused(work, tmp_path):
    img = nib.load("inputs/sub-03_FA.nii")
    nib.Nifti1Image(np.zeros((12, 14, 9), np.float32), img.affine).to_filename(
        "inputs/sub-03_FA.nii"
    )
    with pytest.raises(ClusterH5Error, match=r"shape \(12, 14, 9\)") as err:
        cohort_to_h5("cohort.csv", tmp_path / "o.h5", mask=MASK)
    assert "sub-03_FA.nii" in str(err.value)
    mask = nib.load(MASK)
    four = np.asarray(mask.dataobj)[..., None]
    nib.Nifti1Image(four, mask.affine).to_filename("mask4d.nii.gz")
    with pytest.raises(ClusterH5Error, match="must be a 3-D volume") as err:
        cohort_to_h5("cohort.csv", tmp_path / "o.h5", mask="mask4d.nii.gz")
    assert "mask4d.nii.gz" in str(err.value)
    assert not (tmp_path / "o.h5").exists()


def test_cohort_without_subject_masks_uses_the_group_mask(work, tmp_path):
    text = Path("cohort.csv").read_text().splitlines()
    rows = [",".join(r.split(",")[:2]) for r in text]  # drop source_mask_file
    Path("plain.csv").write_text("\n".join(rows) + "\n")
    ds = from_cohort("plain.csv", mask=MASK)
    grid = nib.load(MASK).get_fdata() > 0
    fa = nib.load("inputs/sub-02_FA.nii.gz").get_fdata()[grid].astype(np.float32)
    np.testing.assert_array_equal(ds["FA"].values[1], fa)


def test_nifti_cohorts_need_a_mask(work, capsys):
    assert main(["to-modelarray", "--cohort-file", "cohort.csv"]) == 1
    assert "detected NIfTI data but no group mask" in capsys.readouterr().err


def test_accessor_exports_equal_modelarrayios(work, tmp_path):
    with xr.open_dataset("out/modelarray_with_results.h5", engine="clusterh5") as ds:
        out = ds.clusterh5.export_results(
            tmp_path / "e", analysis="lm", mask=MASK, compress=False
        )
    assert len(out) == 17
    for p in out:
        assert p.read_bytes() == (NIFTI / "exports_nocompress" / p.name).read_bytes()


def test_exports_from_from_cohort_use_its_mask(work, tmp_path):
    ds = from_cohort("cohort.csv", mask=MASK)
    with xr.open_dataset("out/modelarray_with_results.h5", engine="clusterh5") as r:
        ds["lm"] = r["lm"].load().drop_vars(["element", "i", "j", "k"])
    out = ds.clusterh5.export_results(tmp_path / "e", compress=False)
    assert sorted(p.name for p in out) == sorted(
        p.name for p in (NIFTI / "exports_nocompress").iterdir()
    )
    same = (NIFTI / "exports_nocompress" / "lm_age.1m.p.value.fdr.nii").read_bytes()
    assert (tmp_path / "e" / "lm_age.1m.p.value.fdr.nii").read_bytes() == same


def test_failed_export_leaves_no_files(work, tmp_path, monkeypatch):
    from xarray_clusterh5.nifti import write as nifti_write

    real = nifti_write.volume_bytes
    calls = []

    def flaky(t, values, fill=0.0):
        calls.append(1)
        if len(calls) == 5:
            raise OSError("disk full")
        return real(t, values, fill)

    monkeypatch.setattr(nifti_write, "volume_bytes", flaky)
    h5 = "out/modelarray_with_results.h5"
    with pytest.raises(OSError, match="disk full"):
        export_results(h5, "lm", tmp_path / "e", mask=MASK, threads=1)
    assert list((tmp_path / "e").iterdir()) == []


def test_4d_nifti_per_subject_set(work, tmp_path):
    ds = from_cohort("cohort.csv", mask=MASK)
    path = ds.clusterh5.to_nifti_4d(tmp_path / "fa.nii.gz", scalar="FA")
    img = nib.load(path)
    assert img.shape == (12, 14, 10, 8)
    np.testing.assert_array_equal(img.affine, nib.load(MASK).affine)
    data = np.asarray(img.dataobj)
    ijk = tuple(ds[c].values for c in "ijk")
    np.testing.assert_array_equal(data[ijk].T, ds["FA"].values)
    outside = np.ones(data.shape[:3], bool)
    outside[ijk] = False
    assert (data[outside] == 0).all()
    with pytest.raises(FileExistsError):
        ds.clusterh5.to_nifti_4d(path, scalar="FA")


def test_float64_storage_keeps_scaled_values_exact(work, tmp_path):
    cohort_to_h5("cohort.csv", tmp_path / "d.h5", mask=MASK, dtype="float64")
    with h5py.File(tmp_path / "d.h5") as f:
        row = f["scalars/FA/values"][4]  # sub-05: int16 with scl_slope/inter
    grid = nib.load(MASK).get_fdata() > 0
    want = nib.load("inputs/sub-05_FA.nii.gz").get_fdata()
    mask = nib.load("inputs/sub-05_mask.nii.gz").get_fdata() > 0
    want[~mask] = np.nan
    np.testing.assert_array_equal(row, want[grid])


def test_quick_header_reads_equal_nibabels():
    from xarray_clusterh5.nifti.read import _quick_info, volume_info

    for path in sorted((NIFTI / "inputs").iterdir()):
        img = nib.load(path)
        for info in (_quick_info(str(path)), volume_info(path)):
            assert info is not None
            assert info.shape == img.shape
            np.testing.assert_array_equal(info.affine, img.affine)
            assert info.dtype == img.get_data_dtype()
