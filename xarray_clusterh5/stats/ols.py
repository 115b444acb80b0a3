"""Ordinary least squares at many elements at once, with R ``lm``'s statistics.

One design matrix ``X`` (subjects x coefficients) is fitted to many responses
``Y`` (subjects x elements). Each element drops its own non-finite values, so
elements are grouped by their pattern of finite subjects: every pattern shared
by many elements is solved with one QR decomposition, and the rare elements
with a pattern of their own are solved together as a stack of masked designs
(a subject's row set to zero contributes nothing to a least-squares fit).

Everything is float64 and follows ``stats::lm`` + ``summary.lm`` +
``broom::tidy/glance``:

* aliasing: a column whose part orthogonal to the earlier columns has norm at
  most ``1e-7`` times its own norm is dropped (R's ``dqrdc2`` rule, ``tol =
  1e-7``); its statistics are NaN while the other columns hold the fit;
* exact fits (residuals at rounding level, e.g. a constant element) are made
  exact: residuals 0, coefficients that only carry rounding noise exactly 0, so
  standard errors are 0, t is ±Inf or NaN, R² and F are NaN for a constant,
  logLik is +Inf, as R gives for an exactly representable perfect fit.

No xarray, no files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

#: R's ``lm.fit`` tolerance for aliased columns
RANK_TOL = 1e-7
#: patterns shared by at least this many elements get their own QR
GROUP_MIN = 16
#: elements per stacked (masked) QR batch
STACK_BATCH = 256

_FIELDS = ("beta", "se_unit", "rss", "mss", "nobs", "rank")


@dataclass(frozen=True)
class _Fit:
    """Raw fit of k elements: what every statistic is derived from."""

    beta: np.ndarray  # (k, p), NaN for aliased columns
    se_unit: np.ndarray  # (k, p): sqrt(diag((X'X)^-1)), NaN for aliased
    rss: np.ndarray  # (k,)
    mss: np.ndarray  # (k,)
    nobs: np.ndarray  # (k,)
    rank: np.ndarray  # (k,)

    @classmethod
    def empty(cls, k: int, p: int) -> _Fit:
        nan = np.full((k, p), np.nan)
        return cls(nan, nan.copy(), *(np.full(k, np.nan) for _ in range(4)))

    def take(self, rows: np.ndarray) -> _Fit:
        return _Fit(*(getattr(self, n)[rows] for n in _FIELDS))

    def put(self, where: np.ndarray, other: _Fit) -> None:
        for name in _FIELDS:
            getattr(self, name)[where] = getattr(other, name)


@dataclass(frozen=True)
class OLSResult:
    """Statistics of every element; NaN rows for elements not fitted.

    ``terms[stat]`` is (elements, coefficients) for each of
    :data:`~xarray_clusterh5.stats.names.TERM_STATS`; ``model[stat]`` is
    (elements,) for each of :data:`~xarray_clusterh5.stats.names.MODEL_STATS`;
    ``n_aliased`` counts fitted elements with at least one aliased column.
    """

    terms: dict[str, np.ndarray]
    model: dict[str, np.ndarray]
    n_aliased: int


def fit(
    X: np.ndarray,
    Y: np.ndarray,
    *,
    intercept: bool,
    fit_mask: np.ndarray | None = None,
) -> OLSResult:
    """Fit ``Y[:, j] ~ X`` for every element ``j``, dropping non-finite values.

    Parameters
    ----------
    X : (n, p) design matrix (finite).
    Y : (n, m) responses; NaN and ±Inf mark a subject missing at that element.
    intercept : whether the model has an intercept (for R², F, adjusted R²).
    fit_mask : (m,) bool, elements to fit; the others get NaN statistics.

    Returns
    -------
    OLSResult
    """
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise ValueError(f"X {X.shape} and Y {Y.shape} do not match")
    m = Y.shape[1]
    raw = _Fit.empty(m, X.shape[1])
    finite = np.isfinite(Y)
    todo = np.ones(m, bool) if fit_mask is None else np.asarray(fit_mask, bool)
    todo &= finite.any(axis=0)
    cols = np.flatnonzero(todo)
    if cols.size:
        _fit_groups(X, Y, finite, cols, intercept, raw)
    return _statistics(raw, intercept)


def _fit_groups(
    X: np.ndarray,
    Y: np.ndarray,
    finite: np.ndarray,
    cols: np.ndarray,
    intercept: bool,
    out: _Fit,
) -> None:
    """Solve each shared pattern with one QR, the others as a masked stack."""
    complete = finite[:, cols].all(axis=0)
    if complete.any():  # the common case, without sorting patterns
        members = cols[complete]
        if members.size > Y.shape[1] // 2:  # fit all: cheaper than copying Y
            out.put(members, _fit_shared(X, Y, intercept).take(members))
        else:
            out.put(members, _fit_shared(X, Y[:, members], intercept))
    cols = cols[~complete]
    if not cols.size:
        return
    packed = np.packbits(finite[:, cols].T, axis=1)
    _, inverse, counts = np.unique(
        packed, axis=0, return_inverse=True, return_counts=True
    )
    inverse = inverse.ravel()
    # both paths give R's values: which one fits a group is only speed
    shared = counts >= GROUP_MIN  # pragma: no mutate
    for g in np.flatnonzero(shared):
        members = cols[inverse == g]
        rows = finite[:, members[0]]
        out.put(members, _fit_shared(X[rows], Y[rows][:, members], intercept))
    lonely = cols[~shared[inverse]]
    for start in range(0, lonely.size, STACK_BATCH):
        members = lonely[start : start + STACK_BATCH]
        out.put(members, _fit_stacked(X, Y[:, members], finite[:, members], intercept))


def kept_columns(X: np.ndarray) -> np.ndarray:
    """Columns of ``X`` that R's ``lm`` keeps (False: aliased with earlier ones)."""
    X = np.asarray(X, dtype=np.float64)
    return _kept_columns(
        np.asarray(np.linalg.qr(X, mode="r")), np.linalg.norm(X, axis=0)
    )


