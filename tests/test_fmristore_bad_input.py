"""Bad files give a Python exception that names the file and the problem."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr

from tests._helpers import fmristore_path
from xarray_clusterh5 import ClusterH5Error
from xarray_clusterh5.fmristore.read import read_experiment
from xarray_clusterh5.fmristore.write import write_experiment


def _copy(tmp_path: Path, stem: str = "irregular") -> Path:
    out = tmp_path / f"{stem}.h5"
    shutil.copy(fmristore_path(stem), out)
    out.chmod(0o644)
    return out


def _load_all(path: Path) -> None:
    with xr.open_dataset(path, engine="clusterh5") as ds:
        ds.load()


def test_not_hdf5(tmp_path: Path) -> None:
    path = tmp_path / "notes.h5"
    path.write_text("subject,age\n")
    with pytest.raises(ClusterH5Error, match=r"notes\.h5: not an HDF5 file"):
        xr.open_dataset(path, engine="clusterh5")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothere\.h5"):
        xr.open_dataset(tmp_path / "nothere.h5", engine="clusterh5")


def test_truncated(tmp_path: Path) -> None:
    path = _copy(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ClusterH5Error, match=r"irregular\.h5: .*truncated or corrupt"):
        _load_all(path)


def test_hdf5_without_layout(tmp_path: Path) -> None:
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(4)
    with pytest.raises(ClusterH5Error, match=r"other\.h5: .*clustered layout"):
        xr.open_dataset(path, engine="clusterh5")


@pytest.mark.parametrize("cls", ["H5ParcellatedScan", "H5ParcellatedScanSummary"])
def test_single_scan_file_is_refused(tmp_path: Path, cls: str) -> None:
    """A file whose root says single scan is not read as an experiment."""
    path = _copy(tmp_path, "irregular_head")
    with h5py.File(path, "r+") as f:
        f.attrs["fmristore_class"] = np.array([cls], dtype=h5py.string_dtype())
    with pytest.raises(
        ClusterH5Error,
        match=rf"irregular_head\.h5: is a single-scan fmristore file \({cls}\)",
    ):
        xr.open_dataset(path, engine="clusterh5")


def _edit(path: Path, change: Callable[[h5py.File], None]) -> None:
    with h5py.File(path, "r+") as f:
        change(f)


def _replace(f: h5py.File, name: str, value: np.ndarray, **kw: object) -> None:
    del f[name]
    f.create_dataset(name, data=value, **kw)


CORRUPTIONS: dict[str, tuple[Callable[[h5py.File], None], str]] = {
    "cluster_map_length": (
        lambda f: _replace(f, "cluster_map", f["cluster_map"][:-3]),
        r"/cluster_map has 481 entries but /mask has 484 voxels",
    ),
    "cluster_map_dtype": (
        lambda f: _replace(f, "cluster_map", f["cluster_map"][()].astype("f8")),
        r"/cluster_map has dtype float64, not integer",
    ),
    "missing_cluster": (
        lambda f: f.__delitem__("scans/alpha_full/clusters/cluster_17"),
        r"scan 'alpha_full' lacks cluster datasets \['cluster_17'\]",
    ),
    "summary_shape": (
        lambda f: _replace(
            f,
            "scans/beta_summary/clusters_summary/summary_data",
            np.zeros((3, 23), "f4"),
        ),
        r"summary_data has shape \(3, 23\), expected \(n_clusters=4, n_time\)",
    ),
    "voxel_coords_shape": (
        lambda f: _replace(f, "voxel_coords", f["voxel_coords"][:, :-1]),
        r"/voxel_coords has shape \(3, 483\), expected \(3, N\)",
    ),
    "mask_shape": (
        lambda f: _replace(f, "mask", f["mask"][:, :, :-1]),
        r"/mask has h5py shape \(9, 11, 12\)",
    ),
    "class_without_data": (
        lambda f: f.__delitem__("scans/beta_summary/clusters_summary"),
        r"scan 'beta_summary' is a H5ClusterRunSummary but has no",
    ),
    "header": (
        lambda f: _replace(f, "header/dim", np.array([3, 13, 11, 9], "i4")),
        r"/header/dim must start with 4",
    ),
    "cluster_id_not_integer": (
        lambda f: _replace(
            f, "clusters/cluster_meta/cluster_id", np.array([2, 5.5, 17, 40])
        ),
        r"/clusters/cluster_meta/cluster_id is not integer",
    ),
    "cluster_id_infinite": (
        lambda f: _replace(
            f, "clusters/cluster_meta/cluster_id", np.array([2, np.inf, 17, 40])
        ),
        r"/clusters/cluster_meta/cluster_id is not integer",
    ),
    "pixdim_short": (
        lambda f: _replace(f, "header/pixdim", np.array([1.0, 2.0, 2.0])),
        r"/header/pixdim too short: \[1.0, 2.0, 2.0\]",
    ),
    "mask_not_a_dataset": (
        lambda f: (f.__delitem__("mask"), f.create_group("mask")),
        r"no /mask dataset",
    ),
    # R believes a stored n_time: one that contradicts the data is refused
    "n_time_metadata": (
        lambda f: f.create_dataset("scans/alpha_full/metadata/n_time", data=40),
        r"cluster_5 has shape \(64, 203\), expected \(n_time=40, n_voxels=203\)",
    ),
    "n_time_attribute": (
        lambda f: f["scans/alpha_full"].attrs.create("n_time", [40]),
        r"cluster_5 has shape \(64, 203\), expected \(n_time=40, n_voxels=203\)",
    ),
    "header_without_dim": (
        lambda f: f.__delitem__("header/dim"),
        r"no /header/dim: not an fmristore clustered file",
    ),
    # the cluster of the first mask voxel gives n_time: it must be a dataset
    "probe_not_a_dataset": (
        lambda f: (
            f.__delitem__("scans/zeta_full/clusters/cluster_5"),
            f.create_group("scans/zeta_full/clusters/cluster_5"),
        ),
        r"missing dataset /scans/zeta_full/clusters/cluster_5$",
    ),
    "metadata_complex": (
        lambda f: f.create_dataset("scans/alpha_full/metadata/phase", data=1 + 2j),
        r"/scans/alpha_full/metadata/phase has unsupported dtype complex128",
    ),
    "n_time_summary": (
        lambda f: f.create_dataset("scans/beta_summary/metadata/n_time", data=20),
        r"summary_data has 23 time points, the scan's voxel data 20",
    ),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_layout_fails_at_open(tmp_path: Path, case: str) -> None:
    change, message = CORRUPTIONS[case]
    path = _copy(tmp_path)
    _edit(path, change)
    with pytest.raises(ClusterH5Error, match=message) as info:
        _load_all(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("shape", "dtype", "message"),
    [
        ((37, 200), "f4", r"cluster_17 has shape \(37, 200\), expected \(n_time=37"),
        ((7, 37), "f4", r"cluster_17 has shape \(7, 37\)"),
        ((37, 7), "S4", r"cluster_17 has dtype \|S4"),
    ],
)
def test_bad_cluster_dataset_fails_when_read(
    tmp_path: Path, shape: tuple[int, int], dtype: str, message: str
) -> None:
    # shapes of cluster datasets are checked lazily, when read: never garbage
    path = _copy(tmp_path)
    _edit(
        path,
        lambda f: _replace(
            f, "scans/zeta_full/clusters/cluster_17", np.zeros(shape, dtype=dtype)
        ),
    )
    with xr.open_dataset(path, engine="clusterh5", group="zeta_full") as ds:
        ds.sel(cluster=2).load()  # other clusters still read
        with pytest.raises(ClusterH5Error, match=message) as info:
            ds.sel(cluster=17).load()
        assert str(path) in str(info.value)


def test_bad_probe_dataset_fails_at_open(tmp_path: Path) -> None:
    # n_time comes from the cluster of the first mask voxel (as in R): checked at open
    path = _copy(tmp_path)
    _edit(
        path,
        lambda f: _replace(f, "scans/zeta_full/clusters/cluster_5", np.zeros((37, 9))),
    )
    with pytest.raises(ClusterH5Error, match=r"cluster_5 has shape \(37, 9\)"):
        xr.open_dataset(path, engine="clusterh5")


def test_header_dim_needs_only_the_volume_sizes(tmp_path: Path) -> None:
    # the time size (dim[4]) is not read from the header: a 4-value dim opens
    path = _copy(tmp_path, "irregular")
    with xr.open_dataset(path, engine="clusterh5") as ds:
        want = ds.load()
    _edit(path, lambda f: _replace(f, "header/dim", np.array([4, 13, 11, 9], "i4")))
    with xr.open_dataset(path, engine="clusterh5") as ds:
        xr.testing.assert_identical(ds.load(), want)
    _edit(path, lambda f: _replace(f, "header/dim", np.array([4, 13, 11], "i4")))
    with pytest.raises(ClusterH5Error, match=r"irregular\.h5: /header/dim must"):
        xr.open_dataset(path, engine="clusterh5")


def test_n_time_comes_from_the_cluster_of_the_first_mask_voxel(
    tmp_path: Path,
) -> None:
    path = tmp_path / "first.h5"
    write_experiment(
        path,
        mask=np.ones((2, 2, 1), dtype=bool),
        cluster_map=[2, 1, 1, 2],  # the first mask voxel is in cluster 2
        runs={"a": np.arange(20.0).reshape(4, 5)},
    )
    _edit(path, lambda f: _replace(f, "scans/a/clusters/cluster_1", np.zeros((7, 2))))
    with xr.open_dataset(path, engine="clusterh5", group="a") as ds:
        assert ds.sizes["time"] == 5
        expected = [[0.0, 1, 2, 3, 4], [15, 16, 17, 18, 19]]
        np.testing.assert_array_equal(ds.sel(cluster=2).data, expected)
        with pytest.raises(ClusterH5Error, match=r"cluster_1 has shape \(7, 2\)"):
            ds.sel(cluster=1).load()


def test_first_mask_voxel_in_cluster_zero_is_the_probe(tmp_path: Path) -> None:
    # id 0 (written with nonpositive_ids="warn") is probed like any other id
    path = tmp_path / "zero.h5"
    with pytest.warns(UserWarning, match=r"cluster ids \[-3, 0\] are <= 0"):
        write_experiment(
            path,
            mask=np.ones((2, 2, 1), dtype=bool),
            cluster_map=[0, -3, -3, -3],
            runs={"a": np.arange(20.0).reshape(4, 5)},
            nonpositive_ids="warn",
        )
    with xr.open_dataset(path, engine="clusterh5", group="a") as ds:
        assert ds["cluster"].values.tolist() == [-3, 0]
        np.testing.assert_array_equal(ds.sel(cluster=0).data, [[0.0, 1, 2, 3, 4]])
    _edit(path, lambda f: _replace(f, "scans/a/clusters/cluster_0", np.zeros((5, 2))))
    with pytest.raises(
        ClusterH5Error,
        match=r"cluster_0 has shape \(5, 2\), expected \(n_time=5, n_voxels=1\)",
    ):
        xr.open_dataset(path, engine="clusterh5")


def test_external_link_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.h5"
    with h5py.File(secret, "w") as f:
        f["data"] = np.ones((37, 7), "f4")
    path = _copy(tmp_path)
    _edit(path, lambda f: f.__delitem__("scans/zeta_full/clusters/cluster_17"))
    with h5py.File(path, "r+") as f:
        f["scans/zeta_full/clusters/cluster_17"] = h5py.ExternalLink(
            str(secret), "data"
        )
    with (
        xr.open_dataset(path, engine="clusterh5", group="zeta_full") as ds,
        pytest.raises(ClusterH5Error, match=r"external link to .*secret\.h5"),
    ):
        ds.sel(cluster=17).load()


def test_external_link_at_open_is_refused(tmp_path: Path) -> None:
    other = _copy(tmp_path, "vignette")
    path = _copy(tmp_path)
    with h5py.File(path, "r+") as f:
        del f["cluster_map"]
        f["cluster_map"] = h5py.ExternalLink(str(other), "cluster_map")
    with pytest.raises(ClusterH5Error, match="external link"):
        xr.open_dataset(path, engine="clusterh5")


def test_virtual_dataset_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "source.h5"
    with h5py.File(source, "w") as f:
        f["data"] = np.ones((37, 7), "f4")
    path = _copy(tmp_path)
    layout = h5py.VirtualLayout(shape=(37, 7), dtype="f4")
    layout[:] = h5py.VirtualSource(str(source), "data", shape=(37, 7))
    with h5py.File(path, "r+") as f:
        del f["scans/zeta_full/clusters/cluster_17"]
        f.create_virtual_dataset("scans/zeta_full/clusters/cluster_17", layout)
    with (
        xr.open_dataset(path, engine="clusterh5", group="zeta_full") as ds,
        pytest.raises(ClusterH5Error, match="virtual dataset"),
    ):
        ds.sel(cluster=17).load()


def test_unknown_group_and_bad_arguments() -> None:
    path = fmristore_path("irregular")
    with pytest.raises(ClusterH5Error, match="no group 'nope'; scans are"):
        xr.open_dataset(path, engine="clusterh5", group="nope")
    with pytest.raises(TypeError, match="local paths, fsspec URLs and binary file"):
        xr.open_dataset(path.read_bytes(), engine="clusterh5")
    with pytest.raises(TypeError, match="lock must be"):
        xr.open_dataset(path, engine="clusterh5", lock="yes")


def test_one_cluster_file_with_scalar_vectors(tmp_path: Path) -> None:
    # hdf5r writes length-1 vectors as scalars: cluster_ids and metadata columns
    path = tmp_path / "one.h5"
    with h5py.File(fmristore_path("vignette"), "r") as src, h5py.File(path, "w") as f:
        for name in ("mask", "voxel_coords", "header"):
            src.copy(name, f)
        f["cluster_map"] = np.full(108, 7, dtype="i4")
        f["clusters/cluster_ids"] = np.int32(7)
        f["clusters/cluster_meta/cluster_id"] = np.int32(7)
        f["clusters/cluster_meta/name"] = "only"
        f.create_group("scans")
        run = np.arange(100 * 108, dtype="f4").reshape(100, 108)
        f["scans/a/clusters/cluster_7"] = run
        f["scans/a"].attrs["class"] = np.array([b"H5ClusterRun"], dtype=object)
    with xr.open_dataset(path, engine="clusterh5") as ds:
        assert ds.sizes == {"run": 1, "cluster": 1, "voxel": 108, "time": 100}
        np.testing.assert_array_equal(ds.data.values[0, 0], run.T)
        assert ds.clusterh5.cluster_metadata()["name"].tolist() == ["only"]


def test_errors_name_the_path_given_for_an_open_file(tmp_path: Path) -> None:
    # a file opened by the caller (an fsspec URL, say) is named as the caller says
    path = _copy(tmp_path)
    _edit(path, lambda f: f.__delitem__("mask"))
    with h5py.File(path) as f:
        with pytest.raises(ClusterH5Error, match=r"^s3://lab/run\.h5: no /mask"):
            read_experiment(f, "s3://lab/run.h5")
        with pytest.raises(ClusterH5Error, match="no /mask") as info:
            read_experiment(f)
        assert str(info.value).startswith(f"{path}: ")


def test_summary_replaced_by_a_group_after_open(tmp_path: Path) -> None:
    """A summary that stops being a dataset after open is named at read time."""
    path = _copy(tmp_path)
    ds = xr.open_dataset(path, engine="clusterh5", group="beta_summary")
    ds.close()
    name = "scans/beta_summary/clusters_summary/summary_data"
    with h5py.File(path, "r+") as f:
        del f[name]
        f.create_group(name)
    with pytest.raises(
        ClusterH5Error, match=rf"irregular\.h5: missing dataset /{name}$"
    ):
        ds["summary"].load()


@pytest.mark.parametrize("what", ["cluster", "clusters group"])
def test_cluster_data_gone_after_open_is_named(tmp_path: Path, what: str) -> None:
    """A cluster dataset, or its whole group, replaced after open is named."""
    path = _copy(tmp_path)
    ds = xr.open_dataset(path, engine="clusterh5", group="zeta_full")
    ds.close()
    name = "scans/zeta_full/clusters"
    with h5py.File(path, "r+") as f:
        target = f"{name}/cluster_2" if what == "cluster" else name
        del f[target]
        if what == "cluster":
            f.create_group(target)  # a group where the dataset was
        else:
            f.create_dataset(target, data=0)  # a dataset where the group was
    with pytest.raises(
        ClusterH5Error, match=rf"irregular\.h5: missing dataset /{name}/cluster_2$"
    ):
        ds["data"].isel(voxel=slice(0, 5)).load()


def test_read_experiment_refuses_files_without_the_layout(tmp_path: Path) -> None:
    # the file model's own check (the engine sniffs first; direct callers of
    # read_experiment rely on this one)
    from xarray_clusterh5.fmristore.read import read_experiment

    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f["scans/x"] = np.arange(3)  # /scans but no /cluster_map
    with (
        h5py.File(path, "r") as f,
        pytest.raises(ClusterH5Error, match=r"plain\.h5: .*clustered layout"),
    ):
        read_experiment(f)


def test_scan_that_is_a_dataset_is_named(tmp_path: Path) -> None:
    path = tmp_path / "irregular.h5"
    shutil.copy(fmristore_path("irregular"), path)
    with h5py.File(path, "r+") as f:
        del f["scans/alpha_full"]
        f["scans/alpha_full"] = np.arange(3)
    with pytest.raises(ClusterH5Error, match=r"/scans/alpha_full is not a group"):
        xr.open_dataset(path, engine="clusterh5")
