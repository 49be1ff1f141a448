"""The model runner on a phantom data set: a third-party adapter through a real entry point and the CLI,
kill -9 and resume, determinism, the shuffle ablation, bad input, and the offline baselines."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import numpy as np
import pytest

import warehouse
from adapters.datasets.phantom import generate
from adapters.models import registry
from adapters.models.base import AdapterError, DatasetQuestion, Question
from adapters.models.baselines import Blind, BlindOracle, RandomAnswer, _half
from tasks import inference
from tasks.inference import InferenceError, InferRequest, derangement, run_inference
from tasks.upstream_import import import_upstream
from tests.conftest import REPO, echo_plugin, rows

N_VOLUMES = 3
ECHO = "echo-test"


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantom")
    generate(root, N_VOLUMES, 11, "small")
    return root


@pytest.fixture(scope="module")
def template_db(phantom_root, tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("template") / "wh.duckdb"
    import_upstream(phantom_root, db)
    return db


@pytest.fixture
def pdb(template_db, tmp_path) -> Path:
    db = tmp_path / "wh.duckdb"
    shutil.copy(template_db, db)
    return db


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory) -> Path:
    """A distribution that exists only as a dist-info folder whose entry point names the test adapter."""
    return echo_plugin(tmp_path_factory.mktemp("site"))


@pytest.fixture
def plugin(plugin_dir, monkeypatch) -> Path:
    monkeypatch.syspath_prepend(str(plugin_dir))
    return plugin_dir


def predictions(db, name: str) -> dict[str, tuple]:
    return {qid: (text, status, reason, json.loads(prov)) for qid, text, status, reason, prov in rows(
        db, "SELECT qid, text, status, reason, provenance FROM predictions JOIN runs USING (run_id) WHERE name = ?",
        [name])}


def all_qids(db) -> set[str]:
    return {q for (q,) in rows(db, "SELECT qid FROM questions")}


def volume_of(qid: str) -> str:
    return qid.split("::")[0]


# -- registry and the entry-point contract ---------------------------------------------------------

def test_registry_lists_shipped_adapters_and_says_which_cannot_be_imported(plugin):
    infos = {i.name: i for i in registry.describe()}
    assert {"blind", "random", "phantom-expert", "medgemma", "lingshu", ECHO} <= set(infos)
    assert infos["blind"].ready and infos["random"].ready and infos["blind"].recipe is None
    assert infos[ECHO].origin == "entry point (ctsvqa-test-plugin)" and infos[ECHO].recipe == "lingshu"
    for info in infos.values():
        if not info.importable:                   # another helper's module not merged yet: said clearly
            assert "cannot be imported" in info.error and info.target.split(":")[0] in info.error
    with pytest.raises(registry.UnknownModel, match=r"unknown model 'nope'; known models: .*blind.*random"):
        registry.adapter_class("nope")


def test_third_party_adapter_through_a_real_entry_point_and_the_cli(prefect_server, plugin_dir, pdb):
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(plugin_dir)]),
           "PREFECT_API_URL": PREFECT_API_URL.value()}
    cli = [sys.executable, "-m", "flows.cli"]
    listed = subprocess.run([*cli, "models", "--model", ECHO], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert "recipe lingshu" in listed.stdout and "ready" in listed.stdout and "ctsvqa-test-plugin" in listed.stdout

    done = subprocess.run([*cli, "infer", "--model", ECHO, "--batch-size", "3", "--db", str(pdb)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"run {ECHO} (infer-" in done.stdout
    preds = predictions(pdb, ECHO)
    assert set(preds) == all_qids(pdb)
    assert all(s == "ok" and t.startswith("mean=") for t, s, _, _ in preds.values())
    assert {p["recipe"] for *_, p in preds.values()} == {"lingshu@1"}
    assert all(p["input_volume"] == volume_of(q) == p["meta"]["seen"] for q, (*_, p) in preds.items())
    # the missing inputs were built first: that recipe only
    assert rows(pdb, "SELECT DISTINCT recipe, status FROM model_inputs") == [("lingshu", "ok")]
    (config,) = rows(pdb, "SELECT config FROM runs WHERE name = ?", [ECHO])[0]
    assert json.loads(config)["identity"]["adapter"] == ECHO
    (prov,) = rows(pdb, "SELECT provenance FROM inference_sessions")[0]
    assert json.loads(prov)["adapter"] == ECHO and "packages" in json.loads(prov)


# -- resume after kill -9 --------------------------------------------------------------------------

def test_kill_9_mid_run_then_resume_answers_each_question_once(plugin, pdb, tmp_path, monkeypatch):
    log_file = tmp_path / "answered.log"
    inference.build_inputs(pdb, rows(pdb, "SELECT dataset_id FROM datasets")[0][0], "lingshu",
                           [v for (v,) in rows(pdb, "SELECT volume FROM volumes")])
    code = textwrap.dedent(f"""
        from tasks.inference import InferRequest, run_inference
        run_inference({str(pdb)!r}, InferRequest(model={ECHO!r}, batch_size=2), flush_seconds=0)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(plugin)]),
           "ECHO_TEST_DELAY": "0.4", "ECHO_TEST_LOG": str(log_file)}
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env)
    stored_before: set[str] = set()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not stored_before:
            if proc.poll() is not None:
                pytest.fail("the runner finished before it could be killed")
            try:
                with warehouse.connect(pdb, read_only=True, timeout=5) as con:
                    if con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'predictions'").fetchone()[0]:
                        stored_before = {q for (q,) in con.execute("SELECT qid FROM predictions").fetchall()}
            except (warehouse.WarehouseError, duckdb.Error):
                pass
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    stored_after_kill = set(predictions(pdb, ECHO))
    everything = all_qids(pdb)
    assert stored_before and stored_after_kill < everything          # killed in the middle
    answered_first = log_file.read_text().split()

    monkeypatch.setenv("ECHO_TEST_LOG", str(log_file))
    summary = run_inference(pdb, InferRequest(model=ECHO, batch_size=2))
    answered_second = log_file.read_text().split()[len(answered_first):]
    assert set(answered_second) == everything - stored_after_kill       # only what was not stored
    assert len(answered_second) == len(set(answered_second))            # nothing answered twice
    assert summary.pending == len(everything - stored_after_kill) == summary.ok
    (n, distinct) = rows(pdb, "SELECT count(*), count(DISTINCT qid) FROM predictions")[0]
    assert n == distinct == len(everything)                             # no duplicate, no lost row
    assert run_inference(pdb, InferRequest(model=ECHO, batch_size=2)).pending == 0


