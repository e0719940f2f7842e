"""The campaign sends nothing off the machine: Prefect's client telemetry and the server's analytics are
off wherever a campaign starts (importing `flows`), even when the caller's environment says nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, os
import flows.campaign  # noqa: F401 - what `soundcheck run` imports first
from prefect._internal.analytics.enabled import is_telemetry_enabled
print(json.dumps({"dnt": os.environ.get("DO_NOT_TRACK"),
                  "server": os.environ.get("PREFECT_SERVER_ANALYTICS_ENABLED"),
                  "telemetry": is_telemetry_enabled()}))
"""


def test_campaign_import_turns_prefect_telemetry_off() -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DO_NOT_TRACK", "PREFECT_SERVER_ANALYTICS_ENABLED", "CI") and not k.startswith("GITHUB_")
    }
    env["DO_NOT_TRACK"] = "0"  # even a caller that asks for tracking gets none from a campaign
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=True
    ).stdout
    got = json.loads(out.strip().splitlines()[-1])
    assert got == {"dnt": "1", "server": "false", "telemetry": False}
