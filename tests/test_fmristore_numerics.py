"""Reductions accumulate in float64: checked on clusters where float32 sums fail.

One cluster of 100 000 voxels around 100: a float32 running sum reaches 1e7,
where float32 steps are 1.0, so its mean is off by about 1e-5 relative; each
test first shows that the float32 path misses the 1e-6 tolerance it then meets.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import xarray as xr

from tests._helpers import fmristore_path
from xarray_clusterh5 import from_nifti
from xarray_clusterh5.fmristore.write import write_experiment

SHAPE = (100, 100, 10)  # one cluster of 100 000 voxels
N_TIME = 6
RTOL = 1e-6


def _values(seed: int = 0) -> np.ndarray:
    """(N, T) float32 values around 100, in mask order (x fastest)."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(SHAPE))
    return rng.normal(100.0, 10.0, size=(n, N_TIME)).astype(np.float32)


def _relative_error(got: np.ndarray, reference: np.ndarray) -> float:
    return float(np.max(np.abs(got - reference) / np.abs(reference)))


@pytest.fixture(scope="module")
def big_cluster(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    values = _values()
    path = tmp_path_factory.mktemp("numerics") / "big.h5"
    # a second, small cluster so that the views have more than one cluster
    cmap = np.ones(values.shape[0], dtype=np.int32)
    cmap[:5] = 2
    write_experiment(
        path,
        mask=np.ones(SHAPE, dtype=bool),
        cluster_map=cmap,
        runs={"rest": values},
        compression=None,
    )
    return path, values[cmap == 1]


def test_float32_sums_would_fail_the_tolerance(big_cluster) -> None:
    _path, values = big_cluster
    reference = values.astype(np.float64).mean(axis=0)
    # what cluster_means computed before: a float32 sum over the voxel axis
    float32_mean = values.sum(axis=0, dtype=np.float32) / np.float32(len(values))
    assert _relative_error(float32_mean, reference) > RTOL


@pytest.mark.parametrize("chunks", [None, {}])
def test_cluster_means_padded_view_in_float64(big_cluster, chunks) -> None:
    path, values = big_cluster
    reference = values.astype(np.float64).mean(axis=0)
    with xr.open_dataset(path, engine="clusterh5", chunks=chunks) as ds:
        means = ds.clusterh5.cluster_means()
        assert means.dtype == np.float64
        got = means.sel(run="rest", cluster=1).values
        float32_sum = ds["data"].sel(run="rest", cluster=1).sum("voxel").values
    assert _relative_error(got, reference) < RTOL
    assert _relative_error(float32_sum / len(values), reference) > RTOL


def test_cluster_means_run_view_in_float64(big_cluster) -> None:
    path, values = big_cluster
    reference = values.astype(np.float64).mean(axis=0)
    with xr.open_dataset(path, engine="clusterh5", group="rest", chunks={}) as ds:
        means = ds.clusterh5.cluster_means()
        got = means.sel(cluster=1).values
        float32_mean = ds.sel(cluster=1)["data"].mean("voxel").values
    assert means.dtype == np.float64
    assert _relative_error(got, reference) < RTOL
    assert _relative_error(float32_mean, reference) > RTOL


def test_from_nifti_summaries_in_float64(tmp_path: Path) -> None:
    values = _values(seed=1)
    volume = values.reshape((*SHAPE, N_TIME), order="F")
    run = tmp_path / "run.nii"
    nib.save(nib.Nifti1Image(volume, np.eye(4)), run)
    atlas = np.ones(SHAPE, dtype=np.int16)
    ds = from_nifti({"rest": run}, atlas=atlas, summaries="only")
    got = ds["summary"].sel(run="rest", cluster=1).values
    reference = values.astype(np.float64).mean(axis=0)
    # a float32 mean of the same rows (numpy adds them one row at a time)
    assert _relative_error(values.mean(axis=0), reference) > RTOL
    assert _relative_error(got.astype(np.float64), reference) < RTOL


def test_cluster_means_are_nan_past_each_run_and_for_summary_runs() -> None:
    with xr.open_dataset(fmristore_path("irregular"), engine="clusterh5") as ds:
        means = ds.clusterh5.cluster_means()
        for run, n_time in zip(ds.run.values, ds.n_time.values, strict=True):
            m = means.sel(run=run).values  # (cluster, time), time padded to 64
            if run == "beta_summary":  # no voxel data
                assert np.isnan(m).all()
                continue
            assert not np.isnan(m[:, :n_time]).any()
            assert np.isnan(m[:, n_time:]).all()
