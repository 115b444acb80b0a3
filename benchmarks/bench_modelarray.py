"""Benchmark ``clusterh5 to-modelarray`` / ``export-results`` against ModelArrayIO.

Builds synthetic cohorts of 91,282-greyordinate CIFTI-2 dscalar files laid out
like HCP fsLR-32k "91k" space (CORTEX_LEFT 29,696 and CORTEX_RIGHT 29,716 of
32,492 vertices, 19 subcortical volume structures in a 91x109x91 2 mm grid),
50 and 200 subjects, plus a results file (17 statistics, as R's
``writeResults`` lays it out), under ``benchmarks/_work/`` (gitignored). Then it
runs our CLI and, when ``modelarrayio`` is installed (``pip install
modelarrayio``), ModelArrayIO's CLI in the same run, each as a child process
from the cohort folder, and prints wall time, peak RSS of the child and the
ratios, and checks that both produce the same files.

Usage::

    python benchmarks/bench_modelarray.py               # 50 and 200 subjects
    python benchmarks/bench_modelarray.py --sizes 50 --repeat 3
    python benchmarks/bench_modelarray.py --no-modelarrayio

Targets (issue 4): to-modelarray >= 20x faster than ModelArrayIO at 200
subjects; export-results >= 10x; peak memory no higher than ModelArrayIO's and
bounded as the cohort grows.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import nibabel as nib
import numpy as np
from nibabel.cifti2 import cifti2_axes

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work"
REPO = HERE.parent

N_VERTICES = 32492
SURFACE = {"CORTEX_LEFT": 29696, "CORTEX_RIGHT": 29716}
VOLUME = {
    "ACCUMBENS_LEFT": 135,
    "ACCUMBENS_RIGHT": 140,
    "AMYGDALA_LEFT": 315,
    "AMYGDALA_RIGHT": 332,
    "BRAIN_STEM": 3472,
    "CAUDATE_LEFT": 728,
    "CAUDATE_RIGHT": 755,
    "CEREBELLUM_LEFT": 8709,
    "CEREBELLUM_RIGHT": 9144,
    "DIENCEPHALON_VENTRAL_LEFT": 706,
    "DIENCEPHALON_VENTRAL_RIGHT": 712,
    "HIPPOCAMPUS_LEFT": 764,
    "HIPPOCAMPUS_RIGHT": 795,
    "PALLIDUM_LEFT": 297,
    "PALLIDUM_RIGHT": 260,
    "PUTAMEN_LEFT": 1060,
    "PUTAMEN_RIGHT": 1010,
    "THALAMUS_LEFT": 1288,
    "THALAMUS_RIGHT": 1248,
}
VOLUME_SHAPE = (91, 109, 91)
AFFINE = np.array([[-2.0, 0, 0, 90], [0, 2.0, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])
STATS = [
    "element_id",
    "Intercept.estimate",
    "Intercept.statistic",
    "Intercept.p.value",
    "age.estimate",
    "age.statistic",
    "age.p.value",
    "sex.estimate",
    "sex.statistic",
    "sex.p.value",
    "model.adj.r.squared",
    "model.p.value",
    "model.nobs",
    "Intercept.p.value.fdr",
    "age.p.value.fdr",
    "sex.p.value.fdr",
    "model.p.value.fdr",
]


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------


def brain_model_axis(rng: np.random.Generator) -> cifti2_axes.BrainModelAxis:
    """A 91,282-greyordinate axis with HCP's structures and counts."""
    axis = None
    for name, count in SURFACE.items():
        verts = np.sort(rng.choice(N_VERTICES, size=count, replace=False))
        mask = np.zeros(N_VERTICES, dtype=bool)
        mask[verts] = True
        part = cifti2_axes.BrainModelAxis.from_mask(mask, name=name)
        axis = part if axis is None else axis + part
    total = sum(VOLUME.values())
    flat = rng.choice(int(np.prod(VOLUME_SHAPE)), size=total, replace=False)
    start = 0
    for name, count in VOLUME.items():
        idx = np.sort(flat[start : start + count])
        start += count
        ijk = np.stack(np.unravel_index(idx, VOLUME_SHAPE), axis=1)
        part = cifti2_axes.BrainModelAxis(
            name, voxel=ijk, affine=AFFINE, volume_shape=VOLUME_SHAPE
        )
        axis = axis + part
    assert axis is not None
    assert len(axis) == 91282
    return axis


