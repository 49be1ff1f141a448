from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import duckdb
import pytest

import flows  # noqa: F401  (Prefect settings before any Prefect import)

REPO = Path(__file__).resolve().parent.parent
MINI = REPO / "examples" / "upstream-mini"
UPSTREAM = Path(os.environ.get("CTSVQA_UPSTREAM", REPO.parent / "shared" / "upstream" / "CT-SpatialVQA"))

DATA_TABLES = ("datasets", "volumes", "questions", "question_categories", "models", "runs", "predictions",
               "judges", "judgments", "schema_version")


def table_digest(db: Path) -> dict[str, str]:
    """Order-independent content hash of every data table (timestamps included, so a re-import
    that rewrote rows with equal content would still show up)."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        out = {}
        for table in DATA_TABLES:
            rows = sorted(repr(r) for r in con.execute(f"SELECT * FROM {table}").fetchall())
            out[table] = hashlib.sha256("\n".join(rows).encode()).hexdigest()
        return out
    finally:
        con.close()


@pytest.fixture
def mini_copy(tmp_path: Path) -> Path:
    """A writable copy of the example upstream layout, for tests that corrupt files."""
    dst = tmp_path / "upstream"
    shutil.copytree(MINI, dst)
    return dst


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "wh.duckdb"


@pytest.fixture
def mini_db(db: Path) -> Path:
    from tasks.upstream_import import import_upstream

    import_upstream(MINI, db)
    return db


@pytest.fixture(scope="session")
def upstream_root() -> Path:
    if not (UPSTREAM / "dataset" / "ct_spatialvqa" / "spatial_qa_filtered_full.json").is_file():
        pytest.skip(f"upstream data not found at {UPSTREAM} (set CTSVQA_UPSTREAM)")
    return UPSTREAM


@pytest.fixture(scope="session")
def prefect_server():
    """A real temporary Prefect API server (SQLite-backed) for the whole session; started lazily,
    only by tests that run flows."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
