"""k6's memory per virtual user for a scenario script: what 10,000 spike users cost the load generator.

Starts ``k6 run --paused`` at two scales, waits until every VU is initialised (the REST API's vus-max
holds still), reads k6's resident memory and CPU time, and kills it; no request is ever sent (the target is
a closed loopback port and the test never starts). The slope between the two scales is the memory per VU;
the same for a minimal script (one GET, one sleep) separates k6's own per-VU cost from the script's.

    uv run python bench/k6_memory.py                          # spike.js at 0.2 and 1.0
    uv run python bench/k6_memory.py --script scenarios/soak.js --scales 0.2 1
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from soundcheck.paths import venv_bin  # noqa: E402

MINIMAL = """
import http from 'k6/http';
import { sleep } from 'k6';
const N = Math.round(10000 * parseFloat(__ENV.SCALE || '1'));
export const options = {
  scenarios: { s: { executor: 'ramping-vus', startVUs: 0, stages: [{ duration: '10s', target: N }] } },
};
export default function () { http.get(`${__ENV.BASE_URL}/x`); sleep(3); }
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def initialised(script: Path, scale: float, timeout_s: float = 300) -> dict:
    """k6 paused with every VU of `script` at `scale` initialised: VUs, RSS (MB), CPU s, wall s."""
    port = _port()
    cmd = [str(venv_bin("k6")), "run", "--paused", "--no-usage-report", "--quiet", "--address", f"127.0.0.1:{port}"]
    cmd += ["-e", f"SCALE={scale}", "-e", "BASE_URL=http://127.0.0.1:9", str(script)]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        last, steady = None, 0
        while time.monotonic() - t0 < timeout_s:
            if proc.poll() is not None:
                raise RuntimeError(f"k6 exited with {proc.returncode} before its VUs were ready")
            try:
                vus = httpx.get(f"http://127.0.0.1:{port}/v1/status", timeout=2).json()["data"]["attributes"]["vus-max"]
            except (httpx.HTTPError, KeyError, ValueError):
                vus = None
            steady = steady + 1 if vus is not None and vus == last else 0
            last = vus
            if steady >= 6:  # 3 s without a new VU
                break
            time.sleep(0.5)
        p = psutil.Process(proc.pid)
        cpu = p.cpu_times()
        return {
            "scale": scale,
            "vus": last,
            "rss_mb": round(p.memory_info().rss / 2**20),
            "cpu_s": round(cpu.user + cpu.system, 1),
            "wall_s": round(time.monotonic() - t0 - 3, 1),
        }
    finally:
        proc.kill()
        proc.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--script", type=Path, default=ROOT / "scenarios" / "spike.js")
    ap.add_argument("--scales", type=float, nargs=2, default=[0.2, 1.0])
    args = ap.parse_args(argv)
    minimal = Path(tempfile.mkdtemp(prefix="sc-k6mem-")) / "minimal.js"
    minimal.write_text(MINIMAL)
    for script in (args.script, minimal):
        lo, hi = (initialised(script, s) for s in args.scales)
        per_vu_kb = (hi["rss_mb"] - lo["rss_mb"]) * 1024 / max(1, hi["vus"] - lo["vus"])
        print(f"{script.name}: {lo} → {hi}; {per_vu_kb:.0f} KB per VU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
