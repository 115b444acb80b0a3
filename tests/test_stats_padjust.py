"""p_adjust against R's p.adjust (the fixtures' corrected columns), its definitions."""

from __future__ import annotations

import gzip
import hashlib
import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests._helpers import ANALYSES, LM, r_results
from xarray_clusterh5.stats.padjust import METHODS, p_adjust


def test_copied_tables_are_the_fixtures() -> None:
    sums = dict(
        reversed(line.split()) for line in (LM / "SHA256SUMS").read_text().splitlines()
    )
    for a in ANALYSES:
        raw = gzip.decompress((LM / f"{a.name}.csv.gz").read_bytes())
        assert hashlib.sha256(raw).hexdigest() == sums[f"{a.name}.csv"]


@pytest.mark.parametrize("analysis", [a.name for a in ANALYSES])
def test_r_corrections_from_r_raw_p_values(analysis: str) -> None:
    # R's own raw p-values in, R's corrected column out: the same doubles
    df = r_results(analysis)
    corrected = [c for c in df.columns if c.rsplit(".", 1)[-1] in METHODS]
    assert corrected
    for col in corrected:
        raw, method = col.rsplit(".", 1)
        ours = p_adjust(df[raw].to_numpy(), method)
        np.testing.assert_allclose(ours, df[col].to_numpy(), rtol=1e-14, atol=0)
        assert np.array_equal(np.isnan(ours), np.isnan(df[col].to_numpy()))


def test_p_values_must_be_1d() -> None:
    with pytest.raises(ValueError, match=r"p-values must be 1-D, got shape \(2, 2\)"):
        p_adjust(np.full((2, 2), 0.5), "fdr")


def test_nan_is_missing_and_n_counts_the_rest() -> None:
    p = np.array([0.01, np.nan, 0.04, 0.03, np.nan])
    np.testing.assert_array_equal(
        p_adjust(p, "bonferroni"), [0.03, np.nan, 0.12, 0.09, np.nan]
    )
    np.testing.assert_allclose(p_adjust(p, "BH"), [0.03, np.nan, 0.04, 0.04, np.nan])
    np.testing.assert_array_equal(
        p_adjust(np.array([0.2, np.nan]), "holm"), [0.2, np.nan]
    )


def test_r_documented_example() -> None:
    # R: p.adjust(c(0.01, 0.02, 0.03, 0.04, 0.05), m) for each method
    p = np.array([0.01, 0.02, 0.03, 0.04, 0.05])
    expected = {
        "bonferroni": [0.05, 0.10, 0.15, 0.20, 0.25],
        "holm": [0.05, 0.08, 0.09, 0.09, 0.09],
        "hochberg": [0.05, 0.05, 0.05, 0.05, 0.05],
        "hommel": [0.05, 0.05, 0.05, 0.05, 0.05],
        "BH": [0.05, 0.05, 0.05, 0.05, 0.05],
        "BY": [0.1141667] * 5,
        "none": list(p),
    }
    for method, values in expected.items():
        np.testing.assert_allclose(p_adjust(p, method), values, rtol=1e-6)


def test_unknown_method() -> None:
    with pytest.raises(ValueError, match="unknown p-value correction 'sidak'"):
        p_adjust(np.array([0.1, 0.2]), "sidak")


pvalues = hnp.arrays(
    np.float64,
    st.integers(1, 8),
    elements=st.one_of(st.floats(0, 1), st.sampled_from([0.0, 0.5, 1.0, 0.05])),
)


# subnormal p-values carry few significant bits: R's n / i * p and the
# definition's n * p / r round differently there, so compare absolutely
TINY = 1e-300


def _rank(p: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(p, kind="stable"), kind="stable") + 1


@given(pvalues)
def test_step_methods_match_their_definitions(p: np.ndarray) -> None:
    n = p.size
    r = _rank(p)
    bh = [
        min(1, min(n * p[j] / r[j] for j in range(n) if p[j] >= p[i])) for i in range(n)
    ]
    holm = [
        min(1, max((n - r[j] + 1) * p[j] for j in range(n) if p[j] <= p[i]))
        for i in range(n)
    ]
    hoch = [
        min(1, min((n - r[j] + 1) * p[j] for j in range(n) if p[j] >= p[i]))
        for i in range(n)
    ]
    q = sum(1 / k for k in range(1, n + 1))
    np.testing.assert_allclose(p_adjust(p, "BH"), bh, rtol=1e-12, atol=TINY)
    np.testing.assert_allclose(p_adjust(p, "fdr"), bh, rtol=1e-12, atol=TINY)
    np.testing.assert_allclose(
        p_adjust(p, "BY"), np.minimum(1, q * np.array(bh)), rtol=1e-12, atol=TINY
    )
    np.testing.assert_allclose(p_adjust(p, "holm"), holm, rtol=1e-12, atol=TINY)
    np.testing.assert_allclose(p_adjust(p, "hochberg"), hoch, rtol=1e-12, atol=TINY)
    np.testing.assert_allclose(
        p_adjust(p, "bonferroni"), np.minimum(1, n * p), atol=TINY
    )


def _simes(ps: list[float]) -> float:
    s = sorted(ps)
    return min(len(s) * s[k] / (k + 1) for k in range(len(s)))


@given(pvalues)
def test_hommel_is_closed_simes_testing(p: np.ndarray) -> None:
    # Hommel's adjusted p-value: the largest Simes p-value of any set holding i
    n = p.size
    expected = []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        best = 0.0
        for size in range(n):
            for sub in itertools.combinations(others, size):
                best = max(best, _simes([p[i], *(p[j] for j in sub)]))
        expected.append(min(1.0, best))
    np.testing.assert_allclose(p_adjust(p, "hommel"), expected, rtol=1e-12, atol=1e-15)


@given(pvalues)
def test_methods_are_ordered_and_bounded(p: np.ndarray) -> None:
    adj = {m: p_adjust(p, m) for m in METHODS}
    tol = 1e-12
    assert np.all(adj["hommel"] <= adj["hochberg"] + tol)
    assert np.all(adj["hochberg"] <= adj["holm"] + tol)
    assert np.all(adj["holm"] <= adj["bonferroni"] + tol)
    assert np.all(adj["BH"] <= adj["hochberg"] + tol)
    assert np.all(adj["BH"] <= adj["BY"] + tol)
    for m in METHODS:
        assert np.all(adj[m] >= p - tol)
        assert np.all(adj[m] <= 1.0)


@pytest.mark.parametrize(
    ("method", "expected"),
    [("bonferroni", [0.08, 0.02]), ("holm", [0.04, 0.02]),
     ("hochberg", [0.04, 0.02]), ("hommel", [0.04, 0.02]),
     ("BH", [0.04, 0.02]), ("fdr", [0.04, 0.02]), ("BY", [0.06, 0.03]),
     ("none", [0.04, 0.01])],
)  # fmt: skip
def test_two_p_values_by_hand(method: str, expected: list[float]) -> None:
    # n = 2 is where R's hommel is hochberg; every other method keeps its own
    # rule (BY: BH times 1 + 1/2), as R's p.adjust(c(0.04, 0.01), method)
    np.testing.assert_allclose(p_adjust([0.04, 0.01], method), expected, rtol=1e-12)
