"""The verdict stage in one call, as the campaign flow and `soundcheck report` use it.

evaluate (GX suites) → derive server KPIs → bands + history → decision tree → store checks and KPIs →
report.html, headline.png and verdict.json in the run folder.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from soundcheck.bands import bands_for
from soundcheck.models import Verdict
from soundcheck.profile import Profile
from tasks.decide import judge
from tasks.expectations import Validator
from tasks.report import write_outputs


def judge_run(engine: Engine, run_id: str, profile: Profile, run_dir: str | Path, *,
              store_verdict_row: bool = False, validator: Validator | None = None) -> Verdict:
    """Judge a stored run and write its outputs into `run_dir`. The campaign flow stores the verdict
    row itself when it publishes verdict.json, so by default only checks and KPIs are stored here;
    `soundcheck report` passes `store_verdict_row=True`."""
    verdict, run = judge(engine, run_id, profile, validator=validator, store_verdict_row=store_verdict_row)
    write_outputs(verdict, engine, run_dir, profile_bands=bands_for(profile), run=run)
    return verdict
