"""Post the verdict to Slack (slack-sdk): a bot token (chat.postMessage + the headline chart) or a webhook.

The message is what the team reads in the morning, so it carries the decision with colour and emoji,
the banded KPIs with their change against the previous run, the failed checks, the remediations, and
where the full report is. Slack is a delivery channel, never a judge: a failure (5xx, timeout, rate
limit) is retried a few times, then recorded on the run as a `notify` event; it never fails the
campaign, and verdict.json is already written before we get here.

Credentials come from the environment (the variable names are in the profile's `slack` section) or,
under a Prefect server, from a Secret block named after the variable (`SLACK_BOT_TOKEN` →
`slack-bot-token`). They are never read from the profile file and never logged: error texts are
scrubbed of them before they are recorded.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_logger
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.webhook import WebhookClient

from soundcheck.models import KPI, Decision, Verdict
from soundcheck.profile import Profile, Slack
from tasks.history import fmt_change, fmt_shift, rel_change
from tasks.runs import RunContext

log = get_logger("soundcheck.notify")

#: Attachment colour bar and emoji per decision.
STYLE: dict[Decision, tuple[str, str, str]] = {
    Decision.APPROVE: ("#2EB67D", ":white_check_mark:", "Approve the deploy"),
    Decision.APPROVE_WITH_TUNING: ("#ECB22E", ":large_yellow_circle:", "Approve with tuning"),
    Decision.BLOCK: ("#E01E5A", ":no_entry:", "Block the deploy"),
    Decision.INCONCLUSIVE: ("#868686", ":grey_question:", "Inconclusive: could not measure"),
}
BAND_EMOJI = {"target": ":large_green_circle:", "allowed": ":large_yellow_circle:", "action": ":red_circle:"}

#: Slack API errors that a retry cannot fix: recorded at once instead of retried.
PERMANENT_ERRORS = frozenset(
    {
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "no_permission",
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "missing_scope",
        "invalid_blocks",
        "invalid_payload",
        "no_service",
        "no_team",
        "team_disabled",
        "action_prohibited",
    }
)
#: First retry delay; doubled per attempt (1 s, 2 s): Slack's 5xx and rate limits clear within seconds.
DEFAULT_BACKOFF_S = 1.0
MAX_KPI_LINES = 14
MAX_LIST_LINES = 8


class PermanentSlackError(RuntimeError):
    """Slack refused in a way a retry cannot fix (bad token, unknown channel, bad payload)."""


@dataclass
class Credentials:
    token: str | None = None
    webhook_url: str | None = None

    def secrets(self) -> list[str]:
        return [s for s in (self.token, self.webhook_url) if s]


@dataclass
class NotifyResult:
    """What happened; `outcome` is the events-table outcome (ok | failed | skipped)."""

    outcome: str
    via: str | None = None
    attempts: int = 0
    detail: str = ""
    channel: str | None = None
    ts: str | None = None
    chart_uploaded: bool = False
    errors: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- message


def _fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit in ("ratio", "share", "fraction") or (unit == "" and 0 <= value <= 1 and value != int(value)):
        return f"{value * 100:.2f} %"
    if unit == "%":
        return f"{value:.1f} %"
    if abs(value) >= 1000:
        text = f"{value:,.0f}"
    elif abs(value) >= 10 or value == int(value):
        text = f"{value:.0f}" if value == int(value) else f"{value:.1f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip()


def kpi_line(kpi: KPI) -> str:
    """`:large_green_circle: *p95_ms* spike — 812 ms · target · ↑ +16 % vs 701 ms` (the plan's dashboard style)."""
    where = kpi.scenario + (f"/{kpi.phase}" if kpi.phase else "")
    parts = [
        f"{BAND_EMOJI.get(kpi.band or '', ':white_circle:')} *{kpi.name}* {where} — {_fmt_value(kpi.value, kpi.unit)}",
        kpi.band or "no band",
    ]
    change = kpi.rel_change if kpi.rel_change is not None else rel_change(kpi.value, kpi.previous)
    if change is not None:
        parts.append(f"{fmt_change(change)} vs {_fmt_value(kpi.previous, kpi.unit)}")
    elif kpi.previous is None:
        parts.append("no previous run")
    if kpi.regression:
        parts.append(":warning: lasting regression" + (f" since run {kpi.shift.first_run}" if kpi.shift else ""))
    return " · ".join(parts)


#: The plan's R-GATE KPIs, in the order its table gives them, and the scenarios in the order readers care.
HEADLINE_KPIS = (
    "p95_ms",
    "throughput_rps",
    "error_rate",
    "db_pool_use",
    "consumer_lag",
    "saga_time_s",
    "compensation_success",
)
SCENARIO_ORDER = ("spike", "soak", "saga", "race", "points")


def _headline_kpis(kpis: list[KPI]) -> list[KPI]:
    """What needs attention first (action, then allowed band, then regressions), then the plan's gate KPIs
    on target; everything else (per endpoint, per phase, server details) lives in the report."""

    def where(k: KPI) -> tuple[int, int, str]:
        name_rank = HEADLINE_KPIS.index(k.name) if k.name in HEADLINE_KPIS else len(HEADLINE_KPIS)
        scen_rank = SCENARIO_ORDER.index(k.scenario) if k.scenario in SCENARIO_ORDER else len(SCENARIO_ORDER)
        return scen_rank, name_rank, k.phase or ""

    attention = [k for k in kpis if k.band in ("action", "allowed") or k.regression]
    attention.sort(key=lambda k: (0 if k.band == "action" else 1 if k.band == "allowed" else 2, *where(k)))
    rest = [k for k in kpis if k not in attention and k.band and k.name in HEADLINE_KPIS and not k.phase]
    return attention + sorted(rest, key=where)


def _list_section(
    title: str, lines: list[str], *, most: int = MAX_LIST_LINES, more: str = "more in the report"
) -> dict[str, Any]:
    """A titled list of at most `most` lines, then how many more the report has."""
    shown = lines[:most] + ([f"… and {len(lines) - most} {more}"] if len(lines) > most else [])
    return _section(title + "\n" + "\n".join(shown))


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text[:2990]}}


