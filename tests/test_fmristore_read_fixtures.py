"""Every value R fmristore read back from its own files, reproduced through the engine.

The expected values come from the fixtures' ``*.expected.*`` files, written by
R (see tests/data/fmristore/README.md); nothing here is computed by our code.
"""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pandas as pd
import pytest
import xarray as xr

import xarray_clusterh5  # noqa: F401  (accessor)
from tests._helpers import FMRISTORE, fmristore_expected, fmristore_path
from xarray_clusterh5.fmristore.read import read_experiment


def _csv(stem: str, kind: str) -> np.ndarray:
    return np.loadtxt(FMRISTORE / f"{stem}.expected.{kind}.csv", delimiter=",", ndmin=2)


def _series_csv(stem: str, scan: str) -> np.ndarray:
    frame = pd.read_csv(FMRISTORE / f"{stem}.expected.series.{scan}.csv", header=None)
    return frame.to_numpy(dtype=np.float32)  # [n_time, n_mask], columns mask 1..N


def _summary_csv(stem: str, scan: str) -> np.ndarray:
    frame = pd.read_csv(FMRISTORE / f"{stem}.expected.summary.{scan}.csv", header=None)
    return frame.to_numpy(dtype=np.float32)


def test_scan_names_order_and_kinds(fixture_name: str) -> None:
    exp = fmristore_expected(fixture_name)
    with xr.open_dataset(fmristore_path(fixture_name), engine="clusterh5") as ds:
        assert ds.clusterh5.scan_names == exp["scan_names"]
        assert ds.clusterh5.n_scans == exp["n_scans"]
        for run, info in exp["runs"].items():
            sub = ds.sel(run=run)
            assert int(sub.n_time) == info["n_time"]
            is_summary = info["class"].endswith("Summary")
            assert bool(sub.has_summary) is is_summary
            assert bool(sub.has_data) is (not is_summary)
        # vector metadata (irregular's slice_timing) adds no dimension
        assert tuple(ds.sizes) == ("run", "cluster", "voxel", "time")


def test_geometry_matches_r(fixture_name: str) -> None:
    exp = fmristore_expected(fixture_name)
    with xr.open_dataset(fmristore_path(fixture_name), engine="clusterh5") as ds:
        assert list(ds.attrs["volume_shape"]) == exp["mask"]["dim"]
        np.testing.assert_allclose(ds.attrs["spacing"], exp["mask"]["spacing"])
        # what R reads: the header bug leaves diag(spacing) and origin 0
        np.testing.assert_allclose(ds.clusterh5.affine, exp["mask"]["trans_rows"])
        assert "unknown" in ds.attrs["affine_source"]
        mask = ds.clusterh5.mask()
        linear = np.flatnonzero(mask.values.ravel(order="F")) + 1
        np.testing.assert_array_equal(
            linear, exp["mask"]["in_mask_linear_index_1based"]
        )
        np.testing.assert_array_equal(
            linear, _csv(fixture_name, "mask_linear_index").ravel()
        )
        np.testing.assert_array_equal(ds.cluster.values, exp["clusters"]["unique_ids"])
        sizes = {
            int(c): int(n)
            for c, n in zip(ds.cluster.values, ds.n_voxels.values, strict=False)
        }
        assert sizes == {int(k): v for k, v in exp["clusters"]["sizes"].items()}


def test_cluster_map_and_mask_order(fixture_name: str) -> None:
    exp = fmristore_expected(fixture_name)
    cmap = _csv(fixture_name, "cluster_map").ravel().astype(int)
    np.testing.assert_array_equal(cmap, exp["clusters"]["cluster_map"])
    with xr.open_dataset(
        fmristore_path(fixture_name), engine="clusterh5", group="/"
    ) as root:
        order = root.mask_index.values
        ours = np.empty_like(cmap)
        ours[order] = root.voxel_cluster.values
        np.testing.assert_array_equal(ours, cmap)
        # first voxel of each cluster (1-based mask index) as R reports it
        for cid, first in exp["clusters"]["first_mask_index_of_cluster"].items():
            block = root.sel(cluster=int(cid))
            assert int(block.mask_index.values.min()) + 1 == first
        ijk = np.stack([root.i.values, root.j.values, root.k.values], axis=1)[
            np.argsort(order)
        ]
        for m, ijk1 in zip(
            exp["probe_mask_indices"], exp["probe_voxel_ijk_1based"], strict=False
        ):
            np.testing.assert_array_equal(ijk[m - 1] + 1, ijk1)


