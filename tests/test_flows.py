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
    names = asyncio.run(task_names())
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