def build_message(verdict: Verdict, *, report_location: str | None = None) -> dict[str, Any]:
    """The Block Kit message: `text` (notification fallback), `blocks` (headline), `attachments` (coloured body)."""
    colour, emoji, meaning = STYLE[verdict.verdict]
    title = f"{emoji} soundcheck: {verdict.verdict.value} — {meaning}"
    failed = [c for c in verdict.checks if not c.passed]
    head = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": f"soundcheck {verdict.verdict.value}"[:150], "emoji": True},
        },
        _section(
            f"{emoji} *{meaning}* — profile `{verdict.profile}`, run `{verdict.run_id}`"
            + (f", build `{verdict.extra['build']}`" if verdict.extra.get("build") else "")
            + "\n"
            f"{len(verdict.checks) - len(failed)}/{len(verdict.checks)} checks passed, "
            f"{len(verdict.remediations)} remediation(s)"
        ),
    ]
    body: list[dict[str, Any]] = []
    headline = _headline_kpis(verdict.kpis)
    if headline:
        body.append(
            _list_section("*KPIs* (band · change vs previous run)", [kpi_line(k) for k in headline], most=MAX_KPI_LINES)
        )
    shifts = [k for k in verdict.kpis if k.shift is not None and k.shift.new]
    if shifts:
        shifts.sort(key=lambda k: (not k.regression, -abs(k.shift.rel_change) if k.shift else 0))
        marks = [":chart_with_upwards_trend:" if k.regression else ":information_source:" for k in shifts]
        body.append(
            _list_section(
                "*New lasting changes across nightly runs*",
                [f"{m} {fmt_shift(k)}" for m, k in zip(marks, shifts, strict=True)],
            )
        )
    if failed:
        lines = [f":x: *{c.id}* ({c.scenario}): observed {c.observed}; expected {c.expected}" for c in failed]
        body.append(_list_section("*Failed checks*", lines, more="more failed checks in the report"))
    elif verdict.checks:
        body.append(_section(f"*Checks*: all {len(verdict.checks)} passed"))
    if verdict.remediations:
        body.append(
            _list_section(
                "*Remediations*", [f":wrench: *{r.code}*: {r.reason} — {r.detail}" for r in verdict.remediations]
            )
        )
    if verdict.verification:
        from tasks.verify import fmt_verification

        marks = {"proven": ":white_check_mark:", "not proven": ":x:", "skipped": ":fast_forward:"}
        lines = [f"{marks.get(x.status, '')} {fmt_verification(x)}" for x in verdict.verification]
        body.append(_list_section("*Remediations re-tested*", lines))
    if verdict.sizing:
        from tasks.capacity import fmt_sizing

        body.append(_section(f":straight_ruler: {fmt_sizing(verdict.sizing)}"))
    reason = verdict.extra.get("reason") if verdict.extra else None
    if reason:
        body.append(_section(f"*Why the run is incomplete*: {reason}"))
    where = report_location or verdict.report
    context = [
        f"run `{verdict.run_id}`",
        f"profile `{verdict.profile}`",
        f"{verdict.started_at} → {verdict.finished_at}",
    ]
    if where:
        context.append(
            f"report: <{where}|{Path(str(where)).name}>" if str(where).startswith("http") else f"report: `{where}`"
        )
    body.append({"type": "context", "elements": [{"type": "mrkdwn", "text": " · ".join(context)[:2990]}]})
    text = f"{title} (profile {verdict.profile}, run {verdict.run_id})"
    return {"text": text, "blocks": head, "attachments": [{"color": colour, "fallback": text, "blocks": body}]}


