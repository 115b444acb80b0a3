"""write_experiment against the R-written fixtures, round trips and bad inputs."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path

import h5py
import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import xarray as xr
from hypothesis import given
from hypothesis import strategies as st
from nibabel.quaternions import quat2mat

from tests._helpers import (
    FMRISTORE,
    FMRISTORE_FIXTURES,
    fixture_content,
    fmristore_expected,
    fmristore_path,
    h5ls_listing,
)
from xarray_clusterh5 import ClusterH5Error
from xarray_clusterh5.fmristore.write import (
    Run,
    affine_to_header,
    r_value,
    write_experiment,
)

QFIELDS = ("qoffset_x", "qoffset_y", "qoffset_z", "quatern_b", "quatern_c", "quatern_d")
HEAD_OF = {"vignette": "vignette_head", "irregular": "irregular_head"}


def _reference(stem: str) -> dict[str, dict]:
    """The fixture author's h5py listing of the R-written file."""
    entries = json.loads((FMRISTORE / f"{stem}.h5ls.json").read_text())
    return {e["path"]: e for e in entries}


def _compare_with_reference(ours: dict[str, dict], ref: dict[str, dict]) -> None:
    assert sorted(ours) == sorted(ref)
    for p, entry in ref.items():
        for key, value in entry.items():
            if key == "storage_size_bytes":  # compressed sizes may differ
                continue
            assert ours[p][key] == value, (p, key)


# --------------------------------------------------------------------------
# layout equals R's
# --------------------------------------------------------------------------


def test_fixture_layout_matches_r_listing(tmp_path: Path, fixture_name: str) -> None:
    kw = fixture_content(fmristore_path(fixture_name))
    out = write_experiment(tmp_path / "ours.h5", summary_only="r", **kw)
    ours = h5ls_listing(out)
    _compare_with_reference(ours, _reference(fixture_name))
    # what the published listing does not record: maxshape, and every value
    r_side = h5ls_listing(fmristore_path(fixture_name))
    for p, entry in r_side.items():
        assert ours[p].get("maxshape") == entry.get("maxshape"), p
    with h5py.File(out) as a, h5py.File(fmristore_path(fixture_name)) as b:

        def same(name: str, obj: h5py.HLObject) -> None:
            if isinstance(obj, h5py.Dataset):
                np.testing.assert_array_equal(a[name][()], obj[()], err_msg=name)

        b.visititems(same)


@pytest.mark.parametrize("legacy", sorted(HEAD_OF))
def test_both_generations_from_one_content(tmp_path: Path, legacy: str) -> None:
    """2025 content written as "2026" gives HEAD's listing, and back."""
    kw = fixture_content(fmristore_path(legacy))
    kw.update(format="2026", fmristore_version="0.1.0.9000")
    out = write_experiment(tmp_path / "head.h5", summary_only="r", **kw)
    _compare_with_reference(h5ls_listing(out), _reference(HEAD_OF[legacy]))
    kw = fixture_content(fmristore_path(HEAD_OF[legacy]))
    kw.update(format="2025", fmristore_version=None)
    out = write_experiment(tmp_path / "old.h5", summary_only="r", **kw)
    _compare_with_reference(h5ls_listing(out), _reference(legacy))


def test_default_summary_only_rule(tmp_path: Path) -> None:
    kw = fixture_content(fmristore_path("irregular_head"))
    mixed = write_experiment(tmp_path / "mixed.h5", **kw)
    with h5py.File(mixed) as f:
        assert "summary_only" not in f["scans"].attrs  # both R generations: "prefer"
    full_only = {k: v for k, v in kw["runs"].items() if v.data is not None}
    kw_full = {**kw, "runs": full_only}
    kw_full["scan_metadata"] = {
        k: kw["scan_metadata"][k] for k in full_only if k in kw["scan_metadata"]
    }
    out = write_experiment(tmp_path / "full.h5", **kw_full)
    with h5py.File(out) as f:
        assert "summary_only" not in f["scans"].attrs
    summ = {"beta_summary": kw["runs"]["beta_summary"]}
    out = write_experiment(
        tmp_path / "summ.h5", **{**kw, "runs": summ, "scan_metadata": None}
    )
    attr = h5ls_listing(out)["/scans"]["attrs"]["summary_only"]
    assert attr == {
        "value": [1],
        "dtype": {"numpy": "uint8", "h5_class": "ENUM", "size": 1},
        "shape": [1],
    }
    with h5py.File(out) as f:
        tid = f["scans"].attrs.get_id("summary_only").get_type()
        members = {
            tid.get_member_name(i).decode(): tid.get_member_value(i)
            for i in range(tid.get_nmembers())
        }
        assert members == {"FALSE": 0, "TRUE": 1, "NA": 2}
        assert tid.get_super().get_precision() == 2
    out = write_experiment(tmp_path / "forced.h5", summary_only=False, **kw)
    assert h5ls_listing(out)["/scans"]["attrs"]["summary_only"]["value"] == [0]


