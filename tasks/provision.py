"""Provision and tear down the environment a profile names: the local stack, the AWS stack, or an external target.

`provision(profile, run_dir)` returns a `Provisioned`: the `Endpoints` the stages use and a *handle*
with the operations safety needs (``restart()``, and on AWS ``deregister_targets()``) and
``stop()`` for teardown. Both environments clean up after a failed start, so the Prefect task can be
retried safely; teardown is idempotent and retried too.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from infra.endpoints import Endpoints
from soundcheck.profile import Profile

log = logging.getLogger(__name__)


@dataclass
class Provisioned:
    endpoints: Endpoints
    #: LocalStack | AwsStack | None (external target: nothing to start, stop or restart).
    handle: Any = None


def external_endpoints(profile: Profile) -> Endpoints:
    base = profile.target.base_url
    if not base:
        raise ValueError("target.base_url is required for an external target")
    return Endpoints(base_url=base.rstrip("/"), database_url=profile.target.database_url,
                     metrics_url=profile.metrics.scrape_url or f"{base.rstrip('/')}/metrics", redis_url=None,
                     prometheus_url=profile.metrics.prometheus_url,
                     admin_token=os.environ.get(profile.target.admin_token_env))


def provision(profile: Profile, run_dir: str | Path) -> Provisioned:
    """Bring the profile's environment up and say where it answers."""
    kind = profile.environment.kind
    if kind == "local":
        from infra.local_stack import LocalStack

        stack = LocalStack(profile, run_dir)
        return Provisioned(stack.start(), stack)
    if kind == "aws":
        from infra.aws_stack import AwsStack

        aws = AwsStack(profile)
        aws.admin_token = os.environ.get(profile.target.admin_token_env)
        return Provisioned(aws.start(), aws)
    return Provisioned(external_endpoints(profile), None)


def teardown(handle: Any) -> None:
    """Stop what `provision` started (a `Provisioned` or its handle); nothing for an external target."""
    if isinstance(handle, Provisioned):
        handle = handle.handle
    if handle is not None:
        handle.stop()


@task(name="provision-environment", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def provision_task(profile: Profile, run_dir: str) -> Provisioned:
    return provision(profile, run_dir)


@task(name="teardown-environment", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def teardown_task(handle: Any) -> None:
    teardown(handle)
