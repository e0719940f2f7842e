"""A loopback stand-in of the Slack Web API and of an incoming webhook, for the notify and flow tests.

It speaks the wire protocol slack-sdk uses: chat.postMessage (JSON body), files.getUploadURLExternal
(form), the raw upload to the URL it hands out, files.completeUploadExternal (form), and a webhook
path taking a JSON body. `fail` queues answers to give before the normal ones (status, Slack error,
or a delay longer than the client's timeout).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

VALID_TOKEN = "xoxb-test-0000-soundcheck-secret"


@dataclass
class Call:
    path: str
    headers: dict[str, str]
    body: bytes
    form: dict[str, str] = field(default_factory=dict)
    json: Any = None


class SlackStandIn:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.failures: dict[str, list[tuple[int, str | None, float]]] = {}
        self.lock = threading.Lock()
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802
                standin._handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/services/T000/B000/hook"

    def fail(self, method: str, times: int, status: int = 500, error: str | None = None, delay: float = 0.0) -> None:
        """The next `times` calls of `method` (e.g. "chat.postMessage", "webhook") fail this way."""
        with self.lock:
            self.failures.setdefault(method, []).extend([(status, error, delay)] * times)

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.path.rstrip("/").endswith(method)]

    def __enter__(self) -> SlackStandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------------ protocol

    def _reply(self, h: BaseHTTPRequestHandler, status: int, payload: Any, content_type: str = "application/json"):
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length)
        call = Call(path=h.path, headers={k.lower(): v for k, v in h.headers.items()}, body=body)
        ctype = call.headers.get("content-type", "")
        if "json" in ctype:
            call.json = json.loads(body or b"null")
        elif "form" in ctype and not h.path.startswith("/upload/"):
            call.form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        with self.lock:
            self.calls.append(call)
        method = "webhook" if h.path.startswith("/services/") else h.path.split("?")[0].rsplit("/", 1)[-1]
        if h.path.startswith("/upload/"):
            method = "upload"
        with self.lock:
            queued = self.failures.get(method)
            failure = queued.pop(0) if queued else None
        if failure:
            status, error, delay = failure
            if delay:
                time.sleep(delay)
            if error:
                self._reply(h, status, {"ok": False, "error": error})
            else:
                self._reply(h, status, b"upstream error", "text/plain")
            return
        if method == "webhook":
            self._reply(h, 200, b"ok", "text/plain")
            return
        if method == "upload":
            self._reply(h, 200, b"OK - %d" % len(body), "text/plain")
            return
        if call.headers.get("authorization") != f"Bearer {VALID_TOKEN}":
            self._reply(h, 200, {"ok": False, "error": "invalid_auth"})
            return
        if method == "chat.postMessage":
            self._reply(
                h,
                200,
                {
                    "ok": True,
                    "channel": "C0SOUNDCHK",
                    "ts": "1700000000.000100",
                    "message": {"text": (call.json or {}).get("text")},
                },
            )
        elif method == "files.getUploadURLExternal":
            file_id = f"F{len(self.calls_to('files.getUploadURLExternal')):04d}"
            self._reply(
                h, 200, {"ok": True, "file_id": file_id, "upload_url": f"http://127.0.0.1:{self.port}/upload/{file_id}"}
            )
        elif method == "files.completeUploadExternal":
            files = json.loads(call.form.get("files", "[]"))
            self._reply(h, 200, {"ok": True, "files": [{"id": f["id"], "title": f.get("title")} for f in files]})
        else:
            self._reply(h, 200, {"ok": False, "error": "unknown_method"})