def test_values_as_r_reads_them(tmp_path: Path) -> None:
    """R's own series() output (expected CSVs) from our file, via mask order."""
    kw = fixture_content(fmristore_path("irregular"))
    out = write_experiment(tmp_path / "irr.h5", **kw)
    expected = fmristore_expected("irregular")
    with h5py.File(out) as f:
        cmap = f["cluster_map"][()]
        lin = np.flatnonzero(f["mask"][()].ravel()) + 1
        r_lin = expected["mask"]["in_mask_linear_index_1based"]
        np.testing.assert_array_equal(lin, r_lin)
        np.testing.assert_array_equal(cmap, expected["clusters"]["cluster_map"])
        for scan in ("zeta_full", "alpha_full", "Mid_full"):
            csv = FMRISTORE / f"irregular.expected.series.{scan}.csv"
            # rows are time points, columns mask indices 1..N (R's series())
            r_series = np.loadtxt(csv, delimiter=",", dtype=np.float32)
            ours = np.empty_like(r_series)
            for cid in np.unique(cmap):
                cols = np.flatnonzero(cmap == cid)
                ours[:, cols] = f[f"scans/{scan}/clusters/cluster_{cid}"][()]
            np.testing.assert_array_equal(ours, r_series)


# --------------------------------------------------------------------------
# the affine
# --------------------------------------------------------------------------


def _r_quatern_to_matrix(header: h5py.Group) -> np.ndarray:
    """neuroim2's quaternToMatrix on the fields R reads."""
    b, c, d = (float(header[n][()]) for n in ("quatern_b", "quatern_c", "quatern_d"))
    a = np.sqrt(max(0.0, 1 - b * b - c * c - d * d))
    rot = quat2mat([a, b, c, d])
    qfac = float(header["qfac"][()])
    rot[:, 2] *= qfac
    out = np.eye(4)
    out[:3, :3] = rot * header["pixdim"][1:4]
    out[:3, 3] = [header[n][()] for n in ("qoffset_x", "qoffset_y", "qoffset_z")]
    return out


@pytest.mark.parametrize("flip", [False, True])
def test_true_affine_stored(tmp_path: Path, flip: bool) -> None:
    theta = 0.3
    rot = np.array(
        [
            [np.cos(theta), -np.sin(theta), 0],
            [np.sin(theta), np.cos(theta), 0],
            [0, 0, 1],
        ]
    )
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([2.5, 2.5, 3.0 * (-1 if flip else 1)])
    affine[:3, 3] = [-30.0, -42.5, 12.0]
    mask = np.zeros((4, 3, 2), dtype=bool)
    mask[1:3, :, :] = True
    out = write_experiment(
        tmp_path / "aff.h5",
        mask=mask,
        cluster_map=np.ones(mask.sum(), dtype=int),
        runs={"r": np.zeros((mask.sum(), 3))},
        affine=affine,
    )
    with h5py.File(out) as f:
        h = f["header"]
        np.testing.assert_allclose(_r_quatern_to_matrix(h), affine, atol=1e-12)
        srow = np.vstack([h[s][()] for s in ("srow_x", "srow_y", "srow_z")])
        np.testing.assert_array_equal(srow, affine[:3])
        assert h["srow_x"].dtype == np.dtype("<f8")
        assert h["srow_x"].shape == (4,)
        assert float(h["qfac"][()]) == (-1.0 if flip else 1.0)
        np.testing.assert_allclose(h["pixdim"][()], [0, 2.5, 2.5, 3.0, 0, 0, 0, 0])
    fields, zooms = affine_to_header(affine)
    assert zooms == pytest.approx((2.5, 2.5, 3.0))
    assert fields["qoffset_y"] == -42.5


@pytest.mark.parametrize("flip", [False, True])
def test_sheared_affine_quaternion_is_nibabels(flip: bool) -> None:
    """With a shear the rotation is the polar factor, as nibabel's set_qform."""
    import nibabel as nib

    affine = np.eye(4)
    affine[:3, :3] = [[2.0, 0.4, 0.1], [0.3, 2.2, -0.5], [0.0, 0.6, 2.5]]
    affine[:3, 2] *= -1 if flip else 1
    affine[:3, 3] = [10.0, -20.0, 5.0]
    fields, zooms = affine_to_header(affine)
    hdr = nib.Nifti1Header()
    hdr.set_qform(affine, code=1)
    assert fields["qfac"] == hdr["pixdim"][0] == (-1.0 if flip else 1.0)
    for name in ("quatern_b", "quatern_c", "quatern_d"):
        assert fields[name] == pytest.approx(float(hdr[name]), abs=1e-6), name
    np.testing.assert_allclose(zooms, np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))


