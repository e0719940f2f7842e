"""The same small campaign on one load generator and on two (issue 14): same checks, same verdict?

Runs `soundcheck run` on deployments/local.yaml (race, spike, soak by default) with a PostgreSQL result store,
once with `k6.generators: 1` and once with 2 (both generators on this machine; Prefect workers on other
machines are the same code, see tests/flows/test_campaign_deployments.py). Prints each run's verdict, its checks
(passed / failed / not measured), the checks whose outcome differs, and a few merged KPIs side by side.

    uv run python bench/generators.py
    uv run python bench/generators.py --workers        # the parts on two Prefect process workers
    uv run python bench/generators.py --scenario race --scenario soak --scale 0.02 --time-scale 0.03

With `--workers` the bench starts a Prefect server on a free loopback port (its own PREFECT_HOME), the
`soundcheck-generators` process pool, the `k6-segment/soundcheck-generators` deployment and two process
workers; both campaigns run their flow against that server, and the 2-generator one sets
`k6.work_pool: soundcheck-generators`, so each part is a flow run a worker picked up (issue 14's setting).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from soundcheck.prefect_server import own_server_env  # noqa: E402

KPIS = ("tc1_release_spread_ms", "p95_ms", "throughput_rps", "error_rate", "requests")


def postgres(name: str) -> str:
    import psycopg

    db = f"{name}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", autocommit=True) as c:
        c.execute(f"CREATE DATABASE {db}")
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{db}"


POOL = "soundcheck-generators"


@contextlib.contextmanager
def prefect_workers(work: Path, count: int = 2):
    """A Prefect server, the generators' pool and deployment, `count` process workers; this process's flows
    use the server. Everything started here is stopped on the way out."""
    import httpx

    home = work / "prefect-home"
    home.mkdir()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = own_server_env(home, port)
    api = env["PREFECT_API_URL"]
    prefect = [sys.executable, "-m", "prefect"]
    procs: list[subprocess.Popen] = []

    def start(args: list[str], log: str) -> subprocess.Popen:
        with open(home / log, "w") as f:
            p = subprocess.Popen(
                [*prefect, *args], env=env, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
            )
        procs.append(p)
        return p

    try:
        start(["server", "start", "--host", "127.0.0.1", "--port", str(port)], "server.log")
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the Prefect server did not start: " + (home / "server.log").read_text()[-1500:])
            time.sleep(0.3)
        for cmd in (
            ["work-pool", "create", POOL, "--type", "process"],
            ["--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--name", POOL],
        ):
            subprocess.run([*prefect, *cmd], env=env, cwd=ROOT, check=True, capture_output=True, timeout=240)
        for i in range(count):
            start(
                ["worker", "start", "--pool", POOL, "--type", "process", "--limit", "1", "--name", f"gen-{i + 1}"],
                f"worker{i + 1}.log",
            )
        os.environ.update({k: env[k] for k in ("PREFECT_HOME", "PREFECT_API_URL")})
        print(f"prefect server {api}, {count} process workers on pool {POOL}")
        yield POOL
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(20)


def campaign(generators: int, args: argparse.Namespace, work: Path) -> dict:
    from soundcheck.cli import run_campaign

    data = yaml.safe_load((ROOT / "deployments" / "local.yaml").read_text())
    data.update(store_url=postgres(f"gen{generators}"), output_dir=str(work / f"runs{generators}"))
    data["slack"] = {"enabled": False}
    data["k6"] = {**(data.get("k6") or {}), "generators": generators}
    if generators > 1 and args.pool:
        data["k6"]["work_pool"] = args.pool
    prof = work / f"profile{generators}.yaml"
    prof.write_text(yaml.safe_dump(data))
    out = work / f"out{generators}"
    t0 = time.monotonic()
    code = run_campaign(
        profile=prof, scenarios=args.scenario, scale=args.scale, time_scale=args.time_scale, output=out, notify=False
    )
    verdict = json.loads((out / "verdict.json").read_text())
    verdict["_seconds"] = round(time.monotonic() - t0, 1)
    verdict["_exit"] = code
    return verdict


def outcome(c: dict) -> str:
    if c.get("passed"):
        return "pass"
    return "not measured" if "not measured" in str(c.get("observed")) else "fail"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", action="append")
    ap.add_argument("--scale", type=float, default=0.02)
    ap.add_argument("--time-scale", type=float, default=0.03)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--workers", action="store_true", help="the parts on two Prefect process workers")
    args = ap.parse_args()
    args.scenario = args.scenario or ["race", "spike", "soak"]
    work = Path(tempfile.mkdtemp(prefix="soundcheck-generators-"))
    args.pool = None
    with prefect_workers(work) if args.workers else contextlib.nullcontext() as pool:
        args.pool = pool
        runs = {g: campaign(g, args, work) for g in (1, 2)}
    checks = {
        g: {(c["id"], c.get("scenario"), c.get("expected")): outcome(c) for c in v["checks"]} for g, v in runs.items()
    }
    for g, v in runs.items():
        n = checks[g]
        print(
            f"generators {g}: {v['verdict']} (exit {v['_exit']}) in {v['_seconds']} s; checks "
            f"{sum(o == 'pass' for o in n.values())} passed, {sum(o == 'fail' for o in n.values())} failed, "
            f"{sum(o == 'not measured' for o in n.values())} not measured"
        )
    differ = sorted(k for k in checks[1].keys() | checks[2].keys() if checks[1].get(k) != checks[2].get(k))
    print(f"checks with another outcome: {len(differ)}")
    for k in differ:
        print(f"  {k[0]} ({k[1]}): 1 → {checks[1].get(k)}, 2 → {checks[2].get(k)}")
    print("KPI (scenario)            1 generator    2 generators")
    for s in args.scenario:
        for name in KPIS:
            vals = [
                next(
                    (
                        k["value"]
                        for k in runs[g].get("kpis", [])
                        if k["name"] == name and k["scenario"] == s and not k.get("phase")
                    ),
                    None,
                )
                for g in (1, 2)
            ]
            if any(v is not None for v in vals):
                print(
                    f"  {name:22} ({s:5})  "
                    + "  ".join(f"{v:>13,.1f}" if v is not None else f"{'—':>13}" for v in vals)
                )
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "differ": [list(k) for k in differ]}, default=str, indent=1))
    return 0 if runs[1]["verdict"] == runs[2]["verdict"] and not differ else 1


if __name__ == "__main__":
    sys.exit(main())
