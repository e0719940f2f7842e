"""The scrape collector and the Sampler against the running reference service (local stack, embedded)."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from sqlalchemy import create_engine, func, select

from infra.local_stack import LocalStack
from soundcheck import store
from soundcheck.profile import parse_profile
from tasks.collect import (
    Sample,
    Sampler,
    ScrapeCollector,
    build_collectors,
    load_metric_map,
    start_sampler,
)


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    profile = parse_profile(
        {"name": "collect-test", "environment": {"local": {"seed_users": 50}}, "metrics": {"interval_s": 0.2}}
    )
    stack = LocalStack(profile, tmp_path_factory.mktemp("collect") / "run")
    try:
        yield profile, stack.start()
    finally:
        stack.stop()


class Broken:
    source = "broken"
    min_interval_s = 0.0

    def collect(self) -> list[Sample]:
        raise ConnectionError("scrape target down")


def test_scrape_maps_the_reference_services_metrics_to_kpis(running):
    profile, ep = running
    c = ScrapeCollector(ep.metrics_url, load_metric_map("reference"))
    first = {s.kpi: s.value for s in c.collect()}
    assert first["db_pool_size"] == 5
    assert 0 <= first["db_pool_in_use"] <= 5 and first["db_pool_waiting"] >= 0
    assert first["db_pool_timeouts_total"] == 0
    assert first["rss_bytes"] > 10e6
    assert first["redis_memory_bytes"] > 100e3
    assert first["outbox_pending"] >= 0 and first["consumer_lag_messages"] >= 0
    assert "cpu_percent" not in first  # a rate needs two scrapes
    with httpx.Client(timeout=5) as client:
        for _ in range(20):
            client.get(ep.base_url + "/api/v1/concerts/")
    time.sleep(0.3)
    second = {s.kpi: s.value for s in c.collect()}
    assert 0 < second["cpu_percent"] < 150  # one process: at most a core (plus measuring noise)
    assert set(second) <= set(load_metric_map("reference"))
    c.close()


def test_sampler_writes_samples_counts_failures_and_feeds_the_callback(running, tmp_path):
    profile, ep = running
    engine = store.open_store(f"sqlite:///{tmp_path / 'r.db'}")
    store.start_run(engine, "run-1", "collect-test", scale=1, time_scale=1, scenarios=["race"], target=ep.base_url)
    batches: list[list[Sample]] = []
    collectors = build_collectors(profile, ep) + [Broken()]
    sampler = Sampler(collectors, interval_s=0.2, engine=engine, run_id="run-1", on_batch=batches.append)
    with sampler:
        time.sleep(1.5)
    stats = sampler.stats
    assert not sampler.running
    assert stats.ticks >= 4
    assert stats.failures["broken"] == stats.ticks  # every round failed for it, and the sampler kept going
    assert "scrape target down" in (stats.last_error or "")
    with engine.connect() as c:
        n = c.execute(select(func.count()).select_from(store.server_samples)).scalar()
        kpis = {r[0] for r in c.execute(select(store.server_samples.c.kpi).distinct())}
    assert n == stats.samples == sum(len(b) for b in batches) > 0
    assert {"db_pool_in_use", "db_pool_size", "rss_bytes", "redis_memory_bytes"} <= kpis
    assert stats.cpu_s > 0 and stats.cpu_share < 0.5


def test_a_failing_callback_or_store_never_stops_sampling(running, tmp_path):
    profile, ep = running

    def explode(_batch):
        raise RuntimeError("watcher bug")

    (tmp_path / "dir.db").mkdir()  # a store that cannot be opened: every write fails
    engine = create_engine(f"sqlite:///{tmp_path / 'dir.db'}")
    sampler = Sampler(build_collectors(profile, ep), interval_s=0.2, engine=engine, run_id="r", on_batch=explode)
    sampler.start()
    time.sleep(1.0)
    stats = sampler.stop()
    assert stats.ticks >= 3
    assert stats.failures["callback"] == stats.failures["store"] == stats.ticks
    assert len(sampler.recent) == stats.samples > 0  # the samples are still kept in memory


def test_sampler_is_bounded_and_stops_promptly(running):
    profile, ep = running
    bounded = Sampler(build_collectors(profile, ep), interval_s=0.1, max_duration_s=0.5).start()
    time.sleep(1.2)
    assert not bounded.running and bounded.stats.wall_s < 1.0
    slow = Sampler(build_collectors(profile, ep), interval_s=30).start()
    time.sleep(0.3)
    t0 = time.monotonic()
    slow.stop()
    assert time.monotonic() - t0 < 2 and slow.stats.ticks == 1


def test_start_sampler_from_a_profile_ties_samples_to_the_stage(running, tmp_path):
    profile, ep = running
    engine = store.open_store(f"sqlite:///{tmp_path / 'r.db'}")
    store.start_run(engine, "run-2", "collect-test", scale=1, time_scale=1, scenarios=["race"], target=ep.base_url)
    sr = store.start_scenario(engine, "run-2", "race")
    seen = threading.Event()
    sampler = start_sampler(profile, ep, engine, "run-2", sr, on_batch=lambda b: seen.set())
    assert seen.wait(5)
    sampler.stop()
    with engine.connect() as c:
        ids = {r[0] for r in c.execute(select(store.server_samples.c.scenario_run_id).distinct())}
        sources = {r[0] for r in c.execute(select(store.server_samples.c.source).distinct())}
    assert ids == {sr} and sources == {"scrape", "kafka"}  # the stack runs the Saga on Kafka: lag from offsets


def test_scrapes_respect_the_target_allowlist(running):
    profile, ep = running
    outside = profile.model_copy(
        update={"metrics": profile.metrics.model_copy(update={"scrape_url": "http://10.255.255.1:9/metrics"})}
    )
    sampler = Sampler(build_collectors(outside, ep), interval_s=0.1)
    with sampler:
        time.sleep(0.35)
    assert not [s for s in sampler.recent if s.source == "scrape"] and sampler.stats.failures["scrape"] >= 2
    assert "AllowlistError" in (sampler.stats.last_error or "")
