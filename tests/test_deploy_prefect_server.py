"""The real Prefect path: a server on loopback, `prefect deploy` of deployments/prefect.yaml, a run
triggered the way the UI's Run button does it (create_flow_run_from_deployment), a process worker
running it, and the verdict read back from the run's artifact.

Everything runs in its own PREFECT_HOME with its own SQLite database and a free port, and every
process it starts is stopped at the end.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from soundcheck.paths import ROOT

PREFECT = [sys.executable, "-m", "prefect"]


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
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": api,
           "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
           "PREFECT_LOGGING_LEVEL": "INFO", "PREFECT_CLI_PROMPT": "false"}
    env.pop("PREFECT_PROFILES_PATH", None)
    log = open(home / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
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
        yield {"api": api, "env": env, "home": home}
    finally:
        _stop(proc)
        log.close()


def _cli(args: list[str], env: dict[str, str], timeout: float = 120) -> str:
    res = subprocess.run([*PREFECT, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"prefect {' '.join(args)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


def test_deployments_file_shape():
    doc = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    deps = {d["name"]: d for d in doc["deployments"]}
    assert set(deps) == {"nightly", "manual"}
    (sched,) = deps["nightly"]["schedules"]
    assert sched["cron"] == "0 2 * * *" and sched["timezone"] == "Asia/Seoul"
    assert deps["nightly"]["parameters"]["scale"] == 1.0 and deps["nightly"]["parameters"]["time_scale"] == 1.0
    assert not deps["manual"]["schedules"]
    for d in deps.values():
        assert d["entrypoint"] == "flows/campaign.py:campaign" and d["work_pool"]["name"] == "soundcheck"


@pytest.mark.slow
def test_manual_run_from_the_ui_path(prefect_server, tmp_path):
    env = prefect_server["env"]
    t0 = time.monotonic()
    _cli(["work-pool", "create", "soundcheck", "--type", "process"], env)
    _cli(["--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"], env, timeout=180)
    deployed_s = time.monotonic() - t0

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # The default local profile (the worker starts the reference service), results kept in tmp_path.
    profile = tmp_path / "profile.yaml"
    data = yaml.safe_load((ROOT / "deployments" / "local.yaml").read_text())
    data.update(name="prefect-server-test", store_url=f"sqlite:///{tmp_path}/store.db",
                output_dir=str(tmp_path / "runs"))
    profile.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    with temporary_settings({PREFECT_API_URL: prefect_server["api"]}), get_client(sync_client=True) as client:
        nightly = client.read_deployment_by_name("campaign/nightly")
        (sched,) = nightly.schedules
        assert sched.schedule.cron == "0 2 * * *" and sched.schedule.timezone == "Asia/Seoul" and sched.active
        manual = client.read_deployment_by_name("campaign/manual")
        assert not manual.schedules and manual.work_pool_name == "soundcheck"
        props = manual.parameter_openapi_schema["properties"]
        for name in ("profile", "scenarios", "scale", "time_scale", "target", "notify", "output"):
            assert props[name].get("description"), f"parameter {name} has no description in the UI form"
            assert name in manual.parameters, f"parameter {name} has no default in the deployment"

        # What the UI's Run button does: create a flow run from the deployment with the form's values.
        run = client.create_flow_run_from_deployment(
            manual.id, parameters={"profile": str(profile), "scenarios": ["points"], "scale": 0.02,
                                   "time_scale": 0.05, "notify": False, "output": str(out)})
        t_run = time.monotonic()
        worker = subprocess.run([*PREFECT, "worker", "start", "--pool", "soundcheck", "--run-once",
                                 "--type", "process"], env=env, cwd=ROOT, capture_output=True, text=True,
                                timeout=240)
        run_s = time.monotonic() - t_run
        fr = client.read_flow_run(run.id)
        assert fr.state is not None and fr.state.is_final(), worker.stdout[-3000:] + worker.stderr[-3000:]
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]), key=ArtifactFilterKey(any_=["campaign-verdict"])))
    assert arts, f"no verdict artifact; state {fr.state}\n{worker.stdout[-3000:]}\n{worker.stderr[-3000:]}"
    body = json.loads(re.search(r"```json\n(.*?)\n```", arts[0].data, re.S).group(1))
    on_disk = json.loads((out / "verdict.json").read_text())
    assert body == on_disk
    assert body["profile"] == "prefect-server-test"
    assert body["verdict"] in ("APPROVE", "APPROVE_WITH_TUNING", "BLOCK", "INCONCLUSIVE")
    print(f"deploy {deployed_s:.1f} s; worker run {run_s:.1f} s; state {fr.state.name}; verdict {body['verdict']}")
    # Pausing the nightly schedule, as docs/running.md says.
    listing = _cli(["deployment", "schedule", "ls", "campaign/nightly"], env)
    sched_id = re.search(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", listing).group(0)
    _cli(["deployment", "schedule", "pause", "campaign/nightly", sched_id], env)
    with temporary_settings({PREFECT_API_URL: prefect_server["api"]}), get_client(sync_client=True) as client:
        assert not client.read_deployment_by_name("campaign/nightly").schedules[0].active
    if fr.state.is_failed():  # the failure contract: an INCONCLUSIVE verdict that says why
        assert body["verdict"] == "INCONCLUSIVE" and body["remediations"][0]["code"] == "fix_test_environment"
    else:
        assert fr.state.is_completed() and body["extra"]["run_status"] == "COMPLETED"
        assert (out / "report.html").exists()
    Path(tmp_path / "worker.log").write_text(worker.stdout + worker.stderr)
