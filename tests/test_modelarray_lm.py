"""lm() against every R ModelArray.lm analysis of the fixtures, and its writer."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import dask.array as da
import h5py
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from tests._helpers import (
    ANALYSES,
    COHORT,
    CONSTANT,
    Analysis,
    assert_matches_r,
    phenotypes,
    r_columns,
    r_results,
)
from xarray_clusterh5.errors import ClusterH5Error
from xarray_clusterh5.modelarray import results_h5
from xarray_clusterh5.modelarray.h5 import read_results
from xarray_clusterh5.modelarray.lm import (
    compute,
    correct_block,
    lm,
    merge_results,
    write_results,
)
from xarray_clusterh5.stats.padjust import p_adjust


@pytest.fixture
def cohort():
    with xr.open_dataset(COHORT, engine="clusterh5") as ds:
        yield ds


def _fit(ds: xr.Dataset, a: Analysis, **kw) -> xr.DataArray:
    return lm(ds, a.formula, phenotypes(), **{**a.kwargs, **kw}).compute()


def _ids(res: xr.DataArray) -> np.ndarray:
    return res.sel(stat="element_id").values.astype(int)


@pytest.mark.parametrize("a", ANALYSES, ids=lambda a: a.name)
def test_same_columns_and_values_as_r(cohort: xr.Dataset, a: Analysis) -> None:
    res = _fit(cohort, a, chunk_size=128)
    r = r_results(a.name)
    assert list(res.stat.values) == r_columns(a.name)
    assert res.shape == (r.shape[1], r.shape[0])
    assert res.dtype == np.float64
    ids = _ids(res)
    np.testing.assert_array_equal(ids, r["element_id"].to_numpy())
    np.testing.assert_array_equal(res.element.values, ids)  # greyordinate vertex ids
    fitted = ~np.isin(ids, CONSTANT)
    for k, col in enumerate(r.columns):
        if ".p.value." in col:
            continue  # below: R's constant-element noise enters its corrections
        assert_matches_r(res.values[k][fitted], r[col].to_numpy()[fitted], col)
    # skipped elements: NaN everywhere but element_id, as in R
    skipped = np.isnan(r.iloc[:, 1].to_numpy())
    assert skipped.sum() == {"lm_iq": 34, "lm_subset": 3}.get(a.name, 12)
    assert np.all(np.isnan(res.values[1:, skipped]))


@pytest.mark.parametrize("a", ANALYSES, ids=lambda a: a.name)
def test_corrections_over_all_elements_as_r(cohort: xr.Dataset, a: Analysis) -> None:
    # R's corrections include its rounding-noise p-values at the constant
    # elements: put those in, correct with our final step, get R's columns
    res = _fit(cohort, a)
    r = r_results(a.name)
    names = list(res.stat.values)
    const = np.isin(_ids(res), CONSTANT)
    corrected = [c for c in names if ".p.value." in c]
    assert corrected
    raws = []
    for c in corrected:
        raw = res.values[names.index(c.rpartition(".")[0])].copy()
        raw[const] = r[c.rpartition(".")[0]].to_numpy()[const]
        raws.append(raw)
    picked = np.vstack([*raws, np.zeros(res.shape[1])])
    methods = tuple(c.rpartition(".")[2] for c in corrected)
    ours = correct_block(picked, methods=methods)
    for k, c in enumerate(corrected):
        assert_matches_r(ours[k], r[c].to_numpy(), c)
    # and away from the constant elements' influence, our own corrections are
    # the correction of our own p-values
    for c in corrected:
        raw, _, method = c.rpartition(".")
        expect = p_adjust(res.sel(stat=raw).values, method)
        np.testing.assert_array_equal(res.sel(stat=c).values, expect)


def test_constant_elements_are_exact(cohort: xr.Dataset) -> None:
    res = _fit(cohort, ANALYSES[1])  # lm_full: every statistic
    r = r_results("lm_full").set_index("element_id")
    for e in CONSTANT:
        col = res.sel(element=e)
        for k in ("model.nobs", "model.df", "model.df.residual"):
            assert col.sel(stat=k).item() == r.loc[e, k]
        np.testing.assert_allclose(
            col.sel(stat="Intercept.estimate").item(),
            r.loc[e, "Intercept.estimate"],
            rtol=1e-12,
        )
        assert col.sel(stat="Intercept.statistic").item() == np.inf
        assert col.sel(stat="Intercept.p.value").item() == 0
        assert col.sel(stat="age.estimate").item() == 0
        assert np.isnan(col.sel(stat="age.statistic").item())
        assert np.isnan(col.sel(stat="age.p.value.fdr").item())
        for k in ("model.r.squared", "model.statistic", "model.p.value"):
            assert np.isnan(col.sel(stat=k).item())
        assert col.sel(stat="model.logLik").item() == np.inf
        assert col.sel(stat="model.AIC").item() == -np.inf


def test_compute_in_place_is_compute(cohort: xr.Dataset) -> None:
    a = ANALYSES[1]
    lazy = lm(cohort, a.formula, phenotypes(), chunk_size=100, **a.kwargs)
    stored = compute(lazy)
    assert isinstance(stored.data, np.ndarray)
    np.testing.assert_array_equal(stored.values, lazy.values)
    assert list(stored.stat.values) == list(lazy.stat.values)
    assert compute(stored) is stored


def test_corrections_do_not_depend_on_chunks(cohort: xr.Dataset) -> None:
    a = ANALYSES[2]  # lm_bonf: fdr and bonferroni
    whole = _fit(cohort, a, chunk_size=1000)
    for size in (7, 333):
        part = lm(cohort, a.formula, phenotypes(), chunk_size=size, **a.kwargs)
        assert len(part.data.chunks[1]) == -(-1000 // size)
        # BLAS rounds differently for other widths (last bits); a correction per
        # chunk would be off by a factor of about 1000 / size
        np.testing.assert_allclose(part.values, whole.values, rtol=1e-10, atol=1e-12)
        bonf = part.sel(stat="age.p.value.bonferroni").values
        raw = part.sel(stat="age.p.value").values
        ok = ~np.isnan(raw)
        np.testing.assert_array_equal(bonf[ok], np.minimum(1, ok.sum() * raw[ok]))


def test_every_p_adjust_method(cohort: xr.Dataset) -> None:
    methods = ["holm", "hochberg", "hommel", "bonferroni", "BH", "BY", "fdr"]
    res = lm(
        cohort,
        "FA ~ age",
        phenotypes(),
        correct_p_value_terms=methods,
        correct_p_value_model="none",
    )
    names = list(res.stat.values)
    terms = ("Intercept", "age")
    assert names[-14:] == [f"{t}.p.value.{m}" for m in methods for t in terms]
    for m in methods:
        np.testing.assert_array_equal(
            res.sel(stat=f"age.p.value.{m}").values,
            p_adjust(res.sel(stat="age.p.value").values, m),
        )
    assert "model.p.value.fdr" not in names
    with pytest.raises(ClusterH5Error, match="'sidak' is not one of"):
        lm(cohort, "FA ~ age", phenotypes(), correct_p_value_terms=["sidak"])


def test_phenotypes_from_the_cohort_coordinates(cohort: xr.Dataset) -> None:
    ph = phenotypes()
    ds = cohort.assign_coords(
        {c: ("subject", ph[c].to_numpy()) for c in ph.columns if c != "source_file"}
    )
    a = ANALYSES[0]
    via_coords = ds.clusterh5.lm(a.formula).values
    np.testing.assert_array_equal(via_coords, _fit(cohort, a).values)


def test_subjects_without_phenotypes_left_out_at_any_chunk_width(
    cohort: xr.Dataset,
) -> None:
    # a subject whose phenotype is missing is left out of every fit, also when
    # a chunk holds as many elements as there are subjects left
    ph = phenotypes()
    ph.loc[7, "age"] = np.nan
    a = ANALYSES[0]
    kept = lm(cohort.isel(subject=np.r_[0:7, 8:80]), a.formula, ph.drop(index=7))
    kept = kept.sel(stat="age.estimate").compute().values
    want = lm(cohort, a.formula, ph, chunk_size=1000).compute()
    # the same estimates as without that subject (ModelArray's element
    # threshold counts every subject's values, so one more element may be
    # left out here)
    fitted = ~np.isnan(want.sel(stat="age.estimate").values)
    assert fitted.sum() >= 900
    np.testing.assert_allclose(
        want.sel(stat="age.estimate").values[fitted], kept[fitted], rtol=1e-12
    )
    for size in (79, 100):
        got = lm(cohort, a.formula, ph, chunk_size=size).compute()
        np.testing.assert_allclose(got.values, want.values, rtol=1e-12, atol=1e-300)


def test_phenotype_rows_matched_by_source_file(cohort: xr.Dataset) -> None:
    ph = phenotypes()
    a = ANALYSES[0]
    shuffled = ph.sample(frac=1, random_state=3)
    np.testing.assert_array_equal(
        lm(cohort, a.formula, shuffled).values, _fit(cohort, a).values
    )
    # indexed by source file, the column kept (set_index(..., drop=False)):
    # the row labels are ignored, in file order or not
    for table in (ph, shuffled):
        indexed = table.set_index("source_file", drop=False)
        np.testing.assert_array_equal(
            lm(cohort, a.formula, indexed).values, _fit(cohort, a).values
        )
    bad = ph.copy()
    bad.loc[5, "source_file"] = "FA/sub-999_FA.dscalar.nii"
    with pytest.raises(ClusterH5Error, match=r"row 5 is 'FA/sub-999.*sub-006"):
        lm(cohort, a.formula, bad)
    with pytest.raises(ClusterH5Error, match="79 rows but the scalar has 80"):
        lm(cohort, a.formula, ph.iloc[1:])
    with pytest.raises(ClusterH5Error, match="no 'source_file' column"):
        lm(cohort, a.formula, ph.drop(columns="source_file"))
    dup = ph.copy()
    dup.loc[1, "source_file"] = dup.loc[0, "source_file"]
    with pytest.raises(ClusterH5Error, match="source_file repeat"):
        lm(cohort, a.formula, dup)


def test_bad_input_names_the_file_and_culprit(cohort: xr.Dataset) -> None:
    ph = phenotypes()
    # an unknown response lists the scalars there are (variables along element)
    extra = cohort.assign(age=("subject", ph["age"].to_numpy()))
    with pytest.raises(ClusterH5Error, match=r"no scalar 'MD'; scalars are \['FA'\]$"):
        lm(extra, "MD ~ age", ph)
    name = str(COHORT)
    cases = [
        ("FA ~ agee", {}, ph, "'agee', not a column of the phenotypes"),
        ("FA ~ age + age2", {}, ph.assign(age2=2 * ph.age), "term 'age2' is a linear"),
        ("MD ~ age", {}, ph, "no scalar 'MD'"),
        ("FA ~ age", {"scalar": "MD"}, ph, "response is 'FA' but scalar='MD'"),
        ("FA ~ age", {"var_terms": ["beta"]}, ph, "'beta' is not valid for var_terms"),
        ("FA ~ age", {"element_subset": [0, 1000]}, ph, "element_subset must lie"),
        ("FA ~ age", {"element_subset": slice(5, 5)}, ph, "must be a non-empty"),
        ("FA ~ age", {"element_subset": []}, ph, "must be a non-empty"),
        ("FA ~ age", {"var_terms": [], "var_model": []}, ph, "both empty"),
        ("FA ~ age", {}, ph.assign(FA=1.0), "a column 'FA', the scalar's name"),
    ]
    for formula, kw, table, message in cases:
        with pytest.raises(ClusterH5Error, match=message) as info:
            lm(cohort, formula, table, **kw)
        assert name in str(info.value)
    with pytest.raises(
        ClusterH5Error, match="no subject has every variable of"
    ) as info:
        lm(cohort, "FA ~ age + iq", ph.assign(iq=np.nan))
    assert name in str(info.value)
    bare = cohort.drop_vars("source_file")
    with pytest.raises(ClusterH5Error, match="'FA' has no 'source_file' coordinate"):
        lm(bare, "FA ~ age", ph)
    text = cohort.assign(FA=cohort.FA.astype(str))
    with pytest.raises(ClusterH5Error, match="not numeric"):
        lm(text, "FA ~ age", ph)


def test_only_term_or_only_model_statistics(cohort: xr.Dataset) -> None:
    ph = phenotypes()
    full = lm(cohort, "FA ~ age", ph).compute()
    only_model = lm(
        cohort, "FA ~ age", ph, var_terms=[], var_model=["p.value"],
        correct_p_value_terms="none",
    )  # fmt: skip
    assert only_model.stat.values.tolist() == [
        "element_id", "model.p.value", "model.p.value.fdr",
    ]  # fmt: skip
    np.testing.assert_array_equal(
        only_model.values, full.sel(stat=only_model.stat.values).values
    )
    only_terms = lm(
        cohort, "FA ~ age", ph, var_terms=["p.value"], var_model=[],
        correct_p_value_model="none",
    )  # fmt: skip
    assert "model.p.value" not in only_terms.stat.values
    np.testing.assert_array_equal(
        only_terms.sel(stat="age.p.value.fdr").values,
        full.sel(stat="age.p.value.fdr").values,
    )


def test_p_value_missing_from_var_terms_warns(cohort: xr.Dataset) -> None:
    with pytest.warns(UserWarning, match="p.value was not included in var_terms"):
        res = lm(cohort, "FA ~ age", phenotypes(), var_terms=["estimate"])
    assert list(res.stat.values) == [
        "element_id",
        "Intercept.estimate",
        "age.estimate",
        "model.adj.r.squared",
        "model.p.value",
        "model.p.value.fdr",
    ]


def test_one_level_factor_is_fitted_and_counted(cohort: xr.Dataset) -> None:
    ph = phenotypes()
    values = cohort.FA.values.copy()
    male = (ph.sex == "M").to_numpy()
    values[male, 10] = np.nan  # element 10: only "F" subjects left
    values[np.flatnonzero(male)[:-1], 11] = np.nan  # element 11: one "M" left
    ds = cohort.copy(data={"FA": values})
    with pytest.warns(UserWarning, match="2 element.* cannot be estimated"):
        res = lm(ds, "FA ~ age * sex", ph, full_outputs=True).compute()
    e10 = res.isel(element=10)
    for t in ("sexM", "age:sexM"):
        assert np.all(np.isnan(e10.sel(stat=[f"{t}.estimate", f"{t}.p.value"])))
    alone = lm(ds.isel(subject=~male), "FA ~ age", ph[~male], full_outputs=True)
    alone = alone.compute()
    for k in ("Intercept.estimate", "age.p.value", "model.r.squared", "model.AIC"):
        np.testing.assert_allclose(
            e10.sel(stat=k).item(),
            alone.isel(element=10).sel(stat=k).item(),
            rtol=1e-10,
        )
    assert e10.sel(stat="model.nobs").item() == (~male).sum()
    # one "M" subject: sexM is its residual, age:sexM is aliased with sexM
    e11 = res.isel(element=11)
    assert np.isfinite(e11.sel(stat="sexM.estimate").item())
    assert np.isnan(e11.sel(stat="age:sexM.estimate").item())


def test_strided_element_subset_fits_those_elements(cohort: xr.Dataset) -> None:
    ph = phenotypes()
    whole = lm(cohort, "FA ~ age", ph).compute()
    part = lm(cohort, "FA ~ age", ph, element_subset=slice(1, 40, 2)).compute()
    np.testing.assert_array_equal(part.element.values, np.arange(1, 40, 2))
    np.testing.assert_array_equal(_ids(part), np.arange(1, 40, 2))
    for stat in ("age.estimate", "age.p.value", "model.adj.r.squared"):
        np.testing.assert_allclose(  # other batches of the same fits: rounding only
            part.sel(stat=stat).values, whole.sel(stat=stat).values[1:40:2], rtol=1e-12
        )


def test_merge_of_disjoint_parts_is_the_whole_run(cohort: xr.Dataset) -> None:
    a = ANALYSES[2]
    whole = _fit(cohort, a)
    parts = [
        lm(cohort, a.formula, phenotypes(), element_subset=s, **a.kwargs)
        for s in (range(600, 1000), slice(0, 250), np.arange(250, 600))
    ]
    merged = merge_results(parts)
    np.testing.assert_array_equal(merged.values, whole.values)
    assert list(merged.stat.values) == list(whole.stat.values)
    # each part alone corrects over its own elements only, as ModelArray does
    assert not np.array_equal(
        parts[1].sel(stat="age.p.value.fdr").values,
        whole.sel(stat="age.p.value.fdr").values[:250],
    )
    with pytest.raises(ValueError, match="overlap"):
        merge_results([parts[0], parts[0]])
    with pytest.raises(ValueError, match="merge needs at least one part"):
        merge_results([])
    other = lm(cohort, "FA ~ age", phenotypes(), element_subset=slice(0, 5))
    with pytest.raises(ValueError, match="part 1 has other statistics than part 0"):
        merge_results([parts[1], other])


@pytest.fixture
def cohort_copy(tmp_path: Path) -> Path:
    path = tmp_path / "cohortA_FA.h5"
    shutil.copy(COHORT, path)
    return path


def _listing(path: Path, analysis: str) -> dict:
    with h5py.File(path, "r") as f:
        m = f[f"results/{analysis}/results_matrix"]
        c = f[f"results/{analysis}/column_names"]
        return {
            "matrix": (m.dtype, m.shape, m.maxshape, m.compression, m.compression_opts),
            "names": (
                h5py.check_string_dtype(c.dtype),
                c.shape,
                c.chunks,
                c.maxshape,
                c.compression,
            ),
            "values": m[()],
            "column_names": [s.decode() for s in c[()]],
            "scalar": f["scalars/FA/values"][()],
            "groups": sorted(f["results"]),
        }


@pytest.mark.parametrize("a", [ANALYSES[0], ANALYSES[4]], ids=lambda a: a.name)
def test_written_where_r_reads_it(cohort_copy: Path, a: Analysis) -> None:
    with xr.open_dataset(cohort_copy, engine="clusterh5") as ds:
        res = lm(ds, a.formula, phenotypes(), **a.kwargs).compute()
        scalar_before = ds.FA.values
    write_results(res, cohort_copy, a.name)
    got = _listing(cohort_copy, a.name)
    n = len(r_columns(a.name))
    rows = 200 if a.name == "lm_subset" else 1000
    # as R's writeResults (listings.txt): float64, stats x elements, growable
    assert got["matrix"] == (np.dtype("float64"), (n, rows), (None, None), "gzip", 4)
    assert got["names"][0].encoding == "ascii"
    assert got["names"][1:] == ((n,), (1024,), (None,), "gzip")
    assert got["column_names"] == r_columns(a.name)
    np.testing.assert_array_equal(got["values"], res.values)
    np.testing.assert_array_equal(got["scalar"], scalar_before)
    assert got["groups"] == [a.name]
    names, _matrix = read_results(cohort_copy, a.name)
    assert names == r_columns(a.name)
    with xr.open_dataset(cohort_copy, engine="clusterh5") as back:
        np.testing.assert_array_equal(back[a.name].values, res.values)


def test_overwrite_and_interrupted_writes(
    cohort_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with xr.open_dataset(cohort_copy, engine="clusterh5") as ds:
        first = lm(ds, "FA ~ age", phenotypes()).compute()
        second = lm(ds, "FA ~ age + sex", phenotypes()).compute()
    write_results(first, cohort_copy, "age")
    with pytest.raises(ClusterH5Error, match="results/age exists; pass overwrite=True"):
        write_results(second, cohort_copy, "age")

    def broken(grp, names, matrix):
        grp.create_dataset("results_matrix", data=matrix[:, :10])
        raise KeyboardInterrupt

    monkeypatch.setattr(results_h5, "_write_group", broken)
    with pytest.raises(KeyboardInterrupt):
        write_results(second, cohort_copy, "age", overwrite=True)
    with pytest.raises(KeyboardInterrupt):
        write_results(second, cohort_copy, "new")
    got = _listing(cohort_copy, "age")
    assert got["groups"] == ["age"]  # no half-written group, old one intact
    np.testing.assert_array_equal(got["values"], first.values)
    monkeypatch.undo()
    write_results(second, cohort_copy, "age", overwrite=True)
    np.testing.assert_array_equal(_listing(cohort_copy, "age")["values"], second.values)


def test_write_errors(tmp_path: Path, cohort: xr.Dataset) -> None:
    res = lm(cohort, "FA ~ age", phenotypes()).compute()
    with pytest.raises(ClusterH5Error, match="no such ModelArray file"):
        write_results(res, tmp_path / "nope.h5", "a")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = 1
    with pytest.raises(ClusterH5Error, match="not a ModelArray file"):
        write_results(res, other, "a")
    with pytest.raises(ClusterH5Error, match="cannot be opened for writing"):
        write_results(res, COHORT, "a")  # open for reading by the fixture


@pytest.mark.slow
def test_process_workers(cohort: xr.Dataset) -> None:
    distributed = pytest.importorskip("distributed")
    a = ANALYSES[1]
    expected = _fit(cohort, a)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", ResourceWarning)
        got = lm(cohort, a.formula, phenotypes(), chunk_size=200, **a.kwargs).compute()
    np.testing.assert_array_equal(got.values, expected.values)


def test_in_memory_dataarray() -> None:
    # a plain DataArray with source_file coordinates works without any file
    rng = np.random.default_rng(0)
    ph = pd.DataFrame(
        {"source_file": [f"s{i}" for i in range(30)], "x": rng.normal(size=30)}
    )
    y = 1 + 2 * ph.x.to_numpy()[:, None] + rng.normal(size=(30, 5))
    arr = xr.DataArray(
        y,
        dims=("subject", "element"),
        coords={"source_file": ("subject", ph.source_file)},
        name="thickness",
    )
    res = lm(
        arr,
        "thickness ~ x",
        ph,
        var_terms=["estimate"],
        var_model=["nobs"],
        correct_p_value_terms="none",
        correct_p_value_model="none",
    )
    beta = np.linalg.lstsq(np.column_stack([np.ones(30), ph.x]), y, rcond=None)[0]
    np.testing.assert_allclose(res.sel(stat="x.estimate").values, beta[1], rtol=1e-12)
    assert np.all(res.sel(stat="model.nobs").values == 30)
    # without chunks on disk: element chunks of up to 32 MiB, here all 5 in one
    assert res.chunks == ((4,), (5,))
    # ModelArray's default thresholds: more than max(10, 0.2 * 30) subjects
    gaps = y.copy()
    gaps[:19, 0] = np.nan  # 11 subjects left: fitted
    gaps[:20, 1] = np.nan  # 10 left: not fitted
    counted = lm(
        arr.copy(data=gaps), "thickness ~ x", ph, var_model=["nobs"],
        correct_p_value_model="none",
    )  # fmt: skip
    nobs = counted.sel(stat="model.nobs").values
    assert nobs[0] == 11
    assert np.isnan(nobs[1])
    assert np.isfinite(counted.sel(stat="x.estimate").values[0])
    assert np.isnan(counted.sel(stat="x.estimate").values[1])
    # an in-memory Dataset: errors name it as such
    ds = arr.to_dataset()
    np.testing.assert_allclose(
        lm(ds, "thickness ~ x", ph).sel(stat="x.estimate").values, beta[1], rtol=1e-12
    )
    with pytest.raises(ClusterH5Error, match="<in-memory Dataset>: no scalar 'FA'"):
        lm(ds, "FA ~ x", ph)
    # an unnamed DataArray takes the formula's response as its name
    unnamed = lm(arr.rename(None), "thickness ~ x", ph)
    assert unnamed.name == "thickness"
    np.testing.assert_allclose(
        unnamed.sel(stat="x.estimate").values, beta[1], rtol=1e-12
    )
    # the response must be exactly (subject, element)
    for bad in (arr.expand_dims(run=2, axis=2), arr.rename(element="voxel")):
        with pytest.raises(
            ClusterH5Error, match=r"'thickness' must have dims \(subject, element\)"
        ):
            lm(bad, "thickness ~ x", ph)


def test_element_chunks_hold_up_to_32_mib() -> None:
    # 30 subjects: 32 MiB of float64 is 139810 elements, whole disk chunks if any
    ph = pd.DataFrame({"source_file": [f"s{i}" for i in range(30)], "x": range(30)})
    arr = xr.DataArray(
        da.zeros((30, 300_000)),
        dims=("subject", "element"),
        coords={"source_file": ("subject", ph.source_file)},
        name="thickness",
    )
    res = lm(arr, "thickness ~ x", ph)
    assert res.chunks[1] == (139810, 139810, 20380)
    arr.encoding["chunksizes"] = (30, 1000)
    assert lm(arr, "thickness ~ x", ph).chunks[1] == (139000, 139000, 22000)
