"""Benchmark ``clusterh5`` against ModelArrayIO on voxel-wise NIfTI and fixel-wise
MIF cohorts, in one run.

The cohorts are made by the fixtures' generator
(``../shared/fixtures/modelarray_modalities/make_modality_cohorts.py --preset
bench``: NIfTI 100 subjects x 230,021 mask voxels in 91x109x91; MIF 50 subjects
x 300,000 fixels, which needs MRtrix's ``mrconvert``) in a temporary folder.
For each modality both CLIs run ``to-modelarray`` and ``export-results`` as
child processes from the cohort folder (as ModelArrayIO expects); the script
prints the best wall time, the child's peak RSS, the ratios, whether both wrote
the same files, and the floor: what reading the input bytes (inflating every
``.gz`` on all cores) plus writing the output (deflating every chunk on all
cores, direct chunk writes) costs in this process.

Usage::

    python benchmarks/bench_modalities.py                  # both modalities
    python benchmarks/bench_modalities.py --kinds nifti --repeat 3
    python benchmarks/bench_modalities.py --outdir /tmp/cohorts --keep

Targets (issue 9): to-modelarray >= 3x faster than ModelArrayIO for each
modality, export-results >= 2x, peak memory no higher than ModelArrayIO's.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_modelarray import best_of, find_modelarrayio, same_h5

ROOT = Path(__file__).resolve().parents[1]
GENERATOR = (
    ROOT.parent / "shared" / "fixtures" / "modelarray_modalities"
    / "make_modality_cohorts.py"
)  # fmt: skip
QUIET = ["--log-level", "WARNING"]
ARGS = {
    "nifti": ["--mask", "inputs/group_mask.nii.gz"],
    "mif": ["--index-file", "inputs/index.mif", "--directions-file",
            "inputs/directions.mif"],
}  # fmt: skip
EXPORT_TEMPLATE = {"nifti": [], "mif": ["--cohort-file", "cohort.csv"]}


def _generator(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location("make_modality_cohorts", path)
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_cohort(gen_path: Path, outdir: Path, kind: str) -> Path:
    folder = outdir / kind
    if not (folder / "cohort.csv").exists():
        subprocess.run(
            [sys.executable, str(gen_path), "--preset", "bench", "--outdir",
             str(outdir), "--kind", kind], check=True,
        )  # fmt: skip
    (folder / "out").mkdir(exist_ok=True)
    return folder


def add_results(gen_path: Path, folder: Path, kind: str) -> Path:
    """Results as the generator adds them for ModelArrayIO's timed export."""
    dst = folder / "out" / "with_results.h5"
    if not dst.exists():
        seed = 1 if kind == "nifti" else 2
        _generator(gen_path).add_results(folder / "out" / "ours.h5", dst, seed=seed)
    return dst


def _content(path: Path) -> bytes:
    import gzip

    raw = path.read_bytes()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def same_export_files(a: Path, b: Path) -> list[str]:
    """Files that differ in name or content (``.gz`` compared decompressed)."""
    names_a = sorted(p.name for p in a.iterdir())
    names_b = sorted(p.name for p in b.iterdir())
    if names_a != names_b:
        return [f"file names differ: {sorted(set(names_a) ^ set(names_b))}"]
    return [n for n in names_a if _content(a / n) != _content(b / n)]


# --------------------------------------------------------------------------
# the floor
# --------------------------------------------------------------------------


def _input_files(folder: Path) -> list[Path]:
    import pandas as pd

    cohort = pd.read_csv(folder / "cohort.csv")
    cols = [c for c in ("source_file", "source_mask_file") if c in cohort]
    return [folder / p for p in dict.fromkeys(cohort[cols].to_numpy().ravel())]


