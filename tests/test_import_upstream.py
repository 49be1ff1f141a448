"""Upstream import on the example layout: every format quirk lands by qid, and re-imports are
idempotent."""

from __future__ import annotations

import json

import duckdb
import pytest

from adapters.datasets.upstream import image_id
from tasks.upstream_import import import_upstream
from tests.conftest import MINI, table_digest

A0, A1, A2 = (f"valid_1_a_1.nii.gz::{i}" for i in range(3))
B0, B1, B2 = (f"valid_2_a_1.nii.gz::{i}" for i in range(3))
C0, C1 = (f"valid_2_a_2.nii.gz::{i}" for i in range(2))


def q(db, sql, *params):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, list(params)).fetchall()
    finally:
        con.close()


@pytest.mark.parametrize("raw, expected", [
    ("/P/preprocess/m3d_npy/valid_1/valid_1_a/valid_1_a_1.npy", "valid_1_a_1.nii.gz"),
    ("x/valid_1_a_1.npz", "valid_1_a_1.nii.gz"),
    ("valid_1_a_1.nii.gz", "valid_1_a_1.nii.gz"),
    ("/data/valid_fixed/valid_1/valid_1_a/valid_1_a_1", "valid_1_a_1.nii.gz"),
    ("C:\\data\\valid_1_a_1.npy", "valid_1_a_1.nii.gz"),
])
def test_image_id(raw, expected):
    assert image_id(raw) == expected


def test_questions_and_categories(mini_db):
    assert q(mini_db, "SELECT count(*) FROM questions") == [(8,)]
    assert q(mini_db, "SELECT volume FROM volumes ORDER BY position") == [
        ("valid_1_a_1.nii.gz",), ("valid_2_a_1.nii.gz",), ("valid_2_a_2.nii.gz",)]
    assert q(mini_db, "SELECT question, answer FROM questions WHERE qid = ?", C1) == [
        ("Which lobe contains the nodule?", "The left lower lobe.")]
    # the raw label 'Medial-Lateral Orientation' is mapped; B1 has no category at all
    assert q(mini_db, "SELECT category FROM question_categories WHERE qid = ? ORDER BY 1", B2) == [
        ("Anterior-Posterior (Depth) Relations",), ("Medial-Lateral Orientation (Centricity)",)]
    assert q(mini_db, "SELECT count(*) FROM question_categories WHERE qid = ?", B1) == [(0,)]


def test_duplicate_question_answer_pairs_across_volumes_map_by_image(mini_db):
    """'Is there pleural effusion?' / 'No pleural effusion.' exists in three volumes: each merlin row
    (shuffled order) lands on its own volume's question, by case_id."""
    got = dict(q(mini_db, "SELECT qid, text FROM predictions WHERE run_id LIKE '%/merlin' AND qid IN (?, ?, ?)",
                 A1, B0, C0))
    assert got == {A1: "No.</s>", B0: "No.</s>", C0: "No.</s>"}
    assert q(mini_db, "SELECT qid FROM predictions WHERE run_id LIKE '%/merlin' AND text = 'Left lower lobe.</s>'"
             ) == [(C1,)]


def test_prediction_text_kept_verbatim_with_provenance(mini_db):
    assert q(mini_db, "SELECT text FROM predictions WHERE run_id LIKE '%/merlin' AND qid = ?", A0) == [
        ("Left.###</s>",)]
    assert q(mini_db, "SELECT text, status FROM predictions WHERE run_id LIKE '%/m3d' AND qid = ?", B1) == [
        ("", "ok")]                                            # an empty answer is still an answer
    (prov,), = q(mini_db, "SELECT provenance FROM predictions WHERE run_id LIKE '%/merlin' AND qid = ?", C1)
    assert json.loads(prov) == {"file": "benchmarking/reports/predictions/merlin_predictions_full.jsonl", "line": 1}


def test_missing_prediction_row_means_no_prediction(mini_db):
    assert q(mini_db, "SELECT count(*) FROM predictions WHERE run_id LIKE '%/merlin' AND qid = ?", B2) == [(0,)]


def test_judge_items_matched_by_content_not_position(mini_db):
    """m3d's qwen file lists items in a shuffled order; its verdicts must land on the right qids."""
    got = dict(q(mini_db, "SELECT qid, verdict FROM stg_judgments WHERE model = 'm3d' AND judge = 'qwen'"))
    assert got == {A0: True, A1: True, A2: False, B0: True, B1: False, B2: False, C0: True, C1: False}


