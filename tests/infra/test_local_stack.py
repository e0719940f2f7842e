"""The local stack comes up from nothing, re-tests after a remediation, and leaves nothing behind.

Embedded defaults always; MariaDB, PostgreSQL and a Redis server when reachable on loopback (skipped
otherwise). Orphans are checked with psutil; a crashed campaign (SIGKILL) is cleaned up by the guardian.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import httpx
import psutil
import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import DBAPIError

from infra.local_stack import LocalStack
from infra.processes import ProcessSet, StackInUse, port_open, reap_stale
from soundcheck.paths import ROOT
from soundcheck.profile import parse_profile


def _reachable(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _profile(**local):
    return parse_profile({"name": "stack-test", "environment": {"local": {"seed_users": 50, **local}}})


def _stack_pids(stack: LocalStack) -> list[int]:
    pids = []
    for child in stack.procs.children.values():
        pids.append(child.pgid)
        with contextlib.suppress(psutil.Error):
            pids += [p.pid for p in psutil.Process(child.pgid).children(recursive=True)]
    return pids


def _all_gone(pids: list[int], timeout_s: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    alive = pids
    while time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return []
        time.sleep(0.1)
    return alive


def _metric(url: str, name: str) -> float | None:
    for line in httpx.get(url, timeout=5).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def _wait_metric(url: str, name: str, want: float, timeout_s: float = 15.0) -> float | None:
    """Each worker refreshes its own pool gauge on an interval: wait until the sum settles."""
    deadline = time.monotonic() + timeout_s
    got = _metric(url, name)
    while got != want and time.monotonic() < deadline:
        time.sleep(0.2)
        got = _metric(url, name)
    return got


@pytest.mark.slow
def test_embedded_defaults_from_nothing_then_remediation_then_clean_teardown(tmp_path):
    stack = LocalStack(_profile(workers=2), tmp_path / "run")
    try:
        ep = stack.start()
        assert ep.base_url.startswith("http://127.0.0.1:")
        health = httpx.get(ep.base_url + "/health", timeout=5).json()
        assert health["status"] == "ok" and health["db"] == "sqlite" and health["workers"] == 2
        assert health["bus"] == "kafka" and ep.extra["bus"] == "kafka (tansu)"  # the bundled broker
        # seeded: concert 1 is listed
        concerts = httpx.get(ep.base_url + "/api/v1/concerts/", timeout=5)
        assert concerts.status_code == 200 and "1" in concerts.text
        # the campaign's database URL reads and cannot write
        eng = create_engine(ep.database_url)
        with eng.connect() as c:
            wallets = c.execute(text("SELECT COUNT(*) FROM point_wallet")).scalar()
            assert wallets == 50  # seed_users
            tables = set(inspect(c).get_table_names())
            assert {"reservation", "seat", "payment", "payment_outbox", "queue_token"} <= tables
            with pytest.raises(DBAPIError):
                c.execute(text("DELETE FROM seat"))
        eng.dispose()
        assert _wait_metric(ep.metrics_url, "sut_db_pool_size", 10) == 10  # 5 per worker, summed over 2
        pids = _stack_pids(stack)
        assert len(pids) >= 4  # redis, uvicorn master, 2 workers

        # remediation: pool 5 -> 10 (and the concert cache on); only the service restarts, data kept
        old_sut = stack.sut_pid
        ep2 = stack.apply_settings({"db_pool_size": 10, "concert_cache": True})
        assert ep2.base_url == ep.base_url and stack.sut_pid != old_sut
        assert _wait_metric(ep.metrics_url, "sut_db_pool_size", 20) == 20
        with eng.connect() as c:  # kept across the restart (not re-seeded, not reset)
            assert c.execute(text("SELECT COUNT(*) FROM point_wallet")).scalar() == wallets
        eng.dispose()
        pids += _stack_pids(stack)
        with pytest.raises(ValueError, match="unknown reference-service setting 'db_pool'"):
            stack.apply_settings({"db_pool": 7})
        applied = []
        stack.apply_settings = lambda changes, reset_data=False: applied.append(changes)  # no third restart
        stack.apply_remediation("shorten_outbox_interval")
        assert applied == [{"outbox_interval_seconds": 2.0}]
        with pytest.raises(ValueError, match="'upgrade_db_instance' is not a reference-service setting"):
            stack.apply_remediation("upgrade_db_instance")
    finally:
        stack.stop()
    assert _all_gone(pids) == []
    assert not port_open("127.0.0.1", int(ep.base_url.rsplit(":", 1)[1]))
    assert not port_open("127.0.0.1", int(ep.redis_url.rsplit(":", 1)[1].split("/")[0]))
    assert not port_open("127.0.0.1", int(ep.extra["kafka_bootstrap"].rsplit(":", 1)[1]))
    assert not (tmp_path / "run" / "stack" / "processes.json").exists()
    stack.stop()  # twice is fine


def test_without_a_runnable_broker_the_saga_falls_back_to_redis_streams_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("SOUNDCHECK_KAFKA_BROKER_BIN", str(tmp_path / "no-such-tansu"))
    with pytest.raises(RuntimeError, match="environment.local.bus is kafka but the Tansu binary .* does not run"):
        LocalStack(_profile(bus="kafka"), tmp_path / "strict").start()
    stack = LocalStack(_profile(), tmp_path / "run")
    try:
        ep = stack.start()
        assert httpx.get(ep.base_url + "/health", timeout=5).json()["bus"] == "redis-streams"
        assert ep.extra["bus"] == "redis-streams" and "kafka_bootstrap" not in ep.extra
        assert stack.bus_note.startswith("Redis Streams instead of Kafka: the Tansu binary")
    finally:
        stack.stop()


def test_a_killed_campaign_leaves_no_orphans(tmp_path):
    """SIGKILL skips atexit: the guardian process must kill the stack's groups."""
    script = textwrap.dedent(f"""
        import json, os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        from infra.local_stack import LocalStack
        from soundcheck.profile import parse_profile
        p = parse_profile({{"name": "crash", "environment": {{"local": {{"seed_users": 20}}}}}})
        st = LocalStack(p, {str(tmp_path / "crash")!r})
        ep = st.start()
        pids = [c.pgid for c in st.procs.children.values()]
        print(json.dumps({{"pids": pids, "base": ep.base_url, "redis": ep.redis_url,
                          "guardian": st.procs._guardian.pid}}), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert _all_gone(info["pids"] + [info["guardian"]], timeout_s=20) == []
    assert not port_open("127.0.0.1", int(info["base"].rsplit(":", 1)[1]))


def test_reap_stale_kills_groups_a_crashed_stack_recorded(tmp_path):
    state = tmp_path / "processes.json"
    ps = ProcessSet(state, guardian=False)
    child = ps.spawn("sleeper", ["sh", "-c", "sleep 60 & sleep 60; wait"], log_path=tmp_path / "s.log")
    time.sleep(0.2)
    members = [child.pgid] + [p.pid for p in psutil.Process(child.pgid).children(recursive=True)]
    assert len(members) >= 2
    with pytest.raises(StackInUse):  # its owner (this process) is alive: not stale
        reap_stale(state)
    ps.children.clear()  # the owner "crashed": it forgot its children, the state file remains
    data = json.loads(state.read_text())
    state.write_text(json.dumps({**data, "owner_pid": 999_999_999}))  # an owner that no longer exists
    assert reap_stale(state) == ["sleeper"]
    child.popen.wait(5)
    assert _all_gone(members) == []
    assert not state.exists()


def test_prometheus_absent_is_skipped_with_a_clear_message(tmp_path, monkeypatch):
    import shutil

    real = shutil.which
    monkeypatch.setattr("infra.local_stack.shutil.which", lambda n: None if n == "prometheus" else real(n))
    stack = LocalStack(_profile(prometheus=True), tmp_path / "run")
    stack.port = 9  # the Prometheus step only needs the service's port
    assert stack._start_prometheus() is None
    assert "no `prometheus` binary is on PATH" in (stack.prometheus_skipped or "")
    assert "prometheus" not in stack.procs.children


@pytest.mark.skipif(not (_reachable(3306) and _reachable(6379)), reason="MariaDB or Redis not reachable on loopback")
def test_on_mariadb_and_a_redis_server(tmp_path):
    import redis

    stack = LocalStack(
        _profile(database_url="mysql://root@127.0.0.1:3306/test", redis_url="redis://127.0.0.1:6379/11"),
        tmp_path / "run",
    )
    try:
        ep = stack.start()
        assert httpx.get(ep.base_url + "/health", timeout=5).json()["db"] == "mysql"
        name = stack.db.name
        assert name.startswith("soundcheck_")
        eng = create_engine(ep.database_url)
        with eng.connect() as c:
            assert c.execute(text("SELECT DATABASE()")).scalar() == name
            assert c.execute(text("SELECT COUNT(*) FROM seat")).scalar() > 0
            with pytest.raises(DBAPIError, match="READ ONLY"):
                c.execute(text("DELETE FROM seat"))
        eng.dispose()
        r = redis.Redis.from_url(ep.redis_url)
        # a queue token lives in Redis (the Saga's bus is Kafka here, so no stream keys until a payment)
        httpx.post(ep.base_url + "/api/v1/queues/tokens/1", headers={"Authorization": "Bearer test-user-1"}, timeout=5)
        assert any(True for _ in r.scan_iter(match=stack.redis_prefix + "*", count=1000))
        assert "redis" not in stack.procs.children  # the server's Redis, not a private one
    finally:
        stack.stop()
    admin = create_engine("mysql+pymysql://root@127.0.0.1:3306/test")
    with admin.connect() as c:
        assert c.execute(text("SHOW DATABASES LIKE :n"), {"n": name}).first() is None  # dropped
    admin.dispose()
    assert not any(True for _ in r.scan_iter(match=stack.redis_prefix + "*", count=1000))  # keys deleted


@pytest.mark.skipif(not _reachable(5432), reason="PostgreSQL not reachable on loopback")
def test_on_postgresql(tmp_path):
    stack = LocalStack(_profile(database_url="postgresql://postgres@127.0.0.1:5432/test"), tmp_path / "run")
    try:
        ep = stack.start()
        assert httpx.get(ep.base_url + "/health", timeout=5).json()["db"] == "postgresql"
        eng = create_engine(ep.database_url)
        with eng.connect() as c:
            assert c.execute(text("SELECT current_database()")).scalar() == stack.db.name
            with pytest.raises(DBAPIError, match="read-only"):
                c.execute(text("DELETE FROM seat"))
        eng.dispose()
    finally:
        stack.stop()


def _is_local_stack_process(p: psutil.Process) -> bool:
    """A reference service or private Redis started by a LocalStack (not by another area's test harness)."""
    try:
        return p.environ().get("SUT_REDIS_PREFIX", "").startswith("sc:") or (
            "redis-server" in p.name() and p.cwd().endswith("/stack/redis")
        )  # --dir is its cwd
    except psutil.Error:
        return False


def test_no_stack_process_survives_this_module():
    assert [p for p in psutil.Process(os.getpid()).children(recursive=True) if _is_local_stack_process(p)] == []


def test_provision_and_teardown_by_environment_kind(tmp_path, monkeypatch):
    from tasks.provision import Provisioned, provision, teardown

    monkeypatch.setenv("SC_TEST_ADMIN", "tok")
    ext = provision(
        parse_profile(
            {
                "name": "e",
                "environment": {"kind": "external"},
                "target": {"base_url": "http://127.0.0.1:9/", "admin_token_env": "SC_TEST_ADMIN"},
            }
        ),
        tmp_path,
    )
    assert ext.handle is None and ext.endpoints.metrics_url == "http://127.0.0.1:9/metrics"
    assert ext.endpoints.admin_token == "tok"
    teardown(ext)  # nothing to stop

    local = provision(_profile(), tmp_path / "run")
    try:
        assert isinstance(local, Provisioned) and isinstance(local.handle, LocalStack)
        assert httpx.get(local.endpoints.base_url + "/health", timeout=5).status_code == 200
        pids = _stack_pids(local.handle)
    finally:
        teardown(local)
    assert _all_gone(pids) == []


def test_a_failed_start_tears_down_what_it_started(tmp_path):
    stack = LocalStack(_profile(settings={"faults": "no_such_fault"}), tmp_path / "run")
    with pytest.raises(RuntimeError, match="reference service exited during start-up(.|\n)*no_such_fault"):
        stack.start()
    assert stack.procs.children == {} and stack.endpoints is None
    assert not (tmp_path / "run" / "stack" / "processes.json").exists()
    assert "redis-server" not in " ".join(" ".join(p.cmdline()) for p in psutil.Process().children(recursive=True))
