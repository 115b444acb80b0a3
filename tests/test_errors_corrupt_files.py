"""Damaged files give a ClusterH5Error naming the file, never a crash or a hang.

Copies of the fixtures are damaged in many deterministic ways: bytes flipped
in compressed chunks and contiguous data, in object headers, in B-tree, heap
and symbol-table nodes (found by their signatures), in the superblock's fields
and addresses (pointed past the end of the file), and truncations at many
offsets. CIFTI inputs of a cohort and NIfTI inputs of ``from_nifti`` are
damaged too. Each damaged file is read through every view in a child process
(batches of many cases per process), so a segfault or a hang is caught as a
failure of the case it happened in rather than killing the test run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import nibabel as nib
import numpy as np
import pytest

from tests._helpers import FMRISTORE, MODELARRAY

CHILD = Path(__file__).with_name("_corrupt_child.py")
#: seconds one child process may take for its whole batch
BATCH_TIMEOUT = 120.0
#: structural nodes of HDF5 1.8-style files (B-trees, local/global heaps,
#: symbol tables) and of newer ones (object headers, fractal heaps, v2 B-trees)
SIGNATURES = (b"TREE", b"HEAP", b"SNOD", b"GCOL", b"OHDR", b"FRHP", b"BTHD")


@dataclass(frozen=True)
class Damage:
    """One way of damaging one file: bytes replaced, or the file cut short."""

    name: str
    offset: int
    new: bytes = b""  # replaces len(new) bytes at offset; empty = truncate there
    #: HDF5 object whose error message must name it (when we know it)
    obj: str | None = None

    def apply(self, data: bytes) -> bytes:
        if not self.new:
            return data[: self.offset]
        end = self.offset + len(self.new)
        return data[: self.offset] + self.new + data[end:]


def _flip(data: bytes, offset: int, n: int = 4) -> bytes:
    return bytes(b ^ 0xFF for b in data[offset : offset + n])


def _objects(f: h5py.File) -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = [("", f)]
    f.visititems(lambda name, obj: found.append((name, obj)))
    return found


def _chunk_damage(data: bytes, f: h5py.File, limit: int) -> Iterator[Damage]:
    """Bytes inside compressed chunks: the middle, and the zlib header."""
    dsets = [
        (n, o)
        for n, o in _objects(f)
        if isinstance(o, h5py.Dataset) and o.chunks is not None and o.compression
    ]
    for name, dset in dsets[:limit]:
        info = dset.id.get_chunk_info(0)
        mid = info.byte_offset + info.size // 2
        yield Damage(f"chunk-middle:{name}", mid, _flip(data, mid), obj=name)
        yield Damage(f"chunk-header:{name}", info.byte_offset, b"\x00\x00", obj=name)


def _contiguous_damage(data: bytes, f: h5py.File, limit: int) -> Iterator[Damage]:
    dsets = [
        (n, o)
        for n, o in _objects(f)
        if isinstance(o, h5py.Dataset) and o.chunks is None and o.id.get_offset()
    ]
    for name, dset in dsets[:limit]:
        off = int(dset.id.get_offset())
        if h5py.check_vlen_dtype(dset.dtype) or h5py.check_string_dtype(dset.dtype):
            # variable-length: (uint32 length, heap address, index) per value;
            # damage the address (a damaged length makes HDF5 allocate up to
            # 4 GiB and take seconds before it fails)
            off += 4
        yield Damage(f"contiguous:{name}", off, _flip(data, off, 8))


def _header_damage(data: bytes, f: h5py.File, limit: int) -> Iterator[Damage]:
    """Object headers: version byte, message count, the first message's type."""
    for name, obj in _objects(f)[:limit]:
        addr = h5py.h5o.get_info(obj.id).addr
        label = name or "/"
        yield Damage(f"ohdr-version:{label}", addr, b"\x07")
        yield Damage(f"ohdr-nmesgs:{label}", addr + 2, b"\xff\x7f")
        yield Damage(f"ohdr-message:{label}", addr + 16, _flip(data, addr + 16, 6))