def test_no_affine_is_r_header(tmp_path: Path) -> None:
    mask = np.ones((2, 2, 2), dtype=bool)
    out = write_experiment(
        tmp_path / "r.h5",
        mask=mask,
        cluster_map=np.arange(1, 9),
        runs={},
        spacing=(2.0, 2.0, 2.0),
    )
    with h5py.File(out) as f:
        h = f["header"]
        assert sorted(h) == sorted(["dim", "pixdim", "qfac", *QFIELDS])
        assert all(float(h[n][()]) == 0.0 for n in ("quatern_b", "qoffset_z"))
        assert float(h["qfac"][()]) == 1.0
        np.testing.assert_array_equal(h["dim"][()], [4, 2, 2, 2, 0, 1, 1, 1])


# --------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------


def _tiny(**extra: object) -> dict:
    mask = np.zeros((3, 3, 2), dtype=bool)
    mask[0, :, 0] = True
    mask[2, 1, 1] = True
    kw: dict = {
        "mask": mask,
        "cluster_map": np.array([1, 2, 1, 2]),
        "runs": {"rest": np.arange(4 * 5, dtype=float).reshape(4, 5)},
    }
    kw.update(extra)
    return kw


def test_no_affine_and_no_spacing_is_one_millimetre(tmp_path: Path) -> None:
    out = write_experiment(tmp_path / "u.h5", **_tiny())
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["header/pixdim"][()], [0, 1, 1, 1, 0, 0, 0, 0])


def test_overwrite_and_atomicity(tmp_path: Path) -> None:
    target = tmp_path / "out.h5"
    write_experiment(target, **_tiny())
    before = target.read_bytes()
    with pytest.raises(FileExistsError):
        write_experiment(target, **_tiny())

    def exploding(cid: int) -> np.ndarray:
        if cid == 2:
            raise RuntimeError("disk on fire")
        return np.zeros((2, 5))

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_experiment(target, overwrite=True, **_tiny(runs={"rest": exploding}))
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["out.h5"]  # no temporary left
    write_experiment(target, overwrite=True, **_tiny(runs={"other": np.ones((4, 2))}))
    with h5py.File(target) as f:
        assert list(f["scans"]) == ["other"]


# --------------------------------------------------------------------------
# bad inputs
# --------------------------------------------------------------------------

