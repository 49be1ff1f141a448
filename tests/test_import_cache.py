"""The import is cached on its files' content: unchanged files skip parse and load; any change re-runs."""

from __future__ import annotations

import json

import duckdb

from tasks import upstream_import as ui
from tests.conftest import table_digest


def counting_steps(calls: list[str]) -> ui.Steps:
    def count(name, fn):
        def call(*args):
            calls.append(name)
            return fn(*args)
        return call
    return ui.Steps(count("dataset", ui.parse_dataset), count("predictions", ui.parse_predictions),
                    count("judgments", ui.parse_judgments), count("load", ui.load))


def test_unchanged_files_skip_parse_and_load(mini_copy, db):
    calls: list[str] = []
    first = ui.import_upstream(mini_copy, db, steps=counting_steps(calls))
    assert not first.unchanged and "load" in calls and "dataset" in calls
    before = table_digest(db)
    calls.clear()
    again = ui.import_upstream(mini_copy, db, steps=counting_steps(calls))
    assert calls == [] and again.unchanged
    assert (again.n_questions, again.predictions, again.judgments) == (
        first.n_questions, first.predictions, first.judgments)
    assert table_digest(db) == before


def n_false(db) -> int:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute("SELECT count(*) FROM stg_judgments WHERE model = 'm3d' AND judge = 'gpt' "
                           "AND NOT verdict").fetchone()[0]


def test_a_changed_file_reruns_and_its_change_lands(mini_copy, db):
    ui.import_upstream(mini_copy, db)
    before = n_false(db)
    verdicts = mini_copy / "benchmarking/reports/llm_eval/m3d_gpt_eval.json"
    items = json.loads(verdicts.read_text())
    items[0]["is_correct"] = False
    verdicts.write_text(json.dumps(items))
    calls: list[str] = []
    summary = ui.import_upstream(mini_copy, db, steps=counting_steps(calls))
    assert not summary.unchanged and "load" in calls
    assert n_false(db) == before + 1


def test_another_dataset_id_or_a_new_warehouse_is_not_a_cache_hit(mini_copy, db, tmp_path):
    ui.import_upstream(mini_copy, db)
    assert not ui.import_upstream(mini_copy, db, dataset_id="other").unchanged
    assert not ui.import_upstream(mini_copy, tmp_path / "fresh.duckdb").unchanged