def _signature_damage(data: bytes, limit: int) -> Iterator[Damage]:
    """Every B-tree, heap and symbol-table node found by its signature."""
    for sig in SIGNATURES:
        start, count = 0, 0
        while count < limit:
            pos = data.find(sig, start)
            if pos < 0:
                break
            yield Damage(f"node-{sig.decode()}@{pos}", pos, b"XXXX")
            # and the node's first address field, pointed past the end
            yield Damage(
                f"node-{sig.decode()}-addr@{pos}",
                pos + 8,
                (len(data) * 4 + 8).to_bytes(8, "little"),
            )
            start, count = pos + 1, count + 1


def _superblock_damage(data: bytes) -> Iterator[Damage]:
    assert data[8] == 0, "fixtures have version-0 superblocks"
    past_end = (len(data) * 2).to_bytes(8, "little")
    yield Damage("superblock-signature", 0, b"\x00")
    yield Damage("superblock-version", 8, b"\x09")
    yield Damage("superblock-offset-size", 13, b"\x03")
    yield Damage("superblock-base-address", 24, past_end)
    yield Damage("superblock-eof-small", 40, (len(data) // 2).to_bytes(8, "little"))
    yield Damage("superblock-root-ohdr-past-end", 64, past_end)
    yield Damage("superblock-root-btree-past-end", 80, past_end)
    yield Damage("superblock-root-heap-past-end", 88, past_end)


def _truncations(data: bytes, n: int) -> Iterator[Damage]:
    size = len(data)
    for k in range(1, n + 1):
        yield Damage(f"truncate-{k}/{n + 1}", size * k // (n + 1))
    for cut in (96, size - 1):
        yield Damage(f"truncate@{cut}", cut)


def hdf5_damages(
    path: Path, *, limit: int, n_cuts: int, nodes: bool = True
) -> list[Damage]:
    """Dozens of deterministic damages of one HDF5 file.

    ``limit`` bounds the datasets and objects damaged, ``n_cuts`` the
    truncations; ``nodes=False`` leaves out B-tree, heap and superblock damage
    (the same code reads them in every file of a format).
    """
    data = path.read_bytes()
    with h5py.File(path, "r") as f:
        out = [
            *_chunk_damage(data, f, limit),
            *_contiguous_damage(data, f, 3),
            *_header_damage(data, f, limit),
        ]
    if nodes:
        out += [*_signature_damage(data, 3), *_superblock_damage(data)]
    return out + list(_truncations(data, n_cuts))


# --------------------------------------------------------------------------
# CIFTI and NIfTI inputs
# --------------------------------------------------------------------------


def cifti_damages(path: Path) -> list[Damage]:
    """NIfTI-2 header fields, the CIFTI XML, the data block, truncations."""
    data = path.read_bytes()
    xml = data.find(b"<CIFTI")
    bm = data.find(b"<BrainModel ")
    vox_offset = int(np.frombuffer(data[168:176], "<i8")[0])
    out = [
        Damage("cifti-sizeof-hdr", 0, b"\x00\x00\x00\x00"),
        Damage("cifti-magic", 4, b"xx"),
        Damage("cifti-dim-huge", 16 + 8 * 6, (2**40).to_bytes(8, "little")),
        Damage(
            "cifti-dim-negative", 16 + 8 * 6, (-5).to_bytes(8, "little", signed=True)
        ),
        Damage("cifti-datatype", 12, b"\x7f\x00"),
        Damage("cifti-vox-offset-huge", 168, (2**40).to_bytes(8, "little")),
        Damage("cifti-vox-offset-small", 168, (100).to_bytes(8, "little")),
        Damage("cifti-extension-size", 544, (2**30).to_bytes(4, "little")),
        Damage("cifti-xml-tag", xml, b"<XXXXX"),
        Damage("cifti-xml-brainmodel", bm + 12, b'IndexOffset="-7" '),
        Damage("cifti-xml-garbage", bm, b"\xff\xfe\x00<<<>>>&&&"),
        Damage("cifti-data", vox_offset + 8, b"\xff\xff\xff\xff"),
    ]
    for cut in (4, 300, 540, vox_offset - 10, vox_offset + 50, len(data) - 2):
        out.append(Damage(f"cifti-truncate@{cut}", cut))
    return out


def nifti_damages(path: Path) -> list[Damage]:
    """NIfTI-1 header fields and truncations (plain and gzip-compressed)."""
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        mid = len(data) // 2
        return [
            Damage("gz-magic", 0, b"\x00\x00"),
            Damage("gz-stream", mid, _flip(data, mid)),
            Damage("gz-crc", len(data) - 8, _flip(data, len(data) - 8)),
            Damage(f"gz-truncate@{mid}", mid),
            Damage("gz-truncate@20", 20),
        ]
    return [
        Damage("nifti-sizeof-hdr", 0, b"\x00\x00\x00\x00"),
        Damage("nifti-dim0", 40, b"\x09\x00"),
        Damage("nifti-dim-huge", 42, b"\xff\x7f"),
        Damage("nifti-datatype", 70, b"\x7f\x00"),
        Damage("nifti-vox-offset", 108, np.float32(1e9).tobytes()),
        Damage("nifti-magic", 344, b"xx"),
        *(Damage(f"nifti-truncate@{cut}", cut) for cut in (10, 200, 348, 400)),
        Damage(f"nifti-truncate@{len(data) - 3}", len(data) - 3),
    ]


def mif_damages(path: Path) -> list[Damage]:
    """MRtrix image headers (text) and data: key lines, truncations."""
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        return nifti_damages(path)
    end = data.find(b"\nEND\n")
    out = [Damage("mif-magic", 0, b"xxxxxx")]
    for key, new in (
        (b"dim: ", b"99999999,"),
        (b"datatype: ", b"Qx"),
        (b"layout: ", b"?"),
        (b"file: . ", b"99999999"),
    ):
        at = data.find(key)
        if at >= 0:
            out.append(Damage(f"mif-{key.decode().strip(': .')}", at + len(key), new))
    for cut in (20, end, end + 20, len(data) - 2):
        out.append(Damage(f"mif-truncate@{cut}", cut))
    return out


# --------------------------------------------------------------------------
# running the cases in child processes
# --------------------------------------------------------------------------


@dataclass
class Case:
    """A damaged copy read through one view; ``job`` goes to the child."""

    id: str
    file: str  # the damaged file, the one every message must name
    obj: str | None
    job: dict[str, Any]


def _run_batch(jobs: list[dict[str, Any]], tmp: Path) -> dict[str, dict]:
    """Run jobs in one child; on a crash or hang, record it and go on after it."""
    results: dict[str, dict] = {}
    todo = list(jobs)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    while todo:
        jobs_file = tmp / "jobs.json"
        jobs_file.write_text(json.dumps(todo))
        started: list[str] = []
        try:
            proc = subprocess.run(
                [sys.executable, str(CHILD), str(jobs_file)],
                capture_output=True,
                text=True,
                timeout=BATCH_TIMEOUT,
                env=env,
                check=False,
            )
            out, err, died = proc.stdout, proc.stderr, proc.returncode != 0
            why = f"interpreter exited with {proc.returncode}"
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout
            err = ""
            out, died, why = out or "", True, f"hang: no answer in {BATCH_TIMEOUT}s"
        for line in out.splitlines():
            rec = json.loads(line)
            if "start" in rec:
                started.append(rec["start"])
            else:
                results[rec["id"]] = rec
        done = len(results)
        if died:
            culprit = started[-1] if started else todo[0]["id"]
            if culprit not in results:
                results[culprit] = {
                    "id": culprit,
                    "ok": False,
                    "crash": f"{why}; stderr: {(err or '')[-1500:]}",
                }
        todo = [j for j in todo if j["id"] not in results]
        if not died and todo:  # the child stopped early without a reason
            raise AssertionError(f"child stopped after {done} jobs: {err[-2000:]}")
    return results


def _damage_copies(
    src: Path, damages: list[Damage], out_dir: Path
) -> Iterator[tuple[Damage, Path]]:
    data = src.read_bytes()
    for i, dmg in enumerate(damages):
        target = out_dir / f"{i:03d}" / src.name
        target.parent.mkdir(parents=True)
        target.write_bytes(dmg.apply(data))
        yield dmg, target


def _fmristore_cases(tmp: Path) -> list[Case]:
    cases = []
    # vignette: R fmristore's 2025 layout; irregular_head: the 2026 one
    plan = {"vignette": (6, 8, True), "irregular_head": (3, 4, False)}
    for stem, (limit, cuts, nodes) in plan.items():
        src = FMRISTORE / f"{stem}.h5"
        with h5py.File(src, "r") as f:
            scans = sorted(f["scans"])
        damages = hdf5_damages(src, limit=limit, n_cuts=cuts, nodes=nodes)
        for dmg, path in _damage_copies(src, damages, tmp / stem):
            for view in ("padded", "run", "tree"):
                job = {"view": view, "path": str(path), "scans": scans}
                cases.append(Case(f"{stem}:{dmg.name}:{view}", str(path), dmg.obj, job))
    return cases


def _modelarray_cases(tmp: Path) -> list[Case]:
    cases = []
    modalities = MODELARRAY.parent / "modelarray_modalities"
    sources = {  # stem: (file, objects damaged, truncations)
        "thickness": (MODELARRAY / "modelarrayio" / "thickness.h5", 5, 6),
        "results": (MODELARRAY / "results" / "thickness_with_results.h5", 5, 6),
        # ModelArrayIO's voxel (/voxels) and fixel (/fixels) tables
        "voxels": (modalities / "nifti" / "out" / "modelarray.h5", 3, 3),
        "fixels": (modalities / "mif" / "out" / "modelarray.h5", 3, 3),
    }
    for stem, (src, limit, cuts) in sources.items():
        with h5py.File(src, "r") as f:
            analyses = sorted(f["results"]) if "results" in f else []
        damages = hdf5_damages(src, limit=limit, n_cuts=cuts, nodes=stem == "results")
        for dmg, path in _damage_copies(src, damages, tmp / stem):
            job = {"view": "modelarray", "path": str(path), "analyses": analyses}
            cases.append(Case(f"{stem}:{dmg.name}", str(path), dmg.obj, job))
    return cases


def _cohort_cases(tmp: Path) -> list[Case]:
    """One damaged file in a cohort: the first (reference) and a later one."""
    cohort = MODELARRAY / "cohort"
    cases = []
    for which in ("sub-0001", "sub-0003"):
        src = cohort / "thickness" / f"{which}_thickness.dscalar.nii"
        for i, dmg in enumerate(cifti_damages(src)):
            folder = tmp / "cohort" / f"{which}-{i:02d}"
            shutil.copytree(cohort / "thickness", folder / "thickness")
            shutil.copy(cohort / "cohort_thickness.csv", folder)
            bad = folder / "thickness" / src.name
            bad.write_bytes(dmg.apply(src.read_bytes()))
            job = {"view": "cohort", "csv": str(folder / "cohort_thickness.csv")}
            cases.append(Case(f"cohort:{which}:{dmg.name}", str(bad), None, job))
    return cases


def _modality_cases(tmp: Path) -> list[Case]:
    """NIfTI and MIF cohorts (ModelArrayIO's other modalities), one file damaged."""
    root = MODELARRAY.parent / "modelarray_modalities"
    plan = {
        "nifti": (
            {"mask": "inputs/group_mask.nii.gz"},
            ["sub-03_FA.nii", "sub-04_FA.nii.gz", "group_mask.nii.gz"],
            nifti_damages,
        ),
        "mif": (
            {
                "index_file": "inputs/index.mif",
                "directions_file": "inputs/directions.mif",
            },
            ["sub-01_FD.mif", "sub-02_FD.mif.gz", "index.mif"],
            mif_damages,
        ),
    }
    cases = []
    for modality, (kwargs, targets, damages) in plan.items():
        for target in targets:
            src = root / modality / "inputs" / target
            for i, dmg in enumerate(damages(src)):
                folder = tmp / f"{modality}-{target}-{i:02d}"
                shutil.copytree(root / modality / "inputs", folder / "inputs")
                shutil.copy(root / modality / "cohort.csv", folder)
                bad = folder / "inputs" / target
                bad.write_bytes(dmg.apply(src.read_bytes()))
                job = {
                    "view": "cohort",
                    "csv": str(folder / "cohort.csv"),
                    "kwargs": {k: str(folder / v) for k, v in kwargs.items()},
                }
                name = f"cohort-{modality}:{target}:{dmg.name}"
                cases.append(Case(name, str(bad), None, job))
    return cases


def _nifti_cases(tmp: Path) -> list[Case]:
    rng = np.random.default_rng(10)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    run = rng.normal(100, 5, (6, 5, 4, 7)).astype(np.float32)
    atlas = rng.integers(0, 4, (6, 5, 4)).astype(np.int16)
    good = tmp / "nifti-good"
    good.mkdir()
    nib.save(nib.Nifti1Image(run, affine), good / "run.nii")
    nib.save(nib.Nifti1Image(run, affine), good / "run.nii.gz")
    nib.save(nib.Nifti1Image(atlas, affine), good / "atlas.nii")
    cases = []
    for target in ("run.nii", "run.nii.gz", "atlas.nii"):
        src = good / target
        run_name = "run.nii.gz" if target == "run.nii.gz" else "run.nii"
        for dmg, path in _damage_copies(src, nifti_damages(src), tmp / target):
            for name in ("run.nii", "run.nii.gz", "atlas.nii"):
                if not (path.parent / name).exists():
                    shutil.copy(good / name, path.parent / name)
            job = {
                "view": "nifti",
                "runs": {"rest": str(path.parent / run_name)},
                "atlas": str(path.parent / "atlas.nii"),
            }
            cases.append(Case(f"nifti:{target}:{dmg.name}", str(path), None, job))
    return cases


def _problems(case: Case, rec: dict[str, Any]) -> list[str]:
    """What is wrong with one outcome (empty when it is right)."""
    if rec.get("crash"):
        return [f"{case.id}: {rec['crash']}"]
    if rec["ok"]:
        return []  # damage in bytes nothing reads, or values that stay valid
    msg = rec["message"]
    bad = []
    if not rec["clusterh5"]:
        bad.append(f"{case.id}: {rec['type']} is not a ClusterH5Error: {msg}")
    elif case.file not in msg:
        bad.append(f"{case.id}: message does not name {case.file}: {msg}")
    elif case.obj is not None and case.obj not in msg:
        bad.append(f"{case.id}: message does not name {case.obj}: {msg}")
    return bad


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Case, dict]]:
    tmp = tmp_path_factory.mktemp("corrupt")
    cases = [
        *_fmristore_cases(tmp),
        *_modelarray_cases(tmp),
        *_cohort_cases(tmp),
        *_modality_cases(tmp),
        *_nifti_cases(tmp),
    ]
    for c in cases:
        c.job["id"] = c.id
    ids = [c.id for c in cases]
    assert len(set(ids)) == len(ids)
    # two children at once: the machine has two cores
    half = len(cases) // 2
    batches = [cases[:half], cases[half:]]
    procs = []
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        for k, batch in enumerate(batches):
            sub = tmp / f"batch{k}"
            sub.mkdir()
            procs.append(pool.submit(_run_batch, [c.job for c in batch], sub))
        results = {}
        for p in procs:
            results.update(p.result())
    return [(c, results[c.id]) for c in cases]


def test_enough_cases(outcomes: list[tuple[Case, dict]]) -> None:
    kinds = {c.id.split(":")[0] for c, _ in outcomes}
    assert {
        "vignette",
        "irregular_head",
        "thickness",
        "results",
        "voxels",
        "fixels",
        "cohort",
        "cohort-nifti",
        "cohort-mif",
        "nifti",
    } <= kinds
    assert len(outcomes) > 300
    # most damage is noticed: a test whose damage never bites tests nothing
    failed = [c for c, r in outcomes if not r["ok"]]
    assert len(failed) > 0.6 * len(outcomes)


def test_every_error_is_a_clusterh5_error_naming_the_file(
    outcomes: list[tuple[Case, dict]],
) -> None:
    problems = [p for case, rec in outcomes for p in _problems(case, rec)]
    assert not problems, f"{len(problems)} bad outcomes:\n" + "\n".join(problems[:40])


def test_damaged_chunks_name_the_dataset(outcomes: list[tuple[Case, dict]]) -> None:
    chunk = [(c, r) for c, r in outcomes if c.obj is not None]
    assert len(chunk) >= 20
    for case, rec in chunk:
        assert not rec["ok"], f"{case.id}: a damaged chunk read without error"
        assert case.obj in rec["message"], rec["message"]
        assert "reading" in rec["message"], rec["message"]
        assert rec["chained"], f"{case.id}: the h5py error is not chained"
