"""The real Prefect path: a server on loopback, `prefect deploy` of deployments/prefect.yaml, a run
triggered the way the UI's Run button does it (create_flow_run_from_deployment), a process worker
running it, and the verdict read back from the run's artifact; then the morning read in the real UI, driven
in headless Chromium (issue 17): a run submitted from the Custom run form, its verdict in the runs list, the
dashboard in its artifact, its report link opening (S3 storage on moto) and its Task Runs tab.

Everything runs in its own PREFECT_HOME with its own SQLite database and a free port, and every
process it starts is stopped at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from soundcheck.paths import ROOT
from soundcheck.prefect_server import own_server_env
from tests.moto_fixture import REGION, moto_url, session  # noqa: F401 - fixture

PREFECT = [sys.executable, "-m", "prefect"]
#: One worker of a parallel suite runs the whole module: one server, and the generators' pool loses a worker
#: only in its last test.
pytestmark = pytest.mark.xdist_group("prefect-server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    env = own_server_env(home, port, PREFECT_UI_ENABLED="true", PREFECT_LOGGING_LEVEL="INFO")
    api = env["PREFECT_API_URL"]
    env.pop("PREFECT_PROFILES_PATH", None)
    log = open(home / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    t0 = time.monotonic()
    try:
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() - t0 > 120:
                raise RuntimeError("Prefect server did not start: " + (home / "server.log").read_text()[-2000:])
            time.sleep(0.3)
        print(f"prefect server up in {time.monotonic() - t0:.1f} s")
        yield {"api": api, "env": env, "home": home, "ui": f"http://127.0.0.1:{port}"}
    finally:
        _stop(proc)
        log.close()


def _cli(args: list[str], env: dict[str, str], timeout: float = 120) -> str:
    res = subprocess.run([*PREFECT, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"prefect {' '.join(args)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


def _ensure_pool(name: str, env: dict[str, str]) -> None:
    """A process work pool, created unless an earlier test of this module's server made it already."""
    subprocess.run(
        [*PREFECT, "work-pool", "create", name, "--type", "process"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=120,
    )


def test_deployments_file_shape():
    doc = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    deps = {d["name"]: d for d in doc["deployments"]}
    assert set(deps) == {"nightly", "nightly-staging", "weekly-sizing", "manual", "verify", "soundcheck-generators"}
    gen = deps.pop("soundcheck-generators")  # the generators' deployment: named after its own pool (k6.work_pool)
    assert gen["entrypoint"] == "flows/segment.py:k6_segment" and gen["work_pool"]["name"] == "soundcheck-generators"
    assert "schedules" not in gen
    staging = deps["nightly-staging"]
    assert staging["parameters"]["build"] == "latest" and staging["parameters"]["profile"] == "deployments/staging.yaml"
    assert staging["schedules"][0]["active"] is False  # on once a team fills in its app and the billable flag
    (weekly,) = deps["weekly-sizing"]["schedules"]
    assert weekly["cron"] == "0 4 * * 0" and deps["weekly-sizing"]["parameters"]["sizing"] is True
    (sched,) = deps["nightly"]["schedules"]
    assert sched["cron"] == "0 2 * * *" and sched["timezone"] == "Asia/Seoul"
    assert deps["nightly"]["parameters"]["scale"] == 1.0 and deps["nightly"]["parameters"]["time_scale"] == 1.0
    assert not deps["manual"]["schedules"]
    for d in deps.values():
        assert d["entrypoint"] in ("flows/campaign.py:campaign", "flows/verify.py:verify")
        assert d["work_pool"]["name"] == "soundcheck"


@pytest.mark.slow
def test_manual_run_from_the_ui_path(prefect_server, tmp_path):
    env = prefect_server["env"]
    t0 = time.monotonic()
    _cli(["work-pool", "create", "soundcheck", "--type", "process"], env)
    _cli(["work-pool", "create", "soundcheck-generators", "--type", "process"], env)
    _cli(["--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"], env, timeout=180)
    deployed_s = time.monotonic() - t0

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # The default local profile (the worker starts the reference service), results kept in tmp_path.
    profile = tmp_path / "profile.yaml"
    data = yaml.safe_load((ROOT / "deployments" / "local.yaml").read_text())
    data.update(
        name="prefect-server-test", store_url=f"sqlite:///{tmp_path}/store.db", output_dir=str(tmp_path / "runs")
    )
    profile.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    with temporary_settings({PREFECT_API_URL: prefect_server["api"]}), get_client(sync_client=True) as client:
        nightly = client.read_deployment_by_name("campaign/nightly")
        (sched,) = nightly.schedules
        assert sched.schedule.cron == "0 2 * * *" and sched.schedule.timezone == "Asia/Seoul" and sched.active
        manual = client.read_deployment_by_name("campaign/manual")
        assert not manual.schedules and manual.work_pool_name == "soundcheck"
        props = manual.parameter_openapi_schema["properties"]
        for name in ("profile", "scenarios", "scale", "time_scale", "target", "notify", "output", "build"):
            assert props[name].get("description"), f"parameter {name} has no description in the UI form"
            assert name in manual.parameters, f"parameter {name} has no default in the deployment"

        # What the UI's Run button does: create a flow run from the deployment with the form's values.
        run = client.create_flow_run_from_deployment(
            manual.id,
            parameters={
                "profile": str(profile),
                "scenarios": ["points"],
                "scale": 0.02,
                "time_scale": 0.05,
                "notify": False,
                "output": str(out),
            },
        )
        t_run = time.monotonic()
        worker = subprocess.run(
            [*PREFECT, "worker", "start", "--pool", "soundcheck", "--run-once", "--type", "process"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=240,
        )
        run_s = time.monotonic() - t_run
        fr = client.read_flow_run(run.id)
        assert fr.state is not None and fr.state.is_final(), worker.stdout[-3000:] + worker.stderr[-3000:]
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]), key=ArtifactFilterKey(any_=["campaign-verdict"])
            )
        )
    assert arts, f"no verdict artifact; state {fr.state}\n{worker.stdout[-3000:]}\n{worker.stderr[-3000:]}"
    body = json.loads((out / "verdict.json").read_text())
    assert arts[0].data.startswith(f"# {body['verdict']}") and str(out / "verdict.json") in arts[0].data
    assert body["profile"] == "prefect-server-test"
    assert fr.state.name == body["verdict"]  # the verdict at a glance
    assert body["verdict"] in ("APPROVE", "APPROVE_WITH_TUNING", "BLOCK", "INCONCLUSIVE")
    print(f"deploy {deployed_s:.1f} s; worker run {run_s:.1f} s; state {fr.state.name}; verdict {body['verdict']}")
    # Pausing the nightly schedule, as docs/running.md says.
    listing = _cli(["deployment", "schedule", "ls", "campaign/nightly"], env)
    sched_id = re.search(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", listing).group(0)
    _cli(["deployment", "schedule", "pause", "campaign/nightly", sched_id], env)
    with temporary_settings({PREFECT_API_URL: prefect_server["api"]}), get_client(sync_client=True) as client:
        assert not client.read_deployment_by_name("campaign/nightly").schedules[0].active
    if fr.state.is_failed() and body["verdict"] == "INCONCLUSIVE":  # the failure contract: it says why
        assert body["remediations"][0]["code"] == "fix_test_environment"
    else:
        assert fr.state.is_completed() and body["extra"]["run_status"] == "COMPLETED"
        assert (out / "report.html").exists()
    if fr.state.is_failed() and body["verdict"] == "BLOCK":  # a BLOCK is a Failed run named BLOCK
        assert body["extra"]["run_status"] == "COMPLETED"
    Path(tmp_path / "worker.log").write_text(worker.stdout + worker.stderr)


# ------------------------------------------------------------------------------------ the morning read


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_morning_read_in_the_real_ui(prefect_server, moto_url, tmp_path, monkeypatch):  # noqa: F811
    """Submit a small run from the deployment's Custom run form in headless Chromium, let a process worker
    run it, then read it as a person would: the verdict in the runs list, the dashboard in the verdict
    artifact, the report link opening, the Task Runs tab listing the tasks. Screenshots go to tmp_path
    (and to docs/img when SOUNDCHECK_DOCS_SHOTS is set)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    pw = pytest.importorskip("playwright.sync_api")
    env = {**prefect_server["env"], "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    bucket = f"reports-{uuid.uuid4().hex[:8]}"  # moto's backends are per process, shared by every moto server
    session().client("s3", endpoint_url=moto_url).create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    _ensure_pool("soundcheck", env)
    _cli(["--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--name", "manual"], env, timeout=180)
    data = yaml.safe_load((ROOT / "deployments" / "local.yaml").read_text())
    data.update(
        name="ui-test",
        store_url=f"sqlite:///{tmp_path}/store.db",
        output_dir=str(tmp_path / "runs"),
        report_storage={"bucket": bucket, "endpoint_url": moto_url, "region": REGION, "expires_s": 3600},
    )
    data["environment"]["local"]["seed_users"] = 700
    profile = tmp_path / "ui-profile.yaml"
    profile.write_text(yaml.safe_dump(data))
    shots = Path(os.environ["SOUNDCHECK_DOCS_SHOTS"]) if os.environ.get("SOUNDCHECK_DOCS_SHOTS") else tmp_path
    ui = prefect_server["ui"]
    worker_log = open(tmp_path / "worker.log", "w")  # noqa: SIM115 - closed below
    worker = subprocess.Popen(
        [*PREFECT, "worker", "start", "--pool", "soundcheck", "--type", "process"],
        env=env,
        cwd=ROOT,
        stdout=worker_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        with pw.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(30_000)
            # the Custom run form: our profile, only the points scenario, the quick scale it defaults to
            page.goto(f"{ui}/deployments")
            page.get_by_text("manual", exact=True).first.click()
            page.get_by_role("button", name="Run", exact=True).click()
            page.get_by_text("Custom run").first.click()
            page.get_by_text("profile (Optional)").wait_for()
            page.locator("textarea").first.fill(str(profile))
            for name in ("race", "saga", "spike", "soak"):
                page.locator(".p-tag", has_text=name).locator(".p-tag__dismiss").click()
            page.screenshot(path=str(shots / "prefect-custom-run.png"), full_page=True)
            page.get_by_role("button", name="Submit").click()
            run_id = _wait_for_run(prefect_server["api"], deadline_s=480, log=tmp_path / "worker.log")
            # the runs list: the verdict without a click
            page.goto(f"{ui}/runs")
            page.get_by_text("APPROVE", exact=True).first.wait_for()
            page.screenshot(path=str(shots / "prefect-runs.png"))
            # the run page: artifacts attached to the flow run, the verdict artifact reads like the report
            page.goto(f"{ui}/runs/flow-run/{run_id}")
            page.get_by_text("APPROVE", exact=True).first.wait_for()
            page.screenshot(path=str(shots / "prefect-run-page.png"))
            page.get_by_text("Artifacts", exact=True).first.click()
            page.get_by_text("campaign-verdict").first.click()
            page.get_by_text("Dashboard (plan §4.3)").wait_for()
            assert page.get_by_text("p95 response time").count() >= 1
            assert page.get_by_text("Slack is not enabled", exact=False).count() >= 1
            page.screenshot(path=str(shots / "prefect-verdict-artifact.png"), full_page=True)
            # the report link opens (a presigned S3 URL, here moto's)
            data = _artifact(prefect_server["api"], run_id, "campaign-report")
            assert data is not None, "no report link artifact"
            link = re.search(r"\((https?://[^)]+)\)", data).group(1)  # the link artifact is Markdown: [text](url)
            report = browser.new_page()
            report.goto(link)
            assert report.locator("#verdict-banner").get_attribute("data-verdict") == "APPROVE"
            report.screenshot(path=str(shots / "report-top.png"))
            # the Task Runs tab lists the tasks
            page.goto(f"{ui}/runs/flow-run/{run_id}")
            page.get_by_text("Task Runs", exact=True).first.click()
            page.get_by_text("judge", exact=False).first.wait_for()
            assert page.get_by_text("No task runs").count() == 0
            browser.close()
    finally:
        _stop(worker)
        worker_log.close()


def _wait_for_run(api: str, deadline_s: float, log: Path) -> str:
    """The newest flow run of campaign/manual, once final."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    t0 = time.monotonic()
    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name("campaign/manual")
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

        while time.monotonic() - t0 < deadline_s:
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))
            runs = [r for r in runs if r.parameters.get("profile", "").endswith("ui-profile.yaml")]
            if runs and runs[0].state is not None and runs[0].state.is_final():
                return str(runs[0].id)
            time.sleep(2)
    raise AssertionError(f"the run did not finish in {deadline_s:.0f} s:\n{log.read_text()[-3000:]}")


