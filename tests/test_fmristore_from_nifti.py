"""from_nifti: mask order, lazy reading, write/reopen, and errors that name files."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import xarray as xr

from xarray_clusterh5.fmristore import from_nifti as nifti_module
from xarray_clusterh5.fmristore.from_nifti import from_nifti, nifti_tr
from xarray_clusterh5.fmristore.to_h5 import to_fmristore

SHAPE = (7, 6, 5)
AFFINE = np.array([[-2.0, 0, 0, 30], [0, 2.0, 0, -40], [0, 0, 2.5, -10], [0, 0, 0, 1]])


def _atlas() -> np.ndarray:
    atlas = np.zeros(SHAPE, dtype=np.int16)
    atlas[1:4, 1:5, 1:4] = 3
    atlas[4:6, 1:5, 1:4] = 10
    atlas[2:5, 2:4, 4] = 7
    atlas[0, 0, 0] = 7  # the same cluster far away: not contiguous in mask order
    return atlas


def _write_run(path: Path, n_time: int, seed: int, tr_ms: float = 800.0) -> np.ndarray:
    data = np.random.default_rng(seed).normal(size=(*SHAPE, n_time)).astype(np.float32)
    img = nib.Nifti1Image(data, AFFINE)
    img.header.set_xyzt_units("mm", "msec")
    img.header["pixdim"][4] = tr_ms
    nib.save(img, path)
    return data


@pytest.fixture
def nifti_files(tmp_path: Path) -> dict:
    atlas_path = tmp_path / "atlas.nii.gz"
    nib.save(nib.Nifti1Image(_atlas(), AFFINE), atlas_path)
    rest = _write_run(tmp_path / "rest.nii.gz", 9, 0)
    task = _write_run(tmp_path / "task.nii", 6, 1)
    return {
        "atlas": atlas_path,
        "rest": (tmp_path / "rest.nii.gz", rest),
        "task": (tmp_path / "task.nii", task),
    }


def test_build_is_lazy_in_mask_order(nifti_files: dict) -> None:
    ds = from_nifti(
        {"task": nifti_files["task"][0], "rest": nifti_files["rest"][0]},
        atlas=nifti_files["atlas"],
        summaries=True,
    )
    assert ds["data"].chunks is not None  # dask, nothing read yet
    assert list(ds["run"].values) == ["rest", "task"]  # fmristore's name order
    assert ds["cluster"].values.tolist() == [3, 7, 10]
    atlas = _atlas()
    np.testing.assert_array_equal(ds["n_voxels"].values, [36, 7, 24])
    np.testing.assert_allclose(ds["TR"].values, [0.8, 0.8])  # ms -> s
    np.testing.assert_array_equal(ds["n_time"].values, [9, 6])
    assert ds.attrs["affine"].reshape(4, 4).tolist() == AFFINE.tolist()
    # voxel slots follow fmristore's mask order (x fastest) within each cluster
    mask_index = ds["mask_index"].values
    lin = np.flatnonzero((atlas > 0).ravel(order="F"))
    for c, cid in enumerate([3, 7, 10]):
        n = int(ds["n_voxels"][c])
        assert np.all(np.diff(mask_index[c, :n]) > 0)
        ijk = np.stack([ds[a].values[c, :n] for a in "ijk"])
        assert np.all(atlas[tuple(ijk)] == cid)
        np.testing.assert_array_equal(
            lin[mask_index[c, :n]], np.ravel_multi_index(ijk, SHAPE, order="F")
        )
    # values equal the NIfTI at those voxels, NaN in padding
    rest = nifti_files["rest"][1]
    data = ds["data"].sel(run="rest").values
    for c in range(3):
        n = int(ds["n_voxels"][c])
        ijk = tuple(ds[a].values[c, :n] for a in "ijk")
        np.testing.assert_array_equal(data[c, :n, :9], rest[ijk])
        assert np.isnan(data[c, n:]).all()
    task_summary = ds["summary"].sel(run="task").values
    assert np.isnan(task_summary[:, 6:]).all()
    ijk = tuple(ds[a].values[0, :36] for a in "ijk")
    np.testing.assert_allclose(
        task_summary[0, :6], nifti_files["task"][1][ijk].mean(axis=0), rtol=1e-6
    )


def test_write_reopen_reconstructs_volume(
    nifti_files: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # one volume per read window: the windowed reader must stitch them exactly
    monkeypatch.setattr(nifti_module, "_WINDOW_BYTES", 1)
    ds = from_nifti(
        {"rest": nifti_files["rest"][0], "task": nifti_files["task"][0]},
        atlas=nifti_files["atlas"],
        metadata={
            "rest": {"task": "rest", "fd_max": 0.31, "flag": True, "n_echo": 3},
            # NumPy types R has no equivalent for: typed as writing types them
            "task": {
                "run_id": np.uint32(7),
                "gain": np.float16(1.5),
                "site": b"lab1",
                "labels": np.array(["x", "y"], dtype=object),
                "counts": np.array([1, 2], dtype=object),
            },
        },
        cluster_metadata={
            "cluster_id": [10, 3, 7],
            "name": ["c10", "c3", "c7"],
            "rank": np.array([1, 3, 2], dtype=np.uint32),
            "size": np.array([24, 36, 7], dtype=np.int64),
        },
    )
    stored = {k: ds[k].attrs["fmristore_dtype"] for k in ("n_echo", "run_id", "gain")}
    assert stored == {"n_echo": "<i4", "run_id": "<i4", "gain": "<f8"}
    assert ds["rank"].dtype == ds["size"].dtype == np.int32
    assert ds["site"].values.tolist() == ["", "lab1"]
    assert ds["counts"].attrs["fmristore_dtype"] == "<i4"
    out = to_fmristore(ds, tmp_path / "sub.h5")
    with xr.open_dataset(out, engine="clusterh5") as back:
        back = back.load()
        expected = ds.load()
        for name in ("affine_source", "source_files"):
            expected.attrs.pop(name)
        assert back.attrs.pop("affine_source").startswith("header srow")
        xr.testing.assert_identical(back, expected)
        rest = back.sel(run="rest")
        vol = np.full((*SHAPE, 9), np.nan, dtype=np.float32)
        ok = rest["i"].values >= 0
        ijk = tuple(rest[a].values[ok] for a in "ijk")
        vol[ijk] = rest["data"].values[ok][:, :9]
    atlas = _atlas() > 0
    np.testing.assert_array_equal(vol[atlas], nifti_files["rest"][1][atlas])
    assert np.isnan(vol[~atlas]).all()
    with h5py.File(out) as f:
        assert f["scans/rest/metadata/flag"].dtype == np.int8
        np.testing.assert_array_equal(
            np.vstack([f["header/srow_x"][()], f["header/srow_y"][()]]), AFFINE[:2]
        )


def test_in_memory_images_mask_tr_and_summary_only(nifti_files: dict) -> None:
    img = nib.load(nifti_files["rest"][0])
    mask = np.zeros(SHAPE, dtype=bool)
    mask[:, :, :3] = True  # drops cluster 7 except the corner voxel
    ds = from_nifti([("r1", img)], atlas=_atlas(), mask=mask, tr=2.0, summaries="only")
    assert "data" not in ds
    assert ds["has_data"].values.tolist() == [False]
    assert ds["n_voxels"].values.tolist() == [24, 1, 16]
    assert float(ds["TR"].values[0]) == 2.0
    assert ds.attrs["affine_source"].startswith("NIfTI")


def test_nifti_tr_units() -> None:
    img = nib.Nifti1Image(np.zeros((2, 2, 2, 3), np.float32), np.eye(4))
    img.header["pixdim"][4] = 2.0
    img.header.set_xyzt_units("mm", "sec")
    assert nifti_tr(img) == 2.0
    img.header.set_xyzt_units("mm", "msec")
    img.header["pixdim"][4] = 1500
    assert nifti_tr(img) == 1.5
    img.header["pixdim"][4] = 0
    assert nifti_tr(img) is None


def test_errors_name_the_problem(nifti_files: dict, tmp_path: Path) -> None:
    rest = nifti_files["rest"][0]
    other = tmp_path / "shifted.nii.gz"
    shifted = AFFINE.copy()
    shifted[0, 3] += 4
    nib.save(nib.Nifti1Image(np.zeros((*SHAPE, 3), np.float32), shifted), other)
    with pytest.raises(ValueError, match=r"shifted\.nii\.gz.*different affine"):
        from_nifti({"a": rest, "b": other}, atlas=nifti_files["atlas"])
    small = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3, 2), np.float32), AFFINE), small)
    with pytest.raises(ValueError, match=r"small\.nii\.gz.*spatial shape"):
        from_nifti({"a": small}, atlas=nifti_files["atlas"])
    vol3d = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.float32), AFFINE), vol3d)
    with pytest.raises(ValueError, match="must be 4-D"):
        from_nifti({"a": vol3d}, atlas=nifti_files["atlas"])
    with pytest.raises(ValueError, match="NaN"):
        from_nifti({"a": rest}, atlas=np.where(_atlas() > 0, np.nan, 0))
    with pytest.raises(ValueError, match="non-integer"):
        from_nifti({"a": rest}, atlas=_atlas() * 0.5)
    with pytest.raises(ValueError, match=r"negative labels \[-10, -7, -3\];"):
        from_nifti({"a": rest}, atlas=-_atlas())
    many = -np.arange(SHAPE[0] * SHAPE[1] * SHAPE[2]).reshape(SHAPE)
    first = ", ".join(str(-v) for v in range(209, 199, -1))
    with pytest.raises(ValueError, match=rf"negative labels \[{first}\];"):
        from_nifti({"a": rest}, atlas=many)  # the first 10 are listed
    with pytest.raises(ValueError, match=r"duplicate scan names \['a'\]$"):
        from_nifti([("a", rest), ("b", rest), ("a", rest)], atlas=_atlas())
    with pytest.raises(ValueError, match="not a valid HDF5 name"):
        from_nifti({"a/b": rest}, atlas=_atlas())
    with pytest.raises(FileNotFoundError, match=r"nope\.nii"):
        from_nifti({"a": tmp_path / "nope.nii"}, atlas=_atlas())
    with pytest.raises(ValueError, match="missing from cluster_metadata"):
        from_nifti({"a": rest}, atlas=_atlas(), cluster_metadata={"cluster_id": [3]})
    with pytest.raises(ValueError, match="missing from the atlas"):
        from_nifti(
            {"a": rest},
            atlas=_atlas(),
            cluster_metadata={"cluster_id": [3, 7, 10, 99]},
        )
    with pytest.raises(ValueError, match="no voxel"):
        from_nifti({"a": rest}, atlas=np.zeros(SHAPE, int))
    with pytest.raises(ValueError, match="not in runs"):
        from_nifti({"a": rest}, atlas=_atlas(), metadata={"b": {"x": 1}})
    with pytest.raises(ValueError, match="atlas labels must fit in 32-bit integers"):
        from_nifti({"a": rest}, atlas=np.where(_atlas() > 0, 2**31, 0))
    top = from_nifti({"a": rest}, atlas=np.where(_atlas() > 0, 2**31 - 1, 0))
    assert top["cluster"].values.tolist() == [2**31 - 1]
    with pytest.raises(ValueError, match="'x' of scan 'a' does not fit R's 32-bit"):
        from_nifti({"a": rest}, atlas=_atlas(), metadata={"a": {"x": 2**31}})


def test_atlas_with_a_trailing_axis_of_one(nifti_files: dict, tmp_path: Path) -> None:
    # atlases saved as (X, Y, Z, 1) volumes, as some tools write them
    path = tmp_path / "atlas4d.nii.gz"
    nib.save(nib.Nifti1Image(_atlas()[..., None], AFFINE), path)
    ds = from_nifti({"a": nifti_files["task"][0]}, atlas=path)
    assert ds["cluster"].values.tolist() == [3, 7, 10]
    np.testing.assert_array_equal(ds["n_voxels"].values, [36, 7, 24])


def test_affine_source_names_the_header_form(nifti_files: dict, tmp_path: Path) -> None:
    img = nib.Nifti1Image(_atlas(), None)
    img.set_qform(AFFINE, code=1)
    img.set_sform(None, code=0)  # only the qform holds the orientation
    nib.save(img, tmp_path / "qform.nii")
    ds = from_nifti({"a": nifti_files["task"][0]}, atlas=tmp_path / "qform.nii")
    assert ds.attrs["affine_source"] == f"NIfTI qform of {tmp_path / 'qform.nii'}"
    ds = from_nifti({"a": nifti_files["task"][0]}, atlas=nifti_files["atlas"])
    assert ds.attrs["affine_source"] == f"NIfTI sform of {nifti_files['atlas']}"
    img.set_qform(None, code=0)  # neither: nibabel scales by pixdim
    nib.save(img, tmp_path / "pixdim.nii")
    run = nib.Nifti1Image(np.ones((*_atlas().shape, 4), np.float32), None)
    run.header.set_zooms((*img.header.get_zooms(), 2.0))
    run.set_qform(None, code=0)
    nib.save(run, tmp_path / "run.nii")  # the same pixdim affine
    ds = from_nifti({"a": tmp_path / "run.nii"}, atlas=tmp_path / "pixdim.nii")
    assert ds.attrs["affine_source"] == (
        f"NIfTI pixdim (sform_code and qform_code 0) of {tmp_path / 'pixdim.nii'}"
    )
    mgh = tmp_path / "atlas.mgz"  # not NIfTI: no sform or qform to name
    nib.save(nib.MGHImage(_atlas().astype(np.int32), AFFINE), mgh)
    ds = from_nifti({"a": nifti_files["task"][0]}, atlas=mgh)
    assert ds.attrs["affine_source"] == f"MGHImage affine of {mgh}"


def test_one_string_vectors_are_stored_as_the_writer_stores_them(
    nifti_files: dict, tmp_path: Path
) -> None:
    """A length-1 text vector is the string itself, as R's hdf5r writes it."""
    text = {"one": ["x"], "u": np.array(["q"]), "two": ["a", "b"], "s": "word"}
    text |= {"bytes": [b"c", b"d"], "byte": b"z"}  # bytes are ASCII text too
    ds = from_nifti(
        {"rest": nifti_files["rest"][0]},
        atlas=nifti_files["atlas"],
        metadata={"rest": text},
    )
    meta = ds.clusterh5.scan_metadata()["rest"]
    assert (meta["one"], meta["u"], meta["s"]) == ("x", "q", "word")
    assert meta["two"].tolist() == ["a", "b"]
    assert (meta["bytes"].tolist(), meta["byte"]) == (["c", "d"], "z")
    out = to_fmristore(ds, tmp_path / "t.h5")
    with h5py.File(out) as f:
        stored = {k: f[f"scans/rest/metadata/{k}"] for k in text}
        assert {k: d.shape for k, d in stored.items()} == {
            "one": (),
            "u": (),
            "two": (2,),
            "s": (),
            "bytes": (2,),
            "byte": (),
        }
        assert stored["one"][()] == b"x"
        assert stored["two"][()].tolist() == [b"a", b"b"]
    with xr.open_dataset(out, engine="clusterh5") as back:
        assert back.clusterh5.scan_metadata()["rest"]["one"] == "x"


