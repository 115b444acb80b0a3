"""``clusterh5 to-modelarray``, ``export-results``: ModelArrayIO's flags and files."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import xarray as xr
from nibabel.cifti2 import cifti2_axes as ca

from tests._helpers import MODELARRAY, assert_same_export, assert_same_file
from xarray_clusterh5.cli import main
from xarray_clusterh5.modelarray.cohort import to_modelarray

COHORT = MODELARRAY / "cohort"
RESULTS = MODELARRAY / "results" / "thickness_with_results.h5"
MAI = MODELARRAY / "modelarrayio"


@pytest.fixture
def cohort_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A writable copy of the fixture cohort, as the working directory."""
    work = tmp_path / "cohort"
    shutil.copytree(COHORT, work)
    monkeypatch.chdir(work)
    return work


def _run(*argv: str) -> int:
    return main(list(argv))


@pytest.mark.parametrize(
    ("argv", "outputs"),
    [
        (["--cohort-file", "cohort_thickness.csv"], {"o.h5": "thickness.h5"}),
        (["--cohort_file", "cohort_long_two_scalars.csv"], {"o.h5": "two_scalars.h5"}),
        (
            ["--cohort-file", "cohort_wide.csv", "--scalar-columns", "thickness",
             "area"],
            {"thickness_o.h5": "thickness_wide.h5", "area_o.h5": "area_wide.h5"},
        ),
        (
            ["--cohort-file", "cohort_long_two_scalars.csv", "--compression", "gzip",
             "--compression-level", "4", "--target-chunk-mb", "2.0", "--dtype",
             "float32", "--s3-workers", "2", "--workers", "3", "--log-level", "DEBUG"],
            {"o.h5": "two_scalars.h5"},
        ),
    ],
    ids=["long", "underscore-alias", "wide-splits", "explicit-defaults"],
)  # fmt: skip
def test_to_modelarray_equals_modelarrayio(cohort_dir, tmp_path, argv, outputs):
    out = tmp_path / "out" / "o.h5"  # parent folders are created, as ModelArrayIO does
    assert _run("to-modelarray", *argv, "--output", str(out)) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(outputs)
    for ours, theirs in outputs.items():
        assert_same_file(out.parent / ours, MAI / theirs)


def test_default_output_name_and_overwrite(cohort_dir):
    (cohort_dir / "modelarray.h5").write_bytes(b"old")
    assert _run("to-modelarray", "--cohort-file", "cohort_thickness.csv") == 0
    assert_same_file(cohort_dir / "modelarray.h5", MAI / "thickness.h5")  # replaced


def test_split_flags(cohort_dir, tmp_path):
    assert (
        _run("to-modelarray", "--cohort-file", "cohort_long_two_scalars.csv",
             "--split-files", "--output", str(tmp_path / "s.h5"))
        == 0
    )  # fmt: skip
    assert sorted(p.name for p in tmp_path.glob("*.h5")) == [
        "area_s.h5",
        "thickness_s.h5",
    ]
    assert (
        _run("to-modelarray", "--cohort-file", "cohort_wide.csv", "--scalar_columns",
             "thickness", "area", "--no_split_files", "--output",
             str(tmp_path / "w.h5"))
        == 0
    )  # fmt: skip
    with h5py.File(tmp_path / "w.h5", "r") as f:
        assert sorted(f["scalars"]) == ["area", "thickness"]
        np.testing.assert_array_equal(
            f["scalars/area/values"][()],
            h5py.File(MAI / "area_wide.h5", "r")["scalars/area/values"][()],
        )


def test_chunk_and_filter_flags(cohort_dir, tmp_path):
    out = tmp_path / "c.h5"
    argv = ["to-modelarray", "--cohort-file", "cohort_thickness.csv", "--output",
            str(out), "--chunk-voxels", "32", "--no-shuffle", "--compression-level",
            "11", "--dtype", "float64"]  # fmt: skip
    assert _run(*argv) == 0
    with h5py.File(out, "r") as f, h5py.File(MAI / "thickness.h5", "r") as g:
        d = f["scalars/thickness/values"]
        assert d.chunks == (5, 32)
        assert (d.compression, d.compression_opts, d.shuffle) == ("gzip", 9, False)
        assert d.dtype == np.float64
        np.testing.assert_array_equal(d[()], g["scalars/thickness/values"][()])


@pytest.mark.parametrize(
    "extra",
    [
        ["--split-files", "--no-split-files"],
        ["--chunk-voxels", "10", "--target-chunk-mb", "1"],
        ["--dtype", "float16"],
        ["--compression", "brotli"],
    ],
)
def test_argparse_errors_exit_2(cohort_dir, extra, capsys):
    with pytest.raises(SystemExit) as err:
        _run("to-modelarray", "--cohort-file", "cohort_thickness.csv", *extra)
    assert err.value.code == 2
    assert "error" in capsys.readouterr().err


