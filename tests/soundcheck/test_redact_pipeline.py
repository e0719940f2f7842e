"""Known fake secrets in the environment, a real run, and a scan of every output: none may appear.

Two runs: the load stage + notify + verdict.json pieces (always), and the whole campaign (once the
provisioner is in the tree). Scanned: every file of the output folder (k6 CSV, k6 log, summary,
verdict.json, report, chart), the result store's bytes, and every log line of the run.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest

from soundcheck import store
from soundcheck.models import Decision, Remediation, Verdict
from soundcheck.paths import venv_bin
from soundcheck.profile import parse_profile
from soundcheck.redact import find_secrets, install_redaction, redacted_json_dumps
from tests.safety_helpers import Sut
from tests.slack_standin import VALID_TOKEN, SlackStandIn

ADMIN = "adm-fake-0c9e7b1d2f3a4e5b"
AWS_ID = "AKIAFAKE0SAFETY0TEST"
AWS_SECRET = "fakeSecretKey/0123456789+abcdefghijklmnopqr"
WEBHOOK = "https://hooks.slack.com/services/TFAKE0000/BFAKE0000/fakewebhooksecret0123456"
SECRETS = [VALID_TOKEN, ADMIN, AWS_ID, AWS_SECRET, WEBHOOK]


@pytest.fixture
def fake_secrets(monkeypatch):
    monkeypatch.setenv("SLACK_BOT_TOKEN", VALID_TOKEN)
    monkeypatch.setenv("SLACK_WEBHOOK_URL", WEBHOOK)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AWS_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    monkeypatch.setenv("SOUNDCHECK_ADMIN_TOKEN", ADMIN)


@pytest.fixture
def captured_logs(tmp_path):
    """Every log record of the run, written as a handler would write it (after redaction)."""
    path = tmp_path / "logs" / "run.log"
    path.parent.mkdir()
    h = logging.FileHandler(path)
    h.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    old = root.level
    root.addHandler(h)
    root.setLevel(logging.DEBUG)
    install_redaction()
    yield path
    root.removeHandler(h)
    root.setLevel(old)
    h.close()


@pytest.mark.skipif(venv_bin("k6") is None, reason="k6 binary not installed")
def test_load_notify_and_verdict_leak_no_secret(fake_secrets, captured_logs, tmp_path):
    from tasks.load import LoadRequest, run_scenario
    from tasks.notify import notify_and_record

    sut = Sut(tmp_path, admin_token=ADMIN)
    out = tmp_path / "out"
    engine = store.open_store(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        store.start_run(engine, "sec", "secrets", scale=0.05, time_scale=0.02, scenarios=["points"], target=sut.url)
        res = run_scenario(
            engine,
            "sec",
            LoadRequest(
                "points",
                sut.url,
                output_dir=out,
                scale=0.05,
                time_scale=0.02,
                admin_token=ADMIN,
                deadline_s=90,
                progress=False,
            ),
        )
        assert res.ingest.requests > 0, res.reason  # the run really used the target (with the admin token)
        logging.getLogger("tasks.test").error(
            "the admin call failed with token %s (key %s / %s)", ADMIN, AWS_ID, AWS_SECRET
        )
        verdict = Verdict(
            run_id="sec",
            profile="secrets",
            started_at="s",
            finished_at="f",
            verdict=Decision.BLOCK,
            remediations=[
                Remediation(code="fix_code_and_retest", reason=f"posted to {WEBHOOK}", detail=f"token {VALID_TOKEN}")
            ],
        )
        (out / "verdict.json").write_text(redacted_json_dumps(verdict.to_json_dict(), indent=2))
        prof = parse_profile({"name": "secrets", "slack": {"enabled": True}})
        with SlackStandIn() as slack:
            cfg = prof.slack.model_copy(update={"api_url": slack.api_url})
            result = notify_and_record(verdict, cfg, engine, report_location=str(out / "report.html"))
            posted = b" ".join(c.body for c in slack.calls)
        assert getattr(result, "ok", True)
        assert VALID_TOKEN.encode() not in posted and WEBHOOK.encode() not in posted  # message text is clean
    finally:
        engine.dispose()
        sut.stop()
    leaks = find_secrets(tmp_path / "out", SECRETS) + find_secrets(tmp_path / "logs", SECRETS)
    leaks += [(p, s) for p, s in find_secrets(tmp_path, SECRETS) if p.name.startswith("store.db")]
    assert leaks == []
    assert "the admin call failed with token ***" in captured_logs.read_text()


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("tasks.provision") is None,
    reason="the campaign's provisioner (tasks/provision.py) is not in the tree yet",
)
def test_whole_campaign_leaks_no_secret(prefect_harness, fake_secrets, captured_logs, tmp_path):
    import os

    import yaml

    from soundcheck.cli import run_campaign

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    sut = Sut(tmp_path, admin_token=ADMIN)
    try:
        with SlackStandIn() as slack:
            prof = {
                "name": "secrets",
                "environment": {"kind": "external"},
                "target": {"base_url": sut.url},
                "metrics": {"source": "scrape"},
                "scenarios": ["points"],
                "scale": 0.05,
                "time_scale": 0.02,
                "store_url": f"sqlite:///{tmp_path / 'store.db'}",
                "output_dir": str(tmp_path / "runs"),
                "slack": {"enabled": True, "api_url": slack.api_url},
            }
            p = tmp_path / "profile.yaml"
            p.write_text(yaml.safe_dump(prof))
            code = run_campaign(profile=p, output=tmp_path / "out", notify=True)
            posted = b" ".join(c.body for c in slack.calls)
    finally:
        sut.stop()
    assert code in (0, 10, 20, 30)
    assert (tmp_path / "out" / "verdict.json").exists()
    assert slack.calls, "the verdict was not posted"
    for s in SECRETS:
        assert s.encode() not in posted
    leaks = find_secrets(tmp_path / "out", SECRETS) + find_secrets(tmp_path / "logs", SECRETS)
    leaks += [(p, s) for p, s in find_secrets(tmp_path, SECRETS) if p.name.startswith("store.db")]
    assert leaks == [], leaks


def test_scan_finds_a_planted_secret(tmp_path):
    """The scan itself can fail: a secret written anywhere under the folder is found."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "k6.log").write_text(f'level=info msg="x-admin-token: {ADMIN}"')
    assert find_secrets(tmp_path, SECRETS) == [(Path(tmp_path / "a" / "b" / "k6.log"), ADMIN)]