def test_mask_and_runs_checked_against_the_reference(
    nifti_files: dict, tmp_path: Path
) -> None:
    """Without an atlas image the first run defines the grid; errors name it."""
    rest, task = nifti_files["rest"][0], nifti_files["task"][0]
    other = tmp_path / "moved.nii.gz"
    moved = AFFINE.copy()
    moved[1, 3] += 2
    nib.save(nib.Nifti1Image(np.zeros((*SHAPE, 3), np.float32), moved), other)
    with pytest.raises(
        ValueError, match=f"'b' has a different affine from {re.escape(str(rest))}"
    ):
        from_nifti({"a": rest, "b": other}, atlas=_atlas())
    with pytest.raises(
        ValueError, match=f"'b' has a different affine from {re.escape(str(other))}"
    ):
        from_nifti({"a": other, "b": task}, atlas=_atlas())
    in_memory = nib.Nifti1Image(np.zeros((*SHAPE, 2), np.float32), AFFINE)
    with pytest.raises(ValueError, match="from <in-memory Nifti1Image>"):
        from_nifti([("a", in_memory), ("b", other)], atlas=_atlas())
    # the mask: same grid and affine as the reference
    with pytest.raises(ValueError, match=r"mask \(mask array\) has shape \(7, 6, 4\)"):
        from_nifti({"a": rest}, atlas=_atlas(), mask=np.ones((7, 6, 4), bool))
    mask_path = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(SHAPE, np.uint8), moved), mask_path)
    with pytest.raises(
        ValueError, match=rf"mask \({re.escape(str(mask_path))}\) has a different"
    ):
        from_nifti({"a": rest}, atlas=nifti_files["atlas"], mask=mask_path)
    nib.save(nib.Nifti1Image(np.ones(SHAPE, np.uint8), AFFINE), mask_path)
    ds = from_nifti({"a": rest}, atlas=nifti_files["atlas"], mask=mask_path)
    np.testing.assert_array_equal(ds["n_voxels"].values, [36, 7, 24])