BAD = [
    ({"cluster_map": np.array([1, 2, 1])}, "3 entries but the mask has 4"),
    ({"cluster_map": np.array([1.0, np.nan, 1, 2])}, "NaN"),
    ({"cluster_map": np.array([1.0, 2.5, 1, 2])}, "non-integer"),
    ({"cluster_map": np.array([0, 2, 1, 2])}, "<= 0"),
    ({"runs": {"a/b": np.zeros((4, 2))}}, "not a valid HDF5 name"),
    ({"runs": {"..": np.zeros((4, 2))}}, "not a valid HDF5 name"),
    ({"runs": [("a", np.zeros((4, 2))), ("a", np.zeros((4, 2)))]}, "duplicate scan"),
    ({"runs": {"a": np.zeros((3, 2))}}, "expected \\(n_mask_voxels=4"),
    ({"runs": {"a": {1: np.zeros((2, 3))}}}, "no data for cluster ids \\[2\\]"),
    (
        {
            "runs": {
                "a": {1: np.zeros((2, 3)), 2: np.zeros((2, 3)), 7: np.zeros((1, 3))}
            }
        },
        "cluster ids \\[7\\] missing from the cluster map",
    ),
    (
        {"runs": {"a": {1: np.zeros((2, 3)), 2: np.zeros((3, 3))}}},
        "expected \\(2, T\\)",
    ),
    ({"runs": {"a": {1: np.zeros((2, 3)), 2: np.zeros((2, 4))}}}, "different numbers"),
    ({"runs": {"a": Run(summary=np.zeros((3, 4)))}}, "expected \\(n_clusters=2"),
    ({"runs": {"a": Run()}}, "neither data nor summary"),
    (
        {"runs": {"a": iter([(1, np.zeros((2, 3))), (9, np.zeros((2, 3)))])}},
        "scan 'a': data for cluster id 9 missing from the cluster map",
    ),
    (
        {"runs": {"a": iter([(1, np.zeros((2, 3))), (1, np.zeros((2, 3)))])}},
        "scan 'a': cluster 1 given twice",
    ),
    ({"scan_metadata": {"rest": {"task": "réste"}}}, "non-ASCII"),
    ({"scan_metadata": {"rest": {"bad/key": 1}}}, "not a valid HDF5 name"),
    ({"scan_metadata": {"nope": {"a": 1}}}, "not in runs"),
    ({"scan_metadata": {"rest": {"n_time": 7}}}, "n_time=7"),
    ({"scan_metadata": {"rest": {"x": None}}}, "None"),
    (
        {"scan_metadata": {"rest": {"x": np.array([1, None], dtype=object)}}},
        "'x' of scan 'rest' holds values fmristore cannot store",
    ),
    ({"scan_metadata": {"rest": {"x": np.zeros((2, 2))}}}, "only scalars and 1-D"),
    ({"cluster_metadata": {"name": ["a", "b"]}}, "needs a 'cluster_id' column"),
    ({"cluster_metadata": {"cluster_id": [1, 2, 3]}}, "\\[3\\] missing from the"),
    (
        {"cluster_metadata": {"cluster_id": [1]}},
        "\\[2\\] of the cluster map are missing",
    ),
    ({"cluster_metadata": {"cluster_id": [1, 1]}}, "duplicate cluster ids"),
    ({"cluster_metadata": {"cluster_id": [1, 2], "x": [1.0]}}, "differ in length"),
    ({"format": "2024"}, "format must be"),
    ({"compression": 10}, "gzip level"),
    ({"chunks": {"times": 3}}, "unknown chunk keys"),
    ({"affine": np.eye(3)}, "4x4"),
    ({"affine": np.diag([2.0, 0, 2, 1])}, "zero-length axis"),
    # two voxel axes along one direction: no quaternion can represent it
    (
        {
            "affine": np.array(
                [[2.0, 2, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1], [0, 0, 0, 1]]
            )
        },
        "affine is singular",
    ),
    # a callable shows each cluster's time points only as it is written
    (
        {"runs": {"rest": lambda cid: np.zeros((2, 5 if cid == 1 else 6))}},
        "scan 'rest': cluster 2 has 6 time points, other clusters 5",
    ),
    ({"affine": np.diag([2.0, 2, 2, 1]), "spacing": (1, 1, 1)}, "disagrees"),
    ({"mask": np.ones((2, 2))}, "3-D"),
    ({"mask": np.zeros((2, 2, 2), dtype=bool), "cluster_map": []}, "empty"),
    ({"cluster_map": np.array([1, 2, 1, 2**31])}, "cluster ids must fit in 32-bit"),
    ({"runs": {"rést": np.zeros((4, 2))}}, "scan name 'rést' is not ASCII"),
    # callables show their number of time points only when written
    (
        {
            "runs": {"rest": Run(summary=lambda: np.zeros((2, 5)))},
            "scan_metadata": {"rest": {"n_time": 7}},
        },
        "metadata n_time=7 but the data have 5 time points",
    ),
    (
        {
            "runs": {"rest": lambda cid: np.zeros((2, 5))},
            "scan_metadata": {"rest": {"n_time": 7}},
        },
        "metadata n_time=7 but the data have 5 time points",
    ),
    # refusals of each input check, by message
    (
        {"scan_metadata": {"rest": {"x": np.array(["a", 1], dtype=object)}}},
        "'x' of scan 'rest' mixes strings with int values",
    ),
    ({"summary_only": "yes"}, "summary_only must be 'auto', 'r', True or False"),
    (
        {"cluster_map": np.array(["a", "b", "a", "b"])},
        "cluster_map must hold integer labels, got dtype <U1",
    ),
    ({"scan_metadata": {"rest": {"x": "a\x00b"}}}, "holds a NUL character"),
    ({"scan_metadata": {"rest": {"x": []}}}, "cannot store empty vectors"),
    ({"affine": np.full((4, 4), np.nan)}, "affine must be a finite 4x4 matrix"),
    ({"cluster_map": None}, "cluster_map is required with a boolean mask"),
    (
        {"mask": np.where(_tiny()["mask"], 2, 0)},
        r"mask must be boolean \(0/1\) when cluster_map is given",
    ),
    ({"non_ascii": "latin1"}, "non_ascii must be 'error' or 'utf8', got 'latin1'"),
    ({"nonpositive_ids": "skip"}, "nonpositive_ids must be 'error' or 'warn'"),
    (
        {"scan_metadata": {"rest": {"TR": "fast"}}},
        "TR \\(metadata\\) of scan 'rest' must be a number of seconds, got 'fast'",
    ),
    ({"spacing": "wide"}, "spacing must be 3 numbers, got 'wide'"),
    ({"chunks": {"time": 0}}, "chunk caps must be >= 1"),
    (
        {"runs": {"rest": {1: np.zeros((3, 5)), 2: np.zeros((2, 5))}}},
        r"scan 'rest': cluster 1 data has shape \(3, 5\), expected \(2, T\)",
    ),
    (
        {"runs": {"rest": iter([(2, np.zeros((2, 5))), (1, np.zeros((5,)))])}},
        r"scan 'rest': cluster 1 data has shape \(5,\), expected \(2, T\)",
    ),
]


@pytest.mark.parametrize(("change", "message"), BAD)
def test_bad_input_is_named(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_experiment(tmp_path / "bad.h5", **_tiny(**change))
    assert not (tmp_path / "bad.h5").exists()
    assert os.listdir(tmp_path) == []


def test_cluster_ids_at_the_limits_of_int32(tmp_path: Path) -> None:
    top, bottom = 2**31 - 1, -(2**31)
    out = write_experiment(
        tmp_path / "top.h5", **_tiny(cluster_map=np.array([1, top, 1, top]))
    )
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["clusters/cluster_ids"][()], [1, top])
        assert f["scans/rest/clusters"][f"cluster_{top}"].shape == (5, 2)
    with pytest.warns(UserWarning, match="<= 0"):
        out = write_experiment(
            tmp_path / "bottom.h5",
            nonpositive_ids="warn",
            **_tiny(cluster_map=np.array([1, bottom, 1, bottom])),
        )
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["cluster_map"][()], [1, bottom, 1, bottom])


