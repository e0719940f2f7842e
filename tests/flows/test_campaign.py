"""The campaign flow's orchestration rules: exit 2 before any load on a bad profile or a host off the
allowlist; a failure part-way leaves an inspectable run (rows kept, INCOMPLETE with the reason, an
INCONCLUSIVE verdict written and sent, Prefect state Failed with the reason); teardown always runs;
Slack failing never changes the verdict or the exit status.

The provisioner and a stage are replaced by test doubles here so that the failure is certain and
fast; the real end-to-end campaign is in test_flow_e2e.py.
"""

from __future__ import annotations

import json
import types

import pytest
import yaml
from sqlalchemy import select

import flows.campaign  # noqa: F401 - Prefect configures its log handlers at import: not inside a capsys test
from soundcheck import store
from soundcheck.paths import ROOT
from tests.slack_standin import VALID_TOKEN, SlackStandIn


@pytest.fixture(scope="module")
def harness(prefect_harness):
    """The session's Prefect test server (tests/conftest.py)."""
    yield


def _profile(tmp_path, **extra) -> str:
    data = {
        "name": "flow-test",
        "scenarios": ["race", "saga"],
        "scale": 0.02,
        "time_scale": 0.05,
        "store_url": f"sqlite:///{tmp_path}/store.db",
        "output_dir": str(tmp_path / "runs"),
        **extra,
    }
    p = tmp_path / "profile.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


def test_bad_profile_exits_2_with_one_sentence(tmp_path, capsys):
    from soundcheck.cli import run_campaign as run_from_cli

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nscenarios: [race]\ncolour: blue\n")
    assert run_from_cli(profile=bad, notify=False) == 2
    err = capsys.readouterr().err
    assert "unknown key 'colour'" in err and err.count("\n") == 1
    assert run_from_cli(profile=_profile(tmp_path), scenarios=["stress"], notify=False) == 2
    assert "unknown scenario 'stress'" in capsys.readouterr().err


def test_target_off_the_allowlist_exits_2_before_any_request(tmp_path, capsys, monkeypatch):
    from flows import campaign as c
    from soundcheck.cli import run_campaign

    called = []
    monkeypatch.setattr(c, "campaign", lambda **kw: called.append(kw))
    assert run_campaign(profile=_profile(tmp_path), target="http://10.20.30.40:8080", notify=False) == 2
    assert "10.20.30.40" in capsys.readouterr().err
    assert not called  # the flow (and so any provisioning or load) never started
    assert not (tmp_path / "store.db").exists()


class _FakeStack:
    """Stands in for the provisioner: records teardown, answers nowhere."""

    torn_down: list[str] = []

    def __init__(self) -> None:
        self.base_url = "http://127.0.0.1:9"  # discard port: nothing listens
        self.metrics_url = None
        self.database_url = None
        self.admin_token = None


def _fake_provisioner(monkeypatch, fail: bool = False) -> None:
    """The provision and teardown tasks run as they are; the provisioner they call is a stand-in."""

    def provision(profile, run_dir):
        if fail:
            raise ImportError("provisioner not importable (configuration error, not retried)")
        stack = _FakeStack()
        return types.SimpleNamespace(endpoints=stack, handle=stack)

    def teardown(handle):
        _FakeStack.torn_down.append(handle.base_url)

    monkeypatch.setattr("tasks.provision.provision", provision)
    monkeypatch.setattr("tasks.provision.teardown", teardown)


@pytest.fixture
def failing_race(monkeypatch):
    """The race stage crashes part-way, after writing a scenario row (what a real crash leaves)."""
    from prefect import flow

    from flows import stages

    @flow(name="stage-race")
    def race(profile, run, env):
        engine = store.open_store(run.store_url)
        sid = store.start_scenario(engine, run.run_id, "race")
        store.record_event(engine, run.run_id, "error", "failed", f"scenario run {sid} crashed")
        engine.dispose()
        raise RuntimeError("k6 runner lost its output file")

    monkeypatch.setitem(stages.STAGES, "race", race)
    _fake_provisioner(monkeypatch)
    _FakeStack.torn_down.clear()


