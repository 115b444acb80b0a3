"""``clusterh5 to-modelarray`` and ``clusterh5 export-results``: ModelArrayIO's CLI.

Drop-in replacements for ``modelarrayio to-modelarray`` and ``modelarrayio
export-results`` (26.0.0) for its three modalities: CIFTI (dscalar, pscalar and
pconn cohorts and templates), NIfTI voxel-wise (``--mask``) and MIF fixel-wise
(``--index-file``/``--directions-file``): the same flags, underscore aliases,
defaults and mutual exclusions, and the same files. Differences, all on purpose:

* outputs are written to a temporary file and renamed into place, so a failed
  run leaves nothing partial; like ModelArrayIO, existing outputs are replaced;
* every file's brain model is checked strictly (ModelArrayIO compares only
  structure names), and errors name the file;
* ``.dtseries.nii``/``.dlabel.nii`` inputs are recognised as CIFTI; they and
  multi-map dscalar files need ``--cifti-map N`` to pick a map;
* NIfTI images and subject masks whose affine differs from the group mask's
  are refused by name (``--allow-affine-mismatch`` accepts them with a
  warning); MIF subjects must hold exactly the index's fixel count, and the
  index and directions must agree (ModelArrayIO checks neither);
* MIF exports store float32 values without the template's ``scaling:`` line
  and replace existing result files (ModelArrayIO copies the line, so its own
  reader misreads the values, and keeps stale files);
* TileDB (``--backend tiledb``) and ``--compression zstd`` are refused up front
  with a clear message instead of after loading the cohort;
* relative ``source_file`` paths resolve against the working directory, as
  ModelArrayIO does; when a file is not there the cohort file's folder is tried,
  with a warning.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

_LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


def _existing_file(parser: argparse.ArgumentParser) -> Any:
    def check(value: str) -> Path:
        path = Path(value)
        if not path.exists():
            parser.error(f"Path does not exist: <{value}>.")
        if not path.is_file():
            parser.error(
                f"Path should point to a file (or symlink of file): <{value}>."
            )
        return path.absolute()

    return check


def _add_log_level(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-level",
        "--log_level",
        choices=_LOG_LEVELS,
        default="INFO",
        help="logging level (default: INFO); WARNING and above also hide progress bars",
    )


def _add_nifti_args(p: argparse.ArgumentParser, what: str) -> None:
    g = p.add_argument_group(f"NIfTI arguments (required for NIfTI {what})")
    g.add_argument(
        "--mask",
        dest="group_mask_file",
        type=_existing_file(p),
        default=None,
        help="the binary group mask NIfTI file: its voxels > 0 are the elements",
    )


def _add_mif_args(p: argparse.ArgumentParser, what: str) -> None:
    g = p.add_argument_group(f"MIF/fixel arguments (required for MIF/fixel {what})")
    g.add_argument(
        "--index-file",
        "--index_file",
        type=_existing_file(p),
        default=None,
        help="the fixel index image (index.mif)",
    )
    g.add_argument(
        "--directions-file",
        "--directions_file",
        type=_existing_file(p),
        default=None,
        help="the fixel directions image (directions.mif)",
    )


def _setup_logging(level: str) -> bool:
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="[%(levelname)s] %(name)s: %(message)s",
    )
    return getattr(logging, level, logging.INFO) <= logging.INFO


def add_parsers(subparsers: Any) -> None:
    """Add ``to-modelarray`` and ``export-results`` to the ``clusterh5`` parser."""
    _add_to_modelarray(subparsers)
    _add_export_results(subparsers)


def _add_to_modelarray(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "to-modelarray",
        help="CIFTI, NIfTI or MIF cohort to a ModelArray HDF5 file (as modelarrayio)",
        description=(
            "Convert a cohort of CIFTI, NIfTI (--mask) or MIF fixel (--index-file, "
            "--directions-file) files to a ModelArray HDF5 file, "
            "as `modelarrayio to-modelarray` does (same flags and files)."
        ),
    )
    p.add_argument(
        "--cohort-file",
        "--cohort_file",
        required=True,
        type=_existing_file(p),
        help="CSV with the cohort: scalar_name and source_file columns (long) or "
        "path columns named by --scalar-columns (wide).",
    )
    p.add_argument(
        "--output",
        type=Path,
        default=Path("modelarray.h5"),
        help="the ModelArray .h5 file to write (replaced if it exists)",
    )
    p.add_argument(
        "--scalar-columns",
        "--scalar_columns",
        nargs="+",
        help="wide format: the columns holding file paths (implies --split-files)",
    )
    _add_split_args(p)
    _add_storage_args(p)
    _add_chunk_args(p)
    # TileDB only in ModelArrayIO: accepted so its command lines run, not shown
    p.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument(
        "--s3-workers",
        "--s3_workers",
        type=int,
        default=1,
        help="accepted for compatibility; files are always read by several threads",
    )
    p.add_argument(
        "--cifti-map",
        "--cifti_map",
        type=int,
        default=None,
        help="take this map (0-based) of multi-map dscalar, dtseries or dlabel files",
    )
    _add_nifti_args(p, "data")
    p.add_argument(
        "--allow-affine-mismatch",
        "--allow_affine_mismatch",
        action="store_true",
        help="NIfTI: accept images whose affine differs from the group mask's "
        "(with a warning); refused by default (ModelArrayIO compares shapes only)",
    )
    _add_mif_args(p, "data")
    _add_log_level(p)
    p.set_defaults(func=run_to_modelarray)


def _add_split_args(p: argparse.ArgumentParser) -> None:
    split = p.add_mutually_exclusive_group()
    split.add_argument(
        "--split-files",
        "--split_files",
        dest="split_outputs",
        action="store_true",
        help="one output file per scalar, named <scalar>_<output name>",
    )
    split.add_argument(
        "--no-split-files",
        "--no_split_files",
        dest="split_outputs",
        action="store_false",
        help="all scalars in one output",
    )
    p.set_defaults(split_outputs=None)


def _add_storage_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend",
        choices=["hdf5", "tiledb"],
        metavar="{hdf5}",  # tiledb is accepted only to be refused with a message
        default="hdf5",
        help="storage backend; ModelArrayIO's TileDB backend is not supported",
    )
    p.add_argument(
        "--dtype",
        choices=["float32", "float64"],
        default="float32",
        dest="storage_dtype",
        help="floating type stored",
    )
    p.add_argument(
        "--compression",
        choices=["gzip", "zstd", "lzf", "none"],
        metavar="{gzip,lzf,none}",  # zstd (TileDB only) is refused with a message
        default="gzip",
        help="compression filter of the stored values",
    )
    p.add_argument(
        "--compression-level",
        "--compression_level",
        type=int,
        default=4,
        help="gzip level, clamped to 0..9",
    )
    p.add_argument(
        "--no-shuffle",
        dest="shuffle",
        action="store_false",
        default=True,
        help="do not apply HDF5's shuffle filter before compression",
    )


def _add_chunk_args(p: argparse.ArgumentParser) -> None:
    chunking = p.add_mutually_exclusive_group()
    chunking.add_argument(
        "--chunk-voxels",
        "--chunk_voxels",
        type=int,
        default=0,
        help="elements per chunk; 0 = from --target-chunk-mb. 1024 makes ModelArray's "
        "per-element reads about 3x faster than the default",
    )
    chunking.add_argument(
        "--target-chunk-mb",
        "--target_chunk_mb",
        type=float,
        default=2.0,
        help="MiB per chunk when --chunk-voxels is 0",
    )


def _add_export_results(subparsers: Any) -> None:
    e = subparsers.add_parser(
        "export-results",
        help="ModelArray results to CIFTI, NIfTI or MIF files (as modelarrayio)",
        description=(
            "Write results/<analysis>/results_matrix as <analysis>_<stat> CIFTI, "
            "NIfTI (--mask) or MIF (--index-file, --directions-file) files, "
            "as `modelarrayio export-results` does (same flags and files)."
        ),
    )
    e.add_argument(
        "--analysis-name",
        "--analysis_name",
        required=True,
        help="the analysis to export: the group results/<name> of the file",
    )
    e.add_argument(
        "--input-hdf5",
        "--input_hdf5",
        dest="in_file",
        required=True,
        type=_existing_file(e),
        help="the ModelArray .h5 file with the results",
    )
    e.add_argument(
        "--output-dir",
        "--output_dir",
        required=True,
        help="folder for the <analysis>_<stat> files (made if missing)",
    )
    _add_nifti_args(e, "results")
    _add_mif_args(e, "results")
    _add_template_args(e)
    e.add_argument(
        "--no-compress",
        dest="compress",
        action="store_false",
        default=True,
        help="write .nii / .mif instead of .nii.gz / .mif.gz (no effect on CIFTI)",
    )
    _add_log_level(e)
    e.set_defaults(func=run_export_results)


def _add_template_args(e: argparse.ArgumentParser) -> None:
    tg = e.add_argument_group(
        "Template arguments (required for CIFTI and MIF/fixel results)"
    )
    template = tg.add_mutually_exclusive_group()
    template.add_argument(
        "--cohort-file",
        "--cohort_file",
        type=_existing_file(e),
        default=None,
        help="cohort CSV; its first source_file is the template",
    )
    template.add_argument(
        "--example-file",
        "--example_file",
        type=_existing_file(e),
        default=None,
        help="a CIFTI or MIF file whose header is the template",
    )


def run_to_modelarray(args: argparse.Namespace) -> int:
    """Run ``to-modelarray``; returns the exit status."""
    with warnings.catch_warnings():
        # warnings (e.g. the CSV-folder fallback) are messages here, not errors
        warnings.simplefilter("always", UserWarning)
        return _to_modelarray(args)


def _to_modelarray(args: argparse.Namespace) -> int:
    # the direct path: no xarray or dask to import, same files as
    # cohort.to_modelarray(cohort.from_cohort(...))
    from xarray_clusterh5.modelarray.convert import cohort_to_h5
    from xarray_clusterh5.modelarray.h5 import resolve_compression

    progress = _setup_logging(args.log_level)
    if args.backend != "hdf5":
        raise ValueError(
            "--backend tiledb is not supported; clusterh5 writes HDF5 only"
        )
    # fail before reading anything (ModelArrayIO fails on zstd after loading)
    resolve_compression(args.compression, args.compression_level, args.shuffle)
    split = args.split_outputs
    if split is None:
        split = bool(args.scalar_columns)
    out = cohort_to_h5(
        args.cohort_file,
        args.output,
        scalar_columns=args.scalar_columns,
        split_files=split,
        map_index=args.cifti_map,
        mask=args.group_mask_file,
        index_file=args.index_file,
        directions_file=args.directions_file,
        allow_affine_mismatch=args.allow_affine_mismatch,
        dtype=args.storage_dtype,
        compression=args.compression,
        compression_level=args.compression_level,
        shuffle=args.shuffle,
        chunk_voxels=args.chunk_voxels,
        target_chunk_mb=args.target_chunk_mb,
        overwrite=True,
        progress=progress,
        parents=True,  # ModelArrayIO makes the output's folders
    )
    for path in out:
        logging.getLogger("clusterh5").info("wrote %s", os.fspath(path))
    return 0


def run_export_results(args: argparse.Namespace) -> int:
    """Run ``export-results``; returns the exit status."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", UserWarning)
        return _export_results(args)


