"""`soundcheck sut`: the reference service's options through the CLI."""

from __future__ import annotations


def test_soundcheck_sut_passes_options_through(capsys):
    from typer.testing import CliRunner

    from soundcheck.cli import app

    result = CliRunner().invoke(app, ["sut", "--help"])
    assert result.exit_code == 0
    assert "--db-pool-size" in result.output and "SUT_DB_POOL_SIZE" in result.output
    bad = CliRunner().invoke(app, ["sut", "--faults", "nonsense"])
    assert bad.exit_code == 2