# ---------------------------------------------------------------- credentials


def _secret_block_name(env_name: str) -> str:
    return env_name.lower().replace("_", "-")


def _from_secret_block(env_name: str) -> str | None:
    """A Prefect Secret block named after the variable, only when a Prefect API is configured (no ephemeral start)."""
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        return None
    try:
        from prefect.blocks.system import Secret

        value = str(Secret.load(_secret_block_name(env_name), _sync=True).get())  # type: ignore[call-arg]
    except Exception:  # noqa: BLE001 - a missing block just means "not configured"
        return None
    from soundcheck.redact import register_secret

    register_secret(value)  # masked in every log record from now on
    return value


def resolve_credentials(cfg: Slack, environ: dict[str, str] | None = None) -> Credentials:
    env = os.environ if environ is None else environ
    token = env.get(cfg.token_env) or None
    webhook = env.get(cfg.webhook_env) or None
    if token is None and webhook is None and environ is None:
        token = _from_secret_block(cfg.token_env)
        if token is None:
            webhook = _from_secret_block(cfg.webhook_env)
    return Credentials(token=token, webhook_url=webhook)


def scrub(text: str, secrets: list[str]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text


# ---------------------------------------------------------------- sending


def _api_base(cfg: Slack) -> str:
    base = cfg.api_url or WebClient.BASE_URL
    return base if base.endswith("/") else base + "/"


def _classify(exc: Exception) -> str:
    """transient | permanent."""
    if isinstance(exc, PermanentSlackError):
        return "permanent"
    if isinstance(exc, SlackApiError):
        status = getattr(exc.response, "status_code", 0) or 0
        error = (exc.response.get("error") if exc.response is not None else None) or ""
        if (
            status >= 500
            or status == 429
            or error in ("ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout")
        ):
            return "transient"
        return "permanent" if error in PERMANENT_ERRORS or 400 <= status < 500 else "transient"
    return "transient"  # timeouts, refused connections, URLError, SlackRequestError


def _describe(exc: Exception) -> str:
    if isinstance(exc, SlackApiError) and exc.response is not None:
        return f"HTTP {exc.response.status_code}: {exc.response.get('error') or 'error'}"
    return f"{type(exc).__name__}: {exc}"


def _send_bot(client: WebClient, channel: str, message: dict[str, Any]) -> tuple[str, str]:
    resp = client.chat_postMessage(
        channel=channel,
        text=message["text"],
        blocks=message["blocks"],
        attachments=message["attachments"],
        unfurl_links=False,
    )
    return str(resp.get("channel") or channel), str(resp.get("ts") or "")


def _send_webhook(client: WebhookClient, message: dict[str, Any]) -> None:
    resp = client.send(text=message["text"], blocks=message["blocks"], attachments=message["attachments"])
    if resp.status_code >= 500 or resp.status_code == 429:
        raise RuntimeError(f"webhook answered HTTP {resp.status_code}")
    if resp.status_code != 200:
        raise PermanentSlackError(f"webhook answered HTTP {resp.status_code}: {resp.body[:80]}")


def _with_retries(fn: Any, *, attempts: int, backoff_s: float, result: NotifyResult, what: str) -> Any:
    for attempt in range(1, attempts + 1):
        result.attempts += 1
        try:
            return fn()
        except (SlackClientError, OSError, RuntimeError) as exc:  # SlackApiError is a SlackClientError
            kind = _classify(exc)
            result.errors.append(f"{what} attempt {attempt}: {_describe(exc)} ({kind})")
            log.warning("Slack %s failed (attempt %d/%d, %s): %s", what, attempt, attempts, kind, _describe(exc))
            if kind == "permanent" or attempt == attempts:
                raise
            time.sleep(backoff_s * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def post_verdict(
    verdict: Verdict,
    cfg: Slack,
    *,
    report_location: str | None = None,
    chart_path: str | Path | None = None,
    credentials: Credentials | None = None,
    attempts: int = 3,
    backoff_s: float | None = None,
    timeout_s: int = 10,
) -> NotifyResult:
    """Send the verdict; never raises. Bot token wins over webhook when both are set."""
    backoff_s = DEFAULT_BACKOFF_S if backoff_s is None else backoff_s
    creds = credentials or resolve_credentials(cfg)
    if not creds.token and not creds.webhook_url:
        return NotifyResult("skipped", detail=f"no Slack credentials: set {cfg.token_env} or {cfg.webhook_env}")
    from soundcheck.redact import redact_json

    # a reason or remediation may quote an error that carried a secret: the message is redacted whole
    message = redact_json(build_message(verdict, report_location=report_location))
    result = NotifyResult("failed")
    secrets = creds.secrets()
    try:
        if creds.token:
            result.via = "bot"
            # Our own retry loop decides what is transient; slack-sdk's handlers would retry twice over.
            client = WebClient(token=creds.token, base_url=_api_base(cfg), timeout=timeout_s, retry_handlers=[])
            result.channel, result.ts = _with_retries(
                lambda: _send_bot(client, cfg.channel, message),
                attempts=attempts,
                backoff_s=backoff_s,
                result=result,
                what="chat.postMessage",
            )
            result.outcome, result.detail = "ok", f"posted to {cfg.channel} via bot token"
            if cfg.upload_chart and chart_path and Path(chart_path).is_file():
                try:
                    _with_retries(
                        lambda: client.files_upload_v2(
                            channel=result.channel,
                            thread_ts=result.ts or None,
                            file=str(chart_path),
                            filename=Path(chart_path).name,
                            title=f"soundcheck {verdict.run_id}: headline chart",
                        ),
                        attempts=attempts,
                        backoff_s=backoff_s,
                        result=result,
                        what="files_upload_v2",
                    )
                    result.chart_uploaded = True
                    result.detail += ", chart uploaded"
                except Exception as exc:  # noqa: BLE001 - the message is out; a missing chart is noted, not fatal
                    result.detail += f", chart upload failed ({_describe(exc)})"
        else:
            result.via = "webhook"
            hook = WebhookClient(url=str(creds.webhook_url), timeout=timeout_s, retry_handlers=[])
            _with_retries(
                lambda: _send_webhook(hook, message),
                attempts=attempts,
                backoff_s=backoff_s,
                result=result,
                what="webhook",
            )
            result.outcome, result.detail = "ok", "posted via incoming webhook"
    except Exception as exc:  # noqa: BLE001 - Slack must never fail the campaign
        result.outcome = "failed"
        result.detail = f"Slack {result.via} failed after {result.attempts} attempt(s): {_describe(exc)}"
    result.detail = scrub(result.detail, secrets)
    result.errors = [scrub(e, secrets) for e in result.errors]
    return result


def notify_and_record(
    verdict: Verdict,
    cfg: Slack,
    engine: Any,
    *,
    report_location: str | None = None,
    chart_path: str | Path | None = None,
    **kwargs: Any,
) -> NotifyResult:
    """post_verdict, then one `notify` event on the run with the outcome (the run keeps what Slack did)."""
    from soundcheck.store import record_event

    result = post_verdict(verdict, cfg, report_location=report_location, chart_path=chart_path, **kwargs)
    detail = result.detail + (f" [{'; '.join(result.errors)}]" if result.errors and result.outcome != "ok" else "")
    try:
        record_event(engine, verdict.run_id, "notify", result.outcome, detail)
    except Exception as exc:  # noqa: BLE001 - a store hiccup must not fail the campaign either
        log.warning("could not record the notify event: %s", exc)
    (log.info if result.outcome == "ok" else log.warning)("Slack: %s — %s", result.outcome, result.detail)
    return result


@task(name="notify", cache_policy=NO_CACHE)
def send_verdict(verdict: Verdict, profile: Profile, run: RunContext, store_ok: bool = True) -> str:
    """Post the verdict to Slack; never fails the campaign (even a store that cannot take the event is
    only logged). Retries happen inside (transient errors only), so the final failure is recorded.

    Without the result store (`store_ok=False`) the message still goes out, with no history to compare
    against: an in-memory store stands in for it. Returns the outcome and why, one sentence
    (`skipped — Slack is not enabled …`), for the verdict artifact: nothing about Slack is silent.
    """
    from soundcheck import store
    from tasks.publish import report_path
    from tasks.runs import reason, record

    try:
        if not profile.slack.enabled:
            why = f"Slack is not enabled in profile {profile.name} (slack.enabled: false); the verdict was not posted"
            log.warning(why)
            if store_ok:
                record(run, "notify", "skipped", why)
            return f"skipped — {why}"
        report = report_path(verdict, run.run_dir)
        chart = Path(run.run_dir) / "headline.png"
        engine = store.open_store(run.store_url if store_ok else "sqlite://")
        try:
            res = notify_and_record(
                verdict,
                profile.slack,
                engine,
                report_location=str(report) if report else verdict.report,
                chart_path=str(chart) if chart.exists() else None,
            )
            return f"{res.outcome} — {res.detail}"
        finally:
            engine.dispose()
    except Exception as exc:  # noqa: BLE001
        log.error("notify step failed: %s", reason(exc))
        return f"failed — {reason(exc)}"
