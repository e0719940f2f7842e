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
from pydantic import BaseModel, ConfigDict, Field

from infra.endpoints import Endpoints
from soundcheck.profile import Profile, ProfileError

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
    return Endpoints(
        base_url=base.rstrip("/"),
        database_url=profile.target.database_url,
        metrics_url=profile.metrics.scrape_url or f"{base.rstrip('/')}/metrics",
        redis_url=None,
        prometheus_url=profile.metrics.prometheus_url,
        admin_token=os.environ.get(profile.target.admin_token_env),
    )


def provision(profile: Profile, run_dir: str | Path) -> Provisioned:
    """Bring the profile's environment up and say where it answers."""
    kind = profile.environment.kind
    if kind == "local":
        from infra.local_stack import LocalStack

        stack = LocalStack(profile, run_dir)
        return Provisioned(stack.start(), stack)
    if kind == "aws":
        from infra.aws_stack import AwsStack
        from tasks.runs import build_id

        aws = AwsStack(profile)
        aws.admin_token = os.environ.get(profile.target.admin_token_env)
        if profile.environment.aws.app:
            aws.approved_build = last_approved_build(profile)
        return Provisioned(aws.start(build=build_id(profile)), aws)
    return Provisioned(external_endpoints(profile), None)


def last_approved_build(profile: Profile) -> str | None:
    """The newest build this profile's campaigns approved (the rollback redeploys it); None when the store
    has none or cannot be read (the rollback then restarts what runs, and says so)."""
    from soundcheck import store

    try:
        engine = store.open_store(profile.store_url)
        try:
            return store.last_approved_build(engine, profile.name)
        finally:
            engine.dispose()
    except Exception as exc:  # noqa: BLE001 - a rollback target is a convenience, never a reason to stop
        log.warning("no last approved build: %s", store.store_sentence(profile.store_url, exc))
        return None


def teardown(handle: Any) -> None:
    """Stop what `provision` started (a `Provisioned` or its handle); nothing for an external target."""
    if isinstance(handle, Provisioned):
        handle = handle.handle
    if handle is not None:
        handle.stop()


class StageEnv(BaseModel):
    """Where the provisioned system under test answers, as the stage flows get it.

    Only addresses are shown (Prefect records stage parameters); the environment's `Endpoints` (which
    may carry an admin token) and the provisioner's handle (teardown, restart) ride along unserialised.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    base_url: str
    metrics_url: str | None = None
    has_database: bool = False
    endpoints: Any = Field(default=None, exclude=True, repr=False)
    handle: Any = Field(default=None, exclude=True, repr=False)

    @classmethod
    def of(cls, endpoints: Any, handle: Any = None) -> StageEnv:
        return cls(
            base_url=endpoints.base_url,
            metrics_url=getattr(endpoints, "metrics_url", None),
            has_database=bool(getattr(endpoints, "database_url", None)),
            endpoints=endpoints,
            handle=handle,
        )

    @property
    def database_url(self) -> str | None:
        return getattr(self.endpoints, "database_url", None)


def _worth_retrying(task: Any, task_run: Any, state: Any) -> bool:
    """Retry what may pass on a second try (a port in use, a slow start); not a configuration or code error."""
    try:
        state.result()
    except (ImportError, ProfileError, TypeError, AttributeError):
        return False
    except Exception:  # noqa: BLE001
        return True
    return True


@task(name="provision", retries=2, retry_delay_seconds=5, retry_condition_fn=_worth_retrying, cache_policy=NO_CACHE)
def provision_env(profile: Profile, run_dir: str) -> StageEnv:
    """Bring the environment up; safe to retry (a half-started stack is torn down by the provisioner).
    Great Expectations is imported in the background meanwhile, so the verdict costs no import after the load."""
    from tasks.expectations import prewarm

    prewarm()
    provisioned = provision(profile, run_dir)
    return StageEnv.of(provisioned.endpoints, provisioned.handle)


@task(name="teardown", retries=2, retry_delay_seconds=3, cache_policy=NO_CACHE)
def teardown_env(env: StageEnv) -> None:
    """Idempotent (stopping a stopped stack does nothing), so it is safe to retry."""
    teardown(env.handle)
