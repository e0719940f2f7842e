"""The docs cannot rot: the site builds in strict mode (broken links and missing pages fail), the README stays a
front door of at most 150 lines, and every page it links to exists."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_docs_site_builds_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    for page in ("index.html", "your-service/index.html", "verdict/index.html", "fault-matrix/index.html"):
        assert (tmp_path / "site" / page).exists(), page


def test_the_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    assert "uv run soundcheck run" in text and "uv run pytest" in text
    for link in re.findall(r"\]\(([^)#]+)", text):
        if not link.startswith("http"):
            assert (ROOT / link).exists(), link


def test_the_generated_reference_pages_are_up_to_date():
    """docs/reference/*.md come from the code (profile model, KPI catalogue, remediations, CLI, store, routes)."""
    from soundcheck.reference import OUT, render

    for name, text in render().items():
        assert (OUT / name).read_text() == text, f"docs/reference/{name}: run `uv run python -m soundcheck.reference`"
    pages = render()
    assert "`history.regression`" in pages["profile.md"] and "`investigate_regression`" in pages["remediations.md"]
