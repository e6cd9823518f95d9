"""The hf-dals command line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hf_dals import list_strategies
from hf_dals.cli import main


def test_strategies_table_lists_every_registered_strategy(capsys):
    assert main(["strategies"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "generation", "description"]
    rows = {line.split()[0]: line.split()[1] for line in lines[2:]}
    assert rows == {s.name: str(s.generation) for s in list_strategies()}


def test_strategies_filtered_by_generation(capsys):
    assert main(["strategies", "--generation", "4"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:]]
    assert names == [s.name for s in list_strategies(4)]
    assert names


def test_strategies_markdown_has_implementation_and_defaults(capsys):
    assert main(["strategies", "--markdown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| name | generation | description | implementation |")
    assert len(lines) == 2 + len(list_strategies())
    dals_row = next(line for line in lines if line.startswith("| `dals` |"))
    assert "hf_dals.DALS" in dals_row
    assert "learning_rate=0.0005" in dals_row


def test_unknown_command_exits_with_usage(capsys):
    with pytest.raises(SystemExit) as raised:
        main(["train-everything"])
    assert raised.value.code == 2
    assert "invalid choice: 'train-everything'" in capsys.readouterr().err


def test_console_script_entry_point_runs():
    result = subprocess.run(
        [sys.executable, "-m", "hf_dals.cli", "strategies"], capture_output=True, text=True, check=True, timeout=120
    )
    assert "dals_fast" in result.stdout
