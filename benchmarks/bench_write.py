"""Benchmark writing fmristore clustered files.

Builds the engine issue's benchmark experiment in memory (64x64x40 grid, an
ellipsoid mask of about 41,000 voxels cut into 100 compact k-means-like
clusters, 4 full runs of 300 TRs plus one summary run, float32) and, in one
run, times (best of N, interleaved so background load hits both alike):

* raw serial h5py: the same arrays, one ``create_dataset(data=...)`` per
  cluster per run, R's chunks, gzip 4, maxshape (None, None), plus the small
  datasets;
* ``write_experiment`` (threaded chunk compression + ``write_direct_chunk``)
  from (N, T) arrays in mask order.

Then, in a fresh subprocess, it measures the memory of writing a dask-backed
Dataset (the file just written, opened with ``chunks={}``) with
``to_fmristore``: tracemalloc peak (NumPy buffers are traced) and the growth
of the peak RSS, against the size of one run's data.

Usage::

    python benchmarks/bench_write.py            # full configuration
    python benchmarks/bench_write.py --quick    # small smoke configuration

Targets (issue 3): our writer <= 0.7x raw serial h5py; peak memory of a
dask-backed write < 2x one run's data. References on this machine: R
fmristore 6.56 s, raw serial h5py 4.8 s for the full configuration.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
from bench_read import FULL, QUICK, Config, compact_clusters, ellipsoid_mask

from xarray_clusterh5.fmristore.write import Run, write_experiment


def build(cfg: Config) -> dict:
    """Mask, cluster map (mask order) and run arrays (N, T) float32."""
    rng = np.random.default_rng(cfg.seed)
    # the read benchmark's experiment: ellipsoid mask, compact k-means clusters
    mask = ellipsoid_mask(cfg)
    lin = np.flatnonzero(mask.ravel(order="F"))
    ijk = np.stack(np.unravel_index(lin, cfg.shape, order="F"), axis=1)
    cmap = compact_clusters(ijk, cfg.n_clusters, rng)
    t = np.arange(cfg.n_time, dtype=np.float32)
    runs = []
    for r in range(cfg.n_full):
        # BOLD-like: voxel baseline, a cluster signal, noise (float32 noise
        # compresses about as badly as real data does)
        base = rng.uniform(600, 1400, len(lin)).astype(np.float32)
        signal = 8 * np.sin(t[None, :] / (5 + cmap[:, None] % 7) + r)
        noise = rng.standard_normal((len(lin), cfg.n_time), dtype=np.float32) * 12
        runs.append((base[:, None] + signal + noise).astype(np.float32))
    k = int(cmap.max())
    summary = rng.standard_normal((k, cfg.n_time), dtype=np.float32)
    return {"mask": mask, "cmap": cmap, "runs": runs, "summary": summary}


def write_raw(path: Path, exp: dict, blocks: list[dict[int, np.ndarray]]) -> None:
    """Raw serial h5py: same layout, h5py's own filter pipeline."""
    mask, cmap = exp["mask"], exp["cmap"]
    with h5py.File(path, "w") as f:
        f.create_dataset("mask", data=mask.transpose(2, 1, 0).astype(np.uint8))
        f.create_dataset("cluster_map", data=cmap)
        lin = np.flatnonzero(mask.ravel(order="F"))
        ijk = np.stack(np.unravel_index(lin, mask.shape, order="F")) + 1
        f.create_dataset("voxel_coords", data=ijk.astype(np.int32))
        f.create_dataset("clusters/cluster_ids", data=np.unique(cmap))
        for r, run in enumerate(blocks):
            g = f.create_group(f"scans/run-{r + 1:02d}/clusters")
            for cid, block in run.items():
                t, nc = block.shape
                g.create_dataset(
                    f"cluster_{cid}",
                    data=block,
                    chunks=(min(t, 128), min(nc, 1024)),
                    compression="gzip",
                    compression_opts=4,
                    maxshape=(None, None),
                )
        s = exp["summary"]
        f.create_dataset(
            "scans/summary-01/clusters_summary/summary_data",
            data=s,
            chunks=(min(s.shape[0], 256), min(s.shape[1], 128)),
            compression="gzip",
            compression_opts=4,
            maxshape=(None, None),
        )


def write_ours(path: Path, exp: dict) -> None:
    runs = {f"run-{r + 1:02d}": run for r, run in enumerate(exp["runs"])}
    runs["summary-01"] = Run(summary=exp["summary"])
    write_experiment(
        path, mask=exp["mask"], cluster_map=exp["cmap"], runs=runs, overwrite=True
    )


_MEMORY_SCRIPT = r"""
import json, sys, tracemalloc
import dask.array, dask.threaded, tqdm.auto  # imports are not the writer's memory
import xarray as xr
from xarray_clusterh5.fmristore.to_h5 import to_fmristore

def status(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
src, dst = sys.argv[1], sys.argv[2]
with xr.open_dataset(src, engine="clusterh5", chunks={}) as ds:
    assert ds["data"].chunks is not None
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    rss0 = status("VmRSS")
    tracemalloc.start()
    to_fmristore(ds, dst, overwrite=True)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    hwm = status("VmHWM")
print(json.dumps({"traced_peak": peak, "rss_growth": hwm - rss0, "rss_peak": hwm}))
"""


