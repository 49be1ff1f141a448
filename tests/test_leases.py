"""One session per run and per judge × run: a lease in the warehouse names the holder (PID, host,
command); a second session is refused in one line (exit 2) or waits (--wait); a holder killed with -9
is taken over. Real processes, a real DuckDB file, the real CLI."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import warehouse
from adapters.datasets.phantom import generate
from tasks import inference
from tasks.inference import InferRequest, run_inference
from tasks.upstream_import import import_upstream
from tests.conftest import REPO, cli_env, echo_plugin, rows
from warehouse import leases

ECHO = "echo-test"


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantom")
    generate(root, 3, 11, "small")
    db = tmp_path_factory.mktemp("template") / "wh.duckdb"
    import_upstream(root, db)
    inference.build_inputs(db, rows(db, "SELECT dataset_id FROM datasets")[0][0], "lingshu",
                           [v for (v,) in rows(db, "SELECT volume FROM volumes")])
    return db


@pytest.fixture
def db(template, tmp_path) -> Path:
    out = tmp_path / "wh.duckdb"
    shutil.copy(template, out)
    return out


@pytest.fixture
def plugin(tmp_path, monkeypatch) -> Path:
    site = echo_plugin(tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    return site


def hold(db: Path, resources: list[str]) -> subprocess.Popen:
    """Another process holding `resources` until it is killed (it prints 'held' once it has them)."""
    code = textwrap.dedent(f"""
        import sys, time
        from warehouse import leases
        leases.acquire({str(db)!r}, {resources!r}, "test")
        print("held", flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def run_lease(db: Path, **kw) -> str:
    return inference.run_lease(inference.plan_run(db, InferRequest(model=ECHO, **kw)))


def test_a_held_run_is_refused_naming_its_holder_and_a_killed_holder_is_taken_over(plugin, db):
    lease = run_lease(db)
    proc = hold(db, [lease])
    try:
        with pytest.raises(leases.LeaseHeld) as err:
            run_inference(db, InferRequest(model=ECHO))
        assert f"PID {proc.pid} on " in str(err.value) and "--wait" in str(err.value)
        assert not rows(db, "SELECT * FROM predictions")                     # nothing answered meanwhile
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        summary = run_inference(db, InferRequest(model=ECHO))                 # its row is left: taken over
        assert summary.ok == summary.pending > 0
        assert not rows(db, "SELECT * FROM leases")                           # released when done
    finally:
        proc.kill()


def test_wait_starts_when_the_holder_is_done(plugin, db):
    lease = run_lease(db)
    proc = hold(db, [lease])
    done = {}
    thread = threading.Thread(target=lambda: done.setdefault("s", run_inference(db, InferRequest(model=ECHO, wait=True))))
    thread.start()
    time.sleep(2.5)
    assert thread.is_alive() and "s" not in done                              # waiting, not answering
    proc.kill()
    proc.wait(10)
    thread.join(60)
    assert done["s"].ok == done["s"].pending > 0


def test_another_run_is_not_held_by_this_one(plugin, db):
    proc = hold(db, [run_lease(db)])
    try:
        summary = run_inference(db, InferRequest(model=ECHO, name="other", seed=1))
        assert summary.ok == summary.pending > 0
    finally:
        proc.kill()


def test_two_cli_sessions_of_one_run_the_second_refused_in_one_line_and_nothing_replaced(
        prefect_server, plugin, db, tmp_path):
    from prefect.settings import PREFECT_API_URL

    env = cli_env(ECHO_TEST_DELAY="0.3", PYTHONPATH=os.pathsep.join([str(REPO), str(plugin)]),
                  PREFECT_API_URL=PREFECT_API_URL.value())
    cmd = [sys.executable, "-m", "flows.cli", "infer", "--model", ECHO, "--db", str(db)]
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if rows(db, "SELECT * FROM leases"):
                    break
            except warehouse.WarehouseError:
                pass
            time.sleep(0.1)
        second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ctsvqa: error: run echo-test (") , lines
        assert f"PID {first.pid} on " in lines[0] and "infer --model echo-test" in lines[0]
        out, err = first.communicate(timeout=300)
        assert first.returncode == 0, err
    finally:
        first.kill()
    sessions = rows(db, "SELECT DISTINCT json_extract_string(provenance, '$.session') FROM predictions")
    assert len(sessions) == 1                                                 # every answer from the first
    (n, distinct, total) = rows(db, "SELECT count(*), count(DISTINCT qid), (SELECT count(*) FROM questions) "
                                    "FROM predictions")[0]
    assert n == distinct == total


def test_a_judge_session_on_the_same_runs_is_refused_and_another_panel_is_not(prefect_server, plugin, db):
    from adapters.judges.spec import load_panel
    from flows.cli import main
    from tasks import judging

    run_inference(db, InferRequest(model=ECHO))
    held = judging.panel_leases(db, load_panel("offline"), None, False)
    assert held and all(r.startswith("judge:") for r in held)
    proc = hold(db, held)
    try:
        assert main(["judge", "--judges", "offline", "--db", str(db)]) == 2
        assert not rows(db, "SELECT * FROM judgments")
        with pytest.raises(leases.LeaseHeld):
            judging.judge_runs(db, load_panel("offline").judges[0], None)
    finally:
        proc.kill()
        proc.wait(10)
    assert main(["judge", "--judges", "offline", "--db", str(db)]) == 0
    assert rows(db, "SELECT count(*) FROM judgments")[0][0] > 0