def _kept_columns(R: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """R's rule: a column is kept unless its new part is at most tol x its norm."""
    diag = np.abs(np.diagonal(R, axis1=-2, axis2=-1))
    # fewer rows than columns: the missing diagonal entries are 0 (dropped)
    pad = [(0, 0)] * (diag.ndim - 1) + [(0, norms.shape[-1] - diag.shape[-1])]
    diag = np.pad(diag, pad)
    return (diag > RANK_TOL * norms) & (norms > 0)


def _fit_shared(X: np.ndarray, Y: np.ndarray, intercept: bool) -> _Fit:
    """All elements of Y use every row of X."""
    n, p = X.shape
    k = Y.shape[1]
    res = _Fit.empty(k, p)
    keep = kept_columns(X)
    if not keep.any():
        return res
    Xk = X[:, keep]
    Q, R = np.linalg.qr(Xk)
    Rinv = np.linalg.inv(R)
    # einsum, not BLAS: threaded BLAS on these thin products is 10-50x slower
    # on a busy machine, and dask already runs one chunk per core
    beta = np.einsum("ij,jk->ik", Rinv, np.einsum("ni,nk->ik", Q, Y))  # (pk, k)
    res.beta[:, keep] = beta.T
    res.se_unit[:, keep] = np.sqrt(np.sum(Rinv**2, axis=1))[None, :]
    # one (n, k) work array: large temporaries cost more than the arithmetic
    work = np.empty_like(Y)
    # fitted minus its mean = the centred design times beta
    np.einsum("ni,ik->nk", Xk - Xk.mean(axis=0) if intercept else Xk, beta, out=work)
    res.mss[:] = np.einsum("ij,ij->j", work, work)
    np.einsum("ni,ik->nk", Xk, beta, out=work)
    np.subtract(Y, work, out=work)  # residuals
    res.rss[:] = np.einsum("ij,ij->j", work, work)
    res.nobs[:] = n
    res.rank[:] = keep.sum()
    _exact_fits(Xk, Y, keep, intercept, res)
    return res


def _fit_stacked(
    X: np.ndarray, Y: np.ndarray, finite: np.ndarray, intercept: bool
) -> _Fit:
    """Each element with its own rows, as a stack of designs with zeroed rows."""
    k = Y.shape[1]
    Xe = X[None, :, :] * finite.T[:, :, None]  # (k, n, p)
    y = np.where(finite, Y, 0.0).T  # (k, n)
    Q, R = np.linalg.qr(Xe)
    keep = _kept_columns(R, np.linalg.norm(Xe, axis=1))
    full = keep.all(axis=1)
    res = _Fit.empty(k, X.shape[1])
    if full.any():
        Rinv = np.linalg.inv(R[full])
        beta = np.einsum("kij,kj->ki", Rinv, np.einsum("kni,kn->ki", Q[full], y[full]))
        resid = y[full] - np.einsum("kni,ki->kn", Xe[full], beta)
        w = finite.T[full]
        nobs = w.sum(axis=1)
        fitted = np.where(w, y[full] - resid, 0.0)
        centre = fitted.sum(axis=1) / nobs if intercept else np.zeros(nobs.size)
        sub = _Fit(
            beta,
            np.sqrt(np.sum(Rinv**2, axis=2)),
            np.sum(resid**2, axis=1),
            np.sum(np.where(w, fitted - centre[:, None], 0.0) ** 2, axis=1),
            nobs.astype(np.float64),
            np.full(nobs.size, float(X.shape[1])),
        )
        res.put(np.flatnonzero(full), sub)
        tol = _exact_tol(nobs, np.linalg.norm(y[full], axis=1))
        everything = np.ones(X.shape[1], bool)
        for j in np.flatnonzero(full)[np.sqrt(sub.rss) <= tol]:
            rows = finite[:, j]
            _exact_fits(X[rows], Y[rows][:, [j]], everything, intercept, res, j)
    for j in np.flatnonzero(~full):  # aliased columns: rare, one by one
        rows = finite[:, j]
        res.put(np.array([j]), _fit_shared(X[rows], Y[rows][:, [j]], intercept))
    return res


def _exact_fits(
    Xk: np.ndarray,
    Y: np.ndarray,
    keep: np.ndarray,
    intercept: bool,
    res: _Fit,
    offset: int = 0,
) -> None:
    """Make fits whose residuals are rounding noise exact (see module docs)."""
    tol = _exact_tol(Y.shape[0], np.sqrt(np.einsum("ij,ij->j", Y, Y)))
    exact = np.flatnonzero(np.sqrt(res.rss[offset : offset + Y.shape[1]]) <= tol)
    norms = np.linalg.norm(Xk, axis=0)
    for j in exact:
        row = offset + j
        beta = res.beta[row, keep]
        # > or >=: equal only when both are 0 (a zero response), fitted as 0 either way
        big = np.abs(beta) * norms > tol[j]  # pragma: no mutate
        coef = np.zeros(beta.size)
        if big.any():
            coef[big] = np.linalg.lstsq(Xk[:, big], Y[:, j], rcond=None)[0]
        res.beta[row, keep] = coef
        res.rss[row] = 0.0
        # centring the design (not the fit) keeps a constant fit exactly constant
        centred = Xk[:, big] - (Xk[:, big].mean(axis=0) if intercept else 0.0)
        res.mss[row] = float(np.sum((centred @ coef[big]) ** 2))


def _exact_tol(n: np.ndarray | int, ynorm: np.ndarray) -> np.ndarray:
    """Residual norm below which a fit is exact: Householder QR's rounding bound."""
    return 8 * np.asarray(n) * np.finfo(np.float64).eps * ynorm


def _statistics(raw: _Fit, intercept: bool) -> OLSResult:
    """summary.lm + broom's tidy/glance from the raw fits."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        rdf = raw.nobs - raw.rank
        resvar = raw.rss / rdf
        sigma = np.sqrt(resvar)
        se = raw.se_unit * sigma[:, None]
        t = raw.beta / se
        p = 2.0 * special.stdtr(rdf[:, None], -np.abs(t))
        df_int = 1.0 if intercept else 0.0
        r2 = raw.mss / (raw.mss + raw.rss)
        adj = 1.0 - (1.0 - r2) * ((raw.nobs - df_int) / rdf)
        numdf = raw.rank - df_int
        has_f = numdf > 0
        fstat = np.where(has_f, (raw.mss / numdf) / resvar, np.nan)
        fp = np.where(has_f, special.fdtrc(numdf, rdf, fstat), np.nan)
        N = raw.nobs
        loglik = 0.5 * (-N * (np.log(2 * np.pi) + 1 - np.log(N) + np.log(raw.rss)))
        aic = -2.0 * loglik + 2.0 * (raw.rank + 1)
        bic = -2.0 * loglik + np.log(N) * (raw.rank + 1)
    p = np.where(np.isnan(t), np.nan, p)
    fp = np.where(np.isnan(fstat), np.nan, fp)
    terms = {"estimate": raw.beta, "std.error": se, "statistic": t, "p.value": p}
    model = {
        "r.squared": r2,
        "adj.r.squared": adj,
        "sigma": sigma,
        "statistic": fstat,
        "p.value": fp,
        "df": np.where(has_f, numdf, np.nan),
        "logLik": loglik,
        "AIC": aic,
        "BIC": bic,
        "deviance": raw.rss,
        "df.residual": rdf,
        "nobs": N,
    }
    n_aliased = int(np.sum(np.isnan(raw.beta).any(axis=1) & ~np.isnan(raw.rss)))
    return OLSResult(terms, model, n_aliased)