def test_missing_cohort_file_exits_2(cohort_dir, capsys):
    with pytest.raises(SystemExit) as err:
        _run("to-modelarray", "--cohort-file", "nope.csv")
    assert err.value.code == 2
    assert "Path does not exist: <nope.csv>" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--compression", "zstd"], "zstd is TileDB-only"),
        (["--backend", "tiledb"], "--backend tiledb is not supported"),
        # modality flags must fit the cohort (ModelArrayIO ignores them silently)
        (["--mask", "cohort_thickness.csv"], "a group mask is for NIfTI cohorts"),
        (
            ["--index-file", "cohort_thickness.csv"],
            "are for MIF cohorts; this is cifti",
        ),
    ],
)
def test_unsupported_paths_are_refused_before_any_work(
    cohort_dir, capsys, extra, message
):
    assert _run("to-modelarray", "--cohort-file", "cohort_thickness.csv", *extra) == 1
    assert message in capsys.readouterr().err
    assert not (cohort_dir / "modelarray.h5").exists()


def _rewrite(path: Path, axes: tuple, data: np.ndarray) -> None:
    img = nib.Cifti2Image(data, header=axes)
    img.nifti_header.set_intent("ConnDenseScalar")
    img.to_filename(path)


def test_bad_file_is_named_and_no_output_is_left(cohort_dir, capsys):
    target = cohort_dir / "thickness" / "sub-0004_thickness.dscalar.nii"
    img = nib.load(target)
    axis = img.header.get_axis(1)
    voxel = axis.voxel.copy()
    voxel[-1] = [0, 0, 0]  # same count and structures: ModelArrayIO accepts this
    other = ca.BrainModelAxis(
        axis.name, voxel=voxel, vertex=axis.vertex, affine=axis.affine,
        volume_shape=axis.volume_shape, nvertices=axis.nvertices,
    )  # fmt: skip
    _rewrite(target, (img.header.get_axis(0), other), np.asarray(img.dataobj))
    (cohort_dir / "modelarray.h5").write_bytes(b"previous run")
    assert _run("to-modelarray", "--cohort-file", "cohort_thickness.csv") == 1
    err = capsys.readouterr().err
    assert "sub-0004_thickness.dscalar.nii" in err
    assert "another brain model" in err
    assert (cohort_dir / "modelarray.h5").read_bytes() == b"previous run"
    assert not list(cohort_dir.glob(".modelarray.h5.*"))


def test_multi_map_files_need_cifti_map(cohort_dir, capsys, tmp_path):
    data = np.stack([np.arange(100), 10 * np.arange(100)]).astype(np.float32)
    for i in range(1, 6):
        path = cohort_dir / "thickness" / f"sub-000{i}_thickness.dscalar.nii"
        img = nib.load(path)
        _rewrite(path, (ca.ScalarAxis(["a", "b"]), img.header.get_axis(1)), data * i)
    assert _run("to-modelarray", "--cohort-file", "cohort_thickness.csv") == 1
    err = capsys.readouterr().err
    assert "sub-0001_thickness.dscalar.nii: has 2 maps" in err
    out = tmp_path / "m.h5"
    argv = ["to-modelarray", "--cohort-file", "cohort_thickness.csv", "--cifti-map",
            "1", "--output", str(out)]  # fmt: skip
    assert _run(*argv) == 0
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(
            f["scalars/thickness/values"][()], [data[1] * i for i in range(1, 6)]
        )


def test_dtseries_inputs_are_cifti(cohort_dir, capsys, tmp_path):
    axis = nib.load(cohort_dir / "thickness" / "sub-0001_thickness.dscalar.nii").header
    axis = axis.get_axis(1)
    rows = ["scalar_name,source_file"]
    for i in range(3):
        name = f"run{i}.dtseries.nii"
        data = np.full((4, 100), i, np.float32) + np.arange(4)[:, None]
        nib.Cifti2Image(data, header=(ca.SeriesAxis(0, 2, 4), axis)).to_filename(name)
        rows.append(f"bold,{name}")
    Path("ts.csv").write_text("\n".join(rows) + "\n")
    assert _run("to-modelarray", "--cohort-file", "ts.csv") == 1
    err = capsys.readouterr().err
    assert "run0.dtseries.nii: is a CIFTI-2 dtseries file, not a dscalar" in err
    assert "--mask" not in err  # ModelArrayIO mistakes it for NIfTI
    out = tmp_path / "ts.h5"
    assert _run("to-modelarray", "--cohort-file", "ts.csv", "--cifti-map", "3",
                "--output", str(out)) == 0  # fmt: skip
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(
            f["scalars/bold/values"][()], np.repeat([[3.0], [4.0], [5.0]], 100, axis=1)
        )


