"""How much CPU a command uses on the whole machine, and so the least wall time any schedule could give it here.

    uv run python bench/suite_cpu.py -- uv run pytest -q -p no:cacheprovider

Reads /proc/stat before and after the command: the busy CPU-seconds of every core (user, nice, system, irq,
softirq; steal is counted apart, it is time another tenant took), whoever used them — pytest, k6, the reference
service, Redis, the Prefect server. Busy CPU-seconds ÷ cores is the floor of the command's wall time: no
parallel schedule (pytest-xdist, shared stacks) can finish the same work faster on this machine. Linux only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def cpu_times() -> dict[str, float]:
    """The machine's CPU-seconds since boot per /proc/stat field, summed over the cores."""
    with open("/proc/stat") as fh:
        parts = fh.readline().split()[1 : 1 + len(FIELDS)]
    tick = os.sysconf("SC_CLK_TCK")
    return {f: int(v) / tick for f, v in zip(FIELDS, parts, strict=True)}


def main(argv: list[str]) -> int:
    cmd = argv[argv.index("--") + 1 :] if "--" in argv else argv
    if not cmd:
        print(__doc__)
        return 2
    cores = os.cpu_count() or 1
    before, t0 = cpu_times(), time.monotonic()
    code = subprocess.call(cmd)
    after, wall = cpu_times(), time.monotonic() - t0
    d = {f: after[f] - before[f] for f in FIELDS}
    busy = d["user"] + d["nice"] + d["system"] + d["irq"] + d["softirq"]
    print(
        f"\nexit {code}; wall {wall:,.0f} s on {cores} cores; busy {busy:,.0f} CPU-s "
        f"(user {d['user']:,.0f}, system {d['system']:,.0f}), iowait {d['iowait']:,.0f}, steal {d['steal']:,.0f}; "
        f"mean load {busy / wall:.2f} of {cores} cores; floor {busy / cores:,.0f} s "
        f"({busy / cores / 60:.1f} min) with every core busy all the time"
    )
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
