"""The clusterh5 engine as xarray sees it: registration, chunks, closing, pickling,
saving derived results, and dask.distributed with process workers."""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr

import xarray_clusterh5
from tests._helpers import fmristore_path
from xarray_clusterh5.backend import ClusterH5BackendEntrypoint


def _open_files() -> int:
    return h5py.h5f.get_obj_count(h5py.h5f.OBJ_ALL, h5py.h5f.OBJ_FILE)


def test_engine_registered() -> None:
    engines = xr.backends.list_engines()
    assert "clusterh5" in engines
    engine = engines["clusterh5"]
    assert type(engine).__module__ == "xarray_clusterh5.backend"
    assert engine.description
    assert engine.url
    assert engine.supports_groups


def test_guess_can_open(tmp_path: Path) -> None:
    engine = ClusterH5BackendEntrypoint()
    for stem in ("vignette", "irregular_head"):
        assert engine.guess_can_open(fmristore_path(stem))
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = np.arange(3)
    text = tmp_path / "text.h5"
    text.write_text("not hdf5")
    for candidate in (plain, text, tmp_path, tmp_path / "missing.h5", b"\x89HDF"):
        assert engine.guess_can_open(candidate) is False
    assert _open_files() == 0


def test_wrappers_and_example() -> None:
    path = xarray_clusterh5.example_file()
    assert path.exists()
    with xarray_clusterh5.open_dataset(path) as ds:
        assert ds.clusterh5.scan_names == ["motor_run", "rest_run"]
    with xarray_clusterh5.open_datatree(path) as dt:
        assert set(dt.children) == {"motor_run", "rest_run"}
    groups = xarray_clusterh5.open_groups(path)
    try:
        assert set(groups) == {"/", "/motor_run", "/rest_run"}
    finally:
        for ds in groups.values():
            ds.close()