def _run_row(db: str) -> dict:
    engine = store.open_store(f"sqlite:///{db}")
    with engine.connect() as c:
        row = dict(c.execute(select(store.runs)).one()._mapping)
        row["scenario_runs"] = [dict(r._mapping) for r in c.execute(select(store.scenario_runs))]
        row["events"] = [dict(r._mapping) for r in c.execute(select(store.events))]
    engine.dispose()
    return row


def test_failure_part_way_is_inspectable_and_torn_down(harness, tmp_path, failing_race, monkeypatch, capsys):
    from flows.campaign import campaign
    from soundcheck.cli import run_campaign as run_from_cli
    from tasks.runs import CampaignIncomplete

    with SlackStandIn() as slack:
        monkeypatch.setenv("SC_TEST_SLACK_TOKEN", VALID_TOKEN)
        prof = _profile(tmp_path, slack={"enabled": True, "api_url": slack.api_url, "token_env": "SC_TEST_SLACK_TOKEN"})
        out = tmp_path / "out"
        state = campaign(profile=prof, notify=True, output=str(out), return_state=True)
        assert state.is_failed()
        assert "k6 runner lost its output file" in state.message
        exc = state.result(raise_on_failure=False)
        assert isinstance(exc, CampaignIncomplete)

        verdict = json.loads((out / "verdict.json").read_text())
        assert verdict["verdict"] == "INCONCLUSIVE"
        assert verdict["remediations"][0]["code"] == "fix_test_environment"
        assert "k6 runner lost its output file" in verdict["remediations"][0]["reason"]
        row = _run_row(tmp_path / "store.db")
        assert row["status"] == "INCOMPLETE" and "k6 runner lost its output file" in row["reason"]
        assert row["verdict"] == "INCONCLUSIVE"
        assert [s["scenario"] for s in row["scenario_runs"]] == ["race"]  # saga never started
        assert any(e["kind"] == "error" for e in row["events"])  # what the stage wrote is kept
        assert _FakeStack.torn_down == ["http://127.0.0.1:9"]  # teardown ran after the failure
        # The verdict was still sent.
        (post,) = slack.calls_to("chat.postMessage")
        assert "INCONCLUSIVE" in json.dumps(post.json["blocks"])
        assert any(e["kind"] == "notify" and e["outcome"] == "ok" for e in row["events"])

        # The CLI path: same run, exit status of INCONCLUSIVE, verdict and where it is printed.
        capsys.readouterr()
        assert run_from_cli(profile=prof, notify=False, output=tmp_path / "out2") == 30
        printed = capsys.readouterr().out
        assert "verdict: INCONCLUSIVE" in printed and str(tmp_path / "out2" / "verdict.json") in printed


def test_slack_down_never_changes_the_verdict(harness, tmp_path, failing_race, monkeypatch):
    from soundcheck.cli import run_campaign as run_from_cli

    monkeypatch.setattr("tasks.notify.DEFAULT_BACKOFF_S", 0.05)
    with SlackStandIn() as slack:
        slack.fail("chat.postMessage", times=10, status=503)
        monkeypatch.setenv("SC_TEST_SLACK_TOKEN", VALID_TOKEN)
        prof = _profile(tmp_path, slack={"enabled": True, "api_url": slack.api_url, "token_env": "SC_TEST_SLACK_TOKEN"})
        assert run_from_cli(profile=prof, notify=True, output=tmp_path / "out") == 30
        assert len(slack.calls_to("chat.postMessage")) == 3  # retried, then given up
    verdict = json.loads((tmp_path / "out" / "verdict.json").read_text())
    assert verdict["verdict"] == "INCONCLUSIVE"
    notify = [e for e in _run_row(tmp_path / "store.db")["events"] if e["kind"] == "notify"]
    assert notify and notify[0]["outcome"] == "failed" and "503" in notify[0]["detail"]
    assert VALID_TOKEN not in notify[0]["detail"]


