"""Secrets never reach logs, reports, artifacts or verdict.json.

Two kinds of secret are masked:
- shapes that are secret wherever they appear: Slack tokens (`xoxb-…`, `xoxp-…`, `xapp-…`), Slack
  webhook URLs, AWS access key ids (`AKIA…`, `ASIA…`), passwords inside URLs (`scheme://user:PASS@host`);
- values of secret-named environment variables (`*TOKEN*`, `*SECRET*`, `*PASSWORD*`, `*WEBHOOK*`,
  `*_KEY`, plus the profile's `token_env`/`webhook_env`/`admin_token_env` and anything passed to
  `register_secret`) — an AWS secret access key or an admin token has no recognisable shape, so it is
  masked by value.

`install_redaction()` wraps the logging record factory, so every record of every logger (Prefect's
included, and loggers configured later) is redacted when it is created, and adds `RedactingFilter` to
the handlers that exist. `redact_json` / `redact_file` / `redact_tree` clean what is written to disk;
`find_secrets` is the scan the tests (and a cautious campaign) run over every output.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

MASK = "***"

_SHAPES = [
    re.compile(r"xox[abposre]-[A-Za-z0-9-]{6,}"),
    re.compile(r"xapp-[A-Za-z0-9-]{6,}"),
    re.compile(r"https://hooks\.slack(?:-gov)?\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/+-]+"),
    re.compile(r"\b(?:AKIA|ASIA|AROA|AIDA)[0-9A-Z]{16}\b"),
]
_URL_PASSWORD = re.compile(r"(?P<pre>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]+:)(?P<pw>[^@/\s]+)(?=@)")
_SECRET_NAME = re.compile(
    r"TOKEN|SECRET|PASSWORD|PASSWD|WEBHOOK|CREDENTIAL|(?:^|_)(?:API_)?KEY$|PRIVATE_KEY", re.IGNORECASE
)
#: Values shorter than this are not masked by value (an env var `X_TOKEN=1` would mask every digit 1).
MIN_SECRET_LEN = 6
#: Env names that look secret but are not (paths, ids).
_NOT_SECRET = re.compile(r"_(?:ENV|FILE|PATH|ID|REGION|ENDPOINT|URL_ENV)$|^AWS_ACCESS_KEY_ID$", re.IGNORECASE)

_extra_names: set[str] = set()
_extra_values: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None = None, *, env: str | None = None) -> None:
    """Treat a value (or the value of an environment variable, read at each redaction) as a secret."""
    with _lock:
        if value and len(value) >= MIN_SECRET_LEN:
            _extra_values.add(value)
        if env:
            _extra_names.add(env)


def register_profile_secrets(profile: Any) -> None:
    """The environment variables a profile names for its secrets (Slack token/webhook, admin token)."""
    register_secret(env=profile.slack.token_env)
    register_secret(env=profile.slack.webhook_env)
    register_secret(env=profile.target.admin_token_env)


def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    """Every value to mask by value, longest first (so a secret containing another is masked whole)."""
    env = os.environ if environ is None else environ
    with _lock:
        names, values = set(_extra_names), set(_extra_values)
    for k, v in env.items():
        if not v or len(v) < MIN_SECRET_LEN:
            continue
        if k in names or (_SECRET_NAME.search(k) and not _NOT_SECRET.search(k)):
            values.add(v)
    return sorted(values, key=len, reverse=True)


def redact(text: str, extra: Iterable[str] = ()) -> str:
    """`text` with every secret replaced by ***."""
    if not text:
        return text
    for v in [*sorted((e for e in extra if e and len(e) >= MIN_SECRET_LEN), key=len, reverse=True), *secret_values()]:
        if v in text:
            text = text.replace(v, MASK)
    for rx in _SHAPES:
        text = rx.sub(MASK, text)
    return _URL_PASSWORD.sub(lambda m: m.group("pre") + MASK, text)


def redact_json(obj: Any) -> Any:
    """A JSON-like structure with every string (keys included) redacted."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {redact(k) if isinstance(k, str) else k: redact_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [redact_json(v) for v in obj]
    return obj


def redact_file(path: str | Path) -> bool:
    """Rewrite a text file with its secrets masked; returns whether it changed. Binary files are left."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return False
    clean = redact(text)
    if clean == text:
        return False
    p.write_text(clean, encoding="utf-8")
    return True


def redact_tree(root: str | Path) -> list[Path]:
    """Redact every text file under `root` (the run's output folder); returns the files changed."""
    return [p for p in sorted(Path(root).rglob("*")) if p.is_file() and redact_file(p)]


def find_secrets(root: str | Path, secrets: Iterable[str]) -> list[tuple[Path, str]]:
    """Every (file, secret) where a secret occurs under `root`, in text or binary files (SQLite stores…)."""
    needles = [s for s in secrets if s]
    hits: list[tuple[Path, str]] = []
    for p in sorted(Path(root).rglob("*")):
        if not p.is_file():
            continue
        data = p.read_bytes()
        for s in needles:
            if s.encode() in data or s.encode("utf-16-le") in data:
                hits.append((p, s))
    return hits


# ------------------------------------------------------------------------------------------- logging


def _redact_record(record: logging.LogRecord) -> logging.LogRecord:
    if getattr(record, "_soundcheck_redacted", False):
        return record
    try:
        msg = record.getMessage()
    except Exception:  # a broken format string: keep the raw parts, redacted
        msg = f"{record.msg} {record.args!r}"
    record.msg = redact(msg)
    record.args = None
    if record.exc_info and not record.exc_text:
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
    elif record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    record._soundcheck_redacted = True
    return record


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in the message, its arguments and any traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        _redact_record(record)
        return True


_installed = False
_filter = RedactingFilter()


def install_redaction(
    logger_names: Iterable[str] = ("", "prefect", "soundcheck", "flows", "tasks", "infra"), profile: Any = None
) -> None:
    """Redact every log record from now on; idempotent. Call at the start of a campaign."""
    global _installed
    if profile is not None:
        register_profile_secrets(profile)
    with _lock:
        if not _installed:
            previous = logging.getLogRecordFactory()

            def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
                # Only the message is redacted here; exc_info is formatted by the handler filter.
                rec = previous(*args, **kwargs)
                if rec.args or (isinstance(rec.msg, str) and rec.msg):
                    try:
                        msg = rec.getMessage()
                    except Exception:
                        return rec
                    rec.msg, rec.args = redact(msg), None
                return rec

            logging.setLogRecordFactory(factory)
            _installed = True
    names = set(logger_names)
    names.update(n for n in logging.root.manager.loggerDict if n.split(".")[0] in names)
    for name in names:
        lg = logging.getLogger(name)
        if _filter not in lg.filters:
            lg.addFilter(_filter)
        for h in lg.handlers:
            if _filter not in h.filters:
                h.addFilter(_filter)


def redacted_json_dumps(obj: Any, **kwargs: Any) -> str:
    """json.dumps of a redacted copy (verdict.json, artifacts)."""
    return json.dumps(redact_json(obj), **kwargs)
