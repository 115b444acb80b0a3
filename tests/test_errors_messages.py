"""Error messages for what users get wrong: locked files, the wrong kind of
file, missing output folders, results a writer would drop, API words in the CLI."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import shutil
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import xarray as xr

from tests._helpers import FMRISTORE, MODELARRAY, fmristore_path
from xarray_clusterh5 import ClusterH5Error, CorruptFileError, FileLockedError
from xarray_clusterh5._hdf5.files import named_errors, output_folder
from xarray_clusterh5.cli import cli_words, main
from xarray_clusterh5.fmristore.from_nifti import from_nifti
from xarray_clusterh5.fmristore.to_h5 import to_fmristore
from xarray_clusterh5.modelarray import cohort
from xarray_clusterh5.modelarray.export import export_results

RESULTS = MODELARRAY / "results" / "thickness_with_results.h5"
TEMPLATE = MODELARRAY / "cohort" / "thickness" / "sub-0001_thickness.dscalar.nii"


def _copy(src: Path, tmp_path: Path) -> Path:
    out = tmp_path / src.name
    shutil.copy(src, out)
    out.chmod(0o644)
    return out


# --------------------------------------------------------------------------
# named_errors: the one converter
# --------------------------------------------------------------------------


def test_named_errors_names_file_object_and_action() -> None:
    with (
        pytest.raises(CorruptFileError) as info,
        named_errors("/data/sub-01.h5", "reading voxel data", "/scans/r/c_1"),
    ):
        raise OSError("Can't synchronously read data (filter returned failure)")
    msg = str(info.value)
    assert msg.startswith("/data/sub-01.h5: /scans/r/c_1: reading voxel data failed")
    assert "filter returned failure" in msg
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.path == "/data/sub-01.h5"


def test_named_errors_keeps_inner_names_and_missing_files() -> None:
    inner = ClusterH5Error("/a.h5", "/x: looking up the object failed")
    with (
        pytest.raises(ClusterH5Error) as info,
        named_errors("/a.h5", "reading the file's layout"),
    ):
        raise inner
    assert info.value is inner
    with pytest.raises(FileNotFoundError), named_errors("/a.h5", "reading"):
        raise FileNotFoundError("/a.h5: no such file")
    # a bug is not a damaged file
    with pytest.raises(TypeError), named_errors("/a.h5", "reading"):
        raise TypeError("unsupported operand")


# --------------------------------------------------------------------------
# a file another process is writing
# --------------------------------------------------------------------------


@pytest.fixture
def locked(tmp_path: Path):
    """A copy of an fmristore fixture held open for writing by another process."""
    path = _copy(fmristore_path("vignette"), tmp_path)
    code = (
        "import sys, h5py; f = h5py.File(sys.argv[1], 'r+'); "
        "print('open', flush=True); sys.stdin.read()"
    )
    env = {k: v for k, v in os.environ.items() if k != "HDF5_USE_FILE_LOCKING"}
    writer = subprocess.Popen(
        [sys.executable, "-c", code, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert writer.stdout is not None
    assert writer.stdin is not None
    try:
        assert writer.stdout.readline() == "open\n"
        yield path
    finally:
        writer.stdin.close()  # the writer's read returns: it closes the file
        writer.wait(timeout=30)
        writer.stdout.close()


def test_locked_file_says_locked(locked: Path) -> None:
    with pytest.raises(FileLockedError) as info:
        xr.open_dataset(locked, engine="clusterh5")
    msg = str(info.value)
    assert msg.startswith(f"{locked}: is locked: another process has it open")
    assert "corrupt" not in msg
    assert "truncated" not in msg
    assert "locking=False" in msg
    # what the message suggests works, and reads the same values
    with (
        xr.open_dataset(locked, engine="clusterh5", locking=False) as ds,
        xr.open_dataset(fmristore_path("vignette"), engine="clusterh5") as ref,
    ):
        xr.testing.assert_identical(ds.load(), ref.load())


def test_locked_file_in_the_cli(locked: Path, capsys) -> None:
    assert main(["describe", str(locked)]) == 1
    err = capsys.readouterr().err
    assert f"{locked}: is locked" in err
    assert "set HDF5_USE_FILE_LOCKING=FALSE" in err
    assert "locking=False" not in err


# --------------------------------------------------------------------------
# the wrong kind of file
# --------------------------------------------------------------------------


def test_export_results_of_an_fmristore_file(tmp_path: Path, capsys) -> None:
    argv = [
        "export-results",
        "--input-hdf5",
        str(FMRISTORE / "vignette.h5"),
        "--analysis-name",
        "lm",
        "--output-dir",
        str(tmp_path / "out"),
        "--example-file",
        str(TEMPLATE),
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "vignette.h5: is an fmristore clustered experiment" in err
    assert "not a ModelArray file" in err
    assert not (tmp_path / "out").exists()


def test_export_results_of_a_file_without_results(tmp_path: Path) -> None:
    with pytest.raises(ClusterH5Error, match="a ModelArray file without results"):
        export_results(
            MODELARRAY / "modelarrayio" / "thickness.h5",
            "lm",
            tmp_path,
            example_file=TEMPLATE,
        )


# --------------------------------------------------------------------------
# output folders that do not exist
# --------------------------------------------------------------------------


def test_output_folder_rules(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "c"
    with pytest.raises(ClusterH5Error, match=rf"no such folder: {tmp_path / 'a'} "):
        output_folder(deep)
    with pytest.raises(ClusterH5Error, match="no such folder"):
        output_folder(deep, create=True)  # only the last folder may be made
    assert not (tmp_path / "a").exists()
    assert output_folder(tmp_path / "a", create=True).is_dir()
    assert output_folder(deep, parents=True).is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ClusterH5Error, match="is not a folder"):
        output_folder(tmp_path / "file")


@pytest.fixture
def small_nifti(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(4)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    atlas = rng.integers(1, 4, (4, 3, 2)).astype(np.int16)
    run = rng.normal(size=(4, 3, 2, 5)).astype(np.float32)
    nib.save(nib.Nifti1Image(atlas, affine), tmp_path / "atlas.nii")
    nib.save(nib.Nifti1Image(run, affine), tmp_path / "run.nii")
    return tmp_path / "run.nii", tmp_path / "atlas.nii"


def test_to_fmristore_into_a_missing_folder(tmp_path, small_nifti) -> None:
    run, atlas = small_nifti
    ds = from_nifti({"rest": run}, atlas)
    target = tmp_path / "nope" / "deeper" / "out.h5"
    with pytest.raises(ClusterH5Error) as info:
        to_fmristore(ds, target, progress=False)
    assert str(info.value).startswith(f"{target.parent}: no such folder: ")
    assert f"{tmp_path / 'nope'} does not exist" in str(info.value)
    assert not (tmp_path / "nope").exists()
    # what the message offers works
    assert to_fmristore(ds, target, progress=False, parents=True) == target
    with xr.open_dataset(target, engine="clusterh5") as back:
        assert back.sizes["run"] == 1


def test_from_nifti_cli_missing_folder_and_parents(tmp_path, small_nifti, capsys):
    run, atlas = small_nifti
    target = tmp_path / "new" / "sub-01.h5"
    argv = ["from-nifti", "--atlas", str(atlas), "--run", f"rest={run}"]
    argv += ["--no-progress", "--output", str(target)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'new'} does not exist" in err
    assert "use --parents to make them" in err
    assert "parents=True" not in err
    assert main([*argv, "--parents"]) == 0
    with xr.open_dataset(target, engine="clusterh5") as ds:
        assert ds.sizes["run"] == 1
    # and the second time the output exists: the message speaks CLI
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "--overwrite to replace it" in err
    assert "overwrite=True" not in err


def test_to_modelarray_into_a_missing_folder(tmp_path: Path) -> None:
    src = MODELARRAY / "modelarrayio" / "thickness.h5"
    out = tmp_path / "nope" / "deeper" / "o.h5"
    with xr.open_dataset(src, engine="clusterh5") as ds:
        with pytest.raises(ClusterH5Error, match=r"deeper: no such folder"):
            cohort.to_modelarray(ds, out, progress=False)
        assert not (tmp_path / "nope").exists()
        assert cohort.to_modelarray(ds, out, progress=False, parents=True) == [out]
    with h5py.File(out) as f, h5py.File(src) as ref:
        np.testing.assert_array_equal(
            f["scalars/thickness/values"][()], ref["scalars/thickness/values"][()]
        )


def test_export_results_folder(tmp_path: Path) -> None:
    with pytest.raises(ClusterH5Error, match=r"no such folder: .*missing"):
        export_results(
            RESULTS, "lm", tmp_path / "missing" / "out", example_file=TEMPLATE
        )
    assert not (tmp_path / "missing").exists()
    # the output folder itself is made when its parent exists
    written = export_results(RESULTS, "lm", tmp_path / "out", example_file=TEMPLATE)
    assert written
    assert all(p.parent == tmp_path / "out" for p in written)
    # and with parents=True the whole path
    deep = tmp_path / "x" / "y"
    assert export_results(RESULTS, "lm", deep, example_file=TEMPLATE, parents=True) == [
        deep / p.name for p in written
    ]


# --------------------------------------------------------------------------
# results are written or refused, never dropped
# --------------------------------------------------------------------------


def test_to_modelarray_refuses_to_drop_results(tmp_path: Path) -> None:
    with xr.open_dataset(RESULTS, engine="clusterh5") as ds:
        results = cohort.results_variables(ds)
        assert results
        with pytest.raises(ValueError, match="holds model results") as info:
            cohort.to_modelarray(ds, tmp_path / "o.h5", progress=False)
        for name in results:
            assert repr(name) in str(info.value)
        assert "scalars=['thickness']" in str(info.value)
        assert not (tmp_path / "o.h5").exists()
        # asked for the scalars only: written, the same values
        cohort.to_modelarray(
            ds, tmp_path / "o.h5", progress=False, scalars=["thickness"]
        )
    with h5py.File(tmp_path / "o.h5") as f, h5py.File(RESULTS) as ref:
        assert "results" not in f
        np.testing.assert_array_equal(
            f["scalars/thickness/values"][()], ref["scalars/thickness/values"][()]
        )


def test_cli_words() -> None:
    assert cli_words("x: exists; pass overwrite=True to replace it") == (
        "x: exists; use --overwrite to replace it"
    )


def test_dangling_link_and_damaged_object_are_told_apart(tmp_path: Path) -> None:
    path = _copy(fmristore_path("vignette"), tmp_path)
    with h5py.File(path, "r+") as f:
        del f["clusters/cluster_meta/name"]
        f["clusters/cluster_meta/name"] = h5py.SoftLink("/nowhere")
    with pytest.raises(ClusterH5Error, match=r"cluster_meta/name is a dangling link"):
        xr.open_dataset(path, engine="clusterh5")
    # a hard link whose object header is damaged is a damaged file, not a link
    (tmp_path / "sub").mkdir()
    good = _copy(fmristore_path("vignette"), tmp_path / "sub")
    with h5py.File(good, "r") as f:
        addr = h5py.h5o.get_info(f["clusters"].id).addr
    data = bytearray(good.read_bytes())
    data[addr] = 7  # object header version
    good.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError) as info:
        xr.open_dataset(good, engine="clusterh5")
    assert "/clusters" in str(info.value)
    assert "is a dangling link" not in str(info.value)
    assert "damaged" in str(info.value)


@pytest.mark.parametrize("cls", [ClusterH5Error, CorruptFileError, FileLockedError])
def test_errors_pickle(cls: type[ClusterH5Error]) -> None:
    err = cls("/data/sub-01.h5", "/scans/rest: reading voxel data failed")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls
    assert (back.path, back.problem, str(back)) == (err.path, err.problem, str(err))


def _load(path: str) -> None:
    with xr.open_dataset(path, engine="clusterh5") as ds:
        ds.load()


def test_error_from_a_process_worker_names_the_file(tmp_path: Path) -> None:
    # a damaged chunk read in another process comes back as the same error
    path = _copy(fmristore_path("vignette"), tmp_path)
    with h5py.File(path, "r") as f:
        info = f["scans/rest_run/clusters/cluster_2"].id.get_chunk_info(0)
    data = bytearray(path.read_bytes())
    mid = info.byte_offset + info.size // 2
    data[mid : mid + 4] = bytes(b ^ 0xFF for b in data[mid : mid + 4])
    path.write_bytes(bytes(data))
    ctx = multiprocessing.get_context("spawn")
    with (
        ProcessPoolExecutor(1, mp_context=ctx) as pool,
        pytest.raises(CorruptFileError) as info_err,
    ):
        pool.submit(_load, str(path)).result(timeout=120)
    assert str(info_err.value).startswith(
        f"{path}: /scans/rest_run/clusters/cluster_2: reading voxel data failed"
    )