def test_provision_config_error_is_not_retried_and_still_gives_a_verdict(harness, tmp_path, monkeypatch):
    from soundcheck.cli import run_campaign as run_from_cli

    _fake_provisioner(monkeypatch, fail=True)
    _FakeStack.torn_down.clear()
    assert run_from_cli(profile=_profile(tmp_path), notify=False, output=tmp_path / "out") == 30
    row = _run_row(tmp_path / "store.db")
    assert row["status"] == "INCOMPLETE" and "provisioner not importable" in row["reason"]
    assert row["scenario_runs"] == []
    assert _FakeStack.torn_down == []  # nothing was provisioned, nothing to tear down


def _children_of_me() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True)}


@pytest.mark.slow
def test_campaign_end_to_end_on_the_reference_service(harness, tmp_path, capsys):
    """The real thing at small scale: local stack, k6, ingest, snapshot, KPIs, GX, decision tree, report."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from soundcheck.cli import run_campaign as run_from_cli
    from soundcheck.models import EXIT_CODES, Decision

    before = _children_of_me()
    prof = tmp_path / "profile.yaml"
    base = yaml.safe_load((ROOT / "deployments" / "local.yaml").read_text())
    base.update(store_url=f"sqlite:///{tmp_path}/store.db", output_dir=str(tmp_path / "runs"))
    base["slack"] = {"enabled": False}
    prof.write_text(yaml.safe_dump(base))
    out = tmp_path / "out"
    # points + saga: the race's fixed gaps cost ~20 s, and the fault matrix's healthy runs cover it.
    code = run_from_cli(
        profile=prof, scenarios=["points", "saga"], scale=0.02, time_scale=0.05, output=out, notify=True
    )
    printed = capsys.readouterr().out
    verdict = json.loads((out / "verdict.json").read_text())
    assert code == EXIT_CODES[Decision(verdict["verdict"])]
    assert f"verdict: {verdict['verdict']}" in printed and str(out / "report.html") in printed
    assert (out / "report.html").stat().st_size > 10_000 and (out / "headline.png").exists()
    row = _run_row(tmp_path / "store.db")
    assert row["status"] == "COMPLETED" and row["verdict"] == verdict["verdict"]
    assert [(s["scenario"], s["status"]) for s in row["scenario_runs"]] == [
        ("points", "COMPLETED"),
        ("saga", "COMPLETED"),
    ]
    assert {c["id"] for c in verdict["checks"]} >= {"R-POINT-1", "R-SAGA-1", "R-SAGA-4"}
    assert any(e["kind"] == "notify" and e["outcome"] == "skipped" for e in row["events"])
    with get_client(sync_client=True) as client:

        def artifacts(key: str) -> list:
            return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))

        mine = [a for a in artifacts("campaign-verdict") if verdict["run_id"] in (a.data or "")]
        assert mine and artifacts("campaign-kpis")
        # no report storage in this profile: no link artifact, the verdict says where the file is instead
        assert str(out / "report.html") in mine[0].data and "on host" in mine[0].data
    assert _children_of_me() <= before, "the campaign left processes behind"
    failed = [f"{c['id']}: {c['observed']}" for c in verdict["checks"] if not c["passed"]]
    assert verdict["verdict"] == "APPROVE", f"the healthy reference service must pass: {failed}"


def test_slack_token_from_a_prefect_secret_block(harness, monkeypatch):
    from prefect.blocks.system import Secret

    from soundcheck.profile import Slack
    from soundcheck.redact import redact
    from tasks.notify import resolve_credentials

    token = "xoxb-from-secret-block-0001"
    Secret(value=token).save("sc-test-block-token", overwrite=True)
    monkeypatch.delenv("SC_TEST_BLOCK_TOKEN", raising=False)
    creds = resolve_credentials(Slack(enabled=True, token_env="SC_TEST_BLOCK_TOKEN", webhook_env="SC_TEST_NO_HOOK"))
    assert creds.token == token
    assert token not in redact(f"token is {token}")


ABORT_REASON = "aborted on harm: error rate 58.9 % above the alarm level 1.0 %"


@pytest.fixture
def aborting_race(monkeypatch):
    """The race stage is stopped on harm, as `flows.stages.run_stage` leaves it: stage and run ABORTED."""
    from prefect import flow

    from flows import stages

    @flow(name="stage-race")
    def race(profile, run, env):
        engine = store.open_store(run.store_url)
        sid = store.start_scenario(engine, run.run_id, "race")
        store.finish_scenario(engine, sid, "ABORTED", reason=ABORT_REASON)
        store.finish_run(engine, run.run_id, "ABORTED", reason=ABORT_REASON)
        engine.dispose()
        raise stages.StageAborted(ABORT_REASON)

    monkeypatch.setitem(stages.STAGES, "race", race)
    _fake_provisioner(monkeypatch)
    _FakeStack.torn_down.clear()


def _judge_run_giving(monkeypatch, decision: str, seen: list):
    """The verdict stage stands in: it records the run row it is given and answers `decision`."""
    from soundcheck.models import Check, Decision, Remediation, Verdict

    def judge_run(engine, run_id, profile, run_dir, **kw):
        with engine.connect() as c:
            seen.append(dict(c.execute(select(store.runs.c.status, store.runs.c.reason)).one()._mapping))
        failed = [Check(id="R-RACE-4", scenario="race", passed=False, observed="37 × 500", expected="no 5xx")]
        return Verdict(
            run_id=run_id,
            profile=profile.name,
            started_at="",
            finished_at="",
            verdict=Decision(decision),
            checks=failed if decision == "BLOCK" else [],
            remediations=[Remediation(code="fix_code_and_retest", reason="R-RACE-4 failed", detail="")]
            if decision == "BLOCK"
            else [],
        )

    monkeypatch.setattr("tasks.verdict_stage.judge_run", judge_run)


def test_abort_on_harm_is_judged_and_the_run_stays_aborted(harness, tmp_path, aborting_race, monkeypatch, capsys):
    """What a stage stopped on harm measured is evidence: the run is judged (here BLOCK, R-RACE-4), its
    row stays ABORTED with the breach, later scenarios do not run, and the exit status is the verdict's."""
    from soundcheck.cli import run_campaign as run_from_cli

    seen: list = []
    _judge_run_giving(monkeypatch, "BLOCK", seen)
    assert run_from_cli(profile=_profile(tmp_path), notify=False, output=tmp_path / "out") == 20
    printed = capsys.readouterr()
    assert "verdict: BLOCK" in printed.out and ABORT_REASON in printed.err
    assert seen == [{"status": "ABORTED", "reason": ABORT_REASON}]  # judged as aborted, not COMPLETED
    v = json.loads((tmp_path / "out" / "verdict.json").read_text())
    assert v["verdict"] == "BLOCK" and [c["id"] for c in v["checks"] if not c["passed"]] == ["R-RACE-4"]
    assert [r["code"] for r in v["remediations"]] == ["fix_code_and_retest"]
    assert v["extra"] == {"status": "ABORTED", "reason": ABORT_REASON}
    row = _run_row(tmp_path / "store.db")
    assert (row["status"], row["verdict"], row["reason"]) == ("ABORTED", "BLOCK", ABORT_REASON)
    assert [s["scenario"] for s in row["scenario_runs"]] == ["race"]  # the saga never started
    assert _FakeStack.torn_down == ["http://127.0.0.1:9"]


def test_an_aborted_run_never_approves(harness, tmp_path, aborting_race, monkeypatch):
    from soundcheck.cli import run_campaign as run_from_cli

    _judge_run_giving(monkeypatch, "APPROVE", [])
    assert run_from_cli(profile=_profile(tmp_path), notify=False, output=tmp_path / "out") == 30
    v = json.loads((tmp_path / "out" / "verdict.json").read_text())
    assert v["verdict"] == "INCONCLUSIVE" and v["extra"]["status"] == "ABORTED"
    assert "fix_test_environment" in [r["code"] for r in v["remediations"]]
    row = _run_row(tmp_path / "store.db")
    assert (row["status"], row["verdict"], row["reason"]) == ("ABORTED", "INCONCLUSIVE", ABORT_REASON)