def test_summaries_given_as_callables_and_without_time_points(
    tmp_path: Path,
) -> None:
    summ = np.arange(10, dtype=np.float32).reshape(2, 5)
    runs = {
        "s": Run(summary=lambda: summ),
        "empty": Run(data=np.zeros((4, 0)), summary=np.zeros((2, 0))),
    }
    out = write_experiment(
        tmp_path / "s.h5",
        **_tiny(runs=runs, scan_metadata={"s": {"n_time": 5}}),
    )
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["scans/s/clusters_summary/summary_data"], summ)
        # R writes empty matrices contiguous, without filters
        empty = f["scans/empty/clusters_summary/summary_data"]
        assert (empty.shape, empty.chunks) == ((2, 0), None)
        empty = f["scans/empty/clusters/cluster_2"]
        assert (empty.shape, empty.chunks) == ((0, 2), None)
    with xr.open_dataset(out, engine="clusterh5", group="empty") as ds:
        assert ds.sizes["time"] == 0


def test_progress_bar_counts_blocks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = np.zeros((4, 3))
    runs = {
        "both": Run(data, np.zeros((2, 3))),
        "full": data,
        "s": Run(summary=data[:2]),
    }
    write_experiment(tmp_path / "quiet.h5", **_tiny(runs=runs))
    assert capsys.readouterr().err == ""  # no bar unless asked
    write_experiment(tmp_path / "bar.h5", progress=True, **_tiny(runs=runs))
    err = capsys.readouterr().err
    # 2 clusters of 2 full scans and 2 summaries
    assert "writing bar.h5: 100%" in err
    assert " 6/6 " in err


def test_missing_folder_is_made_only_when_asked(tmp_path: Path) -> None:
    target = tmp_path / "nope" / "out.h5"
    with pytest.raises(ClusterH5Error, match="no such folder"):
        write_experiment(target, **_tiny())
    assert not target.parent.exists()
    write_experiment(target, parents=True, **_tiny())
    assert target.is_file()


def test_rotation_with_unequal_voxel_sizes(tmp_path: Path) -> None:
    from nibabel.eulerangles import euler2mat

    affine = np.eye(4)
    affine[:3, :3] = euler2mat(0.4, -0.3, 0.7) @ np.diag([2.0, 3.0, 4.5])
    affine[:3, 3] = [10.0, -20.0, 5.0]
    mask = np.ones((2, 2, 2), dtype=bool)
    out = write_experiment(
        tmp_path / "rot.h5",
        mask=mask,
        cluster_map=np.ones(8, dtype=int),
        runs={"r": np.zeros((8, 2))},
        affine=affine,
    )
    with h5py.File(out) as f:
        np.testing.assert_allclose(
            _r_quatern_to_matrix(f["header"]), affine, atol=1e-12
        )


def test_lazy_data_with_a_summary(tmp_path: Path) -> None:
    # the data's length is known only when read: the summary is checked then
    summary = np.ones((2, 5))
    runs = {"rest": Run(data=lambda cid: np.zeros((2, 5)), summary=summary)}
    out = write_experiment(tmp_path / "l.h5", **_tiny(runs=runs))
    with h5py.File(out) as f:
        np.testing.assert_array_equal(
            f["scans/rest/clusters_summary/summary_data"], summary
        )
    runs = {"rest": Run(data=lambda cid: np.zeros((2, 5)), summary=np.ones((2, 4)))}
    with pytest.raises(ValueError, match="summary has 4 time points, data 5"):
        write_experiment(tmp_path / "bad.h5", **_tiny(runs=runs))


def test_summary_as_nested_lists_is_checked_and_written(tmp_path: Path) -> None:
    # any (K, T) array-like, as documented: lists are checked like arrays
    rows = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    for runs in ({"s": Run(summary=rows)}, {"s": {"summary": rows}}):
        out = write_experiment(tmp_path / "l.h5", **_tiny(runs=runs), overwrite=True)
        with h5py.File(out) as f:
            np.testing.assert_array_equal(
                f["scans/s/clusters_summary/summary_data"], rows
            )
    # refused before any voxel data is read
    asked: list[int] = []
    runs = {"s": Run(data=lambda cid: asked.append(cid), summary=rows[:1])}
    with pytest.raises(ValueError, match=r"summary has shape \(1, 3\)"):
        write_experiment(tmp_path / "bad.h5", **_tiny(runs=runs))
    assert asked == []
    runs = {"s": Run(data=np.zeros((4, 2)), summary=rows)}
    with pytest.raises(ValueError, match="summary has 3 time points, data 2"):
        write_experiment(tmp_path / "bad.h5", **_tiny(runs=runs))
    assert not (tmp_path / "bad.h5").exists()


