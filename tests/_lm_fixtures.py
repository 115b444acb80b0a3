"""R ModelArray.lm's results on cohort A (tests/data/modelarray/lm), for the tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

LM = Path(__file__).parent / "data" / "modelarray" / "lm"
COHORT = LM / "cohortA_FA.h5"
PHENOTYPES = LM / "cohortA_phenotypes.csv"
#: constant elements: R's values there are rounding noise (fixture README)
CONSTANT = (125, 972)
RTOL, ATOL = 1e-10, 1e-12


@dataclass(frozen=True)
class Analysis:
    """One ModelArray.lm call of the fixtures, in our API's terms."""

    name: str
    formula: str
    kwargs: dict


ANALYSES = (
    Analysis("lm_default", "FA ~ age + sex", {}),
    Analysis("lm_full", "FA ~ age * sex + site", {"full_outputs": True}),
    Analysis(
        "lm_bonf",
        "FA ~ age + group",
        {
            "correct_p_value_terms": ("fdr", "bonferroni"),
            "correct_p_value_model": ("fdr", "bonferroni"),
        },
    ),
    Analysis(
        "lm_iq",
        "FA ~ age + iq",
        {
            "var_terms": ("estimate", "std.error", "statistic", "p.value"),
            "var_model": (
                "adj.r.squared",
                "r.squared",
                "p.value",
                "nobs",
                "AIC",
                "BIC",
                "logLik",
                "sigma",
                "df.residual",
                "statistic",
            ),
            "num_subj_lthr_abs": 70,
        },
    ),
    Analysis("lm_subset", "FA ~ age + sex", {"element_subset": range(100, 300)}),
    Analysis("lm_poly", "FA ~ age + I(age^2) + sex", {}),
)


def r_results(name: str) -> pd.DataFrame:
    """The data.frame R returned (full precision)."""
    return pd.read_csv(LM / f"{name}.csv.gz")


def r_columns(name: str) -> list[str]:
    return json.loads((LM / "columns.json").read_text())[name]


def phenotypes() -> pd.DataFrame:
    return pd.read_csv(PHENOTYPES)


def fa_values() -> np.ndarray:
    """(subjects, elements) float32 values of cohort A."""
    import h5py

    with h5py.File(COHORT, "r") as f:
        return f["scalars/FA/values"][()]


def assert_matches_r(ours: np.ndarray, theirs: np.ndarray, what: str) -> float:
    """Equal within 1e-10 relative or 1e-12 absolute, NaN where R has NaN.

    Returns the largest relative difference (0 where R's value is 0).
    """
    ours = np.asarray(ours, dtype=np.float64)
    theirs = np.asarray(theirs, dtype=np.float64)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs), err_msg=what)
    np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=ATOL, err_msg=what)
    both = ~np.isnan(theirs) & (theirs != 0)
    rel = np.abs(ours[both] - theirs[both]) / np.abs(theirs[both])
    return float(rel.max(initial=0.0))


def not_constant(n: int) -> np.ndarray:
    """Row mask of elements 0..n-1 without the constant ones."""
    return ~np.isin(np.arange(n), CONSTANT)
