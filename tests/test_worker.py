"""Remote-code models run in their family environment through the worker protocol: real venvs made by
`adapters.models.environments.create`, the real worker process, real `ctsvqa infer` runs on a phantom data set.
No mocks: crashes, hangs and interrupts are real signals and exits."""

from __future__ import annotations

import json
import re
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from adapters.datasets.phantom import generate
from adapters.models import environments, registry
from adapters.models.base import AdapterError
from tasks.inference import InferRequest, run_inference
from tasks.upstream_import import import_upstream
from tests.conftest import REPO, cli_env, process_gone, rows
from tests.worker_env import make_family_env, merlin_python  # noqa: F401  (merlin_python: a fixture)

MODEL = "tests.worker_adapters:WorkerEcho"
FAMILY = "testfam"


@pytest.fixture(scope="module")
def envs_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("envs")
    make_family_env(root, FAMILY)                 # a venv of its own with numpy only, built by pip
    return root


@pytest.fixture(autouse=True)
def isolated(envs_root, tmp_path, monkeypatch):
    tag = uuid.uuid4().hex
    monkeypatch.setenv("CTSVQA_ENVS", str(envs_root))
    monkeypatch.setenv("CTSVQA_WORKER_LOGS", str(tmp_path / "logs"))
    monkeypatch.setenv("WORKER_TEST_TAG", tag)    # inherited by the workers: finds them in /proc
    for var in ("CTSVQA_FAKE_FAULT", "CTSVQA_FAKE_FAULT_VOLUME", "WORKER_TEST_DELAY", "WORKER_TEST_PIDS"):
        monkeypatch.delenv(var, raising=False)
    yield tag
    assert not tagged_workers(tag), "a worker process was left behind"


