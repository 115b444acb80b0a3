"""The views with xarray's other tools: exact dims, Zarr and netCDF, selections,
reduced Datasets, and the quaternion header read without ``srow_*``."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr
from nibabel.eulerangles import euler2mat
from nibabel.quaternions import fillpositive, quat2mat

from tests._helpers import fmristore_expected, fmristore_path
from xarray_clusterh5.fmristore.to_h5 import to_fmristore
from xarray_clusterh5.fmristore.write import write_experiment

PADDED_DIMS = ("run", "cluster", "voxel", "time")


# --------------------------------------------------------------------------
# vector-valued scan metadata
# --------------------------------------------------------------------------


def _vector_experiment(path: Path) -> dict[str, dict]:
    mask = np.ones((3, 2, 2), dtype=bool)
    n = int(mask.sum())
    meta = {
        "a": {"slice_timing": np.array([0.0, 0.1 + 0.2, 1 / 3]), "TR": 2.0},
        "b": {"slice_timing": np.array([0.5, 0.25]), "echo": np.int16([12, 30, 45])},
        "c": {"TR": 1.5},
    }
    write_experiment(
        path,
        mask=mask,
        cluster_map=np.arange(n) % 3 + 1,
        runs={name: np.ones((n, 4), dtype=np.float32) for name in meta},
        scan_metadata=meta,
    )
    return meta


def _assert_same_metadata(got: dict, expected: dict) -> None:
    assert set(got) >= set(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key], value)
        assert np.asarray(got[key]).dtype == np.asarray(value).dtype, key


def test_vector_metadata_adds_no_dimension(tmp_path: Path) -> None:
    path = tmp_path / "vec.h5"
    meta = _vector_experiment(path)
    with xr.open_dataset(path, engine="clusterh5") as ds:
        assert tuple(ds.sizes) == PADDED_DIMS
        assert ds["data"].dims == PADDED_DIMS
        assert ds["slice_timing"].dims == ("run",)
        got = ds.clusterh5.scan_metadata()
        to_fmristore(ds, tmp_path / "back.h5")
    for name, expected in meta.items():
        _assert_same_metadata(got[name], expected)
    assert "slice_timing" not in got["c"]
    assert type(got["a"]["TR"]) is np.float64  # scalars, not 0-d arrays
    # exact in the run views and in the tree nodes, as attributes
    with xr.open_dataset(path, engine="clusterh5", group="a") as run:
        np.testing.assert_array_equal(
            run.attrs["slice_timing"], [0.0, 0.1 + 0.2, 1 / 3]
        )
    with xr.open_datatree(path, engine="clusterh5") as dt:
        np.testing.assert_array_equal(dt["b"].attrs["echo"], np.int16([12, 30, 45]))
        assert dt["b"].attrs["echo"].dtype == np.int16
    # and written back exactly
    with h5py.File(tmp_path / "back.h5") as f:
        st = f["scans/a/metadata/slice_timing"]
        assert st.dtype == np.float64
        np.testing.assert_array_equal(st[()], [0.0, 0.1 + 0.2, 1 / 3])
        assert f["scans/b/metadata/echo"].dtype == np.int16
        assert "slice_timing" not in f["scans/c/metadata"]


def test_metadata_mixing_string_vectors_and_numbers(tmp_path: Path) -> None:
    path = tmp_path / "mixed.h5"
    mask = np.ones((2, 2, 1), dtype=bool)
    write_experiment(
        path,
        mask=mask,
        cluster_map=[1, 1, 2, 2],
        runs={name: np.zeros((4, 3)) for name in "abc"},
        scan_metadata={
            "a": {"tags": ["x", "y"], "site": "s1"},
            "b": {"tags": 3, "site": 2},
        },
    )
    with xr.open_dataset(path, engine="clusterh5") as ds:
        tags = ds["tags"]
        assert tags.dims == ("run",)
        assert tags.values.tolist() == ['["x", "y"]', "3", ""]  # JSON texts
        assert tags.attrs["fmristore_missing"] == ["c"]
        assert ds["site"].values.tolist() == ["s1", "2", ""]
        got = ds.clusterh5.scan_metadata()
    # the string vector is exact; the number reads as text next to strings
    np.testing.assert_array_equal(got["a"]["tags"], np.array(["x", "y"]))
    assert got["b"]["tags"] == "3"
    assert "tags" not in got["c"]


def test_views_known_by_their_dims_without_attributes() -> None:
    # operations that drop attributes (or files written elsewhere) keep the dims
    path = fmristore_path("irregular")
    with xr.open_dataset(path, engine="clusterh5") as ds:
        names = ds.clusterh5.scan_names
        assert ds.drop_attrs(deep=False).clusterh5.scan_names == names
        one = ds.sel(run="zeta_full").drop_attrs(deep=False)  # run as a scalar
        assert one.clusterh5.scan_names == ["zeta_full"]
    with xr.open_dataset(path, engine="clusterh5", group="beta_summary") as run:
        bare = run.drop_attrs(deep=False)
        xr.testing.assert_equal(
            bare.clusterh5.summary_matrix(), run.clusterh5.summary_matrix()
        )
        # summaries alone: a cluster dimension and no voxels
        alone = xr.Dataset(
            {"summary": run["summary"].variable}, {"cluster": run["cluster"].values}
        )
        np.testing.assert_array_equal(
            alone.clusterh5.summary_matrix(), run.clusterh5.summary_matrix()
        )
        with pytest.raises(ValueError, match="'beta_summary' has no voxel data"):
            run.clusterh5.series([0])
    with pytest.raises(ValueError, match="not a clusterh5 view"):
        _ = xr.Dataset({"x": ("t", [1])}).clusterh5.scan_names


def test_fixture_dims_are_exact(fixture_name: str) -> None:
    exp = fmristore_expected(fixture_name)
    with xr.open_dataset(fmristore_path(fixture_name), engine="clusterh5") as ds:
        assert tuple(ds.sizes) == PADDED_DIMS
        meta = ds.clusterh5.scan_metadata()
    for run, block in exp["scan_metadata"].items():
        for key, spec in block["values"].items():
            if spec["length"] > 1:  # irregular's slice_timing
                np.testing.assert_array_equal(meta[run][key], spec["value"])


def test_metadata_keys_named_like_view_variables_get_a_prefix(tmp_path: Path) -> None:
    import pandas as pd

    path = tmp_path / "names.h5"
    write_experiment(
        path,
        mask=np.ones((2, 2, 1), dtype=bool),
        cluster_map=[1, 1, 2, 2],
        runs={"a": np.ones((4, 3), dtype=np.float32)},
        scan_metadata={"a": {"summary": "x", "time": 2.0}},
        cluster_metadata=pd.DataFrame(
            {"cluster_id": [1, 2], "data": [5, 6], "n_voxels": [1.5, 2.5]}
        ),
    )
    with xr.open_dataset(path, engine="clusterh5") as ds:
        assert ds["data"].dims == PADDED_DIMS
        assert ds["scan_summary"].values.tolist() == ["x"]
        assert ds["scan_time"].values.tolist() == [2.0]
        assert ds["cluster_data"].values.tolist() == [5, 6]
        assert ds["cluster_n_voxels"].values.tolist() == [1.5, 2.5]
        assert ds["n_voxels"].values.tolist() == [2, 2]
        assert ds.clusterh5.scan_metadata() == {"a": {"summary": "x", "time": 2.0}}
        table = ds.clusterh5.cluster_metadata()
        assert table["data"].tolist() == [5, 6]
        assert table["n_voxels"].tolist() == [1.5, 2.5]
    with xr.open_dataset(path, engine="clusterh5", group="a") as run:
        assert run["data"].dims == ("voxel", "time")
        assert run["cluster_data"].values.tolist() == [5, 6]


def test_experiment_without_scans_has_empty_run_and_time(tmp_path: Path) -> None:
    """No scans: the padded view keeps its dims, with no run and no time point."""
    path = tmp_path / "none.h5"
    mask = np.zeros((2, 2, 3), dtype=bool)
    mask[0, 1, :] = True
    write_experiment(path, mask=mask, cluster_map=[4, 4, 9], runs={})
    with xr.open_dataset(path, engine="clusterh5") as ds:
        assert dict(ds.sizes) == {"run": 0, "cluster": 2, "voxel": 2, "time": 0}
        np.testing.assert_array_equal(ds["cluster"].values, [4, 9])
        np.testing.assert_array_equal(ds["n_voxels"].values, [2, 1])
        # its tree is the root alone, as open_datatree gives it
        with xr.open_datatree(path, engine="clusterh5") as dt:
            xr.testing.assert_identical(ds.clusterh5.to_tree(), dt)


# --------------------------------------------------------------------------
# Zarr v3 and netCDF with chunks={}
# --------------------------------------------------------------------------


def _open_view(path: Path, view: str) -> xr.Dataset:
    group = {"padded": None, "run": "zeta_full", "root": "/"}[view]
    return xr.open_dataset(path, engine="clusterh5", chunks={}, group=group)


ZARR_WARNINGS = pytest.mark.filterwarnings(
    # fixed-width strings have no final Zarr v3 spec yet
    "ignore::zarr.errors.UnstableSpecificationWarning"
)


def _indexed_like(back: xr.Dataset, expected: xr.Dataset) -> xr.Dataset:
    """Zarr and netCDF keep coordinates; the accessor puts the ClusterIndex back."""
    if "voxel_cluster" in expected.xindexes:
        return back.clusterh5.set_cluster_index()
    return back


@ZARR_WARNINGS
@pytest.mark.parametrize("view", ["padded", "run", "root"])
def test_chunked_views_write_zarr_and_netcdf(tmp_path: Path, view: str) -> None:
    pytest.importorskip("zarr")
    with _open_view(fmristore_path("irregular"), view) as ds:
        expected = ds.load()
    with _open_view(fmristore_path("irregular"), view) as ds:
        assert any(v.chunks is not None for v in ds.variables.values())
        ds.to_zarr(
            tmp_path / "v.zarr", zarr_format=3, consolidated=False, align_chunks=True
        )
        ds.to_netcdf(tmp_path / "v.nc", engine="h5netcdf")
    with xr.open_zarr(tmp_path / "v.zarr", zarr_format=3, consolidated=False) as back:
        xr.testing.assert_equal(_indexed_like(back.load(), expected), expected)
    with xr.open_dataset(tmp_path / "v.nc", engine="h5netcdf") as back:
        xr.testing.assert_equal(_indexed_like(back.load(), expected), expected)


@ZARR_WARNINGS
def test_chunked_tree_writes_zarr_and_netcdf(tmp_path: Path) -> None:
    pytest.importorskip("zarr")
    path = fmristore_path("irregular")
    with xr.open_datatree(path, engine="clusterh5", chunks={}) as dt:
        dt.to_zarr(
            tmp_path / "t.zarr", zarr_format=3, consolidated=False, align_chunks=True
        )
        dt.to_netcdf(tmp_path / "t.nc", engine="h5netcdf")
        expected = dt.load()
    stores = {"zarr": tmp_path / "t.zarr", "h5netcdf": tmp_path / "t.nc"}
    for engine, store in stores.items():
        kwargs = {"consolidated": False} if engine == "zarr" else {}
        with xr.open_datatree(store, engine=engine, **kwargs) as back:
            for name in expected.children:
                xr.testing.assert_equal(
                    back[name].to_dataset(inherit="all_coords").load(),
                    expected[name].to_dataset(inherit="all_coords"),
                )


#: the small coordinates of each view: metadata built in memory at open
_GEOMETRY = ["mask_index", "i", "j", "k", "n_voxels", "label"]
SMALL_COORDS = {
    "padded": ["n_time", "has_data", "has_summary", "TR", *_GEOMETRY],
    "run": _GEOMETRY,
    "root": _GEOMETRY,
}


@pytest.mark.parametrize("view", ["padded", "run", "root"])
def test_chunked_views_keep_xarrays_coordinate_operations(view: str) -> None:
    """Under ``chunks={}`` the small coordinates are plain coordinates.

    xarray makes every coordinate that no index owns a dask array; an index
    owning them (to keep them NumPy) would make ``reset_coords`` refuse them,
    ``stack`` refuse two indexes along a dim (or ``drop_vars`` refuse one of a
    group), and padded ``reindex`` or alignment of other cluster selections
    fail; an index of per-run values would give every subject the first one's
    ``n_time`` when subjects are combined. The README ("Zarr and netCDF")
    says so; this test keeps those operations working.
    """
    path = fmristore_path("irregular")
    with _open_view(path, view) as ds, _open_view(path, view) as eager:
        eager = eager.compute()
        names = SMALL_COORDS[view]
        for name in names:
            assert name in ds.coords
            xr.testing.assert_identical(ds[name].compute(), eager[name])
        # raises when variables are chunked differently along a dim
        assert all(isinstance(c, tuple) for c in ds.chunks.values())
        # the README's way to hold them in memory
        loaded = ds.assign_coords(
            {k: v.variable.compute() for k, v in ds.coords.items() if v.chunks}
        )
        for name in names:
            assert isinstance(loaded[name].variable._data, np.ndarray), name
            xr.testing.assert_identical(loaded[name], eager[name])
        reset = ds.reset_coords(names)
        assert set(names) <= set(reset.data_vars)
        assert not set(names) & set(ds.reset_coords(drop=True).variables)
        assert "i" not in ds.drop_vars("i").variables
        stack_dims = ("cluster", "voxel") if view == "padded" else ("voxel",)
        stacked = ds[["i", "mask_index"]].stack(s=stack_dims)
        assert stacked.sizes["s"] == int(np.prod([ds.sizes[d] for d in stack_dims]))
        np.testing.assert_array_equal(stacked["i"].values, eager["i"].values.ravel())
        if view == "padded":
            picked = ds.reindex(cluster=[17, 999])
            np.testing.assert_array_equal(
                picked["i"].values[0], eager["i"].sel(cluster=17).values
            )
            assert (picked["n_voxels"].isnull().values == [False, True]).all()
            both = ds["data"].isel(cluster=[0, 1]) + ds["data"].isel(cluster=[1, 2])
            assert both["cluster"].values.tolist() == [5]
            np.testing.assert_array_equal(
                both["i"].values, eager["i"].isel(cluster=[1]).values
            )


# --------------------------------------------------------------------------
# a padded Dataset reduced to one run
# --------------------------------------------------------------------------


def test_to_volume_of_a_padded_dataset_reduced_to_one_run(tmp_path: Path) -> None:
    with xr.open_dataset(fmristore_path("irregular"), engine="clusterh5") as ds:
        full = ds.clusterh5.to_volume(run="zeta_full")
        assert full.shape == (13, 11, 9, 37)
        one = ds.sel(run="zeta_full")
        np.testing.assert_array_equal(one.clusterh5.to_volume(), full)
        np.testing.assert_array_equal(ds.isel(run=[3]).clusterh5.to_volume(), full)
        img = one.clusterh5.to_nifti()
        np.testing.assert_array_equal(np.asarray(img.dataobj), full)
        assert img.header.get_zooms()[3] == pytest.approx(0.8)  # the run's TR
        means = one.clusterh5.cluster_means()
        xr.testing.assert_allclose(
            means.isel(run=0), ds.clusterh5.cluster_means().sel(run="zeta_full")
        )
        to_fmristore(one, tmp_path / "one.h5")
        with xr.open_dataset(
            tmp_path / "one.h5", engine="clusterh5", group="zeta_full"
        ) as back:
            xr.testing.assert_identical(back.load(), ds.clusterh5.unpad("zeta_full"))
            xr.testing.assert_equal(back, one.clusterh5.unpad("zeta_full"))
        with pytest.raises(ValueError, match="2 runs needs run="):
            ds.isel(run=[0, 3]).clusterh5.to_volume()
        with pytest.raises(ValueError, match="'beta_summary' has no voxel data"):
            ds.sel(run="beta_summary").clusterh5.to_volume()


# --------------------------------------------------------------------------
# label slices of clusters include the stop, as in pandas
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "stop", "expected"),
    [(5, 17, [5, 17]), (3, 20, [5, 17]), (2, 40, [2, 5, 17, 40]), (None, 5, [2, 5])],
)
def test_cluster_label_slices_include_the_stop(start, stop, expected) -> None:
    path = fmristore_path("irregular")  # clusters 2, 5, 17, 40
    n_voxels = {2: 273, 5: 203, 17: 7, 40: 1}
    labels = slice(start, stop)
    with xr.open_dataset(path, engine="clusterh5") as ds:
        assert ds.sel(cluster=labels)["cluster"].values.tolist() == expected
    for group in ("zeta_full", "/"):
        with xr.open_dataset(path, engine="clusterh5", group=group) as ds:
            sub = ds.sel(cluster=labels)
            assert sub["cluster"].values.tolist() == expected
            assert sub.sizes["voxel"] == sum(n_voxels[c] for c in expected)
            assert np.unique(sub["voxel_cluster"].values).tolist() == expected
    with xr.open_datatree(path, engine="clusterh5") as dt:
        sub = dt.sel(cluster=labels)
        assert sub["cluster"].values.tolist() == expected
        assert sub["zeta_full"]["data"].shape[0] == sum(n_voxels[c] for c in expected)


def test_cluster_label_slices_need_ascending_ids() -> None:
    """After sel(cluster=[17, 5]) a label slice has no order to follow."""
    path = fmristore_path("irregular")
    with xr.open_dataset(path, engine="clusterh5", group="zeta_full") as ds:
        sub = ds.sel(cluster=[17, 5])
        assert sub["cluster"].values.tolist() == [17, 5]
        with pytest.raises(KeyError, match="label slices need ascending cluster ids"):
            sub.sel(cluster=slice(5, 17))
    # consecutive ids (1, 2, 3) are ascending too
    path = fmristore_path("vignette")
    with xr.open_dataset(path, engine="clusterh5", group="rest_run") as ds:
        sub = ds.sel(cluster=slice(2, 3))
        assert sub["cluster"].values.tolist() == [2, 3]
        assert np.unique(sub["voxel_cluster"].values).tolist() == [2, 3]
        assert sub.sizes["voxel"] == 72


# --------------------------------------------------------------------------
# the quaternion header, read without srow_*
# --------------------------------------------------------------------------


def _nibabel_qform(header: h5py.Group) -> np.ndarray:
    """The affine nibabel's quaternion math gives for the stored fields."""
    b, c, d = (float(header[n][()]) for n in ("quatern_b", "quatern_c", "quatern_d"))
    pixdim = header["pixdim"][()]
    qfac = float(header["qfac"][()])
    rot = quat2mat(fillpositive(np.array([b, c, d])))
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([pixdim[1], pixdim[2], qfac * pixdim[3]])
    affine[:3, 3] = [
        float(header[n][()]) for n in ("qoffset_x", "qoffset_y", "qoffset_z")
    ]
    return affine


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize(
    "angles", [(0.0, 0.0, 0.4), (0.3, 0.0, 0.0), (0.0, -0.5, 0.0), (0.2, -0.7, 1.1)]
)
def test_quaternion_header_without_srow(tmp_path: Path, angles, flip: bool) -> None:
    """Rotations about x, y and all three axes, read from the quaternion alone."""
    rot = euler2mat(*angles)  # z, y, x angles
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([2.0, 2.5, 3.0 * (-1 if flip else 1)])
    affine[:3, 3] = [-30.0, 12.5, 40.0]
    mask = np.ones((3, 2, 2), dtype=bool)
    path = write_experiment(
        tmp_path / "q.h5",
        mask=mask,
        cluster_map=np.arange(12) % 2 + 1,
        runs={"rest": np.ones((12, 2), dtype=np.float32)},
        affine=affine,
        write_srow=False,
    )
    with h5py.File(path) as f:
        assert "srow_x" not in f["header"]
        reference = _nibabel_qform(f["header"])
    with xr.open_dataset(path, engine="clusterh5") as ds:
        assert ds.attrs["affine_form"] == "quaternion"
        got = ds.clusterh5.affine
    np.testing.assert_allclose(got, reference, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got, affine, rtol=0, atol=1e-12)