def floor_to_modelarray(folder: Path, out_h5: Path, threads: int) -> dict[str, float]:
    """Read every input's bytes (inflated) + deflate and write the output's chunks."""
    from xarray_clusterh5._hdf5.chunk_write import encode_chunk, filter_spec
    from xarray_clusterh5._hdf5.deflate import deflate, inflate_gzip

    files = _input_files(folder)

    def read(p: Path) -> int:
        raw = p.read_bytes()
        return len(inflate_gzip(raw) if raw[:2] == b"\x1f\x8b" else raw)

    with ThreadPoolExecutor(threads) as pool:
        t0 = time.perf_counter()
        list(pool.map(read, files))
        t_read = time.perf_counter() - t0
    with h5py.File(out_h5, "r") as f:
        name = next(iter(f["scalars"]))
        src = f[f"scalars/{name}/values"]
        values, chunks = src[()], src.chunks
        level, shuffle = src.compression_opts, src.shuffle
    tmp = out_h5.with_name("floor.h5")
    t0 = time.perf_counter()
    with h5py.File(tmp, "w") as f, ThreadPoolExecutor(threads) as pool:
        dset = f.create_dataset(
            "v", shape=values.shape, dtype=values.dtype, chunks=chunks,
            compression="gzip", compression_opts=level, shuffle=shuffle,
        )  # fmt: skip
        spec = filter_spec(dset)
        cw = chunks[1]
        starts = range(0, values.shape[1], cw)
        encoded = pool.map(
            lambda c0: encode_chunk(
                values[:, c0 : c0 + cw],
                chunks,
                level=spec.level,
                shuffle=spec.shuffle,
                fill=0,
                compress=deflate,
            ),
            starts,
        )
        for c0, blob in zip(starts, encoded, strict=True):
            dset.id.write_direct_chunk((0, c0), blob, filter_mask=0)
    t_write = time.perf_counter() - t0
    tmp.unlink()
    return {"read": t_read, "write": t_write, "total": t_read + t_write}


def floor_export(results_h5: Path, n_voxels_out: int, threads: int) -> float:
    """Read the results matrix + deflate as many volumes as the export writes."""
    from xarray_clusterh5._hdf5.deflate import deflate

    t0 = time.perf_counter()
    with h5py.File(results_h5, "r") as f:
        matrix = f["results/lm/results_matrix"][()]
    n_files = matrix.shape[0] + 5  # the 5 p.value rows also give 1m.p.value files

    def one(i: int) -> int:
        vol = np.zeros(n_voxels_out, np.float32)
        vol[: matrix.shape[1]] = matrix[i % matrix.shape[0]]
        return len(deflate(vol.tobytes(), 1, gzip=True))

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(n_files)))
    return time.perf_counter() - t0


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------


def _row(label: str, ours: dict, theirs: dict | None) -> str:
    text = (
        f"  {label:<16} ours {ours['wall']:6.2f} s (cpu {ours['cpu']:5.2f} s) "
        f"{ours['maxrss_mb']:4.0f} MB"
    )
    if theirs is not None:
        text += (
            f" | modelarrayio {theirs['wall']:6.2f} s (cpu {theirs['cpu']:5.2f} s) "
            f"{theirs['maxrss_mb']:4.0f} MB | {theirs['wall'] / ours['wall']:4.1f}x "
            f"faster (cpu {theirs['cpu'] / ours['cpu']:.1f}x), memory "
            f"{ours['maxrss_mb'] / theirs['maxrss_mb']:.2f}x"
        )
    return text


