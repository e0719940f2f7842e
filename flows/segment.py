"""One load generator's part of a stage, as a flow run on a Prefect worker (issue 14).

The campaign (`tasks.segments.run_segmented` with `k6.work_pool`) starts one run of this flow per segment
through the deployment `k6-segment/<work pool>`; a worker on another machine picks it up, runs its k6
segment paused, and streams into the shared result store. Start, setup, stop and teardown come from the
campaign through k6's REST API and the store, so the flow is one task and never retried (a second attempt
would send a part of the load twice).
"""

from __future__ import annotations

import os
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from tasks.segments import SegmentSpec, run_segment


@task(name="k6-segment", retries=0, cache_policy=NO_CACHE)
def run_segment_task(spec: SegmentSpec, store_url: str) -> dict[str, Any]:
    return run_segment(spec, store_url)


@flow(name="k6-segment", log_prints=True)
def k6_segment(spec: dict[str, Any], store_url: str | None = None) -> dict[str, Any]:
    """Run one k6 execution segment of a stage on this worker.

    spec: the segment (`tasks.segments.SegmentSpec` as a mapping), written by the campaign.
    store_url: the shared result store; when unset, this worker's `SOUNDCHECK_STORE_URL`.
    """
    url = store_url or os.environ.get("SOUNDCHECK_STORE_URL")
    if not url:
        raise ValueError("no result store: the campaign sent none and SOUNDCHECK_STORE_URL is not set on this worker")
    return run_segment_task(SegmentSpec(**spec), url)
