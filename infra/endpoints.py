"""Where the campaign finds the system under test, whichever environment provided it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Endpoints:
    """The local stack's or the AWS stack's addresses (secrets kept out of repr)."""

    base_url: str
    database_url: str | None  # sync SQLAlchemy URL with a read-only session, for the plan's SQL checks
    metrics_url: str | None  # a /metrics endpoint (Prometheus text format)
    redis_url: str | None
    prometheus_url: str | None = None
    admin_token: str | None = field(default=None, repr=False)
    #: Anything else the environment knows (AWS: stack outputs such as TargetGroupArn, DbInstanceId;
    #: local: redis_prefix). CloudWatch dimensions in a profile may name these as ${Key}.
    extra: dict[str, str] = field(default_factory=dict)
