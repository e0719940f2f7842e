"""/metrics merged across two worker processes."""

from __future__ import annotations

import re
import time

import httpx

from tests.sut_harness import run_sut


def test_metrics_are_merged_across_worker_processes(tmp_path):
    with run_sut(tmp_path, workers=2, seed_users=100) as sut:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # /health answers once the first worker is up; wait for both
            if re.search(r"^sut_db_pool_size 10\.0", httpx.get(sut.base + "/metrics").text, re.M):
                break
            time.sleep(0.2)
        with httpx.Client(base_url=sut.base) as c:
            for _ in range(40):
                assert c.get("/api/v1/concerts/").status_code == 200
        counts, sizes = set(), set()
        for _ in range(8):
            with httpx.Client(base_url=sut.base) as c:  # new connections: scrapes land on either worker
                text = c.get("/metrics").text
            m = re.search(
                r'sut_http_request_duration_seconds_count\{method="GET",route="/api/v1/concerts/",'
                r'status="200"\} ([0-9.]+)',
                text,
            )
            counts.add(float(m.group(1)))
            sizes.add(re.search(r"^sut_db_pool_size ([0-9.]+)", text, re.M).group(1))
    assert counts == {40.0}
    assert sizes == {"10.0"}  # 5 per process, summed over the two workers
