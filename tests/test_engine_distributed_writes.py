"""Writes from Datasets whose dask graph runs on a process cluster.

HDF5 files are written by the calling process only; the workers compute the
blocks. The files must equal those written with the local scheduler.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import h5py
import numpy as np
import pytest
import xarray as xr

from tests._helpers import MODELARRAY, assert_same_file, fmristore_path
from xarray_clusterh5.fmristore.to_h5 import to_fmristore
from xarray_clusterh5.modelarray import cohort

distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


def _content(path: Path) -> dict[str, Any]:
    """Every object's attributes, and every dataset's values and storage."""
    out: dict[str, Any] = {}

    def visit(name: str, obj: h5py.HLObject) -> None:
        attrs = {k: np.asarray(v).tolist() for k, v in obj.attrs.items()}
        entry: dict[str, Any] = {"attrs": attrs}
        if isinstance(obj, h5py.Dataset):
            entry.update(
                dtype=str(obj.dtype),
                chunks=obj.chunks,
                compression=obj.compression,
                values=obj[()],
            )
        out[name] = entry

    with h5py.File(path, "r") as f:
        visit("/", f)
        f.visititems(visit)
    return out


def _assert_same_content(a: Path, b: Path) -> None:
    got, want = _content(a), _content(b)
    assert sorted(got) == sorted(want)
    for name, entry in want.items():
        for key, value in entry.items():
            if key == "values":
                np.testing.assert_array_equal(got[name][key], value, err_msg=name)
            else:
                assert got[name][key] == value, (name, key)


@pytest.mark.parametrize("view", ["padded", "tree"])
def test_to_fmristore_on_process_workers_equals_local(
    client: Any, tmp_path: Path, view: str
) -> None:
    path = fmristore_path("irregular")
    opener = xr.open_datatree if view == "tree" else xr.open_dataset
    with (
        dask.config.set(scheduler="synchronous"),
        opener(path, engine="clusterh5", chunks={}) as obj,
    ):
        local = to_fmristore(obj, tmp_path / "local.h5")
    with opener(path, engine="clusterh5", chunks={}) as obj:  # client is default
        assert dask.base.get_scheduler() == client.get
        remote = to_fmristore(obj, tmp_path / "distributed.h5")
    _assert_same_content(remote, local)


def test_to_modelarray_on_process_workers_equals_local(
    client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(MODELARRAY / "cohort")
    ds = cohort.from_cohort("cohort_long_two_scalars.csv", batch_size=2)
    with dask.config.set(scheduler="synchronous"):
        local = tmp_path / "local.h5"
        cohort.to_modelarray(ds, local, progress=False)
    assert dask.base.get_scheduler() == client.get
    remote = tmp_path / "distributed.h5"
    cohort.to_modelarray(ds, remote, progress=False)
    assert_same_file(remote, local)
    # and the values are the cohort's
    with xr.open_dataset(remote, engine="clusterh5") as back:
        for name in ds.data_vars:
            np.testing.assert_array_equal(back[name].values, ds[name].values)
