"""Schema migrations (sql/migrations/NNN_name.sql, applied once, in order, each in a transaction)
and metric views (sql/views/*.sql, re-created on every writer open so they always match the code)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import duckdb

from warehouse import summary_tables
from warehouse.connection import MIGRATIONS_DIR, VIEWS_DIR, WarehouseError, transaction

_MIGRATION_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


class MigrationError(WarehouseError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text()

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path}: migration files must be named NNN_name.sql")
        found.append(Migration(int(match[1]), match[2], path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"{directory}: two migrations share a version number: {versions}")
    return found


def latest_version(directory: Path = MIGRATIONS_DIR) -> int:
    return max(m.version for m in migrations(directory))


def applied_versions(con: duckdb.DuckDBPyConnection) -> dict[int, str]:
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, checksum VARCHAR NOT NULL,"
        " applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp)"
    )
    return dict(con.execute("SELECT version, checksum FROM schema_version").fetchall())


def migrate(con: duckdb.DuckDBPyConnection, directory: Path = MIGRATIONS_DIR) -> list[int]:
    """Apply pending migrations; return the versions applied now. A failing migration rolls back
    completely (DuckDB DDL is transactional) and the error names its file."""
    done = applied_versions(con)
    newly = []
    for m in migrations(directory):
        if m.version in done:
            if done[m.version] != m.checksum:
                raise MigrationError(
                    f"{m.path} was edited after it was applied (checksum differs); add a new migration instead"
                )
            continue
        try:
            with transaction(con):
                con.execute(m.sql)
                con.execute("INSERT INTO schema_version (version, name, checksum) VALUES (?, ?, ?)",
                            [m.version, m.name, m.checksum])
        except duckdb.Error as exc:
            raise MigrationError(f"{m.path}: {exc}") from exc
        newly.append(m.version)
    return newly


def apply_views(con: duckdb.DuckDBPyConnection, directory: Path = VIEWS_DIR) -> bool:
    """Re-create every definition (files run in name order, so a view may use earlier ones), the
    summary tables' shapes and the public views. Returns True when the summaries need a full refresh."""
    with transaction(con):
        for path in sorted(directory.glob("*.sql")):
            try:
                con.execute(path.read_text())
            except duckdb.Error as exc:
                raise MigrationError(f"{path}: {exc}") from exc
        return summary_tables.install(con)


def view_names(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [r[0] for r in con.execute(
        "SELECT view_name FROM duckdb_views() WHERE NOT internal AND schema_name = 'main' ORDER BY view_name"
    ).fetchall()]


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    migrate(con)
    if apply_views(con) or not summary_tables.is_fresh(con):
        summary_tables.refresh_on(con, False)
