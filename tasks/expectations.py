"""Run the Great Expectations suites (`expectations/<scenario>.json`, GX 1.x) on a run's result tables.

Each expectation's `meta` names the requirement it proves (`requirement`), the table it runs on
(`table`, built by `tasks.checktables`), what kind of check it is (`kind`: `correctness` — a defect,
always BLOCK with fix_code_and_retest; `criterion` — a plan success criterion, BLOCK with its
`remediation`; `coverage` — proof that the thing was measured at all, whose failure makes the stage
INCONCLUSIVE), and the human `expected` / `observed` texts (`observed` is a format string over the
row the expectation looked at, or over GX's result counts).

Two traps of GX 1.x are closed here: a misspelled expectation type is dropped by GX with only a log
line, so a suite that loads fewer expectations than its file holds raises `SuiteError`; and an
expectation that looked at no value at all (its row condition matched nothing, or every value was
null) passes vacuously in GX, so it is reported here as *not measured* (a coverage failure), unless
the expectation is marked `optional`, in which case it is left out and said so.
"""

from __future__ import annotations

import json
import logging
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task

from soundcheck.models import Check
from soundcheck.paths import EXPECTATIONS

log = logging.getLogger(__name__)

KINDS = ("correctness", "criterion", "coverage")


class SuiteError(RuntimeError):
    """A suite file that cannot be used as written (bad JSON, unknown expectation, missing meta)."""


@dataclass
class CheckResult:
    """A check plus what the decision tree needs to know about it."""

    check: Check
    kind: str  # correctness | criterion | coverage
    remediation: str | None = None
    measured: bool = True


@dataclass
class Suite:
    scenario: str
    path: Path
    expectations: list[dict[str, Any]]  # the file's entries, in order
    gx_suite: Any  # great_expectations ExpectationSuite


