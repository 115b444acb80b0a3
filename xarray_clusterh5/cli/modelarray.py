"""``clusterh5 to-modelarray`` and ``clusterh5 export-results``: ModelArrayIO's CLI.

Drop-in replacements for ``modelarrayio to-modelarray`` and ``modelarrayio
export-results`` (26.0.0) on the CIFTI path (dscalar, pscalar and pconn
cohorts and templates): the same flags, underscore aliases, defaults and mutual
exclusions, and the same files. Differences, all on purpose:

* outputs are written to a temporary file and renamed into place, so a failed
  run leaves nothing partial; like ModelArrayIO, existing outputs are replaced;
* every file's brain model is checked strictly (ModelArrayIO compares only
  structure names), and errors name the file;
* ``.dtseries.nii``/``.dlabel.nii`` inputs are recognised as CIFTI; they and
  multi-map dscalar files need ``--cifti-map N`` to pick a map;
* NIfTI (``--mask``), MIF (``--index-file``/``--directions-file``), TileDB
  (``--backend tiledb``) and ``--compression zstd`` are refused up front with a
  clear message instead of after loading the cohort;
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


def _add_unsupported(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("NIfTI and MIF arguments (not supported: CIFTI only)")
    g.add_argument(
        "--mask", dest="group_mask_file", default=None, help=argparse.SUPPRESS
    )
    g.add_argument("--index-file", "--index_file", default=None, help=argparse.SUPPRESS)
    g.add_argument(
        "--directions-file", "--directions_file", default=None, help=argparse.SUPPRESS
    )


def _refuse_other_modalities(args: argparse.Namespace) -> None:
    if args.group_mask_file is not None:
        raise ValueError(
            "--mask selects NIfTI data, which clusterh5 does not convert (CIFTI only); "
            "use modelarrayio for NIfTI"
        )
    if args.index_file is not None or args.directions_file is not None:
        raise ValueError(
            "--index-file/--directions-file select MIF fixel data, which clusterh5 "
            "does not convert (CIFTI only); use modelarrayio for MIF"
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
        help="CIFTI cohort CSV to a ModelArray HDF5 file (modelarrayio-compatible)",
        description=(
            "Convert a cohort of CIFTI dscalar files to a ModelArray HDF5 file, "
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
    _add_unsupported(p)
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
        help="ModelArray results to CIFTI dscalar files (modelarrayio-compatible)",
        description=(
            "Write results/<analysis>/results_matrix as <analysis>_<stat>.dscalar.nii "
            "files, as `modelarrayio export-results` does (same flags and files)."
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
        help="folder for the <analysis>_<stat>.dscalar.nii files (made if missing)",
    )
    _add_unsupported(e)
    _add_template_args(e)
    e.add_argument(
        "--no-compress",
        dest="compress",
        action="store_false",
        default=True,
        help="accepted for compatibility; has no effect on CIFTI outputs",
    )
    _add_log_level(e)
    e.set_defaults(func=run_export_results)


def _add_template_args(e: argparse.ArgumentParser) -> None:
    tg = e.add_argument_group("Template arguments (required for CIFTI)")
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
        help="a CIFTI file whose header is the template",
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
    from xarray_clusterh5.modelarray.h5 import cohort_to_h5, resolve_compression

    progress = _setup_logging(args.log_level)
    _refuse_other_modalities(args)
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
    _refuse_other_modalities(args)
    if args.cohort_file is None and args.example_file is None:
        raise ValueError(
            "Cannot determine modality. Provide --cohort-file or --example-file "
            "(CIFTI template); NIfTI (--mask) and MIF are not supported"
        )
    out_dir = Path(args.output_dir)
    if out_dir.exists():
        logging.getLogger("clusterh5").warning("Output directory exists: %s", out_dir)
    written = export_results(
        args.in_file,
        args.analysis_name,
        out_dir,
        example_file=args.example_file,
        cohort_file=args.cohort_file,
        overwrite=True,
        progress=progress,
        parents=True,  # ModelArrayIO makes the output folder and its parents
    )
    print(f"wrote {len(written)} files to {out_dir}", file=sys.stderr)
    return 0
