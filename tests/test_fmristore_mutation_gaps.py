"""Paths that mutation testing (benchmarks/mutation_test.py) found untested.

Each test pins behaviour that a one-expression change survived before: a
header with part of the quaternion missing, float cluster ids holding whole
numbers, and a cluster selection given as a 1-D DataArray along ``cluster``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import xarray as xr

from tests._helpers import fmristore_path
from xarray_clusterh5.fmristore.from_nifti import from_nifti


def test_header_with_part_of_the_quaternion_missing(tmp_path: Path) -> None:
    # R always writes every field; a file missing one is read as spacing on the
    # diagonal (qfac's sign on z) and the offsets that are there
    path = tmp_path / "no_quatern_b.h5"
    shutil.copy(fmristore_path("vignette"), path)
    with h5py.File(path, "r+") as f:
        del f["header/quatern_b"]
        f["header/qoffset_x"][()] = 5.0
    with xr.open_dataset(path, engine="clusterh5") as ds:
        affine = ds.attrs["affine"].reshape(4, 4)
        expected = np.diag([2.0, 2.0, 2.0, 1.0])
        expected[0, 3] = 5.0
        np.testing.assert_array_equal(affine, expected)
        assert ds.attrs["affine_source"].startswith("header without quaternions")


def test_float_cluster_ids_holding_whole_numbers_are_accepted(tmp_path: Path) -> None:
    atlas = np.zeros((4, 3, 2), dtype=np.int16)
    atlas[:2] = 4
    atlas[2:] = 9
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(atlas, affine), tmp_path / "atlas.nii")
    run = np.arange(4 * 3 * 2 * 3, dtype=np.float32).reshape(4, 3, 2, 3)
    nib.save(nib.Nifti1Image(run, affine), tmp_path / "run.nii")
    ds = from_nifti(
        {"a": tmp_path / "run.nii"},
        atlas=tmp_path / "atlas.nii",
        cluster_metadata={"cluster_id": np.array([9.0, 4.0]), "name": ["b", "a"]},
        tr=1.0,
    )
    assert ds["cluster"].values.tolist() == [4, 9]
    assert ds["name"].values.tolist() == ["a", "b"]


def test_select_clusters_with_a_dataarray_along_cluster() -> None:
    path = fmristore_path("vignette")
    with xr.open_dataset(path, engine="clusterh5", group="rest_run") as run:
        ids = xr.DataArray([3, 1], dims="cluster")
        by_array = run.sel(cluster=ids)
        by_list = run.sel(cluster=[3, 1])
        assert by_array["cluster"].values.tolist() == [3, 1]
        xr.testing.assert_identical(by_array.load(), by_list.load())
