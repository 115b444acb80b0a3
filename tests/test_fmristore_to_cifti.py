"""Clustered experiments written as CIFTI read back through nibabel unchanged."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import xarray as xr

import xarray_clusterh5  # noqa: F401
from tests._helpers import fmristore_path


def test_full_and_summary_runs_to_cifti(tmp_path: Path) -> None:
    path = fmristore_path("irregular_head")
    with xr.open_dataset(path, engine="clusterh5") as ds:
        with pytest.warns(UserWarning, match="'Mid_full' has no TR"):
            files = ds.clusterh5.to_cifti(tmp_path)
        assert [f.name for f in files] == [
            "Mid_full.dtseries.nii",
            "alpha_full.dtseries.nii",
            "beta_summary.ptseries.nii",
            "zeta_full.dtseries.nii",
        ]
        with pytest.raises(FileExistsError):
            ds.clusterh5.to_cifti(tmp_path, runs=["zeta_full"])
        run = ds.clusterh5.unpad("zeta_full").load()
        summary = ds.clusterh5.summary_matrix("beta_summary").load()
        labels = ds.clusterh5.cluster_metadata()["label"].tolist()

    img = nib.load(tmp_path / "zeta_full.dtseries.nii")
    series, brain = (img.header.get_axis(i) for i in range(2))
    assert series.step == pytest.approx(0.8)
    assert series.size == 37
    np.testing.assert_array_equal(
        brain.voxel, np.stack([run.i.values, run.j.values, run.k.values], axis=1)
    )
    np.testing.assert_array_equal(brain.volume_shape, (13, 11, 9))
    np.testing.assert_array_equal(np.asarray(img.dataobj), run.data.values.T)

    img = nib.load(tmp_path / "beta_summary.ptseries.nii")
    parcels = img.header.get_axis(1)
    assert list(parcels.name) == labels
    assert img.header.get_axis(0).step == pytest.approx(1.5)
    np.testing.assert_array_equal(np.asarray(img.dataobj), summary.values)
    # each parcel holds exactly its cluster's voxels
    n_voxels = [len(v) for v in parcels.voxels]
    assert n_voxels == [273, 203, 7, 1]


def test_tree_to_cifti_matches(tmp_path: Path) -> None:
    path = fmristore_path("vignette")
    with xr.open_datatree(path, engine="clusterh5") as dt:
        files = dt.clusterh5.to_cifti(tmp_path)
        data = dt["rest_run"]["data"].values
    assert sorted(f.name for f in files) == [
        "motor_run.ptseries.nii",
        "rest_run.dtseries.nii",
    ]
    np.testing.assert_array_equal(
        np.asarray(nib.load(tmp_path / "rest_run.dtseries.nii").dataobj), data.T
    )
    names = nib.load(tmp_path / "motor_run.ptseries.nii").header.get_axis(1).name
    assert list(names) == ["Visual", "Motor", "Default"]
