"""API dialects: how a target spells the plan's steps (paths, where the queue token goes, the answers that
mean success). One JSON file per dialect under `deployments/dialects/`, read by the k6 scripts (DIALECT_FILE)
and by the verdict stage (which answers each step may give, R-SPIKE-11; which answer is a success).

`plan` is the load-test plan's API table (and the reference service's); `original` is the service the plan was
written for (juhwan-Ki/concert-reservation: the token goes in the poll's body, a reservation answers 201).
A team whose service speaks otherwise writes a small file of its own and names it in `target.dialect`.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

DIALECT_DIR = Path(__file__).resolve().parent.parent / "deployments" / "dialects"

#: The k6 endpoint tag of each step (soundcheck.plan.ENDPOINTS, plus the client's reads).
ENDPOINT_OF_STEP = {
    "token": "API-1",
    "poll": "API-2",
    "reserve": "API-3",
    "pay": "API-4",
    "concerts": "API-5",
    "charge": "API-6",
    "payment_read": "API-PAY-GET",
    "reservation_read": "API-RES-GET",
    "balance": "API-BALANCE",
}


class DialectError(ValueError):
    """A dialect that cannot be used as written."""


class Step(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["GET", "POST", "PUT", "PATCH"]
    path: str  # with {concertId}, {showId}, {paymentId}, {reservationId} placeholders
    ok: list[int]  # answers that mean success
    taken: list[int] = []  # expected refusals (a seat already taken)
    token_in: Literal["header", "body"] = "header"  # where the queue token goes (poll)
    body: dict | None = None  # JSON body template: "{name}" alone is replaced by the typed value


class Dialect(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    source: str = ""
    notes: str = ""
    steps: dict[str, Step]
    payment_status: dict[str, str]  # the target's payment status → the plan's (COMPLETED, FAILED)

    def step_of(self, endpoint: str) -> Step | None:
        return next((self.steps[s] for s, ep in ENDPOINT_OF_STEP.items() if ep == endpoint and s in self.steps), None)

    def expected(self, endpoint: str) -> frozenset[int] | None:
        """Every answer the plan allows this endpoint in this dialect (success or an expected refusal)."""
        step = self.step_of(endpoint)
        return frozenset(step.ok) | frozenset(step.taken) if step else None

    def answer_expected(self, endpoint: str, status: int) -> bool:
        """Is `status` an answer the plan expects of `endpoint` (R-SPIKE-11)? Steps the dialect does not name: 2xx."""
        expected = self.expected(endpoint)
        return status in expected if expected is not None else 200 <= status < 300

    def success(self, endpoint: str) -> frozenset[int]:
        step = self.step_of(endpoint)
        return frozenset(step.ok) if step else frozenset({200})

    def request(self, step: str, **values: Any) -> tuple[str, str, Any]:
        """(method, path, JSON body or None) of `step` with its placeholders filled (as lib/common.js does)."""
        s = self.steps[step]
        return s.method, _fill(s.path, values), _fill(s.body, values) if s.body is not None else None


def _fill(t: Any, values: dict[str, Any]) -> Any:
    """ "{name}" alone takes the typed value; inside a longer string, its text."""
    if isinstance(t, str):
        whole = re.fullmatch(r"\{(\w+)\}", t)
        if whole:
            return values[whole.group(1)]
        return re.sub(r"\{(\w+)\}", lambda m: str(values[m.group(1)]), t)
    if isinstance(t, list):
        return [_fill(x, values) for x in t]
    if isinstance(t, dict):
        return {k: _fill(v, values) for k, v in t.items()}
    return t


def dialect_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    return p if p.suffix == ".json" else DIALECT_DIR / f"{name_or_path}.json"


@lru_cache(maxsize=16)
def load_dialect(name_or_path: str = "plan") -> Dialect:
    """A dialect by name (`plan`, `original`) or by the path of a JSON file; a clear error otherwise."""
    path = dialect_path(name_or_path)
    try:
        return Dialect.model_validate(json.loads(path.read_text()))
    except FileNotFoundError:
        known = ", ".join(sorted(p.stem for p in DIALECT_DIR.glob("*.json")))
        raise DialectError(f"no API dialect {name_or_path!r} (known: {known}; or the path of a JSON file)") from None
    except (json.JSONDecodeError, ValidationError) as e:
        first = str(e).splitlines()[0:3]
        raise DialectError(f"API dialect {path} cannot be used: {' '.join(first)}") from None
