"""Malformed upstream files fail with an error naming the file and the line or item, and leave the
warehouse exactly as it was."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from adapters.datasets.upstream import UpstreamFormatError
from tasks.upstream_import import import_upstream
from tests.conftest import table_digest

PRED = "benchmarking/reports/predictions/{}_predictions_full.jsonl"
EVAL = "benchmarking/reports/llm_eval/{}"
DATASET = "dataset/ct_spatialvqa/spatial_qa_filtered_full.json"
CATS = "benchmarking/eval_scripts/spatial_categories/spatial_qa_filtered_full_with_categories.json"


def edit_jsonl_line(path: Path, lineno: int, fn) -> None:
    lines = path.read_text().splitlines()
    lines[lineno - 1] = fn(lines[lineno - 1])
    path.write_text("\n".join(lines) + "\n")


def edit_json(path: Path, fn) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data, indent=2))


def _bad_json_line(root):
    edit_jsonl_line(root / PRED.format("m3d"), 3, lambda s: s[:-5])


def _unknown_question(root):
    edit_jsonl_line(root / PRED.format("merlin"), 2, lambda s: s.replace("Which side is the nodule on?",
                                                                         "Which side is the tumour on?"))


def _duplicate_row(root):
    path = root / PRED.format("radfm")
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + [lines[3]]) + "\n")


def _row_without_image(root):
    edit_jsonl_line(root / PRED.format("m3d"), 4, lambda s: json.dumps(
        {k: v for k, v in json.loads(s).items() if k != "image_path"}))


def _row_without_question(root):
    edit_jsonl_line(root / PRED.format("m3d"), 5, lambda s: json.dumps(
        {k: v for k, v in json.loads(s).items() if k != "question"}))


def _judge_item_without_prediction(root):
    edit_json(root / EVAL.format("m3d_gpt_eval.json"), lambda d: d[5].update(prediction="Anterior"))


def _truncated_judge_file(root):
    path = root / EVAL.format("radfm_qwen_eval.json")
    path.write_text(path.read_text()[:700])


def _judge_file_wrong_shape(root):
    (root / EVAL.format("radfm_gpt_eval.json")).write_text(json.dumps({"results": []}))


def _more_items_than_predictions(root):
    edit_json(root / EVAL.format("merlin_qwen_eval.json"), lambda d: d.append(dict(d[0])))


def _judge_file_for_unknown_model(root):
    (root / EVAL.format("ctchat_gpt_eval.json")).write_text("[]")


def _unknown_category(root):
    edit_json(root / CATS, lambda d: d["valid_2_a_1.nii.gz"]["qa_pairs"][1].update(category=["Rotation"]))


def _categories_out_of_step(root):
    edit_json(root / CATS, lambda d: d["valid_1_a_1.nii.gz"]["qa_pairs"].reverse())


def _dataset_pair_without_answer(root):
    edit_json(root / DATASET, lambda d: d["valid_2_a_2.nii.gz"]["qa_pairs"][1].pop("answer"))


CASES = [
    (_bad_json_line, "m3d_predictions_full.jsonl: line 3: invalid JSON"),
    (_unknown_question, "merlin_predictions_full.jsonl: line 2: no dataset question matches"),
    (_duplicate_row, "radfm_predictions_full.jsonl: line 9: duplicate row"),
    (_row_without_image, "m3d_predictions_full.jsonl: line 4: row has neither 'case_id' nor 'image_path'"),
    (_row_without_question, "m3d_predictions_full.jsonl: line 5: field 'question' must be a string"),
    (_judge_item_without_prediction, "m3d_gpt_eval.json: item 5: no prediction of run 'm3d' matches"),
    (_truncated_judge_file, "radfm_qwen_eval.json: line "),
    (_judge_file_wrong_shape, "radfm_gpt_eval.json: expected a JSON list"),
    (_more_items_than_predictions, "merlin_qwen_eval.json: item 7: more judge items than predictions"),
    (_judge_file_for_unknown_model, "ctchat_gpt_eval.json: judge file for run 'ctchat' but no"),
    (_unknown_category, "volume 'valid_2_a_1.nii.gz' qa_pairs[1]: unknown category 'Rotation'"),
    (_categories_out_of_step, "volume 'valid_1_a_1.nii.gz' qa_pairs[0]: question/answer differ"),
    (_dataset_pair_without_answer, "volume 'valid_2_a_2.nii.gz' qa_pairs[1]: field 'answer' must be a string"),
]


@pytest.mark.parametrize("corrupt, message", CASES, ids=[c[0].__name__.strip("_") for c in CASES])
def test_bad_file_names_the_place_and_changes_nothing(mini_copy, db, corrupt, message):
    import_upstream(mini_copy, db)
    before = table_digest(db)
    corrupt(mini_copy)
    with pytest.raises(UpstreamFormatError) as err:
        import_upstream(mini_copy, db)
    assert message in str(err.value)
    assert table_digest(db) == before


def test_bad_file_into_a_new_warehouse_writes_nothing(mini_copy, db):
    _unknown_question(mini_copy)
    with pytest.raises(UpstreamFormatError):
        import_upstream(mini_copy, db)
    assert not db.exists()


def test_not_an_upstream_layout(tmp_path, db):
    with pytest.raises(UpstreamFormatError, match="spatial_qa_filtered_full.json is missing"):
        import_upstream(tmp_path, db)


def test_null_prediction_is_a_failed_prediction_not_an_error(mini_copy, db):
    """A row whose prediction is null is recorded as a failure with its reason; the jury ignores it."""
    edit_jsonl_line(mini_copy / PRED.format("radfm"), 8, lambda s: json.dumps({**json.loads(s), "prediction": None}))
    edit_json(mini_copy / EVAL.format("radfm_gpt_eval.json"), lambda d: d["items"][7].update(prediction=None))
    edit_json(mini_copy / EVAL.format("radfm_qwen_eval.json"), lambda d: d["jury"][7].update(prediction=None))
    edit_json(mini_copy / EVAL.format("radfm_gemini2.5_eval_full.json"), lambda d: d[7].update(prediction=None))
    import_upstream(mini_copy, db)
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT status, text, reason FROM predictions WHERE run_id LIKE '%radfm' "
                       "AND qid = 'valid_2_a_2.nii.gz::1'").fetchone() == (
        "error", None, "prediction missing or null in the source row")
    assert con.execute("SELECT n_predictions, n_failed_predictions, coverage FROM model_accuracy "
                       "WHERE model = 'radfm'").fetchone() == (7, 1, 7 / 8)
    # the judges' items for it (prediction None, as upstream's str(None)) still match by content
    assert con.execute("SELECT count(*) FROM judgments WHERE run_id LIKE '%radfm' "
                       "AND qid = 'valid_2_a_2.nii.gz::1'").fetchone() == (3,)
    assert con.execute("SELECT count(*) FROM jury_verdicts WHERE model = 'radfm'").fetchone() == (7,)
    con.close()
