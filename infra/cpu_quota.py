"""A fixed CPU share for one process: a cgroup CPU quota (CFS bandwidth), v1 or v2.

The sizing stage's local "instance" is one reference-service worker held to a share of a core, so the
capacity curve is the service's and not the 2-core box's (k6, Redis, the broker and the campaign share
the rest). A quota is hard: the worker gets at most `cores` × 100 ms of CPU in every 100 ms, however idle
the machine is, the way a t3.large's vCPU credit is a fixed budget. It needs a writable cgroup
filesystem (root, or a delegated subtree); `available()` says why not, and the stage then runs without
quotas and says the curve is the machine's.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

ROOT = Path(os.environ.get("SOUNDCHECK_CGROUP_ROOT", "/sys/fs/cgroup"))
PERIOD_US = 100_000


def _layout() -> tuple[str, Path] | None:
    """("v1", …/cpu) or ("v2", the unified root), whichever is writable here."""
    v1 = ROOT / "cpu"
    if (v1 / "cpu.cfs_quota_us").exists() and os.access(v1, os.W_OK):
        return "v1", v1
    controllers = ROOT / "cgroup.controllers"
    if controllers.exists() and os.access(ROOT, os.W_OK) and "cpu" in controllers.read_text().split():
        return "v2", ROOT
    return None


def available() -> tuple[bool, str]:
    if _layout() is None:
        return False, f"no writable cgroup CPU controller under {ROOT} (run as root, or delegate a subtree)"
    return True, ""


class CpuQuota:
    """One cgroup holding processes to `cores` of CPU (0.25 = a quarter of one core)."""

    def __init__(self, name: str, cores: float):
        layout = _layout()
        if layout is None:
            raise RuntimeError(available()[1])
        if not 0 < cores <= 64:
            raise ValueError("cores must be in (0, 64]")
        self.version, base = layout
        self.path = base / name
        self.cores = cores
        self.path.mkdir(exist_ok=True)
        quota = max(1000, int(cores * PERIOD_US))
        if self.version == "v1":
            (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota))
        else:
            (self.path / "cpu.max").write_text(f"{quota} {PERIOD_US}")

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        with contextlib.suppress(OSError):
            return [int(x) for x in (self.path / "cgroup.procs").read_text().split()]
        return []

    def cpu_s(self) -> float:
        """CPU seconds its processes have used so far, so a step can say how evenly its instances worked."""
        import psutil

        total = 0.0
        for pid in self.pids():
            with contextlib.suppress(psutil.Error):
                t = psutil.Process(pid).cpu_times()
                total += t.user + t.system
        return total

    def throttled_s(self) -> float:
        """Seconds the group was held back by its quota (cpu.stat), a sign the share was the limit."""
        with contextlib.suppress(OSError, ValueError):
            stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines())
            if "throttled_time" in stat:  # v1, ns
                return int(stat["throttled_time"]) / 1e9
            if "throttled_usec" in stat:  # v2
                return int(stat["throttled_usec"]) / 1e6
        return 0.0

    def remove(self) -> None:
        """Move what is left to the parent group and delete this one (idempotent)."""
        parent = self.path.parent / "cgroup.procs"
        for pid in self.pids():
            with contextlib.suppress(OSError):
                parent.write_text(str(pid))
        with contextlib.suppress(OSError):
            self.path.rmdir()
