"""R formulas through formulaic: R's coefficient names, factors, missing rows."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from tests._helpers import ANALYSES, phenotypes, r_columns
from xarray_clusterh5.stats.formula import (
    FormulaError,
    deparse,
    design_matrix,
    split_formula,
    to_formulaic,
)


@pytest.mark.parametrize("analysis", ANALYSES, ids=lambda a: a.name)
def test_coefficient_names_are_rs(analysis) -> None:
    design = design_matrix(analysis.formula, phenotypes())
    terms = [
        c.removesuffix(".estimate")
        for c in r_columns(analysis.name)
        if c.endswith(".estimate")
    ]
    assert design.names == terms
    assert design.intercept
    assert design.response == "FA"


def test_spline_columns_numbered_as_r() -> None:
    # splines::bs columns are 1..df in R, as formulaic numbers them
    d = design_matrix("FA ~ bs(age, df=3)", phenotypes())
    assert d.names == ["Intercept"] + [f"bs(age, df = 3){i}" for i in (1, 2, 3)]


def test_phenotypes_with_an_index_column_and_any_row_labels() -> None:
    # a table saved by pandas.to_csv often has an "index" column; labels ignored
    ph = phenotypes().assign(index=1.0)
    ph.index = ph.index + 100
    d = design_matrix("FA ~ age", ph)
    assert d.rows.tolist() == list(range(80))
    np.testing.assert_array_equal(d.matrix[:, 1], ph.age.to_numpy())
    # row labels named like a column (set_index(..., drop=False)) are ignored too
    labelled = phenotypes().set_index("age", drop=False)
    d = design_matrix("FA ~ age", labelled)
    np.testing.assert_array_equal(d.matrix[:, 1], labelled.age.to_numpy())


def test_a_design_cannot_be_changed() -> None:
    # one design serves every element's fit (and every dask task): it is read-only
    design = design_matrix("FA ~ age", phenotypes())
    with pytest.raises(dataclasses.FrozenInstanceError):
        design.names = ["x"]  # type: ignore[misc]


def test_missing_phenotypes_drop_rows() -> None:
    ph = phenotypes()
    design = design_matrix("FA ~ age + iq", ph)
    assert design.rows.tolist() == [i for i in range(80) if i not in (7, 50, 54, 73)]
    np.testing.assert_array_equal(design.matrix[:, 2], ph.iq.to_numpy()[design.rows])


def test_treatment_contrasts_against_first_sorted_level() -> None:
    ph = pd.DataFrame({"g": ["b", "a", "c", "a"], "x": [1.0, 2.0, 3.0, 4.0]})
    d = design_matrix("y ~ x * g", ph)
    assert d.names == ["Intercept", "x", "gb", "gc", "x:gb", "x:gc"]
    np.testing.assert_array_equal(d.matrix[:, 2], [1, 0, 0, 0])
    np.testing.assert_array_equal(d.matrix[:, 4], [1, 0, 0, 0])
    # a pandas categorical keeps its own level order, as an R factor does
    ph["g"] = pd.Categorical(ph.g, categories=["c", "b", "a"])
    assert design_matrix("y ~ g", ph).names == ["Intercept", "gb", "ga"]


def test_factor_levels_with_parentheses() -> None:
    # R's model.matrix pastes the level as is: "gb (old)", "gb (old):x"
    ph = pd.DataFrame({"g": ["b (old)", "a", "b (old)", "a"], "x": [1.0, 2, 3, 5]})
    d = design_matrix("y ~ g * x", ph)
    assert d.names == ["Intercept", "gb (old)", "x", "gb (old):x"]
    np.testing.assert_array_equal(d.matrix[:, 1], [1, 0, 1, 0])
    np.testing.assert_array_equal(d.matrix[:, 3], [1, 0, 3, 0])


def test_logical_columns_are_factors() -> None:
    ph = pd.DataFrame({"flag": [True, False, True]})
    d = design_matrix("y ~ flag", ph)
    assert d.names == ["Intercept", "flagTRUE"]
    np.testing.assert_array_equal(d.matrix[:, 1], [1, 0, 1])


def test_r_calls_and_names() -> None:
    ph = phenotypes()
    d = design_matrix(
        "FA ~ poly(age, 2, raw = TRUE) + log(age) + I(age / 2 - 1) + 0", ph
    )
    assert d.names == [
        "poly(age, 2, raw = TRUE)1",
        "poly(age, 2, raw = TRUE)2",
        "log(age)",
        "I(age/2 - 1)",
    ]
    assert not d.intercept
    np.testing.assert_allclose(d.matrix[:, 1], ph.age.to_numpy() ** 2)
    assert design_matrix("FA ~ age:sex", ph).names == [
        "Intercept",
        "age:sexF",
        "age:sexM",
    ]


def test_translation_to_python() -> None:
    assert to_formulaic("age + I(age^2)") == "age + I(age**2)"
    assert to_formulaic("poly(x, 2, raw=TRUE)") == "poly(x, 2, raw=True)"
    assert to_formulaic("(a + b)^2") == "(a + b)^2"  # formula-level power stays
    assert to_formulaic("TRUEx + f(TRUEx)") == "TRUEx + f(TRUEx)"


@pytest.mark.parametrize(
    ("python", "r"),
    [
        ("I(age ** 2)", "I(age^2)"),
        ("I((age - 40) ** 2)", "I((age - 40)^2)"),
        ("I(a * b + c)", "I(a * b + c)"),
        ("I(a * (b + c))", "I(a * (b + c))"),
        ("I(-a ** 2)", "I(-a^2)"),
        ("poly(age, 2, raw=True)", "poly(age, 2, raw = TRUE)"),
        ("I(x == 'a')", 'I(x == "a")'),
        ("I(2.5 * x)", "I(2.5 * x)"),
        ("f(", "f("),
        # parentheses exactly where R's deparse keeps them
        ("I(a - (b - c))", "I(a - (b - c))"),
        ("I(a - b - c)", "I(a - b - c)"),
        ("I(a - b * c)", "I(a - b * c)"),
        ("I(a * b / c)", "I(a * b/c)"),
        ("I(a % b // c)", "I(a%%b%/%c)"),
        ("I((a - b) * c)", "I((a - b) * c)"),
        ("I((a + b) * c)", "I((a + b) * c)"),
        ("I(a - (b + c))", "I(a - (b + c))"),
        ("I(a / (b * c))", "I(a/(b * c))"),
        ("I((a ** b) ** c)", "I((a^b)^c)"),
        ("I(a ** b ** c)", "I(a^b^c)"),
        ("I(-(a + b))", "I(-(a + b))"),
        ("I(-(a % b))", "I(-(a%%b))"),
        ("I((-a) ** 2)", "I((-a)^2)"),
        ("I(-a * b)", "I(-a * b)"),
        ("I(a % 2 + b // 3)", "I(a%%2 + b%/%3)"),
        ("I((a > 1) * b)", "I((a > 1) * b)"),
        ("I(a + (b <= 1))", "I(a + (b <= 1))"),
        ("I(x != (y < 2))", "I(x != (y < 2))"),
        ("I(a >= -1)", "I(a >= -1)"),
        ("I(- -a)", "I(--a)"),  # R: deparse(quote(I(- -a)))
        ("log(a + 1)", "log(a + 1)"),
    ],
)
def test_deparse_like_r(python: str, r: str) -> None:
    assert deparse(python) == r


def test_errors_name_the_problem() -> None:
    ph = phenotypes()
    with pytest.raises(FormulaError, match="'agee', not a column of the phenotypes"):
        design_matrix("FA ~ agee + sex", ph)
    with pytest.raises(FormulaError, match="must have the form"):
        split_formula("age + sex")
    with pytest.raises(FormulaError, match="response must be the scalar's name"):
        split_formula("log(FA) ~ age")
    with pytest.raises(FormulaError, match="no terms"):
        split_formula("FA ~ ")
