"""The plan's catalogue: every constant of the load-test plan, defined once.

Per scenario: its k6 script and GX suite, the user, seat and queue-target ranges it uses, its phases
and the KPIs it must deliver. Per KPI: unit, direction and default band (the R-GATE table, §5.1).
Also the remediation codes (§5.2, §6.1), the test-data tables of the §6.2 cleanup, the abort levels
(R-SAFE, read by the profile's defaults and passed to k6), the endpoint tags and one value formatter.
Everything else reads these; nothing here imports the rest of soundcheck.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict

ROOT = Path(__file__).resolve().parent.parent
SCENARIO_DIR = ROOT / "scenarios"
SUITE_DIR = ROOT / "expectations"

# ------------------------------------------------------------------------------------- endpoints

#: k6 `endpoint` tag of set-up, warm-up and health requests: never counted in a KPI.
SETUP_TAG = "ADMIN"

#: The plan's API table (§2): endpoint tag → what it does.
ENDPOINTS: dict[str, str] = {
    "API-1": "issue a queue token",
    "API-2": "poll the queue position",
    "API-3": "reserve seats",
    "API-4": "pay",
    "API-5": "list concerts",
    "API-6": "charge points",
}
#: The concert list: the endpoint the plan's "cache the concert list" remedy is about.
CONCERT_LIST = "API-5"

#: The answers the plan expects of each step (R-SPIKE-11); any other answer is an error, named by
#: endpoint and status. API-PAY-GET and API-RES-GET are the client's reads of a payment and a reservation.
EXPECTED_ANSWERS: dict[str, frozenset[int]] = {
    "API-1": frozenset({200, 201}),
    "API-2": frozenset({200}),
    "API-3": frozenset({200, 409}),
    "API-4": frozenset({200}),
    "API-5": frozenset({200}),
    "API-6": frozenset({200}),
    "API-PAY-GET": frozenset({200}),
    "API-RES-GET": frozenset({200}),
}


#: Stages judged on exact answers (R-SPIKE-11, and unexpected answers counted in their error rate): all of
#: them (the soak's users are admitted before they reserve; a user still waiting polls instead).
EXACT_ANSWER_STAGES = frozenset({"spike", "race", "saga", "points", "soak"})


# ---------------------------------------------------------------------------------- the queue

#: The target's limits the checks compare with, by default the plan's (§2: 50 active tokens, a 30-min token
#: TTL, a 3 s lock wait, 10-min holds). `admission_period_s`: how often the target gives freed places to the
#: next waiting users (0: at once, as the plan's service does when a payment ends; a timer-driven queue
#: sets its period). A profile states its target's own under `target`.
TARGET_LIMITS: dict[str, float] = {
    "queue_capacity": 50,
    "queue_ttl_seconds": 1800.0,
    "admission_period_s": 1.0,
    "lock_wait_seconds": 3.0,
    "hold_minutes": 10.0,
}
#: The plan's poll interval (API-2 every 3 s, §3.1): a user sees an admission at most this late.
POLL_INTERVAL_S = 3.0
#: Slack on top of admission period + poll interval before a freed place counts as not given (R-SPIKE-12).
ADMISSION_MARGIN_S = 2.0


def expected_answer(endpoint: str, status: int) -> bool:
    """Is `status` an answer the plan expects of `endpoint`? An endpoint the plan does not name: 2xx."""
    expected = EXPECTED_ANSWERS.get(endpoint)
    return status in expected if expected is not None else 200 <= status < 300


# ----------------------------------------------------------------------------------------- KPIs


class Band(BaseModel):
    """A KPI's band edges. `higher_is_better` flips the comparisons (throughput, compensation)."""

    model_config = ConfigDict(extra="forbid")

    target: float
    allowed: float
    higher_is_better: bool = False


MB = 1024**2

#: Stages under sustained load: capacity KPIs mean something only there (race, saga and points fire
#: bursts of ~100 requests at one instant on purpose; their correctness is what their checks judge).
LOAD_STAGES = frozenset({"spike", "soak"})


@dataclass(frozen=True)
class Kpi:
    """One KPI of the plan. `derived`: computed by the verdict stage (server samples, trends), not by
    the load stage; `rate`: its band edges scale with `--scale`; `stages`: where its band applies
    (None: wherever it is measured); `higher`: more is better (a band's own flag says it for banded KPIs)."""

    unit: str
    band: Band | None = None
    derived: bool = False
    rate: bool = False
    stages: frozenset[str] | None = None
    source: str = "plan §5.1"
    higher: bool = False

    @property
    def higher_is_better(self) -> bool:
        return self.band.higher_is_better if self.band is not None else self.higher


