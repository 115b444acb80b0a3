"""Benchmark element-wise ``lm`` against R ModelArray.lm and statsmodels.

1. Makes the timing cohort R ModelArray.lm was timed on (200 subjects x 5,000
   elements, ``make_lm_cohort.py make --n-subjects 200 --n-elements 5000
   --seed 9``, the generator copied in ``tests/data/modelarray/lm``) under
   ``benchmarks/_work/lm`` (gitignored), and fits ``FA ~ age + sex`` with
   ModelArray.lm's defaults: on one core (dask's synchronous scheduler), on
   every core (threads), and through ``clusterh5 lm`` as a child process
   (start-up, fit and write included).
2. Times what a Python user would otherwise write: one statsmodels OLS per
   element, with a formula (``smf.ols(...).fit()``) and with a prebuilt design
   (``sm.OLS(y, X).fit()``), on a subset of elements, extrapolated per element
   (said so in the table), and checks that its numbers agree with ours.
3. Memory: writes a larger cohort (200 subjects x ``--memory-elements``) and
   fits it in child processes with two chunk sizes, reporting each child's peak
   RSS next to the size of the data, to show that memory follows the chunk
   size, not the file.

R's figures come from ``timings.json`` (R 4.2.2, ModelArray 0.1.5, on a
2-core machine with other load; see the fixture README). Everything of ours is
measured in this run; the load average is printed because the machine is
shared.

Usage::

    python benchmarks/bench_lm.py
    python benchmarks/bench_lm.py --repeat 5 --statsmodels-elements 300
    python benchmarks/bench_lm.py --memory-elements 0      # skip the memory part
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / "_work" / "lm"
FIXTURES = REPO / "tests" / "data" / "modelarray" / "lm"
FORMULA = "FA ~ age + sex"
N_SUBJECTS, N_ELEMENTS, SEED = 200, 5000, 9


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def timing_cohort() -> tuple[Path, Path]:
    """The 200 x 5,000 cohort of timings.json (made once)."""
    h5, csv = WORK / "timing_FA.h5", WORK / "timing_phenotypes.csv"
    if not h5.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                str(FIXTURES / "make_lm_cohort.py"),
                "make",
                "--outdir",
                str(WORK),
                "--prefix",
                "timing",
                "--n-subjects",
                str(N_SUBJECTS),
                "--n-elements",
                str(N_ELEMENTS),
                "--seed",
                str(SEED),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return h5, csv


def median_time(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def ours(h5: Path, pheno: pd.DataFrame, scheduler: str) -> Any:
    import xarray as xr

    from xarray_clusterh5.modelarray.lm import lm

    with xr.open_dataset(h5, engine="clusterh5") as ds:
        return lm(ds, FORMULA, pheno).compute(scheduler=scheduler)


def cli_seconds(h5: Path, csv: Path, repeat: int) -> float:
    copy = WORK / "cli_copy.h5"
    times = []
    for _ in range(repeat):
        shutil.copy(h5, copy)
        t0 = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "xarray_clusterh5",
                "lm",
                "--input-hdf5",
                str(copy),
                "--phenotypes",
                str(csv),
                "--formula",
                FORMULA,
                "--analysis-name",
                "bench",
                "--no-progress",
            ],
            check=True,
            env=_env(),
            stderr=subprocess.DEVNULL,
        )
        times.append(time.perf_counter() - t0)
    copy.unlink()
    return float(np.median(times))


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def statsmodels_per_element(
    h5: Path, pheno: pd.DataFrame, n: int, reference: Any
) -> dict[str, float]:
    """Seconds per element of one statsmodels fit per element (both APIs)."""
    import statsmodels.api as sm
    import statsmodels.formula.api as smf

    with h5py.File(h5, "r") as f:
        values = f["scalars/FA/values"][:, :n].astype(np.float64)
    design = np.column_stack(
        [np.ones(len(pheno)), pheno["age"], (pheno["sex"] == "M").astype(float)]
    )
    edges = pd.read_csv(WORK / "timing_edge_elements.csv")
    constant = set(edges.loc[edges["kind"] == "constant", "element_id"])
    out: dict[str, float] = {}
    fitted: list[Any] = []

    def with_formula() -> None:
        fitted.clear()
        for j in range(n):
            ok = np.isfinite(values[:, j])
            data = pheno[ok].assign(FA=values[ok, j])
            fitted.append(smf.ols(FORMULA, data).fit())
            _ = fitted[-1].pvalues, fitted[-1].rsquared_adj, fitted[-1].f_pvalue

    def with_arrays() -> None:
        for j in range(n):
            ok = np.isfinite(values[:, j])
            r = sm.OLS(values[ok, j], design[ok]).fit()
            _ = r.pvalues, r.tvalues, r.rsquared_adj, r.f_pvalue

    warnings.simplefilter("ignore", RuntimeWarning)  # constant elements
    t0 = time.perf_counter()
    with_formula()
    out["formula"] = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    with_arrays()
    out["arrays"] = (time.perf_counter() - t0) / n
    # the same numbers (elements above ModelArray's threshold, not constant)
    worst = 0.0
    for j, r in enumerate(fitted):
        ok = np.isfinite(values[:, j]).sum()
        if ok <= 40 or j in constant:
            continue
        ref = reference.isel(element=j)
        pairs = [
            (r.params["age"], ref.sel(stat="age.estimate").item()),
            (r.pvalues["age"], ref.sel(stat="age.p.value").item()),
            (r.rsquared_adj, ref.sel(stat="model.adj.r.squared").item()),
            (r.f_pvalue, ref.sel(stat="model.p.value").item()),
        ]
        for a, b in pairs:
            worst = max(worst, abs(a - b) / max(abs(b), 1e-12))
    out["max_rel_diff"] = worst
    return out


# VmHWM, not ru_maxrss: a forked child's ru_maxrss starts at the parent's RSS
MEMORY_SCRIPT = """
import sys, time
import pandas as pd, xarray as xr
from xarray_clusterh5.modelarray.lm import compute, lm
h5, csv, chunk, how = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
pheno = pd.read_csv(csv)
t0 = time.perf_counter()
with xr.open_dataset(h5, engine="clusterh5") as ds:
    if how != "open":
        res = lm(ds, "FA ~ age + sex", pheno, chunk_size=chunk)
        res = compute(res) if how == "store" else res.compute()
        assert res.shape[1] == ds.sizes["element"]