def bench_kind(
    kind: str, gen: Path, outdir: Path, maio: str | None, repeat: int, threads: int
) -> dict[str, Any]:
    folder = make_cohort(gen, outdir, kind)
    ours_exe = str(Path(sys.executable).with_name("clusterh5"))
    res: dict[str, Any] = {"kind": kind}
    conv = ["to-modelarray", "--cohort-file", "cohort.csv", *ARGS[kind], *QUIET]
    out_ours, out_mai = folder / "out" / "ours.h5", folder / "out" / "mai.h5"
    res["to_ours"] = best_of(
        [ours_exe, *conv, "--output", str(out_ours)], folder, repeat, out_ours
    )
    if maio:
        res["to_mai"] = best_of(
            [maio, *conv, "--output", str(out_mai)], folder, repeat, out_mai
        )
        res["to_same"] = same_h5(out_ours, out_mai)
    results = add_results(gen, folder, kind)
    exp = ["export-results", "--analysis-name", "lm", "--input-hdf5", str(results),
           *ARGS[kind], *EXPORT_TEMPLATE[kind], *QUIET]  # fmt: skip
    ex_ours, ex_mai = folder / "exports_ours", folder / "exports_mai"
    res["ex_ours"] = best_of(
        [ours_exe, *exp, "--output-dir", str(ex_ours)], folder, repeat, ex_ours
    )
    if maio:
        res["ex_mai"] = best_of(
            [maio, *exp, "--output-dir", str(ex_mai)], folder, repeat, ex_mai
        )
        res["ex_same"] = same_export_files(ex_ours, ex_mai)
    res["floor_to"] = floor_to_modelarray(folder, out_ours, threads)
    with h5py.File(results, "r") as f:
        n_el = f["results/lm/results_matrix"].shape[1]
    vol = n_el if kind == "mif" else 91 * 109 * 91
    res["floor_export"] = floor_export(results, vol, threads)
    return res


def report(res: dict[str, Any]) -> None:
    kind = res["kind"]
    print(f"\n{kind}:")
    print(_row("to-modelarray", res["to_ours"], res.get("to_mai")))
    f = res["floor_to"]
    print(
        f"  {'':<16} floor {f['total']:.2f} s (read+inflate {f['read']:.2f} s, "
        f"deflate+write {f['write']:.2f} s): ours at "
        f"{res['to_ours']['wall'] / f['total']:.1f}x the floor"
    )
    if "to_same" in res:
        print(f"  {'':<16} same file as modelarrayio: {not res['to_same']}"
              + (f" {res['to_same'][:3]}" if res["to_same"] else ""))  # fmt: skip
    print(_row("export-results", res["ex_ours"], res.get("ex_mai")))
    print(
        f"  {'':<16} floor {res['floor_export']:.2f} s: ours at "
        f"{res['ex_ours']['wall'] / res['floor_export']:.1f}x the floor"
    )
    if "ex_same" in res:
        diff = f" differing: {res['ex_same'][:3]}" if res["ex_same"] else ""
        print(f"  {'':<16} same files as modelarrayio: {not res['ex_same']}{diff}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kinds", nargs="+", default=["nifti", "mif"],
                   choices=["nifti", "mif"])  # fmt: skip
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--outdir", type=Path, default=None, help="cohorts (default: temp)")
    p.add_argument("--keep", action="store_true", help="keep the temporary cohorts")
    p.add_argument("--generator", type=Path, default=GENERATOR)
    p.add_argument("--no-modelarrayio", action="store_true")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = p.parse_args(argv)
    maio = None if args.no_modelarrayio else find_modelarrayio()
    if maio is None and not args.no_modelarrayio:
        print("modelarrayio not found: timing clusterh5 only")
    outdir = args.outdir or Path(tempfile.mkdtemp(prefix="bench_modalities_"))
    print(f"cohorts in {outdir}; load average {os.getloadavg()}")
    results = []
    try:
        for kind in args.kinds:
            if kind == "mif" and shutil.which("mrconvert") is None:
                print("mif: skipped (the generator needs MRtrix's mrconvert)")
                continue
            res = bench_kind(kind, args.generator, outdir, maio, args.repeat,
                             args.threads)  # fmt: skip
            report(res)
            results.append(res)
    finally:
        if args.outdir is None and not args.keep:
            shutil.rmtree(outdir, ignore_errors=True)
    print(f"\nload average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