KPIS: dict[str, Kpi] = {
    # client KPIs (tasks/kpis.py)
    "requests": Kpi("count"),
    "p95_ms": Kpi("ms", Band(target=1000, allowed=2000), stages=LOAD_STAGES),
    "p99_ms": Kpi("ms"),
    "throughput_rps": Kpi(
        "req/s", Band(target=1000, allowed=800, higher_is_better=True), rate=True, stages=LOAD_STAGES
    ),
    "error_rate": Kpi("ratio", Band(target=0.001, allowed=0.005)),
    "rate_5xx": Kpi("ratio"),
    "unexpected_answer_rate": Kpi("ratio"),
    "lock_timeout_rate": Kpi("ratio"),
    "saga_time_s": Kpi("s", Band(target=10, allowed=20)),
    "saga_time_max_s": Kpi("s"),
    "saga_completion": Kpi("ratio", higher=True),
    "compensation_success": Kpi("ratio", Band(target=1.0, allowed=0.99, higher_is_better=True)),
    "wait_until_entered_s": Kpi("s"),
    "wait_until_entered_max_s": Kpi("s"),
    "wait_censored_share": Kpi("ratio"),
    "tc1_release_spread_ms": Kpi("ms"),
    "tokens_entered_at_issue": Kpi("count"),
    "tokens_waiting_at_issue": Kpi("count"),
    "point_balance_error": Kpi("points"),
    "dropped_iterations": Kpi("count"),
    # derived by the verdict stage (tasks/serverkpis.py)
    "db_pool_use": Kpi("ratio", Band(target=0.70, allowed=0.85), derived=True, stages=LOAD_STAGES),
    "db_pool_use_max": Kpi("ratio", derived=True),
    "db_pool_timeouts": Kpi("count", derived=True),
    "consumer_lag": Kpi("messages", Band(target=100, allowed=500), derived=True),
    "consumer_lag_s": Kpi("s", derived=True),
    "memory_growth": Kpi("ratio", derived=True),
    "redis_memory_bytes": Kpi(
        "bytes", Band(target=500 * MB, allowed=1024 * MB), derived=True, source="plan §3.4 watch bands"
    ),
    "gc_pause_max_ms": Kpi("ms", derived=True),
    "db_cpu_percent": Kpi(
        "%",
        Band(target=70, allowed=90),
        derived=True,
        stages=LOAD_STAGES,
        source="plan §5.2 (DB CPU > 90 %) and §4.1.1 (scale out at 70 %)",
    ),
    "heap_use": Kpi(
        "ratio", Band(target=0.70, allowed=0.85), derived=True, stages=LOAD_STAGES, source="plan §3.4 watch bands"
    ),
    "outbox_backlog": Kpi("rows", derived=True),
    "outbox_oldest_age_s": Kpi(
        "s",
        Band(target=10, allowed=20),
        derived=True,
        source="plan §3.3 (outbox every 5 s × 2) and §6.1 (outbox PENDING backlog)",
    ),
    "unanswered_rate": Kpi(
        "ratio",
        Band(target=0.001, allowed=0.005),
        derived=True,
        source="plan §6.1 (network timeouts), error-rate edges",
    ),
    "latency_trend": Kpi("ratio", derived=True),
    "latency_trend_ms": Kpi("ms", derived=True),
    "latency_upward_ms": Kpi("ms", derived=True),
    "lock_timeouts": Kpi("count", derived=True),
    "sagas_unfinished": Kpi("count", derived=True),
}

#: The KPIs the verdict stage derives (and so replaces when it re-judges a run).
DERIVED_KPIS = frozenset(n for n, k in KPIS.items() if k.derived)


def kpi_family(name: str) -> str:
    """`p95_ms.API-1` → `p95_ms`: per-endpoint KPIs take their family's unit and band."""
    return name.split(".", 1)[0]


def unit_of(name: str) -> str:
    k = KPIS.get(name) or KPIS.get(kpi_family(name))
    return k.unit if k else ""


# ------------------------------------------------------------------------------------ scenarios

#: Spike phases (plan §3.1): seconds from the first request at --time-scale 1.
SPIKE_PHASES: dict[str, tuple[float, float]] = {"ramp_up": (0, 10), "plateau": (10, 60), "ramp_down": (60, 120)}
#: Phases where users are still arriving or already leaving: rate KPIs are not banded there.
RAMP_PHASES = frozenset({"ramp_up", "ramp_down"})


