"""The DuckDB warehouse: connections, migrations, loaders and snapshots."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import duckdb

from warehouse.connection import (  # noqa: F401  (re-exported)
    WarehouseError, WarehouseLocked, WarehouseMissing, connect, resolve_db, transaction,
)
from warehouse.migrate import ensure_schema


@contextmanager
def writer(db: str | os.PathLike | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short-lived read-write connection to a migrated warehouse with current views."""
    with connect(db) as con:
        ensure_schema(con)
        yield con


@contextmanager
def reader(db: str | os.PathLike | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    with connect(db, read_only=True) as con:
        if not con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'schema_version'"
        ).fetchone()[0]:
            raise WarehouseMissing(f"{resolve_db(db)} is not a ctsvqa warehouse (no schema_version table)")
        yield con

