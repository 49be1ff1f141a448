"""The import flow and the CLI against a real (temporary) Prefect API server."""

from __future__ import annotations

import duckdb
import pytest

from flows.cli import main
from tests.conftest import MINI, table_digest
from tests.test_bad_input import _judge_item_without_prediction

pytestmark = pytest.mark.prefect


def test_cli_import_report_export_snapshot(prefect_server, db, tmp_path, capsys):
    assert main(["import-upstream", str(MINI), "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "imported dataset ct-spatialvqa: 3 volumes, 8 questions, 12 category labels" in out
    assert "merlin: 7 predictions; judges: gpt (7), qwen (7)" in out

    assert main(["report", "--db", str(db)]) == 0
    assert "62.5" in capsys.readouterr().out

    assert main(["export", "--db", str(db), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "correctness_matrix_avg3.csv").is_file()

    snap = tmp_path / "snap.duckdb"
    assert main(["db", "snapshot", str(snap), "--db", str(db), "--parquet", str(tmp_path / "pq")]) == 0
    with duckdb.connect(str(snap), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM model_accuracy").fetchone() == (3,)
    assert (tmp_path / "pq" / "judge_agreement.parquet").is_file()


def test_flow_records_runs_and_tasks_in_prefect(prefect_server, db):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.import_upstream import import_upstream

    state = import_upstream(path=str(MINI), db=str(db), return_state=True)
    assert state.is_completed()
    assert state.result()["n_questions"] == 8

    async def task_names():
        async with get_client() as client:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
            return sorted(r.name.rsplit("-", 1)[0] if r.name.startswith(("parse-dataset", "load")) else r.name
                          for r in runs)

    import asyncio
    import time

    # Task runs reach the API through its event pipeline: wait for them to land.
    deadline, names = time.monotonic() + 30, []
    while time.monotonic() < deadline:
        names = asyncio.run(task_names())
        if "load-warehouse" in names and "parse-judgments-m3d_gemini2.5_eval_full.json" in names:
            break
        time.sleep(0.5)
    assert "load-warehouse" in names and "parse-predictions-merlin" in names
    assert "parse-judgments-m3d_gemini2.5_eval_full.json" in names


def test_cli_bad_input_exits_2_names_the_item_and_keeps_the_warehouse(prefect_server, mini_copy, db, capsys):
    assert main(["import-upstream", str(mini_copy), "--db", str(db)]) == 0
    before = table_digest(db)
    _judge_item_without_prediction(mini_copy)
    assert main(["import-upstream", str(mini_copy), "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert "m3d_gpt_eval.json: item 5: no prediction of run 'm3d' matches" in err
    assert table_digest(db) == before


def test_cli_report_on_missing_warehouse(tmp_path, capsys):
    assert main(["report", "--db", str(tmp_path / "none.duckdb")]) == 2
    assert "no warehouse at" in capsys.readouterr().err


def _accuracy_artifact_of_run_named(name: str) -> dict[str, set]:
    """The `model-accuracy` table artifact of the latest flow run called `name`, as column -> values."""
    import asyncio
    import json

    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    async def fetch():
        async with get_client() as client:
            runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])),
                                               sort=FlowRunSort.START_TIME_DESC, limit=1)
            assert runs, f"no flow run named {name}"
            return await client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["model-accuracy"]), flow_run_id=ArtifactFilterFlowRunId(any_=[runs[0].id])))

    artifacts = asyncio.run(fetch())
    assert artifacts and artifacts[0].type == "table"
    rows = json.loads(artifacts[0].data) if isinstance(artifacts[0].data, str) else artifacts[0].data
    return {col: {r[col] for r in rows} for col in rows[0]}


def test_import_run_is_named_after_its_dataset_and_publishes_accuracy(prefect_server, db):
    from flows.import_upstream import import_upstream

    import_upstream(path=str(MINI), db=str(db))
    table = _accuracy_artifact_of_run_named("import-upstream/upstream-mini")
    assert table["model"] == {"m3d", "merlin", "radfm"} and table["panel"] == {"upstream"}


