"""Sharded inference (tasks/sharding.py) on a CPU machine: a real local Ray that declares two logical
GPUs, two replicas of the phantom expert, the warehouse written by this process only. One Ray
session for the in-process tests; the CLI test starts (and must stop) its own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="sharding needs the [ray] extra")

import warehouse  # noqa: E402
from adapters.datasets.phantom import generate  # noqa: E402
from tasks import inference  # noqa: E402
from tasks.inference import InferRequest, run_inference  # noqa: E402
from tasks.sharding import Sharding, parse_devices, ray_session, sharding_from  # noqa: E402
from tasks.upstream_import import import_upstream  # noqa: E402
from tests.conftest import REPO, cli_env, process_gone  # noqa: E402

N_VOLUMES = 4
PROBE = "tests.sharding_adapters:ShardProbe"


@pytest.fixture(scope="module")
def template_db(tmp_path_factory) -> Path:
    """A phantom data set with every phantom-expert input built (the inputs stay where they are; copies
    of the warehouse point to them)."""
    root = tmp_path_factory.mktemp("shard")
    generate(root / "phantom", N_VOLUMES, 11, "small")
    db = root / "template.duckdb"
    import_upstream(root / "phantom", db)
    plan = inference.plan_run(db, InferRequest(model="phantom-expert"))
    inference.build_inputs(db, plan.dataset_id, plan.recipe, list(plan.pending))
    return db


def assert_one_gpu_each(replicas: set[tuple[int, str]]) -> None:
    """Both replicas took volumes, each on a GPU of its own; (index, CUDA_VISIBLE_DEVICES) pairs.
    Which replica Ray gives which GPU is its choice (a run once gave replica 0 the second)."""
    assert sorted(i for i, _ in replicas) == [0, 1] and sorted(gpu for _, gpu in replicas) == ["0", "1"]


def copy_db(template: Path, tmp_path: Path) -> Path:
    db = tmp_path / "wh.duckdb"
    shutil.copy(template, db)
    return db


@pytest.fixture(scope="module")
def single(template_db, tmp_path_factory) -> dict[str, tuple]:
    """The same model in one process, the reference every sharded run must equal."""
    db = copy_db(template_db, tmp_path_factory.mktemp("single"))
    summary = run_inference(db, InferRequest(model="phantom-expert"), build_missing=False)
    assert summary.ok > 20 and summary.volumes == N_VOLUMES
    return predictions(db)


def predictions(db: Path, name: str | None = None) -> dict[str, tuple]:
    with warehouse.reader(db) as con:
        got = con.execute("SELECT qid, text, status, reason, provenance, name FROM predictions JOIN runs USING (run_id) "
                          "WHERE source = 'inference'").fetchall()
    out: dict[str, tuple] = {}
    for qid, text, status, reason, prov, run in got:
        if name is None or run == name:
            assert qid not in out, f"{qid} stored twice"
            out[qid] = (text, status, reason, json.loads(prov))
    return out


def answers(preds: dict[str, tuple]) -> dict[str, tuple]:
    return {qid: (text, status, reason) for qid, (text, status, reason, _) in preds.items()}


def ray_processes(marker: str) -> list[int]:
    """Processes whose environment carries `marker` (Ray's processes inherit the environment of the
    command that started them)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker.encode() in (proc / "environ").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                pass
    return [p for p in found if not process_gone(p, timeout=0)]


