"""R model formulas as design matrices, with R's treatment contrasts and names.

The formula is parsed and evaluated by formulaic (``formulaic.model_matrix``);
this module only translates R spellings formulaic does not read (``^`` and
``TRUE``/``FALSE`` inside calls such as ``I(age^2)`` or ``poly(age, 2, raw =
TRUE)``) and renames formulaic's columns to the coefficient names R's
``model.matrix`` gives, as ModelArray reports them: ``Intercept`` for
``(Intercept)``, factor columns as variable + level (``sexM``), interactions
joined by ``:`` (``age:sexM``), calls deparsed the way R prints them
(``I(age^2)``, ``poly(age, 2, raw = TRUE)1``).

As in R, string and logical columns are factors whose reference level is the
first sorted level (pandas categoricals keep their own order; logical columns
give ``FALSE``/``TRUE`` levels), and rows with a missing value in any variable
of the formula are dropped (``na.action = na.omit``).

Stateful transforms (``scale()``, ``center()``, ``poly()`` without ``raw``)
are evaluated once over the subjects with complete phenotypes. R evaluates them
again on each element's subjects, so where an element drops subjects their
coefficients (not the fit, R² or F) differ from R's.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

INTERCEPT = "Intercept"


class FormulaError(ValueError):
    """A formula that cannot be used with the given phenotypes."""


@dataclass(frozen=True)
class Design:
    """A design matrix over the subjects with complete phenotypes.

    Attributes
    ----------
    matrix : (n_rows, n_coefficients) float64.
    rows : positions (0-based, into the phenotype table) of those subjects.
    names : R's coefficient names, ``Intercept`` first when there is one.
    intercept : whether the model has an intercept.
    response : the name on the left of ``~``.
    """

    matrix: np.ndarray
    rows: np.ndarray
    names: list[str]
    intercept: bool
    response: str


def split_formula(formula: str) -> tuple[str, str]:
    """The response name and the right-hand side of ``response ~ rhs``."""
    if formula.count("~") != 1:
        raise FormulaError(f"formula {formula!r} must have the form 'response ~ terms'")
    lhs, rhs = (s.strip() for s in formula.split("~"))
    if not lhs.isidentifier():
        raise FormulaError(
            f"formula {formula!r}: the response must be the scalar's name, got {lhs!r}"
        )
    if not rhs:
        raise FormulaError(f"formula {formula!r} has no terms on the right of '~'")
    return lhs, rhs


def design_matrix(
    formula: str, phenotypes: pd.DataFrame, table: str = "the phenotypes"
) -> Design:
    """Evaluate ``formula``'s right-hand side on ``phenotypes`` as R's ``lm`` does.

    Parameters
    ----------
    formula : R-style formula, e.g. ``"FA ~ age * sex + I(age^2)"``.
    phenotypes : one row per subject.
    table : how error messages call ``phenotypes``.

    Returns
    -------
    Design

    Raises
    ------
    FormulaError
        Unknown columns or a formula formulaic cannot evaluate.
    """
    try:
        import formulaic
    except ImportError as err:
        raise ImportError(
            "R formulas need formulaic, from the 'models' extra: "
            "pip install 'xarray-clusterh5[models]'"
        ) from err

    response, rhs = split_formula(formula)
    rhs_py = to_formulaic(rhs)
    data = _r_types(phenotypes.reset_index(drop=True))
    try:
        needed = formulaic.Formula(rhs_py).required_variables
    except Exception as err:  # formulaic's parser errors have many types
        raise FormulaError(f"cannot parse formula {formula!r}: {err}") from err
    missing = sorted(v for v in needed if v not in data.columns)
    if missing:
        raise FormulaError(
            f"formula {formula!r} uses {', '.join(map(repr, missing))}, not a column "
            f"of {table} (columns: {', '.join(map(str, data.columns))})"
        )
    try:
        mm = formulaic.model_matrix(rhs_py, data, na_action="drop")
    except Exception as err:
        raise FormulaError(f"cannot evaluate formula {formula!r}: {err}") from err
    state = mm.model_spec.encoder_state
    names = [r_column_name(str(c), state) for c in mm.columns]
    return Design(
        matrix=np.asarray(mm, dtype=np.float64),
        rows=np.asarray(mm.index, dtype=np.intp),
        names=names,
        intercept=INTERCEPT in names,
        response=response,
    )


def _r_types(table: pd.DataFrame) -> pd.DataFrame:
    """Logical columns as factors with R's ``FALSE``/``TRUE`` levels."""
    out = table.copy()
    for col in out.columns:
        if pd.api.types.is_bool_dtype(out[col]):
            levels = ["FALSE", "TRUE"]
            values = out[col].map({False: "FALSE", True: "TRUE"})
            out[col] = pd.Categorical(values, categories=levels)
    return out


