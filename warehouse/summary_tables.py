"""The summary tables themselves (see summaries.py for what they are): their shapes, their
freshness and their refresh on an open connection. Below the warehouse's connection layer, so
the migrations can install them; `summaries.refresh` also takes a path."""

from __future__ import annotations

import hashlib
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import duckdb

from warehouse.connection import VIEWS_DIR, in_transaction, sql_literal, transaction

# The per-run metrics, in the order they are refreshed. Every one has a run_id column and depends
# only on its run's predictions and judgments plus the context tables.
SUMMARISED = ("run_judges", "run_juries", "jury_verdicts", "model_accuracy", "judge_accuracy",
              "category_accuracy", "correctness_matrix", "judge_agreement", "judgment_status", "run_status",
              "fleiss_kappa")

_lock = threading.RLock()


@dataclass
class Refreshed:
    full: bool
    runs: int
    seconds: float


def definitions_sha(directory=VIEWS_DIR) -> str:
    digest = hashlib.sha256()
    for path in sorted(directory.glob("*.sql")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def definition_names(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [r[0] for r in con.execute(
        "SELECT view_name FROM duckdb_views() WHERE schema_name = 'definitions' "
        "AND database_name = current_database() ORDER BY view_name").fetchall()]


def _columns(con: duckdb.DuckDBPyConnection, schema: str, name: str) -> list[tuple[str, str]]:
    return con.execute(
        "SELECT column_name, data_type FROM duckdb_columns() WHERE schema_name = ? AND table_name = ? "
        "AND database_name = current_database() "
        "ORDER BY column_index", [schema, name]).fetchall()


def install(con: duckdb.DuckDBPyConnection) -> bool:
    """Create (or re-shape) the summary tables and the public views in `main`, after the definitions
    were (re)created. Returns True when the summaries must be refreshed in full (new or re-shaped
    tables, or definitions that differ from the ones the summaries were computed with). Run inside
    the caller's transaction."""
    reshaped = False
    for name in SUMMARISED:
        want = _columns(con, "definitions", name)
        have = _columns(con, "summaries", name)
        if have != want:
            con.execute(f"DROP TABLE IF EXISTS summaries.{name}")
            con.execute(f"CREATE TABLE summaries.{name} AS SELECT * FROM definitions.{name} LIMIT 0")
            reshaped = True
    for name in definition_names(con):
        if name in SUMMARISED:
            con.execute(f"CREATE OR REPLACE VIEW main.{name} AS "
                        f"SELECT * FROM summaries.{name} WHERE summaries.fresh_or_fail()")
        else:
            con.execute(f"CREATE OR REPLACE VIEW main.{name} AS SELECT * FROM definitions.{name}")
    sha = con.execute("SELECT definitions_sha FROM summaries.state").fetchall()[0][0]
    return reshaped or sha != definitions_sha()


@contextmanager
def _transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """The caller's transaction if one is open (so a writer's data and summaries commit together),
    else a new one."""
    if in_transaction(con):
        yield
    else:
        with transaction(con):
            yield


def refresh_on(con: duckdb.DuckDBPyConnection, full: bool) -> Refreshed:
    t0 = time.perf_counter()
    with _lock, _transaction(con):
        ctx_then, sha_then, refreshed_at = con.execute(
            "SELECT context_fingerprint, definitions_sha, refreshed_at FROM summaries.state").fetchall()[0]
        ctx = con.execute("SELECT fingerprint FROM summaries.context_fingerprint").fetchall()[0][0]
        sha = definitions_sha()
        current = dict(con.execute("SELECT run_id, fingerprint FROM summaries.run_fingerprints").fetchall())
        full = full or refreshed_at is None or ctx_then != ctx or sha_then != sha
        if full:
            changed = sorted(current)
            where = ""
            con.execute("DELETE FROM summaries.run_state")
        else:
            stored = dict(con.execute("SELECT run_id, fingerprint FROM summaries.run_state").fetchall())
            changed = sorted({r for r, fp in current.items() if stored.get(r) != fp} | (stored.keys() - current.keys()))
            where = " WHERE run_id IN (" + ", ".join(sql_literal(r) for r in changed) + ")" if changed else None
            if changed:
                con.execute("DELETE FROM summaries.run_state" + where)
        if where is not None:
            for name in SUMMARISED:
                con.execute(f"DELETE FROM summaries.{name}{where}")
                con.execute(f"INSERT INTO summaries.{name} BY NAME SELECT * FROM definitions.{name}{where}")
        rows = [[r, current[r]] for r in changed if r in current]
        if rows:
            con.executemany("INSERT INTO summaries.run_state VALUES (?, ?)", rows)
        con.execute(
            "UPDATE summaries.state SET data_fingerprint = (SELECT fingerprint FROM summaries.data_fingerprint), "
            "context_fingerprint = ?, definitions_sha = ?, refreshed_at = now()", [ctx, sha])
    return Refreshed(full, len(changed), time.perf_counter() - t0)


def has_summaries(con: duckdb.DuckDBPyConnection) -> bool:
    return bool(con.execute("SELECT count(*) FROM duckdb_views() WHERE schema_name = 'summaries' "
                            "AND view_name = 'freshness' AND database_name = current_database()").fetchall()[0][0])


def is_fresh(con: duckdb.DuckDBPyConnection) -> bool:
    """True when the summaries match the data (or the warehouse predates summaries)."""
    return not has_summaries(con) or bool(con.execute("SELECT fresh FROM summaries.freshness").fetchall()[0][0])


def read_live_if_stale(con: duckdb.DuckDBPyConnection) -> bool:
    """For a read-only connection (which cannot refresh): when the summaries are stale, make the
    unqualified view names resolve to the live definitions, slower but current. Returns whether it
    did, so callers can say so."""
    if is_fresh(con):
        return False
    con.execute("SET search_path = 'definitions,main'")
    return True


def reading_live(con: duckdb.DuckDBPyConnection) -> bool:
    return con.execute("SELECT current_setting('search_path')").fetchall()[0][0].startswith("definitions")