def gpus_freed(timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while ray.available_resources().get("GPU", 0) < 2:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray for the module with two logical GPUs, started and stopped the way a run without
    a cluster does it (tasks.sharding.ray_session); yields its address. At the end every process it
    started must be gone."""
    marker = uuid.uuid4().hex
    os.environ["CTSVQA_SHARD_SESSION"] = marker           # inherited by the processes Ray starts
    try:
        with ray_session(None, (), {"num_cpus": 2, "num_gpus": 2}) as started:
            assert started and ray_processes(marker)       # the check below can see them
            yield ray.get_runtime_context().gcs_address
    finally:
        os.environ.pop("CTSVQA_SHARD_SESSION", None)
    left = [p for p in ray_processes(marker) if not process_gone(p, timeout=20)]
    assert left == [], f"Ray processes left after the run: {left}"


def test_two_replicas_answer_as_one_device_does_each_loading_once(template_db, single, ray_cluster, tmp_path):
    db = copy_db(template_db, tmp_path)
    loads = tmp_path / "loads.txt"
    summary = run_inference(db, InferRequest(model=PROBE, options={"load_log": str(loads)}), build_missing=False,
                            sharding=Sharding(2))
    got = predictions(db)
    assert set(got) == set(single) and summary.ok + summary.error == len(single) and summary.volumes == N_VOLUMES
    assert answers(got) == answers(single)
    by_replica: dict[tuple, set[str]] = {}
    for text, status, reason, prov in got.values():
        r = prov["replica"]
        by_replica.setdefault((r["index"], r["pid"], r["cuda_visible_devices"]), set()).add(prov["volume"])
    assert_one_gpu_each({(i, cvd) for i, _, cvd in by_replica})
    # a replica's next volume is read while it answers this one (the first of each is not)
    prefetched = {prov["volume"] for *_, prov in got.values() if prov["input_prefetched"]}
    assert 1 <= len(prefetched) <= N_VOLUMES - 2
    # each replica loaded the model once, in the process that answered
    lines = loads.read_text().split()
    assert sorted(zip(lines[::2], lines[1::2])) == sorted((str(pid), cvd) for _, pid, cvd in by_replica)
    assert gpus_freed()                                     # the replicas are gone, their GPUs free


def test_replicas_of_a_multi_volume_adapter_get_groups(template_db, single, ray_cluster, tmp_path):
    """An adapter that decodes several volumes together (answer_many) gets them in its groups on
    every replica, and the answers still equal one device's."""
    db = copy_db(template_db, tmp_path)
    calls = tmp_path / "calls.txt"
    run_inference(db, InferRequest(model="tests.sharding_adapters:ShardManyProbe",
                                   options={"calls_log": str(calls)}), build_missing=False, sharding=Sharding(2))
    assert answers(predictions(db)) == answers(single)
    groups = [line.split() for line in calls.read_text().splitlines()]
    assert len({pid for pid, _ in groups}) == 2                            # both replicas took groups
    sizes = sorted(len(vols.split(",")) for _, vols in groups)
    assert sum(sizes) == N_VOLUMES and max(sizes) == 2 and sizes.count(2) >= (N_VOLUMES - 1) // 2


def test_a_replica_that_dies_fails_only_its_volume_and_the_run_goes_on(template_db, single, ray_cluster, tmp_path):
    db = copy_db(template_db, tmp_path)
    volumes = sorted({qid.split("::")[0] for qid in single})
    doomed = volumes[3]
    summary = run_inference(db, InferRequest(model=PROBE, options={"die_on": doomed}), build_missing=False,
                            sharding=Sharding(2))
    got = predictions(db)
    assert set(got) == set(single)                          # every question stored exactly once
    died = {qid: row for qid, row in got.items() if qid.startswith(doomed + "::")}
    assert died and all(status == "error" and "died while answering this volume" in reason
                        for _, status, reason, _ in died.values())
    dead = {prov["replica"]["index"] for *_, prov in died.values()}
    assert len(dead) == 1
    rest = {qid: row for qid, row in answers(got).items() if qid not in died}
    assert rest == {qid: row for qid, row in answers(single).items() if qid not in died}
    assert summary.volumes == N_VOLUMES
    # volumes the dead replica had not started went to the survivor
    after = [p for *_, p in got.values() if p["volume"] != doomed]
    assert {p["replica"]["index"] for p in after} - dead


def test_every_replica_dead_leaves_the_rest_pending(template_db, ray_cluster, tmp_path):
    """One replica, killed by the first volume: that volume is an error, the others stay unanswered
    (a re-run answers them), and the run says so."""
    db = copy_db(template_db, tmp_path)
    first = next(iter(inference.plan_run(db, InferRequest(model=PROBE)).pending))
    request = InferRequest(model=PROBE, options={"die_on": first})
    total = inference.plan_run(db, request).n_pending
    with pytest.raises(inference.InferenceError, match=r"every replica died; 3 volume\(s\) were not answered \(run the same command"):
        run_inference(db, request, build_missing=False, sharding=Sharding(1))
    got = predictions(db)
    assert {qid.split("::")[0] for qid in got} == {first}
    assert inference.plan_run(db, request).n_pending == total - len(got)


def test_cli_joins_a_ray_cluster_and_shards_over_two_gpus(template_db, single, ray_cluster, tmp_path):
    """`ctsvqa infer --gpus 2` with $RAY_ADDRESS: the Prefect flow's task drives the replicas on that
    cluster; the cluster stays up, the replicas go."""
    db = copy_db(template_db, tmp_path)
    env = cli_env(RAY_ADDRESS=ray_cluster)
    done = subprocess.run([sys.executable, "-m", "flows.cli", "infer", "--model", "phantom-expert", "--gpus", "2",
                           "--device", "cpu", "--db", str(db)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    n_ok = sum(status == "ok" for _, status, _, _ in single.values())
    assert f"{n_ok} answered, {len(single) - n_ok} failed of {len(single)}" in done.stdout
    got = predictions(db)
    assert answers(got) == answers(single)
    assert_one_gpu_each({(p["replica"]["index"], p["replica"]["cuda_visible_devices"]) for *_, p in got.values()})
    with warehouse.reader(db) as con:
        (prov,) = con.execute("SELECT provenance FROM inference_sessions").fetchone()
    assert json.loads(prov)["sharding"] == {"replicas": 2, "address": ray_cluster}
    assert ray.is_initialized() and gpus_freed()            # the cluster stays; the command's replicas went


def test_the_reaper_stops_a_killed_runs_processes(tmp_path):
    """What `kill -9` of a sharded run leaves (Ray's agents survive their raylet) is stopped by the
    watchdog: every process carrying the run's mark, one that ignores SIGTERM included."""
    mark = uuid.uuid4().hex
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import os, subprocess, sys, time
        from tasks import sharding
        sharding._start_reaper(sys.argv[1])
        env = dict(os.environ, CTSVQA_RAY_RUN=sys.argv[1])
        stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(300)"
        kids = [subprocess.Popen([sys.executable, "-c", stubborn], env=env, stdout=subprocess.PIPE),
                subprocess.Popen(["sleep", "300"], env=env)]
        kids[0].stdout.readline()
        print(" ".join(str(k.pid) for k in kids), flush=True)
        time.sleep(300)
        """), mark], cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, text=True)
    try:
        kids = [int(p) for p in parent.stdout.readline().split()]
        assert len(kids) == 2 and not any(process_gone(k, timeout=0) for k in kids)
    finally:
        parent.kill()
        parent.wait()
    assert all(process_gone(k, timeout=20) for k in kids)


@pytest.mark.parametrize("devices, gpus, address, message", [
    ("cuda:0,cuda:0", None, None, "named twice"),
    ("gpu0", None, None, "expected GPUs as cuda:N"),
    ("cuda:0", 2, None, "either --devices"),
    (None, 0, None, "at least 1"),
    (None, None, "auto", "--ray-address needs --gpus"),
    ("cuda:0,cuda:1", None, "10.0.0.1:6379", "pass --gpus N"),
])
def test_bad_sharding_options_are_refused_in_one_line(devices, gpus, address, message):
    with pytest.raises(ValueError, match=message):
        sharding_from(devices, gpus, address)


def test_devices_parse():
    assert parse_devices("cuda:0, cuda:3") == ("cuda:0", "cuda:3")
    assert sharding_from(None, None, None) is None
