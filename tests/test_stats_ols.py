"""Vectorised least squares against R's lm (fixtures) and per-element fits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests._helpers import (
    CONSTANT,
    assert_matches_r,
    fa_values,
    not_constant,
    phenotypes,
    r_results,
)
from xarray_clusterh5.stats import names as stat_names
from xarray_clusterh5.stats import ols
from xarray_clusterh5.stats.formula import design_matrix


@pytest.mark.parametrize(
    ("name", "formula", "threshold"),
    [("lm_full", "FA ~ age * sex + site", 16), ("lm_iq", "FA ~ age + iq", 70)],
)
def test_every_statistic_matches_r(name: str, formula: str, threshold: int) -> None:
    d = design_matrix(formula, phenotypes())
    Y = fa_values().astype(np.float64)
    res = ols.fit(
        d.matrix, Y[d.rows], intercept=True, fit_mask=np.isfinite(Y).sum(0) > threshold
    )
    r = r_results(name)
    keep = not_constant(1000)
    checked = 0
    for j, term in enumerate(d.names):
        for stat in stat_names.TERM_STATS:
            col = f"{term}.{stat}"
            assert_matches_r(res.terms[stat][keep, j], r[col].to_numpy()[keep], col)
            checked += 1
    for stat in stat_names.MODEL_STATS:
        if f"model.{stat}" in r:
            col = f"model.{stat}"
            assert_matches_r(res.model[stat][keep], r[col].to_numpy()[keep], col)
            checked += 1
    assert checked >= 22
    assert res.n_aliased == 0


def test_constant_elements_are_exact_fits() -> None:
    d = design_matrix("FA ~ age * sex + site", phenotypes())
    Y = fa_values().astype(np.float64)
    res = ols.fit(d.matrix, Y[d.rows], intercept=True)
    r = r_results("lm_full")
    for e in CONSTANT:
        est = res.terms["estimate"][e]
        np.testing.assert_allclose(est[0], r["Intercept.estimate"][e], rtol=1e-12)
        assert np.all(est[1:] == 0)
        assert np.all(res.terms["std.error"][e] == 0)
        assert res.terms["statistic"][e][0] == np.inf
        assert np.all(np.isnan(res.terms["statistic"][e][1:]))
        assert res.terms["p.value"][e][0] == 0
        assert np.all(np.isnan(res.terms["p.value"][e][1:]))
        m = {k: v[e] for k, v in res.model.items()}
        for k in ("r.squared", "adj.r.squared", "statistic", "p.value"):
            assert np.isnan(m[k]), k
        assert m["sigma"] == 0
        assert m["deviance"] == 0
        assert m["logLik"] == np.inf
        assert m["AIC"] == -np.inf
        assert m["BIC"] == -np.inf
        for k in ("df", "df.residual", "nobs"):
            assert m[k] == r[f"model.{k}"][e]


def test_exact_non_constant_fit() -> None:
    x = np.arange(10.0)
    X = np.column_stack([np.ones(10), x])
    Y = np.column_stack([2 + 0.5 * x, 1 + 0.25 * x + np.cos(x)])
    res = ols.fit(X, Y, intercept=True)
    np.testing.assert_allclose(res.terms["estimate"][0], [2, 0.5], rtol=1e-14)
    assert np.all(res.terms["statistic"][0] == np.inf)
    assert res.model["r.squared"][0] == 1
    assert res.model["statistic"][0] == np.inf
    assert res.model["p.value"][0] == 0
    assert np.all(np.isfinite(res.terms["statistic"][1]))


@pytest.mark.parametrize(
    ("x_shape", "y_shape"), [((5, 2), (4, 5)), ((5,), (5, 3)), ((5, 2), (5,))]
)
def test_mismatched_design_and_values_are_refused(x_shape, y_shape) -> None:
    with pytest.raises(ValueError, match=rf"X \({x_shape[0]},.* do not match"):
        ols.fit(np.ones(x_shape), np.ones(y_shape), intercept=True)


def test_unestimable_term_is_nan_not_shifted() -> None:
    # every "M" subject missing at element 1: sexM and age:sexM cannot be estimated
    ph = phenotypes()
    d = design_matrix("FA ~ age * sex", ph)
    Y = fa_values().astype(np.float64)[:, :3].copy()
    male = (ph.sex == "M").to_numpy()
    Y[male, 1] = np.nan
    res = ols.fit(d.matrix, Y, intercept=True)
    assert res.n_aliased == 1
    names = d.names
    gone = [names.index("sexM"), names.index("age:sexM")]
    assert np.all(np.isnan(res.terms["estimate"][1, gone]))
    alone = ols.fit(d.matrix[~male][:, :2], Y[~male, 1:2], intercept=True)
    for stat in stat_names.TERM_STATS:
        np.testing.assert_allclose(
            res.terms[stat][1, :2], alone.terms[stat][0], rtol=1e-12
        )
    for stat in stat_names.MODEL_STATS:
        np.testing.assert_allclose(res.model[stat][1], alone.model[stat][0], rtol=1e-10)
    assert np.all(np.isfinite(res.terms["estimate"][[0, 2]]))


def _lstsq(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    return beta, float(np.sum((y - X @ beta) ** 2))


@given(
    seed=st.integers(0, 2**32 - 1),
    n_elements=st.integers(1, 60),
    missing=st.floats(0, 0.3),
    group_min=st.sampled_from([1, 4, 10**6]),
)
def test_each_element_is_its_own_least_squares(
    seed: int, n_elements: int, missing: float, group_min: int
) -> None:
    rng = np.random.default_rng(seed)
    n = 30
    X = np.column_stack([np.ones(n), rng.normal(size=n), rng.integers(0, 2, n)])
    Y = rng.normal(size=(n, n_elements))
    # shared patterns (whole columns of subjects) and elements of their own
    Y[rng.random(n) < missing, : n_elements // 2] = np.nan
    Y[rng.random(Y.shape) < missing / 3] = np.inf
    fit_mask = np.isfinite(Y).sum(0) > 8
    old = ols.GROUP_MIN
    ols.GROUP_MIN = group_min
    try:
        res = ols.fit(X, Y, intercept=True, fit_mask=fit_mask)
    finally:
        ols.GROUP_MIN = old
    for j in range(n_elements):
        rows = np.isfinite(Y[:, j])
        if not fit_mask[j]:
            assert np.all(np.isnan(res.terms["estimate"][j]))
            assert np.isnan(res.model["nobs"][j])
            continue
        Xj = X[rows]
        if np.linalg.matrix_rank(Xj) < 3:
            continue
        beta, rss = _lstsq(Xj, Y[rows, j])
        np.testing.assert_allclose(
            res.terms["estimate"][j], beta, rtol=1e-9, atol=1e-12
        )
        np.testing.assert_allclose(res.model["deviance"][j], rss, rtol=1e-9)
        assert res.model["nobs"][j] == rows.sum()
        assert res.model["df.residual"][j] == rows.sum() - 3


def test_fewer_subjects_than_terms_alike_stacked_and_shared() -> None:
    # 4 subjects, 5 columns: R keeps the first 4 independent ones, the 5th is
    # NA; with missing values each element's own fit (stacked) must agree
    rng = np.random.default_rng(7)
    X = np.column_stack([np.ones(4), rng.normal(size=(4, 4))])
    Y = rng.normal(size=(4, 6))
    Y[0, 3:] = np.nan
    fits = {}
    old = ols.GROUP_MIN
    for group_min in (1, 10**6):  # shared patterns, or every element stacked
        ols.GROUP_MIN = group_min
        try:
            fits[group_min] = ols.fit(X, Y, intercept=True)
        finally:
            ols.GROUP_MIN = old
    shared, stacked = fits[1], fits[10**6]
    est = stacked.terms["estimate"]
    assert np.all(np.isnan(est[:, 4]))
    np.testing.assert_allclose(est, shared.terms["estimate"], rtol=1e-9)
    for j in range(6):
        rows = np.isfinite(Y[:, j])
        keep = 4 if rows.all() else 3
        beta = np.linalg.solve(X[rows][:, :keep], Y[rows, j])
        np.testing.assert_allclose(est[j, :keep], beta, rtol=1e-9)
        assert np.all(np.isnan(est[j, keep:]))