@dataclass(frozen=True)
class Scenario:
    """One stage of the plan. Users, seats and queue targets are disjoint across scenarios so one
    campaign's stages never share a user (one queue token per (target, user), balances) or a seat."""

    name: str
    requirement: str  # the requirement-id family it answers
    users: tuple[int, int]  # (first user id, count)
    seats: dict[str, str] = field(default_factory=dict)  # script variables naming its seats and targets
    phases: dict[str, tuple[float, float]] = field(default_factory=dict)
    load_kpis: tuple[str, ...] = ()  # client KPIs the stage must deliver to be judged
    server_kpis: tuple[str, ...] = ()  # server KPIs likewise
    #: An arrival-rate stage (k6's open model): its VUs are the ones busy at that instant, not users.
    open_model: bool = False
    #: Its setup() returns what every part of a split test must share (a release instant, an idempotency
    #: key, the admitted users' tokens): one setup for all parts, as soundcheck's generators run it. The
    #: open-source k6-operator runs setup() in every runner (grafana/k6-operator#223).
    shared_setup: bool = False

    @property
    def script(self) -> Path:
        return SCENARIO_DIR / f"{self.name}.js"

    @property
    def suite(self) -> Path:
        return SUITE_DIR / f"{self.name}.json"


PLAN: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "spike",
            "R-SPIKE",
            (1601, 10000),
            {"SEAT_IDS": "1,2"},
            SPIKE_PHASES,
            ("p95_ms", "error_rate", "throughput_rps"),
            ("db_pool_use", "db_pool_timeouts"),
        ),
        Scenario(
            "race",
            "R-RACE",
            (1, 300),  # TC-1 100, TC-2 100, TC-3 1 (+ spare)
            {"TC1_SEAT": "1", "TC2_SEAT_FIRST": "101", "TC3_SEAT": "201", "RACE_TARGET_FIRST": "9001"},
            shared_setup=True,
        ),
        Scenario(
            "saga",
            "R-SAGA",
            (301, 200),  # compensation 1 (a 10,000-point user), concurrent 100
            {"SAGA_SEAT_FIRST": "301", "SAGA_TARGET_FIRST": "9501"},
            load_kpis=("saga_time_s",),
            server_kpis=("consumer_lag",),
            shared_setup=True,
        ),
        Scenario(
            "soak",
            "R-SOAK",
            (601, 1000),
            {"SOAK_SEAT_FIRST": "601", "SOAK_SEAT_COUNT": "400"},
            load_kpis=("p95_ms", "error_rate", "throughput_rps"),
            server_kpis=("db_pool_use", "db_pool_timeouts", "memory_growth"),
            open_model=True,
            shared_setup=True,  # its admitted users' tokens (none with private_targets admission)
        ),
        Scenario("points", "R-POINT", (501, 100), shared_setup=True),  # one user charged concurrently (+ spare)
    )
}
SCENARIOS: tuple[str, ...] = ("spike", "race", "saga", "soak", "points")

#: The plan puts both the spike's reservations and race TC-1 on seat 1 of show 101. A campaign does not
#: reset the service between stages, so when both run TC-1 moves to a seat no other scenario touches.
RACE_TC1_SEAT_BESIDE_SPIKE = "3"
#: The script variables that name seat ids (a profile's `target.seat_offset` shifts them to a real show's seats).
SEAT_VARIABLES = frozenset({"SEAT_IDS", "TC1_SEAT", "TC2_SEAT_FIRST", "TC3_SEAT", "SAGA_SEAT_FIRST", "SOAK_SEAT_FIRST"})


def shift_seats(variables: dict[str, str], offset: int) -> dict[str, str]:
    """`variables` with every seat id moved by `offset` (SEAT_IDS is a comma-separated list)."""
    if not offset:
        return dict(variables)
    return {
        k: (",".join(str(int(x) + offset) for x in v.split(",")) if k in SEAT_VARIABLES else v)
        for k, v in variables.items()
    }


# ------------------------------------------------------------------------------ remediations

