"""`soundcheck history` and `soundcheck report RUN_ID` (re-judging a stored run without new load)."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from soundcheck.cli import app
from tests.verdict_data import build_run, new_store


def _profile(tmp_path, name="local", **extra):
    p = tmp_path / f"{name}-{len(extra)}.yaml"
    p.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "store_url": f"sqlite:///{tmp_path}/results.db",
                "output_dir": str(tmp_path / "runs"),
                **extra,
            }
        )
    )
    return p


def test_history_and_rejudge_with_current_bands(tmp_path):
    engine = new_store(tmp_path)
    build_run(engine, "run-soak", ("soak",), profile="local")
    engine.dispose()
    runner = CliRunner()

    res = runner.invoke(app, ["history", "--profile", str(_profile(tmp_path))])
    assert res.exit_code == 0, res.output
    assert "run-soak" in res.output and "COMPLETED" in res.output

    res = runner.invoke(app, ["report", "run-soak", "--profile", str(_profile(tmp_path))])
    assert res.exit_code == 0, res.output  # APPROVE
    body = json.loads((tmp_path / "runs" / "run-soak" / "verdict.json").read_text())
    assert body["verdict"] == "APPROVE" and body["profile"] == "local"

    # the same stored run, judged with a stricter p95 band in the profile: no new load, a new verdict
    strict = _profile(tmp_path, bands={"p95_ms": {"target": 20, "allowed": 30}})
    res = runner.invoke(app, ["report", "run-soak", "--profile", str(strict), "--output", str(tmp_path / "again")])
    assert res.exit_code == 20, res.output  # BLOCK
    assert "cache_concert_list" in res.output
    assert (tmp_path / "again" / "report.html").exists()

    res = runner.invoke(app, ["history", "--profile", str(_profile(tmp_path))])
    assert "BLOCK" in res.output


def test_unknown_run_and_bad_profile_are_usage_errors(tmp_path):
    new_store(tmp_path).dispose()
    runner = CliRunner()
    assert runner.invoke(app, ["report", "nope", "--profile", str(_profile(tmp_path))]).exit_code == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ncolour: red\n")
    assert runner.invoke(app, ["history", "--profile", str(bad)]).exit_code == 2