_CALL_OPEN = re.compile(r"[A-Za-z0-9_.]\s*$")


def to_formulaic(rhs: str) -> str:
    """R spellings inside calls as Python: ``^`` -> ``**``, ``TRUE`` -> ``True``."""
    out: list[str] = []
    calls: list[bool] = []  # per open parenthesis: is it a call's?
    i = 0
    while i < len(rhs):
        ch = rhs[i]
        if ch == "(":
            calls.append(bool(_CALL_OPEN.search(rhs[:i])))
        elif ch == ")" and calls:
            calls.pop()
        in_call = any(calls)
        word = re.match(r"(TRUE|FALSE)\b", rhs[i:]) if in_call else None
        if in_call and ch == "^":
            out.append("**")
        elif word and not re.search(r"[A-Za-z0-9_.]$", rhs[:i]):
            out.append(word.group(1).capitalize())
            i += len(word.group(1))
            continue
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def r_column_name(column: str, state: dict) -> str:
    """R's ``model.matrix`` name of one formulaic column."""
    if column == INTERCEPT:
        return INTERCEPT
    return ":".join(_r_factor_name(part, state) for part in _split_top(column, ":"))


def _r_factor_name(part: str, state: dict) -> str:
    keys = {str(k): v for k, v in state.items()}
    if part in keys:
        return deparse(part)
    depth = 0
    for pos in reversed(range(len(part))):  # the last top-level "[...]"
        depth += {")": 1, "(": -1}.get(part[pos], 0)
        if part[pos] == "[" and depth == 0 and part[:pos] in keys:
            expr, suffix = part[:pos], part[pos + 1 : -1]
            kind = str(getattr(keys[expr][0], "value", keys[expr][0]))
            if kind == "categorical":
                return deparse(expr) + suffix.removeprefix("T.")
            if expr.startswith("poly(") and suffix.isdigit():
                return deparse(expr) + str(int(suffix) + 1)  # R numbers from 1
            return deparse(expr) + suffix
    return part


def _split_top(text: str, sep: str) -> list[str]:
    """Split at ``sep`` outside parentheses and brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"(": 1, "[": 1, ")": -1, "]": -1}.get(ch, 0)
        if ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


# R's deparse of a Python expression: operator spelling, spacing and precedence
_BINOPS: dict[type, tuple[str, int]] = {
    ast.Pow: ("^", 14),
    ast.Mult: (" * ", 10),
    ast.Div: ("/", 10),
    ast.Mod: ("%%", 11),
    ast.FloorDiv: ("%/%", 11),
    ast.Add: (" + ", 9),
    ast.Sub: (" - ", 9),
}
_CMPOPS: dict[type, str] = {
    ast.Eq: " == ",
    ast.NotEq: " != ",
    ast.Lt: " < ",
    ast.LtE: " <= ",
    ast.Gt: " > ",
    ast.GtE: " >= ",
}


def deparse(expr: str) -> str:
    """How R prints the call ``expr`` (given in Python syntax), e.g. ``I(age^2)``."""
    try:
        node = ast.parse(expr, mode="eval").body
        return _deparse(node)
    except (SyntaxError, ValueError, KeyError):
        return expr


def _deparse(node: ast.AST, parent: int = 0, right: bool = False) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Constant):
        return _constant(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        sym, prec = _BINOPS[type(node.op)]
        rassoc = isinstance(node.op, ast.Pow)
        text = (
            _deparse(node.left, prec, rassoc)
            + sym
            + _deparse(node.right, prec, not rassoc)
        )
        needs = prec < parent or (prec == parent and right)
        return f"({text})" if needs else text
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        sign = "-" if isinstance(node.op, ast.USub) else "+"
        text = sign + _deparse(node.operand, 12)
        # parents are 0, 8-12, 14 or 99: "> 12" and "> 13" agree on all of them
        return f"({text})" if parent > 12 else text  # pragma: no mutate
    if isinstance(node, ast.Compare) and len(node.ops) == 1:
        text = (
            _deparse(node.left, 8)
            + _CMPOPS[type(node.ops[0])]
            + _deparse(node.comparators[0], 8)
        )
        # parents are 0, 8-12, 14 or 99: "> 7" and ">= 7" agree on all of them
        return f"({text})" if parent > 7 else text  # pragma: no mutate
    if isinstance(node, ast.Call):
        args = [_deparse(a) for a in node.args]
        args += [f"{k.arg} = {_deparse(k.value)}" for k in node.keywords]
        return f"{_deparse(node.func, 99)}({', '.join(args)})"
    return ast.unparse(node)


def _constant(value: object) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if value is None:
        return "NULL"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format(value, ".15g")
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise ValueError(f"no R spelling for {value!r}")
