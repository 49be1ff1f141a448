"""Summary tables: the per-run metric views, materialised so reads stay fast as runs accumulate.

Each metric is defined once, as a view in the schema `definitions` (sql/views/). For the per-run
metrics, the view of the same name in `main` reads `summaries.<name>`, a table holding that
definition's output as of the last `refresh()`; the other views in `main` read their definition
live. A public summary view first compares the fingerprint of the data with the one recorded at
refresh time and raises if they differ, so a reader gets current numbers or an error, never stale
numbers. (A fallback to the definition inside the view is no option: DuckDB computes both branches
of such a view whichever is used, measured in bench/views.py.)

`refresh()` recomputes only the runs whose predictions or judgments changed (all runs when the
questions, categories, runs, judges, panels or the definitions changed), in one transaction; the
flows call it when they finish writing.
"""

from __future__ import annotations

import os

import duckdb

import warehouse
from warehouse.summary_tables import (SUMMARISED, Refreshed, refresh_on, definition_names,  # noqa: F401
                                      definitions_sha, has_summaries, install, is_fresh, read_live_if_stale,
                                      reading_live)


def refresh(db_or_con: duckdb.DuckDBPyConnection | str | os.PathLike | None = None, *,
            full: bool = False) -> Refreshed:
    """Bring the summary tables up to date with the data: call it when a flow finishes writing
    predictions or judgments. Given a connection inside a transaction, the refresh joins that
    transaction; otherwise it runs in its own (with a path or None, on a new writer connection)."""
    if isinstance(db_or_con, duckdb.DuckDBPyConnection):
        return refresh_on(db_or_con, full)
    with warehouse.writer(db_or_con) as con:
        return refresh_on(con, full)
