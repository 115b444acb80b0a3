"""Every ModelArrayIO command of the NIfTI and MIF fixtures, run by ``clusterh5``.

The fixtures' ``commands.json`` list the exact ``modelarrayio`` command lines
(cwd ``nifti/`` or ``mif/``); each is run here with ``clusterh5`` instead,
writing into a temporary folder, and every file it wrote must equal
ModelArrayIO's: HDF5 files entry by entry (paths, dtypes, shapes, chunks,
filters, attributes, values), ``.nii``/``.mif`` byte for byte, ``.gz`` files
after decompression (gzip headers carry no content). The one intended
difference (no ``scaling:`` line copied onto float32 MIF results) is pinned in
``test_modelarray_fixels.py``.
"""

from __future__ import annotations

import gzip
import json
import shlex
import shutil
from pathlib import Path

import pytest

from tests._helpers import DATA, assert_same_file
from xarray_clusterh5.cli import main
from xarray_clusterh5.mif.header import format_header, parse_header

MODALITIES = DATA / "modelarray_modalities"


def _commands(modality: str) -> list[tuple[str, list[str]]]:
    cmds = json.loads((MODALITIES / modality / "commands.json").read_text())
    out = []
    for c in cmds:
        argv = shlex.split(c["cmd"])
        if argv[0] == "modelarrayio":
            out.append((modality, argv[1:]))
    return out


COMMANDS = _commands("nifti") + _commands("mif")


def _redirect(argv: list[str], out_root: Path) -> tuple[list[str], str]:
    """Point ``--output``/``--output-dir`` into ``out_root``; the fixture path."""
    argv = list(argv)
    for flag in ("--output", "--output-dir"):
        if flag in argv:
            i = argv.index(flag) + 1
            fixture_rel = argv[i]
            argv[i] = str(out_root / fixture_rel)
            return argv, fixture_rel
    raise AssertionError(f"no output in {argv}")


def _content(path: Path) -> bytes:
    raw = path.read_bytes()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


@pytest.mark.parametrize(
    ("modality", "argv"),
    COMMANDS,
    ids=[" ".join(a[:1] + a[-6:-2]) for _, a in COMMANDS],
)
def test_fixture_command_writes_modelarrayios_files(
    modality, argv, tmp_path, monkeypatch
):
    work = tmp_path / modality
    shutil.copytree(MODALITIES / modality, work)
    monkeypatch.chdir(work)
    out_root = tmp_path / "ours"
    ours_argv, rel = _redirect(argv, out_root)
    assert main(ours_argv) == 0
    theirs = MODALITIES / modality / rel
    ours = out_root / rel
    if argv[0] == "to-modelarray":
        # split outputs land next to the named file, prefixed by the scalar
        expected = sorted(p.name for p in theirs.parent.glob(f"*{theirs.name}"))
        if "--split-files" not in argv:
            expected = [theirs.name]
        assert sorted(p.name for p in ours.parent.iterdir()) == expected
        for name in expected:
            assert_same_file(ours.parent / name, theirs.parent / name)
        return
    assert sorted(p.name for p in ours.iterdir()) == sorted(
        p.name for p in theirs.iterdir()
    )
    for p in theirs.iterdir():
        want = _content(p)
        if p.name.startswith("lm_") and b"\nscaling: " in want:
            want = _without_scaling(p, want)  # the one intended difference
        assert _content(ours / p.name) == want, p.name


def _without_scaling(path: Path, raw: bytes) -> bytes:
    """ModelArrayIO's MIF result as it should be: same header lines and data,
    without the template's ``scaling:`` line (and so a shorter data offset)."""
    h = parse_header(str(path), raw)
    assert h.scaling is not None
    data = raw[h.data_offset :]
    return format_header(h, h.dtype) + data
