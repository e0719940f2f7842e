"""Synthetic k6 CSV output, row for row what `k6 run --out csv` writes with the runner's options.

For tests (known latencies to check percentiles against) and `bench/ingest.py` (the 30-minute soak
at 3,333 req/s). Each request is the 13 rows k6 1.x writes for a one-request iteration: the 9
``http_req*`` rows with the request's tags, then ``data_sent``, ``data_received``,
``iteration_duration``, ``iterations``; plus ``vus`` and ``vus_max`` once per second. Timestamps are
``unix_milli`` (K6_CSV_TIME_FORMAT), system tags as `tasks.k6csv.SYSTEM_TAGS`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO

import numpy as np

HEADER = (
    "metric_name,timestamp,metric_value,error_code,expected_response,method,name,scenario,status,extra_tags,metadata\n"
)
SOAK_MIX: tuple[tuple[str, str, str, float], ...] = (
    ("API-2", "POST", "poll", 0.7),
    ("API-5", "GET", "concerts", 0.2),
    ("API-3", "POST", "reserve", 0.1),
)

REQ_METRICS = (  # what k6 writes for every request, in its order
    "http_reqs",
    "http_req_duration",
    "http_req_blocked",
    "http_req_connecting",
    "http_req_tls_handshaking",
    "http_req_sending",
    "http_req_waiting",
    "http_req_receiving",
    "http_req_failed",
)


def _template(method: str, name: str, scenario: str, status: int, endpoint: str) -> str:
    err = "" if status and status < 400 else str(1000 + status if status else 1211)
    expected = "true" if 200 <= status < 500 else "false"
    tags = f"{err},{expected},{method},{name},{scenario},{status},endpoint={endpoint},\n"
    lines = [
        f"http_reqs,%(t)d,1.000000,{tags}",
        f"http_req_duration,%(t)d,%(d).6f,{tags}",
        f"http_req_blocked,%(t)d,0.002100,{tags}",
        f"http_req_connecting,%(t)d,0.000000,{tags}",
        f"http_req_tls_handshaking,%(t)d,0.000000,{tags}",
        f"http_req_sending,%(t)d,0.021000,{tags}",
        f"http_req_waiting,%(t)d,%(w).6f,{tags}",
        f"http_req_receiving,%(t)d,0.041000,{tags}",
        f"http_req_failed,%(t)d,{0 if expected == 'true' else 1}.000000,{tags}",
        f"data_sent,%(t)d,212.000000,,,,,{scenario},,,\n",
        f"data_received,%(t)d,389.000000,,,,,{scenario},,,\n",
        f"iteration_duration,%(t)d,%(i).6f,,,,,{scenario},,,\n",
        f"iterations,%(t)d,1.000000,,,,,{scenario},,,\n",
    ]
    return "".join(lines)


@dataclass
class Synthetic:
    """What was written: every request's (ms timestamp, endpoint index, status, duration ms)."""

    ts_ms: np.ndarray
    endpoint: np.ndarray
    status: np.ndarray
    duration_ms: np.ndarray
    endpoints: tuple[str, ...]


def requests_for(
    rps: float,
    seconds: int,
    start_s: int,
    *,
    mix: Sequence[tuple[str, str, str, float]] = SOAK_MIX,
    seed: int = 0,
    error_share: float = 0.001,
) -> Synthetic:
    """Request arrivals at `rps` for `seconds`, lognormal latencies (median ~20 ms, long tail)."""
    rng = np.random.default_rng(seed)
    n = int(rps * seconds)
    ts = np.sort(start_s * 1000 + rng.integers(0, seconds * 1000, n))
    ep = rng.choice(len(mix), size=n, p=[m[3] for m in mix])
    dur = rng.lognormal(mean=3.0, sigma=0.8, size=n)
    status = np.full(n, 200, dtype=np.int32)
    names = [m[0] for m in mix]
    if "API-3" in names:  # the soak's reservations mostly find their seat taken
        status[ep == names.index("API-3")] = 409
    bad = rng.random(n) < error_share
    status[bad] = 503
    status[bad & (rng.random(n) < 0.3)] = 0
    return Synthetic(ts, ep, status, dur, tuple(m[0] for m in mix))


def lines(
    syn: Synthetic,
    *,
    mix: Sequence[tuple[str, str, str, float]] = SOAK_MIX,
    scenario: str = "soak",
    vus: int = 1000,
    block: int = 20000,
) -> Iterator[str]:
    """The CSV text in blocks of `block` requests (header first), vus rows once per second."""
    yield HEADER
    templates: dict[tuple[int, int], str] = {}
    last_sec = None
    for a in range(0, len(syn.ts_ms), block):
        out: list[str] = []
        ts, ep = syn.ts_ms[a : a + block].tolist(), syn.endpoint[a : a + block].tolist()
        st, du = syn.status[a : a + block].tolist(), syn.duration_ms[a : a + block].tolist()
        for t, e, s, d in zip(ts, ep, st, du, strict=True):
            sec = t // 1000
            if sec != last_sec:
                out.append(f"vus,{sec * 1000},{vus}.000000,,,,,,,,\nvus_max,{sec * 1000},{vus}.000000,,,,,,,,\n")
                last_sec = sec
            tpl = templates.get((e, s))
            if tpl is None:
                m = mix[e]
                tpl = templates[(e, s)] = _template(m[1], m[2], scenario, s, m[0])
            out.append(tpl % {"t": t, "d": d, "w": d * 0.97, "i": d + 0.4})
        yield "".join(out)


def write(fh: IO[str], syn: Synthetic, **kw: object) -> int:
    """Write the whole file; returns bytes written."""
    n = 0
    for chunk in lines(syn, **kw):  # type: ignore[arg-type]
        fh.write(chunk)
        n += len(chunk)
    return n
