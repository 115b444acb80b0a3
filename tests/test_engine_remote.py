"""Remote (fsspec URL) and file-object sources: same values as local reads,
few requests, errors that name the URL and never credentials.

Files are served from a threaded HTTP server on 127.0.0.1 that supports
ranged requests and counts them (``tests/_http_range_server.py``).
"""

from __future__ import annotations

import io
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

pytest.importorskip("fsspec")
pytest.importorskip("aiohttp")

from tests._helpers import FMRISTORE, MODELARRAY
from tests._http_range_server import Served, serve
from xarray_clusterh5._hdf5 import remote
from xarray_clusterh5.errors import ClusterH5Error
from xarray_clusterh5.fmristore.write import write_experiment

ENGINE = "clusterh5"
N_RUNS, N_TIME, N_CLUSTERS = 4, 120, 30


def _write_big(path: Path) -> Path:
    """~10 MB: 4 runs x 30 clusters of ~300 voxels x 120 TRs, gzip 4."""
    rng = np.random.default_rng(5)
    mask = np.ones((24, 24, 16), bool)
    n = int(mask.sum())
    cluster_map = np.sort(rng.integers(1, N_CLUSTERS + 1, n)).astype(np.int32)
    runs = {
        f"run-{r + 1}": (rng.normal(1000, 12, (n, N_TIME))).astype(np.float32)
        for r in range(N_RUNS)
    }
    return write_experiment(path, mask=mask, cluster_map=cluster_map, runs=runs)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("served")
    _write_big(root / "big.h5")
    shutil.copy(FMRISTORE / "vignette.h5", root / "vignette.h5")
    (root / "not_hdf5.h5").write_bytes(b"just text, no HDF5 signature here")
    for p in sorted(MODELARRAY.rglob("*.h5"))[:1]:
        shutil.copy(p, root / "modelarray.h5")
    with serve(root) as server:
        yield server


def _counted(served: Served, fn: object) -> tuple[object, int]:
    served.reset()
    out = fn()  # type: ignore[operator]
    return out, served.count()


