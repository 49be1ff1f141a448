"""Read-only copies for analysts. A pipeline holds the warehouse's write lock while it writes; a
snapshot is a separate file, swapped in atomically, that readers may keep open for as long as
they like without ever blocking (or being blocked by) the pipeline."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb

from warehouse.connection import WarehouseMissing, resolve_db, retry_on_lock, sql_literal
from warehouse.migrate import view_names


def publish_snapshot(db: str | os.PathLike | None, out: str | os.PathLike,
                     storage_version: str | None = None) -> Path:
    """Copy every table and view of the warehouse into `out` (replacing it atomically) and make the
    file read-only. storage_version, e.g. 'v1.5.0', lets older DuckDB CLIs open the copy."""
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
        retry_on_lock(lambda: con.execute(f"ATTACH {sql_literal(src)} AS src (READ_ONLY)"), f"warehouse {src}")
        options = f" (STORAGE_VERSION {sql_literal(storage_version)})" if storage_version else ""
        con.execute(f"ATTACH {sql_literal(tmp)} AS snap{options}")
        con.execute("COPY FROM DATABASE src TO snap")
        con.execute("DETACH snap")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        con.close()
    os.chmod(tmp, 0o444)
    os.replace(tmp, out)
    return out


def export_views_parquet(con: duckdb.DuckDBPyConnection, out_dir: str | os.PathLike) -> list[Path]:
    """One Parquet file per view, written to a temporary name and then renamed into place."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for view in view_names(con):
        target = out_dir / f"{view}.parquet"
        tmp = out_dir / f".{view}.parquet.tmp"
        con.execute(f'COPY (SELECT * FROM "{view}") TO {sql_literal(tmp)} (FORMAT parquet)')
        os.replace(tmp, target)
        written.append(target)
    return written