# -- determinism, identity, names --------------------------------------------------------------------

def test_same_configuration_twice_into_two_warehouses_gives_identical_predictions(plugin, template_db, tmp_path):
    results = []
    for i in range(2):
        db = tmp_path / f"wh{i}.duckdb"
        shutil.copy(template_db, db)
        for model in ("random", "blind", ECHO):
            run_inference(db, InferRequest(model=model, seed=5, batch_size=3 + i))   # batching must not matter
        results.append(rows(db, "SELECT run_id, qid, text, status FROM predictions ORDER BY ALL"))
    assert results[0] == results[1] and len(results[0]) == 3 * len(all_qids(db))


def test_name_of_another_configuration_is_refused_and_same_configuration_resumes(pdb):
    first = run_inference(pdb, InferRequest(model="random", seed=1))
    assert first.ok == first.pending > 0
    with pytest.raises(InferenceError, match=r"run name 'random' .* another configuration .* pass --name"):
        inference.plan_run(pdb, InferRequest(model="random", seed=2))
    again = run_inference(pdb, InferRequest(model="random", seed=1))
    assert again.pending == 0 and again.session_id is None
    other = run_inference(pdb, InferRequest(model="random", seed=2, name="random-s2"))
    assert other.run_id != first.run_id and other.ok == first.ok
    assert len(rows(pdb, "SELECT * FROM inference_sessions")) == 2


def test_limit_volumes_answers_the_first_volumes_and_the_rest_later(pdb):
    first = run_inference(pdb, InferRequest(model="random", limit_volumes=1))
    volumes = [v for (v,) in rows(pdb, "SELECT volume FROM volumes ORDER BY position")]
    assert {volume_of(q) for q in predictions(pdb, "random")} == {volumes[0]}
    rest = run_inference(pdb, InferRequest(model="random"))
    assert rest.run_id == first.run_id and first.pending + rest.pending == len(all_qids(pdb))


# -- the shuffle ablation --------------------------------------------------------------------------

