"""ModelArray HDF5 layout: writes equal ModelArrayIO's files, results of all writers."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr
from hypothesis import given
from hypothesis import strategies as st

from tests._helpers import LM_NAMES, MODELARRAY, assert_same_file
from xarray_clusterh5.errors import ClusterH5Error
from xarray_clusterh5.modelarray import convert
from xarray_clusterh5.modelarray import h5 as modelarray_io
from xarray_clusterh5.modelarray.store import is_modelarray_file

COHORT = MODELARRAY / "cohort"
RESULTS = MODELARRAY / "results" / "thickness_with_results.h5"
NIFTI = MODELARRAY.parent / "modelarray_modalities" / "nifti"
NAN_ELEMENTS = [30, 41, 42, 51, 52]


def _fill_from(values: np.ndarray):
    def read(start: int, stop: int) -> np.ndarray:
        return values[:, start:stop]

    return read


# --------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_subjects", "n_elements", "expected"),
    [(50, 91282, (50, 10485)), (200, 91282, (200, 2621)), (2, 91282, (2, 91282)),
     (5, 100, (5, 100)),
     # more than 2 MiB per element: one element per chunk, never 0
     (10**6, 91282, (10**6, 1))],
)  # fmt: skip
def test_default_chunks_are_modelarrayios(n_subjects, n_elements, expected):
    # the shapes ModelArrayIO 26.0.0 wrote (research notes 1.1 and the fixtures)
    assert modelarray_io.chunk_shape(n_subjects, n_elements) == expected


def test_empty_matrix_has_no_chunks():
    for n_subjects, n_elements in [(0, 5), (5, 0)]:
        with pytest.raises(
            ValueError,
            match=rf"cannot chunk an empty matrix \({n_subjects} subjects, "
            rf"{n_elements} elements\)",
        ):
            modelarray_io.chunk_shape(n_subjects, n_elements)


def test_chunk_options():
    assert modelarray_io.chunk_shape(200, 91282, chunk_voxels=256) == (200, 256)
    assert modelarray_io.chunk_shape(5, 100, chunk_voxels=1000) == (5, 100)
    # ModelArrayIO: any chunk_voxels > 0 is taken as is, down to one element
    assert modelarray_io.chunk_shape(200, 91282, chunk_voxels=1) == (200, 1)
    assert modelarray_io.chunk_shape(50, 91282, target_chunk_mb=0.25) == (50, 1310)
    assert modelarray_io.chunk_shape(50, 91282, dtype="float64") == (50, 5242)
    with pytest.raises(ValueError, match="float32 or float64"):
        modelarray_io.chunk_shape(5, 100, dtype="int16")


def test_compression_rules():
    assert modelarray_io.resolve_compression("gzip", 12, True) == ("gzip", 9, True)
    assert modelarray_io.resolve_compression("gzip", -3, False) == ("gzip", 0, False)
    assert modelarray_io.resolve_compression("none", 4, True) == (None, None, False)
    assert modelarray_io.resolve_compression("lzf", 4, True) == ("lzf", None, True)
    with pytest.raises(ValueError, match="zstd is TileDB-only"):
        modelarray_io.resolve_compression("zstd", 4, True)


@pytest.mark.parametrize(
    ("csv", "scalar_columns", "outputs"),
    [
        ("cohort_thickness.csv", None, {"out.h5": "thickness.h5"}),
        ("cohort_long_two_scalars.csv", None, {"out.h5": "two_scalars.h5"}),
        (
            "cohort_wide.csv",
            ["thickness", "area"],
            {"thickness_out.h5": "thickness_wide.h5", "area_out.h5": "area_wide.h5"},
        ),
    ],
)
def test_cohort_to_h5_equals_modelarrayio(tmp_path, monkeypatch, csv, scalar_columns,
                                          outputs):  # fmt: skip
    monkeypatch.chdir(COHORT)  # relative paths resolve as ModelArrayIO's do
    written = convert.cohort_to_h5(
        csv, tmp_path / "out.h5", scalar_columns=scalar_columns
    )
    assert sorted(p.name for p in written) == sorted(outputs)
    for ours, theirs in outputs.items():
        assert_same_file(tmp_path / ours, MODELARRAY / "modelarrayio" / theirs)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        outputs
    )  # no temp files


@pytest.mark.parametrize(
    "options",
    [
        {"chunk_voxels": 16},
        {"compression": "none"},
        {"compression": "lzf"},
        {"compression_level": 0, "shuffle": False},
        {"dtype": "float64", "target_chunk_mb": 0.001},
    ],
    ids=["chunk16", "none", "lzf", "gzip0-noshuffle", "float64"],
)
def test_options_keep_values(tmp_path, monkeypatch, options):
    monkeypatch.chdir(COHORT)
    out = tmp_path / "x.h5"
    convert.cohort_to_h5("cohort_long_two_scalars.csv", out, **options)
    with (
        h5py.File(out, "r") as f,
        h5py.File(MODELARRAY / "modelarrayio" / "two_scalars.h5", "r") as g,
    ):
        for s in ("thickness", "area"):
            d = f[f"scalars/{s}/values"]
            np.testing.assert_array_equal(d[()], g[f"scalars/{s}/values"][()])
            if "chunk_voxels" in options:
                assert d.chunks == (5, 16)
            if options.get("compression") == "none":
                assert d.compression is None
                assert not d.shuffle
            if options.get("compression") == "lzf":
                assert d.compression == "lzf"
                assert d.shuffle
            if options.get("compression_level") == 0:
                assert (d.compression, d.compression_opts, d.shuffle) == (
                    "gzip",
                    0,
                    False,
                )
            if options.get("dtype") == "float64":
                assert d.dtype == np.float64
                assert d.chunks == (5, 26)  # int(0.001 MiB / (8 B * 5 subjects))


@given(
    n_subjects=st.integers(1, 9),
    n_elements=st.integers(1, 300),
    chunk_voxels=st.integers(0, 64),
    stripe_bytes=st.integers(1, 4000),
    shuffle=st.booleans(),
    level=st.integers(0, 9),
    seed=st.integers(0, 2**32 - 1),
)
def test_streamed_stripes_round_trip(
    tmp_path_factory, n_subjects, n_elements, chunk_voxels, stripe_bytes, shuffle,
    level, seed,
):  # fmt: skip
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(n_subjects, n_elements)).astype(np.float32)
    values[rng.uniform(size=values.shape) < 0.1] = np.nan
    path = tmp_path_factory.mktemp("s") / "s.h5"
    names = [f"s{i}.dscalar.nii" for i in range(n_subjects)]
    with h5py.File(path, "w") as f:
        options = modelarray_io.StorageOptions(
            chunk_voxels=chunk_voxels, shuffle=shuffle, compression_level=level
        )
        modelarray_io.write_scalar(
            f, "x", n_subjects, n_elements, names, _fill_from(values), options,
            stripe_bytes=stripe_bytes,
        )  # fmt: skip
    with h5py.File(path, "r") as f:
        d = f["scalars/x/values"]
        np.testing.assert_array_equal(d[()], values)
        assert d.chunks == modelarray_io.chunk_shape(
            n_subjects, n_elements, chunk_voxels=chunk_voxels
        )
        assert (d.shuffle, d.compression_opts) == (shuffle, level)
        assert [s.decode() for s in f["scalars/x/column_names"][()]] == names


def test_outputs_and_cohort_file_are_checked_before_reading(tmp_path):
    csv = tmp_path / "c.csv"
    csv.write_text("scalar_name,source_file\nthickness,missing.dscalar.nii\n")
    out = tmp_path / "o.h5"
    out.write_bytes(b"keep")
    # refused before the (missing) source file is looked for
    with pytest.raises(FileExistsError, match=r"o\.h5: exists; pass overwrite=True"):
        convert.cohort_to_h5(csv, out)
    assert out.read_bytes() == b"keep"
    with pytest.raises(
        FileNotFoundError, match=r"nope\.csv: cohort file does not exist"
    ):
        convert.cohort_to_h5(tmp_path / "nope.csv", tmp_path / "n.h5")


def test_scalar_streams_are_read_only():
    # shared by the writer's threads: a stream's source list cannot be swapped
    stream = modelarray_io.ScalarStream("fa", ["a"], _fill_from(np.zeros((1, 3))))
    with pytest.raises(dataclasses.FrozenInstanceError):
        stream.column_names = ["b"]  # type: ignore[misc]
    assert stream.stripe_bytes == modelarray_io.STRIPE_BYTES


def test_column_names_must_match_subjects(tmp_path):
    with (
        h5py.File(tmp_path / "c.h5", "w") as f,
        pytest.raises(ValueError, match="scalar 'fa': 2 column names for 3 subjects"),
    ):
        modelarray_io.write_scalar(
            f, "fa", 3, 4, ["a", "b"], _fill_from(np.zeros((3, 4)))
        )


def test_stripes_of_the_wrong_shape_are_refused(tmp_path):
    # a reader that returns too few subjects (or elements) must not be written
    # broadcast or cut: the stripe is named with both shapes
    for wrong in (np.zeros((2, 4), np.float32), np.zeros((3, 3), np.float32)):
        with (
            h5py.File(tmp_path / "w.h5", "w") as f,
            pytest.raises(
                ValueError,
                match=rf"scalar 'fa': stripe 0:4 has shape \({wrong.shape[0]}, "
                rf"{wrong.shape[1]}\), expected \(3, 4\)",
            ),
        ):
            modelarray_io.write_scalar(
                f, "fa", 3, 4, ["a", "b", "c"], lambda a, b, w=wrong: w
            )


def test_scalar_names_must_be_hdf5_names(tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        for bad in ["a/b", "..", ""]:
            with pytest.raises(ValueError, match="scalar name"):
                modelarray_io.write_scalar(
                    f, bad, 1, 2, ["s"], _fill_from(np.zeros((1, 2), np.float32))
                )


def test_split_names_stay_in_the_output_folder(tmp_path):
    plan = modelarray_io.output_plan(
        tmp_path / "o.h5", ["../../x", "a b/c", ".."], True
    )
    assert [p.name for p, _ in plan] == [".._.._x_o.h5", "a_b_c_o.h5", ".._o.h5"]
    assert all(p.parent == tmp_path for p, _ in plan)


# --------------------------------------------------------------------------
# reading results of the three writers
# --------------------------------------------------------------------------


def test_results_names_from_every_writer():
    with h5py.File(RESULTS, "r") as f:
        path = str(RESULTS)
        assert modelarray_io.list_analyses(path, f) == [
            "legacy_attr",
            "lm",
            "lm_stream",
        ]
        assert modelarray_io.result_names(path, f, "lm") == LM_NAMES  # vlen dataset
        # the streaming writer: fixed-length (19-byte) NUL-padded names, no fdr
        stream = modelarray_io.result_names(path, f, "lm_stream")
        assert stream == LM_NAMES[:10]
        legacy = modelarray_io.result_names(path, f, "legacy_attr")  # attribute
        assert len(legacy) == 17
        assert legacy[:4] == LM_NAMES[:4]
        assert "sex.p.value.fdr" in legacy


def test_results_values():
    names, m = modelarray_io.read_results(RESULTS, "lm")
    assert m.shape == (13, 100)
    np.testing.assert_array_equal(m[0], np.arange(100))  # element_id, 0-based
    assert np.isnan(m[1:, NAN_ELEMENTS]).all()
    nobs = m[names.index("model.nobs")]
    assert set(np.delete(nobs, NAN_ELEMENTS)) == {5.0}
    names, m = modelarray_io.read_results(RESULTS, "legacy_attr")
    assert np.isnan(m[1:, ::7]).all()
    assert not np.isnan(np.delete(m[1:], np.s_[::7], axis=1)).any()
    assert set(np.delete(m[names.index("model.nobs")], np.s_[::7])) == {40.0}
    # the streaming writer's values equal writeResults' for the shared columns
    names_s, ms = modelarray_io.read_results(RESULTS, "lm_stream")
    names_l, ml = modelarray_io.read_results(RESULTS, "lm")
    keep = np.setdiff1d(np.arange(100), NAN_ELEMENTS)
    for i, n in enumerate(names_s):
        np.testing.assert_allclose(ms[i, keep], ml[names_l.index(n), keep], rtol=1e-12)
    # without num.subj.lthr.abs = 4 the streaming run fitted the 4-subject elements
    np.testing.assert_array_equal(ms[names_s.index("model.nobs"), NAN_ELEMENTS], 4.0)


def test_transposed_and_unnamed_results(tmp_path):
    path = tmp_path / "r.h5"
    matrix = np.arange(12.0).reshape(3, 4)  # (stats, elements)
    with h5py.File(path, "w") as f:
        f["results/t/results_matrix"] = matrix.T  # a Python writer's orientation
        f["results/t/column_names"] = np.array([b"a", b"b", b"c"])
        f["results/n/results_matrix"] = matrix
    names, m = modelarray_io.read_results(path, "t")
    assert names == ["a", "b", "c"]
    np.testing.assert_array_equal(m, matrix)
    names, m = modelarray_io.read_results(path, "n")
    assert names == ["component001", "component002", "component003"]
    with pytest.raises(ClusterH5Error, match="no results for analysis 'zz'"):
        modelarray_io.read_results(path, "zz")


def test_names_count_mismatch_is_an_error(tmp_path):
    path = tmp_path / "r.h5"
    with h5py.File(path, "w") as f:
        f["results/t/results_matrix"] = np.zeros((3, 4))
        f["results/t/column_names"] = np.array([b"a", b"b"])
    with pytest.raises(ClusterH5Error, match="2 statistic names"):
        modelarray_io.read_results(path, "t")


def test_scalar_sources_lookup_order(tmp_path):
    path = tmp_path / "s.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("scalars/a/values", data=np.zeros((2, 3), np.float32))
        d.attrs["column_names"] = ["attr1", "attr2"]
        f["scalars/a/column_names"] = np.array([b"ds1", b"ds2"])
        f.create_dataset("scalars/b/values", data=np.zeros((2, 3), np.float32))
        f["scalars/scalars/b/column_names"] = np.array([b"quirk1\0", b"quirk2 "])
        f.create_dataset("scalars/c/values", data=np.zeros((2, 3), np.float32))
    with h5py.File(path, "r") as f:
        p = str(path)
        assert modelarray_io.scalar_column_names(p, f, "a") == ["attr1", "attr2"]
        assert modelarray_io.scalar_column_names(p, f, "b") == ["quirk1", "quirk2"]
        with pytest.raises(ClusterH5Error, match="no column_names"):
            modelarray_io.scalar_column_names(p, f, "c")


def test_only_groups_with_a_results_matrix_are_analyses(tmp_path):
    path = tmp_path / "r.h5"
    path.write_bytes(RESULTS.read_bytes())
    with h5py.File(path, "a") as f:
        before = modelarray_io.list_analyses(str(path), f)
        f["results/.age.partial/results_matrix"] = np.zeros((2, 100))  # interrupted
        f.create_group("results/empty")
        assert modelarray_io.list_analyses(str(path), f) == before
    assert before == ["legacy_attr", "lm", "lm_stream"]


@pytest.mark.parametrize(
    ("names", "match"),
    [
        (["voxel_id", "i", "j"], r"/voxels has shape \(4, 800\) but column names"),
        (["voxel_id", "i", "j", "q"], r"/voxels lacks columns \['k'\]"),
    ],
)
def test_damaged_voxel_tables_are_named(tmp_path, names, match):
    path = tmp_path / "v.h5"
    path.write_bytes((NIFTI / "out" / "modelarray.h5").read_bytes())
    with h5py.File(path, "a") as f:
        f["voxels"].attrs["column_names"] = names
    with pytest.raises(ClusterH5Error, match=match) as err:
        xr.open_dataset(path, engine="clusterh5")
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("parcels", "match"),
    [
        ({"parcel_id": ["P0", "P1"]}, "/parcels gives 2 parcel names for 3 elements"),
        (
            {"parcel_id_from": ["P0", "P1"], "parcel_id_to": ["P0", "P1"]},
            "/parcels gives 4 parcel_from names for 3 elements",
        ),
    ],
)
def test_parcel_names_must_cover_the_elements(tmp_path, parcels, match):
    path = tmp_path / "p.h5"
    with h5py.File(path, "w") as f:
        f["scalars/x/values"] = np.zeros((2, 3), np.float32)
        f["scalars/x/column_names"] = np.array([b"s1", b"s2"])
        for name, ids in parcels.items():
            f[f"parcels/{name}"] = np.array(ids, dtype=h5py.string_dtype())
    with pytest.raises(ClusterH5Error, match=match) as err:
        xr.open_dataset(path, engine="clusterh5")
    assert str(path) in str(err.value)


def test_external_links_are_refused(tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["values"] = np.zeros((1, 3), np.float32)
    path = tmp_path / "ma.h5"
    with h5py.File(path, "w") as f:
        f["scalars/x/values"] = h5py.ExternalLink(str(other), "values")
        f["scalars/x/column_names"] = np.array([b"s"])
    with pytest.raises(ClusterH5Error, match="external link"):
        xr.open_dataset(path, engine="clusterh5")


@pytest.mark.parametrize(
    ("table", "match"),
    [
        (np.zeros(100), r"/greyordinates must be 2-D, has shape \(100,\)"),
        (np.full((2, 100), 7), "structure_id outside structure_names"),
        # codes index the 4 structure names: 4 and -1 are just outside
        (np.full((2, 100), 4), "structure_id outside structure_names"),
        (np.full((2, 100), -1), "structure_id outside structure_names"),
    ],
)
def test_damaged_greyordinates_are_named(tmp_path, table, match):
    path = tmp_path / "g.h5"
    path.write_bytes((MODELARRAY / "modelarrayio" / "thickness.h5").read_bytes())
    with h5py.File(path, "a") as f:
        attrs = dict(f["greyordinates"].attrs)
        del f["greyordinates"]
        f["greyordinates"] = table
        f["greyordinates"].attrs.update(attrs)
    with pytest.raises(ClusterH5Error, match=match) as err:
        xr.open_dataset(path, engine="clusterh5")
    assert str(path) in str(err.value)


# --------------------------------------------------------------------------
# the xarray view of ModelArray files
# --------------------------------------------------------------------------


def test_open_results_file():
    with h5py.File(RESULTS, "r") as f:
        assert is_modelarray_file(f)
    with xr.open_dataset(RESULTS, engine="clusterh5") as ds:
        assert ds["thickness"].dims == ("subject", "element")
        assert ds["thickness"].attrs["modelarray_group"] == "scalars"
        sources = [f"thickness/sub-000{i}_thickness.dscalar.nii" for i in range(1, 6)]
        assert ds["source_file"].values.tolist() == sources
        assert ds["lm"].dims == ("stat_lm", "element")
        assert ds["stat_lm"].values.tolist() == LM_NAMES
        assert ds["stat_lm_stream"].values.tolist() == LM_NAMES[:10]
        assert ds["legacy_attr"].shape == (17, 100)
        assert ds["structure"].values[0] == "CIFTI_STRUCTURE_CORTEX_LEFT"
        assert ds["structure"].values[-1] == "CIFTI_STRUCTURE_THALAMUS_RIGHT"
        np.testing.assert_array_equal(ds["element"].values, np.arange(100))
        age_p = ds["lm"].sel(stat_lm="age.p.value")
        names, m = modelarray_io.read_results(RESULTS, "lm")
        np.testing.assert_array_equal(age_p.values, m[names.index("age.p.value")])
        assert ds["thickness"].encoding["preferred_chunks"] == {
            "subject": 5, "element": 100,
        }  # fmt: skip
        assert ds["lm"].encoding["preferred_chunks"] == {"stat_lm": 32, "element": 32}
        # lazily indexed, read on demand
        np.testing.assert_array_equal(
            ds["thickness"][1:3, 10:20].values, _values("thickness")[1:3, 10:20]
        )


def _values(scalar: str) -> np.ndarray:
    with h5py.File(MODELARRAY / "modelarrayio" / "two_scalars.h5", "r") as f:
        return f[f"scalars/{scalar}/values"][()]


def test_open_with_the_engine_and_dask():
    with xr.open_dataset(
        MODELARRAY / "modelarrayio" / "two_scalars.h5", engine="clusterh5", chunks={}
    ) as ds:
        assert set(ds.data_vars) == {"thickness", "area"}
        assert ds["thickness"].chunks == ((5,), (100,))
        assert ds["source_file_area"].values[0] == "area/sub-0001_area.dscalar.nii"
        np.testing.assert_array_equal(ds["area"].values, _values("area"))
        assert ds["thickness"].attrs["modelarray_sources"] == "source_file_thickness"


def test_scalars_with_different_subject_counts(tmp_path):
    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as f:
        f["scalars/a/values"] = np.ones((2, 4), np.float32)
        f["scalars/a/column_names"] = np.array([b"a1", b"a2"])
        f["scalars/b/values"] = np.ones((4, 3), np.float32).T  # transposed, 3 subjects
        f["scalars/b/column_names"] = np.array([b"b1", b"b2", b"b3"])
    with xr.open_dataset(path, engine="clusterh5") as ds:
        assert ds["a"].dims == ("subject_a", "element")
        assert ds["b"].dims == ("subject_b", "element")
        assert ds["b"].shape == (3, 4)
        assert ds["source_file_b"].values.tolist() == ["b1", "b2", "b3"]
        np.testing.assert_array_equal(ds["b"][:, 1:3].values, np.ones((3, 2)))


def test_pickled_lazy_arrays_hold_no_h5py_objects():
    import pickle

    with xr.open_dataset(RESULTS, engine="clusterh5") as ds:
        arr = ds["lm"].chunk({}).data
        again = pickle.loads(pickle.dumps(arr))
        _, m = modelarray_io.read_results(RESULTS, "lm")
        np.testing.assert_array_equal(again.compute(), m)


def test_layout_modules_import_only_the_standard_library():
    # the on-disk vocabulary sits below h5py and xarray (the package __init__
    # is not part of the check: it registers the accessor)
    import ast

    import xarray_clusterh5

    root = Path(xarray_clusterh5.__file__).parent
    allowed = {"__future__", "typing", "xarray_clusterh5._hdf5.names"}
    for rel in ("modelarray/layout.py", "_hdf5/names.py"):
        tree = ast.parse((root / rel).read_text())
        imported = {
            node.module if isinstance(node, ast.ImportFrom) else alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in node.names
        }
        assert imported <= allowed, (rel, imported - allowed)


_CELLS = [
    "a.nii",
    " b.nii ",
    "",
    "NA",
    "null",
    "n/a",
    "NaN",
    "  ",
    "x y.nii",
    "001.nii",
]


@given(
    rows=st.lists(
        st.tuples(st.sampled_from(["FA", " MD", "", "NA"]), st.sampled_from(_CELLS)),
        min_size=1,
        max_size=8,
    )
)
def test_cohort_table_drops_what_pandas_drops(tmp_path_factory, rows):
    # the csv-module reader keeps exactly the rows pandas.read_csv + dropna +
    # strip keep (ModelArrayIO's normalisation), in order
    import pandas as pd

    path = tmp_path_factory.mktemp("c") / "c.csv"
    lines = ["scalar_name,source_file,age"] + [
        f"{n},{s},{i}" for i, (n, s) in enumerate(rows)
    ]
    path.write_text("\n".join(lines) + "\n\n")
    df = pd.read_csv(path, dtype={"scalar_name": str, "source_file": str})
    df = df.dropna(subset=["scalar_name", "source_file"])
    names, srcs = df["scalar_name"].str.strip(), df["source_file"].str.strip()
    keep = (names != "") & (srcs != "")
    if not keep.any():
        with pytest.raises(ClusterH5Error, match="no scalar entries"):
            modelarray_io.read_cohort_table(path)
        return
    table = modelarray_io.read_cohort_table(path)
    assert table.scalar_name == names[keep].tolist()
    assert table.source_file == srcs[keep].tolist()
    frame = modelarray_io.read_cohort(path)
    assert frame["age"].tolist() == df["age"][keep].tolist()


def test_cohort_table_refuses_ragged_rows(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("\ufeffscalar_name,source_file\nFA,a.nii,extra\n")
    with pytest.raises(ClusterH5Error, match="3 fields, the header 2"):
        modelarray_io.read_cohort_table(path)
    path.write_text("\ufeffscalar_name,source_file\nFA,a.nii\n")
    assert modelarray_io.read_cohort_table(path).source_file == ["a.nii"]


def test_cohort_frame_leads_with_the_entry_columns(tmp_path):
    # from_cohort's coordinates: scalar_name, source_file, _row, then the CSV's
    path = tmp_path / "c.csv"
    path.write_text("age,source_file,scalar_name\n30,a.nii,FA\n41,b.nii,MD\n")
    frame = modelarray_io.read_cohort(path)
    assert list(frame.columns) == ["scalar_name", "source_file", "_row", "age"]
    assert frame["scalar_name"].tolist() == ["FA", "MD"]
    assert frame["_row"].tolist() == [0, 1]
    assert frame["age"].tolist() == [30, 41]


def test_default_storage_options_chunk_as_modelarrayio(tmp_path):
    # StorageOptions() is what to_modelarray and write_scalar use unless told
    with h5py.File(tmp_path / "s.h5", "w") as f:
        dset = modelarray_io.StorageOptions().create_values(f, "x", 50, 91282)
        assert dset.chunks == (50, 10485)
        values = np.arange(50 * 30, dtype=np.float64).reshape(50, 30)
        y = modelarray_io.write_scalar(
            f, "y", 50, 30, [f"s{i}" for i in range(50)], _fill_from(values)
        )
        settings = (y.dtype, y.chunks, y.compression, y.compression_opts, y.shuffle)
        assert settings == (np.float32, (50, 30), "gzip", 4, True)
        np.testing.assert_array_equal(y[()], values)
        assert (dset.dtype, dset.compression, dset.compression_opts) == (
            np.float32,
            "gzip",
            4,
        )
        assert dset.shuffle


def _greyordinates_file(path, table, attrs):
    with h5py.File(path, "w") as f:
        f["greyordinates"] = table
        f["greyordinates"].attrs.update(attrs)


def test_greyordinates_columns_by_name_or_position(tmp_path):
    path = tmp_path / "g.h5"
    vertex, codes = np.array([5, 6, 7]), np.array([0, 0, 0])
    # no column_names attribute: rows vertex_id, structure_id as ModelArrayIO writes
    _greyordinates_file(path, np.stack([vertex, codes]), {"structure_names": ["L"]})
    with h5py.File(path, "r") as f:
        got = modelarray_io.read_greyordinates(str(path), f)
    assert got is not None
    assert got[0].tolist() == [5, 6, 7]
    assert got[1].tolist() == ["L", "L", "L"]  # one structure: code 0 is in range
    # named columns in the other order
    attrs = {
        "column_names": ["structure_id", "vertex_id"],
        "structure_names": ["A", "B"],
    }
    _greyordinates_file(path, np.stack([[1, 0, 1], vertex]), attrs)
    with h5py.File(path, "r") as f:
        got = modelarray_io.read_greyordinates(str(path), f)
    assert got is not None
    assert got[0].tolist() == [5, 6, 7]
    assert got[1].tolist() == ["B", "A", "B"]
    # stored (n, 2) as R's writers may: read transposed
    attrs = {
        "column_names": ["vertex_id", "structure_id"],
        "structure_names": ["A", "B"],
    }
    _greyordinates_file(path, np.stack([vertex, [1, 0, 1]], axis=1), attrs)
    with h5py.File(path, "r") as f:
        got = modelarray_io.read_greyordinates(str(path), f)
    assert got is not None
    assert got[0].tolist() == [5, 6, 7]
    assert got[1].tolist() == ["B", "A", "B"]


def test_results_of_a_bare_fmristore_file_are_refused(tmp_path):
    # the two groups every fmristore file has, and nothing else
    path = tmp_path / "fm.h5"
    with h5py.File(path, "w") as f:
        f.create_group("scans")
        f["cluster_map"] = np.zeros(3, np.int32)
    with pytest.raises(ClusterH5Error, match="is an fmristore clustered experiment"):
        modelarray_io.read_results(path, "lm")


def test_storage_options_cannot_be_changed():
    # one StorageOptions serves every scalar of a conversion
    options = modelarray_io.StorageOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.dtype = "float64"  # type: ignore[misc]


def test_stripe_reader_reads_the_asked_elements():
    files = [
        COHORT / "thickness" / f"sub-000{i}_thickness.dscalar.nii" for i in range(1, 6)
    ]
    ref, blocks = modelarray_io.check_cohort_files(
        [str(p) for p in files], None, False, 1
    )
    array = modelarray_io.CohortArray(blocks, ref.n_elements)
    with h5py.File(MODELARRAY / "modelarrayio" / "thickness.h5", "r") as f:
        full = f["scalars/thickness/values"][()]
    with ThreadPoolExecutor(2) as pool, ExitStack() as held:
        read = modelarray_io.stripe_reader(array, pool, 2, held)
        for start, stop in [(0, 100), (10, 20), (99, 100)]:
            np.testing.assert_array_equal(read(start, stop), full[:, start:stop])


def test_results_matrix_must_be_2d(tmp_path):
    path = tmp_path / "r.h5"
    with h5py.File(path, "w") as f:
        f["scalars/x/values"] = np.zeros((2, 3), np.float32)
        f["results/lm/results_matrix"] = np.zeros((2, 3, 1))
        f["results/lm/column_names"] = np.array([b"a", b"b"])
    with pytest.raises(ClusterH5Error, match=r"must be 2-D, has shape \(2, 3, 1\)"):
        modelarray_io.read_results(path, "lm")


def test_result_names_fall_through_empty_places(tmp_path):
    # names are looked up in ModelArrayIO's order; a place holding only empty
    # names does not count, and with no names at all statistics are numbered
    path = tmp_path / "r.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("results/a/results_matrix", data=np.zeros((2, 3)))
        d.attrs["colnames"] = ["", ""]
        f["results/a/column_names"] = np.array([b"s1", b"s2"])
        d = f.create_dataset("results/b/results_matrix", data=np.zeros((2, 3)))
        f["results/b/column_names"] = np.array([b"\0", b" "])
    with h5py.File(path, "r") as f:
        assert modelarray_io.result_names(str(path), f, "a") == ["s1", "s2"]
        assert modelarray_io.result_names(str(path), f, "b") is None
    assert modelarray_io.read_results(path, "b")[0] == [
        "component001",
        "component002",
    ]


def test_parcel_pairs_need_both_sides(tmp_path):
    path = tmp_path / "p.h5"
    with h5py.File(path, "w") as f:
        f["scalars/x/values"] = np.zeros((2, 4), np.float32)
        f["scalars/x/column_names"] = np.array([b"s1", b"s2"])
        f["parcels/parcel_id_from"] = np.array(["P0", "P1"], dtype=h5py.string_dtype())
    with pytest.raises(ClusterH5Error, match=r"\['parcel_id_from'\], not parcel ids"):
        xr.open_dataset(path, engine="clusterh5")


def test_split_outputs_must_differ(tmp_path):
    # "a/b" and "a b" both become a_b_o.h5: refused before anything is written
    with pytest.raises(ValueError, match="same split output file name"):
        modelarray_io.output_plan(tmp_path / "o.h5", ["a/b", "a b"], True)
    plan = modelarray_io.output_plan(tmp_path / "o.h5", ["a", "b"], False)
    assert plan == [(tmp_path / "o.h5", ["a", "b"])]


def test_empty_cohort_file_is_named(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("\n\n")
    with pytest.raises(ClusterH5Error, match="cohort file is empty") as err:
        modelarray_io.read_cohort_table(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("text", "scalar_columns", "match"),
    [
        # a wide cohort's scalar_name and source_file are made from its cells
        ("subj,FA,source_file\n1,a.nii,x\n", ["FA"], r"\['source_file'\] clash"),
        ("scalar_name,source_file,_row\nFA,a.nii,3\n", None, r"\['_row'\] clash"),
        # pandas renames a repeated header (age.1), the csv module does not
        ("scalar_name,source_file,age,age\nFA,a.nii,3,4\n", None, "differently"),
    ],
)
def test_cohort_frames_that_cannot_be_made_are_named(
    tmp_path, text, scalar_columns, match
):
    path = tmp_path / "c.csv"
    path.write_text(text)
    with pytest.raises(ClusterH5Error, match=match) as err:
        modelarray_io.read_cohort(path, scalar_columns)
    assert str(path) in str(err.value)


def test_cohort_table_column_cells(tmp_path):
    # source_mask_file cells: stripped; empty, blank and NA cells are missing
    path = tmp_path / "c.csv"
    path.write_text(
        "scalar_name,source_file,source_mask_file\n"
        "FA,a.nii, m.nii \nFA,b.nii,\nFA,c.nii,NA\nFA,d.nii,  \n"
    )
    table = modelarray_io.read_cohort_table(path)
    assert table.column("source_mask_file") == ["m.nii", None, None, None]
    assert table.column("age") == [None] * 4


def test_results_matrix_that_is_a_group_is_refused(tmp_path):
    path = tmp_path / "r.h5"
    with h5py.File(path, "w") as f:
        f["scalars/x/values"] = np.zeros((2, 3), np.float32)
        f.create_group("results/lm/results_matrix")
    with pytest.raises(ClusterH5Error, match="no results for analysis 'lm'"):
        modelarray_io.read_results(path, "lm")


def test_two_element_greyordinates_are_not_transposed(tmp_path):
    # (2, 2) is ModelArrayIO's (rows, elements) layout, not R's transpose
    path = tmp_path / "g.h5"
    attrs = {
        "column_names": ["vertex_id", "structure_id"],
        "structure_names": ["A", "B"],
    }
    _greyordinates_file(path, np.array([[5, 6], [1, 0]]), attrs)
    with h5py.File(path, "r") as f:
        got = modelarray_io.read_greyordinates(str(path), f)
    assert got is not None
    assert got[0].tolist() == [5, 6]
    assert got[1].tolist() == ["B", "A"]
