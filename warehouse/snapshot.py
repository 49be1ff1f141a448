"""Read-only copies for analysts. A pipeline holds the warehouse's write lock while it writes; a
snapshot is a separate file, swapped in atomically, that readers may keep open for as long as
they like without ever blocking (or being blocked by) the pipeline. It records when it was taken
and which runs were still being judged (`snapshot_info`, and the `run_status` view as of then)."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb

from warehouse.connection import (
    WarehouseError, WarehouseMissing, mode_gate, lock_timeout, resolve_db, retry_on_lock, sql_literal,
)
from warehouse.connection import query_text
from warehouse.migrate import ensure_schema, view_names


def default_snapshot(db: str | os.PathLike | None) -> Path:
    """Where the flows keep the analysts' snapshot of a warehouse: $CTSVQA_SNAPSHOT, else beside the
    warehouse as `<name>-snapshot.duckdb` (one snapshot per warehouse, whichever flow wrote last)."""
    if os.environ.get("CTSVQA_SNAPSHOT"):
        return Path(os.environ["CTSVQA_SNAPSHOT"])
    src = resolve_db(db)
    return src.with_name(f"{src.stem}-snapshot.duckdb")


# The analysts' copy is written in the storage format of DuckDB 1.5 (storage version 68): the newest
# DuckDB CLI on PyPI (duckdb-cli 1.5.6) reads versions 64 to 68 and refused the 2.x default (69).
DEFAULT_STORAGE_VERSION = "v1.5.0"
WRITERS_OWN = ("current", "newest")      # --storage-version current: the writing DuckDB's own format


def publish_snapshot(db: str | os.PathLike | None, out: str | os.PathLike,
                     storage_version: str | None = DEFAULT_STORAGE_VERSION) -> Path:
    """Copy every table and view of the warehouse into `out` (replacing it atomically), bring the
    copy's schema and summary tables up to date, record `snapshot_info` and make the file read-only.
    storage_version (default v1.5.0, which DuckDB 1.5 and newer open; None or 'current': this
    DuckDB's own) decides which DuckDB CLIs can open the copy."""
    if storage_version in WRITERS_OWN:
        storage_version = None
    src = resolve_db(db)
    if not src.exists():
        raise WarehouseMissing(f"no warehouse at {src}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    for leftover in (tmp, Path(f"{tmp}.wal")):
        leftover.unlink(missing_ok=True)
    con = duckdb.connect()
    try:
        options = f" (STORAGE_VERSION {sql_literal(storage_version)})" if storage_version else ""
        con.execute(f"ATTACH {sql_literal(tmp)} AS snap{options}")
        with mode_gate.hold(os.path.abspath(src), "read", lock_timeout()):     # no writer of this process meanwhile
            retry_on_lock(lambda: con.execute(f"ATTACH {sql_literal(src)} AS src (READ_ONLY)"), src, role="snapshot")
            con.execute("COPY FROM DATABASE src TO snap")
            con.execute("DETACH src")              # the pipeline may write again from here on
        con.execute("USE snap")
        # The copy gets the current schema and up-to-date summaries (a writer may have changed data
        # without refreshing them), so every view of the snapshot answers.
        ensure_schema(con)
        con.execute(query_text("snapshot_info.sql"), {"source": str(src.resolve())})
        con.execute("USE memory")
        con.execute("DETACH snap")
    except BaseException as exc:
        con.close()
        for leftover in (tmp, Path(f"{tmp}.wal")):
            leftover.unlink(missing_ok=True)
        if isinstance(exc, (duckdb.IOException, OSError)) and not isinstance(exc, WarehouseError):
            # a full disk, a read-only folder: the user's to fix, in one line naming the file
            raise WarehouseError(f"could not write the snapshot {out}: {' '.join(str(exc).split())}; nothing "
                                 f"was left behind (the previous snapshot, if any, is unchanged)") from exc
        raise
    con.close()
    os.chmod(tmp, 0o444)
    os.replace(tmp, out)
    return out


def export_views_parquet(con: duckdb.DuckDBPyConnection, out_dir: str | os.PathLike,
                         dataset: str | None = None, panel: str | None = None) -> list[Path]:
    """One Parquet file per view, written to a temporary name and then renamed into place. With
    `dataset` / `panel`, views that have that column keep only its rows (as the CSV/JSON exports)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for view in view_names(con):
        columns = {r[0] for r in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE schema_name = 'main' AND table_name = ?", [view]
        ).fetchall()}
        where = [f"{col} = {sql_literal(value)}" for col, value in (("dataset", dataset), ("panel", panel))
                 if value is not None and col in columns]
        query = f'SELECT * FROM "{view}"' + (" WHERE " + " AND ".join(where) if where else "")
        target = out_dir / f"{view}.parquet"
        tmp = out_dir / f".{view}.parquet.tmp"
        con.execute(f"COPY ({query}) TO {sql_literal(tmp)} (FORMAT parquet)")
        os.replace(tmp, target)
        written.append(target)
    return written


def snapshot_state(con: duckdb.DuckDBPyConnection) -> tuple[object, list[str]]:
    """When a snapshot was taken, and the runs still being judged then."""
    taken_at, incomplete = con.execute("SELECT taken_at, runs_incomplete FROM snapshot_info").fetchall()[0]
    return taken_at, list(incomplete)