def test_cluster_metadata_as_any_mapping_of_columns(tmp_path: Path) -> None:
    # a DataFrame, a dict, or another mapping of columns such as an xarray
    # Dataset (which has to_dict but no .columns)
    import pandas as pd

    cols = {"cluster_id": np.array([2, 1]), "name": np.array(["b", "a"])}
    for i, table in enumerate(
        [pd.DataFrame(cols), cols, xr.Dataset({k: ("row", v) for k, v in cols.items()})]
    ):
        out = write_experiment(tmp_path / f"m{i}.h5", **_tiny(cluster_metadata=table))
        with h5py.File(out) as f:
            meta = f["clusters/cluster_meta"]
            # rows kept in the order given
            np.testing.assert_array_equal(meta["cluster_id"][()], [2, 1])
            assert [v.decode() for v in meta["name"][()]] == ["b", "a"]


def test_run_is_immutable() -> None:
    run = Run(data=np.zeros((4, 3)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.summary = np.zeros((2, 3))  # type: ignore[misc]


def test_labelled_mask_and_boolean_without_map(tmp_path: Path) -> None:
    labels = np.zeros((3, 2, 2), dtype=np.int16)
    labels[0, 0, 0] = 5
    labels[2, 1, 1] = 3
    labels[1, 0, 1] = 5
    out = write_experiment(
        tmp_path / "lab.h5", mask=labels, runs={"a": np.ones((3, 2))}
    )
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["cluster_map"][()], [5, 5, 3])
        np.testing.assert_array_equal(f["clusters/cluster_ids"][()], [3, 5])
        np.testing.assert_array_equal(
            f["voxel_coords"][()], [[1, 2, 3], [1, 1, 2], [1, 2, 2]]
        )
    with pytest.raises(ValueError, match="cluster_map is required"):
        write_experiment(tmp_path / "x.h5", mask=labels > 0, runs={})
    with pytest.raises(ValueError, match="NaN"):
        write_experiment(
            tmp_path / "x.h5", mask=np.where(labels > 0, np.nan, 0.0), runs={}
        )


def test_id_zero_warn_and_non_ascii_utf8(tmp_path: Path) -> None:
    kw = _tiny(
        cluster_map=np.array([0, 2, 0, 2]),
        scan_metadata={"rest": {"task": "réste"}},
        nonpositive_ids="warn",
        non_ascii="utf8",
    )
    with pytest.warns(UserWarning, match="<= 0|non-ASCII") as record:
        out = write_experiment(tmp_path / "w.h5", **kw)
    messages = " ".join(str(w.message) for w in record)
    assert "<= 0" in messages
    assert "non-ASCII" in messages
    with h5py.File(out) as f:
        assert f["scans/rest/metadata/task"][()].decode("utf-8") == "réste"
        assert "cluster_0" in f["scans/rest/clusters"]


def test_single_cluster_and_single_voxel(tmp_path: Path) -> None:
    mask = np.zeros((2, 2, 2), dtype=bool)
    mask[1, 1, 1] = True
    out = write_experiment(
        tmp_path / "one.h5",
        mask=mask,
        cluster_map=[4],
        runs={"a": np.ones((1, 3)), "b": Run(summary=np.ones((1, 3)))},
        cluster_metadata={"cluster_id": [4], "name": ["only"]},
        scan_metadata={
            "a": {"v": [1.5], "flag": True, "n": 3},
            # object arrays (pandas) are typed by their values
            "b": {"o": np.array([1.5, 2], dtype=object)},
        },
    )
    with h5py.File(out) as f:
        assert f["cluster_map"].shape == (1,)  # R's reader needs 1-D
        assert f["clusters/cluster_ids"].shape == ()  # as hdf5r writes K = 1
        assert f["clusters/cluster_meta/name"].shape == ()
        assert f["scans/a/metadata/v"].shape == ()
        assert f["scans/a/metadata/flag"].dtype == np.int8
        assert f["scans/a/metadata/n"].dtype == np.dtype("<i4")
        assert f["scans/b/metadata/o"].dtype == np.dtype("<f8")
        np.testing.assert_array_equal(f["scans/b/metadata/o"], [1.5, 2.0])
        assert f["scans/a/clusters/cluster_4"].shape == (3, 1)
        assert f["scans/a"].attrs["class"][0] == "H5ParcellatedScan"
        assert f["scans/b"].attrs["class"][0] == "H5ParcellatedScanSummary"


def test_compression_and_chunk_options(tmp_path: Path) -> None:
    data = np.random.default_rng(0).normal(size=(4, 300))
    out = write_experiment(
        tmp_path / "c.h5",
        **_tiny(runs={"rest": data}),
        compression=0,
        chunks={"time": 100, "voxel": 1},
    )
    with h5py.File(out) as f:
        d = f["scans/rest/clusters/cluster_1"]
        assert d.compression_opts == 0
        assert d.chunks == (100, 1)
        np.testing.assert_array_equal(d[()], data[[0, 2]].T.astype(np.float32))
    out = write_experiment(tmp_path / "n.h5", **_tiny(), compression=None)
    with h5py.File(out) as f:
        d = f["scans/rest/clusters/cluster_2"]
        assert d.compression is None
        assert d.chunks == (5, 2)


def test_streaming_reads_one_cluster_at_a_time(tmp_path: Path) -> None:
    """Mapping items are materialised one at a time, in ascending id order."""
    seen: list[int] = []

    class Lazy:
        def __init__(self, cid: int, n: int) -> None:
            self.cid, self.shape, self.ndim = cid, (n, 4), 2

        def __array__(self, dtype=None, copy=None):
            seen.append(self.cid)
            return np.full(self.shape, self.cid, dtype=dtype or float)

    out = write_experiment(
        tmp_path / "s.h5", **_tiny(runs={"rest": {2: Lazy(2, 2), 1: Lazy(1, 2)}})
    )
    assert seen == [1, 2]
    with h5py.File(out) as f:
        assert np.all(f["scans/rest/clusters/cluster_2"][()] == 2)


def test_contiguous_clusters_are_read_as_slices(tmp_path: Path) -> None:
    """An (N, T) source (h5py, zarr, dask) is asked once for each cluster's rows:
    as a slice when they are contiguous in mask order (cheap on disk), else a list."""
    keys: list = []

    class Source:
        def __init__(self, values: np.ndarray) -> None:
            self.values, self.shape, self.ndim = values, values.shape, 2

        def __getitem__(self, key):  # type: ignore[no-untyped-def]
            keys.append(key)
            return self.values[key]

    data = np.arange(20.0).reshape(4, 5)
    cmap = np.array([1, 1, 1, 2])
    out = write_experiment(
        tmp_path / "c.h5", **_tiny(cluster_map=cmap, runs={"rest": Source(data)})
    )
    assert keys == [slice(0, 3), slice(3, 4)]
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["scans/rest/clusters/cluster_1"], data[:3].T)
    keys.clear()
    write_experiment(tmp_path / "s.h5", **_tiny(runs={"rest": Source(data)}))
    assert [np.asarray(k).tolist() for k in keys] == [[0, 2], [1, 3]]