_NIFTI_SCRIPT = r"""
import json, sys, tracemalloc
import dask.array, dask.threaded, tqdm.auto  # imports are not the writer's memory
from xarray_clusterh5.fmristore.from_nifti import from_nifti
from xarray_clusterh5.fmristore.to_h5 import to_fmristore

def status(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
run, atlas, dst = sys.argv[1:4]
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")
rss0 = status("VmRSS")
tracemalloc.start()
ds = from_nifti({"rest": run}, atlas=atlas)
to_fmristore(ds, dst, overwrite=True)
_, peak = tracemalloc.get_traced_memory()
tracemalloc.stop()
hwm = status("VmHWM")
print(json.dumps({"traced_peak": peak, "rss_growth": hwm - rss0, "rss_peak": hwm}))
"""


def _nifti_memory(tmpdir: Path, exp: dict, run_bytes: int) -> None:
    """from_nifti + to_fmristore of one 4-D run: memory against the run's data."""
    import nibabel as nib

    mask, cmap = exp["mask"], exp["cmap"]
    lin = np.flatnonzero(mask.ravel(order="F"))
    flat = np.zeros(mask.size, dtype=np.int16)
    flat[lin] = cmap
    atlas = flat.reshape(mask.shape, order="F")
    n_time = exp["runs"][0].shape[1]
    vol = np.zeros((mask.size, n_time), dtype=np.float32)
    vol[lin] = exp["runs"][0]
    vol = vol.reshape((*mask.shape, n_time), order="F")
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmpdir / "run.nii")
    nib.save(nib.Nifti1Image(atlas, np.eye(4)), tmpdir / "atlas.nii")
    del vol
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            _NIFTI_SCRIPT,
            str(tmpdir / "run.nii"),
            str(tmpdir / "atlas.nii"),
            str(tmpdir / "nifti.h5"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    mem = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"from_nifti + to_fmristore (one run, .nii): tracemalloc peak "
        f"{mem['traced_peak'] / 2**20:.1f} MiB = "
        f"{mem['traced_peak'] / run_bytes:.2f}x one run; peak RSS growth "
        f"{mem['rss_growth'] / 2**20:.1f} MiB = {mem['rss_growth'] / run_bytes:.2f}x"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small configuration")
    parser.add_argument("--repeat", type=int, default=3, help="timings per writer")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    exp = build(cfg)
    cmap = exp["cmap"]
    ids = np.unique(cmap)
    # raw h5py gets its (T, Nc) blocks ready-made (not timed); ours gathers them
    blocks = [
        {int(c): np.ascontiguousarray(run[cmap == c].T) for c in ids}
        for run in exp["runs"]
    ]
    n_vox = len(cmap)
    run_bytes = n_vox * cfg.n_time * 4
    print(
        f"{cfg.shape} grid, {n_vox} voxels, {len(ids)} clusters, {cfg.n_full} runs x "
        f"{cfg.n_time} TRs + 1 summary run; one run = {run_bytes / 2**20:.1f} MiB; "
        f"{os.cpu_count()} CPUs"
    )
    times: dict[str, list[float]] = {"raw": [], "ours": []}
    cpu: dict[str, list[float]] = {"raw": [], "ours": []}
    with tempfile.TemporaryDirectory(prefix="bench_write_") as tmp:
        tmpdir = Path(tmp)
        for _ in range(args.repeat):
            for name in ("raw", "ours"):
                path = tmpdir / f"{name}.h5"
                path.unlink(missing_ok=True)
                gc.collect()
                t0, c0 = time.perf_counter(), time.process_time()
                if name == "raw":
                    write_raw(path, exp, blocks)
                else:
                    write_ours(path, exp)
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
        sizes = {n: (tmpdir / f"{n}.h5").stat().st_size for n in times}
        raw, ours = min(times["raw"]), min(times["ours"])
        print(f"raw serial h5py : {raw:6.2f} s  (all: {_fmt(times['raw'])})")
        print(f"write_experiment: {ours:6.2f} s  (all: {_fmt(times['ours'])})")
        print(f"ratio ours/raw  : {ours / raw:6.2f}  (target <= 0.70)")
        print(
            f"CPU time        : raw {min(cpu['raw']):.2f} s, ours "
            f"{min(cpu['ours']):.2f} s; load average {os.getloadavg()[0]:.2f} "
            "(other processes competing for the cores slow the threaded writer)"
        )
        print(
            f"file sizes      : raw {sizes['raw'] / 2**20:.1f} MiB, ours "
            f"{sizes['ours'] / 2**20:.1f} MiB"
        )
        del blocks
        gc.collect()
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                _MEMORY_SCRIPT,
                str(tmpdir / "ours.h5"),
                str(tmpdir / "copy.h5"),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        mem = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"dask-backed to_fmristore: tracemalloc peak "
            f"{mem['traced_peak'] / 2**20:.1f} MiB = "
            f"{mem['traced_peak'] / run_bytes:.2f}x one run; peak RSS growth "
            f"{mem['rss_growth'] / 2**20:.1f} MiB = "
            f"{mem['rss_growth'] / run_bytes:.2f}x one run (target < 2x)"
        )
        _nifti_memory(tmpdir, exp, run_bytes)
    return 0


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


if __name__ == "__main__":
    sys.exit(main())
