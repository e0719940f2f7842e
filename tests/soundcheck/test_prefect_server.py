"""Nothing outlives a killed campaign: Prefect's temporary server dies with its owner, even on kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from soundcheck.paths import ROOT

OWNER = """
import sys, time
from soundcheck.prefect_server import guard_temporary_server
print(guard_temporary_server(), flush=True)
time.sleep(120)
"""


def _gone(pid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
def test_temporary_server_is_killed_when_its_owner_is_killed_hard():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")}
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    owner = subprocess.Popen([sys.executable, "-c", OWNER], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = owner.stdout.readline().strip()
        assert line.isdigit(), f"no server pid printed: {line!r}"
        server = int(line)
        assert psutil.pid_exists(server)
        assert psutil.Process(server).ppid() == owner.pid  # Prefect's own uvicorn child
        owner.send_signal(signal.SIGKILL)  # no atexit, no cleanup of Prefect's
        owner.wait(10)
        assert _gone(server, 15), "Prefect's temporary server outlived its killed owner"
    finally:
        owner.kill()


def test_watchdog_ends_by_itself_when_the_server_ends_first():
    from soundcheck.prefect_server import watch

    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
    assert watch(os.getpid(), server.pid, poll_s=0.05) is False  # owner alive, server ended: nothing killed
    server.wait(5)
