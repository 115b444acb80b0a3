"""The ``clusterh5`` command.

Each subcommand lives in the module that owns its job; this file only wires
them into one argparse parser, so importing it stays cheap.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# (module, function) pairs; each function takes the subparsers object and adds
# its own parser with ``set_defaults(func=...)``.
_COMMANDS: tuple[tuple[str, str], ...] = (
    ("xarray_clusterh5.cli.describe", "add_parser"),
    ("xarray_clusterh5.cli.modelarray", "add_parsers"),
    ("xarray_clusterh5.cli.nifti", "add_parser"),
)


def build_parser() -> argparse.ArgumentParser:
    """The full ``clusterh5`` parser with every subcommand that is installed."""
    from xarray_clusterh5 import __version__

    parser = argparse.ArgumentParser(
        prog="clusterh5",
        description="fmristore clustered experiments and ModelArray HDF5 from Python",
    )
    parser.add_argument("-V", "--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    for module_name, func_name in _COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name == module_name:
                continue  # subcommand not built yet
            raise
        getattr(module, func_name)(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``clusterh5`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (OSError, ValueError, KeyError) as err:
        # user-facing errors already name the file; no traceback for them
        print(f"clusterh5 {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
