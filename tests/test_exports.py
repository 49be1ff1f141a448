"""Upstream-format exports of the example, compared byte for byte with files written by hand."""

from __future__ import annotations

import json

import pytest

import warehouse
from tasks.exports import export_all, pick_dataset
from tasks.report import print_report

EXPECTED_MATRIX = """\
question_id,m3d,merlin,radfm
valid_1_a_1.nii.gz::0,1.00,0.50,1.00
valid_1_a_1.nii.gz::1,0.66,1.00,1.00
valid_1_a_1.nii.gz::2,0.33,1.00,0.00
valid_2_a_1.nii.gz::0,0.66,1.00,1.00
valid_2_a_1.nii.gz::1,0.00,0.00,0.66
valid_2_a_1.nii.gz::2,0.66,,0.33
valid_2_a_2.nii.gz::0,1.00,0.50,1.00
valid_2_a_2.nii.gz::1,0.00,1.00,0.66
"""

EXPECTED_CATEGORIES = """\
category,count,m3d,merlin,radfm
Adjacency & Containment,3,100.00,66.67,100.00
Anterior-Posterior (Depth) Relations,1,100.00,,0.00
Laterality & Bilateral Symmetry,3,33.33,66.67,66.67
Longitudinal (Vertical) Position,2,0.00,100.00,50.00
Medial-Lateral Orientation (Centricity),1,100.00,,0.00
Spatial Extent & Boundaries,2,50.00,50.00,100.00
"""


def test_upstream_format_exports(mini_db, tmp_path):
    with warehouse.reader(mini_db) as con:
        export_all(con, tmp_path)
    assert (tmp_path / "correctness_matrix_avg3.csv").read_text() == EXPECTED_MATRIX
    assert (tmp_path / "category_performance.csv").read_text() == EXPECTED_CATEGORIES
    jury = json.loads((tmp_path / "llm_jury_accuracy.json").read_text())
    assert [(r["model"], r["count"], r["llm_jury_accuracy"]) for r in jury] == [
        ("m3d", 8, 0.625), ("merlin", 7, 4 / 7), ("radfm", 8, 0.75)]
    assert (tmp_path / "parquet" / "jury_verdicts.parquet").is_file()


def test_matrix_rows_sort_as_python_strings(mini_copy, db, tmp_path):
    """Upstream sorts question ids as plain strings: '::10' comes before '::2'."""
    from tests.test_bad_input import DATASET, CATS, edit_json
    from tasks.upstream_import import import_upstream

    def add_pairs(d):
        d["valid_1_a_1.nii.gz"]["qa_pairs"] += [
            {"question": f"Extra question {i}?", "answer": "Yes.", "category": []} for i in range(3, 11)]
    edit_json(mini_copy / DATASET, add_pairs)
    edit_json(mini_copy / CATS, add_pairs)
    path = mini_copy / "benchmarking/reports/predictions/m3d_predictions_full.jsonl"
    path.write_text(path.read_text() + "".join(
        json.dumps({"image_path": "x/valid_1_a_1.npy", "question": f"Extra question {i}?", "answer": "Yes.",
                    "prediction": "Yes"}) + "\n" for i in (10, 3)))
    import_upstream(mini_copy, db)
    with warehouse.reader(db) as con:
        export_all(con, tmp_path)
    ids = [line.split(",")[0] for line in (tmp_path / "correctness_matrix_avg3.csv").read_text().splitlines()[1:]]
    assert ids[:5] == ["valid_1_a_1.nii.gz::0", "valid_1_a_1.nii.gz::1", "valid_1_a_1.nii.gz::10",
                       "valid_1_a_1.nii.gz::2", "valid_1_a_1.nii.gz::3"]


def test_dataset_choice_is_explicit_when_several(mini_copy, db):
    from tasks.upstream_import import import_upstream

    import_upstream(mini_copy, db)
    import_upstream(mini_copy, db, dataset_id="second")
    with warehouse.reader(db) as con:
        with pytest.raises(ValueError, match="choose one with --dataset"):
            pick_dataset(con, None)
        assert pick_dataset(con, "second") == "second"


def test_report_prints_every_table(mini_db):
    from rich.console import Console

    console = Console(record=True, width=140)
    with warehouse.reader(mini_db) as con:
        print_report(con, console=console)
    text = console.export_text()
    for needle in ("Jury accuracy", "Per judge", "By category", "Judge agreement", "62.5", "57.1", "7/8"):
        assert needle in text


