"""The capacity stage on the reference service: its duration and how well its repeats agree.

Starts the local stack (embedded defaults, Kafka bus), runs `tasks.capacity.size` with three instance
counts × three repeats (each instance one worker under a cgroup quota of 0.25 core), and prints per
count the sustainable load of each repeat and their spread ((max − min) / median), the knee and the
bottleneck, the USL fit, the recommendation for the plan's peak at --scale, and the verification run.
Target (issue 12): a result in ≤ 10 minutes of load, repeats within ±10 %.

    uv run python bench/capacity.py [--scale 0.02] [--hold 10] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from soundcheck import store  # noqa: E402
from soundcheck.profile import parse_profile  # noqa: E402
from tasks.capacity import fmt_sizing, size  # noqa: E402
from tasks.provision import provision  # noqa: E402


def k6_seconds(engine) -> float:
    """Seconds k6 ran, summed over every stored step (verification included)."""
    from sqlalchemy import select

    t = store.scenario_runs
    with engine.connect() as c:
        rows = c.execute(select(t.c.started_at, t.c.finished_at).where(t.c.finished_at.is_not(None))).all()
    return sum((f - s).total_seconds() for s, f in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=0.02)
    ap.add_argument("--hold", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--instances", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--cpu", type=float, default=0.25)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="sc-capacity-"))
    prof = parse_profile(
        {
            "name": "capacity-bench",
            "scale": args.scale,
            "sizing": {
                "instances": args.instances,
                "repeats": args.repeats,
                "instance_cpu": args.cpu,
                "hold_s": args.hold,
                "warmup_s": 3,
                "start_rps": 60,
                "factor": 1.25,
                "max_steps": 14,
                "budget_s": 1800,
            },
        }
    )
    engine = store.open_store(f"sqlite:///{work / 'results.db'}")
    store.start_run(
        engine, "bench", "capacity-bench", scale=args.scale, time_scale=1, scenarios=["capacity"], target=None
    )
    t0 = time.monotonic()
    p = provision(prof, work / "run")
    try:
        result = size(prof, p.handle, p.endpoints, engine, "bench", work / "run")
    finally:
        p.handle.stop()
    wall = time.monotonic() - t0
    d = result.to_dict()
    if args.json:
        args.json.write_text(json.dumps(d, indent=1, default=str))
    steps = sum(len(c["steps"]) for c in d["stairs"])
    print(
        f"{result.quota}; {steps} steps of {args.hold:g} s; k6 offered load for {k6_seconds(engine):.0f} s; "
        f"the stage took {result.load_s:.0f} s (service restarts between climbs included), wall {wall:.0f} s\n"
    )
    print(
        "| instances | sustainable req/s per repeat | spread | farthest from the median | knee (offered) "
        "| first to saturate |"
    )
    print("|---|---|---|---|---|---|")
    for n, c in d["per_count"].items():
        got = c["sustainable_rps"]
        spread = "" if c["spread"] is None else f"{c['spread']:.0%}"
        med = c["median_rps"] or 0
        far = f"±{max(abs(x - med) for x in got) / med:.0%}" if len(got) > 1 and med else ""  # the ±10 % target
        knee = "" if c["knee_rps"] is None else f"{c['knee_rps']:,.0f}"
        print(f"| {n} | {', '.join(f'{x:,.0f}' for x in got)} | {spread} | {far} | {knee} | {c['bottleneck']} |")
    print("\nper climb, at the last step that passed: CPU of the busiest / idlest instance (cores)")
    for c in d["stairs"]:
        passed = [st for st in c["steps"] if st["passed"]]
        r = passed[-1]["resources"] if passed else {}
        if "cpu_cores_busiest_instance" in r:
            print(
                f"  ×{c['instances']} #{c['repeat']}: {r['cpu_cores_busiest_instance']:.3f} / "
                f"{r['cpu_cores_idlest_instance']:.3f} at {passed[-1]['offered_rps']:,.0f} req/s"
            )
    if d["fit"]:
        f = d["fit"]
        print(f"\nUSL: λ {f['lam']:.1f} req/s, σ {f['sigma']:.3f}, κ {f['kappa']:.4f}, RMSE {f['rmse']:.1f} req/s")
    if d["recommendation"]:
        r = d["recommendation"]
        print(f"recommendation: {r['why']}; {r['scale_out_why']}")
    if d["verification"]:
        print(f"verification: {d['verification']['why']}")
    if d["why_not"]:
        print(f"not concluded: {d['why_not']}")
    print(f"\n{fmt_sizing(d)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
