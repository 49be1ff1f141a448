"""Migrations, the file lock, snapshots and Parquet exports, on real DuckDB files and processes."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest

import warehouse
from tests.conftest import REPO
from warehouse.connection import DEFAULT_DB, resolve_db
from warehouse.migrate import MIGRATIONS_DIR, MigrationError, migrate, migrations, view_names
from warehouse.snapshot import export_views_parquet, publish_snapshot

REQUIRED_VIEWS = {"jury_verdicts", "model_accuracy", "judge_accuracy", "category_accuracy",
                  "correctness_matrix", "judge_agreement"}


def test_migrations_recorded_once_and_views_created(db):
    with warehouse.writer(db) as con:
        applied = [v for (v,) in con.execute("SELECT version FROM schema_version ORDER BY 1").fetchall()]
        assert applied == [m.version for m in migrations()] and applied[0] == 1
        assert REQUIRED_VIEWS <= set(view_names(con))
        assert migrate(con) == []                      # nothing left to apply


def only_v1(tmp_path):
    """A migrations folder holding just the first, real migration."""
    folder = tmp_path / "migrations"
    folder.mkdir()
    shutil.copy(MIGRATIONS_DIR / "001_core.sql", folder)
    return folder


def test_failing_migration_rolls_back_and_names_its_file(db, tmp_path):
    migrations = only_v1(tmp_path)
    bad = migrations / "002_add_column.sql"
    bad.write_text("ALTER TABLE judgments ADD COLUMN judge_raw VARCHAR;\nSELECT * FROM no_such_table;\n")
    con = duckdb.connect(str(db))
    with pytest.raises(MigrationError, match="002_add_column.sql"):
        migrate(con, migrations)
    assert con.execute("SELECT max(version) FROM schema_version").fetchone() == (1,)
    cols = [r[0] for r in con.execute("SELECT column_name FROM duckdb_columns() WHERE table_name = 'judgments'"
                                      ).fetchall()]
    assert "judge_raw" not in cols                     # the ALTER was rolled back with the failure
    bad.write_text("ALTER TABLE judgments ADD COLUMN judge_raw VARCHAR;\n")
    assert migrate(con, migrations) == [2]
    con.close()


def test_upgrade_from_v1_puts_upstream_judges_on_the_upstream_panel(db, tmp_path):
    con = duckdb.connect(str(db))
    migrate(con, only_v1(tmp_path))
    con.execute("INSERT INTO judges VALUES ('upstream/gpt/gpt-4o-mini/upstream-batch5-v1', 'gpt', 'openai', "
                "'gpt-4o-mini', 'upstream-batch5-v1', '{}', NULL)")
    assert migrate(con) == [m.version for m in migrations()][1:]
    assert con.execute("SELECT panel, judge_id FROM panel_members").fetchall() == [
        ("upstream", "upstream/gpt/gpt-4o-mini/upstream-batch5-v1")]
    con.close()


def test_edited_migration_is_refused(db, tmp_path):
    migrations = only_v1(tmp_path)
    con = duckdb.connect(str(db))
    migrate(con, migrations)
    (migrations / "001_core.sql").write_text((migrations / "001_core.sql").read_text() + "\n-- edited\n")
    with pytest.raises(MigrationError, match="edited after it was applied"):
        migrate(con, migrations)
    con.close()


def test_badly_named_migration_is_refused(tmp_path):
    (tmp_path / "1_core.sql").write_text("SELECT 1;")
    con = duckdb.connect()
    with pytest.raises(MigrationError, match="NNN_name.sql"):
        migrate(con, tmp_path)


def test_db_resolution_order(monkeypatch, tmp_path):
    monkeypatch.delenv("CTSVQA_DB", raising=False)
    assert resolve_db(None) == DEFAULT_DB == REPO / "warehouse" / "ctsvqa.duckdb"
    monkeypatch.setenv("CTSVQA_DB", str(tmp_path / "env.duckdb"))
    assert resolve_db(None) == tmp_path / "env.duckdb"
    assert resolve_db(tmp_path / "flag.duckdb") == tmp_path / "flag.duckdb"


def hold_read(db: Path, seconds: float) -> subprocess.Popen:
    """An analyst's process with the warehouse itself open read-only (instead of a snapshot)."""
    code = textwrap.dedent(f"""
        import time, duckdb
        con = duckdb.connect({str(db)!r}, read_only=True)
        con.execute("SELECT count(*) FROM judgments").fetchall()
        print("ready", flush=True)
        time.sleep({seconds})
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def hold_lock(db: Path, seconds: float) -> subprocess.Popen:
    """Another process that holds the warehouse open read-write (as a running import does)."""
    code = textwrap.dedent(f"""
        import sys, time, duckdb
        con = duckdb.connect({str(db)!r})
        con.execute("BEGIN TRANSACTION")
        con.execute("INSERT INTO models VALUES ('held', NULL, NULL, NULL)")
        print("ready", flush=True)
        time.sleep({seconds})
        con.execute("COMMIT")
        con.close()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_lock_error_names_the_holder_after_retrying(mini_db):
    holder = hold_lock(mini_db, 30)
    try:
        t0 = time.monotonic()
        with pytest.raises(warehouse.WarehouseLocked) as err:
            with warehouse.connect(mini_db, timeout=1.0):
                pass
        assert time.monotonic() - t0 >= 1.0                 # it waited before giving up
        assert f"PID {holder.pid}" in str(err.value)
        assert "is being written by" in str(err.value) and "Wait for it to finish" in str(err.value)
    finally:
        holder.kill()
        holder.wait()


def test_connection_waits_for_a_short_lock(mini_db):
    holder = hold_lock(mini_db, 1.5)
    try:
        with warehouse.writer(mini_db) as con:              # retries until the holder commits
            assert con.execute("SELECT count(*) FROM models WHERE model_id = 'held'").fetchone() == (1,)
    finally:
        holder.wait()


def test_snapshot_is_read_only_complete_and_readable_while_the_warehouse_is_locked(mini_db, tmp_path):
    snap = publish_snapshot(mini_db, tmp_path / "snap" / "ctsvqa.duckdb")
    assert not os.stat(snap).st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    with duckdb.connect(str(mini_db), read_only=True) as src:
        expected = src.execute("SELECT * FROM model_accuracy ORDER BY model").fetchall()
    holder = hold_lock(mini_db, 30)                         # a pipeline is writing now
    try:
        with pytest.raises(warehouse.WarehouseLocked):
            with warehouse.connect(mini_db, read_only=True, timeout=0.3):
                pass
        # ...and an analyst in another process reads the snapshot, views included
        out = subprocess.run(
            [sys.executable, "-c", "import duckdb, sys; c = duckdb.connect(sys.argv[1], read_only=True); "
             "print(c.execute('SELECT count(*) FROM model_accuracy').fetchone()[0])", str(snap)],
            capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == str(len(expected))
        with duckdb.connect(str(snap), read_only=True) as con:
            assert con.execute("SELECT * FROM model_accuracy ORDER BY model").fetchall() == expected
            with pytest.raises(duckdb.Error):
                con.execute("DELETE FROM judgments")
    finally:
        holder.kill()
        holder.wait()


def test_snapshot_replaces_an_open_snapshot_atomically(mini_db, tmp_path):
    target = tmp_path / "snap.duckdb"
    publish_snapshot(mini_db, target)
    reader = duckdb.connect(str(target), read_only=True)
    before = reader.execute("SELECT count(*) FROM judgments").fetchone()
    with warehouse.writer(mini_db) as con:
        con.execute("DELETE FROM judgments WHERE judge_id LIKE 'upstream/qwen%'")
    publish_snapshot(mini_db, target)
    assert reader.execute("SELECT count(*) FROM judgments").fetchone() == before   # old copy still intact
    reader.close()
    with duckdb.connect(str(target), read_only=True) as fresh:
        assert fresh.execute("SELECT count(*) FROM judgments").fetchone()[0] == before[0] - 8 - 7 - 8
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]     # no temporary left


def test_snapshot_for_older_duckdb_storage(mini_db, tmp_path):
    snap = publish_snapshot(mini_db, tmp_path / "old.duckdb", storage_version="v1.5.0")
    with duckdb.connect(str(snap), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM jury_verdicts").fetchone() == (23,)


def test_the_default_snapshot_opens_in_the_newest_duckdb_cli_on_pypi_and_every_view_answers(mini_db, tmp_path):
    """duckdb-cli 1.5.6 (the newest on PyPI) refused the 2.x storage format (version 69, it reads 64-68)."""
    import subprocess
    import sys

    cli = Path(sys.executable).with_name("duckdb")
    if not cli.is_file():
        pytest.skip("the duckdb CLI (PyPI duckdb-cli, in the test extras) is not installed")
    snap = publish_snapshot(mini_db, tmp_path / "snap.duckdb")
    with warehouse.reader(mini_db) as con:
        views = view_names(con)
        expected = {v: con.execute(f'SELECT count(*) FROM "{v}"').fetchone()[0] for v in views}
    script = "".join(f"SELECT '{v}', count(*) FROM \"{v}\";\n" for v in views)
    done = subprocess.run([str(cli), "-readonly", "-csv", "-noheader", str(snap)], input=script, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "Error" not in done.stderr, done.stderr[-2000:]
    got = dict(line.rsplit(",", 1) for line in done.stdout.split())
    assert {v: int(n) for v, n in got.items()} == expected
    with pytest.raises(subprocess.CalledProcessError):      # the live warehouse needs DuckDB 2 (as the README says)
        subprocess.run([str(cli), "-readonly", str(mini_db), "-c", "SELECT 1"], capture_output=True, check=True,
                       timeout=60)


def test_every_view_exported_as_parquet(mini_db, tmp_path):
    with warehouse.reader(mini_db) as con:
        files = export_views_parquet(con, tmp_path / "pq")
        names = {p.stem for p in files}
        assert REQUIRED_VIEWS <= names and names == set(view_names(con))
        for path in files:
            n_view = con.execute(f'SELECT count(*) FROM "{path.stem}"').fetchone()[0]
            assert con.execute(f"SELECT count(*) FROM read_parquet('{path}')").fetchone()[0] == n_view


def test_reader_refuses_a_missing_or_foreign_file(tmp_path):
    with pytest.raises(warehouse.WarehouseMissing, match="no warehouse at"):
        with warehouse.reader(tmp_path / "nope.duckdb"):
            pass
    duckdb.connect(str(tmp_path / "other.duckdb")).close()
    with pytest.raises(warehouse.WarehouseMissing, match="not a ctsvqa warehouse"):
        with warehouse.reader(tmp_path / "other.duckdb"):
            pass


# --- analysts and the file lock (issue 7, item 12) -------------------------------------------------

def test_writer_blocked_by_an_analyst_names_the_reader_and_what_to_do(mini_db):
    analyst = hold_read(mini_db, 30)
    try:
        with pytest.raises(warehouse.WarehouseLocked) as err:
            with warehouse.connect(mini_db, timeout=0.5):
                pass
        msg = str(err.value)
        assert f"PID {analyst.pid}" in msg and "-c import time, duckdb" in msg   # and its command line
        assert "held open by a reader" in msg and "Close that connection" in msg
        assert "ctsvqa db snapshot OUT.duckdb" in msg and "read_only=True" in msg
    finally:
        analyst.kill()
        analyst.wait()


def test_reader_and_snapshot_blocked_by_the_pipeline_get_their_own_advice(mini_db, tmp_path):
    holder = hold_lock(mini_db, 30)
    try:
        with pytest.raises(warehouse.WarehouseLocked) as err:
            with warehouse.connect(mini_db, read_only=True, timeout=0.3):
                pass
        msg = str(err.value)
        assert f"PID {holder.pid}" in msg and "being written by" in msg
        assert "ctsvqa db snapshot OUT.duckdb" in msg and "duckdb.connect('OUT.duckdb', read_only=True)" in msg
        env = dict(os.environ, CTSVQA_LOCK_TIMEOUT="0.3", PYTHONPATH=str(REPO))
        out = subprocess.run([sys.executable, "-m", "flows.cli", "db", "snapshot", str(tmp_path / "s.duckdb"),
                              "--db", str(mini_db)], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
        assert f"PID {holder.pid}" in out.stderr and "no snapshot could be taken" in out.stderr
        assert "ctsvqa db snapshot" not in out.stderr                      # not the command that just failed
    finally:
        holder.kill()
        holder.wait()


def test_snapshot_records_when_and_which_runs_were_still_being_judged(mini_db, tmp_path):
    from tests.test_views import M3D, A0, A1, add_live_judge

    add_live_judge(mini_db, "exact", "offline", M3D, {A0: True, A1: None})
    with warehouse.writer(mini_db) as con:                  # and a writer that did not refresh
        con.execute("DELETE FROM judgments WHERE judge_id LIKE 'upstream/qwen%' AND run_id = ?", [M3D])
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-m", "flows.cli", "db", "snapshot", str(tmp_path / "s.duckdb"),
                          "--db", str(mini_db)], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "m3d (panel offline): 7 judgments pending from exact" in out.stdout
    with duckdb.connect(str(tmp_path / "s.duckdb"), read_only=True) as snap:
        taken_at, incomplete = snap.execute("SELECT taken_at, runs_incomplete FROM snapshot_info").fetchall()[0]
        assert taken_at is not None and incomplete == ["m3d (panel offline): 7 judgments pending from exact"]
        assert snap.execute("SELECT status FROM run_status WHERE model = 'm3d' AND panel = 'offline'"
                            ).fetchall() == [("judging",)]
        # the copy's summaries were brought up to date: the views answer, with the current data
        assert snap.execute("SELECT jury_size FROM model_accuracy WHERE model = 'm3d' AND panel = 'upstream'"
                            ).fetchall() == [(2,)]


def test_snapshot_parquet_honours_panel(mini_db, tmp_path):
    from tests.test_views import M3D, A0, add_live_judge

    add_live_judge(mini_db, "exact", "offline", M3D, {A0: True})
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-m", "flows.cli", "db", "snapshot", str(tmp_path / "s.duckdb"),
                          "--db", str(mini_db), "--parquet", str(tmp_path / "pq"), "--panel", "offline"],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    con = duckdb.connect()
    for view in ("jury_verdicts", "model_accuracy", "category_accuracy", "correctness_matrix", "run_status"):
        panels = con.execute(f"SELECT DISTINCT panel FROM '{tmp_path / 'pq' / view}.parquet'").fetchall()
        assert panels == [("offline",)], view
    assert con.execute(f"SELECT count(*) FROM '{tmp_path / 'pq' / 'judge_accuracy'}.parquet'").fetchall() == [(9,)]


def test_threads_of_one_process_take_turns_between_a_reader_and_a_writer(tmp_path):
    """DuckDB refuses a read-only and a read-write connection to one file at once in one process; the
    lease heartbeat writes from its own thread while the runner reads, so they take turns."""
    import threading
    import time

    import warehouse

    db = tmp_path / "wh.duckdb"
    with warehouse.writer(db):
        pass
    opened, release = threading.Event(), threading.Event()

    def write() -> None:
        with warehouse.writer(db) as con:
            opened.set()
            release.wait(10)
            con.execute("CREATE TABLE t AS SELECT 1 AS x")

    thread = threading.Thread(target=write)
    thread.start()
    opened.wait(10)
    threading.Timer(0.5, release.set).start()
    t0 = time.monotonic()
    with warehouse.reader(db) as con:                  # waits for the writer instead of failing
        assert con.execute("SELECT x FROM t").fetchall() == [(1,)]
    assert time.monotonic() - t0 >= 0.4
    thread.join(10)
