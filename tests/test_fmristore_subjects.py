"""One file per subject as one Dataset (leading ``subject`` dim) or DataTree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from xarray_clusterh5 import subjects as subj
from xarray_clusterh5.errors import ClusterH5Error
from xarray_clusterh5.fmristore import arrays
from xarray_clusterh5.fmristore.write import write_experiment

ENGINE = "clusterh5"
SHAPE = (5, 4, 3)

#: subject -> {run: n_time}; runs and run lengths differ between subjects
RUNS = {
    "sub-01": {"rest": 7, "task": 5},
    "sub-02": {"rest": 9},
    "sub-03": {"task": 6, "rest": 3},
}


def _geometry() -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros(SHAPE, bool)
    mask[1:4, :, 1:] = True
    mask[2, 1, 1] = False
    n = int(mask.sum())
    cluster_map = np.repeat([3, 8, 11], [5, n - 12, 7]).astype(np.int32)
    return mask, cluster_map


def _write(
    path: Path,
    runs: dict[str, int],
    seed: int,
    *,
    mask: np.ndarray | None = None,
    cluster_map: np.ndarray | None = None,
) -> Path:
    base_mask, base_map = _geometry()
    mask = base_mask if mask is None else mask
    cluster_map = base_map if cluster_map is None else cluster_map
    rng = np.random.default_rng(seed)
    data = {
        name: rng.normal(size=(len(cluster_map), t)).astype(np.float32)
        for name, t in runs.items()
    }
    return write_experiment(path, mask=mask, cluster_map=cluster_map, runs=data)


@pytest.fixture
def subject_files(tmp_path: Path) -> list[Path]:
    return [
        _write(tmp_path / f"{name}.h5", runs, seed)
        for seed, (name, runs) in enumerate(RUNS.items())
    ]


def test_open_subjects_stacks_padded_views(subject_files: list[Path]) -> None:
    with subj.open_subjects(subject_files) as ds:
        assert ds["data"].dims == ("subject", "run", "cluster", "voxel", "time")
        assert list(ds["subject"].values) == list(RUNS)
        assert sorted(ds["run"].values) == ["rest", "task"]
        assert ds.sizes["time"] == 9
        for name, path in zip(RUNS, subject_files, strict=True):
            with xr.open_dataset(path, engine=ENGINE) as one:
                for run in ds["run"].values:
                    got = ds["data"].sel(subject=name, run=run).values
                    if run not in RUNS[name]:  # a run this subject lacks
                        assert np.isnan(got).all()
                        assert int(ds["n_time"].sel(subject=name, run=run)) == 0
                        assert not bool(ds["has_data"].sel(subject=name, run=run))
                        continue
                    t = RUNS[name][run]
                    want = one["data"].sel(run=run).values
                    np.testing.assert_array_equal(got[..., : want.shape[-1]], want)
                    assert np.isnan(got[..., want.shape[-1] :]).all()
                    assert int(ds["n_time"].sel(subject=name, run=run)) == t
                np.testing.assert_array_equal(ds["i"].values, one["i"].values)


def test_open_subjects_with_dask_chunks_matches_eager(
    subject_files: list[Path],
) -> None:
    with (
        subj.open_subjects(subject_files) as eager,
        subj.open_subjects(subject_files, chunks={}, subjects=["a", "b", "c"]) as lazy,
    ):
        assert lazy["data"].chunks is not None
        assert list(lazy["subject"].values) == ["a", "b", "c"]
        means = lazy["data"].mean("voxel").compute()
        np.testing.assert_allclose(
            means.values, eager["data"].mean("voxel").values, rtol=1e-6
        )


#: the stacked view's small coordinates (per run and per subject, and geometry)
SMALL_COORDS = ("n_time", "has_data", "has_summary", "mask_index", "i", "n_voxels")


@pytest.mark.filterwarnings("ignore::zarr.errors.UnstableSpecificationWarning")
def test_chunked_subjects_keep_coordinates_in_numpy_and_round_trip(
    subject_files: list[Path], tmp_path: Path
) -> None:
    pytest.importorskip("zarr")
    with (
        subj.open_subjects(subject_files) as eager,
        subj.open_subjects(subject_files, chunks={}) as lazy,
    ):
        assert lazy["data"].chunks is not None
        for name in SMALL_COORDS:
            assert isinstance(lazy[name].variable._data, np.ndarray), name
            xr.testing.assert_identical(lazy[name], eager[name])
        np.testing.assert_array_equal(lazy["n_time"].sel(run="rest").values, [7, 9, 3])
        expected = eager.load()
        lazy.to_zarr(tmp_path / "s.zarr", zarr_format=3, consolidated=False)
        lazy.to_netcdf(tmp_path / "s.nc", engine="h5netcdf")
    with xr.open_zarr(tmp_path / "s.zarr", zarr_format=3, consolidated=False) as back:
        xr.testing.assert_equal(back.load(), expected)
    with xr.open_dataset(tmp_path / "s.nc", engine="h5netcdf") as back:
        xr.testing.assert_equal(back.load(), expected)


def test_open_mfdataset_nested_concat_works(subject_files: list[Path]) -> None:
    # the plain xarray route: no geometry check, but the same data
    with (
        xr.open_mfdataset(
            subject_files,
            engine=ENGINE,
            combine="nested",
            concat_dim="subject",
            join="outer",
        ) as mf,
        subj.open_subjects(subject_files) as ours,
    ):
        for run in ours["run"].values:
            np.testing.assert_array_equal(
                mf["data"].sel(run=run).values, ours["data"].sel(run=run).values
            )


def test_datatree_has_one_node_per_subject(subject_files: list[Path]) -> None:
    with subj.open_subjects_datatree(subject_files) as tree:
        assert list(tree.children) == list(RUNS)
        for name, path in zip(RUNS, subject_files, strict=True):
            assert set(tree[name].children) == set(RUNS[name])
            with xr.open_dataset(path, engine=ENGINE, group="rest") as one:
                np.testing.assert_array_equal(
                    tree[f"{name}/rest"]["data"].values, one["data"].values
                )


def test_geometry_checked_from_metadata_only(
    subject_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_voxel_data(*args: object) -> None:
        raise AssertionError("voxel data read while checking geometry")

    monkeypatch.setattr(arrays._ClusterArray, "_read_blocks", no_voxel_data)
    mask, cluster_map = _geometry()
    moved = cluster_map.copy()
    moved[[0, 5]] = moved[[5, 0]]  # same cluster sizes, voxels elsewhere
    bad_files = {
        "moved": (
            _write(tmp_path / "moved.h5", {"rest": 4}, 9, cluster_map=moved),
            "other positions",
        ),
        "ids": (
            _write(
                tmp_path / "ids.h5",
                {"rest": 4},
                9,
                cluster_map=np.where(cluster_map == 11, 12, cluster_map),
            ),
            "cluster ids (3, 8, 12) where the first file has (3, 8, 11)",
        ),
        "size": (
            _write(
                tmp_path / "size.h5",
                {"rest": 4},
                9,
                cluster_map=np.where(np.arange(len(cluster_map)) == 5, 3, cluster_map),
            ),
            "cluster 3 has 6 voxels where the first file has 5",
        ),
    }
    shifted = np.roll(mask, 1, axis=0)
    bad_files["volume"] = (
        _write(tmp_path / "volume.h5", {"rest": 4}, 9, mask=shifted),
        "other positions",
    )
    for path, how in bad_files.values():
        files = [*subject_files[:2], path, subject_files[2]]
        for opener in (subj.open_subjects, subj.open_subjects_datatree):
            with pytest.raises(ClusterH5Error, match="geometry") as err:
                opener(files)
            assert err.value.path == str(path)  # the first file that differs
            assert str(subject_files[0]) in str(err.value)
            assert how in str(err.value)


def test_subject_names_must_be_unique(subject_files: list[Path]) -> None:
    with pytest.raises(ValueError, match="used twice"):
        subj.open_subjects(subject_files, subjects=["a", "a", "b"])
    with pytest.raises(ValueError, match="2 subject names for 3 files"):
        subj.open_subjects(subject_files, subjects=["a", "b"])
    with pytest.raises(ValueError, match="group"):
        subj.open_subjects(subject_files, group="rest")


def test_open_subjects_reads_no_voxel_data_until_indexed(
    subject_files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[int] = []
    original = arrays._ClusterArray._read_blocks

    def counting(self: arrays._ClusterArray, jobs: list) -> None:
        reads.append(len(jobs))
        original(self, jobs)

    monkeypatch.setattr(arrays._ClusterArray, "_read_blocks", counting)
    with subj.open_subjects(subject_files) as ds:
        assert reads == []
        # one time point past sub-03's rest run (3 TRs): NaN, its file untouched
        late = ds["data"].sel(subject="sub-03", run="rest").isel(time=5).values
        assert np.isnan(late).all()
        assert sum(reads) == 0  # no cluster dataset read
        got = ds["data"].isel(subject=[0, 2], time=slice(1, 3)).sel(run="task").values
        # one batched read per subject file, not one per cluster
        assert len([n for n in reads if n]) == 2
    with xr.open_dataset(subject_files[2], engine=ENGINE) as one:
        want = one["data"].sel(run="task").isel(time=slice(1, 3)).values
    np.testing.assert_array_equal(got[1], want)
