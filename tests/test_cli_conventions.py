"""The CLI's conventions: --version, --json where a script reads the output, the exit codes of the
README's rule (2: bad input or environment, before any work), a closed pipe ends quietly."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata

from tests.conftest import REPO, cli_env


def ctsvqa(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=cli_env(**env),
                          capture_output=True, text=True, timeout=300)


def test_version():
    done = ctsvqa("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"ctsvqa {metadata.version('ctsvqa')}"


def test_json_outputs_parse_and_carry_the_same_facts(mini_db, tmp_path):
    report = json.loads(ctsvqa("report", "--json", "--db", str(mini_db)).stdout)
    acc = report["datasets"]["ct-spatialvqa"]["model_accuracy"]
    assert {(r["model"], r["panel"], r["majority_accuracy"]) for r in acc} == {
        ("m3d", "upstream", 0.625), ("merlin", "upstream", 4 / 7), ("radfm", "upstream", 0.75)}
    assert {r["status"] for r in acc} == {"complete"}
    models = json.loads(ctsvqa("models", "--json").stdout)
    blind = next(m for m in models if m["name"] == "blind")
    assert blind["ready"] is True and blind["origin"] == "shipped"
    envs = json.loads(ctsvqa("env", "list", "--json", CTSVQA_ENVS=str(tmp_path / "envs")).stdout)
    assert {e["family"] for e in envs} >= {"m3d", "merlin"} and not any(e["ready"] for e in envs)
    done = ctsvqa("server", "status", "--json", "--db", str(tmp_path / "wh.duckdb"))
    status = json.loads(done.stdout)
    assert done.returncode == 3 and status["running"] is False and status["pid"] is None


def test_a_closed_pipe_ends_quietly(mini_db):
    import fcntl
    import os

    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, 1031, 4096)                    # F_SETPIPE_SZ: one page, less than the report's JSON
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "report", "--json", "--db", str(mini_db)], cwd=REPO,
                            env=cli_env(), stdout=write_end, stderr=subprocess.PIPE)
    os.close(write_end)
    with os.fdopen(read_end, "rb", buffering=0) as reader:
        reader.read(10)                                   # then the reader goes away, as `| head -c 10` would
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 141 and err == ""


def test_more_gpus_than_the_host_has_is_refused_before_any_work(mini_db):
    import torch

    n = torch.cuda.device_count() + 1
    done = ctsvqa("infer", "--model", "random", "--gpus", str(n), "--db", str(mini_db), CTSVQA_RAY_INIT="")
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"ctsvqa: error: {n} replica(s) need {n} GPU(s) but this host has")
