"""``clusterh5 lm``: R ``ModelArray.lm`` on a ModelArray HDF5 file, results into it.

Fits the formula at every element (streamed chunk by chunk from the file, a
progress bar per element chunk), corrects the p-values over every fitted
element, and writes ``results/<analysis-name>`` as R's ``writeResults`` does.
The flags are ``ModelArray.lm``'s arguments with dashes.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from xarray_clusterh5.stats.names import MODEL_STATS, PADJUST_METHODS, TERM_STATS


def element_range(text: str) -> range:
    """R's 1-based inclusive ``START:STOP`` as 0-based positions."""
    start, sep, stop = text.partition(":")
    try:
        first, last = int(start), int(stop)
    except ValueError:
        first = last = 0
    if not sep or first < 1 or last < first:
        raise argparse.ArgumentTypeError(
            f"expected START:STOP with 1 <= START <= STOP (1-based, inclusive, as "
            f"R's element.subset = START:STOP), got {text!r}"
        )
    return range(first - 1, last)


def add_parser(subparsers: Any) -> None:
    """Add ``lm`` to the ``clusterh5`` command."""
    p = subparsers.add_parser(
        "lm",
        help="element-wise linear models (R ModelArray.lm) into a ModelArray file",
        description="Fit an R-style linear model at every element of a ModelArray "
        "scalar and write ModelArray.lm's statistics to results/<analysis-name> "
        "of the same file, where R ModelArray and export-results read them.",
    )
    p.add_argument("--input-hdf5", required=True, help="the ModelArray .h5 file")
    p.add_argument("--phenotypes", required=True, help="CSV with a source_file column")
    p.add_argument("--formula", required=True, help='e.g. "FA ~ age + sex"')
    p.add_argument("--analysis-name", required=True, help="results/<name> to write")
    p.add_argument("--scalar", help="scalar to model (default: the formula's response)")
    p.add_argument(
        "--full-outputs", action="store_true", help="every term and model statistic"
    )
    p.add_argument(
        "--var-terms",
        nargs="+",
        choices=TERM_STATS,
        default=["estimate", "statistic", "p.value"],
        metavar="STAT",
        help=f"per-term statistics, from {', '.join(TERM_STATS)} "
        "(default: estimate statistic p.value)",
    )
    p.add_argument(
        "--var-model",
        nargs="+",
        choices=MODEL_STATS,
        default=["adj.r.squared", "p.value"],
        metavar="STAT",
        help=f"model statistics, from {', '.join(MODEL_STATS)} "
        "(default: adj.r.squared p.value)",
    )
    for what in ("terms", "model"):
        p.add_argument(
            f"--correct-p-value-{what}",
            nargs="+",
            choices=PADJUST_METHODS,
            default=["fdr"],
            metavar="METHOD",
            help=f"R p.adjust method(s) for the {what} p-values: "
            f"{', '.join(PADJUST_METHODS)} (default: fdr)",
        )
    p.add_argument(
        "--num-subj-lthr-abs", type=float, default=10, help="minimum finite subjects"
    )
    p.add_argument(
        "--num-subj-lthr-rel",
        type=float,
        default=0.2,
        help="minimum finite subjects as a fraction of all",
    )
    p.add_argument(
        "--element-subset",
        type=element_range,
        metavar="START:STOP",
        help="only these elements, 1-based and inclusive as in R",
    )
    p.add_argument("--chunk-size", type=int, help="elements per chunk")
    p.add_argument("--overwrite", action="store_true", help="replace the analysis")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Fit, then write: the file is closed for reading before it is written."""
    import xarray as xr

    from xarray_clusterh5.errors import ClusterH5Error
    from xarray_clusterh5.modelarray.store import NAME_ATTR

    try:
        import formulaic  # noqa: F401  (checked here to fail before any work)

        from xarray_clusterh5.modelarray.lm import compute, lm, write_results
    except ImportError as err:
        print(f"clusterh5 lm: error: {err}", file=sys.stderr)
        return 1

    pheno = _read_phenotypes(args.phenotypes)
    with xr.open_dataset(args.input_hdf5, engine="clusterh5") as ds:
        existing = {v.attrs.get(NAME_ATTR) for v in ds.data_vars.values()}
        if args.analysis_name in existing and not args.overwrite:
            raise ClusterH5Error(
                args.input_hdf5,
                f"results/{args.analysis_name} exists; pass --overwrite to replace it",
            )
        result = lm(
            ds,
            args.formula,
            pheno,
            scalar=args.scalar,
            full_outputs=args.full_outputs,
            var_terms=args.var_terms,
            var_model=args.var_model,
            correct_p_value_terms=args.correct_p_value_terms,
            correct_p_value_model=args.correct_p_value_model,
            num_subj_lthr_abs=args.num_subj_lthr_abs,
            num_subj_lthr_rel=args.num_subj_lthr_rel,
            element_subset=args.element_subset,
            chunk_size=args.chunk_size,
        )
        with _ChunkBar(result, disable=args.no_progress):
            result = compute(result)
    write_results(result, args.input_hdf5, args.analysis_name, overwrite=args.overwrite)
    print(
        f"wrote results/{args.analysis_name}: {result.sizes['stat']} statistics x "
        f"{result.sizes['element']} elements into {args.input_hdf5}",
        file=sys.stderr,
    )
    return 0


def _read_phenotypes(path: str) -> Any:
    import pandas as pd

    from xarray_clusterh5.errors import ClusterH5Error

    try:
        table = pd.read_csv(path)
    except FileNotFoundError:
        raise
    except (ValueError, OSError) as err:
        raise ClusterH5Error(path, f"cannot be read as a CSV table: {err}") from err
    table.attrs["source"] = path
    return table


class _ChunkBar:
    """A tqdm bar advanced by each finished element-chunk fit task."""

    def __init__(self, result: Any, *, disable: bool) -> None:
        from dask.callbacks import Callback
        from tqdm.auto import tqdm

        n_chunks = len(result.data.chunks[1])
        bar = tqdm(total=n_chunks, unit="chunk", desc="lm", disable=disable)

        class _Progress(Callback):
            def _posttask(self, key: Any, *args: Any) -> None:
                name = key[0] if isinstance(key, tuple) else key
                if str(name).startswith("lm-fit-"):
                    bar.update(1)

        self.bar = bar
        self.callback = _Progress()

    def __enter__(self) -> _ChunkBar:
        self.callback.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.callback.__exit__(*exc)
        self.bar.close()