def test_cli_judge_offline_twice_adds_nothing(prefect_server, mini_db, tmp_path, capsys):
    assert main(["judge", "--judges", "offline", "--run", "m3d", "--db", str(mini_db)]) == 0
    out = capsys.readouterr().out
    assert "spatial-rules: 8 pending" in out and "sbert: 8 pending" in out and "exact: 8 pending" in out
    with duckdb.connect(str(mini_db), read_only=True) as con:
        n = con.execute("SELECT count(*) FROM judgments WHERE source <> 'upstream-import'").fetchone()[0]
        assert n == 24
        panels = con.execute("SELECT panel, jury_size FROM model_accuracy WHERE model = 'm3d' ORDER BY panel"
                             ).fetchall()
        assert panels == [("offline", 3), ("upstream", 3)]
        pairs = {(a, b) for a, b in con.execute("SELECT judge_a, judge_b FROM judge_agreement WHERE model = 'm3d'"
                                                ).fetchall()}
        assert ("exact", "gpt") in pairs and ("gpt", "spatial-rules") in pairs
    assert _accuracy_artifact_of_run_named("judge/offline")["panel"] == {"offline"}
    before = table_digest(mini_db)
    assert main(["judge", "--judges", "offline", "--run", "m3d", "--db", str(mini_db)]) == 0
    assert "spatial-rules: 0 pending" in capsys.readouterr().out
    after = table_digest(mini_db)
    assert {t for t in before if before[t] != after[t]} <= {"judges"}      # only settings refreshed

    assert main(["export", "--db", str(mini_db), "--out", str(tmp_path / "x")]) == 2
    assert "choose one with --panel" in capsys.readouterr().err
    assert main(["export", "--db", str(mini_db), "--out", str(tmp_path / "x"), "--panel", "offline"]) == 0


def test_cli_judge_paper_preset_against_fake_providers(prefect_server, mini_db, monkeypatch, capsys):
    from tests.fake_providers import FakeProviders

    fake = FakeProviders().start()
    try:
        monkeypatch.setenv("OPENAI_BASE_URL", fake.url + "/v1")
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", fake.url)
        monkeypatch.setenv("DASHSCOPE_COMPATIBLE_BASE_URL", fake.url + "/compatible-mode/v1")
        for k, v in {"OPENAI_API_KEY": "k1-secret", "GEMINI_API_KEY": "k2-secret", "DASHSCOPE_API_KEY": "k3-secret"
                     }.items():
            monkeypatch.setenv(k, v)
        assert main(["judge", "--judges", "paper", "--run", "m3d", "--db", str(mini_db), "--dry-run"]) == 0
        assert "forecast — nothing was sent" in capsys.readouterr().out
        assert fake.requests() == []
        assert main(["judge", "--judges", "paper", "--run", "m3d", "--db", str(mini_db)]) == 0
        assert {r.api for r in fake.requests()} == {"openai", "gemini", "dashscope-compatible"}
        assert len(fake.requests()) == 6                    # 2 calls of the 5-item prompt per judge
        with duckdb.connect(str(mini_db), read_only=True) as con:
            costs = con.execute("SELECT judge, n_calls, tokens_in > 0, cost_usd > 0 FROM judge_costs "
                                "WHERE n_calls > 0 ORDER BY judge").fetchall()
            assert costs == [("gemini-2.5-flash", 2, True, True), ("gpt-4o-mini", 2, True, True),
                             ("qwen-plus", 2, True, True)]
            assert con.execute("SELECT jury_size FROM model_accuracy WHERE model = 'm3d' AND panel = 'paper'"
                               ).fetchone() == (3,)
    finally:
        fake.stop()


def test_api_key_from_a_prefect_secret_block(prefect_server, monkeypatch):
    from prefect.blocks.system import Secret

    from adapters.judges.keys import api_key
    from adapters.judges.spec import JudgeSpec

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    Secret(value="sk-from-block-1234").save("judge-openai-key", overwrite=True)
    spec = JudgeSpec("gpt", "openai", "gpt-4o-mini", prompt="radiologist-yesno-v1", api_key_secret="judge-openai-key")
    assert api_key(spec) == "sk-from-block-1234"
    assert "sk-from-block" not in str(spec.public_settings())


