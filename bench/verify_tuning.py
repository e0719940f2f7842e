"""Prove the fault matrix's tuning remediations by re-test (R-WHY-4), and show a change that does nothing is not.

For each tuning case of bench/fault_matrix.py: one campaign with the case's settings (the run to verify),
then `soundcheck verify` of the remediation it must raise (A B A B A B at the run's scale). Last, the slow
concert list verified with a setting it never touches (consumer concurrency), which must come out "not proven".

    uv run python bench/verify_tuning.py                  # every case, 3 + 3 runs each
    uv run python bench/verify_tuning.py --case pool_too_small --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.fault_matrix import CASES, profile_for  # noqa: E402

NOOP = ("slow_concert_list", ["consumer_concurrency=5"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", action="append", help="tuning case(s) to verify; 'noop' for the do-nothing change")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/soundcheck-verify"))
    ap.add_argument(
        "--database-url",
        help="run the local stack on this server database (e.g. "
        "postgresql://postgres@127.0.0.1:5432/test) instead of SQLite",
    )
    a = ap.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    from soundcheck.cli import run_campaign, verify_run
    from soundcheck.models import Verification
    from tasks.verify import fmt_verification

    tuning = [c for c in CASES if c.kind == "tuning" and (not a.case or c.name in a.case)]
    jobs = [(c, c.remediations[0], None) for c in tuning]
    if not a.case or "noop" in a.case:
        jobs.append((next(c for c in CASES if c.name == NOOP[0]), "cache_concert_list", NOOP[1]))
    lines = []
    with prefect_test_harness(server_startup_timeout=120):
        for case, code, change in jobs:
            name = case.name + ("-noop" if change else "")
            d = a.workdir / name
            d.mkdir(parents=True, exist_ok=True)
            if a.database_url:
                case = replace(case, local={**case.local, "database_url": a.database_url})
            prof = profile_for(case, d)
            t0 = time.monotonic()
            exit_code = run_campaign(profile=prof, output=d / "run", notify=False)
            v = json.loads((d / "run" / "verdict.json").read_text())
            print(
                f"{name}: run {v['run_id']} {v['verdict']} (exit {exit_code}), remediations "
                f"{[r['code'] for r in v['remediations']]}",
                flush=True,
            )
            if code not in {r["code"] for r in v["remediations"]}:
                lines.append(f"| {name} | {v['verdict']} | {code} not raised: nothing to verify | |")
                continue
            verify_run(v["run_id"], prof, [code], repeats=a.repeats, notify=False, output=d / "run", change=change)
            body = json.loads((d / "run" / "verdict.json").read_text())
            x = Verification.model_validate(body["verification"][0])
            lines.append(f"| {name} | {v['verdict']} | {fmt_verification(x)} | {time.monotonic() - t0:.0f} |")
            print(lines[-1], flush=True)
    print("\n| case | verdict of the run | verification | s (run + verification) |\n|---|---|---|---|")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