def load_suite(scenario: str, directory: Path | None = None) -> Suite:
    """Read and build one suite; every expectation in the file must survive into the GX suite."""
    import great_expectations as gx

    path = Path(directory or EXPECTATIONS) / f"{scenario}.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SuiteError(f"suite {path}: cannot be read ({e})") from None
    entries = data.get("expectations") or []
    for i, e in enumerate(entries):
        meta = e.get("meta") or {}
        missing = [k for k in ("requirement", "table", "expected") if not meta.get(k)]
        if missing:
            raise SuiteError(f"suite {path}: expectation {i} ({e.get('type')}) lacks meta {', '.join(missing)}")
        if meta.get("kind", "correctness") not in KINDS:
            raise SuiteError(f"suite {path}: expectation {i} has kind {meta.get('kind')!r}; known: {KINDS}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            suite = gx.ExpectationSuite(name=data.get("name", scenario), expectations=entries)
    except Exception as e:  # GX raises its own error types for a bad configuration
        raise SuiteError(f"suite {path}: {e}") from None
    if len(suite.expectations) != len(entries):
        loaded = {x.expectation_type for x in suite.expectations}
        lost = [e.get("type") for e in entries if e.get("type") not in loaded]
        raise SuiteError(
            f"suite {path}: {len(entries)} expectations in the file, {len(suite.expectations)} loaded "
            f"by Great Expectations (not loaded: {', '.join(map(str, lost)) or 'unknown'})"
        )
    return Suite(scenario, path, entries, suite)


class Validator:
    """One ephemeral GX context reused for every table of a run (context creation is the slow part)."""

    def __init__(self) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.gx = gx
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        self.source = self.context.data_sources.add_pandas("soundcheck")
        self._n = 0

    def validate(self, df: pd.DataFrame, entries: list[dict[str, Any]], name: str) -> list[Any]:
        """Validate `entries` (suite-file dicts) against `df`; returns GX results in the same order."""
        self._n += 1
        asset = self.source.add_dataframe_asset(f"{name}-{self._n}")
        batch = asset.add_batch_definition_whole_dataframe("whole").get_batch(batch_parameters={"dataframe": df})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            suite = self.gx.ExpectationSuite(name=f"{name}-{self._n}", expectations=entries)
        if len(suite.expectations) != len(entries):  # load_suite checked the file; keep the invariant here too
            raise SuiteError(f"{name}: {len(entries) - len(suite.expectations)} expectations not loaded")
        with warnings.catch_warnings():  # string row conditions: deprecated for GX 2.0, supported in 1.x
            warnings.simplefilter("ignore", DeprecationWarning)
            result = batch.validate(suite, result_format="SUMMARY")
        return list(result.results)


_prewarm: threading.Thread | None = None


def prewarm() -> threading.Thread:
    """Import Great Expectations in a background thread (its import is most of the verdict stage's
    cold cost: 4–8 s on a busy 2-core machine). A campaign calls this when the load starts, so the
    import overlaps the minutes of load instead of delaying the verdict."""
    global _prewarm
    if _prewarm is None:

        def _load() -> None:
            import great_expectations  # noqa: F401

        _prewarm = threading.Thread(target=_load, name="gx-prewarm", daemon=True)
        _prewarm.start()
    return _prewarm


def _rows_seen(df: pd.DataFrame, kwargs: dict[str, Any]) -> pd.DataFrame:
    cond = kwargs.get("row_condition")
    if cond and not df.empty:
        try:
            return df.query(cond)
        except Exception:  # the condition is GX's business; we only use it for the observed text
            return df.iloc[0:0]
    return df


def _fmt(template: str, values: dict[str, Any]) -> str:
    try:
        return template.format_map(values)
    except (KeyError, ValueError, TypeError, IndexError):
        return ", ".join(f"{k}={v}" for k, v in values.items() if k in template)


def _observed(
    meta: dict[str, Any], df: pd.DataFrame, kwargs: dict[str, Any], result: dict[str, Any], row_level: bool
) -> str:
    counts = {k: result.get(k) for k in ("element_count", "unexpected_count", "missing_count", "observed_value")}
    entry_type = meta.get("_type", "")
    if entry_type == "expect_column_distinct_values_to_contain_set":
        col = kwargs.get("column")
        seen = sorted(map(str, df[col].dropna().unique())) if col in df.columns else []
        seen = [x for x in seen if x != "ALL"]  # the endpoints table's all-endpoint total row
        return "present: " + (", ".join(seen) if seen else "none")
    if entry_type.startswith("expect_table_row_count"):
        template = meta.get("observed")
        if template and len(df):  # name the rows (e.g. which endpoint answered what)
            shown = "; ".join(_fmt(template, r) for r in df.head(5).to_dict("records"))
            return shown + (f"; … {len(df) - 5} more" if len(df) > 5 else "")
        return f"{len(df)} rows"
    if entry_type == "expect_column_values_to_not_be_null":
        return f"{counts['unexpected_count']} of {counts['element_count']} missing"
    template = meta.get("observed")
    rows = _rows_seen(df, kwargs)
    if template and row_level and 1 <= len(rows) <= 5 and "{unexpected_count}" not in template:
        return "; ".join(_fmt(template, {**counts, **r}) for r in rows.to_dict("records"))
    if template:
        return _fmt(template, counts)
    if counts["observed_value"] is not None:
        return f"observed {counts['observed_value']}"
    return f"{counts['unexpected_count']} of {counts['element_count']} outside"


def _measured(entry: dict[str, Any], result: dict[str, Any]) -> bool:
    """False when a column-value expectation looked at no value (GX would pass it vacuously)."""
    if "element_count" not in result:
        return True  # table- or aggregate-level expectations always measure something
    n, missing = result.get("element_count") or 0, result.get("missing_count") or 0
    if entry["type"] == "expect_column_values_to_not_be_null":
        return n > 0
    return n - missing > 0


def evaluate_tables(suite: Suite, tables: dict[str, pd.DataFrame], validator: Validator) -> list[CheckResult]:
    """Run a suite over its tables; one CheckResult per expectation (optional unmeasured ones dropped)."""
    by_table: dict[str, list[int]] = {}
    for i, e in enumerate(suite.expectations):
        by_table.setdefault(e["meta"]["table"], []).append(i)
    results: list[Any] = [None] * len(suite.expectations)
    for table, idx in by_table.items():
        if table not in tables:
            raise SuiteError(f"suite {suite.path}: no table {table!r} for scenario {suite.scenario}")
        for i, r in zip(
            idx,
            validator.validate(tables[table], [suite.expectations[i] for i in idx], f"{suite.scenario}.{table}"),
            strict=True,
        ):
            results[i] = r
    out: list[CheckResult] = []
    for entry, r in zip(suite.expectations, results, strict=True):
        meta, kwargs = entry["meta"], entry.get("kwargs", {})
        res = dict(r.result or {})
        kind = meta.get("kind", "correctness")
        measured = _measured(entry, res)
        if r.exception_info and r.exception_info.get("raised_exception"):
            raise SuiteError(
                f"{suite.scenario}: {entry['type']} on {meta['table']} raised: "
                f"{r.exception_info.get('exception_message')}"
            )
        if not measured and meta.get("optional"):
            log.info("%s %s: not measured (optional), left out", suite.scenario, meta["requirement"])
            continue
        row_level = "column" in kwargs and entry["type"] != "expect_column_distinct_values_to_contain_set"
        observed = (
            _observed({**meta, "_type": entry["type"]}, tables[meta["table"]], kwargs, res, row_level)
            if measured
            else (
                (
                    "not measured: no KPI row"
                    if meta["table"] == "kpis"
                    else f"not measured: no {kwargs.get('column', 'row')} value in the {meta['table']} table"
                )
                + (f" where {kwargs['row_condition']}" if kwargs.get("row_condition") else "")
            )
        )
        check = Check(
            id=meta["requirement"],
            scenario=suite.scenario,
            passed=bool(r.success) and measured,
            observed=observed,
            expected=meta["expected"],
            source="gx" if measured and kind != "coverage" else "coverage",
        )
        out.append(CheckResult(check, kind if measured else "coverage", meta.get("remediation"), measured))
    return out


def evaluate_stage(
    scenario: str, tables: dict[str, pd.DataFrame], validator: Validator | None = None, directory: Path | None = None
) -> list[CheckResult]:
    """Load the scenario's suite and run it over the given tables."""
    return evaluate_tables(load_suite(scenario, directory), tables, validator or Validator())


def evaluate_run(
    run: Any, derived: dict[str, list[Any]], validator: Validator | None = None, settings: dict[str, Any] | None = None
) -> list[CheckResult]:
    """Every stage of a run (`tasks.rundata.RunData`) through its suite; `derived` are the verdict
    stage's own KPIs per scenario (`tasks.serverkpis.stage_kpis`); `settings` the target's limits the
    checks compare with (queue capacity, token TTL: `soundcheck.profile.target_limits`)."""
    from tasks.checktables import kpi_table, tables_for
    from tasks.serverkpis import UNITS

    validator = validator or Validator()
    out: list[CheckResult] = []
    # derived KPIs stored by an earlier judgement of this run are recomputed, not read back
    load_kpis = run.kpis[~run.kpis["name"].isin(list(UNITS))] if not run.kpis.empty else run.kpis
    for scenario, st in run.stages.items():
        if not (EXPECTATIONS / f"{scenario}.json").exists():
            continue
        tables = tables_for(st, kpi_table(load_kpis, derived.get(scenario, []), scenario), settings)
        out.extend(evaluate_stage(scenario, tables, validator))
    return out


@task(name="evaluate-expectations")
def evaluate_task(run: Any, derived: dict[str, list[Any]]) -> list[CheckResult]:
    """Prefect wrapper of `evaluate_run`."""
    return evaluate_run(run, derived)
