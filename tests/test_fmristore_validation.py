"""TR and voxel sizes are refused where they enter when not positive and finite,
and ``to_fmristore`` refuses a view that lists a voxel twice."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import xarray as xr

from tests._helpers import fmristore_path
from xarray_clusterh5.cli import main
from xarray_clusterh5.fmristore.from_nifti import from_nifti
from xarray_clusterh5.fmristore.to_h5 import to_fmristore
from xarray_clusterh5.fmristore.write import write_experiment

BAD_NUMBERS = [0.0, -2.0, float("nan"), float("inf")]
SHAPE = (4, 3, 2)


@pytest.fixture
def nifti_run(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    img = nib.Nifti1Image(rng.normal(size=(*SHAPE, 5)).astype(np.float32), np.eye(4))
    img.header["pixdim"][4] = 2.0
    nib.save(img, tmp_path / "run.nii.gz")
    atlas = np.ones(SHAPE, dtype=np.int16)
    atlas[2:] = 2
    nib.save(nib.Nifti1Image(atlas, np.eye(4)), tmp_path / "atlas.nii.gz")
    return {
        "run": tmp_path / "run.nii.gz",
        "atlas": tmp_path / "atlas.nii.gz",
        "out": tmp_path / "out.h5",
    }


def _experiment(**change: object) -> dict:
    mask = np.ones(SHAPE, dtype=bool)
    kw: dict = {
        "mask": mask,
        "cluster_map": np.arange(mask.sum()) % 2 + 1,
        "runs": {"rest": np.ones((int(mask.sum()), 3), dtype=np.float32)},
    }
    kw.update(change)
    return kw


@pytest.mark.parametrize("tr", BAD_NUMBERS)
def test_from_nifti_refuses_bad_tr(nifti_run: dict[str, Path], tr: float) -> None:
    with pytest.raises(ValueError, match=r"tr of scan 'rest' must be a positive"):
        from_nifti({"rest": nifti_run["run"]}, atlas=nifti_run["atlas"], tr=tr)
    with pytest.raises(ValueError, match=r"tr of scan 'rest' must be a positive"):
        from_nifti(
            {"rest": nifti_run["run"]}, atlas=nifti_run["atlas"], tr={"rest": tr}
        )
    with pytest.raises(ValueError, match=r"metadata\['TR'\] of scan 'rest'"):
        from_nifti(
            {"rest": nifti_run["run"]},
            atlas=nifti_run["atlas"],
            metadata={"rest": {"TR": tr}},
        )


def test_from_nifti_good_tr_and_header_tr(nifti_run: dict[str, Path]) -> None:
    ds = from_nifti({"rest": nifti_run["run"]}, atlas=nifti_run["atlas"], tr=0.5)
    assert ds["TR"].values.tolist() == [0.5]
    ds = from_nifti({"rest": nifti_run["run"]}, atlas=nifti_run["atlas"])
    assert ds["TR"].values.tolist() == [2.0]  # from pixdim[4]


def test_from_nifti_refuses_a_zero_voxel_size(tmp_path: Path) -> None:
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_sform(np.diag([2.0, 0.0, 2.0, 1.0]), code=1)  # a flat y axis
    img = nib.Nifti1Image(np.zeros((*SHAPE, 3), np.float32), None, header=header)
    nib.save(img, tmp_path / "flat.nii")
    with pytest.raises(ValueError, match=r"flat.nii.*positive finite voxel sizes"):
        from_nifti({"a": tmp_path / "flat.nii"}, atlas=np.ones(SHAPE, dtype=int))


@pytest.mark.parametrize("bad", BAD_NUMBERS)
def test_write_experiment_refuses_bad_spacing_and_tr(tmp_path: Path, bad) -> None:
    out = tmp_path / "x.h5"
    with pytest.raises(ValueError, match="spacing must be 3 positive finite"):
        write_experiment(out, **_experiment(spacing=(2.0, bad, 2.0)))
    with pytest.raises(ValueError, match=r"TR \(metadata\) of scan 'rest'"):
        write_experiment(out, **_experiment(scan_metadata={"rest": {"TR": bad}}))
    assert not out.exists()
    write_experiment(out, **_experiment(scan_metadata={"rest": {"TR": 0.72}}))
    with xr.open_dataset(out, engine="clusterh5") as ds:
        assert ds["TR"].values.tolist() == [0.72]


@pytest.mark.parametrize("bad", [0.0, -1.5, float("nan")])
def test_to_fmristore_refuses_bad_spacing_and_tr(tmp_path: Path, bad) -> None:
    with xr.open_dataset(fmristore_path("vignette"), engine="clusterh5") as ds:
        ds = ds.load()
    with pytest.raises(ValueError, match="'spacing' attribute of the Dataset"):
        to_fmristore(ds.assign_attrs(spacing=[2.0, 2.0, bad]), tmp_path / "a.h5")
    bad_tr = ds.assign_coords(TR=("run", [bad, 2.0], ds["TR"].attrs))
    with pytest.raises(ValueError, match=r"TR .* must be a positive number"):
        to_fmristore(bad_tr, tmp_path / "b.h5")
    assert not (tmp_path / "a.h5").exists()
    assert not (tmp_path / "b.h5").exists()


@pytest.mark.parametrize("tr", ["-2", "0", "nan", "inf", "soon"])
def test_cli_refuses_bad_tr(nifti_run: dict[str, Path], tr: str, capsys) -> None:
    argv = [
        "from-nifti",
        "--atlas",
        str(nifti_run["atlas"]),
        "--run",
        f"rest={nifti_run['run']}",
        "--tr",
        tr,
        "-o",
        str(nifti_run["out"]),
    ]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert "argument --tr:" in capsys.readouterr().err
    assert not nifti_run["out"].exists()


def test_cli_existing_output_speaks_cli(nifti_run: dict[str, Path], capsys) -> None:
    nifti_run["out"].write_bytes(b"keep me")
    argv = [
        "from-nifti",
        "--atlas",
        str(nifti_run["atlas"]),
        "--run",
        f"rest={nifti_run['run']}",
        "--no-progress",
        "-o",
        str(nifti_run["out"]),
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "--overwrite to replace it" in err
    assert "overwrite=True" not in err
    assert nifti_run["out"].read_bytes() == b"keep me"
    assert main([*argv, "--overwrite"]) == 0


def test_to_fmristore_refuses_the_same_voxel_twice(tmp_path: Path) -> None:
    with xr.open_dataset(fmristore_path("irregular"), engine="clusterh5") as ds:
        ds = ds.load()
    # the first voxel of cluster 5 put where the first voxel of cluster 2 is
    ijk = {c: ds[c].values.copy() for c in "ijk"}
    for c in "ijk":
        ijk[c][1, 0] = ijk[c][0, 0]
    twice = ds.assign_coords({c: (ds[c].dims, ijk[c], ds[c].attrs) for c in "ijk"})
    with pytest.raises(ValueError, match="the same voxel appears twice"):
        to_fmristore(twice, tmp_path / "padded.h5")
    # the padded view's positions in mask order are checked too
    mi = ds["mask_index"].values.copy()
    mi[0, [0, 1]] = mi[0, [1, 0]]
    swapped = ds.assign_coords(mask_index=(ds["mask_index"].dims, mi))
    with pytest.raises(ValueError, match="mask_index disagrees with i/j/k"):
        to_fmristore(swapped, tmp_path / "padded.h5")
    with xr.open_dataset(
        fmristore_path("irregular"), engine="clusterh5", group="zeta_full"
    ) as run:
        run = run.load()
    i = run["i"].values.copy()
    j = run["j"].values.copy()
    k = run["k"].values.copy()
    i[-1], j[-1], k[-1] = i[0], j[0], k[0]  # the last voxel repeats the first
    run_twice = run.assign_coords(i=("voxel", i), j=("voxel", j), k=("voxel", k))
    with pytest.raises(ValueError, match="the same voxel appears twice"):
        to_fmristore(run_twice, tmp_path / "run.h5")
    # distinct voxels given one position in mask order
    mi = run["mask_index"].values.copy()
    mi[1] = mi[0]
    with pytest.raises(ValueError, match="mask_index disagrees with i/j/k"):
        to_fmristore(run.assign_coords(mask_index=("voxel", mi)), tmp_path / "m.h5")
    assert not list(tmp_path.iterdir())
