"""Secrets (Slack token and webhook, AWS keys, admin token) never reach logs or written files."""

from __future__ import annotations

import io
import json
import logging

import pytest

from soundcheck.redact import (
    MASK,
    RedactingFilter,
    find_secrets,
    install_redaction,
    redact,
    redact_json,
    redact_tree,
    register_profile_secrets,
)

SLACK_BOT = "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"
SLACK_USER = "xoxp-1111-2222-3333-abcdefabcdef"
WEBHOOK = "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX"
AWS_ID = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
ADMIN = "adm-7f3c9e1b2d4a"


@pytest.fixture
def fake_env(monkeypatch):
    monkeypatch.setenv("SLACK_BOT_TOKEN", SLACK_BOT)
    monkeypatch.setenv("SLACK_WEBHOOK_URL", WEBHOOK)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AWS_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    monkeypatch.setenv("SOUNDCHECK_ADMIN_TOKEN", ADMIN)
    monkeypatch.setenv("MY_ODD_NAME", "plain-value-42")  # not secret-named: left alone


def test_shapes_are_masked_without_any_environment():
    text = (
        f"bot {SLACK_BOT} user {SLACK_USER} hook {WEBHOOK} key {AWS_ID} "
        "db mysql+pymysql://app:s3cr3tpw@10.0.0.1:3306/x ok postgresql://postgres@127.0.0.1/test"
    )
    out = redact(text)
    for s in (SLACK_BOT, SLACK_USER, WEBHOOK, AWS_ID, "s3cr3tpw"):
        assert s not in out
    assert "mysql+pymysql://app:***@10.0.0.1" in out
    assert "postgresql://postgres@127.0.0.1/test" in out  # no password: unchanged
    assert out.count(MASK) == 5


def test_env_secrets_are_masked_by_value(fake_env):
    out = redact(f"aws secret {AWS_SECRET}; admin header X-Admin-Token: {ADMIN}; other plain-value-42")
    assert AWS_SECRET not in out and ADMIN not in out
    assert "plain-value-42" in out


def test_profile_named_secret_variables(monkeypatch):
    from soundcheck.profile import parse_profile

    monkeypatch.setenv("OPS_CHAT_CRED", "chat-credential-xyz")
    monkeypatch.setenv("TARGET_ADMIN", "target-admin-abc")
    p = parse_profile(
        {"name": "x", "slack": {"token_env": "OPS_CHAT_CRED"}, "target": {"admin_token_env": "TARGET_ADMIN"}}
    )
    assert "chat-credential-xyz" in redact("t chat-credential-xyz")
    register_profile_secrets(p)
    out = redact("t chat-credential-xyz a target-admin-abc")
    assert "chat-credential-xyz" not in out and "target-admin-abc" not in out


def test_json_and_files(fake_env, tmp_path):
    verdict = {"run_id": "r", "remediations": [{"detail": f"posted with {SLACK_BOT}"}], WEBHOOK: 1}
    clean = redact_json(verdict)
    assert SLACK_BOT not in json.dumps(clean) and WEBHOOK not in json.dumps(clean)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "report.html").write_text(f"<p>{ADMIN}</p>")
    (tmp_path / "ok.txt").write_text("nothing here")
    (tmp_path / "blob.bin").write_bytes(b"\xff\xfe\x00" + AWS_SECRET.encode())
    changed = redact_tree(tmp_path)
    assert changed == [tmp_path / "sub" / "report.html"]
    hits = find_secrets(tmp_path, [SLACK_BOT, ADMIN, AWS_SECRET])
    assert hits == [(tmp_path / "blob.bin", AWS_SECRET)]  # the scan sees binary files too


def test_logging_filter_masks_message_args_and_traceback(fake_env):
    buf = io.StringIO()
    h = logging.StreamHandler(buf)
    h.addFilter(RedactingFilter())
    lg = logging.getLogger("test_safety_secrets.filter")
    lg.addHandler(h)
    lg.propagate = False
    lg.setLevel(logging.INFO)
    try:
        lg.info("posting to %s with %s", WEBHOOK, SLACK_BOT)
        try:
            raise RuntimeError(f"auth failed for {AWS_SECRET}")
        except RuntimeError:
            lg.exception("boto3 said %s", AWS_ID)
    finally:
        lg.removeHandler(h)
    out = buf.getvalue()
    assert "posting to *** with ***" in out and "RuntimeError" in out
    for s in (WEBHOOK, SLACK_BOT, AWS_SECRET, AWS_ID):
        assert s not in out


def test_install_redaction_covers_loggers_configured_later(fake_env):
    install_redaction()
    buf = io.StringIO()
    lg = logging.getLogger("some.library.configured.later")
    h = logging.StreamHandler(buf)  # no filter on this handler: the record factory already redacted
    lg.addHandler(h)
    lg.propagate = False
    lg.setLevel(logging.INFO)
    try:
        lg.warning("token=%s admin=%s", SLACK_BOT, ADMIN)
    finally:
        lg.removeHandler(h)
    assert buf.getvalue().strip() == "token=*** admin=***"