def _artifact(api: str, run_id: str, key: str) -> str | None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]), key=ArtifactFilterKey(any_=[key])
            )
        )
    return arts[0].data if arts else None


# ------------------------------------------------------------------------------- generators on workers


@pytest.fixture(scope="module")
def generator_pool(prefect_server, tmp_path_factory):
    """Two process workers on the soundcheck-generators pool (deployment k6-segment/soundcheck-generators) and a
    PostgreSQL result store: issue 14's "two process workers" on the real engine."""
    from soundcheck import store
    from soundcheck.paths import venv_bin
    from tests.sut_harness import postgres_url

    if venv_bin("k6") is None:
        pytest.skip("k6 binary not installed")
    url = postgres_url("generators")
    if url is None:
        pytest.skip("no PostgreSQL reachable on 127.0.0.1:5432")
    env = prefect_server["env"]
    _ensure_pool("soundcheck-generators", env)
    _cli(
        ["--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--name", "soundcheck-generators"],
        env,
        timeout=180,
    )
    folder = tmp_path_factory.mktemp("generators")
    logs = [open(folder / f"worker{i}.log", "w") for i in (1, 2)]  # noqa: SIM115 - closed below
    workers = [
        subprocess.Popen(
            [*PREFECT, "worker", "start", "--pool", "soundcheck-generators", "--type", "process", "--limit", "1"]
            + ["--name", f"generator-{i}"],
            env=env,
            cwd=ROOT,
            stdout=logs[i - 1],
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for i in (1, 2)
    ]
    engine = store.open_store(url)
    store.start_run(engine, "run-pool", "test", scale=0.02, time_scale=1, scenarios=["race"], target=None)
    try:
        yield {"engine": engine, "url": url, "workers": workers, "folder": folder}
    finally:
        for w in workers:
            _stop(w)
        for f in logs:
            f.close()
        engine.dispose()


def _split(pool, sut, scenario: str, out: Path, env: dict[str, str] | None = None):
    """`scenario` against `sut` as two segments, one per worker of `generator_pool`."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.load import LoadRequest
    from tasks.segments import PoolDispatch, run_segmented
    from tests.sut_harness import ADMIN

    with temporary_settings({PREFECT_API_URL: pool["api"]}):
        return run_segmented(
            pool["engine"],
            "run-pool",
            LoadRequest(
                scenario,
                sut.base,
                output_dir=out,
                env=env or {},
                admin_token=ADMIN["X-Admin-Token"],
                progress=False,
                scale=0.02,
            ),
            2,
            dispatch=PoolDispatch("soundcheck-generators"),
            pickup_timeout_s=240,
            store_url=pool["url"],
        )


def _worker_logs(pool) -> str:
    return "".join((pool["folder"] / f"worker{i}.log").read_text()[-1500:] for i in (1, 2))


def _k6_of(script: str) -> list:
    import psutil

    found = []
    for p in psutil.Process().children(recursive=True):  # this test's own (the workers are its children)
        with contextlib.suppress(psutil.Error):
            if p.name() == "k6" and script in " ".join(p.cmdline()):
                found.append(p)
    return found


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_stage_split_across_two_process_workers(prefect_server, generator_pool, tmp_path):
    """Issue 14 on the real engine: the race's 100 users on one seat, split in two k6 segments, each a flow run
    of k6-segment/soundcheck-generators picked up by its own process worker, merged in a PostgreSQL store:
    the single-process answers (1 × 200, 99 × 409), one common release, and no k6 left behind."""
    from collections import Counter

    from sqlalchemy import select

    from soundcheck import store
    from soundcheck.models import ScenarioStatus
    from tasks.kpis import compute_kpis
    from tests.sut_harness import run_sut

    pool = {**generator_pool, "api": prefect_server["api"]}
    engine = pool["engine"]
    with run_sut(tmp_path, seed_users=600, seed_seats=400) as sut:
        r = _split(
            pool,
            sut,
            "race",
            tmp_path / "out",
            {"TC_GAP_MS": "3500", "TC3_ROUND_GAP_MS": "2500", "RELEASE_DELAY_MS": "2000"},
        )
    assert r.status == ScenarioStatus.COMPLETED, f"{r.reason}\n{_worker_logs(pool)}"
    assert [s["state"] for s in r.details["segments"]] == ["DONE", "DONE"]
    with engine.connect() as c:
        reqs = c.execute(select(store.requests).where(store.requests.c.scenario_run_id == r.scenario_run_id)).all()
    by = Counter((q.name, q.status) for q in reqs if q.endpoint == "API-3")
    assert by[("tc1", 200)] == 1 and by[("tc1", 409)] == 99 and by[("tc2", 200)] == 100
    k = {(x.name, x.phase): x.value for x in compute_kpis(engine, r.scenario_run_id)}
    print(
        f"pickup {r.details['pickup_s']} s; resume spread {r.details['resume_spread_ms']} ms; "
        f"TC-1 release spread {k[('tc1_release_spread_ms', None)]:.1f} ms"
    )
    assert 0 <= k[("tc1_release_spread_ms", None)] < 250
    assert not _k6_of("race.js")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_worker_killed_mid_stage_is_named_and_leaves_no_k6(prefect_server, generator_pool, tmp_path):
    """Issue 14's failure case on the real engine: mid-spike, the worker holding segment 0 (the one that also
    runs teardown, so its k6 lingers) is killed outright with the flow run it was executing. Its heartbeat
    stops; the stage ends K6_CRASHED naming that generator, the other part is stopped, and no k6 is left
    (setpriv's death signal ends the orphaned k6)."""
    import psutil

    from soundcheck.models import ScenarioStatus
    from tests.sut_harness import run_sut

    pool = {**generator_pool, "api": prefect_server["api"]}
    killed: list[int] = []
    orphan: list = []

    def kill_segment_0() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            k6 = [p for p in _k6_of("spike.js") if "0:1/2" in " ".join(p.cmdline())]
            if k6 and psutil.Process(k6[0].pid).status() != psutil.STATUS_ZOMBIE:
                cmd = k6[0].cmdline()
                api = f"http://{cmd[cmd.index('--address') + 1]}/v1/status"
                while time.monotonic() < deadline:  # until the campaign has resumed it: the load is on
                    with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                        if not httpx.get(api, timeout=2).json()["data"]["attributes"]["paused"]:
                            break
                    time.sleep(0.2)
                time.sleep(5)  # well into the stage
                generator = k6[0].parent()  # the flow run's process (setpriv exec'd k6 in its place)
                worker = next(w for w in pool["workers"] if w.pid in {a.pid for a in generator.parents()})
                orphan.append(k6[0])  # no longer this test's descendant once its parent is gone
                for proc in (worker.pid, generator.pid):
                    os.kill(proc, signal.SIGKILL)
                    killed.append(proc)
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_segment_0, daemon=True)
    killer.start()
    with run_sut(tmp_path, seed_users=600, seed_seats=400) as sut:
        r = _split(pool, sut, "spike", tmp_path / "out")
    killer.join(5)
    assert killed, f"segment 0's k6 never appeared\n{_worker_logs(pool)}"
    print(f"killed worker + flow run {killed}: {r.status.value}: {r.reason}")
    assert r.status == ScenarioStatus.K6_CRASHED, r.reason
    assert "generator 1/2" in r.reason and "died during the run" in r.reason, r.reason
    deadline = time.monotonic() + 30
    while _k6_of("spike.js") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [p for p in _k6_of("spike.js") if p.status() != psutil.STATUS_ZOMBIE]

    def gone(p) -> bool:
        try:
            return p.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    while not all(gone(p) for p in orphan) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert all(gone(p) for p in orphan), "the killed generator's k6 outlived it"
