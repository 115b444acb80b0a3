"""Every Python and shell example of README.md runs, in order, as written.

The examples use only the bundled example files (``example_file()``), so they
run after a plain install. Python blocks share one namespace, as if typed into
one session; shell blocks run in ``bash -e`` in the same working directory, with
this interpreter's ``bin`` first on PATH so ``clusterh5`` is the one under test.
A block may be skipped only when it installs packages or builds the docs; a
``<!-- readme-test: skip ... -->`` line right before its fence says so.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "README.md"
FENCE = re.compile(
    r"(?P<marker><!-- readme-test: skip[^>]*-->\s*\n)?"
    r"^```(?P<lang>python|bash)\n(?P<code>.*?)^```$",
    re.DOTALL | re.MULTILINE,
)
SKIPPABLE = ("pip install", "sphinx-build")


def readme_blocks() -> list[tuple[str, str, bool]]:
    """(language, code, skipped) of each python/bash block of the README."""
    return [
        (m["lang"], m["code"], m["marker"] is not None)
        for m in FENCE.finditer(README.read_text(encoding="utf-8"))
    ]


def test_readme_has_examples_of_both_kinds() -> None:
    run = [lang for lang, _, skipped in readme_blocks() if not skipped]
    assert run.count("python") >= 4
    assert run.count("bash") >= 2


def test_skipped_blocks_only_install_or_build_docs() -> None:
    for _, code, skipped in readme_blocks():
        if skipped:
            assert any(s in code for s in SKIPPABLE), code


def test_readme_examples_run_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
    namespace: dict[str, object] = {"__name__": "__readme__"}
    for i, (lang, code, skipped) in enumerate(readme_blocks()):
        if skipped:
            continue
        if lang == "python":
            exec(compile(code, f"README.md block {i}", "exec"), namespace)
            continue
        done = subprocess.run(
            ["bash", "-e", "-c", code],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"block {i}:\n{code}\n{done.stderr}"
    # what the examples promise to write
    for name in ("rest_run.nii.gz", "rest_run.nc", "copy.h5", "sub-01.h5", "sub-02.h5"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "modelarray.h5").is_file()
    assert (tmp_path / "exports" / "lm_age.estimate.dscalar.nii").is_file()
    assert (tmp_path / "exports-cli" / "lm_age.estimate.dscalar.nii").is_file()


def test_bundled_examples_exist_and_unknown_names_fail() -> None:
    import xarray_clusterh5

    for name in ("vignette", "cohort", "results"):
        assert xarray_clusterh5.example_file(name).is_file(), name
    with pytest.raises(ValueError, match="unknown example 'nope'"):
        xarray_clusterh5.example_file("nope")