def make_cohort(n: int, scalar: str = "thickness") -> Path:
    """Write ``n`` dscalar files and ``cohort.csv`` (relative paths) once."""
    folder = WORK / f"cohort_{n}"
    csv = folder / "cohort.csv"
    if csv.exists():
        return folder
    rng = np.random.default_rng(42)
    (folder / scalar).mkdir(parents=True, exist_ok=True)
    axis = brain_model_axis(rng)
    first = f"sub-{1:04d}_{scalar}"
    scalar_axis = cifti2_axes.ScalarAxis([first])
    data = rng.normal(2.5, 0.3, size=(1, len(axis))).astype(np.float32)
    path0 = folder / scalar / f"{first}.dscalar.nii"
    img = nib.Cifti2Image(data, header=(scalar_axis, axis))
    img.nifti_header.set_intent("ConnDenseScalar")  # as wb_command writes dscalars
    img.to_filename(path0)
    raw = path0.read_bytes()
    with open(path0, "rb") as fh:
        vox_offset = int(nib.Nifti2Header.from_fileobj(fh)["vox_offset"])
    header = raw[:vox_offset]
    rows = ["subject_id,age,sex,scalar_name,source_file"]
    for i in range(1, n + 1):
        sub = f"sub-{i:04d}"
        rel = f"{scalar}/{sub}_{scalar}.dscalar.nii"
        if i > 1:
            # same-length map name: exactly the header nibabel would write
            hdr = header.replace(first.encode(), f"{sub}_{scalar}".encode())
            vals = rng.normal(2.5, 0.3, size=len(axis)).astype("<f4")
            (folder / rel).write_bytes(hdr + vals.tobytes())
        age = rng.uniform(8, 22)
        rows.append(f"{sub},{age:.2f},{i % 2},{scalar},{rel}")
    csv.write_text("\n".join(rows) + "\n")
    return folder


def make_results(folder: Path) -> Path:
    """A results file laid out as R ``writeResults`` writes it (17 statistics)."""
    out = folder / "results.h5"
    if out.exists():
        return out
    rng = np.random.default_rng(7)
    n = 91282
    matrix = rng.uniform(0, 1, size=(len(STATS), n))
    matrix[0] = np.arange(n)
    matrix[1:, ::7] = np.nan
    with h5py.File(out, "w") as f:
        g = f.create_group("results/lm")
        g.create_dataset(
            "results_matrix",
            data=matrix,
            chunks=(32, 32),
            maxshape=(None, None),
            compression="gzip",
            compression_opts=4,
        )
        g.create_dataset(
            "column_names",
            data=np.array(STATS, dtype=object),
            dtype=h5py.string_dtype("ascii"),
            chunks=(1024,),
            maxshape=(None,),
            compression="gzip",
            compression_opts=4,
        )
    return out


# --------------------------------------------------------------------------
# running and measuring
# --------------------------------------------------------------------------