def test_missing_source_file_is_named(cohort_dir, capsys):
    (cohort_dir / "thickness" / "sub-0002_thickness.dscalar.nii").unlink()
    assert _run("to-modelarray", "--cohort-file", "cohort_thickness.csv") == 1
    assert (
        "thickness/sub-0002_thickness.dscalar.nii: no such file"
        in capsys.readouterr().err
    )


def test_progress_goes_to_stderr(cohort_dir, capsys):
    assert _run("to-modelarray", "--cohort-file", "cohort_thickness.csv") == 0
    captured = capsys.readouterr()
    assert "writing ModelArray HDF5" in captured.err
    assert "writing ModelArray HDF5" not in captured.out
    assert _run("to-modelarray", "--cohort-file", "cohort_thickness.csv",
                "--log-level", "WARNING") == 0  # fmt: skip
    assert "writing ModelArray HDF5" not in capsys.readouterr().err


# --------------------------------------------------------------------------
# export-results
# --------------------------------------------------------------------------


@pytest.mark.parametrize("analysis", ["lm", "lm_stream", "legacy_attr"])
@pytest.mark.parametrize("template", ["--cohort-file", "--example_file"])
def test_export_results_equals_modelarrayio(cohort_dir, tmp_path, analysis, template):
    value = (
        "cohort_thickness.csv"
        if template == "--cohort-file"
        else "thickness/sub-0001_thickness.dscalar.nii"
    )
    out = tmp_path / "exp" / analysis
    argv = ["export-results", "--input-hdf5", str(RESULTS), "--analysis_name",
            analysis, "--output-dir", str(out), template, value]  # fmt: skip
    assert _run(*argv) == 0
    assert_same_export(out, MODELARRAY / "export" / analysis)


def test_export_into_an_existing_folder_overwrites_like_modelarrayio(
    cohort_dir, tmp_path
):
    out = tmp_path / "e"
    out.mkdir()
    (out / "lm_stream_age.estimate.dscalar.nii").write_bytes(b"stale")
    (out / "unrelated.txt").write_text("kept")
    argv = ["export-results", "--input-hdf5", str(RESULTS), "--analysis-name",
            "lm_stream", "--output-dir", str(out), "--cohort-file",
            "cohort_thickness.csv"]  # fmt: skip
    assert _run(*argv) == 0
    assert (out / "unrelated.txt").read_text() == "kept"
    (out / "unrelated.txt").unlink()
    assert_same_export(out, MODELARRAY / "export" / "lm_stream")


def test_export_flag_errors(cohort_dir, tmp_path, capsys):
    base = ["export-results", "--input-hdf5", str(RESULTS), "--analysis-name", "lm",
            "--output-dir", str(tmp_path / "x")]  # fmt: skip
    with pytest.raises(SystemExit) as err:
        _run(*base, "--cohort-file", "cohort_thickness.csv", "--example-file",
             "thickness/sub-0001_thickness.dscalar.nii")  # fmt: skip
    assert err.value.code == 2
    capsys.readouterr()
    assert _run(*base) == 1
    assert "or --cohort-file/--example-file (CIFTI)" in capsys.readouterr().err
    assert (
        _run(*base[:4], "nope", *base[5:], "--cohort-file", "cohort_thickness.csv") == 1
    )
    assert "no results for analysis 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        _run("export-results", "--input-hdf5", "missing.h5", "--analysis-name", "lm",
             "--output-dir", "x")  # fmt: skip
    assert err.value.code == 2
    assert not (tmp_path / "x").exists()


def test_export_hostile_analysis_name_stays_inside(cohort_dir, tmp_path):
    h5 = tmp_path / "r.h5"
    with h5py.File(h5, "w") as f:
        f["results/..%2f/results_matrix"] = np.zeros((2, 100))
        f["results/..%2f/column_names"] = np.array([b"../../../escape", b"a/../b"])
    out = tmp_path / "deep" / "out"
    before = {p for p in tmp_path.rglob("*") if p.is_file()}
    argv = ["export-results", "--input-hdf5", str(h5), "--analysis-name", "..%2f",
            "--output-dir", str(out), "--cohort-file",
            "cohort_thickness.csv"]  # fmt: skip
    assert _run(*argv) == 0
    new = sorted(p for p in tmp_path.rglob("*") if p.is_file() and p not in before)
    assert [p.name for p in new] == [
        "..%2f_.._.._.._escape.dscalar.nii",
        "..%2f_a_.._b.dscalar.nii",
    ]
    assert all(p.parent == out for p in new)


# --------------------------------------------------------------------------
# parcellated cohorts (pscalar, pconn), as ModelArrayIO converts them
# --------------------------------------------------------------------------


def _parcels(n: int = 10) -> ca.ParcelsAxis:
    axis = nib.load(COHORT / "thickness" / "sub-0001_thickness.dscalar.nii").header
    axis = axis.get_axis(1)
    return ca.ParcelsAxis.from_brain_models(
        [(f"P{i}", axis[i * 10 : (i + 1) * 10]) for i in range(n)]
    )


