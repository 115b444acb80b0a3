"""Benchmark many subjects: 50 fmristore files opened as one object.

Writes 50 subject files under ``benchmarks/_work/subjects/`` (the read
benchmark's layout on a smaller grid: one shared mask and 100-cluster map,
2 or 3 runs of 100-140 TRs per subject, gzip 4; ~14 MB each), then reports:

* opening: ``open_subjects`` (geometry checked) and
  ``xr.open_mfdataset(..., combine="nested", concat_dim="subject")`` per
  file, against ``xr.open_dataset`` of each file;
* cluster means of every run of every subject (``data.mean("voxel")``), in
  one process file by file without dask, on dask's threaded scheduler, and
  on a ``dask.distributed`` LocalCluster with two worker processes, with
  one chunk per (subject, run, cluster) and with larger cluster chunks.

Usage::

    python benchmarks/bench_subjects.py
    python benchmarks/bench_subjects.py --subjects 10   # quicker
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask
import numpy as np
import xarray as xr

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_read as br  # noqa: E402

from xarray_clusterh5.subjects import open_subjects  # noqa: E402

ENGINE = "clusterh5"
GRID = {"shape": (40, 40, 28), "radii": (16.0, 16.0, 11.0), "n_clusters": 100}


def subject_files(n: int) -> list[Path]:
    """``n`` subject files sharing one geometry (same seed for the k-means)."""
    out = []
    for i in range(n):
        cfg = br.Config(
            **GRID,  # type: ignore[arg-type]
            n_full=3 if i % 2 else 2,
            n_time=100 + 10 * (i % 5),
            n_summary=0,
            seed=7,  # the clusters come from the seed: one geometry for all
        )
        out.append(br.file_for(cfg, f"subjects/sub-{i + 1:03d}.h5"))
    return out


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def open_rows(paths: list[Path]) -> list[tuple[str, float]]:
    def each() -> None:
        for p in paths:
            xr.open_dataset(p, engine=ENGINE).close()

    def ours() -> None:
        open_subjects(paths).close()

    def mf() -> None:
        xr.open_mfdataset(
            paths, engine=ENGINE, combine="nested", concat_dim="subject", join="outer"
        ).close()

    n = len(paths)
    return [
        ("xr.open_dataset of each file", min(timed(each) for _ in range(3)) / n),
        ("open_subjects (geometry checked)", min(timed(ours) for _ in range(3)) / n),
        ("xr.open_mfdataset nested", min(timed(mf) for _ in range(3)) / n),
    ]


def means_file_by_file(paths: list[Path]) -> np.ndarray:
    """No dask: each file's padded view, ``mean("voxel")``, one after another."""
    out = []
    for p in paths:
        with xr.open_dataset(p, engine=ENGINE) as ds:
            out.append(ds["data"].mean("voxel").values)
    return np.concatenate([m.reshape(-1) for m in out])


def means_stacked(paths: list[Path], chunks: Any, compute: Callable) -> np.ndarray:
    with open_subjects(paths, chunks=chunks) as ds:
        (m,) = compute(ds["data"].mean("voxel"))
        # drop the padding runs a subject lacks, in file order, to compare
        parts = []
        for s in range(ds.sizes["subject"]):
            has = ds["has_data"].isel(subject=s).values.astype(bool)
            parts.append(np.asarray(m)[s][has][..., : ds.sizes["time"]])
        return parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--per-cluster-distributed",
        action="store_true",
        help="also chunks={} on the process cluster (tens of thousands of tasks)",
    )
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    paths = subject_files(args.subjects)
    size = sum(p.stat().st_size for p in paths)
    print(
        f"{len(paths)} subject files, {size / 1e6:.0f} MB "
        f"(ready in {time.perf_counter() - t0:.0f} s)\n",
        flush=True,
    )
    load0 = os.getloadavg()[0]
    print("open, per file:")
    for label, s in open_rows(paths):
        print(f"  {label:<40}{s * 1000:8.1f} ms")

    with xr.open_dataset(paths[0], engine=ENGINE) as one:
        vmax, tmax = one.sizes["voxel"], 140
    per_chunk = vmax * tmax * 4
    configs = [("per (subject, run, cluster): chunks={}", {})]
    for mib in (8, 64):
        n = max(1, min(100, (mib * 2**20) // per_chunk))
        configs.append((f"{n} clusters per chunk (~{mib} MiB)", {"cluster": n}))
    print("\ncluster means of every run of every subject, opening included:")

    def report(label: str, fn: Callable[[], Any]) -> None:
        best = min(timed(fn) for _ in range(args.repeat))
        print(f"  {label:<64}{best:8.2f} s", flush=True)

    report("one process, no dask, file by file", lambda: means_file_by_file(paths))
    with dask.config.set(scheduler="threads"):
        for label, chunks in configs:
            report(
                f"dask threads (2), {label}",
                lambda c=chunks: means_stacked(paths, c, dask.compute),
            )
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):

        def on_cluster(x: Any) -> Any:
            return client.compute([x], sync=True)

        means_stacked(paths[:2], configs[-1][1], on_cluster)  # warm the workers
        for label, chunks in configs[0 if args.per_cluster_distributed else 1 :]:
            report(
                f"distributed 2 procs x 1 thread, {label}",
                lambda c=chunks: means_stacked(paths, c, on_cluster),
            )
    print(
        f"\nload average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end "
        f"on {os.cpu_count()} CPUs"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
