"""Child processes of the local stack that can never outlive the campaign.

Each child runs in its own session (its own process group), so stopping it stops everything it forked
(uvicorn's worker processes included). Three layers make sure nothing is left behind:

1. `ProcessSet.stop_all` at normal teardown, also registered with `atexit`;
2. a *guardian* process (``python -m infra.processes``) that watches the campaign's pid and kills every
   recorded group when the campaign dies without running atexit (SIGKILL, OOM kill, a crashed worker);
3. `reap_stale`, which kills the groups recorded in a state file left behind by an earlier crash.

Group ids and leader start times are kept in a JSON state file so a reused pid is never killed.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

_ROOT = Path(__file__).resolve().parent.parent


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the usual bind-to-0 race is acceptable on loopback)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def wait_port_closed(host: str, port: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not port_open(host, port):
            return True
        time.sleep(0.05)
    return False


def group_members(pgid: int) -> list[psutil.Process]:
    """Live processes of a process group (zombies excluded: they hold no port and no memory)."""
    out = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) == pgid:
                out.append(p)
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return out


def kill_group(pgid: int, grace_s: float = 10.0) -> None:
    """SIGTERM the group, wait up to `grace_s` for it to empty, then SIGKILL what is left."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not group_members(pgid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and group_members(pgid):
        time.sleep(0.05)


def _leader_alive(pgid: int, create_time: float) -> bool:
    try:
        p = psutil.Process(pgid)
        return abs(p.create_time() - create_time) < 0.01 and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _read_state(path: Path) -> dict:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


class StackInUse(RuntimeError):
    """The state file belongs to a stack whose owner is still running."""


def reap_stale(state_file: Path) -> list[str]:
    """Kill the groups an earlier, crashed stack recorded in `state_file`; returns their names.

    Refuses (StackInUse) when the recorded owner is still alive: that stack is running, not stale.
    """
    state = _read_state(state_file)
    owner = state.get("owner_pid")
    if owner and _leader_alive(int(owner), float(state.get("owner_create_time", 0))):
        raise StackInUse(f"{state_file.parent} is in use by a running stack (pid {owner}); stop it first")
    reaped = []
    for g in state.get("groups", []):
        # A group whose leader is gone can still hold members (uvicorn workers); a group whose leader
        # is a different process now (pid reused) is not ours.
        leader_is_ours = _leader_alive(g["pgid"], g["create_time"])
        leader_exists = psutil.pid_exists(g["pgid"])
        if leader_is_ours or (not leader_exists and group_members(g["pgid"])):
            kill_group(g["pgid"], grace_s=5.0)
            reaped.append(g["name"])
    with contextlib.suppress(OSError):
        state_file.unlink()
    return reaped


@dataclass
class Child:
    name: str
    popen: subprocess.Popen
    log_path: Path

    @property
    def pgid(self) -> int:
        return self.popen.pid  # start_new_session: the child leads its own group

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class ProcessSet:
    """The stack's children, recorded in `state_file`, watched by a guardian, stopped on exit."""

    def __init__(self, state_file: Path, *, guardian: bool = True):
        self.state_file = Path(state_file)
        self.children: dict[str, Child] = {}
        self._guardian_wanted = guardian
        self._guardian: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._atexit_registered = False

    # -- lifecycle ------------------------------------------------------------------------------------
    def spawn(
        self, name: str, argv: list[str], *, env: dict[str, str] | None = None, log_path: Path, cwd: Path | None = None
    ) -> Child:
        with self._lock:
            if name in self.children and self.children[name].alive():
                raise RuntimeError(f"{name} is already running")
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "ab") as log:
                popen = subprocess.Popen(
                    argv,
                    env=env,
                    cwd=str(cwd or _ROOT),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            child = Child(name, popen, log_path)
            self.children[name] = child
            self._write_state()
            if not self._atexit_registered:
                atexit.register(self.stop_all)
                self._atexit_registered = True
            if self._guardian_wanted and (self._guardian is None or self._guardian.poll() is not None):
                self._start_guardian()
            return child

    def stop(self, name: str, grace_s: float = 10.0) -> None:
        with self._lock:
            child = self.children.pop(name, None)
            if child is None:
                return
            kill_group(child.pgid, grace_s)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.popen.wait(1.0)  # reap the leader so it is not left a zombie
            self._write_state()

    def stop_all(self, grace_s: float = 10.0) -> None:
        for name in reversed(list(self.children)):
            self.stop(name, grace_s)
        self._stop_guardian()
        with contextlib.suppress(OSError):
            self.state_file.unlink()

    # -- state and guardian ---------------------------------------------------------------------------
    def _write_state(self) -> None:
        groups = []
        for c in self.children.values():
            with contextlib.suppress(psutil.Error):
                groups.append({"name": c.name, "pgid": c.pgid, "create_time": psutil.Process(c.pgid).create_time()})
        me = psutil.Process()
        data = {"owner_pid": me.pid, "owner_create_time": me.create_time(), "groups": groups}
        tmp = self.state_file.with_suffix(".tmp")
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data))
        tmp.replace(self.state_file)

    def _start_guardian(self) -> None:
        me = psutil.Process()
        self._guardian = subprocess.Popen(
            [sys.executable, "-m", "infra.processes", str(me.pid), repr(me.create_time()), str(self.state_file)],
            cwd=str(_ROOT),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _stop_guardian(self) -> None:
        g, self._guardian = self._guardian, None
        terminate(g)


def terminate(proc: subprocess.Popen | None) -> None:
    """SIGTERM, then SIGKILL after 5 s; nothing if it already ended."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def guard(owner_pid: int, owner_create_time: float, state_file: Path, poll_s: float = 0.5) -> None:
    """Guardian loop: when the owner dies, kill every group in the state file; exit on SIGTERM."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.wait(poll_s):
        if not _leader_alive(owner_pid, owner_create_time):
            reap_stale(state_file)
            return


if __name__ == "__main__":
    guard(int(sys.argv[1]), float(sys.argv[2]), Path(sys.argv[3]))