def test_deployments_yaml_deploys_to_a_real_server(prefect_server, tmp_path):
    """`prefect deploy --prefect-file deployments.yaml --all` registers every deployment."""
    import os
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    from tests.conftest import REPO

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    prefect = [sys.executable, "-m", "prefect", "--no-prompt"]
    subprocess.run(prefect + ["work-pool", "create", "ctsvqa-cpu", "--type", "process", "--overwrite"],
                   env=env, cwd=REPO, check=True, capture_output=True, timeout=120)
    done = subprocess.run(prefect + ["deploy", "--prefect-file", "deployments.yaml", "--all"],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    import asyncio

    from prefect import get_client

    async def deployments():
        async with get_client() as client:
            return {(d.name, tuple(s.schedule.cron for s in d.schedules)) for d in await client.read_deployments()}

    assert asyncio.run(deployments()) >= {("import-upstream-nightly", ("0 3 * * *",)),
                                          ("judge-offline-nightly", ("30 3 * * *",)), ("judge-paper", ()),
                                          ("preprocess", ())}


def test_cli_judge_without_keys_names_every_missing_key_and_stores_nothing(prefect_server, mini_db, monkeypatch,
                                                                          capsys):
    for name in ("OPENAI_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY", "DASHSCOPE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    before = table_digest(mini_db)
    assert main(["judge", "--judges", "paper", "--db", str(mini_db)]) == 2
    err = capsys.readouterr().err
    assert "OPENAI_API_KEY" in err and "GEMINI_API_KEY" in err and "DASHSCOPE_API_KEY" in err
    assert table_digest(mini_db) == before


def test_every_flow_refreshes_the_snapshot(prefect_server, db):
    """An analyst's snapshot (beside the warehouse) follows each flow's writes without anyone asking."""
    from flows.import_upstream import import_upstream
    from flows.judge import judge
    from flows.score import score
    from warehouse.snapshot import default_snapshot

    snap = default_snapshot(str(db))
    assert snap == db.with_name("wh-snapshot.duckdb") and not snap.exists()

    def count(sql):
        with duckdb.connect(str(snap), read_only=True) as con:
            return con.execute(sql).fetchone()[0]

    import_upstream(path=str(MINI), db=str(db))
    assert count("SELECT count(*) FROM questions") == 8
    before = count("SELECT count(*) FROM judgments")

    judge(judges="offline", db=str(db))
    assert count("SELECT count(*) FROM judgments") > before      # the offline panel's verdicts arrived
    assert count("SELECT count(*) FROM text_metrics") == 0

    score(db=str(db))
    assert count("SELECT count(*) FROM text_metrics") == 3       # one row per imported run


def test_a_wrong_parameter_type_is_refused_before_the_flow_runs(prefect_server, mini_db):
    """Prefect's parameter validation is on (it was off everywhere): what the UI's custom-run form sends
    is checked against the flow's signature."""
    from prefect.exceptions import ParameterTypeError

    from flows.infer import infer
    from flows.score import score

    with pytest.raises(ParameterTypeError, match="batch_size"):
        infer(model="blind", batch_size="abc", db=str(mini_db))
    with pytest.raises(ParameterTypeError, match="runs"):
        score(runs=5, db=str(mini_db))
    con = duckdb.connect(str(mini_db), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM runs WHERE name = 'blind'").fetchone() == (0,)
    finally:
        con.close()


def test_bad_input_is_not_retried(prefect_server, mini_db):
    """`score --run nosuch` used to be retried once, after a 5 s wait, to fail the same way."""
    import asyncio
    import time

    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.score import score

    state = score(runs=["nosuch"], db=str(mini_db), return_state=True)
    assert state.is_failed() and "nosuch" in state.message

    async def run_counts():
        async with get_client() as client:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
            return {r.name.rsplit("-", 1)[0]: (r.run_count, r.state_type.value) for r in runs}

    deadline, counts = time.monotonic() + 30, {}
    while time.monotonic() < deadline and counts.get("score-text", (0, ""))[1] != "FAILED":
        counts = asyncio.run(run_counts())
        time.sleep(0.5)
    assert counts["score-text"] == (1, "FAILED")
