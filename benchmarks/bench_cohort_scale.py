"""Benchmark ModelArray conversion and reading as cohorts grow to 10,000.

For cohorts of 91,282-greyordinate dscalar files (``bench_modelarray``'s
generator: HCP fsLR-32k-like structures; 365 KB each, 3.7 GB at 10,000),
each step runs as a child process so its peak RSS is its own:

* ``clusterh5 to-modelarray --cohort-file cohort.csv`` (the CLI);
* ``from_cohort("cohort.csv").clusterh5.to_modelarray(...)`` (Python);
* reading the resulting ModelArray file element chunk by element chunk
  (every subject, ~32 MiB of values at a time: 2,048 greyordinates at 4,096
  subjects, 838 at 10,000; through the engine).

It prints wall time, time per subject and peak RSS, and the RSS ratio to the
smallest cohort (target: at most 1.5x; time linear). Cohorts are written
under ``benchmarks/_work/`` and deleted afterwards unless ``--keep``.

Usage::

    python benchmarks/bench_cohort_scale.py                 # 200 and 1,000
    python benchmarks/bench_cohort_scale.py --with-10000    # and 10,000 (~4 GB disk)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_modelarray as bm  # noqa: E402

PY_CONVERT = (
    "import sys, xarray_clusterh5 as x; "
    "ds = x.from_cohort('cohort.csv'); "
    "ds.clusterh5.to_modelarray(sys.argv[1], progress=False)"
)
PY_READ = """
import sys, numpy as np, xarray as xr
with xr.open_dataset(sys.argv[1], engine="clusterh5") as ds:
    name = next(iter(ds.data_vars))
    var = ds[name]
    dim = var.dims[-1]
    n = var.sizes[dim]
    step = max(256, 2**25 // (4 * var.size // n))  # ~32 MiB of values per block
    total = 0.0
    for a in range(0, n, step):
        block = var.isel({dim: slice(a, a + step)}).values
        total += float(np.nansum(block, dtype=np.float64))
    print(total, file=sys.stderr)
"""


def run_steps(folder: Path, n: int) -> dict[str, dict[str, Any]]:
    """The three steps on one cohort, each measured in a child process."""
    out: dict[str, dict[str, Any]] = {}
    cli_h5, py_h5 = folder / "cli.h5", folder / "py.h5"
    for p in (cli_h5, py_h5):
        p.unlink(missing_ok=True)
    ours = [sys.executable, "-m", "xarray_clusterh5"]
    out["to-modelarray (CLI)"] = bm.measure(
        [
            *ours,
            "to-modelarray",
            "--cohort-file",
            "cohort.csv",
            "--output",
            str(cli_h5),
        ],
        folder,
    )
    out["from_cohort + to_modelarray"] = bm.measure(
        [sys.executable, "-c", PY_CONVERT, str(py_h5)], folder
    )
    out["read by element chunks"] = bm.measure(
        [sys.executable, "-c", PY_READ, str(cli_h5)], folder
    )
    for p in (cli_h5, py_h5):
        p.unlink(missing_ok=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[200, 1000])
    parser.add_argument("--with-10000", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the cohorts")
    args = parser.parse_args(argv)
    sizes = sorted(set(args.sizes) | ({10000} if args.with_10000 else set()))
    load0 = os.getloadavg()[0]
    results: dict[int, dict[str, dict[str, Any]]] = {}
    for n in sizes:
        t0 = time.perf_counter()
        folder = bm.make_cohort(n)
        print(f"cohort of {n}: ready in {time.perf_counter() - t0:.0f} s", flush=True)
        try:
            results[n] = run_steps(folder, n)
        finally:
            if not args.keep:
                shutil.rmtree(folder)
        for step, r in results[n].items():
            per = r["wall"] / n * 1000
            print(
                f"  {step:<30}{r['wall']:8.2f} s {per:7.2f} ms/subject "
                f"{r['maxrss_mb']:7.0f} MB peak RSS",
                flush=True,
            )
    base = sizes[0]
    print(f"\npeak RSS relative to {base} subjects (target <= 1.5x); time per subject:")
    for step in results[base]:
        cells = []
        for n in sizes:
            r = results[n][step]
            ratio = r["maxrss_mb"] / results[base][step]["maxrss_mb"]
            cells.append(f"{n}: {ratio:4.2f}x, {r['wall'] / n * 1000:5.2f} ms")
        print(f"  {step:<30}" + " | ".join(cells))
    print(
        f"\nload average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end "
        f"on {os.cpu_count()} CPUs"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
