"""Slack delivery through slack-sdk against a loopback stand-in of the Web API and of a webhook."""

from __future__ import annotations

import json
import logging

import pytest
from sqlalchemy import select

from soundcheck.models import KPI, Check, Decision, Remediation, Verdict
from soundcheck.profile import Slack
from soundcheck.store import events, open_store, start_run
from tasks.notify import Credentials, build_message, kpi_line, notify_and_record, post_verdict, resolve_credentials
from tests.slack_standin import VALID_TOKEN, SlackStandIn

WEBHOOK_SECRET_PART = "B000/hook"


def _verdict(decision: Decision = Decision.BLOCK) -> Verdict:
    return Verdict(
        run_id="20261126T020000Z-abc123",
        profile="local",
        started_at="2026-11-26T02:00:00Z",
        finished_at="2026-11-26T02:04:00Z",
        verdict=decision,
        report="runs/x/report.html",
        checks=[
            Check(id="R-RACE-1", scenario="race", passed=False, observed="3 × 200", expected="exactly 1 × 200"),
            Check(id="R-RACE-2", scenario="race", passed=True, observed="100 × 200", expected="100 × 200"),
        ],
        kpis=[
            KPI(name="p95_ms", scenario="spike", value=812.0, unit="ms", band="target", previous=701.0),
            KPI(name="db_pool_use", scenario="spike", value=0.86, unit="ratio", band="action", previous=None),
            KPI(name="p95_ms.API-1", scenario="spike", value=120.0, unit="ms"),
        ],
        remediations=[Remediation(code="fix_code_and_retest", reason="R-RACE-1 failed", detail="seat sold twice")],
    )


@pytest.fixture
def slack():
    with SlackStandIn() as s:
        yield s


@pytest.fixture
def store(tmp_path):
    engine = open_store(f"sqlite:///{tmp_path}/store.db")
    start_run(
        engine,
        "20261126T020000Z-abc123",
        "local",
        scale=0.02,
        time_scale=0.05,
        scenarios=["race"],
        target="http://127.0.0.1:1",
    )
    return engine


def _events(engine):
    with engine.connect() as c:
        return [dict(r._mapping) for r in c.execute(select(events))]


def _all_text(blocks) -> str:
    return json.dumps(blocks, ensure_ascii=False)


def test_kpi_line_shows_band_and_delta_against_previous():
    line = kpi_line(KPI(name="p95_ms", scenario="spike", value=812.0, unit="ms", band="target", previous=701.0))
    assert "*p95_ms* spike" in line and "812 ms" in line and "target" in line
    assert "↑ +16 % vs 701 ms" in line
    assert "no previous run" in kpi_line(KPI(name="x", scenario="race", value=1.0, unit="", band="target"))


def test_bot_token_posts_blocks_and_uploads_chart(slack, store, tmp_path):
    chart = tmp_path / "headline.png"
    chart.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 500)
    cfg = Slack(enabled=True, channel="#load-tests", api_url=slack.api_url)
    res = notify_and_record(
        _verdict(),
        cfg,
        store,
        report_location="/srv/runs/x/report.html",
        chart_path=chart,
        credentials=Credentials(token=VALID_TOKEN),
        backoff_s=0.01,
    )
    assert res.outcome == "ok" and res.via == "bot" and res.chart_uploaded

    (post,) = slack.calls_to("chat.postMessage")
    assert post.headers["authorization"] == f"Bearer {VALID_TOKEN}"
    body = post.json
    assert body["channel"] == "#load-tests"
    assert body["blocks"][0]["type"] == "header" and "BLOCK" in body["blocks"][0]["text"]["text"]
    (att,) = body["attachments"]
    assert att["color"] == "#E01E5A"
    text = _all_text(body["blocks"]) + _all_text(att["blocks"])
    assert ":no_entry:" in text
    assert "↑ +16 % vs 701 ms" in text  # KPI with band and delta
    assert "*db_pool_use* spike — 86.00 %" in text and ":red_circle:" in text
    assert "R-RACE-1" in text and "exactly 1 × 200" in text  # failed check with observed/expected
    assert "R-RACE-2" not in text  # passed checks are not listed
    assert "fix_code_and_retest" in text
    assert "20261126T020000Z-abc123" in text and "`local`" in text and "/srv/runs/x/report.html" in text

    # The chart: the three-step upload (get URL, raw upload, complete) into the message's thread.
    (get_url,) = slack.calls_to("files.getUploadURLExternal")
    assert get_url.form["filename"] == "headline.png" and int(get_url.form["length"]) == chart.stat().st_size
    (upload,) = [c for c in slack.calls if c.path.startswith("/upload/")]
    assert upload.body == chart.read_bytes()
    (complete,) = slack.calls_to("files.completeUploadExternal")
    assert complete.form["channel_id"] == "C0SOUNDCHK" and complete.form["thread_ts"] == "1700000000.000100"

    (ev,) = _events(store)
    assert ev["kind"] == "notify" and ev["outcome"] == "ok"


