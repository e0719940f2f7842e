"""Every `soundcheck` command against a result store it cannot use: one sentence, exit 2, no password,
no driver traceback; and a reachable store's URL is printed without its password."""

from __future__ import annotations

import socket

import pytest
import yaml
from prefect.logging.configuration import setup_logging

from soundcheck.cli import print_history, rejudge, verify_run

PASSWORD = "s3cret-Store-pw"

#: Prefect's log handlers bind to the stderr of the moment they are set up: here, not under a test's capsys
#: (a later test would log into that closed stream).
setup_logging()


def _profile(tmp_path, store_url: str):
    p = tmp_path / "profile.yaml"
    p.write_text(
        yaml.safe_dump(
            {
                "name": "local",
                "store_url": store_url,
                "output_dir": str(tmp_path / "runs"),
                "scenarios": ["points"],
                "scale": 0.02,
                "time_scale": 0.02,
            }
        )
    )
    return p


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket goes: nothing listens there


def _reachable(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


@pytest.mark.parametrize("command", ["history", "trends", "report", "verify"])
def test_unreachable_store_is_one_sentence_without_password(tmp_path, command, capsys):
    url = f"postgresql+psycopg://soundcheck:{PASSWORD}@127.0.0.1:{_closed_port()}/results"
    profile = _profile(tmp_path, url)
    commands = {
        "history": lambda: print_history(profile),
        "trends": lambda: print_history(profile, kpi="p95_ms"),
        "report": lambda: rejudge(profile, "some-run"),
        "verify": lambda: verify_run("some-run", profile),
    }
    code = commands[command]()
    printed = capsys.readouterr()
    assert code == 2, printed
    assert "the result store at postgresql+psycopg://soundcheck@127.0.0.1" in printed.err
    assert "is unreachable" in printed.err and len(printed.err.strip().splitlines()) <= 2  # one sentence (wrapped)
    assert PASSWORD not in printed.out + printed.err and "Traceback" not in printed.err


def test_run_with_unreachable_store_keeps_the_password_out(prefect_harness, tmp_path, monkeypatch, capsys):
    from soundcheck.cli import run_campaign

    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    url = f"postgresql+psycopg://soundcheck:{PASSWORD}@127.0.0.1:{_closed_port()}/results"
    code = run_campaign(profile=_profile(tmp_path, url), notify=False, output=tmp_path / "out")
    printed = capsys.readouterr()
    assert code == 30, printed  # INCONCLUSIVE: nothing could be measured or kept
    assert "is unreachable" in printed.err
    assert PASSWORD not in printed.out + printed.err
    assert PASSWORD not in (tmp_path / "out" / "verdict.json").read_text()


@pytest.mark.skipif(not _reachable(5432), reason="no PostgreSQL on 127.0.0.1:5432")
def test_history_prints_the_store_without_its_password(tmp_path, capsys):
    # trust authentication here: the password is sent and ignored, so the store opens
    url = f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:5432/test"
    assert print_history(_profile(tmp_path, url)) == 0
    printed = capsys.readouterr().out
    assert "postgres@127.0.0.1:5432/test" in printed.replace("\n", "")
    assert PASSWORD not in printed


def test_verify_of_a_run_the_store_does_not_have_is_one_sentence(tmp_path, capsys):
    assert verify_run("no-such-run", _profile(tmp_path, f"sqlite:///{tmp_path}/s.db")) == 2
    err = capsys.readouterr().err
    assert "run no-such-run is not in the result store" in err and "Traceback" not in err
    assert verify_run("r", _profile(tmp_path, f"sqlite:///{tmp_path}/s.db"), change=["oops"]) == 2
    assert "expected SETTING=VALUE" in capsys.readouterr().err
