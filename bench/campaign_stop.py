"""How a running `soundcheck run` stops on Ctrl-C (SIGINT) or `kill` (SIGTERM): seconds from the signal
to the exit, the exit status, processes left behind, and what the result store says about the run.

    uv run python bench/campaign_stop.py [--signal INT|TERM] [--after-s 8]

It starts a small campaign (race + saga on the local stack) in a temporary folder, waits until the race
stage has started plus `--after-s`, sends the signal, and prints the figures. Expected: exit 30, a few
seconds, no process left, the run INCOMPLETE with its reason, verdict.json written.
"""

from __future__ import annotations

import argparse
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--signal", choices=["INT", "TERM"], default="INT")
    ap.add_argument("--after-s", type=float, default=8.0, help="seconds after the race stage starts")
    args = ap.parse_args()
    sig = signal.SIGINT if args.signal == "INT" else signal.SIGTERM
    soundcheck = str(Path(sys.executable).parent / "soundcheck")
    with tempfile.TemporaryDirectory(prefix="sc-stop-") as tmp:
        log_path = Path(tmp) / "run.log"
        with log_path.open("w") as log:
            proc = subprocess.Popen(
                [
                    soundcheck,
                    "run",
                    "--scenario",
                    "race",
                    "--scenario",
                    "saga",
                    "--scale",
                    "0.02",
                    "--time-scale",
                    "0.03",
                    "--no-notify",
                ],
                cwd=tmp,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            )
        try:
            deadline = time.time() + 180
            while time.time() < deadline and "stage-race" not in log_path.read_text():
                if proc.poll() is not None:
                    print("the campaign ended before the race stage started:\n" + log_path.read_text()[-2000:])
                    return 1
                time.sleep(0.2)
            time.sleep(args.after_s)
            children = psutil.Process(proc.pid).children(recursive=True)
            names = sorted(c.name() for c in children if c.is_running())
            t0 = time.monotonic()
            proc.send_signal(sig)
            code = proc.wait(120)
            took = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
        time.sleep(1.0)
        left = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        db = Path(tmp) / "runs" / "soundcheck.db"
        runs, stages = [], []
        if db.exists():
            con = sqlite3.connect(db)
            runs = con.execute("select status, verdict, reason from runs").fetchall()
            stages = con.execute("select scenario, status from scenario_runs").fetchall()
            con.close()
        verdicts = list(Path(tmp, "runs").glob("*/verdict.json"))
        print(f"signal SIG{args.signal} {args.after_s:g} s into the race stage; children before: {', '.join(names)}")
        print(
            f"exit status {code} after {took:.1f} s; processes left: {len(left)} "
            f"{[' '.join(c.cmdline())[:80] for c in left]}"
        )
        print("log tail:\n" + "\n".join(log_path.read_text().splitlines()[-12:]))
        print(f"run: {runs}; stages: {stages}; verdict.json written: {bool(verdicts)}")
        for c in left:
            c.kill()
        return 0 if code == 30 and not left and verdicts else 1


if __name__ == "__main__":
    raise SystemExit(main())
