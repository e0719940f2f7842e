"""Nothing outlives a killed campaign, Prefect's temporary API server included.

`soundcheck run` without a configured Prefect server runs its flow against the temporary server that
Prefect starts as a child process (uvicorn) and stops at exit. A `kill -9` of the campaign skips that
exit, and the server would keep its port open for ever. So the CLI starts the temporary server itself
(the same port-keyed instance Prefect's client then uses) and beside it a watchdog process that kills
the server when the campaign process is gone. The watchdog ends by itself when either one ends.

    python -m soundcheck.prefect_server OWNER_PID SERVER_PID   (the watchdog; started by the CLI)
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

import psutil

POLL_S = 0.5


def own_server_env(home: str | os.PathLike[str], port: int, **extra: str) -> dict[str, str]:
    """This process's environment pointed at a Prefect server of its own: its home, API URL and SQLite
    database under `home`, so a bench or test never reads or writes the user's Prefect profile."""
    return {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_CLI_PROMPT": "false",
        **extra,
    }


def guard_temporary_server() -> int | None:
    """Start Prefect's temporary server (when no server is configured) and its watchdog; the server's pid."""
    from prefect.settings import get_current_settings

    if get_current_settings().api.url:
        return None  # a real server: not ours to stop
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start()
    proc = server.server_process
    if proc is None:
        return None
    subprocess.Popen(
        [sys.executable, "-m", "soundcheck.prefect_server", str(os.getpid()), str(proc.pid)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )
    return proc.pid


def watch(owner_pid: int, server_pid: int, poll_s: float = POLL_S) -> bool:
    """Wait until the owner or the server is gone; kill the server (and its children) if the owner went
    first. True when it killed the server."""
    try:
        owner, server = psutil.Process(owner_pid), psutil.Process(server_pid)
    except psutil.NoSuchProcess:
        owner = server = None
    if owner is None or server is None:
        with_server = psutil.pid_exists(server_pid)
        if with_server and not psutil.pid_exists(owner_pid):
            _kill(psutil.Process(server_pid))
            return True
        return False
    while True:
        if not server.is_running() or server.status() == psutil.STATUS_ZOMBIE:
            return False
        if not owner.is_running() or owner.status() == psutil.STATUS_ZOMBIE:
            _kill(server)
            return True
        time.sleep(poll_s)


def _kill(proc: psutil.Process, grace_s: float = 5.0) -> None:
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


if __name__ == "__main__":
    watch(int(sys.argv[1]), int(sys.argv[2]))
