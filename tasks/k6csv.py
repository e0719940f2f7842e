"""k6's CSV output, line by line: which rows the ingest reads, cut out of a chunk without parsing the rest.

k6 writes ~13 rows per request, each starting with its metric name. Only ``http_req_duration`` (one per
request, with status, endpoint and name), the campaign's custom metrics (``sc_*``), ``vus`` and
``dropped_iterations`` are needed: a vectorised scan of the line starts (numpy) routes them, and anything
that does not start like k6 output is counted as malformed. `classify_slow` is the line-by-line reference
the fast path is tested against. The runner gives k6 `K6_ENV` and `SYSTEM_TAGS` so its output has this shape.
"""

from __future__ import annotations

import numpy as np

#: Environment and flags the runner gives k6 so its output is what this module reads.
K6_ENV = {"K6_CSV_TIME_FORMAT": "unix_milli", "K6_CSV_SAVE_INTERVAL": "1s"}
SYSTEM_TAGS = "status,method,name,scenario,error_code,expected_response"

_DURATION = b"http_req_duration,"
#: First four bytes of every metric k6 1.x writes (http, data, iterations, vus, checks, groups, dropped
#: iterations, websockets, grpc, browser) — a line starting otherwise is not k6 output. Campaign custom
#: metrics start with "sc_". As little-endian integers, sorted for a vectorised lookup.
_KNOWN_PREFIXES = np.array(
    sorted(
        int.from_bytes(p, "little")
        for p in (
            b"http",
            b"data",
            b"iter",
            b"vus,",
            b"vus_",
            b"chec",
            b"grou",
            b"drop",
            b"ws_s",
            b"ws_m",
            b"ws_p",
            b"ws_c",
            b"grpc",
            b"brow",
            b"webv",
        )
    ),
    dtype=np.uint64,
)
_SC = np.uint64(int.from_bytes(b"sc_", "little"))
_HTTP_REQ = np.uint64(int.from_bytes(b"http_req", "little"))  # bytes 0-7 of every http_req* row
_DURATIO = np.uint64(int.from_bytes(b"_duratio", "little"))  # bytes 8-15 of http_req_duration
_N_COMMA = np.uint16(int.from_bytes(b"n,", "little"))  # bytes 16-17
_LOW4, _LOW3, _LOW1 = np.uint64(0xFFFFFFFF), np.uint64(0xFFFFFF), np.uint64(0xFF)
_HTTP, _DATA, _ITER = (np.uint64(int.from_bytes(p, "little")) for p in (b"http", b"data", b"iter"))
#: No k6 CSV row is shorter than this (metric name, comma, timestamp, …): shorter lines are malformed.
_MIN_LINE = 8


