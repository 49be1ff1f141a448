"""The resident Prefect server (`ctsvqa server`, auto-start) and the ephemeral server's clean death."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from flows import server
from tests.conftest import MINI, REPO, cli_env, process_gone

pytestmark = pytest.mark.prefect


def ctsvqa(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=cli_env(**env),
                          capture_output=True, text=True, timeout=600)


def flow_run_names(api_url: str) -> list[str]:
    req = urllib.request.Request(f"{api_url}/flow_runs/filter", data=json.dumps({}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as reply:
        return [r["name"] for r in json.load(reply)]


def test_first_flow_command_starts_the_server_and_the_next_reuses_it(resident_server):
    db, state, first_stderr = resident_server
    started = [ln for ln in first_stderr.splitlines() if "started a Prefect server" in ln]
    assert len(started) == 1 and f"UI at http://127.0.0.1:{state.port}" in started[0]
    assert state.running and state.healthy
    assert (state.dir / "home").is_dir() and state.dir == db.parent / ".prefect-server"

    # another dataset id: a real import (the same files again would be a no-op that starts no flow)
    again = ctsvqa("import-upstream", str(MINI), "--dataset", "mini-again", "--db", str(db), CTSVQA_PREFECT="resident")
    assert again.returncode == 0, again.stderr
    assert "started a Prefect server" not in again.stderr
    assert server.status(db).pid == state.pid                 # the same process served both commands
    assert len(flow_run_names(state.url)) >= 2                # both runs were recorded by our server

    shown = ctsvqa("server", "status", "--db", str(db))
    assert shown.returncode == 0 and f"PID {state.pid}: healthy" in shown.stdout


def test_commands_that_run_no_flow_start_no_server(mini_db):
    done = ctsvqa("report", "--db", str(mini_db), CTSVQA_PREFECT="resident")
    assert done.returncode == 0, done.stderr
    assert not (mini_db.parent / ".prefect-server" / "server.pid").exists()
    assert "Prefect server" not in done.stderr


def test_server_start_stop_and_a_stale_pid_file(tmp_path):
    db = tmp_path / "wh.duckdb"
    d = db.parent / ".prefect-server"
    d.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (d / "server.pid").write_text(f"{dead.pid}\n")
    (d / "server.port").write_text("9\n")
    shown = ctsvqa("server", "status", "--db", str(db))
    assert shown.returncode == 3 and "stale PID file" in shown.stdout
    assert not (d / "server.pid").exists()
    assert "no Prefect server running" in ctsvqa("server", "stop", "--db", str(db)).stdout


def test_server_command_start_then_stop_leaves_no_process(tmp_path):
    db = tmp_path / "wh.duckdb"
    started = ctsvqa("server", "start", "--db", str(db))
    pid = server.status(db).pid
    try:
        assert started.returncode == 0 and f"PID {pid}" in started.stdout, started.stderr
        assert ctsvqa("server", "start", "--db", str(db)).stdout.startswith("Prefect server already running")
        stopped = ctsvqa("server", "stop", "--db", str(db))
        assert f"stopped (PID {pid})" in stopped.stdout
        assert process_gone(pid)
        assert not (db.parent / ".prefect-server" / "server.pid").exists()
    finally:
        server.stop(db)


def _ephemeral_servers_of(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent and b"prefect.server.api.server" in cmd:
                found.append(int(entry))
    return found


def test_kill_9_of_a_command_in_ephemeral_mode_leaves_no_prefect_server(tmp_path):
    env = cli_env(CTSVQA_PREFECT="ephemeral", PREFECT_HOME=str(tmp_path / "prefect-home"))
    cli = subprocess.Popen([sys.executable, "-m", "flows.cli", "import-upstream", str(MINI), "--db",
                            str(tmp_path / "wh.duckdb")], cwd=REPO, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children: list[int] = []
    try:
        deadline = time.monotonic() + 300
        while not children and cli.poll() is None and time.monotonic() < deadline:
            children = _ephemeral_servers_of(cli.pid)
            time.sleep(0.1)
        assert children, "the command never started Prefect's temporary server"
        time.sleep(1.0)                                      # let the watchdog see it
        cli.send_signal(signal.SIGKILL)
        cli.wait()
        assert all(process_gone(pid, timeout=20) for pid in children), "temporary server outlived its command"
    finally:
        for pid in children:
            if not process_gone(pid, timeout=0):
                os.kill(pid, signal.SIGKILL)


def test_the_ui_calls_its_own_api_and_shows_the_runs_by_name_and_a_tasks_logs(resident_server, tmp_path):
    """The UI asked /ui-settings for its API and got Prefect's default port 4200, where nothing listens:
    the Runs page was empty. In a real browser, after a benchmark: its runs by their names, and an
    answer task's log lines."""
    from tests.browser import browser

    db, state, _ = resident_server
    with urllib.request.urlopen(f"{state.ui}/ui-settings", timeout=30) as reply:
        assert json.load(reply)["api_url"] == state.url
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("dataset:\n  phantoms: {n: 2, seed: 4, size: small}\nmodels: [phantom-expert, blind]\n"
                   "judges: [offline]\n")
    bench_db = db.parent / "bench-ui.duckdb"                  # beside it: the same resident server
    done = ctsvqa("benchmark", "--config", str(cfg), "--db", str(bench_db), "--out", str(tmp_path / "out"),
                  CTSVQA_PREFECT="resident")
    assert done.returncode == 0, done.stderr
    names = flow_run_names(state.url)
    expected = ["benchmark/tiny", "import-upstream/phantoms-v2-small-s4-n2", "preprocess/phantom-v2-small-s4",
                "infer/phantom-expert", "infer/blind", "judge/offline", "score/phantom-expert,blind"]
    assert set(expected) <= set(names), names
    req = urllib.request.Request(f"{state.url}/task_runs/filter", data=json.dumps({}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as reply:
        answer = next(t for t in json.load(reply) if t["name"] == "answer-blind")
    shots = Path(os.environ.get("CTSVQA_SCREENSHOTS", tmp_path))
    with browser(tmp_path / "profile") as page:
        page.open(f"{state.ui}/runs")
        text = page.wait_for(lambda t: all(n in t for n in expected))
        assert "Oops" not in text
        page.screenshot(shots / "prefect-ui-runs.png")
        page.open(f"{state.ui}/runs/task-run/{answer['id']}")
        page.wait_for(lambda t: "questions answered" in t and "infer/blind" in t)
        page.screenshot(shots / "prefect-ui-task-logs.png")
        page.open((tmp_path / "out" / "report" / "report.html").as_uri())
        page.wait_for(lambda t: "Headline" in t and "Length of questions" in t)
        page.screenshot(shots / "report.png")