def test_spacing_is_the_length_of_each_voxel_axis(nifti_files: dict) -> None:
    """Voxel sizes are column norms of the affine, also for rotated grids."""
    from nibabel.eulerangles import euler2mat

    rot = euler2mat(z=0.4, y=-0.3, x=0.2)
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([1.5, 2.0, 3.0])
    img = nib.Nifti1Image(np.ones((*SHAPE, 2), np.float32), affine)
    ds = from_nifti([("a", img)], atlas=_atlas())
    np.testing.assert_allclose(ds.attrs["spacing"], [1.5, 2.0, 3.0], rtol=1e-12)
    np.testing.assert_allclose(ds.attrs["affine"].reshape(4, 4), affine)


def test_bad_inputs_and_cluster_tables_are_refused_by_name(nifti_files: dict) -> None:
    rest = nifti_files["rest"][0]
    with pytest.raises(ValueError, match="runs is empty: give at least one NIfTI run"):
        from_nifti({}, atlas=_atlas())
    with pytest.raises(TypeError, match="run 'a' must be a path or a nibabel image"):
        from_nifti({"a": np.zeros((*SHAPE, 2))}, atlas=_atlas())
    with pytest.raises(ValueError, match=r"atlas atlas array must be a 3-D volume"):
        from_nifti({"a": rest}, atlas=_atlas()[..., None].repeat(2, axis=3))
    with pytest.raises(ValueError, match="must hold integer labels, not <U1"):
        from_nifti({"a": rest}, atlas=np.full(SHAPE, "x"))
    boolean = from_nifti({"a": rest}, atlas=_atlas() > 0)  # one cluster, id 1
    assert boolean["cluster"].values.tolist() == [1]
    assert boolean["n_voxels"].values.tolist() == [67]
    tables = [
        ({"name": ["a", "b", "c"]}, "needs a 'cluster_id' column"),
        ({"cluster_id": [3.0, 7.5, 10.0]}, r"\['cluster_id'\] holds non-integer"),
        ({"cluster_id": [3, 7, 7, 10]}, "duplicate cluster ids"),
    ]
    for table, message in tables:
        with pytest.raises(ValueError, match=message):
            from_nifti({"a": rest}, atlas=_atlas(), cluster_metadata=table)
    # a row for a cluster the mask leaves out is dropped, not refused
    mask = _atlas() != 7
    ds = from_nifti(
        {"a": rest},
        atlas=_atlas(),
        mask=mask,
        cluster_metadata={"cluster_id": [10.0, 7.0, 3.0], "name": ["t", "s", "r"]},
    )
    assert ds["cluster"].values.tolist() == [3, 10]
    assert ds["name"].values.tolist() == ["r", "t"]
