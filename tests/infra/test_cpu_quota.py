"""A cgroup CPU quota holds a busy process to its share (what a local instance of the capacity stage is)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from infra.cpu_quota import CpuQuota, available


@pytest.mark.skipif(not available()[0], reason=available()[1])
def test_a_cpu_quota_holds_a_busy_process_to_its_share():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    q = CpuQuota(f"soundcheck-test-{os.getpid()}", 0.2)
    try:
        q.add(busy.pid)
        import psutil

        p = psutil.Process(busy.pid)
        t0, c0, g0 = time.monotonic(), sum(p.cpu_times()[:2]), q.cpu_s()
        time.sleep(2.0)
        share = (sum(p.cpu_times()[:2]) - c0) / (time.monotonic() - t0)
        assert 0.1 < share < 0.26, share
        assert q.throttled_s() > 0.5
        assert 0.1 < (q.cpu_s() - g0) / (time.monotonic() - t0) < 0.26  # the group's own account agrees
    finally:
        busy.kill()
        busy.wait()
        q.remove()
    assert not q.path.exists()
