"""``clusterh5 from-nifti``, run in-process through the real entry point."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import xarray as xr

from xarray_clusterh5.cli import main

AFFINE = np.diag([3.0, 3.0, 3.0, 1.0])
AFFINE[:3, 3] = [-9, -6, 0]


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    atlas = np.zeros((5, 4, 3), dtype=np.int32)
    atlas[:2] = 1
    atlas[2:, :2] = 2
    atlas[2:, 2:, 1:] = 4
    nib.save(nib.Nifti1Image(atlas, AFFINE), tmp_path / "atlas.nii.gz")
    rng = np.random.default_rng(3)
    for name, t in (("rest", 7), ("motor", 4)):
        img = nib.Nifti1Image(rng.normal(size=(5, 4, 3, t)).astype(np.float32), AFFINE)
        img.header["pixdim"][4] = 2.0
        img.header.set_xyzt_units("mm", "sec")
        nib.save(img, tmp_path / f"sub-01_task-{name}_bold.nii.gz")
    return {
        "atlas": tmp_path / "atlas.nii.gz",
        "rest": tmp_path / "sub-01_task-rest_bold.nii.gz",
        "motor": tmp_path / "sub-01_task-motor_bold.nii.gz",
        "out": tmp_path / "sub-01.h5",
    }


def test_from_nifti_command(inputs: dict[str, Path], capsys) -> None:
    argv = [
        "from-nifti",
        "--atlas",
        str(inputs["atlas"]),
        "--run",
        f"rest={inputs['rest']}",
        "--run",
        f"motor={inputs['motor']}",
        "--summaries",
        "--output",
        str(inputs["out"]),
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "wrote" in captured.out
    assert "2 runs, 3 clusters" in captured.out
    assert "writing sub-01.h5" in captured.err  # the tqdm bar
    with xr.open_dataset(inputs["out"], engine="clusterh5") as ds:
        assert ds["run"].values.tolist() == ["motor", "rest"]
        assert ds["TR"].values.tolist() == [2.0, 2.0]
        assert bool(ds["has_summary"].all())
        np.testing.assert_allclose(ds.attrs["affine"].reshape(4, 4), AFFINE)
        rest = np.asarray(nib.load(inputs["rest"]).dataobj)
        sel = ds.sel(run="rest")
        ok = sel["i"].values >= 0
        ijk = tuple(sel[a].values[ok] for a in "ijk")
        np.testing.assert_array_equal(sel["data"].values[ok][:, :7], rest[ijk])
    # existing output is kept without --overwrite
    assert main(argv) == 1
    assert "exists" in capsys.readouterr().err
    assert main([*argv, "--overwrite", "--tr", "0.5", "--no-progress"]) == 0
    with xr.open_dataset(inputs["out"], engine="clusterh5") as ds:
        assert ds["TR"].values.tolist() == [0.5, 0.5]


def test_from_nifti_command_errors(inputs: dict[str, Path], capsys) -> None:
    base = ["from-nifti", "--atlas", str(inputs["atlas"]), "-o", str(inputs["out"])]
    assert (
        main([*base, "--run", f"a={inputs['rest']}", "--run", f"a={inputs['motor']}"])
        == 1
    )
    assert "repeated" in capsys.readouterr().err
    assert main([*base, "--run", f"x={inputs['out'].parent / 'missing.nii.gz'}"]) == 1
    assert "missing.nii.gz" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--run", "no-equals-sign"])
    assert not inputs["out"].exists()