def measure(cmd: list[str], cwd: Path) -> dict[str, Any]:
    """Run ``cmd`` through a fresh Python so that RUSAGE_CHILDREN is this child's."""
    wrapper = [sys.executable, __file__, "_measure", "--", *cmd]
    t0 = time.perf_counter()
    proc = subprocess.run(wrapper, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    info["wall_outer"] = wall
    return info


def _measure_child(cmd: list[str]) -> int:
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        return proc.returncode
    print(
        json.dumps(
            {
                "wall": wall,
                "maxrss_mb": ru.ru_maxrss / 1024.0,
                "cpu": ru.ru_utime + ru.ru_stime,
            }
        )
    )
    return 0


def best_of(
    cmd: list[str], cwd: Path, repeat: int, clean: Path | None
) -> dict[str, Any]:
    runs = []
    for _ in range(repeat):
        if clean is not None:
            if clean.is_dir():
                shutil.rmtree(clean)
            elif clean.exists():
                clean.unlink()
        runs.append(measure(cmd, cwd))
    best = min(runs, key=lambda r: r["wall"])
    best["walls"] = [round(r["wall"], 3) for r in runs]
    best["maxrss_mb"] = max(r["maxrss_mb"] for r in runs)
    return best


# --------------------------------------------------------------------------
# comparisons
# --------------------------------------------------------------------------


def h5_listing(path: Path) -> dict[str, Any]:
    """Every object with its dtype, shape, chunks, filters, attributes and values."""
    out: dict[str, Any] = {}
    with h5py.File(path, "r") as f:

        def visit(name: str, obj: Any) -> None:
            attrs = {k: np.asarray(v).tolist() for k, v in obj.attrs.items()}
            if isinstance(obj, h5py.Dataset):
                out[name] = {
                    "dtype": str(obj.dtype),
                    "string": repr(h5py.check_string_dtype(obj.dtype)),
                    "shape": obj.shape,
                    "chunks": obj.chunks,
                    "maxshape": obj.maxshape,
                    "compression": obj.compression,
                    "opts": obj.compression_opts,
                    "shuffle": obj.shuffle,
                    "attrs": attrs,
                    "values": obj[()],
                }
            else:
                out[name] = {"attrs": attrs}

        f.visititems(visit)
    return out


def same_h5(a: Path, b: Path) -> list[str]:
    """Differences between two ModelArray files (empty when identical)."""
    la, lb = h5_listing(a), h5_listing(b)
    diffs = []
    if la.keys() != lb.keys():
        diffs.append(f"paths differ: {sorted(la.keys() ^ lb.keys())}")
    for k in la.keys() & lb.keys():
        for field in la[k]:
            x, y = la[k][field], lb[k].get(field)
            if field == "values":
                xs, ys = np.asarray(x), np.asarray(y)
                eq = xs.shape == ys.shape and (
                    np.array_equal(xs, ys, equal_nan=True)
                    if xs.dtype.kind == "f"
                    else np.array_equal(xs, ys)
                )
            else:
                eq = x == y
            if not eq:
                diffs.append(f"{k} {field}: {x!r:.80} vs {y!r:.80}")
    return diffs


def same_exports(a: Path, b: Path) -> list[str]:
    """Differences between two export folders at the nibabel level."""
    names_a = sorted(p.name for p in a.iterdir())
    names_b = sorted(p.name for p in b.iterdir())
    if names_a != names_b:
        return [f"file names differ: {sorted(set(names_a) ^ set(names_b))}"]
    diffs = []
    for n in names_a:
        x, y = nib.load(a / n), nib.load(b / n)
        if x.get_data_dtype() != y.get_data_dtype():
            diffs.append(f"{n}: dtype")
        for i in range(2):
            if x.header.get_axis(i) != y.header.get_axis(i):
                diffs.append(f"{n}: axis {i}")
        if not np.array_equal(
            np.asarray(x.dataobj), np.asarray(y.dataobj), equal_nan=True
        ):
            diffs.append(f"{n}: data")
    return diffs


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------


def find_modelarrayio() -> str | None:
    exe = Path(sys.executable).with_name("modelarrayio")
    if exe.exists():
        return str(exe)
    return shutil.which("modelarrayio")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[50, 200])
    p.add_argument("--repeat", type=int, default=3, help="runs of ours (best kept)")
    p.add_argument("--repeat-theirs", type=int, default=1)
    p.add_argument("--no-modelarrayio", action="store_true")
    p.add_argument("--extra", nargs="*", default=[], help="extra flags for ours")
    args = p.parse_args(argv)

    ours_exe = [sys.executable, "-m", "xarray_clusterh5"]
    theirs_exe = None if args.no_modelarrayio else find_modelarrayio()
    if theirs_exe is None and not args.no_modelarrayio:
        print("modelarrayio not found: measuring ours only (pip install modelarrayio)")
    report: dict[str, Any] = {"sizes": {}}
    for n in args.sizes:
        t0 = time.perf_counter()
        folder = make_cohort(n)
        results = make_results(folder)
        built = time.perf_counter() - t0
        print(f"\n== {n} subjects ({folder}, built in {built:.1f} s)")
        entry: dict[str, Any] = {}
        ours_h5 = folder / "ours.h5"
        conv = ["to-modelarray", "--cohort-file", "cohort.csv"]
        entry["ours_to"] = best_of(
            [*ours_exe, *conv, "--output", str(ours_h5), *args.extra],
            folder,
            args.repeat,
            ours_h5,
        )
        exp = [
            "export-results",
            "--input-hdf5",
            str(results),
            "--analysis-name",
            "lm",
            "--cohort-file",
            "cohort.csv",
        ]
        ours_exp = folder / "ours_export"
        entry["ours_export"] = best_of(
            [*ours_exe, *exp, "--output-dir", str(ours_exp)],
            folder,
            args.repeat,
            ours_exp,
        )
        if theirs_exe is not None:
            theirs_h5 = folder / "theirs.h5"
            entry["theirs_to"] = best_of(
                [theirs_exe, *conv, "--output", str(theirs_h5)],
                folder,
                args.repeat_theirs,
                theirs_h5,
            )
            theirs_exp = folder / "theirs_export"
            entry["theirs_export"] = best_of(
                [theirs_exe, *exp, "--output-dir", str(theirs_exp)],
                folder,
                args.repeat_theirs,
                theirs_exp,
            )
            if args.extra:
                entry["h5_diffs"] = ["(extra flags given: layout not compared)"]
            else:
                entry["h5_diffs"] = same_h5(ours_h5, theirs_h5)
            entry["export_diffs"] = same_exports(ours_exp, theirs_exp)
        report["sizes"][n] = entry
        for step in ("to", "export"):
            o = entry[f"ours_{step}"]
            line = (
                f"  {step:7s} ours   {o['wall']:7.2f} s  {o['maxrss_mb']:6.0f} MB"
                f"  (runs {o['walls']})"
            )
            print(line)
            t = entry.get(f"theirs_{step}")
            if t is not None:
                print(
                    f"  {step:7s} theirs {t['wall']:7.2f} s  {t['maxrss_mb']:6.0f} MB"
                    f"  -> {t['wall'] / o['wall']:.1f}x faster, memory "
                    f"{o['maxrss_mb'] / t['maxrss_mb']:.2f}x of theirs"
                )
        if theirs_exe is not None:
            print(f"  identical HDF5: {not entry['h5_diffs']} {entry['h5_diffs'][:3]}")
            print(
                f"  identical exports: {not entry['export_diffs']} "
                f"{entry['export_diffs'][:3]}"
            )
    WORK.mkdir(exist_ok=True)
    out = WORK / "bench_modelarray.json"
    out.write_text(json.dumps(report, indent=1, default=str))
    print(f"\nresults: {WORK / 'bench_modelarray.json'}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_measure":
        sys.exit(_measure_child(sys.argv[3:]))
    sys.exit(main())
