"""``clusterh5 describe``: open a file with the engine and print what it holds."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> None:
    """Add ``describe`` to the ``clusterh5`` command."""
    p = subparsers.add_parser(
        "describe",
        help="open an fmristore or ModelArray file and summarise it",
        description="Open a file with the clusterh5 engine and print its views, "
        "scans, clusters and per-cluster means of every full run.",
    )
    p.add_argument("path", nargs="?", help="the .h5 file")
    p.add_argument(
        "--example", action="store_true", help="use the bundled R-written example"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the padded Dataset, the scans and each cluster's mean signal."""
    import numpy as np

    from xarray_clusterh5 import api

    if args.example == bool(args.path):
        raise ValueError("give a path or --example (one of them)")
    path = api.example_file() if args.example else args.path
    with api.open_dataset(path, chunks={}) as ds:
        print(ds)
        if "run" not in ds.dims:
            return 0
        acc = ds.clusterh5
        print(f"\n{acc.n_scans} scans: {', '.join(acc.scan_names)}")
        print(_cluster_table(ds))
        if "data" in ds:
            means = acc.cluster_means().mean("time").compute()
            print("\nmean signal per cluster and full run:")
            for run in acc.scan_names:
                row = means.sel(run=run).values
                if np.isfinite(row).any():
                    cells = ", ".join(
                        f"{int(c)}: {v:.3f}"
                        for c, v in zip(ds["cluster"].values, row, strict=True)
                    )
                    print(f"  {run}: {cells}")
    return 0


def _cluster_table(ds: Any) -> str:
    """Each cluster's id and voxel count, with its metadata columns if stored."""
    table = ds.clusterh5.cluster_metadata()
    table.insert(0, "n_voxels", ds["n_voxels"].values)
    table.index.name = "cluster"
    title = "clusters" if table.shape[1] > 1 else "clusters (no cluster metadata)"
    return f"{title}:\n{table.to_string()}"