def test_repaired_null_string_and_dropped_gemini_items(mini_db):
    got = {r[0]: r[1:] for r in q(mini_db, "SELECT s.qid, s.verdict, s.status, s.reason, j.raw_response FROM stg_judgments s "
                                           "JOIN judgments j USING (run_id, qid, judge_id) "
                                           "WHERE s.model = 'm3d' AND s.judge = 'gemini2.5'")}
    assert got[A0][:2] == (True, "ok")
    for qid in (A1, B0):                                      # fix_gemini_parse_errors.py copies
        verdict, status, reason, raw = got[qid]
        assert (verdict, status) == (None, "unparsed")
        assert "copied" in reason
        assert json.loads(raw)["is_correct"] is True and json.loads(raw)["reasoning"].startswith("PARSE_ERROR")
    assert got[A2][:2] == (None, "no_verdict") and "null" in got[A2][2] and "REQUEST_ERROR" in got[A2][2]
    assert got[B1][:2] == (None, "no_verdict") and "not a JSON boolean" in got[B1][2]
    assert C1 not in got                                      # dropped: no row, never a guessed one


def test_alternative_eval_shapes(mini_db):
    """radfm's gpt file is {"items": [...]}, its qwen file {"jury": [...]} with jury_is_correct."""
    assert q(mini_db, "SELECT judge, count(*), count(verdict) FROM stg_judgments WHERE model = 'radfm' "
                      "GROUP BY judge ORDER BY judge") == [("gemini2.5", 8, 7), ("gpt", 8, 8), ("qwen", 8, 8)]
    assert q(mini_db, "SELECT verdict FROM stg_judgments WHERE model = 'radfm' AND judge = 'qwen' AND qid = ?",
             B2) == [(True,)]


def test_reimport_is_idempotent(mini_db):
    before = table_digest(mini_db)
    assert import_upstream(MINI, mini_db).unchanged          # same files: skipped, nothing rewritten
    after = table_digest(mini_db)
    assert before == after
    assert q(mini_db, "SELECT count(*) FROM judgments") == [(8 + 8 + 7 + 7 + 7 + 8 + 8 + 8,)]


def test_reimport_with_changed_prediction_drops_its_stale_judgments(mini_copy, db):
    import_upstream(mini_copy, db)
    # a user's own judge has judged two m3d predictions
    import warehouse
    from warehouse import loaders
    with warehouse.writer(db) as con, warehouse.transaction(con):
        loaders.upsert_judge(con, judge_id="local/exact", name="exact", provider="offline", model="exact",
                             prompt_version="v1")
        loaders.replace_judgments_from_source(
            con, run_id="ct-spatialvqa/upstream/m3d", source="test",
            rows={"judge_id": ["local/exact"] * 2, "qid": [A0, A2], "verdict": [True, False],
                  "status": ["ok", "ok"], "reason": [None, None], "raw_response": ["", ""]})
    # the m3d predictions file changes the answer to A2 (and its judge files follow)
    for rel in ("benchmarking/reports/predictions/m3d_predictions_full.jsonl",
                "benchmarking/reports/llm_eval/m3d_gpt_eval.json",
                "benchmarking/reports/llm_eval/m3d_qwen_eval.json",
                "benchmarking/reports/llm_eval/m3d_gemini2.5_eval_full.json"):
        path = mini_copy / rel
        path.write_text(path.read_text().replace("Right upper lobe", "Right upper lobe, apical segment"))
    import_upstream(mini_copy, db)
    assert q(db, "SELECT qid FROM judgments WHERE judge_id = 'local/exact'") == [(A0,)]
    assert q(db, "SELECT text FROM predictions WHERE run_id LIKE '%/m3d' AND qid = ?", A2) == [
        ("Right upper lobe, apical segment",)]
    assert q(db, "SELECT count(*) FROM judgments WHERE run_id LIKE '%/m3d' AND source = 'upstream-import'") == [
        (8 + 8 + 7,)]


def test_dataset_name_option_and_manifest(mini_copy, db):
    (mini_copy / "ctsvqa_dataset.json").write_text(json.dumps({"name": "phantom-s7", "synthetic": True}))
    import_upstream(mini_copy, db)
    assert q(db, "SELECT dataset_id, synthetic FROM datasets") == [("phantom-s7", True)]
    import_upstream(mini_copy, db, dataset_id="other")
    assert q(db, "SELECT dataset_id FROM datasets ORDER BY 1") == [("other",), ("phantom-s7",)]
    assert q(db, "SELECT count(*) FROM model_accuracy") == [(6,)]
