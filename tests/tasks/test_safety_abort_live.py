"""A live abort: real k6 on loopback, the watcher on the ingest hook, the target turns harmful mid-run.

The load stops on the breach (long before its own end), the stage is ABORTED with the breach sentence,
the abort is stored, and no k6 process is left behind.
"""

from __future__ import annotations

import contextlib
import http.server
import threading
import time

import psutil
import pytest
from sqlalchemy import select

from soundcheck import store
from soundcheck.paths import venv_bin
from soundcheck.profile import Abort
from tasks.safety import AbortWatcher, record_abort

SCRIPT = """
import http from 'k6/http';
export const options = { scenarios: { load: { executor: 'constant-arrival-rate', rate: 40, timeUnit: '1s',
                                              duration: '40s', preAllocatedVUs: 10, maxVUs: 20 } } };
export default function () {
  http.get(`${__ENV.BASE_URL}/api/v1/concerts/`, { tags: { endpoint: 'API-5' }, timeout: '5s' });
}
"""


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    harm_at = float("inf")


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):  # noqa: N802
        code = 500 if self.path.startswith("/api/") and time.time() >= self.server.harm_at else 200
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(b"[]")


def _k6_children():
    return [p for p in psutil.Process().children(recursive=True) if "k6" in p.name()]


@pytest.mark.skipif(venv_bin("k6") is None, reason="k6 binary not installed")
def test_breach_stops_k6_and_is_recorded(tmp_path):
    from tasks.load import LoadRequest, run_scenario

    srv = _Server(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    script = tmp_path / "abort.js"
    script.write_text(SCRIPT)
    engine = store.open_store(f"sqlite:///{tmp_path / 'r.db'}")
    store.start_run(engine, "live", "test", scale=1, time_scale=1, scenarios=["soak"], target=base)
    watcher = AbortWatcher(Abort(window_s=5, min_requests=40))
    try:
        srv.harm_at = time.time() + 5
        res = run_scenario(
            engine,
            "live",
            LoadRequest("soak", base, output_dir=tmp_path, script=script, deadline_s=60, progress=False),
            abort=watcher.event,
            on_second=watcher.on_second,
        )
        watcher.mark_stopped(res.finished_at)
        assert res.status.value == "ABORTED"
        assert watcher.breach is not None and watcher.breach.rule == "error_rate"
        assert res.reason == watcher.breach.reason()
        assert res.finished_at - res.started_at < 25  # the script would run 40 s
        assert watcher.stop_latency_s()["stop_s"] < 2.0  # detection → k6 gone (the load stage polls at 0.5 s)
        assert _k6_children() == []
        record_abort(engine, "live", res.scenario_run_id, watcher)
        with engine.connect() as c:
            row = c.execute(select(store.scenario_runs)).mappings().one()
            ev = c.execute(select(store.events)).mappings().one()
        assert row["status"] == "ABORTED" and "error rate" in row["reason"]
        assert row["details"]["abort"]["breach"]["rule"] == "error_rate"
        assert "csv" in row["details"]  # the load stage's own details are kept
        assert ev["kind"] == "abort"
    finally:
        srv.shutdown()
        engine.dispose()
