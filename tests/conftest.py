from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import duckdb
import pytest

# CLI subprocesses of the tests keep Prefect's temporary server: a resident server (the CLI's default)
# would outlive the test that started it. Tests of the resident server set the mode themselves.
os.environ.setdefault("CTSVQA_PREFECT", "ephemeral")

import flows  # noqa: E402,F401  (Prefect settings before any Prefect import)

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


def rows(db: Path, sql: str, params=None) -> list[tuple]:
    """A query's rows, read the way analysts read the warehouse (`warehouse.reader`)."""
    import warehouse

    with warehouse.reader(db) as con:
        return con.execute(sql, params or []).fetchall()


def echo_plugin(site: Path) -> Path:
    """A distribution that exists only as a dist-info folder whose entry point names the test adapter
    `echo-test` (tests/infer_adapters.py): put `site` on sys.path or PYTHONPATH to install it."""
    info = site / "ctsvqa_test_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ctsvqa-test-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[ctsvqa.models]\necho-test = tests.infer_adapters:EchoModel\n")
    return site


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for `python -m flows.cli` subprocesses run from the repository root."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")}
    env.update({"PYTHONPATH": str(REPO), **extra})
    return env


def process_gone(pid: int, timeout: float = 15.0) -> bool:
    """True once `pid` has exited (a zombie counts as exited)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state in ("Z", "X"):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


@pytest.fixture(scope="session")
def resident_server(tmp_path_factory):
    """A resident server started the way a user meets it: by the first command that runs a flow
    (`import-upstream` of the example into a fresh warehouse). Yields (db, state, that command's
    stderr); stopped at the end, and its process must be gone."""
    import subprocess
    import sys

    from flows import server

    db = tmp_path_factory.mktemp("resident") / "wh.duckdb"
    done = subprocess.run([sys.executable, "-m", "flows.cli", "import-upstream", str(MINI), "--db", str(db)],
                          cwd=REPO, env=cli_env(CTSVQA_PREFECT="resident"), capture_output=True, text=True,
                          timeout=600)
    state = server.status(db)
    try:
        assert done.returncode == 0, done.stdout + done.stderr
        yield db, state, done.stderr
    finally:
        server.stop(db)
        assert state.pid is None or process_gone(state.pid), f"Prefect server {state.pid} left running"


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny torch models (`pytestmark = pytest.mark.usefixtures("one_thread")`): they gain
    nothing from threads, and on a shared machine torch's thread pool spins (20x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
