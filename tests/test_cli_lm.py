"""``clusterh5 lm`` writes R ModelArray.lm's results into the file."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests._helpers import (
    ANALYSES,
    COHORT,
    MODELARRAY,
    PHENOTYPES,
    assert_matches_r,
    assert_same_export,
    not_constant,
    r_columns,
    r_results,
)
from xarray_clusterh5.cli import main
from xarray_clusterh5.modelarray.h5 import read_results

#: each fixture analysis as ModelArray.lm's options on the command line
FLAGS = {
    "lm_default": [],
    "lm_full": ["--full-outputs"],
    "lm_bonf": [
        "--correct-p-value-terms",
        "fdr",
        "bonferroni",
        "--correct-p-value-model",
        "fdr",
        "bonferroni",
    ],
    "lm_iq": [
        "--var-terms",
        "estimate",
        "std.error",
        "statistic",
        "p.value",
        "--var-model",
        *next(a for a in ANALYSES if a.name == "lm_iq").kwargs["var_model"],
        "--num-subj-lthr-abs",
        "70",
    ],
    "lm_subset": ["--element-subset", "101:300"],
    "lm_poly": [],
}


@pytest.fixture
def h5(tmp_path: Path) -> Path:
    path = tmp_path / "cohortA_FA.h5"
    shutil.copy(COHORT, path)
    return path


def _lm(h5: Path, formula: str, name: str, *flags: str) -> int:
    return main(
        [
            "lm",
            "--input-hdf5",
            str(h5),
            "--phenotypes",
            str(PHENOTYPES),
            "--formula",
            formula,
            "--analysis-name",
            name,
            "--chunk-size",
            "256",
            *flags,
        ]
    )


def test_every_fixture_analysis(h5: Path, capsys: pytest.CaptureFixture) -> None:
    for a in ANALYSES:
        assert _lm(h5, a.formula, a.name, *FLAGS[a.name]) == 0
        err = capsys.readouterr().err
        assert f"wrote results/{a.name}" in err
        assert "chunk" in err  # the progress bar
    with h5py.File(h5, "r") as f:
        assert sorted(f["results"]) == sorted(a.name for a in ANALYSES)
        for a in ANALYSES:
            grp = f[f"results/{a.name}"]
            names = [s.decode() for s in grp["column_names"][()]]
            assert names == r_columns(a.name)
            values = grp["results_matrix"][()]
            r = r_results(a.name)
            keep = not_constant(1000)[r["element_id"].to_numpy().astype(int)]
            for k, col in enumerate(names):
                if ".p.value." not in col:
                    assert_matches_r(values[k][keep], r[col].to_numpy()[keep], col)


def test_existing_analysis_needs_overwrite(
    h5: Path, capsys: pytest.CaptureFixture
) -> None:
    assert _lm(h5, "FA ~ age", "a", "--no-progress") == 0
    assert _lm(h5, "FA ~ age + sex", "a", "--no-progress") == 1
    assert "results/a exists; pass --overwrite" in capsys.readouterr().err
    assert _lm(h5, "FA ~ age + sex", "a", "--no-progress", "--overwrite") == 0
    with h5py.File(h5, "r") as f:
        assert b"sexM.estimate" in f["results/a/column_names"][()]


@pytest.mark.parametrize(
    ("formula", "flags", "message"),
    [
        ("FA ~ agee + sex", [], "'agee', not a column of the phenotypes ("),
        ("FA ~ age + sex", ["--scalar", "MD"], "response is 'FA' but scalar='MD'"),
        ("FA ~ age", ["--element-subset", "0:10"], "expected START:STOP"),
        ("FA ~ age", ["--element-subset", "1:1001"], "element_subset must lie"),
    ],
)
def test_errors_name_file_and_culprit(
    h5: Path, capsys: pytest.CaptureFixture, formula: str, flags: list, message: str
) -> None:
    try:
        code = _lm(h5, formula, "bad", "--no-progress", *flags)
    except SystemExit as exc:  # argparse rejects the flag itself
        code = exc.code
    assert code in (1, 2)
    err = capsys.readouterr().err
    assert message in err
    if code == 1:
        assert str(h5) in err
    with h5py.File(h5, "r") as f:
        assert "results" not in f


def test_phenotype_table_errors(h5: Path, tmp_path: Path, capsys) -> None:
    table = PHENOTYPES.read_text().splitlines()
    shifted = tmp_path / "pheno.csv"
    shifted.write_text(
        "\n".join([table[0], *table[2:], table[1]]).replace("sub-080", "sub-999")
    )
    assert _lm_with(h5, shifted, "FA ~ age") == 1
    err = capsys.readouterr().err
    assert str(shifted) in err
    assert "'FA/sub-080_FA.dscalar.nii' is not in the phenotypes" in err
    dependent = tmp_path / "dep.csv"
    lines = [
        table[0] + ",age2",
        *(f"{row},{2 * float(row.split(',')[2])}" for row in table[1:]),
    ]
    dependent.write_text("\n".join(lines))
    assert _lm_with(h5, dependent, "FA ~ age + age2") == 1
    assert "rank-deficient for every element: term 'age2'" in capsys.readouterr().err


def _lm_with(h5: Path, pheno: Path, formula: str) -> int:
    return main(
        [
            "lm",
            "--input-hdf5",
            str(h5),
            "--phenotypes",
            str(pheno),
            "--formula",
            formula,
            "--analysis-name",
            "x",
            "--no-progress",
        ]
    )


def test_element_range() -> None:
    from xarray_clusterh5.cli.lm import element_range

    assert element_range("101:300") == range(100, 300)
    assert element_range("1:1") == range(0, 1)
    np.testing.assert_array_equal(list(element_range("3:5")), [2, 3, 4])


def test_refit_of_r_analysis_in_the_cifti_cohort_exports_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # tests/data/modelarray: R wrote results/lm = ModelArray.lm(thickness ~ age,
    # var.model = c("adj.r.squared", "p.value", "nobs"), num.subj.lthr.abs = 4)
    work = tmp_path / "cohort"
    shutil.copytree(MODELARRAY / "cohort", work)
    monkeypatch.chdir(work)
    r_file = MODELARRAY / "results" / "thickness_with_results.h5"
    h5 = tmp_path / "results.h5"
    shutil.copy(r_file, h5)
    argv = ["lm", "--input-hdf5", str(h5), "--phenotypes", "cohort_thickness.csv",
            "--formula", "thickness ~ age", "--analysis-name", "lm", "--var-model",
            "adj.r.squared", "p.value", "nobs", "--num-subj-lthr-abs", "4",
            "--overwrite", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    r_names, r_values = read_results(r_file, "lm")
    names, values = read_results(h5, "lm")
    assert names == r_names
    for k, name in enumerate(names):
        assert_matches_r(values[k], r_values[k], name)
    with h5py.File(h5, "r") as ours, h5py.File(r_file, "r") as theirs:
        for obj in ("scalars/thickness/values", "results/lm_stream/results_matrix"):
            np.testing.assert_array_equal(ours[obj][()], theirs[obj][()])
    # export-results reads our group as it reads R's: the same files
    out = tmp_path / "exported"
    argv = ["export-results", "--input-hdf5", str(h5), "--analysis-name", "lm",
            "--output-dir", str(out), "--cohort-file",
            "cohort_thickness.csv"]  # fmt: skip
    assert main(argv) == 0
    assert_same_export(out, MODELARRAY / "export" / "lm")
