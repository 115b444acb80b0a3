"""Helpers shared by the tests (the one module tests import besides conftest).

* where the fixtures are, and what R read back from them;
* h5py listings in the format of the fixtures' ``.h5ls.json`` and a way to take
  an R-written fixture's content back out with plain h5py (compared entry by
  entry with listings made from the R-written files by the fixtures' author);
* comparisons with ModelArrayIO's files and exports;
* R ModelArray.lm's results for the lm tests (``tests/data/modelarray/lm``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import nibabel as nib
import numpy as np
import pandas as pd

from xarray_clusterh5.fmristore.write import Run

DATA = Path(__file__).parent / "data"
FMRISTORE = DATA / "fmristore"
MODELARRAY = DATA / "modelarray"

#: every R-written fmristore fixture, by stem
FMRISTORE_FIXTURES = ("vignette", "vignette_head", "irregular", "irregular_head")


def fmristore_path(stem: str) -> Path:
    """Path of an R-written fixture."""
    return FMRISTORE / f"{stem}.h5"


def fmristore_expected(stem: str) -> dict:
    """What R fmristore read back from the fixture (its ``.expected.json``)."""
    return json.loads((FMRISTORE / f"{stem}.expected.json").read_text())


def _dtype_entry(tid: h5py.h5t.TypeID, dtype: np.dtype) -> dict[str, Any]:
    cls = tid.get_class()
    if cls == h5py.h5t.STRING:
        out = {
            "numpy": "object" if tid.is_variable_str() else str(dtype),
            "h5_class": "STRING",
            "size": tid.get_size(),
            "variable_length": bool(tid.is_variable_str()),
            "charset": "UTF8" if tid.get_cset() == h5py.h5t.CSET_UTF8 else "ASCII",
            "strpad": {0: "NULLTERM", 1: "NULLPAD", 2: "SPACEPAD"}[tid.get_strpad()],
        }
        return out
    if cls == h5py.h5t.ENUM:
        return {"numpy": str(dtype), "h5_class": "ENUM", "size": tid.get_size()}
    if cls == h5py.h5t.INTEGER:
        return {
            "numpy": str(dtype),
            "h5_class": "INTEGER",
            "size": tid.get_size(),
            "byte_order": "LE" if tid.get_order() == h5py.h5t.ORDER_LE else "BE",
            "signed": tid.get_sign() == h5py.h5t.SGN_2,
        }
    if cls == h5py.h5t.FLOAT:
        return {
            "numpy": str(dtype),
            "h5_class": "FLOAT",
            "size": tid.get_size(),
            "byte_order": "LE" if tid.get_order() == h5py.h5t.ORDER_LE else "BE",
        }
    raise AssertionError(f"unexpected HDF5 class {cls}")


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()] if value.ndim else _plain(value[()])
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def h5ls_listing(path: str | Path) -> dict[str, dict[str, Any]]:
    """Path -> entry, with the keys of the fixtures' ``.h5ls.json``."""
    out: dict[str, dict[str, Any]] = {}
    with h5py.File(path, "r") as f:

        def attrs_of(obj: h5py.HLObject) -> dict[str, Any]:
            res = {}
            for name in obj.attrs:
                aid = obj.attrs.get_id(name)
                res[name] = {
                    "value": _plain(obj.attrs[name]),
                    "dtype": _dtype_entry(aid.get_type(), aid.dtype),
                    "shape": list(aid.shape),
                }
            return res

        def visit(name: str, obj: h5py.HLObject) -> None:
            p = "/" + name if name else "/"
            if isinstance(obj, h5py.Group):
                out[p] = {
                    "path": p,
                    "kind": "group",
                    "attrs": attrs_of(obj),
                    "members_in_h5py_order": list(obj),
                }
                return
            plist = obj.id.get_create_plist()
            filters = []
            for i in range(plist.get_nfilters()):
                code, _flags, values, fname = plist.get_filter(i)
                filters.append(
                    {"id": code, "name": fname.decode(), "options": list(values)}
                )
            layout = {0: "COMPACT", 1: "CONTIGUOUS", 2: "CHUNKED"}[plist.get_layout()]
            out[p] = {
                "path": p,
                "kind": "dataset",
                "shape_h5py": list(obj.shape),
                "dtype": _dtype_entry(obj.id.get_type(), obj.dtype),
                "layout": layout,
                "chunks": list(obj.chunks) if obj.chunks else None,
                "compression": obj.compression,
                "compression_opts": obj.compression_opts,
                "shuffle": obj.shuffle,
                "filters": filters,
                "maxshape": list(obj.maxshape) if obj.maxshape else None,
                "fillvalue": _plain(obj.fillvalue),
                "attrs": attrs_of(obj),
                "values": _plain(obj[()]) if obj.size <= 64 else None,
            }

        visit("", f)
        f.visititems(visit)
    return out


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value


