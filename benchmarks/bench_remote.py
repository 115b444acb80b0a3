"""Benchmark reading an fmristore file over HTTP with 20 ms per request.

Serves ``benchmarks/_work/`` from the tests' ranged HTTP server on 127.0.0.1
(``tests/_http_range_server.py``) with a fixed latency per request, and
times, in one run, with the number of requests each needs:

* ours over HTTP: ``xr.open_dataset(url, engine="clusterh5")`` (open),
  one cluster across all runs, all voxel data (padded view);
* ours on the local file: the same three;
* h5py reading the URL through fsspec with its defaults (5 MiB read-ahead
  block), without our cache: what a user gets from
  ``h5py.File(fsspec.open(url).open())``.

The file has the read benchmark's layout (4 full runs x 100 clusters x 300
TRs, gzip 4, R's chunks) on a smaller ellipsoid: ~87 MB.

Usage::

    python benchmarks/bench_remote.py                 # 20 ms per request
    python benchmarks/bench_remote.py --latency 0.05  # a slower link

Targets (issue 11), at 20 ms per request: open <= 0.5 s, one cluster
across runs <= 0.5 s, all voxel data <= 2 s, values equal to a local read.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import xarray as xr

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench_read as br  # noqa: E402

from tests._http_range_server import Served, serve  # noqa: E402

ENGINE = "clusterh5"
CONFIG = br.Config(radii=(20.0, 20.0, 12.5), n_summary=0)
TARGETS = {"open": 0.5, "one cluster, all runs": 0.5, "all voxel data": 2.0}


def timed(served: Served | None, fn: Callable[[], Any]) -> tuple[Any, float, int]:
    """Result, wall seconds and requests made by ``fn``."""
    if served is not None:
        served.reset()
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, served.count() if served else 0


def ours(source: str, served: Served | None, cid: int) -> dict[str, Any]:
    """Open, one cluster across runs, all voxel data: (value, s, requests)."""
    ds, t_open, n_open = timed(
        served, lambda: xr.open_dataset(source, engine=ENGINE, cache=False)
    )
    try:
        one = timed(served, lambda: ds["data"].sel(cluster=cid).values)
        every = timed(served, lambda: ds["data"].values)
    finally:
        ds.close()
    return {
        "open": (None, t_open, n_open),
        "one cluster, all runs": one,
        "all voxel data": every,
    }


def h5py_fsspec(url: str, served: Served, cid: int) -> dict[str, Any]:
    """The same through h5py on ``fsspec.open(url)`` with fsspec's defaults."""
    import fsspec

    def open_() -> Any:
        fh = fsspec.open(url, "rb").open()
        f = h5py.File(fh, "r")
        br.raw_open_file(f)
        return fh, f

    (fh, f), t_open, n_open = timed(served, open_)
    try:
        scans = br.full_scans(f)
        one = timed(
            served,
            lambda: [f["scans"][s]["clusters"][f"cluster_{cid}"][...] for s in scans],
        )
        every = timed(served, lambda: br.raw_all(f))
    finally:
        f.close()
        fh.close()
    return {
        "open": (None, t_open, n_open),
        "one cluster, all runs": one,
        "all voxel data": every,
    }


def check_equal(remote: dict[str, Any], local: dict[str, Any]) -> None:
    for case in ("one cluster, all runs", "all voxel data"):
        np.testing.assert_array_equal(remote[case][0], local[case][0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.020)
    parser.add_argument("--repeat", type=int, default=2, help="best of N")
    args = parser.parse_args(argv)
    path = br.file_for(CONFIG, "remote_87mb.h5")
    size = path.stat().st_size
    with h5py.File(path, "r") as f:
        ids, counts = np.unique(f["cluster_map"][()], return_counts=True)
    cid = int(ids[np.argsort(counts)[len(counts) // 2]])
    load0 = os.getloadavg()[0]
    with serve(br.WORK, latency=args.latency) as served:
        url = f"{served.url}/{path.name}"
        runs: dict[str, list[dict[str, Any]]] = {"ours": [], "local": [], "h5py": []}
        for _ in range(args.repeat):
            runs["ours"].append(ours(url, served, cid))
            runs["local"].append(ours(str(path), None, cid))
            runs["h5py"].append(h5py_fsspec(url, served, cid))
        check_equal(runs["ours"][0], runs["local"][0])
    print(
        f"{path.name}: {size / 1e6:.0f} MB, {len(ids)} clusters; "
        f"{args.latency * 1000:.0f} ms per request; best of {args.repeat}\n"
    )
    head = (
        f"{'case':<24}{'ours http s':>12}{'req':>5}{'local s':>9}"
        f"{'h5py+fsspec s':>15}{'req':>5}{'target':>9}"
    )
    print(head)
    print("-" * len(head))
    missed = []
    for case, target in TARGETS.items():
        best = {k: min(r[case][1] for r in v) for k, v in runs.items()}
        req = {k: v[0][case][2] for k, v in runs.items()}
        ok = best["ours"] <= target
        missed += [] if ok else [case]
        print(
            f"{case:<24}{best['ours']:12.3f}{req['ours']:5d}{best['local']:9.3f}"
            f"{best['h5py']:15.3f}{req['h5py']:5d}{'<= ' + str(target):>9}"
            f" {'PASS' if ok else 'FAIL'}"
        )
    print(
        f"\nvalues equal to the local read; load average {load0:.1f} at start, "
        f"{os.getloadavg()[0]:.1f} at end on {os.cpu_count()} CPUs"
    )
    print("all targets met" if not missed else f"missed: {', '.join(missed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