def _parcel_cohort(folder: Path, kind: str, n_subjects: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    parcels = _parcels()
    rows = ["scalar_name,source_file"]
    data = []
    for i in range(n_subjects):
        if kind == "pscalar":
            values = rng.normal(size=(1, 10)).astype(np.float32)
            axes = (ca.ScalarAxis([f"s{i}"]), parcels)
        else:
            values = rng.normal(size=(10, 10)).astype(np.float32)
            axes = (parcels, parcels)
        nib.Cifti2Image(values, header=axes).to_filename(folder / f"s{i}.{kind}.nii")
        rows.append(f"fa,s{i}.{kind}.nii")
        data.append(values)
    (folder / "c.csv").write_text("\n".join(rows) + "\n")
    return data


@pytest.mark.parametrize("kind", ["pscalar", "pconn"])
def test_parcellated_cohort_round_trip(tmp_path, monkeypatch, kind):
    monkeypatch.chdir(tmp_path)
    data = _parcel_cohort(tmp_path, kind)
    assert _run("to-modelarray", "--cohort-file", "c.csv", "--output", "o.h5") == 0
    names = [f"P{i}" for i in range(10)]
    with h5py.File("o.h5", "r") as f:
        assert "greyordinates" not in f
        expected_ids = (
            {"parcel_id": names}
            if kind == "pscalar"
            else {"parcel_id_from": names, "parcel_id_to": names}
        )
        assert sorted(f["parcels"]) == sorted(expected_ids)
        for k, v in expected_ids.items():
            assert h5py.check_string_dtype(f["parcels"][k].dtype).length is None
            assert [s.decode() for s in f["parcels"][k][()]] == v
        values = f["scalars/fa/values"]
        # pconn matrices flattened row-major, as ModelArrayIO's ravel()
        np.testing.assert_array_equal(values[()], [d.ravel() for d in data])
        assert values.chunks == (4, data[0].size)
    # the engine reads it, and writes it back unchanged
    with xr.open_dataset(tmp_path / "o.h5", engine="clusterh5") as ds:
        if kind == "pscalar":
            assert ds["parcel"].values.tolist() == names
        else:
            assert ds["parcel_from"].values[:12].tolist() == ["P0"] * 10 + ["P1"] * 2
            assert ds["parcel_to"].values[:12].tolist() == [*names, "P0", "P1"]
        to_modelarray(ds, tmp_path / "rt.h5", progress=False)
    assert_same_file(tmp_path / "rt.h5", tmp_path / "o.h5")
    # results back to CIFTI with the first file as template
    with h5py.File(tmp_path / "o.h5", "a") as f:
        m = np.arange(3 * data[0].size, dtype=float).reshape(3, -1)
        m[1, ::3] = np.nan
        f["results/lm/results_matrix"] = m
        f["results/lm/column_names"] = np.array([b"element_id", b"p.value", b"b"])
    argv = ["export-results", "--input-hdf5", "o.h5", "--analysis-name", "lm",
            "--output-dir", "exp", "--cohort-file", "c.csv"]  # fmt: skip
    assert _run(*argv) == 0
    assert sorted(p.name for p in Path("exp").iterdir()) == sorted(
        f"lm_{s}.{kind}.nii" for s in ["element_id", "p.value", "1m.p.value", "b"]
    )
    template = nib.load(f"s0.{kind}.nii")
    for stat, row in [
        ("element_id", m[0]),
        ("p.value", m[1]),
        ("1m.p.value", 1 - m[1]),
    ]:
        img = nib.load(f"exp/lm_{stat}.{kind}.nii")
        assert img.header.get_axis(0) == template.header.get_axis(0)
        assert img.header.get_axis(1) == template.header.get_axis(1)
        np.testing.assert_array_equal(
            img.get_fdata(), row.reshape(data[0].shape).astype(np.float32)
        )


def test_parcellated_cohort_with_other_parcels_is_refused(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    _parcel_cohort(tmp_path, "pscalar")
    img = nib.load("s2.pscalar.nii")
    other = _parcels()
    renamed = ca.ParcelsAxis(
        [f"Q{i}" for i in range(10)], other.voxels, other.vertices, other.affine,
        other.volume_shape, other.nvertices,
    )  # fmt: skip
    nib.Cifti2Image(
        np.asarray(img.dataobj), header=(img.header.get_axis(0), renamed)
    ).to_filename("s2.pscalar.nii")
    assert _run("to-modelarray", "--cohort-file", "c.csv") == 1
    err = capsys.readouterr().err
    assert "s2.pscalar.nii: parcels differ" in err
    assert "other parcel names" in err
    assert not Path("modelarray.h5").exists()
