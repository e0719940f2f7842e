"""How long the local stack takes: start from nothing, restart after a remediation, teardown.

    uv run python bench/local_stack_times.py [--workers 1] [--seed-users 12000] [--rounds 3]
        [--database-url mysql://root@127.0.0.1:3306/test] [--redis-url redis://127.0.0.1:6379/11] [--prometheus]

Prints the median and the spread over the rounds (wall seconds; a shared machine makes them noisy).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from infra.local_stack import LocalStack  # noqa: E402
from soundcheck.profile import parse_profile  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed-users", type=int, default=12000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--database-url")
    ap.add_argument("--redis-url")
    ap.add_argument("--prometheus", action="store_true")
    a = ap.parse_args()
    local = {
        "workers": a.workers,
        "seed_users": a.seed_users,
        "prometheus": a.prometheus,
        "database_url": a.database_url,
        "redis_url": a.redis_url,
    }
    profile = parse_profile({"name": "bench", "environment": {"local": local}})
    times: dict[str, list[float]] = {"start": [], "apply_settings (pool 5 -> 10)": [], "stop": []}
    for _ in range(a.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            stack = LocalStack(profile, Path(tmp) / "run")
            try:
                t = time.perf_counter()
                stack.start()
                times["start"].append(time.perf_counter() - t)
                t = time.perf_counter()
                stack.apply_settings({"db_pool_size": 10})
                times["apply_settings (pool 5 -> 10)"].append(time.perf_counter() - t)
            finally:
                t = time.perf_counter()
                stack.stop()
                times["stop"].append(time.perf_counter() - t)
    db = a.database_url or "sqlite"
    print(
        f"workers={a.workers} seed_users={a.seed_users} db={db.split(':')[0]} "
        f"redis={'server' if a.redis_url else 'private'} prometheus={a.prometheus} rounds={a.rounds}"
    )
    for name, xs in times.items():
        print(f"{name:32s} median {statistics.median(xs):5.1f} s   min {min(xs):5.1f}   max {max(xs):5.1f}")


if __name__ == "__main__":
    main()