@pytest.mark.parametrize("n", [2, 3, 7, 30])
def test_derangement_never_maps_a_volume_to_itself(n):
    volumes = [f"v{i}" for i in range(n)]
    for seed in range(20):
        mapping = derangement(volumes, seed)
        assert sorted(mapping) == sorted(mapping.values()) == sorted(volumes)
        assert all(k != v for k, v in mapping.items())
        assert mapping == derangement(volumes, seed)


def test_derangement_of_one_volume_is_a_clear_error():
    with pytest.raises(InferenceError, match="needs at least two volumes"):
        derangement(["only.nii.gz"], 0)


def test_shuffled_run_shows_every_question_another_volume_and_records_the_pairing(plugin, pdb):
    summary = run_inference(pdb, InferRequest(model=ECHO, ablate="shuffle-volumes", seed=3))
    assert summary.name == f"{ECHO}-shuffled" and summary.ok == len(all_qids(pdb))
    (config,) = rows(pdb, "SELECT config FROM runs WHERE name = ?", [summary.name])[0]
    ablation = json.loads(config)["ablation"]
    assert ablation["kind"] == "shuffle-volumes" and ablation["seed"] == 3
    mapping = ablation["mapping"]
    assert len(mapping) == N_VOLUMES and all(k != v for k, v in mapping.items())
    for qid, (text, _, _, prov) in predictions(pdb, summary.name).items():
        assert prov["volume"] == volume_of(qid) != prov["input_volume"] == mapping[volume_of(qid)]
        assert prov["meta"]["seen"] == prov["input_volume"]          # the adapter really got that volume
    normal = run_inference(pdb, InferRequest(model=ECHO, seed=3))
    assert normal.run_id != summary.run_id


# -- bad input -------------------------------------------------------------------------------------

