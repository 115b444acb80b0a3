"""Chunk locations kept by the lazy arrays while their file stays open.

A second read of the same cluster datasets builds its windows from the
``ChunkTable``s of the first one, without an HDF5 call; the tables are
forgotten when the file manager reopens the file, and never pickled.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings

from xarray_clusterh5._hdf5 import chunk_read
from xarray_clusterh5.fmristore import arrays, read
from xarray_clusterh5.fmristore.write import write_experiment

N_CLUSTERS, N_TIME = 12, 40


def _experiment(path: Path, seed: int, **kw: object) -> np.ndarray:
    """A gzip file of 12 clusters (3 to 14 voxels), one full run; its data in
    the run view's voxel order (cluster by cluster)."""
    rng = np.random.default_rng(seed)
    sizes = np.arange(3, 3 + N_CLUSTERS)
    cluster_map = np.repeat(np.arange(1, N_CLUSTERS + 1), sizes).astype(np.int32)
    rng.shuffle(cluster_map)
    mask = np.zeros((10, 10, 10), dtype=bool)
    mask.flat[: cluster_map.size] = True
    data = rng.normal(100, 5, size=(cluster_map.size, N_TIME)).astype(np.float32)
    write_experiment(
        path,
        mask=mask,
        cluster_map=cluster_map,
        runs={"rest": {"data": data}},
        chunks={"time": 16},
        **kw,
    )
    return data[np.argsort(cluster_map, kind="stable")]


def _lazy(ds: xr.Dataset) -> arrays.RunVoxelArray:
    lazy = ds["data"].variable._data
    while not isinstance(lazy, arrays.RunVoxelArray):
        lazy = lazy.array
    return lazy


def _no_lookup(*args: object, **kwargs: object) -> None:
    raise AssertionError("an HDF5 lookup on a read whose chunks are known")


def test_second_read_makes_no_hdf5_lookup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "exp.h5"
    expected = _experiment(path, 0)
    with xr.open_dataset(path, engine="clusterh5", group="rest", cache=False) as ds:
        np.testing.assert_array_equal(ds["data"].values, expected)
        monkeypatch.setattr(read, "cluster_dataset_id", _no_lookup)
        monkeypatch.setattr(chunk_read, "locate_chunks", _no_lookup)
        np.testing.assert_array_equal(ds["data"].values, expected)
        # a window inside the known datasets too
        window = ds["data"][5:40, 3:29].values
    np.testing.assert_array_equal(window, expected[5:40, 3:29])


def test_reopened_file_forgets_the_tables(tmp_path: Path) -> None:
    # the file is replaced while closed: the old byte offsets would read garbage
    path = tmp_path / "exp.h5"
    first = _experiment(path, 1, compression=1)
    ds = xr.open_dataset(path, engine="clusterh5", group="rest", cache=False)
    try:
        np.testing.assert_array_equal(ds["data"].values, first)
        ds.close()
        second = _experiment(path, 2, compression=9, overwrite=True)
        assert not np.array_equal(first, second)
        # the manager reopens the new file on the next read
        np.testing.assert_array_equal(ds["data"].values, second)
    finally:
        _lazy(ds).manager.close()  # Dataset.close() closes only once


def test_tables_do_not_pickle(tmp_path: Path) -> None:
    path = tmp_path / "exp.h5"
    expected = _experiment(path, 3)
    with xr.open_dataset(path, engine="clusterh5", group="rest", cache=False) as ds:
        np.testing.assert_array_equal(ds["data"].values, expected)  # fills tables
        lazy = _lazy(ds)
        tables = lazy._tables
        assert len(tables._tables) == N_CLUSTERS
        clone = pickle.loads(pickle.dumps(lazy))
        assert clone._tables is not tables
        assert clone._tables._tables == {}
        key = (slice(None), slice(None))
        np.testing.assert_array_equal(clone._raw_indexing_method(key), expected)
        clone.manager.close()


@pytest.fixture(scope="module")
def one_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    path = tmp_path_factory.mktemp("tables") / "exp.h5"
    return path, _experiment(path, 4)


windows = st.tuples(
    st.integers(0, 102), st.integers(1, 102), st.integers(0, 39), st.integers(1, 40)
)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(keys=st.lists(windows, min_size=1, max_size=6))
def test_windows_read_twice_equal_numpy(
    one_file: tuple[Path, np.ndarray],
    keys: list[tuple[int, int, int, int]],
) -> None:
    path, expected = one_file
    with xr.open_dataset(path, engine="clusterh5", group="rest", cache=False) as ds:
        for _ in range(2):  # the second pass reads from the kept tables
            for v0, dv, t0, dt in keys:
                v, t = slice(v0, v0 + dv), slice(t0, t0 + dt)
                got = ds["data"][v, t].values
                np.testing.assert_array_equal(got, expected[v, t])
