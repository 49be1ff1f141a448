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


def _checkout_copy(dst):
    """The repository's tracked files, as a fresh clone has them: the deployments' relative paths
    (warehouse/, out/, examples/) resolve inside this copy, never in the developer's checkout."""
    import shutil
    import subprocess

    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True)
    if listed.returncode != 0:
        shutil.copytree(REPO, dst, ignore=shutil.ignore_patterns(".git", ".venv", "warehouse", "out", "*.egg-info"))
        return dst
    for name in listed.stdout.decode().split("\0"):
        if name and (REPO / name).is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dst / name)
    return dst


# The scheduled deployments in the order a day runs them (UTC): 01:00 (02:00 Berlin) the benchmark,
# 03:00 the upstream import, 03:30 the offline judging, 06:00 the learned backfill, 06:30 the report.
SCHEDULE_ORDER = ("benchmark/benchmark-nightly", "import-upstream/import-upstream-nightly",
                  "judge/judge-offline-nightly", "judge/judge-backfill", "report/report-refresh")
ACTIVE = {"benchmark-nightly", "import-upstream-nightly", "report-refresh"}     # the rest spend hours or money


def test_deployments_run_through_a_real_worker_as_the_readme_says(resident_server, tmp_path):
    """README steps against our server, from a fresh copy of the checkout: work pool, deploy, run,
    worker --run-once. Every scheduled deployment, in its schedule order, with its shipped parameters
    (the benchmark on a tiny phantom config), succeeds; they no longer share a warehouse, so the report
    refresh after the benchmark and the import works; the schedules that spend hours are paused."""
    import subprocess
    import sys

    import duckdb

    from tests.conftest import cli_env, process_gone

    db, state, _ = resident_server
    checkout = _checkout_copy(tmp_path / "clone")
    env = cli_env(PREFECT_HOME=str(state.dir / "home"))
    env.pop("CTSVQA_ROOT", None)
    env.pop("CTSVQA_DB", None)
    done = subprocess.run([sys.executable, "-m", "flows.cli", "server", "env", "--db", str(db)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == f"export PREFECT_API_URL={state.url}"
    env["PREFECT_API_URL"] = state.url
    prefect = [sys.executable, "-m", "prefect", "--no-prompt"]

    def run(*args: str, timeout: int = 300) -> str:
        out = subprocess.run(prefect + list(args), cwd=checkout, env=env, capture_output=True, text=True,
                             timeout=timeout)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    run("work-pool", "create", "ctsvqa-cpu", "--type", "process", "--overwrite")
    run("deploy", "--prefect-file", "deployments.yaml", "--all")
    deployments = {d["name"]: d for d in _api(state.url, "/deployments/filter")}
    for name, dep in deployments.items():
        for schedule in dep.get("schedules") or []:
            assert schedule["active"] == (name in ACTIVE), name

    config = checkout / "nightly.yaml"
    config.write_text(BENCHMARK_CONFIG)
    finished = []
    for deployment in SCHEDULE_ORDER:
        extra = ["--param", f"config={config}"] if deployment.startswith("benchmark/") else []
        run("deployment", "run", deployment, *extra)
        worker, log = _worker_run_once(prefect, env, timeout=600)
        dep_id = deployments[deployment.split("/")[1]]["id"]
        runs = [r for r in _api(state.url, "/flow_runs/filter") if r.get("deployment_id") == dep_id]
        assert runs and runs[0]["state_type"] == "COMPLETED", (deployment, log[-3000:])
        assert worker.returncode == 0 and process_gone(worker.pid, timeout=0)
        assert not _processes_of_flow_run(runs[0]["id"])
        finished.append(runs[0])
    assert [r["name"] for r in finished] == ["benchmark/nightly", "import-upstream/ct-spatialvqa", "judge/offline",
                                            "judge/offline-learned", "report/ct-spatialvqa"]
    children = [r for r in _api(state.url, "/flow_runs/filter") if r.get("parent_task_run_id")]
    assert {"import-upstream", "infer", "judge", "score"} <= {_flow_name(state.url, r["flow_id"]) for r in children}

    bench_db, upstream_db = checkout / "warehouse" / "benchmark.duckdb", checkout / "warehouse" / "upstream.duckdb"
    with duckdb.connect(str(bench_db), read_only=True) as con:
        assert [d for (d,) in con.execute("SELECT dataset_id FROM datasets").fetchall()] == ["phantom-v2-small-s3"]
        runs_acc = dict(con.execute("SELECT model, majority_accuracy FROM model_accuracy WHERE panel = 'offline'")
                        .fetchall())
        assert set(runs_acc) == {"phantom-expert", "blind"}
        assert con.execute("SELECT count(*) FROM text_scores").fetchone()[0] > 0
    with duckdb.connect(str(upstream_db), read_only=True) as con:
        assert [d for (d,) in con.execute("SELECT dataset_id FROM datasets").fetchall()] == ["ct-spatialvqa"]
        panels = {p for (p,) in con.execute("SELECT DISTINCT panel FROM model_accuracy").fetchall()}
        assert {"upstream", "offline", "offline-learned"} <= panels
    assert (checkout / "out" / "benchmark" / "report" / "report.html").is_file()
    assert (checkout / "out" / "upstream" / "report" / "report.html").is_file()
    assert not (checkout / "warehouse" / "ctsvqa.duckdb").exists()           # no job wrote the default warehouse


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