def test_remote_values_equal_local_with_few_requests(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 64 KiB blocks make this 14 MB file behave like a large one: ~220 blocks
    monkeypatch.setattr(remote, "BLOCK_SIZE", 2**16)
    url = f"{served.url}/big.h5"
    local_path = served.root / "big.h5"
    ds, n_open = _counted(
        served, lambda: xr.open_dataset(url, engine=ENGINE, cache=False)
    )
    assert isinstance(ds, xr.Dataset)
    with ds, xr.open_dataset(local_path, engine=ENGINE) as local:
        # open: the superblock, root objects and one probe per scan
        assert n_open <= 16
        cid = int(local["cluster"][N_CLUSTERS // 2])
        one, n_one = _counted(served, lambda: ds["data"].sel(cluster=cid).values)
        np.testing.assert_array_equal(one, local["data"].sel(cluster=cid).values)
        assert n_one <= 4 * N_RUNS  # group, object header, chunk index, chunk
        every, n_all = _counted(served, lambda: ds["data"].values)
        np.testing.assert_array_equal(every, local["data"].values)
        size = local_path.stat().st_size
        # growing read-ahead: requests for a quarter of the file's blocks at most
        assert n_all <= size // (4 * remote.BLOCK_SIZE)
        assert served.bytes_sent <= 2 * size


def test_remote_run_view_datatree_and_chunks(served: Served) -> None:
    url = f"{served.url}/vignette.h5"
    local = FMRISTORE / "vignette.h5"
    with (
        xr.open_dataset(url, engine=ENGINE, group="rest_run", chunks={}) as run,
        xr.open_dataset(local, engine=ENGINE, group="rest_run") as want,
    ):
        np.testing.assert_array_equal(run["data"].values, want["data"].values)
    with (
        xr.open_datatree(url, engine=ENGINE) as tree,
        xr.open_datatree(local, engine=ENGINE) as want_tree,
    ):
        np.testing.assert_array_equal(
            tree["motor_run"]["summary"].values,
            want_tree["motor_run"]["summary"].values,
        )


def test_remote_dataset_pickles(served: Served) -> None:
    # dask process workers reopen the URL from the pickled file manager
    url = f"{served.url}/vignette.h5"
    with xr.open_dataset(url, engine=ENGINE, chunks={}) as ds:
        back = pickle.loads(pickle.dumps(ds))
        with xr.open_dataset(FMRISTORE / "vignette.h5", engine=ENGINE) as want:
            np.testing.assert_array_equal(back["data"].values, want["data"].values)
        back.close()


def test_modelarray_file_over_http(served: Served) -> None:
    url = f"{served.url}/modelarray.h5"
    with (
        xr.open_dataset(url, engine=ENGINE) as ds,
        xr.open_dataset(served.root / "modelarray.h5", engine=ENGINE) as want,
    ):
        assert list(ds.data_vars) == list(want.data_vars)
        for name in ds.data_vars:
            np.testing.assert_array_equal(ds[name].values, want[name].values)


def test_memory_url_and_file_objects() -> None:
    import fsspec

    raw = (FMRISTORE / "vignette.h5").read_bytes()
    fs = fsspec.filesystem("memory")
    fs.pipe("/clusterh5-test/vignette.h5", raw)
    try:
        with (
            xr.open_dataset(FMRISTORE / "vignette.h5", engine=ENGINE) as want,
            xr.open_dataset("memory://clusterh5-test/vignette.h5", engine=ENGINE) as m,
            open(FMRISTORE / "vignette.h5", "rb") as fh,
            xr.open_dataset(fh, engine=ENGINE) as from_file,
            xr.open_dataset(io.BytesIO(raw), engine=ENGINE) as from_bytes,
        ):
            for ds in (m, from_file, from_bytes):
                np.testing.assert_array_equal(ds["data"].values, want["data"].values)
                np.testing.assert_array_equal(
                    ds["summary"].values, want["summary"].values
                )
    finally:
        fs.rm("/clusterh5-test", recursive=True)


def test_remote_errors_name_the_url_not_credentials(tmp_path: Path) -> None:
    shutil.copy(FMRISTORE / "vignette.h5", tmp_path / "vignette.h5")
    secret = "s3cr3t-token-value"
    with serve(tmp_path, token=secret) as server:
        url = f"{server.url}/vignette.h5"
        good = {"headers": {"Authorization": f"Bearer {secret}"}}
        with xr.open_dataset(url, engine=ENGINE, storage_options=good) as ds:
            assert ds.sizes["run"] == 2
        bad = {"headers": {"Authorization": f"Bearer {secret}-wrong"}}
        with pytest.raises((ClusterH5Error, FileNotFoundError)) as err:
            xr.open_dataset(url, engine=ENGINE, storage_options=bad)
        assert url in str(err.value)
        assert secret not in str(err.value)
        userinfo = url.replace("http://", f"http://user:{secret}@")
        with pytest.raises((ClusterH5Error, FileNotFoundError)) as err:
            xr.open_dataset(userinfo, engine=ENGINE)
        assert secret not in str(err.value)
        assert "127.0.0.1" in str(err.value)


def test_remote_missing_and_not_hdf5(served: Served) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothing-here\.h5"):
        xr.open_dataset(f"{served.url}/nothing-here.h5", engine=ENGINE)
    with pytest.raises(ClusterH5Error, match="no HDF5 signature") as err:
        xr.open_dataset(f"{served.url}/not_hdf5.h5", engine=ENGINE)
    assert err.value.path == f"{served.url}/not_hdf5.h5"
    with pytest.raises(TypeError, match="storage_options"):
        xr.open_dataset(
            FMRISTORE / "vignette.h5", engine=ENGINE, storage_options={"a": 1}
        )


@pytest.fixture
def local_cohort(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, xr.Dataset]:
    """The bundled thickness cohort's table and its Dataset read locally."""
    import pandas as pd

    from xarray_clusterh5.modelarray import cohort

    monkeypatch.chdir(MODELARRAY / "cohort")
    table = pd.read_csv("cohort_thickness.csv")
    return table, cohort.from_cohort("cohort_thickness.csv")


def _served(table: Any, server: Served, path: Path) -> Any:
    """``table`` with its files at ``server``, written to ``path``."""
    table = table.copy()
    table["source_file"] = [f"{server.url}/{s}" for s in table["source_file"]]
    table.to_csv(path, index=False)
    return table


def test_from_cohort_with_remote_source_files(
    tmp_path: Path, local_cohort: tuple[Any, xr.Dataset]
) -> None:
    from xarray_clusterh5.modelarray import cohort

    table, want = local_cohort
    with serve(MODELARRAY / "cohort") as server:
        table = _served(table, server, tmp_path / "remote.csv")
        got = cohort.from_cohort(tmp_path / "remote.csv")
        assert server.count("GET") == len(table)  # each file fetched once, whole
        np.testing.assert_array_equal(got["thickness"].values, want["thickness"].values)
        assert list(got["source_file"].values) == list(table["source_file"])
        table.loc[1, "source_file"] = f"{server.url}/thickness/missing.dscalar.nii"
        table.to_csv(tmp_path / "missing.csv", index=False)
        with pytest.raises(FileNotFoundError, match=r"missing\.dscalar\.nii"):
            cohort.from_cohort(tmp_path / "missing.csv")


def test_from_cohort_storage_options_reach_the_server(
    tmp_path: Path, local_cohort: tuple[Any, xr.Dataset]
) -> None:
    from xarray_clusterh5.modelarray import cohort

    table, want = local_cohort
    secret = "c0hort-s3cr3t"
    with serve(MODELARRAY / "cohort", token=secret) as server:
        table = _served(table, server, tmp_path / "remote.csv")
        with pytest.raises((ClusterH5Error, FileNotFoundError)) as err:
            cohort.from_cohort(tmp_path / "remote.csv")  # no credentials
        assert server.url in str(err.value)
        assert not list(Path(remote._copies_dir.name).glob("*.part"))
        auth = {"headers": {"Authorization": f"Bearer {secret}"}}
        got = cohort.from_cohort(tmp_path / "remote.csv", storage_options=auth)
        np.testing.assert_array_equal(got["thickness"].values, want["thickness"].values)
        bad = {"headers": {"Authorization": f"Bearer {secret}-wrong"}}
        table.loc[0, "source_file"] += "?other"  # not in the download cache
        table.to_csv(tmp_path / "bad.csv", index=False)
        with pytest.raises((ClusterH5Error, FileNotFoundError)) as err:
            cohort.from_cohort(tmp_path / "bad.csv", storage_options=bad)
        assert secret not in str(err.value)
