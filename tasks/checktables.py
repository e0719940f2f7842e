"""The tables the Great Expectations suites run on, built from one stage's result rows and DB snapshots.

Each builder returns named DataFrames; every expectation in `expectations/<scenario>.json` names the
table it runs on (`meta.table`). Tables always carry their columns, also when empty, so an expectation
never fails for a missing column but for what the data says; the suites' `coverage` expectations
(row counts, required ids present, not-null) turn "nothing was measured" into INCONCLUSIVE instead of
a vacuous pass.

Conventions read from the load stage (tolerant of both camelCase and snake_case keys):
- race: `requests.name` is the test case (`tc1`, `tc2`, `tc3`; `TC-1` is accepted); a TC-3 answer's
  reservation id is in `requests.tags` (`reservationId` / `reservation_id`); the seat of a test case
  comes from the request tags (`seat_id` / `seatId` / `seat`), else `details["seats"][tc]`, else the
  plan's seat 1 for TC-1; lock-wait timeouts are the `sc_lock_timeouts` k6 samples (tags `tc`, `status`).
- saga: the insufficient-points payments are the snapshot's payments whose `failure_reason` starts
  with INSUFFICIENT, the `sc_saga*` k6 samples tagged `reason: INSUFFICIENT_POINTS`, the API-4 requests
  whose name mentions "compens" or "insufficient" (tag `paymentId` / `payment_id`), and
  `details["compensation_payment_ids"]`; the concurrent ones are the other `sc_saga*` samples, the
  requests named "concurrent", and `details["concurrent_payment_ids"]`; failing those, every other
  payment of the stage's snapshot (the snapshot holds the rows created during the stage).
- points: the `sc_point_balance{phase: before|after}` and `sc_point_charged` samples of points.js
  (expected = before + Σ charged, actual = after), or `details["expected_balances"]` ({user id: balance}),
  or `details["initial_balance"]` plus
  the amounts (`tags.amount`) of the charges answered 200; actual balances from `details["final_balances"]`,
  the `sc_final_balance` k6 samples (tag `userId`), or the snapshot of the user table (`users` / `user` /
  `user_point` / `point`; column `balance` / `point` / `points`).
- snapshots: `reservation` (id, show_id, seat_id, status), `seat` (id, status), `payment` (id,
  reservation_id, status, created_at, updated_at), `payment_outbox` (aggregate_id, event_type, status).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from soundcheck.dialect import Dialect, load_dialect
from soundcheck.plan import SETUP_TAG, TARGET_LIMITS
from tasks import journeys
from tasks.rundata import StageData, _ts

INACTIVE_RESERVATION = {"CANCELLED", "CANCELED", "EXPIRED", "FAILED"}
EXPECTED_ENDPOINTS = {"spike": ["API-1", "API-2", "API-3"], "soak": ["API-2", "API-3", "API-5"]}


def _tag(tags: Any, *keys: str) -> Any:
    if isinstance(tags, dict):
        for k in keys:
            if tags.get(k) not in (None, ""):
                return tags[k]
    return None


def _tc(name: Any) -> str | None:
    m = re.fullmatch(r"tc[-_ ]?(\d)", str(name or "").strip().lower())
    return f"tc{m.group(1)}" if m else None


def _num(x: Any) -> float | None:
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def _col(df: pd.DataFrame, *names: str) -> pd.Series | None:
    for n in names:
        if n in df.columns:
            return df[n]
    return None


def _status(s: pd.Series | None) -> pd.Series:
    return s.astype(str).str.upper() if s is not None else pd.Series(dtype=str)


def dialect_of(st: StageData) -> Dialect:
    """The API dialect the stage's k6 run spoke (recorded by the load stage; the plan's by default)."""
    return load_dialect(str((st.details or {}).get("dialect") or "plan"))


def lock_timeouts(st: StageData) -> pd.DataFrame:
    """One row per lock-wait timeout the scenario saw: the `sc_lock_timeouts` k6 samples, tagged with the
    request's tags (`tc`, `name`, `endpoint`) and the answer's `status`. (`requests.error_code` holds k6's
    numeric transport error code, not the service's error, so timeouts are not read from there.)"""
    cols = ["tc", "status", "count"]
    k6 = st.k6
    if k6.empty:
        return pd.DataFrame(columns=cols)
    hit = k6[k6["metric"] == "sc_lock_timeouts"]
    rows = [
        {"tc": _tc(_tag(t, "tc", "name")), "status": int(_num(_tag(t, "status")) or 0), "count": float(v)}
        for v, t in zip(hit["value"], hit["tags"], strict=True)
    ]
    return pd.DataFrame(rows, columns=cols)


def _seat_ids(row: pd.Series) -> list[Any]:
    for k in ("seat_id", "seatId"):
        if k in row and row[k] is not None and not (isinstance(row[k], float) and np.isnan(row[k])):
            return [row[k]]
    for k in ("seat_ids", "seatIds"):
        if k in row and isinstance(row[k], list | tuple):
            return list(row[k])
    return []


def _same(a: Any, b: Any) -> bool:
    return str(a) == str(b)


# ---------------------------------------------------------------------------------------------- race

ANSWER_COLUMNS = [
    "tc",
    "n",
    "n_200",
    "n_409",
    "n_5xx",
    "n_unanswered",
    "n_other",
    "n_non_200",
    "lock_timeouts",
    "lock_timeouts_5xx",
    "lock_timeout_rate",
    "reservation_ids",
    "seat_id",
    "db_rows",
]


def race_tables(st: StageData) -> dict[str, pd.DataFrame]:
    req = st.requests.copy()
    req["tc"] = req["name"].map(_tc) if not req.empty else pd.Series(dtype=str)
    reservations = st.snapshot("reservation")
    show = st.details.get("show_id", 101)
    if not reservations.empty and "show_id" in reservations.columns:
        reservations = reservations[reservations["show_id"].astype(str) == str(show)]
    seats_cfg = st.details.get("seats") or {}
    locks_all = lock_timeouts(st)
    d = dialect_of(st)
    ok_codes = list(d.success("API-3"))
    taken_codes = [c for c in (d.expected("API-3") or {409}) if c not in ok_codes]
    rows = []
    for tc, g in req[req["tc"].notna()].groupby("tc") if not req.empty else []:
        status = g["status"].astype(int)
        n = len(g)
        # n_200 / n_409: the success and seat-taken answers in the target's dialect (the plan's 200 and 409)
        n200, n409 = int(status.isin(ok_codes).sum()), int(status.isin(taken_codes).sum())
        mine = locks_all[locks_all["tc"] == tc]
        locks = int(mine["count"].sum())
        locks_5xx = int(mine.loc[mine["status"] >= 500, "count"].sum())
        ok_tags = g.loc[status.isin(ok_codes), "tags"]
        rids = {str(r) for r in ok_tags.map(lambda t: _tag(t, "reservationId", "reservation_id")) if r is not None}
        if tc == "tc3":
            rids |= tc3_reservation_ids(st)
        seat = next((s for s in g["tags"].map(lambda t: _tag(t, "seat_id", "seatId", "seat")) if s is not None), None)
        if isinstance(seat, list | tuple):
            seat = seat[0] if seat else None
        seat = seat if seat is not None else seats_cfg.get(tc, 1 if tc == "tc1" else None)
        db_rows: float = np.nan
        if seat is not None and not reservations.empty:
            db_rows = float(sum(any(_same(s, seat) for s in _seat_ids(r)) for _, r in reservations.iterrows()))
        elif seat is not None and "reservation" in st.snapshots:
            db_rows = 0.0
        rows.append(
            {
                "tc": tc,
                "n": n,
                "n_200": n200,
                "n_409": n409,
                "n_5xx": int((status >= 500).sum()),
                "n_unanswered": int((status == 0).sum()),
                "n_other": n - n200 - n409,
                "n_non_200": n - n200,
                "lock_timeouts": locks,
                "lock_timeouts_5xx": locks_5xx,
                "lock_timeout_rate": locks / n if n else 0.0,
                "reservation_ids": len(rids),
                "seat_id": None if seat is None else str(seat),
                "db_rows": db_rows,
            }
        )
    answers = pd.DataFrame(rows, columns=ANSWER_COLUMNS)
    requests = (
        req.loc[req["endpoint"] != SETUP_TAG, ["endpoint", "name", "status", "error_code"]].copy()
        if not req.empty
        else pd.DataFrame(columns=["endpoint", "name", "status", "error_code"])
    )
    return {"answers": answers, "requests": requests, "seats": active_seats(reservations)}


def tc3_reservation_ids(st: StageData) -> set[str]:
    """reservationIds of the 200 answers of TC-3, from the scenario's `sc_tc3_reservation` samples."""
    k6 = st.k6
    if k6.empty:
        return set()
    hit = k6[k6["metric"] == "sc_tc3_reservation"]
    ok = {str(c) for c in dialect_of(st).success("API-3")}
    return {
        str(_tag(t, "reservationId")) for t in hit["tags"] if str(_tag(t, "status")) in ok and _tag(t, "reservationId")
    }


def active_seats(reservations: pd.DataFrame) -> pd.DataFrame:
    """One row per held or sold seat (show, seat) of the snapshot: uniqueness proves no double sale."""
    rows = []
    if not reservations.empty:
        status = _status(_col(reservations, "status"))
        for i, r in reservations.iterrows():
            if not status.empty and status.loc[i] in INACTIVE_RESERVATION:
                continue
            for seat in _seat_ids(r):
                rows.append({"show_seat": f"{r.get('show_id', '')}:{seat}", "reservation_id": r.get("id")})
    return pd.DataFrame(rows, columns=["show_seat", "reservation_id"])


# ---------------------------------------------------------------------------------------------- saga

COMPENSATION_COLUMNS = [
    "payment_id",
    "payment_status",
    "reservation_status",
    "seats_available",
    "use_point_published",
    "cancel_seats_published",
    "outbox_failed",
    "saga_time_s",
]


def _payment_ids(st: StageData, name_pattern: str, details_key: str) -> list[str]:
    ids = [str(x) for x in st.details.get(details_key) or []]

    def add(pid: Any) -> None:
        if pid is not None and str(pid) not in ids:
            ids.append(str(pid))

    payments = st.snapshot("payment")
    insufficient = "compens" in name_pattern
    if insufficient and not payments.empty and "failure_reason" in payments.columns:
        hit = payments["failure_reason"].fillna("").astype(str).str.upper().str.startswith("INSUFFICIENT")
        for pid in payments.loc[hit, "id"]:
            add(pid)
    k6 = st.k6
    if not k6.empty:  # the saga scripts tag each watched payment with its id and, for these, the reason
        for t in k6.loc[k6["metric"].str.startswith("sc_saga"), "tags"]:
            reason = str(_tag(t, "reason") or "").upper()
            if insufficient == reason.startswith("INSUFFICIENT"):
                add(_tag(t, "paymentId", "payment_id"))
    req = st.requests
    if not req.empty:
        hit = req[(req["endpoint"] == "API-4") & req["name"].fillna("").str.lower().str.contains(name_pattern)]
        for t in hit["tags"]:
            add(_tag(t, "paymentId", "payment_id"))
    return ids


TERMINAL_PAYMENT = {"COMPLETED", "FAILED"}


def _case_of(tags: Any) -> str:
    return str(_tag(tags, "case") or "")


def client_case(st: StageData, case: str) -> tuple[float | None, float | None]:
    """What the client saw of one watched saga case (saga.js tags its requests and samples `case`):
    (epoch second its payment request was sent, seconds until the client gave up on the saga — None when
    it reached a terminal state)."""
    req = st.requests
    sent = None
    if not req.empty:
        mine = req[(req["endpoint"] == "API-4") & (req["tags"].map(_case_of) == case)]
        sent = float(mine["ts"].min()) if not mine.empty else None
    k6 = st.k6
    gave_up = None
    if sent is not None and not k6.empty:
        hit = k6[(k6["metric"] == "sc_saga_unfinished") & (k6["tags"].map(_case_of) == case)]
        gave_up = float(hit["ts"].max()) - sent if not hit.empty else None
    return sent, gave_up


def _payment_near(payments: pd.DataFrame, ts: float | None, exclude: list[str], window_s: float = 2.0) -> str | None:
    """The snapshot's payment created closest to `ts` (within `window_s`): the payment a tagged request made,
    when neither its answer nor a failure reason names it (a saga stuck before any step)."""
    if ts is None or payments.empty or "created_at" not in payments.columns:
        return None
    best: tuple[float, str] | None = None
    for pid, created in zip(payments["id"].astype(str), payments["created_at"], strict=True):
        c = _epoch(created)
        if pid in exclude or c is None or abs(c - ts) > window_s:
            continue
        if best is None or abs(c - ts) < best[0]:
            best = (abs(c - ts), pid)
    return best[1] if best else None


def _epoch(x: Any) -> float | None:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return None
    if isinstance(x, int | float):
        return float(x)
    try:
        return pd.Timestamp(x).timestamp()
    except (ValueError, TypeError):
        return None


def _saga_seconds(st: StageData, pay: pd.Series, gave_up_s: float | None = None) -> float:
    """Payment request → terminal. A saga that never reached a terminal state has no end: its time is at
    least how long the client watched it (`gave_up_s`), never the zero of its untouched `updated_at`."""
    if str(pay.get("status") or "").upper() not in TERMINAL_PAYMENT:
        if gave_up_s is not None:
            return float(gave_up_s)
        a, b = _epoch(pay.get("created_at")), _ts(st.finished_at)  # still open when the stage ended
        return b - a if a is not None and b is not None and b >= a else np.nan
    for end_key in ("completed_at", "finished_at", "updated_at"):
        a, b = _epoch(pay.get("created_at")), _epoch(pay.get(end_key))
        if a is not None and b is not None and b >= a:
            return b - a
    k6 = st.k6
    if not k6.empty:
        s = k6[k6["metric"].str.contains("saga", case=False)]
        for _, r in s.iterrows():
            if _same(_tag(r["tags"], "paymentId", "payment_id"), pay.get("id")):
                return float(r["value"]) / (1000.0 if "ms" in r["metric"] else 1.0)
    return np.nan


def saga_tables(st: StageData) -> dict[str, pd.DataFrame]:
    payments, reservations = st.snapshot("payment"), st.snapshot("reservation")
    seats, outbox = st.snapshot("seat"), st.snapshot("payment_outbox")
    comp_ids = _payment_ids(st, "compens|insufficient", "compensation_payment_ids")
    comp_sent, comp_gave_up = client_case(st, "compensation")
    if not comp_ids:  # no answer or failure reason names it: the payment the compensation request created
        pid = _payment_near(payments, comp_sent, [])
        if pid is not None:
            comp_ids = [pid]
    conc_ids = _payment_ids(st, "concurrent", "concurrent_payment_ids")
    if not conc_ids and not payments.empty:  # the snapshot holds this stage's payments only
        conc_ids = [str(i) for i in payments["id"] if str(i) not in comp_ids]
    rows = []
    for pid in comp_ids:
        pay = (
            payments[payments["id"].astype(str) == pid].iloc[0]
            if not payments.empty and (payments["id"].astype(str) == pid).any()
            else pd.Series(dtype=object)
        )
        rid = pay.get("reservation_id")
        res = (
            reservations[reservations["id"].astype(str) == str(rid)]
            if rid is not None and not reservations.empty
            else pd.DataFrame()
        )
        res_status = ",".join(sorted(set(_status(_col(res, "status"))))) if not res.empty else None
        seat_ids = [s for _, r in res.iterrows() for s in _seat_ids(r)] if not res.empty else []
        seat_rows = (
            seats[seats["id"].astype(str).isin([str(s) for s in seat_ids])]
            if seat_ids and not seats.empty
            else pd.DataFrame()
        )
        ob = outbox[outbox["aggregate_id"].astype(str) == pid] if not outbox.empty else pd.DataFrame()
        ev = list(zip(ob.get("event_type", []), _status(_col(ob, "status")), strict=False)) if not ob.empty else []
        rows.append(
            {
                "payment_id": pid,
                "payment_status": str(pay.get("status")).upper() if pay.get("status") is not None else None,
                "reservation_status": res_status,
                "seats_available": bool(len(seat_rows) and set(_status(seat_rows["status"])) == {"AVAILABLE"}),
                "use_point_published": ("UsePointCommand", "PUBLISHED") in ev,
                "cancel_seats_published": ("CancelSeatsCommand", "PUBLISHED") in ev,
                "outbox_failed": sum(s == "FAILED" for _, s in ev),
                "saga_time_s": _saga_seconds(st, pay, comp_gave_up) if not pay.empty else np.nan,
            }
        )
    compensation = pd.DataFrame(rows, columns=COMPENSATION_COLUMNS)
    conc_rows = []
    for pid in conc_ids:
        hit = payments[payments["id"].astype(str) == pid] if not payments.empty else pd.DataFrame()
        conc_rows.append(
            {"payment_id": pid, "payment_status": str(hit.iloc[0]["status"]).upper() if not hit.empty else None}
        )
    concurrent = pd.DataFrame(conc_rows, columns=["payment_id", "payment_status"])
    outbox_t = (
        pd.DataFrame(
            {"event_type": outbox.get("event_type", pd.Series(dtype=str)), "status": _status(_col(outbox, "status"))}
        )
        if not outbox.empty
        else pd.DataFrame(columns=["event_type", "status"])
    )
    return {"compensation": compensation, "concurrent": concurrent, "outbox": outbox_t}


# -------------------------------------------------------------------------------------------- points


def points_tables(st: StageData) -> dict[str, pd.DataFrame]:
    expected: dict[str, float] = {str(k): float(v) for k, v in (st.details.get("expected_balances") or {}).items()}
    req = st.requests
    if not expected and "initial_balance" in st.details and not req.empty:
        ok = req[(req["endpoint"] == "API-6") & (req["status"].isin(list(dialect_of(st).success("API-6"))))]
        init = st.details["initial_balance"]
        for _, r in ok.iterrows():
            user = str(_tag(r["tags"], "userId", "user_id") or st.details.get("user_id", ""))
            base = init.get(user, 0) if isinstance(init, dict) else init
            expected[user] = expected.get(user, float(base)) + float(_num(_tag(r["tags"], "amount")) or 0)
    actual: dict[str, float] = {str(k): float(v) for k, v in (st.details.get("final_balances") or {}).items()}
    k6 = st.k6
    if not expected and not k6.empty and (k6["metric"] == "sc_point_balance").any():
        # points.js: the balance read before and after (tag phase), and the amount of every accepted charge
        bal = k6[k6["metric"] == "sc_point_balance"]
        before = [v for v, t in zip(bal["value"], bal["tags"], strict=True) if _tag(t, "phase") == "before"]
        after = [v for v, t in zip(bal["value"], bal["tags"], strict=True) if _tag(t, "phase") == "after"]
        if before:
            user = str(st.details.get("user_id", "charged user"))
            expected[user] = float(before[0]) + float(k6.loc[k6["metric"] == "sc_point_charged", "value"].sum())
            if after:
                actual[user] = float(after[-1])
    if not k6.empty:  # the balance the script read back through the API after the charges
        for _, r in k6[k6["metric"].isin(["sc_final_balance", "sc_balance"])].iterrows():
            actual[str(_tag(r["tags"], "userId", "user_id") or st.details.get("user_id", ""))] = float(r["value"])
    for table in ("users", "user", "user_point", "point"):
        snap = st.snapshot(table)
        if snap.empty:
            continue
        ids, bal = _col(snap, "user_id", "id"), _col(snap, "balance", "point", "points")
        if ids is not None and bal is not None and not actual:
            actual.update({str(i): float(b) for i, b in zip(ids, bal, strict=False)})
            break
    rows = [
        {
            "user_id": u,
            "expected_balance": e,
            "actual_balance": actual.get(u, np.nan),
            "difference": actual.get(u, np.nan) - e,
        }
        for u, e in expected.items()
    ]
    return {"balances": pd.DataFrame(rows, columns=["user_id", "expected_balance", "actual_balance", "difference"])}


# -------------------------------------------------------------------------------------- spike / soak

#: A run of silent seconds is a hole in the measurement only when the load around it makes silence
#: improbable: at least this many responses were expected in it (Poisson: P(none) = e^-5 < 0.7 %).
HOLE_MIN_EXPECTED = 5.0
#: Seconds either side of a silent run whose response rate sets what was expected in it.
NEIGHBOUR_S = 5


def timeline(seconds: pd.DataFrame, k6: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per second from the first to the last second with data, and whether it is a hole.

    A second is covered when a response completed in it, a request was in flight during it (a response
    completing later lasted long enough to span it: `max_ms`), or k6 itself recorded something in it (its
    per-second `vus`, any custom sample). Silence is not missing data when the load is sparse (a few users
    polling every 3 s leave quiet seconds): a run of uncovered seconds is `missing` only when the response
    rate of the seconds around it (the lower of before and after) expected at least HOLE_MIN_EXPECTED
    responses in it. A target that stalls keeps its requests in flight, so a stall is measured, not a hole."""
    cols = ["second", "count", "s5xx", "failed", "k6_samples", "in_flight", "recorded", "expected", "missing"]
    if seconds.empty:
        return pd.DataFrame(columns=cols)
    g = seconds.groupby("second")[["count", "s5xx", "failed"]].sum()
    lo, hi = int(g.index.min()), int(g.index.max())
    out = g.reindex(range(lo, hi + 1), fill_value=0).rename_axis("second").reset_index()
    alive = pd.Series(0, index=out.index)
    if k6 is not None and not k6.empty:
        ts = pd.to_numeric(k6["ts"], errors="coerce").dropna()
        if not ts.empty:
            alive = out["second"].map(ts.floordiv(1).astype(int).value_counts()).fillna(0).astype(int)
    out["k6_samples"] = alive
    flight = np.zeros(len(out), dtype=bool)
    if "max_ms" in seconds.columns:
        spans = seconds.loc[seconds["count"] > 0, ["second", "max_ms"]].dropna()
        for t, m in zip(spans["second"].astype(int), spans["max_ms"].astype(float), strict=True):
            # it ended somewhere in [t, t + 1) after m ms, so it surely spanned whole seconds from t + 1 - m/1000 on
            first = max(lo, int(np.ceil(t + 1 - m / 1000.0)))
            if first < t:
                flight[first - lo : t - lo] = True
    out["in_flight"] = flight
    out["recorded"] = out["count"] + alive
    covered = (out["recorded"] > 0) | out["in_flight"]
    counts = out["count"].to_numpy(dtype=float)
    expected = np.zeros(len(out))
    missing = np.zeros(len(out), dtype=bool)
    i, n = 0, len(out)
    while i < n:
        if covered.iat[i]:
            i += 1
            continue
        j = i
        while j < n and not covered.iat[j]:
            j += 1
        before = counts[max(0, i - NEIGHBOUR_S) : i]
        after = counts[j : j + NEIGHBOUR_S]
        rate = min(before.mean() if len(before) else 0.0, after.mean() if len(after) else 0.0)
        expected[i:j] = rate
        missing[i:j] = rate * (j - i) >= HOLE_MIN_EXPECTED
        i = j
    out["expected"] = expected
    out["missing"] = missing
    return out[cols]


def endpoint_totals(seconds: pd.DataFrame) -> pd.DataFrame:
    """Per endpoint and for ALL: requests, 5xx, unanswered, and their shares."""
    cols = ["endpoint", "count", "s5xx", "failed", "share_5xx", "share_failed"]
    if seconds.empty:
        return pd.DataFrame(columns=cols)
    g = seconds.groupby("endpoint")[["count", "s5xx", "failed"]].sum().reset_index()
    g = g[g["endpoint"] != SETUP_TAG]
    g = pd.concat([g, pd.DataFrame([{"endpoint": "ALL", **g[["count", "s5xx", "failed"]].sum().to_dict()}])])
    g["share_5xx"] = g["s5xx"] / g["count"].clip(lower=1)
    g["share_failed"] = g["failed"] / g["count"].clip(lower=1)
    return g[cols].reset_index(drop=True)


def kpi_table(load_kpis: pd.DataFrame, derived: Iterable[Any], scenario: str) -> pd.DataFrame:
    """The load stage's KPIs of this scenario and the derived ones, phase 'all' for whole-stage values."""
    rows = []
    if not load_kpis.empty:
        k = load_kpis[load_kpis["scenario"] == scenario]
        rows += [
            {"name": r.name, "phase": r.phase if isinstance(r.phase, str) and r.phase else "all", "value": r.value}
            for r in k.itertuples()
        ]
    rows += [{"name": d.name, "phase": d.phase or "all", "value": d.value} for d in derived]
    df = pd.DataFrame(rows, columns=["name", "phase", "value"])
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    return df


def load_tables(st: StageData, kpis: pd.DataFrame) -> dict[str, pd.DataFrame]:
    sec = st.seconds
    by_second = (
        sec[["second", "endpoint", "count", "p99_ms"]].copy()
        if not sec.empty
        else pd.DataFrame(columns=["second", "endpoint", "count", "p99_ms"])
    )
    out = {"timeline": timeline(sec, st.k6), "endpoints": endpoint_totals(sec), "seconds": by_second, "kpis": kpis}
    if st.scenario == "spike":
        reservations = st.snapshot("reservation")
        out["seats"] = active_seats(reservations)
        out["snapshots"] = pd.DataFrame({"table": list(st.snapshots)}, columns=["table"])
    return out


def answers(seconds: pd.DataFrame, dialect: Dialect | None = None) -> pd.DataFrame:
    """Every answer of the stage by endpoint and status, with `expected`: is it one the plan expects of that
    step (soundcheck.plan.EXPECTED_ANSWERS, R-SPIKE-11)? Set-up requests, unanswered requests (status 0) and
    5xx (both in the error rate, judged by its band) are left out; `unexpected` holds only the rows that are not."""
    cols = ["endpoint", "status", "count", "expected"]
    counts: dict[tuple[str, int], int] = {}
    if not seconds.empty and "codes" in seconds.columns:
        for ep, codes in zip(seconds["endpoint"], seconds["codes"], strict=True):
            if ep == SETUP_TAG or not isinstance(codes, dict):
                continue
            for code, n in codes.items():
                status = int(code)
                if 0 < status < 500:  # 5xx: judged by the error-rate band (R-SPIKE-6, tuning)
                    counts[(ep, status)] = counts.get((ep, status), 0) + int(n)
    dialect = dialect or load_dialect("plan")
    rows = [
        {"endpoint": ep, "status": st, "count": n, "expected": dialect.answer_expected(ep, st)}
        for (ep, st), n in sorted(counts.items())
    ]
    return pd.DataFrame(rows, columns=cols)


def unexpected_answers(seconds: pd.DataFrame, dialect: Dialect | None = None) -> pd.DataFrame:
    a = answers(seconds, dialect)
    return a[~a["expected"].astype(bool)].reset_index(drop=True) if not a.empty else a


def tables_for(st: StageData, kpis: pd.DataFrame, settings: dict[str, Any] | None = None) -> dict[str, pd.DataFrame]:
    """Every table the scenario's suite runs on; `kpis` is `kpi_table(...)` for the stage; `settings` the
    target's limits (`target_limits`). Every stage gets `unexpected_answers` (R-SPIKE-11)."""
    common = {"kpis": kpis, "unexpected_answers": unexpected_answers(st.seconds, dialect_of(st))}
    if st.scenario == "race":
        return {**race_tables(st), **common}
    if st.scenario == "saga":
        return {**saga_tables(st), **common}
    if st.scenario == "points":
        return {**points_tables(st), **common}
    out = {**load_tables(st, kpis), **common}
    if st.scenario == "spike":
        out["queue"] = queue_table(st, settings or {})
        flow = journeys.QueueFlow.from_samples(st.k6, settings or {}, _ts(st.finished_at))
        out["queue_moving"] = flow.moving()
        out["journeys"] = journeys.journey_summary(st.k6, flow)
    return out


# --------------------------------------------------------------------------------------- spike queue

QUEUE_COLUMNS = [
    "capacity",
    "ttl_s",
    "issued",
    "entered_at_issue",
    "waiting_at_issue",
    "other_at_issue",
    "freed_before_last_issue",
    "entered_off",
    "expired",
    "stage_s",
    "early_expired",
    "ttl_min_s",
    "ttl_max_s",
    "ttl_error_s",
]


def _terminal_before(st: StageData, t: float) -> int:
    """Places freed before epoch second `t`: payments terminal by then (each frees its user's token, DONE),
    counted from the snapshot's payments and from the client's terminal sagas, whichever saw more."""
    server = 0
    pays = st.snapshot("payment")
    ends = _col(pays, "completed_at", "updated_at") if not pays.empty else None
    if ends is not None and "status" in pays.columns:
        for status, end in zip(_status(pays["status"]), ends, strict=True):
            e = _epoch(end)
            server += int(status in TERMINAL_PAYMENT and e is not None and e <= t + 1.0)
    client = 0
    k6 = st.k6
    if not k6.empty:
        client = int(((k6["metric"] == "sc_saga_time_s") & (pd.to_numeric(k6["ts"]) <= t + 1.0)).sum())
    return max(server, client)


def queue_table(st: StageData, limits: dict[str, Any]) -> pd.DataFrame:
    """R-SPIKE-9 / R-SPIKE-10 from what the spike recorded (one `sc_token_status{status}` per API-1 answer),
    the payments that freed places while tokens were still being issued, and the snapshot's token counts per
    status (`queue_token_counts`; TTLs from `queue_token_ttl` rows {min_ttl_s, max_ttl_s} when the snapshot
    has them). One row; empty when the spike recorded no token answer."""
    k6 = st.k6
    tok = k6[k6["metric"] == "sc_token_status"] if not k6.empty else k6
    if tok.empty:
        return pd.DataFrame(columns=QUEUE_COLUMNS)
    limits = {**TARGET_LIMITS, **limits}
    cap, ttl = int(limits["queue_capacity"]), float(limits["queue_ttl_seconds"])
    status = tok["tags"].map(lambda t: str(_tag(t, "status") or "").upper())
    values = pd.to_numeric(tok["value"]).fillna(1.0)
    issued = float(values.sum())
    entered, waiting = float(values[status == "ENTERED"].sum()), float(values[status == "WAITING"].sum())
    first, last = float(pd.to_numeric(tok["ts"]).min()), float(pd.to_numeric(tok["ts"]).max())
    freed = _terminal_before(st, last)
    low, high = min(cap, issued), cap + freed
    off = (low - entered) if entered < low else (entered - high) if entered > high else 0.0
    counts = st.snapshot("queue_token_counts")
    expired = np.nan
    if not counts.empty and {"status", "count"} <= set(counts.columns):
        expired = float(counts.loc[_status(counts["status"]) == "EXPIRED", "count"].sum())
    end = _ts(st.finished_at)
    stage_s = (end - first) if end is not None else np.nan
    early = (
        expired
        if not np.isnan(expired) and not np.isnan(stage_s) and stage_s < ttl
        else (0.0 if not np.isnan(expired) else np.nan)
    )
    ttl_rows = st.snapshot("queue_token_ttl")
    tmin = tmax = terr = np.nan
    if not ttl_rows.empty and {"min_ttl_s", "max_ttl_s"} <= set(ttl_rows.columns):
        tmin, tmax = float(ttl_rows["min_ttl_s"].min()), float(ttl_rows["max_ttl_s"].max())
        terr = max(abs(tmin - ttl), abs(tmax - ttl))
    return pd.DataFrame(
        [
            {
                "capacity": cap,
                "ttl_s": ttl,
                "issued": issued,
                "entered_at_issue": entered,
                "waiting_at_issue": waiting,
                "other_at_issue": issued - entered - waiting,
                "freed_before_last_issue": freed,
                "entered_off": off,
                "expired": expired,
                "stage_s": stage_s,
                "early_expired": early,
                "ttl_min_s": tmin,
                "ttl_max_s": tmax,
                "ttl_error_s": terr,
            }
        ],
        columns=QUEUE_COLUMNS,
    )
