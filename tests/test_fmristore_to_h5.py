"""to_fmristore: open -> write -> open is identical for every view and fixture."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr

from tests._helpers import FMRISTORE, fmristore_path, h5ls_listing
from xarray_clusterh5.fmristore.to_h5 import to_fmristore
from xarray_clusterh5.fmristore.write import Run, write_experiment

FIRST_FULL = {"vignette": "rest_run", "irregular": "zeta_full"}


def _first_full(stem: str) -> str:
    return FIRST_FULL[stem.removesuffix("_head")]


def test_padded_round_trip(tmp_path: Path, fixture_name: str) -> None:
    out = tmp_path / "rt.h5"
    with xr.open_dataset(fmristore_path(fixture_name), engine="clusterh5") as ds:
        to_fmristore(ds, out)
        with xr.open_dataset(out, engine="clusterh5") as back:
            xr.testing.assert_identical(back.load(), ds.load())
    # and the file itself is laid out as R wrote it, summary_only aside
    ref = {
        e["path"]: e
        for e in json.loads((FMRISTORE / f"{fixture_name}.h5ls.json").read_text())
    }
    ours = h5ls_listing(out)
    assert sorted(ours) == sorted(ref)
    for p, entry in ref.items():
        for key in ("shape_h5py", "dtype", "chunks", "filters", "layout"):
            if key in entry:
                assert ours[p][key] == entry[key], (p, key)
    assert "summary_only" not in ours["/scans"]["attrs"]  # mixed file: omitted


def test_existing_file_kept_and_no_bar_unless_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "v.h5"
    with xr.open_dataset(fmristore_path("vignette"), engine="clusterh5") as ds:
        to_fmristore(ds, out)
        assert capsys.readouterr().err == ""
        with pytest.raises(FileExistsError):
            to_fmristore(ds, out)
        to_fmristore(ds, out, overwrite=True, progress=True)
    assert "writing v.h5: 100%" in capsys.readouterr().err


def test_fmristore_version_is_written_back(tmp_path: Path) -> None:
    with xr.open_dataset(fmristore_path("irregular_head"), engine="clusterh5") as ds:
        ds.attrs["fmristore_version"] = "0.2.0"
        to_fmristore(ds, tmp_path / "v.h5")
        to_fmristore(ds, tmp_path / "old.h5", format="2025")
    with xr.open_dataset(tmp_path / "v.h5", engine="clusterh5") as back:
        assert back.attrs["fmristore_version"] == "0.2.0"
    with xr.open_dataset(tmp_path / "old.h5", engine="clusterh5") as back:
        assert "fmristore_version" not in back.attrs  # 2025 files have none


def test_datatree_round_trip(tmp_path: Path, fixture_name: str) -> None:
    out = tmp_path / "tree.h5"
    with xr.open_datatree(fmristore_path(fixture_name), engine="clusterh5") as dt:
        dt.clusterh5.to_fmristore(out)  # the accessor forwards to to_fmristore
        with xr.open_datatree(out, engine="clusterh5") as back:
            xr.testing.assert_identical(back.load(), dt.load())


def test_run_view_round_trip(tmp_path: Path, fixture_name: str) -> None:
    out = tmp_path / "run.h5"
    scan = _first_full(fixture_name)
    path = fmristore_path(fixture_name)
    with xr.open_dataset(path, engine="clusterh5", group=scan) as run:
        to_fmristore(run, out)
        with xr.open_dataset(out, engine="clusterh5", group=scan) as back:
            xr.testing.assert_identical(back.load(), run.load())
    with h5py.File(out) as f:
        assert list(f["scans"]) == [scan]


def test_dask_round_trip_and_format_switch(tmp_path: Path) -> None:
    path = fmristore_path("irregular")
    with xr.open_dataset(path, engine="clusterh5", chunks={}) as ds:
        assert ds["data"].chunks is not None
        to_fmristore(ds, tmp_path / "d.h5")
        to_fmristore(ds, tmp_path / "new.h5", format="2026", progress=True)
        with xr.open_dataset(tmp_path / "d.h5", engine="clusterh5") as back:
            xr.testing.assert_identical(back.load(), ds.load())
    # blocks that arrive in several dask chunks are assembled before writing
    with xr.open_dataset(path, engine="clusterh5", chunks={}) as ds:
        ds = ds.chunk({"time": 16, "voxel": 100})
        assert len(ds["data"].chunks[3]) > 1
        to_fmristore(ds, tmp_path / "parts.h5")
        with xr.open_dataset(tmp_path / "parts.h5", engine="clusterh5") as back:
            xr.testing.assert_identical(back.load(), ds.load())
    with xr.open_dataset(tmp_path / "new.h5", engine="clusterh5") as new:
        assert new.attrs["fmristore_generation"] == "2026"
        assert new.attrs["fmristore_class"] == "H5ParcellatedMultiScan"
    with h5py.File(tmp_path / "new.h5") as f:
        assert f["scans/beta_summary"].attrs["class"][0] == "H5ParcellatedScanSummary"


def test_true_affine_round_trip(tmp_path: Path) -> None:
    """Origin and rotation survive our writer, our reader and R's formula."""
    affine = np.array(
        [
            [0.0, -2.0, 0.0, 90.0],
            [2.0, 0.0, 0.0, -126.0],
            [0.0, 0.0, 2.5, -72.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    mask = np.zeros((4, 5, 3), dtype=bool)
    mask[1:3, 1:4, :] = True
    n = int(mask.sum())
    src = write_experiment(
        tmp_path / "a.h5",
        mask=mask,
        cluster_map=np.arange(n) % 3 + 1,
        runs={"rest": np.arange(n * 4, dtype=np.float32).reshape(n, 4)},
        affine=affine,
    )
    with xr.open_dataset(src, engine="clusterh5") as ds:
        np.testing.assert_allclose(ds.attrs["affine"].reshape(4, 4), affine)
        to_fmristore(ds, tmp_path / "b.h5")
        with xr.open_dataset(tmp_path / "b.h5", engine="clusterh5") as back:
            xr.testing.assert_identical(back.load(), ds.load())
    with h5py.File(tmp_path / "b.h5") as f:
        assert float(f["header/qoffset_x"][()]) == 90.0
        assert float(f["header/qoffset_z"][()]) == -72.0


def test_bad_views_are_refused(tmp_path: Path) -> None:
    with xr.open_dataset(fmristore_path("vignette"), engine="clusterh5") as ds:
        ds = ds.load()
    three = xr.concat([ds, ds.isel(run=[0])], dim="run")
    dup = three.assign_coords(run=["a", "b", "a"])
    with pytest.raises(ValueError, match=r"duplicate scan names \['a'\] in the"):
        to_fmristore(dup, tmp_path / "x.h5")
    bad_name = ds.assign_coords(run=["a/b", "c"])
    with pytest.raises(ValueError, match="not a valid HDF5 name"):
        to_fmristore(bad_name, tmp_path / "x.h5")
    no_geo = ds.drop_vars("i")
    with pytest.raises(ValueError, match="'i'"):
        to_fmristore(no_geo, tmp_path / "x.h5")
    with pytest.raises(TypeError):
        to_fmristore(ds["data"], tmp_path / "x.h5")  # type: ignore[arg-type]
    to_fmristore(ds, tmp_path / "x.h5")
    with pytest.raises(FileExistsError):
        to_fmristore(ds, tmp_path / "x.h5")
    to_fmristore(ds, tmp_path / "x.h5", overwrite=True)


def test_stream_of_blocks_and_lazy_summary(tmp_path: Path) -> None:
    mask = np.ones((2, 2, 1), dtype=bool)
    blocks = iter([(2, np.full((2, 3), 2.0)), (1, np.full((2, 3), 1.0))])
    calls = []

    def summary() -> np.ndarray:
        calls.append(1)
        return np.array([[1.0, 1, 1], [2, 2, 2]])

    out = write_experiment(
        tmp_path / "s.h5",
        mask=mask,
        cluster_map=[1, 2, 1, 2],
        runs={"r": Run(data=blocks, summary=summary)},
    )
    assert calls == [1]
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["scans/r/clusters/cluster_2"][()], 2.0)
        assert f["scans/r/clusters_summary/summary_data"].shape == (2, 3)
    with pytest.raises(ValueError, match="given twice"):
        write_experiment(
            tmp_path / "t.h5",
            mask=mask,
            cluster_map=[1, 2, 1, 2],
            runs={"r": iter([(1, np.zeros((2, 3))), (1, np.zeros((2, 3)))])},
        )
    with pytest.raises(ValueError, match="no data for cluster ids \\[2\\]"):
        write_experiment(
            tmp_path / "t.h5",
            mask=mask,
            cluster_map=[1, 2, 1, 2],
            runs={"r": iter([(1, np.zeros((2, 3)))])},
        )
    assert not (tmp_path / "t.h5").exists()


def test_subsets_of_a_view_write_consistent_files(tmp_path: Path) -> None:
    """Selecting clusters or time points still writes a valid experiment."""
    with xr.open_dataset(fmristore_path("irregular"), engine="clusterh5") as ds:
        ds = ds.load()
    # the selected clusters have at most 203 voxels: drop the extra padding
    sub = ds.sel(cluster=[5, 17]).isel(time=slice(0, 20), voxel=slice(0, 203))
    out = to_fmristore(sub, tmp_path / "sub.h5")
    with xr.open_dataset(out, engine="clusterh5") as back:
        back = back.load()
    assert back["cluster"].values.tolist() == [5, 17]
    assert back["n_time"].values.tolist() == [20, 20, 20, 20]
    assert int(back["n_voxels"].sum()) == 210
    # values equal; mask positions are renumbered for the smaller mask
    for name in ("data", "summary", "i", "j", "k", "label", "TR"):
        np.testing.assert_array_equal(back[name].values, sub[name].values)
    assert back["mask_index"].values.max() == 209


def test_dask_run_is_computed_in_one_graph(tmp_path: Path) -> None:
    """A dask task shared by every cluster runs once, not once per cluster."""
    computed: list[tuple[int, ...]] = []

    def counted(block: np.ndarray) -> np.ndarray:
        if block.size:  # not dask's zero-size meta probe
            computed.append(block.shape)
        return block

    path = fmristore_path("irregular")
    with xr.open_dataset(path, engine="clusterh5", group="zeta_full", chunks={}) as ds:
        whole = ds["data"].data.rechunk(-1).map_blocks(counted, dtype=np.float32)
        out = to_fmristore(ds.assign(data=(ds["data"].dims, whole)), tmp_path / "o.h5")
        assert computed == [(484, 37)]  # one block holding all 4 clusters
        with xr.open_dataset(out, engine="clusterh5", group="zeta_full") as back:
            np.testing.assert_array_equal(back["data"].values, ds["data"].values)


def test_lazy_run_is_read_one_cluster_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without dask, the writer reads each cluster's rows, never the whole run."""
    from xarray_clusterh5.fmristore.arrays import RunVoxelArray

    rows_read: list[int] = []
    original = RunVoxelArray._raw_indexing_method

    def spy(self, key):  # type: ignore[no-untyped-def]
        out = original(self, key)
        rows_read.append(out.shape[0])
        return out

    monkeypatch.setattr(RunVoxelArray, "_raw_indexing_method", spy)
    path = fmristore_path("irregular")
    with xr.open_dataset(path, engine="clusterh5", group="zeta_full") as ds:
        out = to_fmristore(ds, tmp_path / "o.h5")
        assert sorted(rows_read) == [1, 7, 203, 273]  # the clusters' voxels
        with xr.open_dataset(out, engine="clusterh5", group="zeta_full") as back:
            xr.testing.assert_identical(back["data"], ds["data"])


def test_failed_dask_write_stops_producer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error while writing stops the dask producer thread; no file is left."""
    import threading

    from xarray_clusterh5._hdf5 import chunk_write as _chunkio

    calls = {"n": 0}
    original = _chunkio.ChunkWriter.write

    def failing(self, dset, array, **kw):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("disk full")
        return original(self, dset, array, **kw)

    monkeypatch.setattr(_chunkio.ChunkWriter, "write", failing)
    with (
        xr.open_dataset(
            fmristore_path("irregular"), engine="clusterh5", chunks={}
        ) as ds,
        pytest.raises(OSError, match="disk full") as excinfo,
    ):
        # threads=1: a queue of 2 blocks, so the producer is still blocked
        # on the queue when the writer fails
        to_fmristore(ds, tmp_path / "x.h5", threads=1)
    # even while the traceback (and so the writer's frames) is still alive
    assert excinfo.traceback
    alive = [t for t in threading.enumerate() if t.name == "clusterh5-dask-store"]
    assert alive == []
    assert list(tmp_path.iterdir()) == []


def test_header_written_back_follows_affine_form(tmp_path: Path) -> None:
    """The header form comes from the ``affine_form`` attribute, not from text."""
    affine = np.diag([2.0, 2.0, 2.5, 1.0])
    affine[:3, 3] = [90.0, -126.0, -72.0]
    mask = np.ones((3, 2, 2), dtype=bool)
    src = write_experiment(
        tmp_path / "q.h5",
        mask=mask,
        cluster_map=np.arange(12) % 2 + 1,
        runs={"rest": np.ones((12, 3), dtype=np.float32)},
        affine=affine,
        write_srow=False,
    )
    with xr.open_dataset(src, engine="clusterh5") as ds:
        ds = ds.load()
    assert ds.attrs["affine_form"] == "quaternion"
    # text that mentions srow does not change the decision
    ds.attrs["affine_source"] = "srow_x/y/z, not quatern"
    expected = {"quaternion": (False, 90.0), "srow": (True, 90.0), "none": (False, 0.0)}
    for form, (has_srow, qoffset_x) in expected.items():
        out = tmp_path / f"{form}.h5"
        to_fmristore(ds.assign_attrs(affine_form=form), out)
        with h5py.File(out) as f:
            assert ("srow_x" in f["header"]) is has_srow, form
            assert float(f["header/qoffset_x"][()]) == qoffset_x, form
        with xr.open_dataset(out, engine="clusterh5") as back:
            assert back.attrs["affine_form"] == form
    # a view without the attribute (made by hand) keeps its affine in srow_*
    del ds.attrs["affine_form"]
    to_fmristore(ds, tmp_path / "plain.h5")
    with xr.open_dataset(tmp_path / "plain.h5", engine="clusterh5") as back:
        assert back.attrs["affine_form"] == "srow"
        np.testing.assert_allclose(back.attrs["affine"].reshape(4, 4), affine)
    with pytest.raises(ValueError, match="affine_form"):
        to_fmristore(ds.assign_attrs(affine_form="sform"), tmp_path / "bad.h5")


def test_failed_dask_compute_raises_its_own_error(tmp_path: Path) -> None:
    """An error inside the dask graph reaches the caller as it was raised."""

    def broken(block: np.ndarray) -> np.ndarray:
        if block.size:  # not dask's zero-size meta probe
            raise ArithmeticError("upstream task failed")
        return block

    path = fmristore_path("irregular")
    with xr.open_dataset(path, engine="clusterh5", group="zeta_full", chunks={}) as ds:
        bad = ds["data"].data.map_blocks(broken, dtype=np.float32)
        with pytest.raises(ArithmeticError, match="upstream task failed"):
            to_fmristore(ds.assign(data=(ds["data"].dims, bad)), tmp_path / "o.h5")
    assert list(tmp_path.iterdir()) == []


def test_padded_view_n_voxels_must_match_padding(tmp_path: Path) -> None:
    with xr.open_dataset(fmristore_path("vignette"), engine="clusterh5") as ds:
        ds = ds.load()
    n = ds["n_voxels"].values.copy()
    n[0] -= 1
    with pytest.raises(ValueError, match="n_voxels disagrees with the i/j/k"):
        to_fmristore(ds.assign_coords(n_voxels=("cluster", n)), tmp_path / "x.h5")
    assert not (tmp_path / "x.h5").exists()
    # without the coordinate the padding alone says how many voxels there are
    out = to_fmristore(ds.drop_vars("n_voxels"), tmp_path / "y.h5")
    with xr.open_dataset(out, engine="clusterh5") as back:
        xr.testing.assert_identical(back.load(), ds)


def test_views_without_geometry_or_time_are_refused(tmp_path: Path) -> None:
    path = fmristore_path("vignette")
    with xr.open_dataset(path, engine="clusterh5") as ds:
        ds = ds.load()
    with xr.open_dataset(path, engine="clusterh5", group="rest_run") as run:
        run = run.load()
    with xr.open_datatree(path, engine="clusterh5") as dt:
        dt = dt.load()
    no_shape = dt.copy()
    del no_shape.attrs["volume_shape"]
    for view in (ds.drop_attrs(deep=False), run.drop_attrs(deep=False), no_shape):
        with pytest.raises(ValueError, match="attribute 'volume_shape' is missing"):
            to_fmristore(view, tmp_path / "x.h5")
    with pytest.raises(ValueError, match="lacks the dimension 'time'"):
        to_fmristore(ds.isel(time=0), tmp_path / "x.h5")
    assert list(tmp_path.iterdir()) == []


def test_padded_view_without_flags_writes_what_it_holds(tmp_path: Path) -> None:
    """Without has_data/has_summary, every run has the variables the view holds."""
    with xr.open_dataset(fmristore_path("vignette"), engine="clusterh5") as ds:
        ds = ds.load()
    plain = ds.drop_vars(["has_data", "has_summary"])
    out = to_fmristore(plain, tmp_path / "p.h5")
    with xr.open_dataset(out, engine="clusterh5") as back:
        back = back.load()
    assert back["has_data"].values.tolist() == [True, True]
    assert back["has_summary"].values.tolist() == [True, True]
    np.testing.assert_array_equal(back["data"].values, ds["data"].values)
    # mask positions follow from i/j/k when mask_index is not there to check
    out = to_fmristore(ds.drop_vars("mask_index"), tmp_path / "m.h5")
    with xr.open_dataset(out, engine="clusterh5") as back:
        xr.testing.assert_identical(back.load(), ds)
    out = to_fmristore(plain.drop_vars("summary"), tmp_path / "d.h5")
    with h5py.File(out) as f:
        assert sorted(f["scans/rest_run"]) == ["clusters", "metadata"]


def test_cluster_metadata_without_its_id_column_takes_the_cluster_ids(
    tmp_path: Path,
) -> None:
    # fmristore's cluster_meta needs cluster_id; a view whose metadata
    # coordinates lost it gets the cluster index's ids
    with xr.open_dataset(fmristore_path("vignette"), engine="clusterh5") as ds:
        ds = ds.load()
    out = to_fmristore(ds.drop_vars("cluster_id"), tmp_path / "p.h5")
    with xr.open_dataset(out, engine="clusterh5") as back:
        back = back.load()
    xr.testing.assert_identical(back, ds)
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["clusters/cluster_meta/cluster_id"], [1, 2, 3])


def test_inconsistent_views_are_refused_by_name(tmp_path: Path) -> None:
    path = fmristore_path("vignette")
    with xr.open_dataset(path, engine="clusterh5") as ds:
        ds = ds.load()
    with xr.open_dataset(path, engine="clusterh5", group="rest_run") as run:
        run = run.load()
    out = tmp_path / "x.h5"

    def refused(view: xr.Dataset, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            to_fmristore(view, out)
        assert not out.exists()

    # voxel indices: inside the volume, padding (-1) only after the voxels
    for axis, bad in (("i", 10), ("j", -2), ("k", 5)):
        v = ds[axis].values.copy()
        v[0, 0] = bad
        refused(
            ds.assign_coords({axis: (ds[axis].dims, v)}),
            "voxel indices i/j/k fall outside volume_shape",
        )
    v = run["k"].values.copy()
    v[3] = 5
    refused(run.assign_coords(k=("voxel", v)), "fall outside volume_shape")
    gap = {c: ds[c].values.copy() for c in "ijk"}
    for c in "ijk":
        gap[c][0, 0] = -1  # a hole before the cluster's voxels
    refused(
        ds.assign_coords({c: (ds[c].dims, gap[c]) for c in "ijk"}).drop_vars(
            "n_voxels"
        ),
        r"padding \(-1\) must come after the voxels of each cluster",
    )
    # flags and variables must agree, and a run must hold something
    refused(ds.drop_vars("data"), "run 'rest_run' has_data but there is no 'data'")
    refused(
        ds.drop_vars("summary"),
        "run 'motor_run' has_summary but there is no 'summary'",
    )
    refused(
        ds.drop_vars(["data", "summary", "has_data", "has_summary"]),
        "run 'motor_run' has neither data nor summary",
    )
    refused(run.drop_vars("data"), "scan 'rest_run' has neither data nor summary")
    # the cluster coordinate must list exactly the clusters of the voxels
    refused(
        run.drop_indexes(["cluster", "voxel_cluster"]).assign_coords(
            cluster=("cluster", [1, 2, 4])
        ),
        "cluster ids of the 'cluster' coordinate differ from 'voxel_cluster'",
    )


@pytest.mark.parametrize("view", ["padded", "run"])
def test_round_trip_in_a_volume_taller_than_deep(tmp_path: Path, view: str) -> None:
    # y longer than z: within a cluster, a voxel at (0, 11, 0) precedes one at
    # (0, 0, 1) in mask order (x fastest, then y, then z), whatever z's size
    shape = (3, 12, 2)
    labels = np.zeros(shape, dtype=np.int32)
    labels[:, :, :] = 7
    labels[0, 0, 0] = 0
    labels[2, 5:, 1] = 9
    rng = np.random.default_rng(3)
    n = int((labels > 0).sum())
    src = write_experiment(
        tmp_path / "src.h5",
        mask=labels,
        runs={"a": rng.normal(size=(n, 4)).astype("f4")},
    )
    group = {"padded": None, "run": "a"}[view]
    with xr.open_dataset(src, engine="clusterh5", group=group) as ds:
        ds = ds.load()
    out = to_fmristore(ds, tmp_path / "out.h5")
    with xr.open_dataset(out, engine="clusterh5", group=group) as back:
        xr.testing.assert_identical(back.load(), ds)
    with h5py.File(src) as a, h5py.File(out) as b:
        for name in ("mask", "cluster_map", "scans/a/clusters/cluster_7"):
            np.testing.assert_array_equal(a[name][()], b[name][()])


def test_run_view_with_voxels_shuffled_within_a_cluster(tmp_path: Path) -> None:
    # the writer puts each cluster's voxels back in mask order: a view whose
    # rows of a cluster are shuffled (yet span the same range) is written as
    # the unshuffled one (the rows [0, 1, 3, 2, ...] are not a slice)
    labels = np.full((3, 12, 2), 7, dtype=np.int32)
    labels[2, 5:, 1] = 9
    n = int((labels > 0).sum())
    values = np.arange(n * 4, dtype="f4").reshape(n, 4)
    src = write_experiment(tmp_path / "src.h5", mask=labels, runs={"a": values})
    with xr.open_dataset(src, engine="clusterh5", group="a") as ds:
        ds = ds.load()
    rng = np.random.default_rng(0)
    for swap in ([2, 3], [0, 64 - 1], list(rng.permutation(64)[:6])):
        perm = np.arange(n)
        perm[sorted(swap)] = perm[swap]
        out = to_fmristore(ds.isel(voxel=perm), tmp_path / "o.h5", overwrite=True)
        with xr.open_dataset(out, engine="clusterh5", group="a") as back:
            xr.testing.assert_identical(back.load(), ds)
