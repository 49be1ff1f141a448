"""The public views keep their declared contracts (sql/schema.yml): every view of the main schema is
declared with exactly its columns, and every key, not-null, accepted-values and range test finds no
breaking row — on the hand-made example, on a phantom warehouse run end to end (models, the offline
jury, text metrics, statistics), and on the published files when they are here."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

import warehouse
from warehouse import contracts


def holds(db: Path) -> tuple[list[str], list[str]]:
    with warehouse.reader(db) as con:
        return contracts.column_mismatches(con), contracts.violations(con)


def nonempty_views(db: Path) -> set[str]:
    with warehouse.reader(db) as con:
        return {v for v in contracts.declared() if con.execute(f'SELECT count(*) FROM "{v}"').fetchone()[0]}


def test_every_view_of_the_example_keeps_its_contract(mini_db):
    from tasks import statistics

    statistics.refresh_statistics(mini_db, n_resamples=50)
    assert holds(mini_db) == ([], [])
    assert {"model_accuracy", "judge_agreement", "fleiss_kappa", "model_comparisons", "accuracy_ci"} <= \
        nonempty_views(mini_db)


def test_every_view_of_a_phantom_run_end_to_end_keeps_its_contract(tmp_path):
    from adapters.datasets.phantom import generate
    from tasks import judging, scoring, statistics
    from tasks.inference import InferRequest, run_inference
    from tasks.upstream_import import import_upstream

    generate(tmp_path / "ph", 3, 5, "small", 2)
    db = tmp_path / "wh.duckdb"
    import_upstream(tmp_path / "ph", db)
    for model in ("blind", "random", "blind-oracle"):
        run_inference(db, InferRequest(model=model))
    panel = judging.load_panel("offline")
    judging.register_panel(db, panel)
    for spec in panel.judges:
        judging.judge_runs(db, spec, None, False)
    scoring.score_runs(db)
    statistics.refresh_statistics(db, n_resamples=50)
    assert holds(db) == ([], [])
    assert {"text_metrics", "shared_verdicts", "jury_verdicts", "template_accuracy"} <= nonempty_views(db)


@pytest.mark.upstream
def test_every_view_of_the_published_files_keeps_its_contract(upstream_root, db):
    from tasks import statistics
    from tasks.upstream_import import import_upstream

    import_upstream(upstream_root, db)
    statistics.refresh_statistics(db, n_resamples=20)
    assert holds(db) == ([], [])


def test_the_generic_check_finds_each_kind_of_breach(tmp_path):
    schema = tmp_path / "schema.yml"
    schema.write_text("""
models:
  - name: scores
    tests: [{unique: [run_id, qid]}]
    columns:
      - {name: run_id, tests: [not_null]}
      - {name: qid}
      - {name: status, tests: [{accepted_values: {values: [ok, error]}}]}
      - {name: accuracy, tests: [{range: {min: 0, max: 1}}]}
  - name: gone
    columns: [{name: x}]
""")
    con = duckdb.connect()
    con.execute("CREATE TABLE t AS SELECT * FROM (VALUES ('r', 'a', 'ok', 0.5), ('r', 'a', 'ok', 0.2), "
                "(NULL, 'b', 'weird', 1.5), ('r', 'c', NULL, NULL)) v(run_id, qid, status, accuracy)")
    con.execute("CREATE VIEW scores AS SELECT * FROM t")
    con.execute("CREATE VIEW extra AS SELECT 1 AS y")
    found = contracts.violations(con, schema)
    assert [line.split(":")[:2] for line in found] == [
        ["scores", " unique(run_id, qid)"], ["scores", " not_null(run_id)"],
        ["scores", " accepted_values(status)"], ["scores", " range(accuracy)"]]
    assert contracts.column_mismatches(con, schema) == [
        "view extra is not declared in schema.yml", "view gone is declared but not in the warehouse"]
    con.execute("CREATE OR REPLACE VIEW scores AS SELECT run_id, status, qid, accuracy FROM t")
    assert "view scores: columns" in contracts.column_mismatches(con, schema)[-1]
