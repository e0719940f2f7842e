"""verdict.json as design.md gives it, and the HTML report rendered by a real headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from soundcheck.profile import parse_profile
from tests.verdict_data import build_run, new_store

DESIGN_KEYS = {"run_id", "profile", "started_at", "finished_at", "verdict", "checks", "kpis", "remediations", "report"}


@pytest.fixture(scope="module")
def blocked(tmp_path_factory):
    from tasks.publish import publish_verdict
    from tasks.verdict_stage import judge_run

    out = tmp_path_factory.mktemp("verdict")
    engine = new_store(out)
    build_run(
        engine,
        "run-block",
        ("race", "spike"),
        race={"tc1_200": 3, "tc1_rows": 3},
        spike={"server": {"db_pool_in_use": 4}, "seconds": 20},
    )
    verdict = judge_run(engine, "run-block", parse_profile({"name": "test"}), out)
    publish_verdict(verdict, out, engine.url.render_as_string(hide_password=False))
    engine.dispose()
    return out, verdict


def test_verdict_json_has_the_design_shape(blocked):
    out, verdict = blocked
    body = json.loads((out / "verdict.json").read_text())
    assert set(body) >= DESIGN_KEYS and set(body) - DESIGN_KEYS <= {"trace", "extra"}
    assert body["verdict"] == "BLOCK" and body["report"] == "report.html" and body["profile"] == "test"
    assert all(set(c) == {"id", "scenario", "passed", "observed", "expected"} for c in body["checks"])
    assert {"name", "scenario", "value", "unit", "band", "previous"} <= set(body["kpis"][0])
    assert {"R-RACE-1", "R-RACE-5"} <= {c["id"] for c in body["checks"] if not c["passed"]}
    rem = {r["code"]: r for r in body["remediations"]}
    assert rem["fix_code_and_retest"]["reason"]
    assert rem["raise_db_pool"]["detail"] == "HikariCP maximum-pool-size 5 → 10"
    assert body["trace"][-1]["subject"] == "verdict" and body["trace"][-1]["branch"] == "BLOCK"


def test_report_is_self_contained(blocked):
    out, _ = blocked
    html = (out / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "the report must open offline"
    assert "@import" not in html and "<script src" not in html
    assert html.count("data:image/png;base64,") >= 8  # latency, throughput, errors, pool, redis, lag, memory, gc
    for needle in (
        'id="verdict-banner"',
        "R-RACE-1",
        "raise_db_pool",
        "HikariCP maximum-pool-size 5 → 10",
        "decision trace",
        "DB pool use (n / size)",
        "Consumer lag",
        "GC pause",
        "Redis memory",
    ):
        assert needle in html
    png = (out / "headline.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _chromium(tmp_path, *args):
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'prof'}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_report_renders_in_headless_chromium(blocked, tmp_path):
    from PIL import Image

    out, _ = blocked
    url = (out / "report.html").as_uri()
    dom = _chromium(tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-verdict="BLOCK"' in dom.stdout and "Deploy blocked" in dom.stdout
    # the plan's dashboard figures lead, before the remediations, the trace and the detail (issue 18, §4.3)
    order = [dom.stdout.index(f'id="{x}"') for x in ("dashboard", "remediations", "trace", "kpis")]
    assert order == sorted(order) and "p95 response time" in dom.stdout
    shot = tmp_path / "shot.png"
    r = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1000,700", url)
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    img = Image.open(shot).convert("RGB")
    assert img.size == (1000, 700)
    # the banner across the top is the BLOCK red (#c62828); below it, the page's light background
    banner = [img.getpixel((x, 8)) for x in (5, 300, 900)]
    assert all(abs(p[0] - 0xC6) < 25 and p[1] < 80 and p[2] < 80 for p in banner), banner
    body = img.getpixel((995, 650))
    assert min(body) > 200, body