def classify(
    lines: bytes | bytearray, start: int, end: int
) -> tuple[bytes, list[tuple[bytes, bytes]], list[bytes], list[bytes], int]:
    """Cut the rows we read out of a chunk of whole lines, without parsing the rest.

    Vectorised over the line starts (numpy, releases the GIL): one pass finds the line ends, then the
    first 16 bytes of every line are gathered at once through an unaligned 16-byte view of the buffer
    (no per-byte passes per line) and compared as two integers. Returns ``http_req_duration`` rows
    (one blob, metric name cut, newline kept), ``sc_*`` rows as (name, rest), ``vus`` and
    ``dropped_iterations`` rows (rest), and the number of lines that cannot be k6 CSV rows at all
    (shorter than any row, or not starting with a known metric name).
    """
    n = end - start
    a = np.frombuffer(lines, dtype=np.uint8, count=n, offset=start)
    ends = np.flatnonzero(a == 10)
    if ends.size == 0:
        return b"", [], [], [], 0
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lens = ends - starts
    if n < 2 * _MIN_LINE:  # too short for the 16-byte view: every line in it is malformed or handled slowly
        return classify_slow(bytes(lines[start:end]))
    # the first 16 bytes of every line in one gather (bytes past a line's end are masked by its length)
    head16 = np.empty((starts.size, 2), dtype="<u8")
    inner = int(np.searchsorted(starts, n - 15))  # lines starting in the last 15 bytes are padded by hand
    v16 = np.ndarray((n - 15,), dtype="V16", buffer=lines, offset=start, strides=(1,))
    head16[:inner] = v16[starts[:inner]].view("<u8").reshape(-1, 2)
    for i in range(inner, starts.size):
        s0_ = start + int(starts[i])
        head16[i] = np.frombuffer(bytes(lines[s0_ : start + n]).ljust(16, b"\0")[:16], dtype="<u8")
    head, head2 = head16[:, 0], head16[:, 1]
    head4 = head & _LOW4
    known = (head4 == _HTTP) | (head4 == _DATA) | (head4 == _ITER)  # nearly every row; the rest looked up
    rest_ = np.flatnonzero(~known)
    if rest_.size:
        h4 = head4[rest_]
        at = np.minimum(np.searchsorted(_KNOWN_PREFIXES, h4), _KNOWN_PREFIXES.size - 1)
        known[rest_] = (_KNOWN_PREFIXES[at] == h4) | ((head[rest_] & _LOW3) == _SC)
    known &= lens >= _MIN_LINE
    bad = int(known.size - np.count_nonzero(known))
    blob = b""
    cand = np.flatnonzero((head == _HTTP_REQ) & (head2 == _DURATIO) & (lens > len(_DURATION)))
    if cand.size:
        cs = starts[cand]
        v2 = np.ndarray((n - 1,), dtype="<u2", buffer=lines, offset=start, strides=(1,))
        ok = v2[cs + 16] == _N_COMMA
        s0 = (cs[ok] + (len(_DURATION) + start)).tolist()
        e0 = (ends[cand[ok]] + (1 + start)).tolist()
        blob = b"".join([lines[i:j] for i, j in zip(s0, e0, strict=True)])
    custom: list[tuple[bytes, bytes]] = []
    vus: list[bytes] = []
    dropped: list[bytes] = []
    first = head & _LOW1
    rare = known & ((first == 115) | (first == 118) | (first == 100)) & (head4 != _DATA)  # s…, v…, d… but data_*
    for i in np.flatnonzero(rare).tolist():
        _route(bytes(lines[start + starts[i] : start + ends[i]]), custom, vus, dropped)
    return blob, custom, vus, dropped, bad


def _route(line: bytes, custom: list[tuple[bytes, bytes]], vus: list[bytes], dropped: list[bytes]) -> None:
    name, _, rest = line.partition(b",")
    if name.startswith(b"sc_"):
        custom.append((name, rest))
    elif name == b"vus":
        vus.append(rest)
    elif name == b"dropped_iterations":
        dropped.append(rest)


def classify_slow(text: bytes) -> tuple[bytes, list[tuple[bytes, bytes]], list[bytes], list[bytes], int]:
    """`_classify` line by line, for a few bytes (a last partial line, a tiny file)."""
    known = tuple(int(p).to_bytes(4, "little") for p in _KNOWN_PREFIXES) + (b"sc_",)
    durations: list[bytes] = []
    custom: list[tuple[bytes, bytes]] = []
    vus: list[bytes] = []
    dropped: list[bytes] = []
    bad = 0
    for line in text.split(b"\n")[:-1]:
        if len(line) < _MIN_LINE or not line.startswith(known):
            bad += 1
        elif line.startswith(_DURATION):
            durations.append(line[len(_DURATION) :] + b"\n")
        else:
            _route(line, custom, vus, dropped)
    return b"".join(durations), custom, vus, dropped, bad


def parse_tags(raw: str) -> dict[str, str]:
    out: dict[str, str] = {}
    if raw:
        for part in raw.split("&"):
            k, sep, v = part.partition("=")
            if sep:
                out[k] = v
    return out
