"""The morning read in Prefect: the verdict at a glance (the final state's name), readable artifacts on the
flow run, a report link that opens (S3 through moto in server mode), and nothing about Slack silent."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
import yaml

from soundcheck.models import KPI, Check, Decision, Remediation, Verdict
from soundcheck.profile import parse_profile
from tasks.artifacts import dashboard, final_state, kpi_table, report_link, verdict_markdown
from tests.moto_fixture import moto_url, session  # noqa: F401 - fixture

KPIS = [
    KPI(
        name="p95_ms",
        scenario="spike",
        value=812.3456,
        unit="ms",
        band="target",
        previous=701.0,
        rel_change=812.3456 / 701 - 1,
    ),
    KPI(name="p95_ms.API-1", scenario="spike", value=300.0, unit="ms", band="target"),
    KPI(name="db_pool_use", scenario="spike", value=0.88, unit="ratio", band="action"),
    KPI(name="requests", scenario="spike", value=123456.0, unit="count"),
    KPI(name="redis_memory_bytes", scenario="soak", value=300 * 1024**2, unit="bytes", band="target"),
]


def _verdict(decision: Decision = Decision.BLOCK) -> Verdict:
    return Verdict(
        run_id="r1",
        profile="local",
        started_at="t0",
        finished_at="t1",
        verdict=decision,
        kpis=KPIS,
        checks=[
            Check(id="R-RACE-1", scenario="race", passed=False, observed="2 sold", expected="1"),
            Check(id="R-SPIKE-1", scenario="spike", passed=True, observed="", expected=""),
        ],
        remediations=[Remediation(code="raise_db_pool", reason="pool 88 %", detail="5 → 10")],
        report="report.html",
        extra={"build": "abc123"},
    )


@pytest.mark.parametrize(
    ("decision", "kind"),
    [
        (Decision.APPROVE, "COMPLETED"),
        (Decision.APPROVE_WITH_TUNING, "COMPLETED"),
        (Decision.BLOCK, "FAILED"),
        (Decision.INCONCLUSIVE, "FAILED"),
    ],
)
def test_the_final_state_is_named_after_the_verdict(decision, kind):
    s = final_state(_verdict(decision), {"verdict": decision.value})
    assert s.name == decision.value and s.type.value == kind and s.message.startswith(decision.value)
    assert s.result(raise_on_failure=False) == {"verdict": decision.value}


def test_kpi_table_puts_gated_kpis_first_rounded_with_band_and_change():
    rows = kpi_table(_verdict())
    assert [r["KPI"] for r in rows][:3] == ["db_pool_use", "p95_ms", "p95_ms.API-1"]
    assert rows[0]["band"] == "🔴 action" and rows[-1]["band"] == "⚪ no band"
    p95 = rows[1]
    assert p95["value"] == "812.3 ms" and p95["change"] == "↑ +16 %" and p95["previous"] == "701 ms"
    assert rows[3]["value"] == "300 MB" and rows[-1]["value"] == "123,456 count"


def test_verdict_artifact_reads_like_the_report_top_and_says_what_slack_did():
    text = verdict_markdown(
        _verdict(),
        report="`/x/report.html` on host `h`",
        verdict_json="`/x/verdict.json`",
        notified="skipped — Slack is not enabled in profile local (slack.enabled: false)",
    )
    assert text.startswith("# BLOCK") and "build `abc123`" in text
    assert "| p95 response time | spike | 812.3 ms | 🟢 target | ↑ +16 % |" in text
    assert "| DB pool in use | spike | 88.0% | 🔴 action |" in text
    assert "❌ **R-RACE-1**" in text and "**raise_db_pool**" in text
    assert "**Slack**: skipped — Slack is not enabled" in text
    assert "```json" not in text  # no raw dump; verdict.json is named
    assert [label for label, _ in dashboard(_verdict())] == ["p95 response time", "DB pool in use", "Redis memory"]


def test_without_storage_the_link_says_where_the_file_is(tmp_path):
    (tmp_path / "report.html").write_text("<html>r</html>")
    url, text = report_link(_verdict(), tmp_path, parse_profile({"name": "x"}))
    assert url is None and str(tmp_path / "report.html") in text and "on host" in text and "file://" not in text


def test_with_storage_the_report_is_uploaded_and_the_presigned_link_opens(tmp_path, moto_url, monkeypatch):  # noqa: F811
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    bucket = f"reports-{uuid.uuid4().hex[:8]}"  # moto's backends are per process, shared by every moto server
    session().client("s3", endpoint_url=moto_url).create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "ap-northeast-2"}
    )
    (tmp_path / "report.html").write_text("<html><h1 id=verdict>BLOCK</h1></html>")
    (tmp_path / "headline.png").write_bytes(b"\x89PNG")
    prof = parse_profile(
        {
            "name": "x",
            "report_storage": {
                "bucket": bucket,
                "endpoint_url": moto_url,
                "region": "ap-northeast-2",
                "expires_s": 3600,
            },
        }
    )
    url, text = report_link(_verdict(), tmp_path, prof)
    assert url and "X-Amz-Expires=3600" in url and "expires in" in text
    r = httpx.get(url)
    assert r.status_code == 200 and "BLOCK" in r.text and r.headers["content-type"].startswith("text/html")
    bad = parse_profile(
        {"name": "x", "report_storage": {"bucket": "missing", "endpoint_url": moto_url, "region": "ap-northeast-2"}}
    )
    url, text = report_link(_verdict(), tmp_path, bad)
    assert url is None and "upload to s3://missing failed" in text


@pytest.mark.slow
def test_a_real_run_shows_its_verdict_artifacts_and_task_inputs_in_prefect(prefect_harness, tmp_path):
    """One small real campaign: the run's state is named after its verdict, the artifacts hang off the flow
    run, and every task input is one the UI can render (a task run, a parameter or a constant)."""
    from prefect.client.orchestration import get_client

    from flows.campaign import campaign
    from soundcheck.paths import ROOT

    data = yaml.safe_load((ROOT / "deployments" / "local.yaml").read_text())
    data.update(
        name="ui-test",
        scenarios=["points"],
        scale=0.02,
        time_scale=0.02,
        store_url=f"sqlite:///{tmp_path}/store.db",
        output_dir=str(tmp_path / "runs"),
    )
    data["environment"]["local"]["seed_users"] = 700
    prof = tmp_path / "p.yaml"
    prof.write_text(yaml.safe_dump(data))
    state = campaign(profile=str(prof), notify=True, output=str(tmp_path / "out"), return_state=True)
    body = state.result(raise_on_failure=False)
    assert state.name == body["verdict"] == "APPROVE" and state.is_completed()

    async def read():
        async with get_client() as c:
            from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter
            from prefect.client.schemas.filters import FlowRunFilterParentFlowRunId as Parent

            fr = state.state_details.flow_run_id
            mine = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[fr]))
            arts = await c.read_artifacts(artifact_filter=mine)
            runs = await c.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [fr]}))
            kids = await c.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id=Parent(any_=[fr])))
            return arts, runs, kids

    arts, task_runs, _ = asyncio.run(read())
    by_key = {a.key: a for a in arts}
    assert {"campaign-verdict", "campaign-kpis"} <= set(by_key)
    assert all(a.task_run_id is None for a in arts)  # on the flow run itself
    md = by_key["campaign-verdict"].data
    assert md.startswith("# APPROVE") and "**Slack**: skipped — Slack is not enabled" in md
    judge = next(t for t in task_runs if t.name.startswith("judge"))
    kinds = {i.input_type for inputs in judge.task_inputs.values() for i in inputs}
    assert kinds <= {"task_run", "parameter", "constant"}, judge.task_inputs