def test_webhook_posts_the_same_blocks(slack, store):
    cfg = Slack(enabled=True)
    res = notify_and_record(
        _verdict(Decision.APPROVE), cfg, store, credentials=Credentials(webhook_url=slack.webhook_url), backoff_s=0.01
    )
    assert res.outcome == "ok" and res.via == "webhook"
    (hook,) = slack.calls_to("hook")
    assert hook.json["attachments"][0]["color"] == "#2EB67D"
    assert ":white_check_mark:" in _all_text(hook.json["blocks"])
    assert hook.json["blocks"] == build_message(_verdict(Decision.APPROVE))["blocks"]
    assert _events(store)[0]["outcome"] == "ok"


def test_server_errors_are_retried_then_succeed(slack, store):
    slack.fail("chat.postMessage", times=2, status=503)
    cfg = Slack(enabled=True, api_url=slack.api_url, upload_chart=False)
    res = notify_and_record(_verdict(), cfg, store, credentials=Credentials(token=VALID_TOKEN), backoff_s=0.01)
    assert res.outcome == "ok" and res.attempts == 3
    assert len(slack.calls_to("chat.postMessage")) == 3
    assert _events(store)[0]["outcome"] == "ok"


def test_persistent_failure_is_recorded_and_never_raises(slack, store):
    slack.fail("webhook", times=5, status=500)
    res = notify_and_record(
        _verdict(), Slack(enabled=True), store, credentials=Credentials(webhook_url=slack.webhook_url), backoff_s=0.01
    )
    assert res.outcome == "failed" and res.attempts == 3
    assert len(slack.calls_to("hook")) == 3
    (ev,) = _events(store)
    assert ev["outcome"] == "failed" and "after 3 attempt(s)" in ev["detail"]
    assert WEBHOOK_SECRET_PART not in ev["detail"]


def test_timeout_is_retried(slack, store):
    slack.fail("chat.postMessage", times=1, status=200, error="late", delay=1.5)
    cfg = Slack(enabled=True, api_url=slack.api_url, upload_chart=False)
    res = post_verdict(_verdict(), cfg, credentials=Credentials(token=VALID_TOKEN), backoff_s=0.01, timeout_s=1)
    assert res.outcome == "ok" and res.attempts == 2
    assert "timed out" in res.errors[0].lower()


def test_bad_token_is_recorded_without_leaking_it(slack, store, caplog):
    bad = "xoxb-wrong-token-must-not-leak"
    caplog.set_level(logging.DEBUG)
    logging.getLogger("slack_sdk").setLevel(logging.DEBUG)
    try:
        res = notify_and_record(
            _verdict(),
            Slack(enabled=True, api_url=slack.api_url),
            store,
            credentials=Credentials(token=bad),
            backoff_s=0.01,
        )
    finally:
        logging.getLogger("slack_sdk").setLevel(logging.NOTSET)
    assert res.outcome == "failed" and res.attempts == 1  # a bad token is not worth retrying
    (ev,) = _events(store)
    assert "invalid_auth" in ev["detail"]
    assert bad not in ev["detail"] and bad not in caplog.text
    assert bad not in json.dumps(res.__dict__)


def test_no_credentials_skips(monkeypatch):
    cfg = Slack(enabled=True, token_env="SC_TEST_NO_TOKEN", webhook_env="SC_TEST_NO_HOOK")
    assert resolve_credentials(cfg, environ={}) == Credentials()
    assert resolve_credentials(cfg, environ={"SC_TEST_NO_TOKEN": "xoxb-1"}).token == "xoxb-1"
    res = post_verdict(_verdict(), cfg, credentials=Credentials())
    assert res.outcome == "skipped" and "SC_TEST_NO_TOKEN" in res.detail


def test_headline_kpis_put_what_needs_attention_first():
    kpis = [
        KPI(name="consumer_lag", scenario="points", value=0, unit="messages", band="target"),
        KPI(name="p95_ms", scenario="spike", value=300, unit="ms", band="target"),
        KPI(name="p95_ms.API-1", scenario="spike", value=300, unit="ms", band="target"),
        KPI(name="p95_ms", scenario="spike", value=300, unit="ms", band="target", phase="plateau"),
        KPI(name="db_pool_use", scenario="soak", value=0.8, unit="ratio", band="allowed"),
        KPI(name="error_rate", scenario="race", value=0.02, unit="ratio", band="action"),
        KPI(
            name="throughput_rps",
            scenario="soak",
            value=900,
            unit="req/s",
            band="target",
            previous=1000,
            regression=True,
        ),
    ]
    v = _verdict().model_copy(update={"kpis": kpis})
    text = build_message(v)["attachments"][0]["blocks"][0]["text"]["text"]
    lines = text.splitlines()[1:]
    assert [ln.split("*")[1] for ln in lines] == [
        "error_rate",
        "db_pool_use",
        "throughput_rps",
        "p95_ms",
        "consumer_lag",
    ]
    assert "regression" in lines[2] and "plateau" not in text and "API-1" not in text


def test_the_message_and_the_report_name_the_build_judged():
    """A regression must point at a build (issue 19): the build stored on the run heads both."""
    from tasks.report import render_html

    v = _verdict(Decision.APPROVE)
    assert "build" not in build_message(v)["blocks"][1]["text"]["text"]
    v.extra["build"] = "1.4.2"
    assert "run `20261126T020000Z-abc123`, build `1.4.2`" in build_message(v)["blocks"][1]["text"]["text"]
    assert "build <code style='color:#000'>1.4.2</code>" in render_html(v, None)
