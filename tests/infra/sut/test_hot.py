"""The raw-ASGI hot paths (infra/sut/hot.py) answer API-1 and API-2 exactly as the Starlette routes do.

The same sequence of requests goes to the service twice, with `hot_paths` on and off, each on a fresh
database and Redis prefix. Token values and expiry times differ between the runs by nature; everything
else — status codes, error codes, the answer's shape, the ENTERED/WAITING split, positions, the latency
metric's labels — must be identical.
"""

from __future__ import annotations

import re

import pytest
from starlette.testclient import TestClient

from infra.sut.app import create_app
from infra.sut.redis_server import EmbeddedRedis
from infra.sut.settings import Settings


@pytest.fixture(scope="module")
def redis_url():
    r = EmbeddedRedis().start()
    try:
        yield r.url
    finally:
        r.stop()


def _normal(body: dict) -> dict:
    """An answer with its run-specific values (token, expiry) replaced by their shape."""
    out = dict(body)
    if isinstance(out.get("token"), str):
        out["token"] = "uuid" if re.fullmatch(r"[0-9a-f-]{36}", out["token"]) else out["token"]
    if isinstance(out.get("expiresAt"), str):
        out["expiresAt"] = "iso" if re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z", out["expiresAt"]) else out["expiresAt"]
    return out


def _session(tmp_path, redis_url: str, hot: bool) -> list[tuple]:
    settings = Settings(
        db_url=f"sqlite+aiosqlite:///{tmp_path / ('hot' if hot else 'plain')}.db",
        redis_url=redis_url,
        redis_prefix=f"hot{int(hot)}:",
        queue_capacity=3,
        seed_users=20,
        hot_paths=hot,
    )
    import asyncio

    from infra.sut.server import prepare

    asyncio.run(prepare(settings))  # schema, reset, seed: what the launcher does before the workers
    seen: list[tuple] = []
    before = _latency_counts()
    with TestClient(create_app(settings)) as c:

        def call(method: str, path: str, **kw) -> dict:
            r = c.request(method, path, **kw)
            body = r.json() if r.content else None
            seen.append((method, path, r.status_code, r.headers.get("content-type"), _normal(body or {})))
            return body or {}

        tokens = [
            call("POST", "/api/v1/queues/tokens/1", headers={"Authorization": f"Bearer test-user-{u}"})
            for u in range(1, 7)
        ]
        call("POST", "/api/v1/queues/tokens/1", headers={"Authorization": "Bearer test-user-2"})  # again: 200
        call("POST", "/api/v1/queues/tokens/1")  # no Authorization: 401
        call("POST", "/api/v1/queues/tokens/1", headers={"Authorization": "Bearer someone"})  # malformed: 401
        call("POST", "/api/v1/queues/tokens/0", headers={"Authorization": "Bearer test-user-9"})  # not positive
        call("POST", "/api/v1/queues/tokens/x", headers={"Authorization": "Bearer test-user-9"})  # not a number
        for t in tokens:
            call("POST", "/api/v1/queues/enter", headers={"Queue-Token": t["token"]})  # ENTERED or WAITING + position
        call("POST", "/api/v1/queues/enter", headers={"Queue-Token": "no-such-token"})  # 404
        call("POST", "/api/v1/queues/enter")  # no token at all: 401
        call("POST", "/api/v1/queues/enter", json={"token": tokens[4]["token"]})  # the body form
    after = _latency_counts()
    seen.append(("latency metric", {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}))
    return seen


def _latency_counts() -> dict[tuple, float]:
    """Requests counted by the service's latency histogram, by (method, route, status)."""
    from infra.sut import metrics

    out: dict[tuple, float] = {}
    for family in metrics.REQUEST_LATENCY.collect():
        for s in family.samples:
            if s.name.endswith("_count"):
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_the_hot_paths_answer_as_the_starlette_routes_do(tmp_path, redis_url):
    hot, plain = _session(tmp_path, redis_url, True), _session(tmp_path, redis_url, False)
    assert hot == plain
    statuses = [s[2] for s in hot[:-1]]
    assert statuses[:6] == [201] * 6 and statuses[6] == 200 and statuses[7:11] == [401, 401, 400, 400]
    answers = [s[4] for s in hot[11:17]]
    assert [a["status"] for a in answers] == ["ENTERED"] * 3 + ["WAITING"] * 3
    assert [a["position"] for a in answers[3:]] == [1, 2, 3]
    assert statuses[17:] == [404, 401, 200]
    counted = hot[-1][1]
    assert counted[(("method", "POST"), ("route", "/api/v1/queues/tokens/{targetId}"), ("status", "201"))] == 6
    assert counted[(("method", "POST"), ("route", "/api/v1/queues/enter"), ("status", "200"))] == 7