status = open("/proc/self/status").read().split("VmHWM:")[1].split()[0]
print(time.perf_counter() - t0, status)
"""


def big_cohort(n_elements: int) -> tuple[Path, Path]:
    """200 subjects x n_elements, written in stripes (never whole in memory)."""
    h5 = WORK / f"big_{n_elements}.h5"
    _, csv = timing_cohort()
    if h5.exists():
        return h5, csv
    pheno = pd.read_csv(csv)
    age = pheno["age"].to_numpy()
    male = (pheno["sex"] == "M").to_numpy()
    rng = np.random.default_rng(0)
    stripe = 2621  # ModelArrayIO's chunk width for 200 subjects
    tmp = h5.with_suffix(".tmp")
    with h5py.File(tmp, "w") as f:
        f["greyordinates"] = np.vstack(
            [np.arange(n_elements), np.zeros(n_elements, np.int64)]
        )
        dset = f.create_dataset(
            "scalars/FA/values",
            shape=(N_SUBJECTS, n_elements),
            dtype=np.float32,
            chunks=(N_SUBJECTS, stripe),
            compression="gzip",
            compression_opts=1,
            shuffle=True,
        )
        f.create_dataset(
            "scalars/FA/column_names",
            data=pheno["source_file"].to_numpy(dtype=object),
            dtype=h5py.string_dtype(),
        )
        for start in range(0, n_elements, stripe * 8):
            stop = min(n_elements, start + stripe * 8)
            k = stop - start
            b_age = rng.normal(0, 0.002, k) * (rng.random(k) < 0.4)
            b_sex = rng.normal(0, 0.03, k) * (rng.random(k) < 0.3)
            noise = rng.normal(0, 0.05, (N_SUBJECTS, k))
            y = 0.5 + np.outer(age - 44, b_age) + np.outer(male, b_sex) + noise
            dset[:, start:stop] = y.astype(np.float32)
    tmp.rename(h5)
    return h5, csv


def memory_runs(plan: list[tuple[int, int, str]]) -> list[dict[str, Any]]:
    """Peak RSS of child processes: open only, then lm per (elements, chunk, how).

    ``how``: "store" is ``lm.compute`` (chunks stored in place, what
    ``write_results`` and the CLI do), "compute" is ``DataArray.compute()``.
    """
    rows = []
    for n_elements, chunk, how in [(plan[0][0], 0, "open"), *plan]:
        h5, csv = big_cohort(n_elements)
        argv = [sys.executable, "-c", MEMORY_SCRIPT, str(h5), str(csv), str(chunk)]
        out = subprocess.run(
            [*argv, how], check=True, capture_output=True, text=True, env=_env()
        ).stdout.split()
        rows.append(
            {
                "elements": n_elements,
                "chunk": chunk,
                "how": how,
                "seconds": float(out[0]),
                "peak_mib": int(out[1]) / 1024,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--statsmodels-elements", type=int, default=200)
    ap.add_argument("--memory-elements", type=int, default=300_000)
    args = ap.parse_args(argv)

    r = json.loads((FIXTURES / "timings.json").read_text())
    r1 = r["n_cores_1"]["s_per_element"]
    r2 = r["n_cores_2"]["s_per_element"]
    h5, csv = timing_cohort()
    pheno = pd.read_csv(csv)
    print(f"load average before: {loadavg()}   cores: {os.cpu_count()}")
    reference = ours(h5, pheno, "synchronous")  # warm-up, and the reference
    t1 = median_time(lambda: ours(h5, pheno, "synchronous"), args.repeat)
    t2 = median_time(lambda: ours(h5, pheno, "threads"), args.repeat)
    tc = cli_seconds(h5, csv, args.repeat)
    sm_t = statsmodels_per_element(h5, pheno, args.statsmodels_elements, reference)
    print(f"load average after timing: {loadavg()}")

    n = N_ELEMENTS
    rows = [
        ("R ModelArray.lm, n_cores = 1 (timings.json)", r1),
        ("R ModelArray.lm, n_cores = 2 (timings.json)", r2),
        (
            f"statsmodels smf.ols per element (first {args.statsmodels_elements}, "
            "extrapolated)",
            sm_t["formula"],
        ),
        (
            f"statsmodels sm.OLS(y, X) per element (first "
            f"{args.statsmodels_elements}, extrapolated)",
            sm_t["arrays"],
        ),
        ("ours, lm() 1 core (synchronous scheduler)", t1 / n),
        (f"ours, lm() {os.cpu_count()} cores (threads)", t2 / n),
        ("ours, `clusterh5 lm` child process (start-up + fit + write)", tc / n),
    ]
    print()
    print(
        f"FA ~ age + sex, {N_SUBJECTS} subjects x {n} elements (median of "
        f"{args.repeat})"
    )
    print(f"{'':68s} {'us/element':>11s} {'R 1-core / this':>16s} {'smf / this':>11s}")
    for label, sec in rows:
        print(
            f"{label:68s} {sec * 1e6:11.1f} {r1 / sec:16.0f} "
            f"{sm_t['formula'] / sec:11.1f}"
        )
    print(
        f"statsmodels vs ours on those elements (constant ones aside), largest "
        f"relative difference of age estimate and p, adj. R², F p (absolute "
        f"below 1e-12): {sm_t['max_rel_diff']:.1e}"
    )
    whole = 91_282 * t2 / n
    print(
        f"extrapolated: 91,282 greyordinates x 200 subjects on {os.cpu_count()} "
        f"cores: {whole:.1f} s"
    )

    if args.memory_elements:
        big = args.memory_elements
        mem = memory_runs(
            [
                (big // 2, 2621, "store"),
                (big, 2621, "store"),
                (big, 26210, "store"),
                (big, 2621, "compute"),
            ]
        )
        base = mem[0]["peak_mib"]
        print()
        print(
            f"memory (child processes, VmHWM): {N_SUBJECTS} subjects, float32 "
            f"data, 16 result rows in float64; 'open only' = {base:.0f} MiB"
        )
        print(
            f"{'elements':>9s} {'chunk':>6s} {'how':>8s} {'data MiB':>9s} "
            f"{'result MiB':>11s} {'peak MiB':>9s} {'over open':>10s} "
            f"{'us/element':>11s}"
        )
        for row in mem[1:]:
            n_el = row["elements"]
            print(
                f"{n_el:9d} {row['chunk']:6d} {row['how']:>8s} "
                f"{N_SUBJECTS * n_el * 4 / 2**20:9.0f} "
                f"{16 * n_el * 8 / 2**20:11.0f} {row['peak_mib']:9.0f} "
                f"{row['peak_mib'] - base:10.0f} "
                f"{row['seconds'] / n_el * 1e6:11.1f}"
            )
    print(f"load average after: {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
