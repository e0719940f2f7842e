"""The whole plan at scale 1 on this machine, end to end, with what the campaign itself costs (issue 20).

Runs ``soundcheck run`` on the default profile (deployments/local.yaml: race, saga, points, spike with its
30-minute polling, the 30-minute soak) with only three changes: Slack on, pointed at a loopback
stand-in of the Slack Web API (so the time to the morning message is measured), and the store and
output folder in a fresh work folder. While it runs, every second it samples the process tree:
resident memory of k6, of the service (its workers, Redis, the broker) and of the campaign process, and
every 5 s the ingest lag (now − the newest second written to the store). Afterwards it prints the
verdict, each stage's status and duration, peak RSS per role, campaign CPU per second of load (from
the stages' own details), rows stored per table, the report's size, and the time from the last
stage's end to the Slack message.

    uv run python bench/full_scale.py                       # the plan, ~70 min
    uv run python bench/full_scale.py --scenario spike --time-scale 0.2 --json out.json
    uv run python bench/full_scale.py --set environment.local.workers=2 --set abort.enabled=false
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import sqlalchemy as sa
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.slack_standin import VALID_TOKEN, SlackStandIn  # noqa: E402


def role(p: psutil.Process, campaign_pid: int) -> str:
    if p.pid == campaign_pid:
        return "campaign"
    try:
        name, cmd = p.name(), " ".join(p.cmdline())
    except psutil.Error:
        return "other"
    if name == "k6":
        return "k6"
    if "infra.sut" in cmd or "multiprocessing" in cmd or "redis-server" in name or "tansu" in cmd:
        return "service"
    if "prefect" in cmd or "uvicorn" in cmd:
        return "prefect"
    return "other"


class Sampler(threading.Thread):
    """Peak RSS per role (sum over its processes) and ingest lag, until stopped."""

    def __init__(self, pid: int, store_url: str, slack: SlackStandIn):
        super().__init__(daemon=True)
        self.pid, self.slack = pid, slack
        self.engine = sa.create_engine(store_url, connect_args={"timeout": 1})
        self.peak_rss: dict[str, int] = {}
        self.lag: list[float] = []
        self.slack_at: float | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stop.wait(1.0):
            n += 1
            try:
                root = psutil.Process(self.pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            rss: dict[str, int] = {}
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    rss[role(p, self.pid)] = rss.get(role(p, self.pid), 0) + p.memory_info().rss
            for k, v in rss.items():
                self.peak_rss[k] = max(self.peak_rss.get(k, 0), v)
            if self.slack_at is None and self.slack.calls_to("chat.postMessage"):
                self.slack_at = time.time()
            if n % 5 == 0:
                self._ingest_lag()

    def _ingest_lag(self) -> None:
        """Now − the newest stored second of the stage that is running (none between stages)."""
        try:
            with self.engine.connect() as c:
                row = c.execute(
                    sa.text(
                        "SELECT max(a.second) FROM second_aggregates a JOIN scenario_runs s "
                        "ON s.id = a.scenario_run_id WHERE s.finished_at IS NULL"
                    )
                ).first()
        except sa.exc.SQLAlchemyError:
            return
        if row and row[0]:
            self.lag.append(time.time() - row[0])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", type=Path, default=ROOT / "deployments" / "local.yaml")
    ap.add_argument("--scenario", action="append", default=[])
    ap.add_argument("--scale", type=float)
    ap.add_argument("--time-scale", type=float)
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a profile key (dotted, YAML value), e.g. environment.local.workers=2",
    )
    ap.add_argument("--work", type=Path, help="work folder (default: a new temporary one)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="sc-full-"))
    work.mkdir(parents=True, exist_ok=True)
    store_url = f"sqlite:///{work / 'soundcheck.db'}"
    with SlackStandIn() as slack:
        prof = yaml.safe_load(args.profile.read_text())
        prof["slack"] = {**prof.get("slack", {}), "enabled": True, "api_url": slack.api_url}
        prof["store_url"], prof["output_dir"] = store_url, str(work / "runs")
        for item in args.set:
            key, _, value = item.partition("=")
            *parents, leaf = key.split(".")
            node = prof
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = yaml.safe_load(value)
        profile = work / "profile.yaml"
        profile.write_text(yaml.safe_dump(prof))
        cmd = [str(Path(sys.executable).parent / "soundcheck"), "run", "--profile", str(profile)]
        for s in args.scenario:
            cmd += ["--scenario", s]
        if args.scale is not None:
            cmd += ["--scale", str(args.scale)]
        if args.time_scale is not None:
            cmd += ["--time-scale", str(args.time_scale)]
        print("full_scale:", " ".join(cmd), f"(work {work})", flush=True)
        env = {**os.environ, "SLACK_BOT_TOKEN": VALID_TOKEN}
        t0 = time.time()
        with open(work / "campaign.log", "wb") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            sampler = Sampler(proc.pid, store_url, slack)
            sampler.start()
            rc = proc.wait()
        sampler.stop.set()
        sampler.join()
        wall = time.time() - t0
    out = summarize(store_url, work, rc, wall, sampler)
    print(json.dumps(out, indent=2, default=str))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))
    return 0 if rc in (0, 1, 2, 3) else rc


def summarize(store_url: str, work: Path, rc: int, wall: float, sampler: Sampler) -> dict:
    engine = sa.create_engine(store_url)
    if "runs" not in sa.inspect(engine).get_table_names():
        return {"exit_code": rc, "wall_s": round(wall, 1), "run": None, "log": str(work / "campaign.log")}
    with engine.connect() as c:
        run = c.execute(sa.text("SELECT run_id, verdict, status, finished_at FROM runs")).mappings().first()
        stages = (
            c.execute(
                sa.text("SELECT scenario, status, started_at, finished_at, k6_cpu_share, details FROM scenario_runs")
            )
            .mappings()
            .all()
        )
        tables = [t for t in sa.inspect(engine).get_table_names()]
        rows = {t: c.execute(sa.text(f'SELECT count(*) FROM "{t}"')).scalar() for t in tables}  # noqa: S608
    out: dict = {"exit_code": rc, "wall_s": round(wall, 1), "run": dict(run) if run else None, "stages": []}
    last_end = None
    for s in stages:
        d = json.loads(s["details"]) if isinstance(s["details"], str) else (s["details"] or {})
        end = s["finished_at"]
        end_ts = _ts(end)
        last_end = max(last_end or 0, end_ts or 0)
        out["stages"].append(
            {
                "scenario": s["scenario"],
                "status": s["status"],
                "duration_s": d.get("duration_s"),
                "k6_cpu_share": s["k6_cpu_share"],
                "campaign_cpu_per_s": d.get("campaign_cpu_per_s"),
                "requests": (d.get("ingest") or {}).get("requests"),
            }
        )
    out["peak_rss_mb"] = {k: round(v / 2**20) for k, v in sampler.peak_rss.items()}
    out["ingest_lag_s"] = {
        "samples": len(sampler.lag),
        "median": round(sorted(sampler.lag)[len(sampler.lag) // 2], 1) if sampler.lag else None,
        "max": round(max(sampler.lag), 1) if sampler.lag else None,
    }
    out["rows"] = rows
    reports = list((work / "runs").glob("*/report.html"))
    out["report_bytes"] = reports[0].stat().st_size if reports else None
    out["store_bytes"] = (work / "soundcheck.db").stat().st_size if (work / "soundcheck.db").exists() else None
    out["slack_after_last_stage_s"] = round(sampler.slack_at - last_end, 1) if sampler.slack_at and last_end else None
    return out


def _ts(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        from datetime import UTC, datetime

        dt = datetime.fromisoformat(value)
        return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()
    return value.timestamp()


if __name__ == "__main__":
    raise SystemExit(main())
