"""The DuckDB warehouse: connections, migrations, loaders and snapshots."""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Iterator

import duckdb

from warehouse.connection import (  # noqa: F401  (re-exported)
    WarehouseError, WarehouseLocked, WarehouseMissing, connect, resolve_db, transaction,
)
from warehouse import summary_tables
from warehouse.migrate import ensure_schema, latest_version


_schema_ready: set[tuple[str, float]] = set()
_schema_lock = threading.Lock()


@contextmanager
def writer(db: str | os.PathLike | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short-lived read-write connection to a migrated warehouse with current views. The schema
    is checked once per process and file (judging flushes often, from several threads)."""
    with connect(db) as con:
        path = resolve_db(db).resolve()
        key = (str(path), path.stat().st_ino if path.exists() else 0)
        with _schema_lock:
            if key not in _schema_ready or not _migrated(con):
                ensure_schema(con)
                _schema_ready.add(key)
        yield con


def _migrated(con: duckdb.DuckDBPyConnection) -> bool:
    try:
        version = con.execute("SELECT max(version) FROM schema_version").fetchone()[0]
    except duckdb.CatalogException:
        return False
    return version == latest_version()


@contextmanager
def reader(db: str | os.PathLike | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    with connect(db, read_only=True) as con:
        if not con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'schema_version'"
        ).fetchone()[0]:
            raise WarehouseMissing(f"{resolve_db(db)} is not a ctsvqa warehouse (no schema_version table)")
        summary_tables.read_live_if_stale(con)
        yield con