@pytest.fixture(scope="module")
def template_db(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantom")
    generate(root / "ph", 3, 11, "small")
    db = root / "wh.duckdb"
    import_upstream(root / "ph", db)
    from tasks import inference

    inference.build_inputs(db, rows(db, "SELECT dataset_id FROM datasets")[0][0], "lingshu",
                           [v for (v,) in rows(db, "SELECT volume FROM volumes")])
    return db


@pytest.fixture
def pdb(template_db, tmp_path) -> Path:
    db = tmp_path / "wh.duckdb"
    shutil.copy(template_db, db)
    return db


def volumes(db) -> list[str]:
    return [v for (v,) in rows(db, "SELECT volume FROM volumes ORDER BY position")]


def predictions(db) -> dict[str, tuple]:
    return {q: (t, s, r, json.loads(p)) for q, t, s, r, p in rows(
        db, "SELECT qid, text, status, reason, provenance FROM predictions")}


def tagged_workers(tag: str) -> list[int]:
    """Live worker processes (not zombies) that carry this test's tag in their environment."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if b"adapters.models.worker" not in (proc / "cmdline").read_bytes():
                continue
            if f"WORKER_TEST_TAG={tag}".encode() not in (proc / "environ").read_bytes():
                continue
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X"):
            found.append(int(proc.name))
    return found


def cli(*args: str, **env: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", *args]


def prefect_env(**extra: str) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    return {**cli_env(**extra), "PREFECT_API_URL": PREFECT_API_URL.value()}


# -- through the CLI ---------------------------------------------------------------------------------

def test_ctsvqa_infer_runs_the_model_in_its_family_env_and_leaves_no_worker(prefect_server, pdb, envs_root, isolated):
    done = subprocess.run(cli("infer", "--model", MODEL, "--batch-size", "3", "--db", str(pdb)), cwd=REPO,
                          env=prefect_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    preds = predictions(pdb)
    assert len(preds) == len(rows(pdb, "SELECT qid FROM questions"))
    env_prefix = str(envs_root / FAMILY)
    # answered in the family env's interpreter, not ours; the model's stdout chatter broke nothing
    assert all(s == "ok" and t.startswith("mean=") for t, s, _, _ in preds.values())
    assert {p["meta"]["prefix"] for *_, p in preds.values()} == {env_prefix} != {sys.prefix}
    (prov,) = rows(pdb, "SELECT provenance FROM inference_sessions")[0]
    prov = json.loads(prov)
    assert prov["worker"]["prefix"] == env_prefix and prov["worker"]["python"] == env_prefix + "/bin/python"
    assert prov["packages"]["numpy"] == environments.installed(Path(env_prefix))["numpy"]   # the env's, as found there
    assert "torch" not in prov["packages"]                                                    # ours is not visible
    (config,) = rows(pdb, "SELECT config FROM runs")[0]
    identity = json.loads(config)["identity"]
    assert identity["environment"] == {"family": FAMILY, "python": prov["worker"]["python_version"],
                                       "fingerprint": environments.fingerprint(FAMILY)}
    log = Path(prov["worker_log"]).read_text()
    assert "loading checkpoint shards" in log and "C-level chatter" in log       # stdout went to the log
    assert not tagged_workers(isolated)                                           # the end of a run


def test_ctrl_c_of_ctsvqa_infer_leaves_no_worker(prefect_server, pdb, tmp_path, isolated):
    pids = tmp_path / "pids"
    proc = subprocess.Popen(cli("infer", "--model", MODEL, "--batch-size", "1", "--db", str(pdb)), cwd=REPO,
                            env=prefect_env(WORKER_TEST_DELAY="1", WORKER_TEST_PIDS=str(pids)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while not (pids.is_file() and pids.read_text().strip()):
            assert proc.poll() is None and time.monotonic() < deadline, "the worker never started"
            time.sleep(0.2)
        worker = int(pids.read_text().split()[0])
        time.sleep(1.5)                                 # mid-answer
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert process_gone(worker, timeout=20), f"worker {worker} outlived the interrupted command"
    assert not tagged_workers(isolated)


def test_missing_family_env_is_one_line_naming_env_create(pdb, tmp_path):
    env = {**cli_env(), "CTSVQA_ENVS": str(tmp_path / "no-envs")}
    done = subprocess.run(cli("infer", "--model", MODEL, "--db", str(pdb)), cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert "family environment 'testfam' is not ready" in line and "ctsvqa env create testfam" in line
    assert rows(pdb, "SELECT count(*) FROM predictions")[0][0] == 0


# -- crashes, hangs, the host's death -----------------------------------------------------------------

def test_crash_on_one_volume_is_stored_with_stderr_and_a_new_worker_answers_the_rest(pdb, monkeypatch):
    bad = volumes(pdb)[1]
    monkeypatch.setenv("CTSVQA_FAKE_FAULT", "crash")
    monkeypatch.setenv("CTSVQA_FAKE_FAULT_VOLUME", bad)
    summary = run_inference(pdb, InferRequest(model=MODEL, batch_size=2))
    preds = predictions(pdb)
    failed = {q: p for q, p in preds.items() if p[1] == "error"}
    assert failed and {q.split("::")[0] for q in failed} == {bad}                  # that volume, all of it
    for _, _, reason, _ in failed.values():
        assert reason.startswith(f"worker crashed (exit 3) while answering volume {bad}")
        assert f"fake model: injected crash on {bad}" in reason                    # the stderr tail
    ok = {q: p for q, p in preds.items() if p[1] == "ok"}
    assert {q.split("::")[0] for q in ok} == set(volumes(pdb)) - {bad}
    pids_before = {p["meta"]["pid"] for q, (*_, p) in ok.items() if q < bad}
    pids_after = {p["meta"]["pid"] for q, (*_, p) in ok.items() if q > bad}
    assert len(pids_before) == len(pids_after) == 1 and pids_before != pids_after  # restarted after the crash
    assert summary.ok == len(ok) and summary.error == len(failed)
    # resuming with --retry-failed and no fault answers the crashed volume
    monkeypatch.delenv("CTSVQA_FAKE_FAULT")
    again = run_inference(pdb, InferRequest(model=MODEL, batch_size=2, retry_failed=True))
    assert again.pending == len(failed) == again.ok


def test_hang_is_killed_after_the_timeout_and_the_run_goes_on(pdb, monkeypatch, tmp_path):
    bad = volumes(pdb)[0]
    pids = tmp_path / "pids"
    monkeypatch.setenv("CTSVQA_FAKE_FAULT", "hang")
    monkeypatch.setenv("CTSVQA_FAKE_FAULT_VOLUME", bad)
    monkeypatch.setenv("WORKER_TEST_PIDS", str(pids))
    summary = run_inference(pdb, InferRequest(model=MODEL, batch_size=8, options={"worker_timeout": 2}))
    preds = predictions(pdb)
    failed = {q: p for q, p in preds.items() if p[1] == "error"}
    assert {q.split("::")[0] for q in failed} == {bad}
    assert all(r.startswith(f"timed out after 2 s while answering volume {bad}") and "injected hang" in r
               for _, _, r, _ in failed.values())
    hung = int(pids.read_text().split()[0])
    assert process_gone(hung, timeout=5)
    assert summary.ok == len(preds) - len(failed) > 0
    # worker_timeout says how to run, not what to answer: the same run as without it
    assert rows(pdb, "SELECT count(DISTINCT run_id) FROM predictions")[0][0] == 1
    assert "worker_timeout" not in json.loads(rows(pdb, "SELECT config FROM runs")[0][0])["identity"]["options"]


def test_kill_9_of_the_host_ends_the_worker(pdb, tmp_path):
    pids = tmp_path / "pids"
    code = (f"from tasks.inference import InferRequest, run_inference\n"
            f"run_inference({str(pdb)!r}, InferRequest(model={MODEL!r}, batch_size=1))")
    host = subprocess.Popen([sys.executable, "-c", code], cwd=REPO,
                            env={**cli_env(), "WORKER_TEST_DELAY": "2", "WORKER_TEST_PIDS": str(pids)})
    try:
        deadline = time.monotonic() + 120
        while not (pids.is_file() and pids.read_text().strip()):
            assert host.poll() is None and time.monotonic() < deadline, "the worker never started"
            time.sleep(0.2)
        worker = int(pids.read_text().split()[0])
        host.send_signal(signal.SIGKILL)
        host.wait(10)
    finally:
        if host.poll() is None:
            host.kill()
    assert process_gone(worker, timeout=20), "the worker outlived its killed host"


# -- where it runs: --env current, --env PYTHON -----------------------------------------------------

def test_env_current_runs_in_process_and_env_python_runs_in_that_interpreter(pdb, envs_root):
    here = run_inference(pdb, InferRequest(model=MODEL, env="current", limit_volumes=1, name="here"))
    there = run_inference(pdb, InferRequest(model=MODEL, env=str(envs_root / FAMILY / "bin" / "python"),
                                            limit_volumes=1, name="there"))
    assert here.ok == there.ok > 0 and here.run_id != there.run_id             # another stack, another run
    by_run = {}
    for run_id, prov, config in rows(pdb, "SELECT p.run_id, p.provenance, r.config FROM predictions p "
                                          "JOIN runs r USING (run_id)"):
        by_run[run_id] = (json.loads(prov)["meta"]["prefix"], json.loads(config)["identity"]["environment"])
    assert by_run[here.run_id][0] == sys.prefix and by_run[here.run_id][1]["current"] is True
    assert by_run[there.run_id][0] == str(envs_root / FAMILY)
    # the interpreter's own package list gives the same fingerprint as the env's site-packages
    assert by_run[there.run_id][1]["fingerprint"] == environments.fingerprint(FAMILY)
    with pytest.raises(AdapterError, match="no such interpreter"):
        registry.create(MODEL, env=str(envs_root / "nope" / "python"))


def test_models_config_file_supplies_env_and_options(pdb, tmp_path, envs_root):
    from adapters.models import models_config

    cfg = tmp_path / "models.yaml"
    cfg.write_text(f"{MODEL}:\n  env: current\n  options: {{variant: x}}\n  checkpoint: ckpt\n")
    (tmp_path / "ckpt").mkdir()
    section = models_config.for_model(MODEL, cfg)
    assert section["checkpoint"] == str(tmp_path / "ckpt") and section["env"] == "current"
    cfg.write_text(f"{MODEL}:\n  weights: x\n")
    with pytest.raises(ValueError, match=r"models.yaml: model .*unknown key 'weights'; known: checkpoint"):
        models_config.load(cfg)


# -- making environments ---------------------------------------------------------------------------

def test_env_create_refuses_bad_family_and_a_python_too_old_in_one_line(tmp_path):
    env = {**cli_env(), "CTSVQA_ENVS": str(tmp_path / "envs")}
    bad = subprocess.run(cli("env", "create", "nope"), cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "unknown family environment 'nope'" in bad.stderr and "merlin" in bad.stderr
    old = "/usr/bin/python3.11" if Path("/usr/bin/python3.11").exists() else sys.executable
    too_old = subprocess.run(cli("env", "create", "med3dvlm", "--python", old), cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=60)
    assert too_old.returncode == 2 and len(too_old.stderr.strip().splitlines()) == 1
    assert "family 'med3dvlm' needs Python >=3.12, but" in too_old.stderr and "--python" in too_old.stderr
    assert not (tmp_path / "envs" / "med3dvlm").exists()                       # nothing was made
    with pytest.raises(environments.EnvError, match=r"needs Python >=3\.99; none found \(looked at: .*--python"):
        environments.find_python(">=3.99")


def test_half_built_env_is_not_ready_and_create_repairs_it(tmp_path, monkeypatch):
    root = tmp_path / "envs"
    path = make_family_env(root, "halffam", inherit=True)
    monkeypatch.setenv("CTSVQA_ENVS", str(root))
    assert environments.status("halffam").ready
    (path / environments.MARKER).unlink()                 # as if killed before the end
    st = environments.status("halffam")
    assert not st.ready and "half-built" in st.reason
    with pytest.raises(environments.EnvError, match=r"not ready .*half-built.*ctsvqa env create halffam"):
        environments.python_for("halffam")
    import fcntl

    with open(root / ".halffam.lock", "a+") as held:      # another `env create halffam` at work
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("4242")
        held.flush()
        with pytest.raises(environments.EnvError, match=r"another `ctsvqa env create halffam` is building .*4242"):
            environments.create("halffam", requirements=root / "halffam.requirements.txt")
    make_family_env(root, "halffam", inherit=True)        # create again: repaired in place
    assert environments.status("halffam").ready
    req = root / "halffam.requirements.txt"
    req.write_text(req.read_text() + "# changed\n")
    st = environments.status("halffam")
    assert not st.ready and st.reason.startswith("stale")


def test_requirements_files_put_torch_first_and_torch_can_be_overridden(tmp_path):
    for family in environments.families():
        sp = environments.spec(family)
        assert sp.torch and sp.torch[0].startswith("torch==") and any(r.startswith("numpy") for r in sp.rest)
    assert environments.spec("med3dvlm").python == ">=3.12"
    m3d = environments.spec("m3d").with_torch("torch==2.13.0 torchvision==0.28.0")
    assert m3d.torch == ("torch==2.13.0", "torchvision==0.28.0")
    assert not any(r.startswith("torchvision") for r in m3d.rest)
    bad = tmp_path / "bad.txt"
    bad.write_text("numpy\ntorch==2.13.0\n")
    with pytest.raises(environments.EnvError, match="torch must be the first requirement"):
        environments.spec("bad", bad)


def test_env_create_merlin_builds_the_real_package(merlin_python):
    """`ctsvqa env create merlin` (run by the fixture where the env is not ready yet, as a user would):
    listed as ready, and merlin-vlm 0.0.7's report generator imports in it."""
    env = {**cli_env(), "CTSVQA_ENVS": str(merlin_python.parents[2])}       # <envs>/merlin/bin/python
    listed = subprocess.run(cli("env", "list"), cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert re.search(r"merlin\s+ready", listed.stdout), listed.stdout
    out = subprocess.run([str(merlin_python), "-c", "import merlin.models.radiology_report_generation, "
                          "importlib.metadata as m; print(m.version('merlin-vlm'))"], cwd="/", capture_output=True,
                         text=True, timeout=300)
    assert out.stdout.strip() == "0.0.7", out.stderr[-2000:]


def test_models_lists_the_environment_as_a_requirement(envs_root, tmp_path, monkeypatch):
    found = registry.environment_requirement(FAMILY)
    assert found.found and found.what == "environment testfam" and str(envs_root / FAMILY) in found.detail
    monkeypatch.setenv("CTSVQA_ENVS", str(tmp_path))
    missing = registry.environment_requirement("merlin")
    assert not missing.found and "not built" in missing.detail and "ctsvqa env create merlin" in missing.detail


def test_bad_worker_timeout_is_one_clear_error():
    from adapters.models.base import AdapterSettings

    with pytest.raises(AdapterError, match=r"worker_timeout .* positive number of seconds, not 'abc'"):
        registry.create(MODEL, AdapterSettings(options={"worker_timeout": "abc"}))


def test_the_worker_waits_as_long_as_the_model_needs_unless_told():
    """Each call's default wait is the adapter's WORKER_SECONDS for that many questions (RadFM: 900 s
    plus 600 s a question; 6 harness questions took 752 s on a CPU, past the old flat 900 s at 8+);
    --option worker_timeout is used as given; a bad value is refused in one line."""
    from adapters.models.base import AdapterSettings
    from adapters.models.m3d import M3D
    from adapters.models.radfm import RadFM
    from adapters.models.worker_client import worker_adapter_class

    radfm = worker_adapter_class(RadFM)(AdapterSettings())
    assert [radfm.call_timeout(n) for n in (1, 6, 12)] == [1500.0, 4500.0, 8100.0]
    assert worker_adapter_class(M3D)(AdapterSettings()).call_timeout(12) == 900.0
    told = worker_adapter_class(RadFM)(AdapterSettings(options={"worker_timeout": 5}))
    assert told.call_timeout(12) == 5.0 and "worker_timeout" not in told.settings.options
    with pytest.raises(AdapterError, match="worker_timeout / worker_load_timeout must be a positive number"):
        worker_adapter_class(RadFM)(AdapterSettings(options={"worker_timeout": "0"}))
