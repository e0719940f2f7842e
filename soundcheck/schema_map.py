"""Schema maps: the target's names for the tables and columns the plan's SQL checks read.

The plan's SQL (§3.2, §3.3, §6.2) names `reservation`, `payment`, `payment_outbox`, `seat`, `queue_token` and
their columns; a team's service may call them otherwise (the original: `payments.reservaion_id`). A map is a
YAML file under `deployments/schema_maps/` (or a path), `plan table: {table: name, columns: {plan: name}}`;
anything it does not list keeps the plan's name. The snapshot reads through it and stores rows under the
plan's names, so every check reads one vocabulary; the §6.2 cleanup deletes through it.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

SCHEMA_MAP_DIR = Path(__file__).resolve().parent.parent / "deployments" / "schema_maps"


class SchemaMapError(ValueError):
    """A schema map that cannot be used as written."""


class TableNames(BaseModel):
    model_config = ConfigDict(extra="forbid")

    table: str
    columns: dict[str, str] = {}


class SchemaMap(BaseModel):
    """Plan names → target names; the identity for anything not listed."""

    tables: dict[str, TableNames] = {}

    def table(self, plan_table: str) -> str:
        t = self.tables.get(plan_table)
        return t.table if t else plan_table

    def column(self, plan_table: str, plan_column: str) -> str:
        t = self.tables.get(plan_table)
        return t.columns.get(plan_column, plan_column) if t else plan_column

    def to_plan(self, plan_table: str, row: dict) -> dict:
        """A target row with its columns under the plan's names."""
        t = self.tables.get(plan_table)
        if not t or not t.columns:
            return row
        back = {v: k for k, v in t.columns.items()}
        return {back.get(k, k): v for k, v in row.items()}


PLAN_NAMES = SchemaMap()


@lru_cache(maxsize=16)
def load_schema_map(name_or_path: str | None) -> SchemaMap:
    """A schema map by name (`original`) or path; None or `plan`: the plan's own names."""
    if name_or_path in (None, "", "plan"):
        return PLAN_NAMES
    p = Path(name_or_path)
    path = p if p.suffix in (".yaml", ".yml") else SCHEMA_MAP_DIR / f"{name_or_path}.yaml"
    try:
        data = yaml.safe_load(path.read_text()) or {}
        return SchemaMap(tables={k: TableNames.model_validate(v) for k, v in data.items()})
    except FileNotFoundError:
        known = ", ".join(["plan", *sorted(f.stem for f in SCHEMA_MAP_DIR.glob("*.yaml"))])
        raise SchemaMapError(f"no schema map {name_or_path!r} (known: {known}; or the path of a YAML file)") from None
    except (yaml.YAMLError, ValidationError, AttributeError) as e:
        raise SchemaMapError(f"schema map {path} cannot be used: {str(e).splitlines()[0]}") from None