def test_every_voxel_series_of_every_full_run(fixture_name: str) -> None:
    exp = fmristore_expected(fixture_name)
    full_runs = [
        r for r, i in exp["runs"].items() if not i["class"].endswith("Summary")
    ]
    for run in full_runs:
        expected = _series_csv(fixture_name, run)
        n_mask = expected.shape[1]
        with xr.open_dataset(
            fmristore_path(fixture_name), engine="clusterh5", group=run
        ) as ds:
            got = np.empty((ds.sizes["time"], n_mask), dtype=np.float32)
            got[:, ds.mask_index.values] = ds.data.values.T
        np.testing.assert_array_equal(got, expected)
        with xr.open_dataset(fmristore_path(fixture_name), engine="clusterh5") as ds:
            series = ds.clusterh5.series(np.arange(n_mask), run=run).values
        np.testing.assert_array_equal(series, expected)


def test_probe_series_and_concat(fixture_name: str) -> None:
    exp = fmristore_expected(fixture_name)
    probes = np.asarray(exp["probe_mask_indices"]) - 1
    with xr.open_dataset(fmristore_path(fixture_name), engine="clusterh5") as ds:
        for run, block in exp["series"].items():
            got = ds.clusterh5.series(probes, run=run)
            assert list(got.shape) == block["shape"]
            np.testing.assert_allclose(got.values, block["values_rows"], rtol=1e-6)
        concat = exp["series_concat"]
        got = ds.clusterh5.series_concat(
            np.asarray(concat["mask_indices"]) - 1, runs=concat["run_names"]
        )
        assert list(got.shape) == concat["shape"]
        np.testing.assert_allclose(got.values, concat["values_rows"], rtol=1e-6)
        # by default every run with voxel data
        full = ds.run.values[ds.has_data.values].tolist()
        every = ds.clusterh5.series_concat(probes)
        xr.testing.assert_identical(every, ds.clusterh5.series_concat(probes, full))
        ijk = exp["series_ijk"]
        got = ds.clusterh5.series([ijk["equals_mask_index"] - 1], run=ijk["run"])
        np.testing.assert_allclose(got.values[:, 0], ijk["values"], rtol=1e-6)


def test_padding_overhead(fixture_name: str) -> None:
    """Padded cells of the runs with voxel data over their real values."""
    with xr.open_dataset(fmristore_path(fixture_name), engine="clusterh5") as ds:
        full = ds["has_data"].values
        real = int(ds["n_voxels"].sum()) * int(ds["n_time"].values[full].sum())
        cells = ds.sizes["cluster"] * ds.sizes["voxel"] * ds.sizes["time"]
        want = cells * int(full.sum()) / real
        assert ds.attrs["padding_overhead"] == pytest.approx(want, rel=1e-12)
        assert ds.attrs["padding_overhead"] >= 1.0


def test_summaries(fixture_name: str) -> None:
    exp = fmristore_expected(fixture_name)
    for run, block in exp["summary"].items():
        expected = _summary_csv(fixture_name, run)
        np.testing.assert_allclose(expected, block["values_rows"], rtol=1e-6)
        with xr.open_dataset(fmristore_path(fixture_name), engine="clusterh5") as ds:
            got = ds.clusterh5.summary_matrix(run)
            np.testing.assert_array_equal(got.values, expected)
            np.testing.assert_array_equal(
                got.cluster.values, exp["runs"][run]["cluster_ids"]
            )
        with xr.open_dataset(
            fmristore_path(fixture_name), engine="clusterh5", group=run
        ) as one:
            np.testing.assert_array_equal(one.summary.values.T, expected)
    # by default every run with a summary, in scan order, stacked in time
    with xr.open_dataset(fmristore_path(fixture_name), engine="clusterh5") as ds:
        runs = ds.run.values[ds.has_summary.values].tolist()
        got = ds.clusterh5.matrix_concat()
        parts = [ds.clusterh5.summary_matrix(r) for r in runs]
        np.testing.assert_array_equal(
            got.values, np.concatenate([p.values for p in parts], axis=-1)
        )
        labels = np.repeat(runs, [p.sizes["time"] for p in parts])
        np.testing.assert_array_equal(got["run"].values, labels)
        # a run without a summary is refused, not read as NaN padding
        for run in ds.run.values[~ds.has_summary.values].tolist():
            with pytest.raises(ValueError, match=rf"scan '{run}' has no summary"):
                ds.clusterh5.summary_matrix(run)
            # and so is the run view of that scan
            path = fmristore_path(fixture_name)
            with (
                xr.open_dataset(path, engine="clusterh5", group=run) as one,
                pytest.raises(ValueError, match=rf"scan '{run}' has no summary"),
            ):
                one.clusterh5.summary_matrix()


