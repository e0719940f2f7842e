"""How fast does a breach of an alarm band stop the load? (R-SAFE, plan §6.2 "stop at once")

Runs a small k6 load on loopback through the real load stage (`tasks.load.run_scenario`) with the
`AbortWatcher` on its live ingest hook, makes the target start answering 500 at a known instant, and
prints, per trial:
- harm → detection: from the first harmful second to the watcher setting the abort event (includes
  k6's CSV flush and the ingest's `lag_s` hold-back of each second);
- detection → k6 exited: the load stage noticing the event, SIGINT, k6 shutting down;
- harm → k6 exited.

Targets: `--target standin` (default; an in-process loopback HTTP server that flips to 500) or
`--target sut` (the reference service with `SUT_FAULTS=lock_timeout_500` and a soak mix; needs
infra/sut). Loopback only; every run bounded by `--max-s`.

    uv run python bench/abort_stop.py --trials 3
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from soundcheck import store  # noqa: E402
from soundcheck.profile import Abort  # noqa: E402
from tasks.safety import AbortWatcher  # noqa: E402

SCRIPT = """
import http from 'k6/http';
export const options = {
  scenarios: { load: { executor: 'constant-arrival-rate', rate: __ENV.RATE * 1, timeUnit: '1s',
                       duration: __ENV.DURATION, preAllocatedVUs: 20, maxVUs: 50 } },
};
export default function () {
  http.get(`${__ENV.BASE_URL}/api/v1/concerts/`, { tags: { endpoint: 'API-5' }, timeout: '5s' });
}
"""


class StandIn(http.server.ThreadingHTTPServer):
    daemon_threads = True
    harm_at: float | None = None  # epoch seconds; from then on API answers 500


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):  # quiet
        pass

    def do_GET(self):  # noqa: N802
        harm = self.server.harm_at is not None and time.time() >= self.server.harm_at  # type: ignore[attr-defined]
        code = 500 if harm and self.path.startswith("/api/") else 200
        body = b"[]" if code == 200 else b"boom"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(OSError):  # k6 stopped mid-answer
            self.wfile.write(body)


def _watch_k6_exit(watcher: AbortWatcher, out: dict, stop: threading.Event) -> None:
    """Records when the k6 child process is gone after the abort event was set."""
    me = psutil.Process()
    seen: set[int] = set()
    while not stop.is_set():
        kids = [p for p in me.children(recursive=True) if "k6" in (p.name() or "")]
        seen.update(p.pid for p in kids)
        if watcher.event.is_set() and seen and not kids:
            out["k6_exit"] = time.time()
            return
        time.sleep(0.02)


def trial(rate: int, harm_after_s: float, max_s: float, bands: Abort, lag_s: int | None = None) -> dict:
    from tasks.load import LoadRequest, run_scenario

    srv = StandIn(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    with tempfile.TemporaryDirectory() as d:
        script = Path(d) / "abort.js"
        script.write_text(SCRIPT)
        engine = store.open_store(f"sqlite:///{d}/r.db")
        store.start_run(engine, "bench", "bench", scale=1, time_scale=1, scenarios=["soak"], target=base)
        w = AbortWatcher(bands)
        out: dict = {}
        stop = threading.Event()
        threading.Thread(target=_watch_k6_exit, args=(w, out, stop), daemon=True).start()
        srv.harm_at = time.time() + harm_after_s
        harm_second = srv.harm_at  # the instant the first 500 can be answered
        res = run_scenario(
            engine,
            "bench",
            LoadRequest(
                "soak",
                base,
                output_dir=d,
                script=script,
                deadline_s=max_s,
                env={"RATE": str(rate), "DURATION": f"{int(max_s)}s"},
                progress=False,
                lag_s=lag_s,
            ),
            abort=w.event,
            on_second=w.on_second,
        )
        stop.set()
        srv.shutdown()
        engine.dispose()
    if w.breach is None:
        return {"status": res.status.value, "tripped": False}
    k6_exit = out.get("k6_exit", res.finished_at)
    return {
        "status": res.status.value,
        "tripped": True,
        "rule": w.breach.rule,
        "harm_to_detect_s": w.breach.detected_at - harm_second,
        "detect_to_stop_s": k6_exit - w.breach.detected_at,
        "harm_to_stop_s": k6_exit - harm_second,
        "stage_returned_after_s": res.finished_at - w.breach.detected_at,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--rate", type=int, default=50, help="requests per second (constant arrival rate)")
    ap.add_argument("--harm-after-s", type=float, default=8.0)
    ap.add_argument("--max-s", type=float, default=40.0)
    ap.add_argument(
        "--ingest-lag-s",
        type=int,
        default=None,
        help="hold-back of each second in the ingest before it is written and shown to the watcher "
        "(default: the load stage's for a watched stage, tasks.load.WATCHED_LAG_S)",
    )
    args = ap.parse_args()
    bands = Abort(window_s=5, min_requests=50)
    rows = []
    for i in range(args.trials):
        r = trial(args.rate, args.harm_after_s, args.max_s, bands, args.ingest_lag_s)
        rows.append(r)
        print(f"trial {i + 1}: {r}", flush=True)
    ok = [r for r in rows if r.get("tripped")]
    if not ok:
        print("no trial tripped")
        return
    for k in ("harm_to_detect_s", "detect_to_stop_s", "harm_to_stop_s", "stage_returned_after_s"):
        vals = [r[k] for r in ok]
        print(f"{k}: median {statistics.median(vals):.2f} s, max {max(vals):.2f} s (n={len(vals)})")


if __name__ == "__main__":
    main()
