"""Every subcommand's --help: a help text per flag, no misleading defaults.

Walks the real ``clusterh5`` parser, so a subcommand added later is checked
without editing this file.
"""

from __future__ import annotations

import argparse
import re

import numpy as np
import pytest

import xarray_clusterh5 as xch
from xarray_clusterh5.cli import build_parser, main

SUPERLATIVES = re.compile(
    r"\b(fastest|best|greatest|optimal|blazing|much faster|ultra|perfect)\b",
    re.IGNORECASE,
)


def subparsers() -> dict[str, argparse.ArgumentParser]:
    """Name -> parser of each ``clusterh5`` subcommand."""
    parser = build_parser()
    (action,) = (
        a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
    )
    return dict(action.choices)


SUBCOMMANDS = sorted(subparsers())


def shown_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in parser._actions
        if a.help is not argparse.SUPPRESS
        and not isinstance(a, argparse._HelpAction | argparse._VersionAction)
    ]


def test_every_subcommand_is_walked() -> None:
    assert {"describe", "from-nifti", "to-modelarray", "export-results"} <= set(
        SUBCOMMANDS
    )


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_flag_has_a_help_text(name: str) -> None:
    parser = subparsers()[name]
    assert parser.description, name
    for action in shown_actions(parser):
        assert action.help, (name, action.option_strings)
        assert action.help.strip(), (name, action.option_strings)


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_help_shows_only_meaningful_defaults(name: str) -> None:
    text = subparsers()[name].format_help()
    assert "(default: None)" not in text
    assert "(default: True)" not in text
    assert "(default: False)" not in text
    assert not SUPERLATIVES.search(text), SUPERLATIVES.search(text)


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_required_flags_and_switches_print_no_default(name: str) -> None:
    parser = subparsers()[name]
    formatter = parser._get_formatter()
    for action in shown_actions(parser):
        help_text = formatter._expand_help(action)
        if action.required or action.nargs == 0:
            assert "(default:" not in help_text, (name, action.option_strings)


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_unsupported_backends_are_not_offered(name: str) -> None:
    # ModelArrayIO's tiledb and zstd are accepted only to be refused with a
    # message; the help must not offer them
    text = subparsers()[name].format_help()
    for offered in re.findall(r"\{([^}]*)\}", text):
        assert not {"tiledb", "zstd"} & set(offered.split(",")), offered


def test_defaults_are_shown_where_they_matter() -> None:
    text = " ".join(subparsers()["from-nifti"].format_help().split())
    assert "(default: 2026)" in text
    assert "(default: 4)" in text


def test_describe_without_cluster_metadata(tmp_path, capsys) -> None:
    mask = np.zeros((4, 4, 3), dtype=bool)
    mask[1:3, 1:3, 1] = True
    data = np.arange(20, dtype=np.float32).reshape(4, 5)
    path = xch.write_experiment(
        tmp_path / "bare.h5", mask=mask, cluster_map=[3, 3, 3, 8], runs={"a": data}
    )
    assert main(["describe", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Empty DataFrame" not in out
    table = out.split("clusters (no cluster metadata):\n")[1].splitlines()
    # header lines, then one row per cluster: id and voxel count
    rows = [line.split() for line in table[2:4]]
    assert rows == [["3", "3"], ["8", "1"]]
    assert "a: 3: " in out  # per-cluster means of the run


def test_describe_lists_cluster_metadata(capsys) -> None:
    assert main(["describe", "--example"]) == 0
    out = capsys.readouterr().out
    lines = out.split("clusters:\n")[1].splitlines()
    assert lines[0].split() == ["n_voxels", "cluster_id", "color", "name"]
    assert lines[2].split() == ["1", "36", "1", "red", "Visual"]
