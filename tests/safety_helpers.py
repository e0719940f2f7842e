"""Helpers for the safety tests: the reference service as a child process, a cuttable TCP proxy, orphans."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reachable(port: int, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


class Sut:
    """`python -m infra.sut` on a loopback port, in its own process group (its embedded Redis dies with it)."""

    def __init__(self, log_dir: Path, **settings: object) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "SUT_SEED_USERS": "2000", "SUT_ADMIN_TOKEN": "safety-admin-token"}
        env.update({f"SUT_{k.upper()}": str(v) for k, v in settings.items()})
        self.log = open(log_dir / f"sut-{self.port}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "infra.sut", "--port", str(self.port)],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"reference service exited with {self.proc.returncode}; see {self.log.name}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.3)
        self.stop()
        raise RuntimeError("reference service did not become healthy in 60 s")

    def kill(self) -> None:
        """Hard stop (the target going down): SIGKILL to the whole group."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything left in the group (redis-server)
        self.log.close()


class TcpProxy:
    """A loopback TCP forwarder; `cut()` closes the listener and every connection (a dependency going down)."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.up = (upstream_host, upstream_port)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.cut_event = threading.Event()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.cut_event.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            try:
                u = socket.create_connection(self.up, timeout=5)
            except OSError:
                c.close()
                continue
            with self._lock:
                self.conns += [c, u]
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.cut_event.set()
        with contextlib.suppress(OSError):
            self.sock.close()
        with self._lock:
            for s in self.conns:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()


def load_processes() -> list[psutil.Process]:
    """k6, reference-service and redis-server processes descended from this test process."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            name, cmd = p.name(), " ".join(p.cmdline())
        except psutil.Error:
            continue
        if p.status() == psutil.STATUS_ZOMBIE:
            continue
        if name == "k6" or "infra.sut" in cmd or "redis-server" in name:
            out.append(p)
    return out


def when_k6_runs(then: callable, after_s: float, timeout_s: float = 120) -> threading.Thread:
    """Call `then()` `after_s` seconds after a k6 child process appears (to break things mid-run)."""

    def _run() -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(p.name() == "k6" for p in psutil.Process().children(recursive=True) if p.is_running()):
                time.sleep(after_s)
                then()
                return
            time.sleep(0.1)

    t = threading.Thread(target=_run, daemon=True)
    t.start()
    return t
