"""Element-wise linear models giving R ``ModelArray.lm``'s results, lazily.

:func:`lm` fits ``formula`` at every element of a ModelArray scalar (dims
``(subject, element)``) and returns a lazy ``(stat, element)`` DataArray with
ModelArray 0.1.5's columns, names, order and values: ``element_id`` (0-based),
``<term>.<stat>`` for each term and ``var_terms`` statistic, ``model.<stat>``
for each ``var_model`` statistic, then the corrected p-values
``<term>.p.value.<method>`` and ``model.p.value.<method>``.

Elements are fitted chunk by chunk (one dask task per element chunk, streamed
from the file); the p-value corrections then run once over every fitted
element, so they do not depend on the chunking. :func:`merge_results` joins analyses
run on disjoint ``element_subset`` parts and recomputes the corrections over
the whole brain. :func:`write_results` adds the result to the ModelArray file
where R's ``writeResults`` puts it.

Where we differ from ModelArray, on purpose: a term that cannot be estimated
at an element (a factor level with no subject left there) is NaN at that
element instead of shifting later columns; a factor left with one level does
not stop the run; exact fits (constant elements) come out exact, not as
rounding noise (see :mod:`xarray_clusterh5.stats.ols`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from dask.base import tokenize

from xarray_clusterh5.errors import ClusterH5Error
from xarray_clusterh5.modelarray.store import ELEMENT_DIM, GROUP_ATTR, SOURCES_ATTR

try:
    from xarray_clusterh5.stats import ols
except ImportError as err:  # scipy (and formulaic) come with the "models" extra
    raise ImportError(
        f"element-wise models need the 'models' extra ({err.name} is missing): "
        "pip install 'xarray-clusterh5[models]'"
    ) from err
from xarray_clusterh5.stats import names as stat_names
from xarray_clusterh5.stats.formula import Design, FormulaError, design_matrix
from xarray_clusterh5.stats.padjust import METHODS, p_adjust

STAT_DIM = "stat"
DEFAULT_VAR_TERMS = ("estimate", "statistic", "p.value")
DEFAULT_VAR_MODEL = ("adj.r.squared", "p.value")
#: bytes of float64 response values per element chunk
CHUNK_BYTES = 32 * 1024 * 1024


def lm(
    data: xr.Dataset | xr.DataArray,
    formula: str,
    phenotypes: pd.DataFrame | None = None,
    *,
    scalar: str | None = None,
    full_outputs: bool = False,
    var_terms: Sequence[str] = DEFAULT_VAR_TERMS,
    var_model: Sequence[str] = DEFAULT_VAR_MODEL,
    correct_p_value_terms: Sequence[str] | str = ("fdr",),
    correct_p_value_model: Sequence[str] | str = ("fdr",),
    num_subj_lthr_abs: float = 10,
    num_subj_lthr_rel: float = 0.2,
    element_subset: slice | Sequence[int] | np.ndarray | None = None,
    chunk_size: int | None = None,
) -> xr.DataArray:
    """Fit ``formula`` at every element, as R's ``ModelArray.lm`` does.

    Parameters
    ----------
    data : a Dataset from ``from_cohort`` or the clusterh5 engine (or one of
        its scalar DataArrays), with dims ``(subject, element)`` and the
        subjects' ``source_file`` coordinate.
    formula : R formula, e.g. ``"FA ~ age + sex"``; the response is the scalar.
    phenotypes : one row per subject with a ``source_file`` column matching
        the scalar's sources (same strings; reordered if only the order
        differs, as ModelArray does). None: the cohort's own coordinates.
    scalar : the scalar to model; default the formula's response.
    full_outputs : every term and model statistic (overrides ``var_*``).
    var_terms : per-term statistics, from ``estimate``, ``std.error``,
        ``statistic``, ``p.value``.
    var_model : model statistics, from ``r.squared``, ``adj.r.squared``,
        ``sigma``, ``statistic``, ``p.value``, ``df``, ``logLik``, ``AIC``,
        ``BIC``, ``deviance``, ``df.residual``, ``nobs``.
    correct_p_value_terms, correct_p_value_model : R ``p.adjust`` methods
        (``"fdr"``, ``"bonferroni"``, ``"holm"``, ``"hochberg"``,
        ``"hommel"``, ``"BH"``, ``"BY"``) or ``"none"``.
    num_subj_lthr_abs, num_subj_lthr_rel : an element is fitted only if its
        number of finite values is greater than ``max(n_subjects * rel, abs)``.
    element_subset : 0-based element positions (a slice, range or integers);
        R's ``element.subset = 101:300`` is ``range(100, 300)``.
    chunk_size : elements per dask task (default: about 32 MiB of float64
        responses, a multiple of the file's chunk width).

    Returns
    -------
    xarray.DataArray
        Lazy float64 ``(stat, element)``, ``stat`` holding the column names.

    Raises
    ------
    ClusterH5Error
        Phenotypes that do not match the sources, unknown formula columns, a
        non-numeric response, a design that is rank-deficient everywhere, bad
        options; the message names the file (or the Dataset) and the culprit.
    """
    var, what = _scalar_variable(data, formula, scalar)
    terms_v, model_v = _statistics(full_outputs, var_terms, var_model, what)
    corr_t = _methods(correct_p_value_terms, "correct_p_value_terms", what)
    corr_m = _methods(correct_p_value_model, "correct_p_value_model", what)
    corr_t = _needs_p(corr_t, terms_v, "var_terms")
    corr_m = _needs_p(corr_m, model_v, "var_model")
    subject_dim = str(next(d for d in var.dims if d != ELEMENT_DIM))
    table = _table_name(phenotypes)
    pheno = _phenotypes(var, subject_dim, phenotypes, what, table)
    design = _design(formula, pheno, str(var.name), what, table)
    positions = _positions(element_subset, var.sizes[ELEMENT_DIM], what)
    contiguous = bool(np.all(np.diff(positions) == 1))  # positions are never empty
    pick = slice(positions[0], positions[-1] + 1) if contiguous else positions
    var = var.isel({ELEMENT_DIM: pick}).transpose(subject_dim, ELEMENT_DIM)
    columns = _Columns(design.names, terms_v, model_v, corr_t, corr_m)
    threshold = max(var.sizes[subject_dim] * num_subj_lthr_rel, num_subj_lthr_abs)
    chunks = chunk_size or _default_chunk(var)
    values = var.chunk({subject_dim: -1, ELEMENT_DIM: chunks}).data
    matrix = _graph(values, positions, design, columns, float(threshold))
    coords = {k: c for k, c in var.coords.items() if c.dims == (ELEMENT_DIM,)}
    coords[STAT_DIM] = np.asarray(columns.names, dtype=object)
    return xr.DataArray(
        matrix,
        dims=(STAT_DIM, ELEMENT_DIM),
        coords=coords,
        name=str(var.name),
        attrs={GROUP_ATTR: "results", "formula": formula, "scalar": str(var.name)},
    )


# --------------------------------------------------------------------------
# options and inputs
# --------------------------------------------------------------------------


def _where(data: xr.Dataset | xr.DataArray) -> str:
    """What error messages name: the source file, else the variable."""
    src = data.encoding.get("source")
    if src:
        return str(src)
    name = getattr(data, "name", None)  # a Dataset has none
    return f"<in-memory {type(data).__name__}{f' {name}' if name else ''}>"


def _scalar_variable(
    data: xr.Dataset | xr.DataArray, formula: str, scalar: str | None
) -> tuple[xr.DataArray, str]:
    """The response variable, chosen as ModelArray does (formula vs ``scalar``)."""
    from xarray_clusterh5.stats.formula import split_formula

    what = _where(data)
    try:
        response, _ = split_formula(formula)
    except FormulaError as err:
        raise ClusterH5Error(what, str(err)) from None
    if scalar is not None and response != scalar:
        raise ClusterH5Error(
            what, f"the formula's response is {response!r} but scalar={scalar!r}"
        )
    if isinstance(data, xr.DataArray):
        var = data if data.name is not None else data.rename(scalar or response)
    else:
        name = scalar or response
        if name not in data.data_vars:
            have = [str(k) for k, v in data.data_vars.items() if ELEMENT_DIM in v.dims]
            raise ClusterH5Error(what, f"no scalar {name!r}; scalars are {have}")
        var = data[name]
    if var.ndim != 2 or ELEMENT_DIM not in var.dims:
        raise ClusterH5Error(
            what, f"{var.name!r} must have dims (subject, element), has {var.dims}"
        )
    if var.dtype.kind not in "fiub":
        raise ClusterH5Error(what, f"response {var.name!r} is {var.dtype}, not numeric")
    return var, what


def _statistics(
    full: bool, var_terms: Sequence[str], var_model: Sequence[str], what: str
) -> tuple[list[str], list[str]]:
    """Deduplicated, validated ``var_terms`` and ``var_model`` (R's checks)."""
    if full:
        return list(stat_names.TERM_STATS), list(stat_names.MODEL_STATS)
    terms_v = list(
        dict.fromkeys([var_terms] if isinstance(var_terms, str) else var_terms)
    )
    model_v = list(
        dict.fromkeys([var_model] if isinstance(var_model, str) else var_model)
    )
    if not terms_v and not model_v:
        raise ClusterH5Error(what, "var_terms and var_model are both empty")
    for given, valid, label in (
        (terms_v, stat_names.TERM_STATS, "var_terms"),
        (model_v, stat_names.MODEL_STATS, "var_model"),
    ):
        bad = [v for v in given if v not in valid]
        if bad:
            raise ClusterH5Error(
                what, f"{bad[0]!r} is not valid for {label}: use {valid}"
            )
    return terms_v, model_v


def _methods(methods: Sequence[str] | str, label: str, what: str) -> list[str]:
    """R's rule: only "none", or only real ``p.adjust`` methods."""
    given = [methods] if isinstance(methods, str) else list(methods)
    if all(m == "none" for m in given):
        return []
    valid = [m for m in METHODS if m != "none"]
    bad = [m for m in given if m not in valid]
    if bad:
        raise ClusterH5Error(what, f"{label}: {bad[0]!r} is not one of {valid}")
    return list(dict.fromkeys(given))


def _needs_p(methods: list[str], stats: list[str], label: str) -> list[str]:
    if methods and "p.value" not in stats:
        warnings.warn(
            f"p.value was not included in {label}, so its p-values are not corrected",
            UserWarning,
            stacklevel=3,
        )
        return []
    return methods


def _table_name(phenotypes: pd.DataFrame | None) -> str:
    """How messages call the phenotypes: with their file when known."""
    if phenotypes is None:
        return "the cohort's coordinates"
    src = phenotypes.attrs.get("source")
    return f"the phenotypes ({src})" if src else "the phenotypes"


def _phenotypes(
    var: xr.DataArray,
    subject_dim: str,
    phenotypes: pd.DataFrame | None,
    what: str,
    table: str,
) -> pd.DataFrame:
    """The phenotype rows in the scalar's source order (ModelArray's checks)."""
    src_name = var.attrs.get(SOURCES_ATTR, "source_file")
    if src_name not in var.coords:
        raise ClusterH5Error(what, f"{var.name!r} has no {src_name!r} coordinate")
    sources = [str(s) for s in var.coords[src_name].values]
    if phenotypes is None:
        cols = {
            ("source_file" if k == src_name else str(k)): c.values
            for k, c in var.coords.items()
            if c.dims == (subject_dim,)
        }
        return pd.DataFrame(cols)
    if "source_file" not in phenotypes.columns:
        raise ClusterH5Error(what, f"{table} have no 'source_file' column")
    return align_phenotypes(sources, phenotypes, what, table)


def align_phenotypes(
    sources: Sequence[str],
    phenotypes: pd.DataFrame,
    what: str,
    table: str = "the phenotypes",
) -> pd.DataFrame:
    """Reorder ``phenotypes`` to ``sources`` by ``source_file`` or say why not."""
    given = [str(s) for s in phenotypes["source_file"]]
    if len(given) != len(sources):
        raise ClusterH5Error(
            what,
            f"{table} have {len(given)} rows but the scalar has "
            f"{len(sources)} source files",
        )
    for label, names in (
        ("the scalar's source files", sources),
        ("source_file", given),
    ):
        dup = pd.Index(names)[pd.Index(names).duplicated()]
        if len(dup):
            raise ClusterH5Error(what, f"{label} repeat {dup[0]!r}")
    if given == list(sources):
        return phenotypes.reset_index(drop=True)
    missing = [s for s in sources if s not in set(given)]
    if missing:
        first = next(
            i for i, (a, b) in enumerate(zip(sources, given, strict=True)) if a != b
        )
        raise ClusterH5Error(
            what,
            f"source_file of {table} does not match the scalar's sources: row {first} "
            f"is {given[first]!r} where the file has {sources[first]!r}; "
            f"{missing[0]!r} is not in {table}",
        )
    order = pd.Index(given).get_indexer(sources)
    return phenotypes.iloc[order].reset_index(drop=True)


def _design(
    formula: str, pheno: pd.DataFrame, scalar: str, what: str, table: str
) -> Design:
    if scalar in pheno.columns and scalar != "source_file":
        raise ClusterH5Error(
            what,
            f"the phenotypes have a column {scalar!r}, the scalar's name; rename it",
        )
    try:
        design = design_matrix(formula, pheno, table)
    except FormulaError as err:
        raise ClusterH5Error(what, str(err)) from None
    if design.matrix.shape[0] == 0:
        raise ClusterH5Error(what, f"no subject has every variable of {formula!r}")
    X = design.matrix
    keep = ols.kept_columns(X)
    if not keep.all():
        bad = design.names[int(np.flatnonzero(~keep)[0])]
        raise ClusterH5Error(
            what,
            f"the design of {formula!r} is rank-deficient for every element: term "
            f"{bad!r} is a linear combination of the terms before it",
        )
    return design


def _positions(subset: Any, n: int, what: str) -> np.ndarray:
    if subset is None:
        subset = slice(None)
    # a slice gives integers; an empty one is refused like an empty list
    pos = np.arange(n)[subset] if isinstance(subset, slice) else np.asarray(subset)
    if pos.ndim != 1 or pos.size == 0 or pos.dtype.kind not in "iu":
        raise ClusterH5Error(
            what,
            "element_subset must be a non-empty 1-D set of integers (the scalar "
            f"has {n} elements)",
        )
    if pos.min() < 0 or pos.max() >= n:
        raise ClusterH5Error(
            what,
            f"element_subset must lie in 0..{n - 1} (0-based), "
            f"got {pos.min()}..{pos.max()}",
        )
    return pos.astype(np.intp)


def _default_chunk(var: xr.DataArray) -> int:
    n_subj = var.shape[0]
    width = max(1, CHUNK_BYTES // (8 * max(n_subj, 1)))  # pragma: no mutate - chunking
    disk = var.encoding.get("chunksizes")
    if disk:  # (subject, element) chunks on disk: whole ones per dask chunk
        step = int(disk[list(var.dims).index(ELEMENT_DIM)])
        width = max(step, width // step * step)
    return int(min(width, var.shape[1]))


# --------------------------------------------------------------------------
# the columns and the dask graph
# --------------------------------------------------------------------------


class _Columns:
    """Column names in ModelArray's order and where each comes from."""

    def __init__(
        self,
        terms: list[str],
        terms_v: list[str],
        model_v: list[str],
        corr_t: list[str],
        corr_m: list[str],
    ) -> None:
        self.terms, self.terms_v, self.model_v = terms, terms_v, model_v
        self.raw = ["element_id"]
        self.raw += [f"{t}.{s}" for t in terms for s in terms_v]
        self.raw += [f"model.{s}" for s in model_v]
        self.p_rows = [self.raw.index(f"{t}.p.value") for _ in corr_t for t in terms]
        self.p_methods = [m for m in corr_t for _ in terms]
        self.corrected = [f"{t}.p.value.{m}" for m in corr_t for t in terms]
        if corr_m:
            model_row = self.raw.index("model.p.value")
            self.p_rows += [model_row] * len(corr_m)
            self.p_methods += corr_m
            self.corrected += [f"model.p.value.{m}" for m in corr_m]
        self.names = self.raw + self.corrected


def _graph(
    values: da.Array,
    positions: np.ndarray,
    design: Design,
    columns: _Columns,
    threshold: float,
) -> da.Array:
    """Fit tasks per element chunk, then one correction task over all elements."""
    ids = da.from_array(positions.astype(np.float64), chunks=(values.chunks[1],))
    n_raw = len(columns.raw)
    token = tokenize(values.name, design.matrix, design.rows, columns.names, threshold)
    raw = da.map_blocks(
        fit_block,
        values,
        ids[None, :],
        chunks=((n_raw + 1,), values.chunks[1]),
        dtype=np.float64,
        meta=np.empty((0, 0)),  # pragma: no mutate - only its ndim is used
        name=f"lm-fit-{token}",
        X=design.matrix,
        rows=design.rows,
        intercept=design.intercept,
        columns=columns,
        threshold=threshold,
    )
    picked = raw[[*columns.p_rows, n_raw]].rechunk({0: -1, 1: -1})
    corrected = da.map_blocks(
        correct_block,
        picked,
        chunks=((len(columns.corrected),), (picked.shape[1],)),
        dtype=np.float64,
        meta=np.empty((0, 0)),  # pragma: no mutate - only its ndim is used
        name=f"lm-correct-{token}",
        methods=tuple(columns.p_methods),
    )
    return da.concatenate([raw[:-1], corrected.rechunk({1: raw.chunks[1]})], axis=0)


def fit_block(
    Y: np.ndarray,
    ids: np.ndarray,
    *,
    X: np.ndarray,
    rows: np.ndarray,
    intercept: bool,
    columns: _Columns,
    threshold: float,
) -> np.ndarray:
    """The uncorrected columns (+ an "aliased" flag row) of one element chunk."""
    Y = np.asarray(Y, dtype=np.float64)
    fit_mask = np.isfinite(Y).sum(axis=0) > threshold
    Yr = Y if rows.size == Y.shape[0] else Y[rows]
    res = ols.fit(X, Yr, intercept=intercept, fit_mask=fit_mask)
    out = [ids.ravel()]
    for j in range(len(columns.terms)):
        out += [res.terms[s][:, j] for s in columns.terms_v]
    out += [res.model[s] for s in columns.model_v]
    aliased = np.isnan(res.terms["estimate"]).any(axis=1) & ~np.isnan(res.model["nobs"])
    out.append(aliased.astype(np.float64))
    return np.vstack(out)


def correct_block(picked: np.ndarray, *, methods: tuple[str, ...]) -> np.ndarray:
    """Corrected p-values over every element (rows: p-values, last: aliased flag)."""
    _warn_aliased(picked[-1:])
    pairs = zip(picked[:-1], methods, strict=True)  # pragma: no mutate - one per method
    rows = [p_adjust(p, m) for p, m in pairs]
    return np.vstack(rows) if rows else np.empty((0, picked.shape[1]))


def _warn_aliased(flag: np.ndarray) -> None:
    n = int(np.nansum(flag))
    if n:
        warnings.warn(
            f"{n} element(s) had terms that cannot be estimated there (e.g. no "
            "subject left in a factor level, or a factor with one level); those "
            "terms are NaN at those elements, the rest of each fit is kept",
            UserWarning,
            stacklevel=2,
        )


# --------------------------------------------------------------------------
# merging parts and writing
# --------------------------------------------------------------------------


def merge_results(parts: Sequence[xr.DataArray]) -> xr.DataArray:
    """Join analyses of disjoint element subsets; recompute corrections over all.

    Parameters
    ----------
    parts : results of :func:`lm` (or read back from files) with the same
        ``stat`` names, over disjoint elements (by ``element_id``).

    Returns
    -------
    xarray.DataArray
        ``(stat, element)`` in ``element_id`` order, every
        ``<x>.p.value.<method>`` recomputed from ``<x>.p.value`` over all rows.
    """
    if not parts:
        raise ValueError("merge needs at least one part")
    names = [str(s) for s in parts[0][STAT_DIM].values]
    for i, p in enumerate(parts[1:], 1):
        if [str(s) for s in p[STAT_DIM].values] != names:
            raise ValueError(f"part {i} has other statistics than part 0")
    joined = xr.concat([p.compute() for p in parts], dim=ELEMENT_DIM)
    ids = joined.sel({STAT_DIM: "element_id"}).values
    if len(np.unique(ids)) != ids.size:
        raise ValueError("the parts overlap: some element_id appears twice")
    joined = joined.isel({ELEMENT_DIM: np.argsort(ids, kind="stable")}).copy()
    for k, name in enumerate(names):
        raw, _, method = name.rpartition(".")
        if method in METHODS and raw.endswith(".p.value") and raw in names:
            joined.values[k] = p_adjust(joined.values[names.index(raw)], method)
    return joined


def write_results(
    result: xr.DataArray,
    path: str | os.PathLike[str],
    analysis: str,
    *,
    overwrite: bool = False,
) -> None:
    """Compute ``result`` and add it to a ModelArray file as ``results/<analysis>``.

    The Dataset the result was computed from may be the same file: compute
    the result first and close that Dataset, since HDF5 does not let one
    process open a file for reading and writing at once (the CLI does this).
    """
    from xarray_clusterh5.modelarray.results_h5 import write_results as write

    values = compute(result.transpose(STAT_DIM, ELEMENT_DIM)).values
    names = [str(s) for s in result[STAT_DIM].values]
    write(path, analysis, names, values, overwrite=overwrite)


def compute(result: xr.DataArray) -> xr.DataArray:
    """``result.compute()`` with each chunk stored straight into the output.

    ``compute`` concatenates the finished chunks into a new array while they
    are still held; storing them in place keeps the peak near one copy of the
    result (plus the chunks in flight), with the same values and scheduler.
    """
    if not isinstance(result.data, da.Array):
        return result
    out = np.empty(result.shape, dtype=result.dtype)
    # each chunk goes to its own part of a NumPy array: nothing to serialise
    da.store(result.data, out, lock=False)  # pragma: no mutate
    return result.copy(data=out)