def _cluster_sizes(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(path) as f:
        ids, counts = np.unique(f["cluster_map"][()], return_counts=True)
    return ids, counts


@pytest.mark.parametrize("stem", ["irregular", "vignette_head"])
def test_chunks_follow_the_datasets_in_every_view(stem: str) -> None:
    path = fmristore_path(stem)
    ids, counts = _cluster_sizes(path)
    with xr.open_dataset(path, engine="clusterh5", chunks={}) as ds:
        n_full = int(ds.has_data.sum())
        data = ds.data.data
        # one chunk per (run, cluster) block: each is one cluster_<id> dataset
        assert data.chunks[:2] == ((1,) * ds.sizes["run"], (1,) * len(ids))
        assert data.chunks[2:] == ((ds.sizes["voxel"],), (ds.sizes["time"],))
        assert n_full >= 1
        assert ds.chunks["cluster"] == (1,) * len(ids)
    with xr.open_datatree(path, engine="clusterh5", chunks={}) as dt:
        for name in dt.children:
            node = dt[name]
            if "data" in node.data_vars:
                assert node["data"].data.chunks[0] == tuple(int(c) for c in counts)
                assert len(node["data"].data.chunks[1]) == 1
    with xr.open_dataset(path, engine="clusterh5", group="/") as root:
        assert int(root.sizes["voxel"]) == int(counts.sum())


def test_split_warning_when_chunks_cut_a_cluster() -> None:
    path = fmristore_path("irregular")
    with pytest.warns(UserWarning, match="separate the stored chunks"):  # noqa: SIM117
        with xr.open_dataset(
            path, engine="clusterh5", group="zeta_full", chunks={"voxel": 100}
        ) as ds:
            assert ds.data.chunks[0][0] == 100


def test_sel_cluster_reads_one_dataset_per_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from xarray_clusterh5.fmristore import arrays as _arrays

    reads: list[tuple[str, int]] = []
    original = _arrays._ClusterArray._read_blocks

    def counting(self, jobs):  # type: ignore[no-untyped-def]
        reads.extend((job.scan, job.cluster_id) for job in jobs)
        return original(self, jobs)

    monkeypatch.setattr(_arrays._ClusterArray, "_read_blocks", counting)
    path = fmristore_path("irregular")
    with xr.open_datatree(path, engine="clusterh5") as dt:
        sub = dt.sel(cluster=17)
        for name in ("Mid_full", "alpha_full", "zeta_full"):
            assert sub[name]["data"].shape[0] == 7
            sub[name]["data"].load()
    assert sorted(reads) == [("Mid_full", 17), ("alpha_full", 17), ("zeta_full", 17)]
    reads.clear()
    with xr.open_dataset(path, engine="clusterh5") as ds:
        # padding-only windows touch no file
        assert np.isnan(ds.data.sel(cluster=40).isel(voxel=slice(1, None)).values).all()
        assert reads == []
        ds.data.sel(cluster=[2, 40], run="Mid_full").load()
        assert sorted(reads) == [("Mid_full", 2), ("Mid_full", 40)]


def test_cluster_selection_lists_and_errors() -> None:
    path = fmristore_path("irregular")
    with xr.open_dataset(path, engine="clusterh5", group="alpha_full") as ds:
        both = ds.sel(cluster=[40, 2])
        assert both.data.shape == (274, 64)
        np.testing.assert_array_equal(both.voxel_cluster.values[:1], [40])
        np.testing.assert_array_equal(
            both.data.values[1:], ds.sel(cluster=2).data.values
        )
        # the index survives a whole-cluster selection: select again
        again = both.sel(cluster=2)
        assert again.data.shape == (273, 64)
        with pytest.raises(KeyError, match="cluster id 3 not found"):
            ds.sel(cluster=3)
        with pytest.raises(ValueError, match="exact cluster ids only"):
            ds.sel(cluster=3, method="nearest")
        # a label slice may spell out step 1, no other step
        xr.testing.assert_identical(
            ds.sel(cluster=slice(2, 17, 1)), ds.sel(cluster=slice(2, 17))
        )
        with pytest.raises(ValueError, match="cluster slices cannot have a step"):
            ds.sel(cluster=slice(2, 40, 2))
        with pytest.raises(ValueError, match="select with cluster=<id or ids>"):
            ds.sel(cluster=2, voxel_cluster=2)
        for picks in (xr.DataArray([2, 40], dims="pick"), xr.DataArray([[2]])):
            with pytest.raises(ValueError, match="does not support vectorized"):
                ds.sel(cluster=picks)
    with xr.open_datatree(path, engine="clusterh5") as dt:
        sub = dt.sel(cluster=[5, 40])
        assert sub["zeta_full"]["data"].shape == (204, 37)
        assert sub["beta_summary"]["summary"].shape == (2, 23)


def test_cluster_index_needs_one_block_per_cluster_in_order() -> None:
    from xarray_clusterh5.fmristore.index import ClusterIndex

    coords = {"cluster": [3, 1], "voxel_cluster": ("voxel", [1, 1, 3])}
    with pytest.raises(ValueError, match="one contiguous block per cluster"):
        xr.Dataset(coords=coords).set_xindex(["cluster", "voxel_cluster"], ClusterIndex)
    coords["voxel_cluster"] = ("voxel", [3, 1, 1])
    ds = xr.Dataset(coords=coords).set_xindex(
        ["cluster", "voxel_cluster"], ClusterIndex
    )
    assert ds.sel(cluster=1)["voxel_cluster"].values.tolist() == [1, 1]
    with pytest.raises(ValueError, match="needs a cluster and a voxel-label"):
        xr.Dataset(coords=coords).set_xindex(["cluster"], ClusterIndex)


def test_close_releases_the_file() -> None:
    path = fmristore_path("irregular")
    before = _open_files()
    ds = xr.open_dataset(path, engine="clusterh5")
    ds.data.isel(run=0, cluster=0).load()
    assert _open_files() == before + 1
    ds.close()
    assert _open_files() == before
    with xr.open_datatree(path, engine="clusterh5") as dt:
        dt["Mid_full"]["data"].isel(voxel=0).load()
    assert _open_files() == before


def test_pickle_roundtrip_is_lazy_and_equal() -> None:
    path = fmristore_path("irregular")
    with xr.open_dataset(path, engine="clusterh5", chunks={}) as ds:
        blob = pickle.dumps(ds)
        assert len(blob) < 200_000
        other = pickle.loads(blob)
        xr.testing.assert_identical(other.load(), ds.load())
        other.close()


@pytest.mark.parametrize("view", ["padded", "run", "root"])
def test_to_netcdf_roundtrip(tmp_path: Path, view: str) -> None:
    path = fmristore_path("irregular")
    group = {"padded": None, "run": "zeta_full", "root": "/"}[view]
    out = tmp_path / f"{view}.nc"
    with xr.open_dataset(path, engine="clusterh5", group=group) as ds:
        ds.to_netcdf(out, engine="h5netcdf")
        with xr.open_dataset(out, engine="h5netcdf") as back:
            xr.testing.assert_equal(back, ds)
            assert back.attrs["affine_source"] == ds.attrs["affine_source"]
            np.testing.assert_array_equal(back.attrs["affine"], ds.attrs["affine"])


def test_derived_results_and_tree_to_netcdf(tmp_path: Path) -> None:
    path = fmristore_path("irregular")
    with xr.open_dataset(path, engine="clusterh5", chunks={}) as ds:
        means = ds.clusterh5.cluster_means().to_dataset()
        means.to_netcdf(tmp_path / "means.nc", engine="h5netcdf")
        with xr.open_dataset(tmp_path / "means.nc", engine="h5netcdf") as back:
            xr.testing.assert_allclose(back, means.compute())
    with xr.open_datatree(path, engine="clusterh5") as dt:
        dt.to_netcdf(tmp_path / "tree.nc", engine="h5netcdf")
        with xr.open_datatree(tmp_path / "tree.nc", engine="h5netcdf") as back:
            for name in dt.children:
                xr.testing.assert_equal(
                    back[name].to_dataset(inherit="all_coords"),
                    dt[name].to_dataset(inherit="all_coords"),
                )
            # netCDF keeps the coordinates; the accessor puts the index back
            indexed = back.clusterh5.set_cluster_index()
            sub = indexed.sel(cluster=[5, 40])
            assert sub["zeta_full"]["data"].shape == (204, 37)
    with xr.open_dataset(path, engine="clusterh5", group="Mid_full") as run:
        run.to_netcdf(tmp_path / "run.nc", engine="h5netcdf")
        with xr.open_dataset(tmp_path / "run.nc", engine="h5netcdf") as back:
            again = back.clusterh5.set_cluster_index()
            xr.testing.assert_identical(again.sel(cluster=17), run.sel(cluster=17))
            # the index put back survives a selection, as the engine's does
            pair = again.sel(cluster=[17, 2])
            xr.testing.assert_identical(pair.sel(cluster=2), run.sel(cluster=2))


def test_views_convert_consistently() -> None:
    path = fmristore_path("irregular_head")
    with (
        xr.open_dataset(path, engine="clusterh5") as padded,
        xr.open_datatree(path, engine="clusterh5") as dt,
    ):
        tree = padded.clusterh5.to_tree()
        for name in dt.children:
            ours = tree[name].to_dataset()
            theirs = dt[name].to_dataset()
            xr.testing.assert_identical(ours, theirs)
        # the root index is built for a tree: selections keep working on it
        for key in ([2, 17], slice(None)):
            picked, want = tree.sel(cluster=key), dt.sel(cluster=key)
            for name in dt.children:
                xr.testing.assert_identical(
                    picked[name].to_dataset(), want[name].to_dataset()
                )
        with xr.open_dataset(path, engine="clusterh5", group="zeta_full") as run:
            unpadded = padded.clusterh5.unpad("zeta_full")
            xr.testing.assert_identical(unpadded, run)
            pair = unpadded.sel(cluster=[17, 2])  # its index survives selections
            xr.testing.assert_identical(pair.sel(cluster=2), run.sel(cluster=2))
            xr.testing.assert_identical(dt.clusterh5.run("zeta_full"), run)
            with pytest.raises(ValueError, match="unpad needs the padded"):
                run.clusterh5.unpad("zeta_full")
        xr.testing.assert_identical(
            dt.clusterh5.to_padded().compute(), padded.compute()
        )
        # a run reduced over time is refused by name, not by a transpose error
        for reduced in (dt.isel(time=0), dt.mean("time")):
            with pytest.raises(ValueError, match="run 'Mid_full' has no time dim"):
                reduced.clusterh5.to_padded()


def test_to_nifti_volume(tmp_path: Path) -> None:
    import nibabel as nib

    path = fmristore_path("irregular")
    with xr.open_dataset(path, engine="clusterh5") as ds:
        img = ds.clusterh5.to_nifti("zeta_full", tmp_path / "zeta.nii.gz")
        volume = ds.clusterh5.to_volume("zeta_full")
        with pytest.raises(FileExistsError):
            ds.clusterh5.to_nifti("zeta_full", tmp_path / "zeta.nii.gz")
    back = nib.load(tmp_path / "zeta.nii.gz")
    np.testing.assert_array_equal(np.asarray(back.dataobj), volume)
    np.testing.assert_allclose(back.affine, img.affine)
    assert back.header.get_zooms()[3] == pytest.approx(0.8)


@pytest.mark.slow
def test_cluster_means_on_a_process_cluster() -> None:
    distributed = pytest.importorskip("distributed")
    path = fmristore_path("irregular")
    with xr.open_dataset(path, engine="clusterh5") as ds, np.errstate(all="ignore"):
        values = ds.data.values
        counts = np.isfinite(values).sum(axis=2)
        expected = np.where(counts > 0, np.nansum(values, axis=2) / counts, np.nan)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
        xr.open_dataset(path, engine="clusterh5", chunks={}) as ds,
    ):
        got = ds.clusterh5.cluster_means().compute()
    np.testing.assert_allclose(got.values, expected, rtol=1e-6)