def fixture_content(path: str | Path) -> dict[str, Any]:
    """The inputs that produced an R-written file, read back with plain h5py.

    Returns keyword arguments for ``write_experiment`` (without ``path``).
    """
    with h5py.File(path, "r") as f:
        mask_xyz = f["mask"][()].transpose(2, 1, 0).astype(bool)
        cmap = np.atleast_1d(f["cluster_map"][()])
        pixdim = f["header/pixdim"][()]
        runs: dict[str, Run] = {}
        meta: dict[str, dict[str, Any]] = {}
        ids = np.unique(cmap)
        for scan in f["scans"]:
            g = f["scans"][scan]
            data = summary = None
            if "clusters" in g:
                data = {int(c): g["clusters"][f"cluster_{c}"][()].T for c in ids}
            if "clusters_summary" in g:
                summary = g["clusters_summary/summary_data"][()]
            runs[scan] = Run(data=data, summary=summary)
            if "metadata" in g:
                m = {}
                for key, d in g["metadata"].items():
                    v = d[()]
                    if h5py.check_string_dtype(d.dtype):
                        v = _decode(v) if d.ndim == 0 else [_decode(x) for x in v]
                    elif d.ndim == 0:
                        v = d.dtype.type(v)
                    m[key] = v
                meta[scan] = m
        cm = None
        if "clusters/cluster_meta" in f:
            cm = {}
            for col, d in f["clusters/cluster_meta"].items():
                v = d[()]
                if h5py.check_string_dtype(d.dtype):
                    v = np.array([_decode(x) for x in np.atleast_1d(v)], dtype=object)
                cm[col] = np.atleast_1d(v)
        fmt = "2026" if "fmristore_class" in f.attrs else "2025"
        version = (
            _decode(f.attrs["fmristore_version"][0])
            if "fmristore_version" in f.attrs
            else None
        )
    return {
        "mask": mask_xyz,
        "cluster_map": cmap,
        "runs": runs,
        "scan_metadata": meta,
        "cluster_metadata": cm,
        "spacing": tuple(float(s) for s in pixdim[1:4]),
        "format": fmt,
        "fmristore_version": version,
    }


# -- ModelArray and ModelArrayIO -------------------------------------------

LM_NAMES = [
    "element_id",
    "Intercept.estimate",
    "Intercept.statistic",
    "Intercept.p.value",
    "age.estimate",
    "age.statistic",
    "age.p.value",
    "model.adj.r.squared",
    "model.p.value",
    "model.nobs",
    "Intercept.p.value.fdr",
    "age.p.value.fdr",
    "model.p.value.fdr",
]


def modelarray_listing(path: Path) -> dict[str, dict[str, Any]]:
    """Every object: dtype (and string type), shape, chunks, filters, attrs, values."""
    out: dict[str, dict[str, Any]] = {}
    with h5py.File(path, "r") as f:

        def visit(name: str, obj: Any) -> None:
            attrs = {}
            for k, v in obj.attrs.items():
                attrs[k] = (np.asarray(v).tolist(), repr(h5py.check_string_dtype(
                    obj.attrs.get_id(k).dtype)))  # fmt: skip
            if isinstance(obj, h5py.Dataset):
                out[name] = {
                    "dtype": obj.dtype.str if obj.dtype.kind != "O" else "O",
                    "string": repr(h5py.check_string_dtype(obj.dtype)),
                    "shape": obj.shape,
                    "chunks": obj.chunks,
                    "maxshape": obj.maxshape,
                    "compression": obj.compression,
                    "opts": obj.compression_opts,
                    "shuffle": obj.shuffle,
                    "fletcher32": obj.fletcher32,
                    "fillvalue": repr(obj.fillvalue),
                    "attrs": attrs,
                    "values": obj[()],
                }
            else:
                out[name] = {"group": True, "attrs": attrs}

        f.visititems(visit)
    return out


def assert_same_file(ours: Path, theirs: Path) -> None:
    """Our file equals ModelArrayIO's entry by entry."""
    a, b = modelarray_listing(ours), modelarray_listing(theirs)
    assert sorted(a) == sorted(b)
    for name in b:
        for key, want in b[name].items():
            got = a[name][key]
            if key == "values":
                got, want = np.asarray(got), np.asarray(want)
                assert got.dtype == want.dtype, name
                if want.dtype.kind == "f":
                    np.testing.assert_array_equal(got, want, err_msg=name)
                else:
                    assert got.tolist() == want.tolist(), name
            else:
                assert got == want, (name, key)


def assert_same_export(ours: Path, theirs: Path) -> None:
    """Our CIFTI exports equal ModelArrayIO's: names, dtypes, axes, values."""
    names = sorted(os.listdir(theirs))
    assert sorted(os.listdir(ours)) == names
    for n in names:
        a, b = nib.load(ours / n), nib.load(theirs / n)
        assert a.get_data_dtype() == b.get_data_dtype(), n
        assert a.header.get_axis(0) == b.header.get_axis(0), n
        assert a.header.get_axis(1) == b.header.get_axis(1), n
        np.testing.assert_array_equal(
            np.asarray(a.dataobj), np.asarray(b.dataobj), err_msg=n
        )


# -- R ModelArray.lm fixtures ----------------------------------------------

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
