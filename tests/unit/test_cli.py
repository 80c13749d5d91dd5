"""The command line explains itself: each subcommand has its own help, and ``--es-url`` says it is for local
servers only (no authentication)."""

from __future__ import annotations

import pytest

from es_backfill.cli import main as cli


@pytest.mark.parametrize(("command", "says"), [("plan", "A dry run"), ("verify", "Checks a finished backfill")])
def test_each_subcommand_prints_its_own_help(command, says, capsys):
    with pytest.raises(SystemExit) as done:
        cli([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert done.value.code == 0 and out.startswith(f"usage: es_backfill.cli {command}") and says in out
    assert "without authentication" in out and "give a real cluster a connection" in out
    assert ("--redaction" in out) == (command == "verify")


def test_a_missing_subcommand_or_conf_is_a_usage_error(capsys):
    for argv in ([], ["plan"]):
        with pytest.raises(SystemExit) as done:
            cli(argv)
        assert done.value.code == 2
    assert "required" in capsys.readouterr().err
