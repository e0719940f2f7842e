"""Prefect flows only: `campaign` (the whole run) and one flow per scenario stage. They orchestrate; the
work lives in `tasks/`.

Prefect reads its settings when it is first imported, so the defaults that keep a local run quiet and
robust are set here, before any flow module imports Prefect: no telemetry (it also causes a "database
is locked" error under `prefect_test_harness`), and a longer start-up allowance for the temporary
local server, which takes ~15 s cold and more on a busy two-core machine. Anything already set in the
environment wins.
"""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ["DO_NOT_TRACK"] = "1"  # Prefect client telemetry off: a campaign sends nothing off the machine
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