def test_parquet_export_honours_dataset_and_panel(mini_db, tmp_path):
    import duckdb

    from tests.test_views import M3D, A0, add_live_judge

    add_live_judge(mini_db, "exact", "offline", M3D, {A0: True})
    with warehouse.reader(mini_db) as con:
        export_all(con, tmp_path, panel="upstream")
    jury = json.loads((tmp_path / "llm_jury_accuracy.json").read_text())
    c = duckdb.connect()
    for view in ("jury_verdicts", "model_accuracy", "category_accuracy", "correctness_matrix"):
        path = tmp_path / "parquet" / f"{view}.parquet"
        assert c.execute(f"SELECT DISTINCT panel FROM '{path}'").fetchall() == [("upstream",)], view
    assert c.execute(f"SELECT count(*) FROM '{tmp_path / 'parquet' / 'model_accuracy.parquet'}'").fetchall() == [
        (len(jury),)]


def test_report_warns_about_runs_still_being_judged(mini_db):
    from rich.console import Console

    from tests.test_views import M3D, A0, add_live_judge

    add_live_judge(mini_db, "exact", "offline", M3D, {A0: True})
    console = Console(record=True, width=200)
    with warehouse.reader(mini_db) as con:
        print_report(con, console=console)
    lines = [line for line in console.export_text().splitlines() if line.startswith("warning:")]
    assert lines == ["warning: m3d (panel offline) is still being judged: 7 judgments pending from exact; "
                     "its accuracy is not final"]


def test_text_metrics_summary_in_the_upstream_layout(mini_db, tmp_path):
    """Beside the three jury files: upstream's text_metrics_summary.csv (columns sorted by name) and
    .json (its key order), one row per scored run, the numbers of the text_metrics view."""
    from tasks import scoring

    scoring.score_runs(mini_db, None)
    with warehouse.reader(mini_db) as con:
        export_all(con, tmp_path)
        view = {m: (n, b, r1, met, sb) for m, n, b, r1, met, sb in con.execute(
            "SELECT model, count, bleu, rouge1_f, meteor, sbert_cosine FROM text_metrics").fetchall()}
    lines = (tmp_path / "text_metrics_summary.csv").read_text().splitlines()
    assert lines[0] == "bleu,count,meteor,model,rouge1_f,rouge2_f,rougeL_f,sbert_cosine"
    rows = [dict(zip(lines[0].split(","), line.split(","))) for line in lines[1:]]
    assert [r["model"] for r in rows] == sorted(view) == ["m3d", "merlin", "radfm"]
    for r in rows:
        n, bleu, r1, meteor, sbert = view[r["model"]]
        # (DuckDB's parallel avg may differ in the last bit between two queries of the same view)
        assert (int(r["count"]), float(r["bleu"]), float(r["rouge1_f"]), float(r["meteor"]),
                float(r["sbert_cosine"])) == pytest.approx((n, bleu, r1, meteor, sbert), rel=1e-12)
    js = json.loads((tmp_path / "text_metrics_summary.json").read_text())
    assert [list(r) for r in js] == [["model", "count", "sbert_cosine", "bleu", "rouge1_f", "rouge2_f", "rougeL_f",
                                      "meteor"]] * 3
    assert {r["model"]: r["bleu"] for r in js} == pytest.approx({m: v[1] for m, v in view.items()}, rel=1e-12)


def test_your_runs_are_ranked_among_the_published_ones(mini_db):
    """A run of yours, judged by the offline panel, among the imported runs (their published verdicts)
    and the eight published jury accuracies, each marked with what it is and its jury."""
    from adapters.judges.spec import load_panel
    from tasks import judging, leaderboard
    from tasks.inference import InferRequest, run_inference

    run_inference(mini_db, InferRequest(model="blind"))
    panel = load_panel("offline")
    judging.register_panel(mini_db, panel)
    for spec in panel.judges:
        judging.judge_runs(mini_db, spec, ["blind"])
    with warehouse.reader(mini_db) as con:
        rows = leaderboard.leaderboard(con, "ct-spatialvqa")
        acc = con.execute("SELECT majority_accuracy FROM model_accuracy WHERE model = 'blind' AND panel = 'offline'"
                          ).fetchone()[0]
    kinds = [(r.model, r.kind) for r in rows]
    assert ("blind", "yours") in kinds and ("radfm", "published predictions") in kinds
    assert sum(k == "published figure" for _, k in kinds) == 8 and ("CT-CHAT", "published figure") in kinds
    assert next(r for r in rows if r.model == "blind").accuracy == acc
    assert next(r for r in rows if r.model == "blind").jury == "panel offline"
    assert [r.accuracy for r in rows] == sorted((r.accuracy for r in rows), reverse=True)
    from rich.console import Console

    console = Console(record=True, width=200)
    with warehouse.reader(mini_db) as con:
        print_report(con, console=console)
        assert leaderboard.leaderboard(con, "some-other-dataset") == []
    text = console.export_text()
    assert "Your runs among the published ones" in text and "Lingshu-7B (medevalkit)" in text