def test_bad_block_shapes_fail_before_any_block_is_read(tmp_path: Path) -> None:
    read: list[int] = []

    class Lazy:
        shape, ndim = (2, 5), 2

        def __array__(self, dtype=None, copy=None):  # type: ignore[no-untyped-def]
            read.append(1)
            return np.zeros(self.shape, dtype=dtype or float)

    bad = {1: Lazy(), 2: np.zeros((3, 5))}
    with pytest.raises(ValueError, match=r"cluster 2 data has shape \(3, 5\)"):
        write_experiment(tmp_path / "b.h5", **_tiny(runs={"rest": bad}))
    assert read == []


def test_pandas_cluster_metadata(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    table = pd.DataFrame(
        {"cluster_id": [2, 1], "label": ["b", "a"], "cortical": [True, False]}
    )
    out = write_experiment(tmp_path / "p.h5", **_tiny(), cluster_metadata=table)
    with h5py.File(out) as f:
        g = f["clusters/cluster_meta"]
        np.testing.assert_array_equal(g["cluster_id"][()], [2, 1])  # caller's order
        assert g["label"].asstr()[()].tolist() == ["b", "a"]
        assert g["cortical"].dtype == np.int8


def test_numpy_metadata_types_follow_hdf5r(tmp_path: Path) -> None:
    """Small ints and float32 keep their type; wider ones become R's int/double."""
    meta = {
        "i1": np.int8(-3),
        "u2": np.array([1, 2], dtype=np.uint16),
        "i2": np.int16(-300),
        "i4": np.int32(7),
        "u4": np.uint32(9),
        "i8": np.array([1, 2], dtype=np.int64),
        "f2": np.float16(0.5),
        "f4": np.array([1.5, 2.5], dtype=np.float32),
        "f8": np.float64(0.25),
        "b": np.array([True, False]),
    }
    columns = {
        "cluster_id": [1, 2],
        "f4": np.array([0.5, 1.5], dtype=np.float32),
        "i2": np.array([4, 5], dtype=np.int16),
        "obj_num": np.array([1, 2], dtype=object),
        "obj_bool": np.array([True, False], dtype=object),
        "obj_str": np.array(["a", "b"], dtype=object),
    }
    out = write_experiment(
        tmp_path / "m.h5",
        **_tiny(),
        scan_metadata={"rest": meta},
        cluster_metadata=columns,
    )
    with h5py.File(out) as f:
        g = f["scans/rest/metadata"]
        got = {k: (g[k].dtype.str, g[k][()].tolist()) for k in meta}
        c = f["clusters/cluster_meta"]
        cols = {k: (c[k].dtype.str, c[k][()].tolist()) for k in columns}
    assert got == {
        "i1": ("|i1", -3),
        "u2": ("<u2", [1, 2]),
        "i2": ("<i2", -300),
        "i4": ("<i4", 7),
        "u4": ("<i4", 9),
        "i8": ("<i4", [1, 2]),
        "f2": ("<f8", 0.5),
        "f4": ("<f4", [1.5, 2.5]),
        "f8": ("<f8", 0.25),
        "b": ("|i1", [1, 0]),
    }
    assert cols == {
        "cluster_id": ("<i4", [1, 2]),
        "f4": ("<f4", [0.5, 1.5]),
        "i2": ("<i2", [4, 5]),
        "obj_num": ("<i4", [1, 2]),
        "obj_bool": ("|i1", [1, 0]),
        "obj_str": ("|O", [b"a", b"b"]),
    }


# --------------------------------------------------------------------------
# property: anything written reads back in mask order
# --------------------------------------------------------------------------


@st.composite
def experiments(draw: st.DrawFn) -> dict:
    shape = draw(st.tuples(*[st.integers(1, 5)] * 3))
    mask = draw(hnp.arrays(bool, shape)) | _one_voxel(shape)
    n = int(mask.sum())
    cmap = draw(hnp.arrays(np.int32, n, elements=st.integers(1, 6)))
    n_runs = draw(st.integers(0, 3))
    runs = {}
    for r in range(n_runs):
        t = draw(st.integers(1, 6))
        kind = draw(st.sampled_from(["full", "summary", "both"]))
        data = draw(
            hnp.arrays(np.float32, (n, t), elements=st.floats(-1e3, 1e3, width=32))
        )
        k = len(np.unique(cmap))
        summ = draw(
            hnp.arrays(np.float32, (k, t), elements=st.floats(-1e3, 1e3, width=32))
        )
        runs[f"run{r}"] = Run(
            data=data if kind != "summary" else None,
            summary=summ if kind != "full" else None,
        )
    return {"mask": mask, "cluster_map": cmap, "runs": runs}


def _one_voxel(shape: tuple[int, int, int]) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[0, 0, 0] = True
    return m


@given(exp=experiments())
def test_property_write_read_back(tmp_path_factory, exp: dict) -> None:
    path = tmp_path_factory.mktemp("prop") / "p.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_experiment(path, **exp, threads=2)
    mask, cmap = exp["mask"], exp["cluster_map"]
    with h5py.File(path) as f:
        np.testing.assert_array_equal(f["mask"][()], mask.transpose(2, 1, 0))
        # mask order: x fastest
        lin = np.flatnonzero(f["mask"][()].ravel())
        np.testing.assert_array_equal(lin, np.flatnonzero(mask.ravel(order="F")))
        np.testing.assert_array_equal(f["cluster_map"][()], cmap)
        ids = np.unique(cmap)
        np.testing.assert_array_equal(np.atleast_1d(f["clusters/cluster_ids"][()]), ids)
        all_summary = bool(exp["runs"]) and all(
            r.data is None for r in exp["runs"].values()
        )
        assert ("summary_only" in f["scans"].attrs) == all_summary
        for name, run in exp["runs"].items():
            g = f["scans"][name]
            if run.data is not None:
                for cid in ids:
                    got = g[f"clusters/cluster_{cid}"][()]
                    np.testing.assert_array_equal(got, run.data[cmap == cid].T)
            if run.summary is not None:
                np.testing.assert_array_equal(
                    g["clusters_summary/summary_data"][()], run.summary
                )
            assert ("clusters" in g) == (run.data is not None)


def test_fixture_list_is_complete() -> None:
    assert sorted(FMRISTORE_FIXTURES) == sorted(
        p.name.removesuffix(".h5") for p in FMRISTORE.glob("*.h5")
    )


def test_r_value_int32_bounds_and_null() -> None:
    # R's integers are 32-bit: both ends fit exactly, one past either is refused
    ends = np.array([-(2**31), 2**31 - 1], dtype=np.int64)
    stored = r_value(ends, "x", "error")
    assert stored.dtype == np.dtype("<i4")
    assert stored.tolist() == ends.tolist()
    for bad in (-(2**31) - 1, 2**31):
        with pytest.raises(ValueError, match="x does not fit R's 32-bit integers"):
            r_value(np.array([0, bad], dtype=np.int64), "x", "error")
    with pytest.raises(ValueError, match="x is None; fmristore cannot store NULL"):
        r_value(None, "x", "error")


def test_whole_number_float_labels_are_integers(tmp_path: Path) -> None:
    # an atlas saved as float (2.0, 5.0) labels its clusters 2 and 5
    labels = np.zeros((3, 3, 2), dtype=np.float32)
    labels[0, :, 0] = 2.0
    labels[1:, :, 1] = 5.0
    n = int((labels > 0).sum())
    out = write_experiment(
        tmp_path / "f.h5", mask=labels, runs={"a": np.ones((n, 2), "f4")}
    )
    with h5py.File(out) as f:
        assert sorted(f["scans/a/clusters"]) == ["cluster_2", "cluster_5"]
    with pytest.raises(ValueError, match="non-integer labels"):
        write_experiment(
            tmp_path / "g.h5", mask=labels + 0.5 * (labels > 0),
            runs={"a": np.ones((n, 2), "f4")},
        )  # fmt: skip
