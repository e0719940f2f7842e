"""Each worker's own listener, so a load generator can spread requests over workers as a load balancer does.

uvicorn's workers share one listening socket: the kernel hands each new connection to whichever worker
accepts first, and a keep-alive connection stays with that worker. In the sizing stage an instance is one
worker under a CPU quota, and k6 holds a few dozen keep-alive connections for a whole step, so one
instance could carry most of a step's load while another idled (measured with two instances: 0.215 vs
0.162 cores in the climb that sustained 169 req/s, 0.231 vs 0.231 in the one that sustained 264). An ALB
balances every request across its targets instead. With ``instance_port_dir`` set, each worker also
listens on a free loopback port of its own and writes it to ``<dir>/<pid>.port``; the sizing stage sends
each request to the next worker's port in turn (``BASE_URLS`` in scenarios/lib/common.js).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any


class InstanceListener:
    """A second uvicorn server inside this worker's event loop, on a free port, serving the same app."""

    def __init__(self, app: Any, host: str, folder: str | Path, keep_alive_s: float) -> None:
        self.app, self.host, self.folder, self.keep_alive_s = app, host, Path(folder), keep_alive_s
        self.server: Any = None
        self.file: Path | None = None

    async def start(self) -> int:
        import uvicorn

        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=0,
            lifespan="off",  # the worker's own server already ran the app's lifespan
            log_level="warning",
            access_log=False,
            backlog=4096,
            timeout_keep_alive=int(self.keep_alive_s),
            timeout_graceful_shutdown=2,
        )
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        await server.startup()
        self.server = server
        port = server.servers[0].sockets[0].getsockname()[1]
        self.folder.mkdir(parents=True, exist_ok=True)
        self.file = self.folder / f"{os.getpid()}.port"
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(str(port))
        tmp.replace(self.file)  # whole or absent: the stack reads these files while workers start
        return port

    async def stop(self) -> None:
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.unlink()
        if self.server is not None:
            self.server.should_exit = True
            with contextlib.suppress(Exception):
                await self.server.shutdown()
