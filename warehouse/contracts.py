"""The public views' declared contracts (sql/schema.yml, dbt-style): each test compiled to a query
that returns the rows breaking it, so one generic check covers every view."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import yaml

from warehouse.connection import SQL_DIR

SCHEMA_FILE = SQL_DIR / "schema.yml"


@dataclass(frozen=True)
class Check:
    view: str
    test: str          # e.g. "unique(run_id, panel)", "not_null(model)"
    sql: str           # the rows that break it


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def declared(path: Path = SCHEMA_FILE) -> dict[str, dict]:
    """view name -> its entry (description, tests, columns), as the file declares them."""
    models = (yaml.safe_load(path.read_text()) or {}).get("models") or []
    return {m["name"]: m for m in models}


def checks(path: Path = SCHEMA_FILE) -> list[Check]:
    out = []
    for view, entry in declared(path).items():
        v = _quote(view)
        for test in entry.get("tests") or []:
            (kind, cols), = test.items()
            if kind != "unique":
                raise ValueError(f"{path}: view {view}: unknown view test {kind!r} (known: unique)")
            key = ", ".join(_quote(c) for c in cols)
            out.append(Check(view, f"unique({', '.join(cols)})",
                             f"SELECT {key}, count(*) AS n FROM {v} GROUP BY ALL HAVING count(*) > 1"))
        for col in entry.get("columns") or []:
            c = _quote(col["name"])
            for test in col.get("tests") or []:
                kind, arg = (test, None) if isinstance(test, str) else next(iter(test.items()))
                if kind == "not_null":
                    out.append(Check(view, f"not_null({col['name']})", f"SELECT * FROM {v} WHERE {c} IS NULL"))
                elif kind == "accepted_values":
                    values = ", ".join(_literal(x) for x in arg["values"])
                    out.append(Check(view, f"accepted_values({col['name']})",
                                     f"SELECT {c} FROM {v} WHERE {c} IS NOT NULL AND {c} NOT IN ({values})"))
                elif kind == "range":
                    bounds = [f"{c} < {_literal(arg['min'])}"] if "min" in arg else []
                    bounds += [f"{c} > {_literal(arg['max'])}"] if "max" in arg else []
                    out.append(Check(view, f"range({col['name']})",
                                     f"SELECT {c} FROM {v} WHERE {' OR '.join(bounds)}"))
                else:
                    raise ValueError(f"{path}: view {view}, column {col['name']}: unknown test {kind!r} "
                                     f"(known: not_null, accepted_values, range)")
    return out


def column_mismatches(con: duckdb.DuckDBPyConnection, path: Path = SCHEMA_FILE) -> list[str]:
    """Views of the main schema not declared (or declared and absent), and columns that differ from
    the declaration, in order."""
    views = {name for (name,) in con.execute(
        "SELECT view_name FROM duckdb_views() WHERE NOT internal AND schema_name = 'main'").fetchall()}
    entries = declared(path)
    problems = [f"view {v} is not declared in {path.name}" for v in sorted(views - set(entries))]
    problems += [f"view {v} is declared but not in the warehouse" for v in sorted(set(entries) - views)]
    for v in sorted(views & set(entries)):
        have = [r[0] for r in con.execute("SELECT column_name FROM information_schema.columns WHERE "
                                          "table_schema = 'main' AND table_name = ? ORDER BY ordinal_position",
                                          [v]).fetchall()]
        want = [c["name"] for c in entries[v].get("columns") or []]
        if have != want:
            problems.append(f"view {v}: columns {have}, declared {want}")
    return problems


def violations(con: duckdb.DuckDBPyConnection, path: Path = SCHEMA_FILE) -> list[str]:
    """Each broken test with how many rows break it and the first of them."""
    out = []
    for check in checks(path):
        first = con.execute(f"SELECT * FROM ({check.sql}) LIMIT 1").fetchone()
        if first is not None:
            n = con.execute(f"SELECT count(*) FROM ({check.sql})").fetchone()[0]
            out.append(f"{check.view}: {check.test}: {n} row(s), e.g. {first}")
    return out