def test_values_4d(fixture_name: str) -> None:
    exp = fmristore_expected(fixture_name)
    with xr.open_dataset(fmristore_path(fixture_name), engine="clusterh5") as ds:
        volumes = {}
        for point in exp["values_4d"]["points"]:
            run = point["run"]
            if run not in volumes:
                volumes[run] = ds.clusterh5.to_volume(run)
            got = volumes[run][
                point["i"] - 1, point["j"] - 1, point["k"] - 1, point["t"] - 1
            ]
            np.testing.assert_allclose(got, point["value_via_series"], rtol=1e-6)
            if point.get("value") is not None:
                np.testing.assert_allclose(got, point["value"], rtol=1e-6)


def test_scan_metadata_types(fixture_name: str) -> None:
    exp = fmristore_expected(fixture_name)
    with xr.open_dataset(fmristore_path(fixture_name), engine="clusterh5") as ds:
        meta = ds.clusterh5.scan_metadata()
    for run, block in exp["scan_metadata"].items():
        assert list(meta[run]) == block["keys_in_order"]
        for key, spec in block["values"].items():
            value = meta[run][key]
            r_type = spec["r_typeof"]
            if r_type == "character":
                assert isinstance(value, str)
                assert value == spec["value"]
            else:
                # R doubles are float64; integers and logicals (int8) are ints
                kind = "f" if r_type == "double" else "i"
                assert np.asarray(value).dtype.kind == kind
                np.testing.assert_allclose(np.asarray(value), spec["value"])
            assert np.size(value) == spec["length"]


def test_cluster_metadata(fixture_name: str) -> None:
    exp = fmristore_expected(fixture_name)["cluster_metadata"]
    with xr.open_dataset(fmristore_path(fixture_name), engine="clusterh5") as ds:
        table = ds.clusterh5.cluster_metadata()
    assert list(table.columns) == exp["column_order"]
    for column, values in exp["columns"].items():
        got = table[column].to_numpy()
        if exp["column_r_typeof"][column] == "character":
            assert got.tolist() == values
        else:
            np.testing.assert_array_equal(got, values)
            assert got.dtype.kind in (
                "i" if exp["column_r_typeof"][column] == "integer" else "f"
            )


@pytest.mark.parametrize("view", ["padded", "run", "tree"])
def test_generations_read_identically(view: str) -> None:
    # the 2025 and 2026 files hold the same data; only class strings differ
    for stem in ("vignette", "irregular"):
        legacy, head = fmristore_path(stem), fmristore_path(f"{stem}_head")
        if view == "tree":
            with (
                xr.open_datatree(legacy, engine="clusterh5") as a,
                xr.open_datatree(head, engine="clusterh5") as b,
            ):
                for name in a.children:
                    xr.testing.assert_equal(a[name].to_dataset(), b[name].to_dataset())
            continue
        group = None if view == "padded" else fmristore_expected(stem)["scan_names"][-1]
        with (
            xr.open_dataset(legacy, engine="clusterh5", group=group) as a,
            xr.open_dataset(head, engine="clusterh5", group=group) as b,
        ):
            xr.testing.assert_equal(a, b)
            assert a.attrs["fmristore_generation"] == "2025"
            assert b.attrs["fmristore_generation"] == "2026"
            assert b.attrs["fmristore_class"] == "H5ParcellatedMultiScan"


def test_file_description_is_immutable() -> None:
    with h5py.File(fmristore_path("vignette")) as f:
        exp = read_experiment(f)
    with pytest.raises(dataclasses.FrozenInstanceError):
        exp.path = "other.h5"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        exp.scans[0].n_time = 1  # type: ignore[misc]


def test_cluster_index_repr_and_series_bounds() -> None:
    # the index names its clusters and every voxel of the file (not the
    # first cluster's); mask indices outside the mask are refused, 0-based
    path = fmristore_path("irregular")
    with xr.open_dataset(path, engine="clusterh5", group="alpha_full") as run:
        index = run.xindexes["cluster"]
        assert repr(index) == "<ClusterIndex (4 clusters, 484 voxels)>"
    with xr.open_dataset(path, engine="clusterh5") as ds:
        for bad in ([484], [-1], [0, 999]):
            with pytest.raises(IndexError, match=r"outside 0\.\.483 \(0-based"):
                ds.clusterh5.series(bad, run="alpha_full")
        assert ds.clusterh5.series([483], run="alpha_full").sizes["voxel"] == 1