def test_cli_unknown_model_is_one_line_that_lists_the_known_ones(pdb, capsys):
    from flows.cli import main

    assert main(["infer", "--model", "nope", "--db", str(pdb)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown model 'nope'" in err and "blind" in err and "random" in err
    assert not rows(pdb, "SELECT * FROM predictions")


def test_adapter_that_raises_on_one_volume_fails_only_that_volume(plugin, pdb):
    bad = rows(pdb, "SELECT volume FROM volumes ORDER BY position")[1][0]
    summary = run_inference(pdb, InferRequest(model=ECHO, options={"fail_volume": bad}))
    preds = predictions(pdb, ECHO)
    assert set(preds) == all_qids(pdb)
    for qid, (text, status, reason, _) in preds.items():
        if volume_of(qid) == bad:
            assert status == "error" and text is None and reason == f"adapter raised RuntimeError: cannot read volume {bad}"
        else:
            assert status == "ok"
    assert summary.error == sum(volume_of(q) == bad for q in preds) and summary.ok > 0


def test_a_question_that_breaks_its_batch_fails_alone(plugin, pdb):
    bad = sorted(all_qids(pdb))[1]
    summary = run_inference(pdb, InferRequest(model=ECHO, batch_size=4, options={"fail_qid": bad}))
    preds = predictions(pdb, ECHO)
    assert summary.error == 1 and summary.ok == len(preds) - 1
    assert preds[bad][1:3] == ("error", "adapter raised ValueError: this question breaks the model")
    batch_mates = [q for q, (*_, p) in preds.items() if p.get("retried_alone_after") and q != bad]
    assert batch_mates and all(preds[q][1] == "ok" and preds[q][3]["batch"] == 1 for q in batch_mates)


def test_unreadable_checkpoint_is_one_line_and_stores_nothing(plugin, pdb, tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(AdapterError) as err:
        run_inference(pdb, InferRequest(model=ECHO, checkpoint=str(ckpt)))
    msg = str(err.value)
    assert "\n" not in msg and f"could not be loaded from {ckpt}" in msg and "JSONDecodeError" in msg
    with pytest.raises(AdapterError, match="no checkpoint at .*put config.json there"):
        run_inference(pdb, InferRequest(model=ECHO, checkpoint=str(tmp_path / "absent")))
    assert not rows(pdb, "SELECT * FROM predictions") and not rows(pdb, "SELECT * FROM runs")


def test_missing_input_that_cannot_be_built_fails_that_volume_only(plugin, phantom_root, tmp_path):
    root = tmp_path / "ph"
    shutil.copytree(phantom_root, root)
    gone = sorted(root.glob("volumes/**/*_a_1.nii.gz"))[0]
    gone.unlink()
    db = tmp_path / "wh.duckdb"
    import_upstream(root, db)
    run_inference(db, InferRequest(model=ECHO))
    preds = predictions(db, ECHO)
    assert set(preds) == all_qids(db)
    for qid, (_, status, reason, prov) in preds.items():
        if volume_of(qid) == gone.name:
            assert status == "error" and "volume file not found" in reason and gone.name in reason
            assert prov["input_volume"] == gone.name
        else:
            assert status == "ok"


def test_cli_exits_non_zero_when_every_prediction_failed(prefect_server, plugin, phantom_root, tmp_path, capsys):
    from flows.cli import main

    root = tmp_path / "ph"
    shutil.copytree(phantom_root, root, ignore=shutil.ignore_patterns("*.nii.gz"))
    db = tmp_path / "wh.duckdb"
    import_upstream(root, db)
    assert main(["infer", "--model", ECHO, "--db", str(db)]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("ctsvqa: error: every one of the") and "Traceback" not in err
    assert "volume file not found" in err.strip().splitlines()[-1]
    assert {s for _, s, _, _ in predictions(db, ECHO).values()} == {"error"}
    assert len(predictions(db, ECHO)) == len(all_qids(db))

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{not json")
    assert main(["infer", "--model", ECHO, "--checkpoint", str(ckpt), "--name", "bad-ckpt", "--db", str(db)]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith(f"ctsvqa: error: model '{ECHO}' could not be loaded from {ckpt}")
    assert "Traceback" not in err and not rows(db, "SELECT * FROM runs WHERE name = 'bad-ckpt'")


def test_unreadable_input_fails_its_volume_and_retry_failed_answers_it_once_rebuilt(plugin, pdb):
    dataset = rows(pdb, "SELECT dataset_id FROM datasets")[0][0]
    volumes = [v for (v,) in rows(pdb, "SELECT volume FROM volumes ORDER BY position")]
    inference.build_inputs(pdb, dataset, "lingshu", volumes)
    (path,) = rows(pdb, "SELECT path FROM model_inputs WHERE volume = ? AND recipe = 'lingshu'", [volumes[0]])[0]
    Path(path).write_bytes(b"not an npz")
    run_inference(pdb, InferRequest(model=ECHO))
    preds = predictions(pdb, ECHO)
    bad = {q for q in preds if volume_of(q) == volumes[0]}
    assert all(preds[q][1] == "error" and preds[q][2].startswith(f"unreadable model input {path}") for q in bad)
    assert all(preds[q][1] == "ok" for q in set(preds) - bad)
    assert run_inference(pdb, InferRequest(model=ECHO)).pending == 0          # failures stay without the flag
    Path(path).unlink()                                                    # gone: rebuilt on the next run
    again = run_inference(pdb, InferRequest(model=ECHO, retry_failed=True))
    assert again.pending == again.ok == len(bad)
    assert {s for _, s, _, _ in predictions(pdb, ECHO).values()} == {"ok"}


def test_cli_flow_random_then_resume(prefect_server, pdb, capsys):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.cli import main

    assert main(["infer", "--model", "random", "--db", str(pdb)]) == 0
    assert "answered, 0 failed" in capsys.readouterr().out
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["infer-summary"])))
    tables = [a.data if isinstance(a.data, list) else json.loads(a.data) for a in artifacts]
    assert any(t[0]["run"] == "random" and t[0]["ok"] == len(all_qids(pdb)) for t in tables)
    assert main(["infer", "--model", "random", "--db", str(pdb)]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert len(predictions(pdb, "random")) == len(all_qids(pdb))


def test_one_infer_command_builds_its_adapter_once_and_fingerprints_it_once(prefect_server, pdb, tmp_path,
                                                                            monkeypatch, capsys):
    """The CLI's checks, the flow's plan and the run share one adapter (issue 23: it was built three
    or four times, each plan hashing the model's code again); a second process would count again."""
    from flows.cli import main

    log = tmp_path / "count.log"
    monkeypatch.setenv("COUNT_TEST_LOG", str(log))
    model = "tests.infer_adapters:CountingModel"
    assert main(["infer", "--model", model, "--db", str(pdb), "--limit-volumes", "2"]) == 0
    assert "answered, 0 failed" in capsys.readouterr().out
    assert log.read_text().split() == ["built", "fingerprinted"]
    log.write_text("")
    assert main(["infer", "--model", model, "--db", str(pdb)]) == 0          # resumes the third volume
    assert log.read_text().split() == ["built", "fingerprinted"]
    assert len(predictions(pdb, "counting-test")) == len(all_qids(pdb))


def test_a_plan_for_another_configuration_is_refused_not_run(pdb):
    echo = "tests.infer_adapters:EchoModel"
    plan = inference.plan_run(pdb, InferRequest(model=echo))
    with pytest.raises(InferenceError, match="another configuration"):
        run_inference(pdb, InferRequest(model=echo, options={"fail_qid": "x"}), plan=plan)
    assert rows(pdb, "SELECT count(*) FROM predictions") == [(0,)]


def test_adapters_are_shared_only_inside_a_scope_and_until_loaded():
    from tasks import answering

    request = InferRequest(model="tests.infer_adapters:EchoModel")
    assert answering.make_adapter(request) is not answering.make_adapter(request)
    with answering.one_adapter_per_request():
        first = answering.make_adapter(request)
        assert answering.make_adapter(request) is first
        assert answering.make_adapter(InferRequest(model=request.model, seed=1)) is not first
        answering.load_adapter(first, request)
        assert answering.make_adapter(request) is not first            # a loaded adapter is the run's own
    with answering.one_adapter_per_request():
        assert answering.make_adapter(request) is not first            # a new scope reads the files again


# -- baselines -------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["random", "blind"])
def test_baselines_never_answer_from_the_questions_own_volume(model, pdb):
    summary = run_inference(pdb, InferRequest(model=model))
    assert summary.ok == len(all_qids(pdb))
    refs = dict(rows(pdb, "SELECT qid, answer FROM questions"))
    cats = {}
    for qid, cat in rows(pdb, "SELECT qid, category FROM question_categories"):
        cats.setdefault(qid, set()).add(cat)
    for qid, (text, _, _, prov) in predictions(pdb, model).items():
        src = prov["meta"]["from_qid"]
        assert volume_of(src) != volume_of(qid) and text == refs[src]
        if model == "random" and prov["meta"]["pool"] == "category":
            assert cats[src] & cats[qid]


def _dq(qid: str, question: str, answer: str, *cats: str) -> DatasetQuestion:
    return DatasetQuestion(qid, volume_of(qid), question, answer, cats)


def test_blind_skips_an_identical_question_of_the_same_volume():
    data = [_dq("a::0", "Which side is the nodule on?", "left"),
            _dq("a::1", "Which side is the nodule on?", "right"),        # same volume: never borrowed
            _dq("b::0", "Which side is the mass on?", "right side"),
            _dq("c::0", "Is the heart enlarged?", "no")]
    for adapter in (Blind(), ):
        adapter.prepare(data)
        (ans,) = adapter.answer(None, [Question("a::0", "Which side is the nodule on?")])
        assert ans.text == "right side" and ans.meta["from_qid"] == "b::0"
    # the fallback measure follows the same rule
    fallback = Blind()
    fallback._method = lambda: "token-jaccard"
    fallback.prepare(data)
    assert fallback.answer(None, [Question("a::0", "Which side is the nodule on?")])[0].meta["from_qid"] == "b::0"
    assert fallback.generation()["similarity"] == "token-jaccard"


def test_random_draws_per_qid_from_the_category_in_other_volumes_and_falls_back():
    data = [_dq("a::0", "q", "A0", "Laterality"), _dq("a::1", "q", "A1", "Laterality"),
            _dq("b::0", "q", "B0", "Laterality"), _dq("c::0", "q", "C0", "Extent"), _dq("c::1", "q", "C1", "Depth")]
    r = RandomAnswer()
    r.prepare(data)
    both = r.answer(None, [Question("a::0", "q"), Question("c::1", "q")])
    assert both[0].text == "B0" and both[0].meta["pool"] == "category"       # the only other-volume Laterality
    assert both[1].meta["pool"] == "any-volume" and both[1].text in {"A0", "A1", "B0"}
    assert r.answer(None, [Question("c::1", "q")])[0].text == both[1].text   # per qid, not per batch
    lone = RandomAnswer()
    lone.prepare([_dq("a::0", "q", "A0", "Laterality")])
    assert lone.answer(None, [Question("a::0", "q")])[0].status == "error"


def test_blind_oracle_answers_the_commonest_answer_of_the_other_half_and_the_median_in_mm():
    volumes = [f"v{i}" for i in range(12)]
    halves = {v: _half(v) for v in volumes}
    assert set(halves.values()) == {0, 1}
    side = {v: ("left" if i % 3 else "right") for i, v in enumerate(volumes)}          # 2/3 left
    size = {v: 10 + i for i, v in enumerate(volumes)}
    data = ([_dq(f"{v}::0", "Which side?", side[v]) for v in volumes]
            + [_dq(f"{v}::1", "How big?", f"About {size[v]} mm.") for v in volumes]
            + [_dq("v0::2", "Asked once?", "yes")])
    oracle = BlindOracle()
    oracle.prepare(data)
    answers = {a.qid: a for a in oracle.answer(None, [Question(q.qid, q.question) for q in data])}
    for v in volumes:
        other = [u for u in volumes if halves[u] != halves[v]]
        lefts = sum(side[u] == "left" for u in other)
        want = "left" if lefts > len(other) - lefts else "right" if lefts < len(other) - lefts else "left"
        assert answers[f"{v}::0"].text == want and answers[f"{v}::0"].meta["pool"] == "other half"
        assert answers[f"{v}::1"].text == f"About {int(round(float(np.median([size[u] for u in other]))))} mm."
    assert answers["v0::2"].status == "error" and "no other volume" in answers["v0::2"].reason
    assert oracle.answer(None, [Question("nope::0", "q")])[0].status == "error"


def test_multi_volume_adapter_gets_groups_and_a_failing_group_is_retried_volume_by_volume(pdb, tmp_path,
                                                                                          monkeypatch):
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("ECHO_TEST_CALLS", str(calls))
    order = [v for (v,) in rows(pdb, "SELECT volume FROM volumes ORDER BY position")]
    model = "tests.infer_adapters:EchoManyModel"
    summary = run_inference(pdb, InferRequest(model=model, options={"per_call": 2}))
    assert calls.read_text().splitlines() == [",".join(order[:2]), order[2]]
    grouped = predictions(pdb, "echo-many-test")
    assert set(grouped) == all_qids(pdb) and summary.ok == len(grouped)
    for qid, (text, status, _, prov) in grouped.items():
        assert status == "ok" and prov["volume"] == volume_of(qid)
        assert prov["volumes"] == (2 if volume_of(qid) in order[:2] else 1)
    # a group whose call raises: each of its volumes asked alone; only the bad one fails
    calls.write_text("")
    run_inference(pdb, InferRequest(model=model, name="bad-group", options={"per_call": 3, "fail_many": order[0]}))
    assert calls.read_text().splitlines() == [",".join(order)]
    preds = predictions(pdb, "bad-group")
    assert all(status == "ok" and "retried_alone_after" in prov for _, status, _, prov in preds.values())
    assert {p[0] for q, p in preds.items() if volume_of(q) == order[1]} == \
        {p[0] for q, p in grouped.items() if volume_of(q) == order[1]}


def test_a_streaming_adapter_answers_the_run_in_one_stream_and_each_volume_is_stored_as_it_comes(
        pdb, tmp_path, monkeypatch):
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("ECHO_TEST_CALLS", str(calls))
    order = [v for (v,) in rows(pdb, "SELECT volume FROM volumes ORDER BY position")]
    model = "tests.infer_adapters:EchoStreamModel"
    summary = run_inference(pdb, InferRequest(model=model))
    assert calls.read_text().splitlines() == [",".join(order)]           # one stream, not groups
    streamed = predictions(pdb, "echo-stream-test")
    assert set(streamed) == all_qids(pdb) and summary.ok == len(streamed)
    assert all(status == "ok" and prov["streamed"] and prov["volume"] == volume_of(qid)
               for qid, (_, status, _, prov) in streamed.items())
    # the stream breaks after one volume: the others are asked alone, nothing is lost
    run_inference(pdb, InferRequest(model=model, name="broken", options={"break_after": 1}))
    broken = predictions(pdb, "broken")
    assert set(broken) == all_qids(pdb) and all(status == "ok" for _, status, _, _ in broken.values())
    alone = {volume_of(q) for q, (_, _, _, prov) in broken.items() if "retried_alone_after" in prov}
    assert alone == set(order[:2]) and {p[0] for p in broken.values()} == {p[0] for p in streamed.values()}
    # a stream that ends early: the volumes it left out are stored as errors that say so
    run_inference(pdb, InferRequest(model=model, name="short", options={"end_after": 2}))
    short = predictions(pdb, "short")
    assert set(short) == all_qids(pdb)
    assert {volume_of(q) for q, (_, status, reason, _) in short.items()
            if status == "error" and "ended without this volume" in reason} == {order[0]}
    # Ctrl-C after each volume: that volume is stored, and the same command goes on with the rest
    calls.write_text("")
    request = InferRequest(model=model, name="stopped", options={"stop_after": 1})
    for left in (3, 2):
        with pytest.raises(KeyboardInterrupt):
            run_inference(pdb, request)
        assert calls.read_text().splitlines()[-1] == ",".join(order[:left])
        assert {volume_of(q) for q in predictions(pdb, "stopped")} == set(order[left - 1:])
    run_inference(pdb, request)                      # one volume left: it comes back before any stop
    assert calls.read_text().splitlines()[-1] == order[0]
    assert set(predictions(pdb, "stopped")) == all_qids(pdb)


# -- a volume file that changes after its input was built ----------------------------------------

@pytest.fixture
def own_phantoms(phantom_root, tmp_path) -> tuple[Path, Path, list[Path]]:
    """A copy of the phantom set (its files are changed), imported and preprocessed for echo-test."""
    root = tmp_path / "ph"
    shutil.copytree(phantom_root, root)
    db = tmp_path / "wh.duckdb"
    import_upstream(root, db)
    dataset = rows(db, "SELECT dataset_id FROM datasets")[0][0]
    volumes = [v for (v,) in rows(db, "SELECT volume FROM volumes ORDER BY position")]
    inference.build_inputs(db, dataset, "lingshu", volumes)
    files = [next(root.glob(f"volumes/**/{v}")) for v in volumes]
    return root, db, files


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_volume_truncated_after_preprocess_is_never_answered_from_its_old_input(plugin, own_phantoms):
    _, db, files = own_phantoms
    os.truncate(files[0], 20000)
    run_inference(db, InferRequest(model=ECHO))
    preds = predictions(db, ECHO)
    for qid, (_, status, reason, _) in preds.items():
        if volume_of(qid) == files[0].name:
            assert status == "error" and files[0].name in reason and "truncated" in reason, reason
        else:
            assert status == "ok"
    (status,) = rows(db, "SELECT status FROM model_inputs WHERE volume = ? AND recipe = 'lingshu'", [files[0].name])[0]
    assert status == "failed"


def test_a_volume_replaced_after_preprocess_is_rebuilt_and_answered_from_its_new_content(plugin, own_phantoms):
    _, db, files = own_phantoms
    old = _sha(files[0])
    shutil.copyfile(files[1], files[0])           # another valid volume under the first one's name
    run_inference(db, InferRequest(model=ECHO))
    preds = predictions(db, ECHO)
    mine = [p for q, p in preds.items() if volume_of(q) == files[0].name]
    assert mine and all(s == "ok" and p["input_volume_sha256"] == _sha(files[1]) != old for _, s, _, p in mine)


def test_a_volume_only_touched_is_not_rebuilt_and_its_new_mtime_is_recorded(plugin, own_phantoms):
    _, db, files = own_phantoms
    query = "SELECT created_at, source_mtime_ns FROM model_inputs WHERE volume = ? AND recipe = 'lingshu'"
    built_at, _ = rows(db, query, [files[0].name])[0]
    os.utime(files[0], ns=(time.time_ns(), time.time_ns() + 10**9))
    assert inference.missing_inputs(db, inference.plan_run(db, InferRequest(model=ECHO))) == []
    assert rows(db, query, [files[0].name])[0] == (built_at, files[0].stat().st_mtime_ns)
    run_inference(db, InferRequest(model=ECHO))
    assert {s for _, s, _, _ in predictions(db, ECHO).values()} == {"ok"}


def test_a_volume_changed_during_the_run_fails_with_the_reason_and_retry_failed_answers_it(plugin, own_phantoms):
    _, db, files = own_phantoms

    def change_the_last(done: int, total: int) -> None:
        if done and files[-1].stat().st_size > 20000:       # after the first volume is stored
            os.truncate(files[-1], 20000)

    run_inference(db, InferRequest(model=ECHO), progress=change_the_last)
    preds = predictions(db, ECHO)
    last = {q for q in preds if volume_of(q) == files[-1].name}
    assert all(preds[q][1] == "error" and "changed after its input was built" in preds[q][2] for q in last)
    assert all(preds[q][1] == "ok" for q in set(preds) - last)
    shutil.copyfile(files[0], files[-1])
    again = run_inference(db, InferRequest(model=ECHO, retry_failed=True))
    assert again.pending == again.ok == len(last)


# -- Ctrl-C ---------------------------------------------------------------------------------------------

def _infer_cli(pdb, plugin, log_file=None, delay="0.5"):
    from prefect.settings import PREFECT_API_URL

    from tests.conftest import cli_env

    env = cli_env(ECHO_TEST_DELAY=delay, PYTHONPATH=os.pathsep.join([str(REPO), str(plugin)]),
                  PREFECT_API_URL=PREFECT_API_URL.value(), **({"ECHO_TEST_LOG": str(log_file)} if log_file else {}))
    return subprocess.Popen([sys.executable, "-m", "flows.cli", "infer", "--model", ECHO, "--batch-size", "2",
                             "--db", str(pdb)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for_answers(proc, log_file: Path, n: int = 1) -> None:
    deadline = time.monotonic() + 180
    while not (log_file.is_file() and len(log_file.read_text().split()) >= n):
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the run ended or stalled before Ctrl-C: {proc.communicate(timeout=10)}")
        time.sleep(0.05)


def test_ctrl_c_of_infer_stops_after_the_volume_in_hand_stores_it_and_exits_130(prefect_server, plugin, pdb,
                                                                                 tmp_path):
    inference.build_inputs(pdb, rows(pdb, "SELECT dataset_id FROM datasets")[0][0], "lingshu",
                           [v for (v,) in rows(pdb, "SELECT volume FROM volumes")])
    log_file = tmp_path / "answered.log"
    proc = _infer_cli(pdb, plugin, log_file)
    try:
        _wait_for_answers(proc, log_file)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    import re

    match = re.fullmatch(r"ctsvqa: interrupted: (\d+) answered, (\d+) left; run the same command to continue", last)
    assert match, err
    answered, left = int(match[1]), int(match[2])
    stored = set(predictions(pdb, ECHO))
    assert answered == len(stored) and left == len(all_qids(pdb)) - answered and left > 0
    # whole volumes: the one in hand was finished, none was started after Ctrl-C
    by_volume = {}
    for q in all_qids(pdb):
        by_volume.setdefault(volume_of(q), set()).add(q)
    assert all(qs <= stored or not (qs & stored) for qs in by_volume.values())
    assert not rows(pdb, "SELECT * FROM leases")
    again = run_inference(pdb, InferRequest(model=ECHO, batch_size=2))
    assert again.pending == again.ok == left


def test_a_second_ctrl_c_of_infer_exits_at_once_with_nothing_half_written(prefect_server, plugin, pdb, tmp_path):
    inference.build_inputs(pdb, rows(pdb, "SELECT dataset_id FROM datasets")[0][0], "lingshu",
                           [v for (v,) in rows(pdb, "SELECT volume FROM volumes")])
    log_file = tmp_path / "answered.log"
    proc = _infer_cli(pdb, plugin, log_file, delay="3")
    try:
        _wait_for_answers(proc, log_file)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        out, err = proc.communicate(timeout=60)
        seconds = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert seconds < 2.5, f"took {seconds:.1f} s: it waited for the question in hand (3 s)"
    assert err.strip().splitlines()[-1].startswith("ctsvqa: interrupted"), err
    stored = set(predictions(pdb, ECHO))
    again = run_inference(pdb, InferRequest(model=ECHO, batch_size=2))
    assert again.ok == again.pending == len(all_qids(pdb)) - len(stored)
