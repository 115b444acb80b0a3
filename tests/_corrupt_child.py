"""Child process of tests/test_errors_corrupt_files.py: read damaged files.

Run as ``python _corrupt_child.py JOBS.json``. Each job is
``{"id": ..., "view": ..., "path": ..., ...}``; for each one it prints a JSON
line *before* reading (``{"start": id}``) and one after (the outcome), flushing
both, so the parent knows which job was running when the interpreter died or
hung. Nothing here asserts: the parent judges the outcomes.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
import warnings
from typing import Any


def _padded(job: dict[str, Any]) -> None:
    import xarray as xr

    with xr.open_dataset(job["path"], engine="clusterh5") as ds:
        ds.load()


def _run(job: dict[str, Any]) -> None:
    import xarray as xr

    for scan in job["scans"]:
        with xr.open_dataset(job["path"], engine="clusterh5", group=scan) as ds:
            ds.load()


def _tree(job: dict[str, Any]) -> None:
    import xarray as xr

    with xr.open_datatree(job["path"], engine="clusterh5") as tree:
        tree.load()


def _modelarray(job: dict[str, Any]) -> None:
    import xarray as xr

    from xarray_clusterh5.modelarray import h5 as modelarray_io

    with xr.open_dataset(job["path"], engine="clusterh5") as ds:
        ds.load()
    for analysis in job.get("analyses", []):
        modelarray_io.read_results(job["path"], analysis)


def _cohort(job: dict[str, Any]) -> None:
    from xarray_clusterh5.modelarray.cohort import from_cohort

    ds = from_cohort(job["csv"], relative_to="csv", threads=1, **job.get("kwargs", {}))
    ds.load(scheduler="synchronous")


def _nifti(job: dict[str, Any]) -> None:
    from xarray_clusterh5.fmristore.from_nifti import from_nifti

    ds = from_nifti(job["runs"], job["atlas"])
    ds.load(scheduler="synchronous")


VIEWS = {
    "padded": _padded,
    "run": _run,
    "tree": _tree,
    "modelarray": _modelarray,
    "cohort": _cohort,
    "nifti": _nifti,
}


def _outcome(job: dict[str, Any]) -> dict[str, Any]:
    from xarray_clusterh5 import ClusterH5Error

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            VIEWS[job["view"]](job)
    except Exception as err:
        return {
            "id": job["id"],
            "ok": False,
            "type": type(err).__name__,
            "clusterh5": isinstance(err, ClusterH5Error),
            "message": str(err),
            "chained": err.__cause__ is not None or err.__context__ is not None,
            "traceback": "".join(traceback.format_exception(err))[-3000:],
        }
    return {"id": job["id"], "ok": True}


def main(jobs_file: str) -> None:
    with open(jobs_file) as fh:
        jobs = json.load(fh)
    for job in jobs:
        print(json.dumps({"start": job["id"]}), flush=True)
        t0 = time.perf_counter()
        outcome = _outcome(job)
        outcome["seconds"] = time.perf_counter() - t0
        print(json.dumps(outcome), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
