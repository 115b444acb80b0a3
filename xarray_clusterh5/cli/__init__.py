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
    ("xarray_clusterh5.cli.lm", "add_parser"),
)


class HelpFormatter(argparse.HelpFormatter):
    """Shows ``(default: X)`` only where a default tells the user something.

    argparse's ArgumentDefaultsHelpFormatter also prints ``(default: None)`` for
    required flags and flags without a default, and ``(default: True)`` for a
    ``--no-*`` switch; this one skips those, and help texts that already say
    what the default is.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            action.required
            or not action.option_strings
            or action.nargs == 0  # switches: the default is "not given"
            or default is None
            or default is argparse.SUPPRESS
            or "default" in text.lower()
        ):
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    """The full ``clusterh5`` parser with every subcommand."""
    from xarray_clusterh5 import __version__

    parser = argparse.ArgumentParser(
        prog="clusterh5",
        description="fmristore clustered experiments and ModelArray HDF5 from Python",
    )
    parser.add_argument("-V", "--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    for module_name, func_name in _COMMANDS:
        getattr(importlib.import_module(module_name), func_name)(sub)
    for subparser in sub.choices.values():  # one help style for every subcommand
        subparser.formatter_class = HelpFormatter
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``clusterh5`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (OSError, ValueError, KeyError) as err:
        # user-facing errors already name the file; no traceback for them
        print(
            f"clusterh5 {args.command}: error: {cli_words(str(err))}", file=sys.stderr
        )
        return 1


#: the Python API's words in messages, and what a CLI user types instead
_CLI_WORDS = (
    ("pass overwrite=True to replace it", "use --overwrite to replace it"),
    ("pass parents=True to make missing folders", "use --parents to make them"),
    ("open it with locking=False", "set HDF5_USE_FILE_LOCKING=FALSE"),
)


def cli_words(message: str) -> str:
    """A library message in the CLI's words: ``--overwrite``, not ``overwrite=True``."""
    for api, cli in _CLI_WORDS:
        message = message.replace(api, cli)
    return message


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
