"""What server-metric sampling costs: the Sampler's own CPU, and the service's CPU answering the scrapes.

Starts the local stack (embedded defaults, reference service with N workers), then samples /metrics
for D seconds at interval I through the reference map into a SQLite result store, and prints:

* the sampling thread's CPU seconds (time.thread_time) per sample round and as a share of one core;
* the service's CPU share during an idle window without scrapes and during the sampling window, so the
  scrape's cost on the target side is visible too (noisy on a shared machine: compare the two lines).

    uv run python bench/sampler_cost.py [--interval 1.0] [--duration 30] [--workers 1] [--prometheus]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from infra.local_stack import LocalStack  # noqa: E402
from soundcheck import store  # noqa: E402
from soundcheck.profile import parse_profile  # noqa: E402
from tasks.collect import Sampler, build_collectors  # noqa: E402


def _service_cpu(stack: LocalStack) -> float:
    total = 0.0
    leader = psutil.Process(stack.procs.children["sut"].pgid)
    for p in [leader, *leader.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--prometheus", action="store_true", help="sample through a Prometheus server instead")
    a = ap.parse_args()

    metrics = {"interval_s": a.interval, **({"source": "prometheus"} if a.prometheus else {})}
    profile = parse_profile(
        {
            "name": "bench",
            "metrics": metrics,
            "environment": {"local": {"seed_users": 100, "workers": a.workers, "prometheus": a.prometheus}},
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        stack = LocalStack(profile, Path(tmp) / "run")
        try:
            ep = stack.start()
            engine = store.open_store(f"sqlite:///{tmp}/results.db")
            store.start_run(engine, "bench", "bench", scale=1, time_scale=1, scenarios=[], target=ep.base_url)
            time.sleep(2.0)  # let start-up settle
            c0, t0 = _service_cpu(stack), time.monotonic()
            time.sleep(a.duration / 2)
            idle_share = (_service_cpu(stack) - c0) / (time.monotonic() - t0)

            sampler = Sampler(build_collectors(profile, ep), interval_s=a.interval, engine=engine, run_id="bench")
            c0, t0 = _service_cpu(stack), time.monotonic()
            sampler.start()
            time.sleep(a.duration)
            st = sampler.stop()
            busy_share = (_service_cpu(stack) - c0) / (time.monotonic() - t0)
        finally:
            stack.stop()
    source = "prometheus" if a.prometheus else "scrape"
    print(f"source={source} interval={a.interval:g}s duration={st.wall_s:.1f}s workers={a.workers}")
    print(f"rounds={st.ticks} samples={st.samples} failures={st.failures or 0}")
    print(
        f"sampler CPU: {st.cpu_s * 1000:.1f} ms total, {st.cpu_s / max(st.ticks, 1) * 1000:.2f} ms per round, "
        f"{st.cpu_share * 100:.2f} % of one core"
    )
    print(
        f"service CPU: {idle_share * 100:.2f} % of one core idle, {busy_share * 100:.2f} % while sampled "
        f"(difference {(busy_share - idle_share) * 100:+.2f} points, noisy)"
    )


if __name__ == "__main__":
    main()
