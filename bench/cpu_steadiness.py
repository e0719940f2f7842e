"""How steady is this machine's CPU? The same fixed work, timed in CPU-seconds, again and again.

    uv run python bench/cpu_steadiness.py [--seconds 120] [--busy]

The capacity stage holds a local instance to a share of a core with a cgroup quota, which counts CPU-seconds.
If the same work costs more CPU-seconds at one moment than at another (a virtual machine's host taking its
cycles, cache and memory bandwidth shared with other tenants), an instance's capacity moves with it, and no
stairs can repeat better than that. This prints the spread of one fixed piece of pure-Python work's CPU
time over the run, per 10-second window, and the machine's steal time. `--busy` runs a second process
spinning beside it (as k6 and Redis run beside the service in a climb).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from suite_cpu import cpu_times  # bench/: the machine's CPU-seconds per /proc/stat field


def work(n: int = 300_000) -> float:
    """CPU-seconds of one fixed piece of interpreter work."""
    t0 = time.process_time()
    x = 0
    for i in range(n):
        x += i * i % 7
    return time.process_time() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--busy", action="store_true", help="a spinning process beside the probe")
    args = ap.parse_args(argv)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
    try:
        windows: list[list[float]] = []
        s0, t0 = cpu_times()["steal"], time.monotonic()
        while time.monotonic() - t0 < args.seconds:
            w = int((time.monotonic() - t0) // 10)
            while len(windows) <= w:
                windows.append([])
            windows[w].append(work())
            time.sleep(0.05)
        steal = cpu_times()["steal"] - s0
    finally:
        if spinner:
            spinner.kill()
            spinner.wait()
    meds = [statistics.median(w) * 1000 for w in windows if w]
    every = sorted(x * 1000 for w in windows for x in w)
    mid = statistics.median(meds)
    print(
        f"{len(every)} runs of the same work in {args.seconds:.0f} s{' beside a spinning process' if args.busy else ''}"
    )
    print(
        f"CPU ms per run: median {statistics.median(every):.1f}, p5 {every[len(every) // 20]:.1f}, "
        f"p95 {every[-len(every) // 20]:.1f}"
    )
    print("per 10 s window (median): " + ", ".join(f"{m:.1f}" for m in meds))
    print(
        f"windows from {min(meds) / mid - 1:+.0%} to {max(meds) / mid - 1:+.0%} of their median "
        f"(max/min {max(meds) / min(meds):.2f}); steal {steal:.1f} CPU-s ({steal / args.seconds:.0%} of a core)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
