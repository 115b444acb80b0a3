"""from_cohort, to_modelarray and to_cifti against ModelArrayIO's files."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import dask
import dask.array as da
import h5py
import nibabel as nib
import numpy as np
import pytest
import xarray as xr
from hypothesis import given
from hypothesis import strategies as st
from nibabel.cifti2 import cifti2_axes as ca

from tests._helpers import LM_NAMES, MODELARRAY, assert_same_export, assert_same_file
from xarray_clusterh5.cifti import read as cifti
from xarray_clusterh5.errors import ClusterH5Error
from xarray_clusterh5.modelarray import cohort
from xarray_clusterh5.modelarray import h5 as modelarray_io
from xarray_clusterh5.modelarray.store import subject_dims

COHORT = MODELARRAY / "cohort"
RESULTS = MODELARRAY / "results" / "thickness_with_results.h5"
MAI = MODELARRAY / "modelarrayio"


def _values(file: str, scalar: str) -> np.ndarray:
    with h5py.File(MAI / file, "r") as f:
        return f[f"scalars/{scalar}/values"][()]


@pytest.fixture
def in_cohort(monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(COHORT)
    return COHORT


def test_from_cohort_long(in_cohort):
    ds = cohort.from_cohort("cohort_thickness.csv", batch_size=2)
    var = ds["thickness"]
    assert var.dims == ("subject", "element")
    assert var.dtype == np.float32
    assert isinstance(var.data, da.Array)
    assert var.chunks == ((2, 2, 1), (100,))
    assert cohort.from_cohort("cohort_thickness.csv")["thickness"].chunks == (
        (5,), (100,),
    )  # fmt: skip
    np.testing.assert_array_equal(var.values, _values("thickness.h5", "thickness"))
    # cohort columns along subject, exactly as written in the CSV (and no others)
    assert [c for c in ds.coords if ds[c].dims == ("subject",)] == [
        "source_file", "subject_id", "age", "sex",
    ]  # fmt: skip
    assert ds["source_file"].values.tolist() == [
        f"thickness/sub-000{i}_thickness.dscalar.nii" for i in range(1, 6)
    ]
    assert ds["subject_id"].values.tolist() == [f"sub-000{i}" for i in range(1, 6)]
    np.testing.assert_array_equal(ds["age"].values, [15.17, 10.02, 21.28, 13.93, 19.59])
    np.testing.assert_array_equal(ds["sex"].values, [1, 1, 0, 0, 0])
    # brain model along element, as nibabel reads it
    axis = nib.load(COHORT / "thickness" / "sub-0001_thickness.dscalar.nii").header
    axis = axis.get_axis(1)
    assert ds["structure"].values.tolist() == axis.name.tolist()
    np.testing.assert_array_equal(ds["vertex"].values, axis.vertex)
    ijk = np.stack([ds[f"voxel_{c}"].values for c in "ijk"], axis=1)
    np.testing.assert_array_equal(ijk, axis.voxel)
    assert (ds["vertex"].values[78:] == -1).all()
    assert (ds["voxel_i"].values[:78] == -1).all()
    assert ds.attrs["cifti_template"].endswith(
        "thickness/sub-0001_thickness.dscalar.nii"
    )
    assert var.attrs["modelarray_sources"] == "source_file"


def test_from_cohort_reads_only_what_is_computed(in_cohort):
    ds = cohort.from_cohort("cohort_thickness.csv", batch_size=1)
    calls = []
    real = cifti.read_columns

    def spy(block, start, stop, out=None):
        calls.append((Path(block.path).name, start, stop))
        return real(block, start, stop, out)

    cifti.read_columns = spy
    try:
        part = ds["thickness"].isel(subject=[1, 3], element=slice(40, 50)).values
    finally:
        cifti.read_columns = real
    np.testing.assert_array_equal(
        part, _values("thickness.h5", "thickness")[[1, 3], 40:50]
    )
    assert sorted(calls) == [
        ("sub-0002_thickness.dscalar.nii", 40, 50),
        ("sub-0004_thickness.dscalar.nii", 40, 50),
    ]


def test_two_scalars_share_the_subject_dim(in_cohort):
    ds = cohort.from_cohort("cohort_long_two_scalars.csv")
    assert ds["thickness"].dims == ds["area"].dims == ("subject", "element")
    assert ds["source_file_area"].values[4] == "area/sub-0005_area.dscalar.nii"
    assert "age_area" not in ds.coords  # same subjects, same columns: one coordinate
    np.testing.assert_array_equal(ds["area"].values, _values("two_scalars.h5", "area"))


def test_wide_cohort_with_a_missing_cell(tmp_path):
    for sub in ("thickness", "area"):
        shutil.copytree(COHORT / sub, tmp_path / sub)
    lines = (COHORT / "cohort_wide.csv").read_text().splitlines()
    lines[2] = lines[2].rsplit(",", 1)[0] + ","  # sub-0002 has no area file
    csv = tmp_path / "wide.csv"
    csv.write_text("\n".join(lines) + "\n")
    ds = cohort.from_cohort(
        csv, scalar_columns=["thickness", "area"], relative_to="csv"
    )
    assert ds["thickness"].dims == ("subject_thickness", "element")
    assert ds["area"].dims == ("subject_area", "element")
    assert ds["subject_id_area"].values.tolist() == [
        "sub-0001", "sub-0003", "sub-0004", "sub-0005",
    ]  # fmt: skip
    np.testing.assert_array_equal(
        ds["area"].values, _values("area_wide.h5", "area")[[0, 2, 3, 4]]
    )
    assert ds.attrs["cohort_format"] == "wide"


def test_relative_paths_fall_back_to_the_csv_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not where the files are
    with pytest.warns(UserWarning, match=r"^5 source file\(s\) of .*cohort file's"):
        ds = cohort.from_cohort(COHORT / "cohort_thickness.csv")
    np.testing.assert_array_equal(
        ds["thickness"].values, _values("thickness.h5", "thickness")
    )
    # the stored names stay as written, not resolved
    assert ds["source_file"].values[0] == "thickness/sub-0001_thickness.dscalar.nii"
    with pytest.raises(FileNotFoundError, match="looked in"):
        cohort.from_cohort(COHORT / "cohort_thickness.csv", relative_to="cwd")


def test_unreadable_remote_source_names_the_url(tmp_path):
    # URLs are fetched through fsspec (tests/test_engine_remote.py serves some);
    # one that cannot be opened is named in the error
    csv = tmp_path / "c.csv"
    url = "nosuchprotocol://bucket/sub-1.dscalar.nii"
    csv.write_text(f"scalar_name,source_file\nthickness,{url}\n")
    with pytest.raises(ClusterH5Error, match=f"{url}: cannot be opened"):
        cohort.from_cohort(csv)


def test_missing_file_names_it(tmp_path):
    csv = tmp_path / "c.csv"
    csv.write_text("scalar_name,source_file\nthickness,nowhere/sub-9.dscalar.nii\n")
    with pytest.raises(FileNotFoundError, match=r"nowhere/sub-9\.dscalar\.nii"):
        cohort.from_cohort(csv)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (
            "subject,source_file\ns,a.dscalar.nii\n",
            r"scalar_name.*missing \['scalar_name'\]",
        ),
        ("scalar_name,source_file\n", "no scalar entries"),
        (
            "scalar_name,source_file\nx,a.nii.gz\n",
            "detected NIfTI data but no group mask",
        ),
        ("scalar_name,source_file\nx,a.dscalar.nii\nx,b.nii\n", "mixes modalities"),
        ("scalar_name,source_file\nx,a.mif\n", "MIF"),
        ("scalar_name,source_file\nx,a.txt\n", "cannot tell the type"),
    ],
)
def test_bad_cohorts_name_the_csv(tmp_path, text, match):
    csv = tmp_path / "bad.csv"
    csv.write_text(text)
    with pytest.raises(ClusterH5Error, match=match) as err:
        cohort.from_cohort(csv)
    assert str(csv) in str(err.value)


def test_unreadable_first_file_is_named(tmp_path):
    (tmp_path / "d.dscalar.nii").mkdir()  # the reference file cannot be read
    shutil.copy(COHORT / "thickness" / "sub-0001_thickness.dscalar.nii", tmp_path)
    csv = tmp_path / "c.csv"
    csv.write_text(
        "scalar_name,source_file\nthickness,d.dscalar.nii\n"
        "thickness,sub-0001_thickness.dscalar.nii\n"
    )
    with pytest.raises(ClusterH5Error, match="reading the CIFTI header failed") as err:
        cohort.from_cohort(csv, relative_to="csv")
    assert str(err.value).startswith(f"{tmp_path / 'd.dscalar.nii'}: ")


def test_wide_missing_column(tmp_path):
    with pytest.raises(ClusterH5Error, match=r"missing scalar columns \['volume'\]"):
        cohort.from_cohort(COHORT / "cohort_wide.csv", scalar_columns=["volume"])


def test_mismatched_brain_model_in_cohort(tmp_path):
    for sub in ("thickness",):
        shutil.copytree(COHORT / sub, tmp_path / sub)
    img = nib.load(tmp_path / "thickness" / "sub-0003_thickness.dscalar.nii")
    axis = img.header.get_axis(1)
    vertex = axis.vertex.copy()
    vertex[0] = 22  # same structures and count, another vertex
    moved = ca.BrainModelAxis(
        axis.name, voxel=axis.voxel, vertex=vertex, affine=axis.affine,
        volume_shape=axis.volume_shape, nvertices=axis.nvertices,
    )  # fmt: skip
    bad = tmp_path / "thickness" / "sub-0003_thickness.dscalar.nii"
    nib.Cifti2Image(
        np.asarray(img.dataobj), header=(img.header.get_axis(0), moved)
    ).to_filename(bad)
    shutil.copy(COHORT / "cohort_thickness.csv", tmp_path / "c.csv")
    with pytest.raises(ClusterH5Error, match=r"sub-0003.*vertex 22") as err:
        cohort.from_cohort(tmp_path / "c.csv", relative_to="csv")
    assert str(bad) in str(err.value)


def test_scalar_names_with_slashes_are_refused(tmp_path):
    shutil.copytree(COHORT / "thickness", tmp_path / "thickness")
    csv = tmp_path / "c.csv"
    csv.write_text(
        "scalar_name,source_file\n../x,thickness/sub-0001_thickness.dscalar.nii\n"
    )
    with pytest.raises(ValueError, match="not a valid HDF5 name"):
        cohort.from_cohort(csv, relative_to="csv")


# --------------------------------------------------------------------------
# to_modelarray
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("csv", "scalar_columns", "outputs"),
    [
        ("cohort_thickness.csv", None, {"o.h5": "thickness.h5"}),
        ("cohort_long_two_scalars.csv", None, {"o.h5": "two_scalars.h5"}),
        (
            "cohort_wide.csv",
            ["thickness", "area"],
            {"thickness_o.h5": "thickness_wide.h5", "area_o.h5": "area_wide.h5"},
        ),
    ],
)
def test_to_modelarray_equals_modelarrayio(
    in_cohort, tmp_path, csv, scalar_columns, outputs
):
    ds = cohort.from_cohort(csv, scalar_columns=scalar_columns, batch_size=2)
    written = cohort.to_modelarray(ds, tmp_path / "o.h5", progress=False)
    assert sorted(p.name for p in written) == sorted(outputs)
    for ours, theirs in outputs.items():
        assert_same_file(tmp_path / ours, MAI / theirs)


def test_to_modelarray_with_distributed_style_scheduler(in_cohort, tmp_path):
    # the lazy arrays pickle (no open files), so process workers can read them
    ds = cohort.from_cohort("cohort_thickness.csv", batch_size=2)
    again = pickle.loads(pickle.dumps(ds))
    with dask.config.set(scheduler="processes", num_workers=2):
        np.testing.assert_array_equal(
            again["thickness"].values, _values("thickness.h5", "thickness")
        )


def test_to_modelarray_refuses_to_overwrite(in_cohort, tmp_path):
    ds = cohort.from_cohort("cohort_thickness.csv")
    out = tmp_path / "o.h5"
    out.write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        cohort.to_modelarray(ds, out, progress=False)
    assert out.read_bytes() == b"keep"
    cohort.to_modelarray(ds, out, progress=False, overwrite=True)
    assert_same_file(out, MAI / "thickness.h5")


def test_failed_write_leaves_nothing(in_cohort, tmp_path, monkeypatch):
    ds = cohort.from_cohort("cohort_long_two_scalars.csv")
    out = tmp_path / "o.h5"
    out.write_bytes(b"keep")

    def broken(path, fd, buffers, offset):
        if "area" in path:
            raise OSError(f"{path}: disk on fire")
        return real(path, fd, buffers, offset)

    real = cifti._pread
    monkeypatch.setattr(cifti, "_pread", broken)
    with pytest.raises(OSError, match="disk on fire"):
        cohort.to_modelarray(ds, out, overwrite=True, progress=False)
    assert out.read_bytes() == b"keep"
    assert [p.name for p in tmp_path.iterdir()] == ["o.h5"]


def test_unchanged_cohort_streams_from_the_files_held_open(
    in_cohort, tmp_path, monkeypatch
):
    # from_cohort's own arrays are written as the CLI writes them: no dask
    # graph per stripe, every file open once for the whole write, then closed
    def no_dask(self, key):
        raise AssertionError("read through dask")

    held = []
    real = cifti.OpenFiles.__init__

    def spy(self, blocks, limit=None):
        real(self, blocks, limit)
        held.append([fd is not None for fd in self.fds])

    ds = cohort.from_cohort("cohort_long_two_scalars.csv", batch_size=2)
    monkeypatch.setattr(modelarray_io.CohortArray, "__getitem__", no_dask)
    monkeypatch.setattr(cifti.OpenFiles, "__init__", spy)
    cohort.to_modelarray(ds, tmp_path / "o.h5", progress=False)
    assert_same_file(tmp_path / "o.h5", MAI / "two_scalars.h5")
    assert held == [[True] * 5, [True] * 5]
    files = sorted(in_cohort.glob("*/*.dscalar.nii"))
    links = [Path("/proc/self/fd", fd) for fd in os.listdir("/proc/self/fd")]
    open_now = {os.path.realpath(p) for p in links if p.exists()}
    assert open_now.isdisjoint(os.path.realpath(p) for p in files)
    # a changed array (its dask name changes) is read through dask
    ds["thickness"] = ds["thickness"] + 0
    with pytest.raises(AssertionError, match="read through dask"):
        cohort.to_modelarray(ds, tmp_path / "c.h5", progress=False)


def test_subsets_and_transforms_write_their_values(in_cohort, tmp_path):
    ds = cohort.from_cohort("cohort_thickness.csv")
    sub = ds.isel(subject=[4, 0, 2])
    sub["thickness"] = sub["thickness"] * 2
    out = tmp_path / "s.h5"
    cohort.to_modelarray(sub, out, progress=False, chunk_voxels=7)
    expected = _values("thickness.h5", "thickness")[[4, 0, 2]] * 2
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["scalars/thickness/values"][()], expected)
        assert f["scalars/thickness/values"].chunks == (3, 7)
        assert [s.decode() for s in f["scalars/thickness/column_names"][()]] == [
            f"thickness/sub-000{i}_thickness.dscalar.nii" for i in (5, 1, 3)
        ]


def test_modelarray_file_round_trip(tmp_path):
    with xr.open_dataset(MAI / "two_scalars.h5", engine="clusterh5") as ds:
        cohort.to_modelarray(ds, tmp_path / "rt.h5", progress=False)
    assert_same_file(tmp_path / "rt.h5", MAI / "two_scalars.h5")
    with xr.open_dataset(MAI / "thickness.h5", engine="clusterh5") as ds:
        cohort.to_modelarray(ds, tmp_path / "rt2.h5", progress=False)
    assert_same_file(tmp_path / "rt2.h5", MAI / "thickness.h5")


# --------------------------------------------------------------------------
# to_cifti
# --------------------------------------------------------------------------


@pytest.mark.parametrize("analysis", ["lm", "lm_stream", "legacy_attr"])
def test_to_cifti_equals_modelarrayio(in_cohort, tmp_path, analysis):
    with xr.open_dataset(RESULTS, engine="clusterh5") as ds:
        out = cohort.to_cifti(
            ds,
            tmp_path / analysis,
            analysis=analysis,
            cohort_file="cohort_thickness.csv",
        )
    assert all(p.parent == tmp_path / analysis for p in out)
    assert_same_export(tmp_path / analysis, MODELARRAY / "export" / analysis)


def test_to_cifti_from_a_computed_dataset(in_cohort, tmp_path, capsys):
    # results computed in xarray export with the cohort's first file as template
    ds = cohort.from_cohort("cohort_thickness.csv")
    with xr.open_dataset(RESULTS, engine="clusterh5") as res:
        lm = res["lm"].load()
    ds["lm"] = lm.drop_vars(["element", "structure"])
    ds["lm"].attrs["modelarray_group"] = "results"
    capsys.readouterr()
    out = cohort.to_cifti(ds, tmp_path, analysis="lm")
    assert capsys.readouterr().err == ""  # no progress bar unless asked
    assert_same_export(tmp_path, MODELARRAY / "export" / "lm")
    assert len(out) == 19
    ds["bad"] = ds["lm"].expand_dims(extra=1)
    ds["bad"].attrs["modelarray_group"] = "results"
    with pytest.raises(ValueError, match=r"'bad' must have dims \(stat, element\)"):
        cohort.to_cifti(ds, tmp_path / "b", analysis="bad")


def test_to_modelarray_shows_progress_by_default(in_cohort, tmp_path, capsys):
    ds = cohort.from_cohort("cohort_thickness.csv")
    capsys.readouterr()
    cohort.to_modelarray(ds, tmp_path / "p.h5")
    err = capsys.readouterr().err
    assert "100/100" in err  # the bar counts elements
    # of every scalar: two scalars of 100 elements in one file
    two = cohort.from_cohort("cohort_long_two_scalars.csv")
    capsys.readouterr()
    cohort.to_modelarray(two, tmp_path / "two.h5")
    assert "200/200" in capsys.readouterr().err


def test_accessor_to_cifti_dispatches_results_to_modelarrayio_exports(
    in_cohort, tmp_path
):
    # the cross-format dispatch (conversions.to_cifti): a ModelArray results
    # Dataset is not a clustered view, so it gets ModelArrayIO's dscalar exports
    with xr.open_dataset(RESULTS, engine="clusterh5") as ds:
        out = ds.clusterh5.to_cifti(
            tmp_path, analysis="lm", cohort_file="cohort_thickness.csv"
        )
    assert_same_export(tmp_path, MODELARRAY / "export" / "lm")
    assert len(out) == 19


def test_subject_naming_rule():
    assert subject_dims({"a": 3}) == {"a": ("subject", "source_file")}
    assert subject_dims({"a": 3, "b": 3}) == {
        "a": ("subject", "source_file_a"),
        "b": ("subject", "source_file_b"),
    }
    assert subject_dims({"a": 3, "b": 2}) == {
        "a": ("subject_a", "source_file_a"),
        "b": ("subject_b", "source_file_b"),
    }


def test_to_cifti_hostile_names_stay_inside(in_cohort, tmp_path):
    ds = cohort.from_cohort("cohort_thickness.csv")
    stats = ["../../evil", "a/b", "..", "x\\..\\y"]
    ds["../up"] = xr.DataArray(
        np.zeros((4, 100)), dims=("stat", "element"), coords={"stat": stats},
        attrs={"modelarray_group": "results"},
    )  # fmt: skip
    out_dir = tmp_path / "a" / "b"
    out_dir.parent.mkdir()  # the output folder is made, not its parents
    out = cohort.to_cifti(ds, out_dir, analysis="../up")
    assert sorted(p.name for p in out) == sorted(
        [
            ".._up_.._.._evil.dscalar.nii",
            ".._up_a_b.dscalar.nii",
            ".._up_...dscalar.nii",
            ".._up_x_.._y.dscalar.nii",
        ]
    )
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert files == sorted(out)
    assert all(p.parent == out_dir for p in out)


def test_to_cifti_needs_a_template_and_an_analysis(tmp_path):
    with xr.open_dataset(RESULTS, engine="clusterh5") as ds:
        with pytest.raises(ValueError, match="choose the analysis"):
            cohort.to_cifti(ds, tmp_path)
        with pytest.raises(ValueError, match="no CIFTI template"):
            cohort.to_cifti(ds, tmp_path, analysis="lm")
        with pytest.raises(KeyError, match="no results variable 'nope'"):
            cohort.to_cifti(ds, tmp_path, analysis="nope", example_file=RESULTS)
        with pytest.raises(ValueError, match="not both"):
            cohort.to_cifti(
                ds, tmp_path, analysis="lm", example_file="a", cohort_file="b"
            )
    assert not list(tmp_path.iterdir())


def test_to_cifti_element_count_must_match_template(in_cohort, tmp_path):
    ds = xr.Dataset(
        {
            "r": (
                ("stat", "element"),
                np.zeros((1, 99)),
                {"modelarray_group": "results"},
            )
        },
        coords={"stat": ["x"]},
    )
    with pytest.raises(ClusterH5Error, match="100 greyordinates"):
        cohort.to_cifti(
            ds,
            tmp_path,
            example_file=COHORT / "thickness" / "sub-0001_thickness.dscalar.nii",
        )


def test_stat_names_of_lm_reach_the_files(in_cohort, tmp_path):
    with xr.open_dataset(RESULTS, engine="clusterh5") as ds:
        out = cohort.to_cifti(
            ds, tmp_path, analysis="lm", cohort_file="cohort_thickness.csv"
        )
    stems = {p.name[len("lm_") : -len(".dscalar.nii")] for p in out}
    assert set(LM_NAMES) <= stems


_index = st.one_of(
    st.integers(-5, 4),
    st.slices(5),
    st.lists(st.integers(0, 4), min_size=1, max_size=6),
)
_cols = st.one_of(
    st.integers(-100, 99),
    st.slices(100),
    st.lists(st.integers(0, 99), min_size=1, max_size=8),
)


@given(rows=_index, cols=_cols)
def test_cohort_array_indexing_equals_numpy(rows, cols):
    files = [
        COHORT / "thickness" / f"sub-000{i}_thickness.dscalar.nii" for i in range(1, 6)
    ]
    ref, blocks = modelarray_io.check_cohort_files(
        [str(p) for p in files], None, False, 1
    )
    arr = modelarray_io.CohortArray(blocks, ref.n_elements)
    assert (len(arr), arr.ndim, arr.shape) == (5, 2, (5, 100))
    full = _values("thickness.h5", "thickness")
    # outer (orthogonal) indexing, as dask and xarray's backends ask for it
    r, c = np.arange(5)[rows], np.arange(100)[cols]
    expected = full[np.ix_(np.atleast_1d(r), np.atleast_1d(c))]
    expected = expected[tuple(0 if np.ndim(k) == 0 else slice(None) for k in (r, c))]
    np.testing.assert_array_equal(arr[rows, cols], expected)
    # Ellipsis anywhere, as numpy reads it
    np.testing.assert_array_equal(arr[..., cols], full[:, cols])
    np.testing.assert_array_equal(arr[rows, ...], full[rows])
    np.testing.assert_array_equal(arr[...], full)
    with pytest.raises(IndexError, match="too many indices for a 2-D cohort array"):
        arr[0, 0, 0]
    # a contiguous range out of order is read in the order asked
    np.testing.assert_array_equal(arr[:, [3, 1, 2]], full[:, [3, 1, 2]])


def test_results_matrix_by_analysis_name_without_stat_labels():
    # a variable renamed in xarray is still found by the analysis it holds;
    # statistics without labels are numbered as ModelArrayIO numbers them
    values = np.arange(6.0).reshape(2, 3)
    ds = xr.Dataset(
        {
            "fit": (
                ("stat", "element"),
                values,
                {"modelarray_group": "results", "modelarray_name": "lm_age"},
            )
        }
    )
    name, stats, matrix = cohort.results_matrix(ds, "lm_age")
    assert (name, stats) == ("lm_age", ["component001", "component002"])
    np.testing.assert_array_equal(matrix, values)
    with pytest.raises(KeyError, match="no results variable 'lm_sex'"):
        cohort.results_matrix(ds, "lm_sex")


def test_to_modelarray_makes_no_folders_unless_asked(in_cohort, tmp_path):
    # like open(): a missing output folder is an error by default
    ds = cohort.from_cohort("cohort_thickness.csv")
    out = tmp_path / "missing" / "o.h5"
    with pytest.raises(ClusterH5Error, match="missing"):
        cohort.to_modelarray(ds, out, progress=False)
    assert not out.parent.exists()
    cohort.to_modelarray(ds, out, progress=False, parents=True)
    assert_same_file(out, MAI / "thickness.h5")


def test_to_cifti_makes_no_parent_folders_unless_asked(in_cohort, tmp_path):
    # the output folder is made; a missing folder above it is an error by default
    out = tmp_path / "missing" / "lm"
    kw = {"analysis": "lm", "cohort_file": "cohort_thickness.csv"}
    with xr.open_dataset(RESULTS, engine="clusterh5") as ds:
        with pytest.raises(ClusterH5Error, match="missing"):
            cohort.to_cifti(ds, out, **kw)
        assert not out.parent.exists()
        cohort.to_cifti(ds, out, parents=True, **kw)
    assert_same_export(out, MODELARRAY / "export" / "lm")


def test_to_modelarray_needs_scalars(tmp_path):
    # only coordinates along (subject, element): nothing to write, and said so
    empty = xr.Dataset(
        coords={
            "structure": ("element", ["CIFTI_STRUCTURE_CORTEX_LEFT"] * 3),
            "source_file": ("subject", ["a.nii", "b.nii"]),
        }
    )
    with pytest.raises(ValueError, match="no scalar variables"):
        cohort.to_modelarray(empty, tmp_path / "o.h5", progress=False)
    assert not list(tmp_path.iterdir())


def test_pconn_names_must_form_a_full_row_major_matrix(tmp_path):
    # /parcels stores the row and column names once; the element order they
    # stand for is ModelArrayIO's row-major ravel of the matrix
    names = ["A", "B", "C"]
    values = np.arange(18, dtype=np.float32).reshape(2, 9)
    full = xr.Dataset(
        {"fc": (("subject", "element"), values)},
        coords={
            "parcel_from": ("element", np.repeat(names, 3)),
            "parcel_to": ("element", np.tile(names, 3)),
            "source_file": ("subject", ["s0.pconn.nii", "s1.pconn.nii"]),
        },
    )
    cohort.to_modelarray(full, tmp_path / "ok.h5", progress=False)
    with h5py.File(tmp_path / "ok.h5", "r") as f:
        for key in ("parcel_id_from", "parcel_id_to"):
            assert [s.decode() for s in f["parcels"][key][()]] == names
        np.testing.assert_array_equal(f["scalars/fc/values"][()], values)
    swapped = np.tile(names, 3)
    swapped[[0, 1]] = swapped[[1, 0]]
    for parcel_from, parcel_to in [
        (np.tile(names, 3), np.repeat(names, 3)),  # column-major
        (np.repeat(names, 3), swapped),  # two columns swapped in the first row
    ]:
        bad = full.assign_coords(
            parcel_from=("element", parcel_from), parcel_to=("element", parcel_to)
        )
        with pytest.raises(ValueError, match="not a full row-major pconn matrix"):
            cohort.to_modelarray(bad, tmp_path / "bad.h5", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.h5"]