def _export_results(args: argparse.Namespace) -> int:
    from xarray_clusterh5.modelarray.export import export_results

    progress = _setup_logging(args.log_level)
    has_mif = args.index_file is not None or args.directions_file is not None
    has_template = args.cohort_file is not None or args.example_file is not None
    if args.group_mask_file is None and not has_mif and not has_template:
        raise ValueError(
            "Cannot determine modality. Provide --mask (NIfTI), "
            "--index-file/--directions-file (MIF), or --cohort-file/--example-file "
            "(CIFTI)."
        )
    if args.group_mask_file is None and has_mif and not has_template:
        raise ValueError(
            "One of --cohort-file or --example-file is required for MIF results."
        )
    out_dir = Path(args.output_dir)
    if out_dir.exists():
        logging.getLogger("clusterh5").warning("Output directory exists: %s", out_dir)
    written = export_results(
        args.in_file,
        args.analysis_name,
        out_dir,
        mask=args.group_mask_file,
        index_file=args.index_file,
        directions_file=args.directions_file,
        example_file=args.example_file,
        cohort_file=args.cohort_file,
        compress=args.compress,
        overwrite=True,
        progress=progress,
        parents=True,  # ModelArrayIO makes the output folder and its parents
    )
    print(f"wrote {len(written)} files to {out_dir}", file=sys.stderr)
    return 0
