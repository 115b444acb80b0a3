"""``clusterh5 from-nifti``: build an fmristore clustered file from NIfTI runs."""

from __future__ import annotations

import argparse
import math
import os
from typing import Any


def _run_spec(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, path


def _seconds(text: str) -> float:
    """``--tr``: a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(
            f"must be a positive number of seconds, got {text!r}"
        )
    return value


def add_parser(subparsers: Any) -> None:
    """Add ``from-nifti`` to the ``clusterh5`` command."""
    p = subparsers.add_parser(
        "from-nifti",
        help="build an fmristore clustered .h5 from 4-D NIfTI runs and an atlas",
        description="Read 4-D NIfTI runs and a 3-D atlas (0 = background), keep "
        "the atlas voxels in fmristore's mask order and write an fmristore "
        "clustered experiment that R fmristore and the clusterh5 engine read.",
    )
    p.add_argument(
        "--atlas", required=True, help="3-D integer atlas (NIfTI); 0 is background"
    )
    p.add_argument(
        "--run",
        dest="runs",
        action="append",
        required=True,
        type=_run_spec,
        metavar="NAME=PATH",
        help="a 4-D run; repeat for several runs",
    )
    p.add_argument("--mask", help="optional 3-D mask (NIfTI) restricting the atlas")
    p.add_argument(
        "--tr",
        type=_seconds,
        help="repetition time in seconds (default: from the runs' NIfTI headers)",
    )
    p.add_argument(
        "--summaries",
        action="store_true",
        help="also store cluster-mean summaries of every run",
    )
    p.add_argument(
        "--format",
        choices=("2025", "2026"),
        default="2026",
        help="fmristore generation of the class strings",
    )
    p.add_argument(
        "--compression", type=int, default=4, help="gzip level 0-9 (4 is what R writes)"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace --output if it exists"
    )
    p.add_argument(
        "--parents",
        action="store_true",
        help="make --output's folder and its parents if they do not exist "
        "(as mkdir -p); without it a missing folder is an error",
    )
    p.add_argument(
        "--no-progress", action="store_true", help="do not show a progress bar"
    )
    p.add_argument("--output", "-o", required=True, help="the .h5 file to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build with :func:`from_nifti` and write with :func:`to_fmristore`."""
    from xarray_clusterh5._hdf5.files import output_folder
    from xarray_clusterh5.fmristore.from_nifti import from_nifti
    from xarray_clusterh5.fmristore.to_h5 import to_fmristore

    names = [name for name, _ in args.runs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"--run names must be unique; repeated: {dup}")
    # before reading any run: a missing folder fails at once
    output_folder(os.path.dirname(os.path.abspath(args.output)), parents=args.parents)
    ds = from_nifti(
        args.runs,
        atlas=args.atlas,
        mask=args.mask,
        tr=args.tr,
        summaries=args.summaries,
    )
    out = to_fmristore(
        ds,
        args.output,
        format=args.format,
        compression=args.compression,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    n_vox = int(ds["n_voxels"].sum())
    print(
        f"wrote {out}: {ds.sizes['run']} runs, {ds.sizes['cluster']} clusters, "
        f"{n_vox} voxels"
    )
    return 0