#: Remediation catalogue: code → the concrete change (plan §5.2 and the §6.1 risk table), plan's first.
REMEDIATIONS: dict[str, str] = {
    "raise_db_pool": "HikariCP maximum-pool-size 5 → 10",
    "cache_concert_list": "cache the concert list (GET /api/v1/concerts/) in Redis",
    "raise_consumer_concurrency": "Kafka consumer concurrency 3 → 5",
    "upgrade_db_instance": "RDS db.r5.large → db.r5.xlarge",
    "fix_code_and_retest": "fix the code-level defect, then re-run the campaign",
    "shorten_outbox_interval": "outbox scheduler interval 5 s → 2 s, or strengthen publish retries "
    "(retry sooner than 60 s, more than 3 attempts)",
    "add_read_replica": "optimise the HikariCP settings and add an RDS read replica for reads",
    "reduce_redis_memory": "shorten the queue-token TTL (30 min), or ElastiCache cache.r5.large → cache.r5.xlarge",
    "add_kafka_partitions": "raise consumer parallelism and topic partitions 3 → 6",
    "adjust_alb_idle_timeout": "raise the ALB idle timeout (default 60 s) and check client/server timeouts",
    "use_rank_positions": "compute queue positions from a Redis sorted set (ZRANK) instead of "
    "SELECT COUNT(*) … WHERE status='WAITING' AND id < ?",
    "tune_gc": "tune the collector / heap (-Xmx6g) so stop pauses stay under 100 ms",
    "scale_out_app_servers": "scale out the app tier (auto-scaling at CPU > 70 %, max 4 × t3.large)",
    "scale_out": "run the instance count the capacity stage measured for the plan's peak, and start a new "
    "instance at the measured scale-out point (or pre-scale before ticket open when scaling cannot keep up)",
    "investigate_regression": "find what changed in the build or settings named (soundcheck history --kpi); "
    "fix it, or accept the new level",
    "fix_test_environment": "make the campaign able to measure (see the reason), then re-run",
}

# ------------------------------------------------------------------------------------ test data

#: Tables holding the rows a test creates, children first (foreign keys), each with `created_at`. The
#: plan's §6.2 cleanup names queue_token and reservation; payments, their outbox, the consumers' inbox
#: and the point history are created by the same journeys. Both the SQL rollback and the reference
#: service's admin cleanup delete exactly these.
TEST_DATA_TABLES: tuple[str, ...] = (
    "consumed_message",
    "payment_outbox",
    "payment",
    "point_history",
    "reservation",
    "queue_token",
)

# --------------------------------------------------------------------------------- abort levels


@dataclass(frozen=True)
class AbortLevels:
    """Alarm levels that stop the load (R-SAFE and the soak's watch bands, §3.4). The profile's `abort`
    defaults are these; k6's abortOnFail thresholds get the same values (`k6_env`)."""

    error_rate: float = 0.01
    p95_ms: float = 3000.0
    pool_exhaustion_s: float = 10.0  # pool timeouts sustained this long
    redis_memory_bytes: float = 1024 * MB
    consumer_lag: float = 1000
    outbox_backlog: float = 10000
    heap_share: float = 0.85  # heap alarm (§3.4: normal < 70 %, alarm > 85 %)


ABORT = AbortLevels()


def k6_abort_env(error_rate: float, p95_ms: float, on_latency: bool = True) -> dict[str, str]:
    """The abort levels as the k6 scripts read them (ABORT_ERROR_RATE, ABORT_P95_MS; 0: no latency abort)."""
    return {"ABORT_ERROR_RATE": f"{error_rate:g}", "ABORT_P95_MS": f"{p95_ms:g}" if on_latency else "0"}


# ------------------------------------------------------------------------------------ formatting


def fmt_value(value: float | None, unit: str, *, digits: int = 4) -> str:
    """One way to show a KPI value everywhere (trace, report, Slack, artifacts): ratios as percent,
    bytes as MB, the rest with `digits` significant digits and the unit."""
    if value is None:
        return "–"
    if abs(value) < 1e-9:
        value = 0.0
    if unit == "ratio":
        return f"{value:.1%}"
    if unit == "bytes":
        return f"{value / MB:,.0f} MB"
    if abs(value) >= 10**digits:  # no exponent for a large count: 123,456, not 1.235e+05
        return f"{value:,.0f} {unit}".strip()
    return f"{value:,.{digits}g} {unit}".strip()


def fmt_edge(x: float | None) -> str:
    """A band edge without its unit (the trace's '< 1000 target, ≤ 2000 allowed')."""
    if x is None:
        return "–"
    return f"{x:,.4g}" if abs(x) < 1e6 else f"{x:,.0f}"
