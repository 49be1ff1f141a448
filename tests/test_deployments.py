"""deployments.yaml points at real flows with parameters they accept."""

from __future__ import annotations

import importlib
import inspect

import yaml
from prefect import Flow

from tests.conftest import REPO


def test_every_deployment_entrypoint_is_a_flow_with_matching_parameters():
    spec = yaml.safe_load((REPO / "deployments.yaml").read_text())
    assert spec["deployments"]
    for dep in spec["deployments"]:
        module_path, name = dep["entrypoint"].split(":")
        module = importlib.import_module(module_path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, name)
        assert isinstance(flow, Flow), dep["name"]
        accepted = set(inspect.signature(flow.fn).parameters)
        assert set(dep.get("parameters", {})) <= accepted, dep["name"]
        for schedule in dep.get("schedules", []):
            assert len(schedule["cron"].split()) == 5


def _api(url: str, path: str, body: dict | None = None):
    import json
    import urllib.request

    req = urllib.request.Request(f"{url}{path}", data=json.dumps(body or {}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as reply:
        return json.load(reply)


BENCHMARK_CONFIG = """
dataset:
  phantoms: {n: 2, seed: 3, size: small}
models:
  - model: phantom-expert
  - model: blind
judges: [offline]
"""


def test_deployments_run_through_a_real_worker_as_the_readme_says(resident_server, tmp_path):
    """README steps against our server, no CTSVQA_ROOT: work pool, deploy, run, worker --run-once;
    the import deployment, then the nightly benchmark (on a tiny phantom config) to completion."""
    import subprocess
    import sys

    import duckdb
    import pytest

    from tests.conftest import MINI, cli_env, process_gone

    db, state, _ = resident_server
    env = cli_env(PREFECT_HOME=str(state.dir / "home"))
    env.pop("CTSVQA_ROOT", None)
    done = subprocess.run([sys.executable, "-m", "flows.cli", "server", "env", "--db", str(db)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == f"export PREFECT_API_URL={state.url}"
    env["PREFECT_API_URL"] = state.url
    prefect = [sys.executable, "-m", "prefect", "--no-prompt"]

    def run(*args: str, timeout: int = 300) -> str:
        out = subprocess.run(prefect + list(args), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    run("work-pool", "create", "ctsvqa-cpu", "--type", "process", "--overwrite")
    run("deploy", "--prefect-file", "deployments.yaml", "--all")
    target = tmp_path / "deployed.duckdb"
    run("deployment", "run", "import-upstream/import-upstream-nightly", "--param", f"path={MINI}",
        "--param", f"db={target}")
    worker, log = _worker_run_once(prefect, env, timeout=400)
    runs = [r for r in _api(state.url, "/flow_runs/filter") if r["name"] == "import-upstream/upstream-mini"
            and r.get("deployment_id")]
    assert runs and runs[0]["state_type"] == "COMPLETED", log[-3000:]
    with duckdb.connect(str(target), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM model_accuracy").fetchone() == (3,)
    artifacts = _api(state.url, "/artifacts/filter", {"artifacts": {"key": {"any_": ["model-accuracy"]}}})
    assert any(a["flow_run_id"] == runs[0]["id"] and a["type"] == "table" for a in artifacts)
    assert worker.returncode == 0 and process_gone(worker.pid, timeout=0)
    assert not _processes_of_flow_run(runs[0]["id"])

    config, bench_db, out = tmp_path / "nightly.yaml", tmp_path / "bench.duckdb", tmp_path / "out"
    config.write_text(BENCHMARK_CONFIG)
    run("deployment", "run", "benchmark/benchmark-nightly", "--param", f"config={config}", "--param", f"db={bench_db}",
        "--param", f"out={out}")
    worker, log = _worker_run_once(prefect, env, timeout=600)
    runs = [r for r in _api(state.url, "/flow_runs/filter") if r["name"] == "benchmark/nightly" and r.get("deployment_id")]
    assert runs and runs[0]["state_type"] == "COMPLETED", log[-3000:]
    children = [r for r in _api(state.url, "/flow_runs/filter") if r.get("parent_task_run_id")]
    assert {"import-upstream", "infer", "judge", "score"} <= {_flow_name(state.url, r["flow_id"]) for r in children}
    with duckdb.connect(str(bench_db), read_only=True) as con:
        runs_acc = dict(con.execute("SELECT model, majority_accuracy FROM model_accuracy WHERE panel = 'offline'")
                        .fetchall())
        assert set(runs_acc) == {"phantom-expert", "blind"}
        assert con.execute("SELECT count(*) FROM text_scores").fetchone()[0] > 0
    assert (out / "report" / "report.html").is_file() and bench_db.with_name("bench-snapshot.duckdb").is_file()
    assert worker.returncode == 0 and process_gone(worker.pid, timeout=0)
    assert not _processes_of_flow_run(runs[0]["id"])


def _worker_run_once(prefect: list[str], env: dict, timeout: int):
    """`prefect worker start --run-once` from outside the project (as a user's worker): the process
    once it has exited, and its log."""
    import subprocess

    import pytest

    worker = subprocess.Popen(prefect + ["worker", "start", "--pool", "ctsvqa-cpu", "--run-once"], cwd="/",
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        log, _ = worker.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        worker.kill()
        pytest.fail("the worker did not finish its run")
    return worker, log


def _flow_name(url: str, flow_id: str) -> str:
    import json
    import urllib.request

    with urllib.request.urlopen(f"{url}/flows/{flow_id}", timeout=30) as reply:
        return json.load(reply)["name"]


def _processes_of_flow_run(flow_run_id: str) -> list[int]:
    """Live processes the worker started for this flow run (they carry its id in their environment)."""
    import os
    from pathlib import Path

    mark = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode()
    found = []
    for p in os.listdir("/proc"):
        try:
            if p.isdigit() and mark in Path(f"/proc/{p}/environ").read_bytes().split(b"\0"):
                found.append(int(p))
        except OSError:
            continue
    return found
