"""Layouts R files take besides the common one: compound cluster metadata,
summary-only experiments, UTF-8 strings, files without class attributes."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import xarray as xr

import xarray_clusterh5  # noqa: F401
from tests._helpers import FMRISTORE, fmristore_expected, fmristore_path
from xarray_clusterh5.fmristore.to_h5 import to_fmristore


def _copy(tmp_path: Path, stem: str) -> Path:
    out = tmp_path / f"{stem}.h5"
    shutil.copy(fmristore_path(stem), out)
    out.chmod(0o644)
    return out


def test_compound_cluster_meta_reads_like_the_group(tmp_path: Path) -> None:
    # fmristore's reader also accepts one compound dataset (its tests write one)
    path = _copy(tmp_path, "irregular")
    with h5py.File(path, "r+") as f:
        group = f["clusters/cluster_meta"]
        ids = group["cluster_id"][()]
        labels = [v.decode() for v in group["label"][()]]
        volume = group["volume_mm3"][()]
        del f["clusters/cluster_meta"]
        table = np.zeros(
            4,
            dtype=[
                ("cluster_id", "<i4"),
                ("label", h5py.string_dtype()),
                ("volume_mm3", "<f8"),
            ],
        )
        order = [3, 1, 0, 2]  # rows in the caller's order, not sorted by id
        table["cluster_id"] = ids[order]
        table["label"] = [labels[i] for i in order]
        table["volume_mm3"] = volume[order]
        f["clusters/cluster_meta"] = table
    expected = fmristore_expected("irregular")["cluster_metadata"]["columns"]
    with xr.open_dataset(path, engine="clusterh5") as ds:
        got = ds.clusterh5.cluster_metadata()
        dtypes = {k: ds[k].attrs["fmristore_dtype"] for k in ("label", "volume_mm3")}
        back = to_fmristore(ds, tmp_path / "back.h5")
    # each column keeps its type when written back (as a group of columns)
    assert dtypes == {"label": "str", "volume_mm3": "<f8"}
    with h5py.File(back) as f:
        meta = f["clusters/cluster_meta"]
        assert meta["volume_mm3"].dtype == np.dtype("<f8")
        assert h5py.check_string_dtype(meta["label"].dtype) is not None
        np.testing.assert_array_equal(meta["volume_mm3"][()], volume)
    assert list(got.columns) == ["cluster_id", "label", "volume_mm3"]
    assert got["label"].tolist() == expected["label"]
    np.testing.assert_array_equal(got["cluster_id"], expected["cluster_id"])
    np.testing.assert_array_equal(got["volume_mm3"], expected["volume_mm3"])


def test_summary_only_experiment(tmp_path: Path) -> None:
    path = _copy(tmp_path, "vignette_head")
    with h5py.File(path, "r+") as f:
        del f["scans/rest_run"]
        f["scans"].attrs["summary_only"] = np.array([1], dtype=np.uint8)
    expected = np.loadtxt(
        FMRISTORE / "vignette_head.expected.summary.motor_run.csv", delimiter=","
    )
    with xr.open_dataset(path, engine="clusterh5", chunks={}) as ds:
        assert "data" not in ds
        assert ds.summary.dims == ("run", "cluster", "time")
        np.testing.assert_array_equal(
            ds.clusterh5.summary_matrix("motor_run").values, expected.astype("f4")
        )
    with xr.open_datatree(path, engine="clusterh5") as dt:
        assert list(dt.children) == ["motor_run"]
        np.testing.assert_array_equal(
            dt["motor_run"]["summary"].values.T, expected.astype("f4")
        )


def test_classless_scans_decided_by_their_datasets(tmp_path: Path) -> None:
    # R's "prefer" rule: no class attribute, the datasets present decide
    path = _copy(tmp_path, "vignette")
    with h5py.File(path, "r+") as f:
        for scan in ("rest_run", "motor_run"):
            del f[f"scans/{scan}"].attrs["class"]
        del f["scans"].attrs["summary_only"]
    with xr.open_dataset(path, engine="clusterh5") as ds:
        assert ds.has_data.values.tolist() == [False, True]
        assert ds.has_summary.values.tolist() == [True, False]


def test_utf8_strings(tmp_path: Path) -> None:
    # hdf5r flags strings ASCII but stores R's UTF-8 bytes unchanged
    path = _copy(tmp_path, "vignette")
    with h5py.File(path, "r+") as f:
        del f["scans/rest_run/metadata/task"]
        ascii_vlen = h5py.string_dtype("ascii")
        f["scans/rest_run/metadata"].create_dataset(
            "task", data="répos".encode(), dtype=ascii_vlen
        )
    with xr.open_dataset(path, engine="clusterh5") as ds:
        assert ds.clusterh5.scan_metadata()["rest_run"]["task"] == "répos"


def _replace_columns(path: Path, columns: dict[str, object]) -> None:
    with h5py.File(path, "r+") as f:
        del f["clusters/cluster_meta"]
        for name, values in columns.items():
            f[f"clusters/cluster_meta/{name}"] = values


def test_cluster_meta_without_cluster_id_is_in_cluster_order(tmp_path: Path) -> None:
    path = _copy(tmp_path, "irregular")
    _replace_columns(path, {"label": np.array([b"a", b"b", b"c", b"d"], dtype=object)})
    with xr.open_dataset(path, engine="clusterh5") as ds:
        assert ds["label"].values.tolist() == ["a", "b", "c", "d"]


def test_cluster_meta_with_float_ids_and_missing_rows(tmp_path: Path) -> None:
    # one row (allow_missing_rows=True writes such files), ids stored as doubles
    path = _copy(tmp_path, "irregular")
    _replace_columns(
        path,
        {
            "cluster_id": np.array([17.0]),
            "volume_mm3": np.array([131.25]),
            "rank": np.array([3], dtype=np.int32),
            "label": np.array([b"parcel_17"], dtype=object),
        },
    )
    with xr.open_dataset(path, engine="clusterh5") as ds:
        assert ds["cluster"].values.tolist() == [2, 5, 17, 40]
        np.testing.assert_array_equal(
            ds["volume_mm3"].values, [np.nan, np.nan, 131.25, np.nan]
        )
        assert ds["label"].values.tolist() == ["", "", "parcel_17", ""]
        # the table keeps the missing integers as NaN, not cast to garbage
        table = ds.clusterh5.cluster_metadata()
    np.testing.assert_array_equal(table["rank"], [np.nan, np.nan, 3, np.nan])
    assert table["rank"].dtype == np.float64


def test_cluster_table_keeps_the_file_dtypes() -> None:
    # a column turned float in memory comes back in the type R stored
    with xr.open_dataset(fmristore_path("irregular"), engine="clusterh5") as ds:
        floated = ds.assign_coords(is_cortical=ds["is_cortical"].astype(np.float64))
        table = floated.clusterh5.cluster_metadata()
        assert table["is_cortical"].dtype == np.int8
        np.testing.assert_array_equal(table["is_cortical"], ds["is_cortical"].values)


def test_short_pixdim_gives_the_spacing(tmp_path: Path) -> None:
    # pixdim needs only its first four values (the voxel sizes follow the qfac)
    path = _copy(tmp_path, "vignette")
    with h5py.File(path, "r+") as f:
        del f["header/pixdim"]
        f["header/pixdim"] = np.array([1.0, 3.0, 2.5, 2.0])
    with xr.open_dataset(path, engine="clusterh5") as ds:
        assert ds.attrs["spacing"].tolist() == [3.0, 2.5, 2.0]
    with h5py.File(path, "r+") as f:
        del f["header/pixdim"]
    with xr.open_dataset(path, engine="clusterh5") as ds:  # NIfTI's default
        assert ds.attrs["spacing"].tolist() == [1.0, 1.0, 1.0]


def test_qfac_zero_means_one(tmp_path: Path) -> None:
    # the NIfTI rule: a qfac of 0 (old writers) is read as 1
    path = _copy(tmp_path, "vignette")
    with xr.open_dataset(path, engine="clusterh5") as ds:
        expected = ds.attrs["affine"]
    with h5py.File(path, "r+") as f:
        assert float(f["header/qfac"][()]) == 1.0
        f["header/qfac"][()] = 0.0
    with xr.open_dataset(path, engine="clusterh5") as ds:
        np.testing.assert_array_equal(ds.attrs["affine"], expected)


def test_scan_classes_decide_the_generation(tmp_path: Path) -> None:
    # 2025 scan classes under a 2026 root class: the scans decide
    path = _copy(tmp_path, "irregular")
    with h5py.File(path, "r+") as f:
        f.attrs["fmristore_class"] = np.array([b"H5ParcellatedMultiScan"], dtype=object)
    with xr.open_dataset(path, engine="clusterh5") as ds:
        assert ds.attrs["fmristore_generation"] == "2025"
