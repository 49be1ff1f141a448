"""The metric views on the example layout, against values computed by hand.

The example (examples/upstream-mini, described in its README) has 8 questions:
A0..A2 = valid_1_a_1::0..2, B0..B2 = valid_2_a_1::0..2, C0..C1 = valid_2_a_2::0..1.
Verdicts (T/F, '-' = no verdict):
  m3d    gpt  T T T T F T T F   qwen T T F T F F T F   gemini T u - u s T T x
         (u = repaired PARSE_ERROR -> unparsed, - = null, s = string "false", x = item dropped)
  merlin gpt  T T T T F . T T   qwen F T T T F . F T   (no gemini file; B2 row missing)
  radfm  gpt  T T F T T F T T   qwen T T F T T T T F   gemini T T F T - F T T
"""

from __future__ import annotations

import math

import duckdb
import pytest

A0, A1, A2 = (f"valid_1_a_1.nii.gz::{i}" for i in range(3))
B0, B1, B2 = (f"valid_2_a_1.nii.gz::{i}" for i in range(3))
C0, C1 = (f"valid_2_a_2.nii.gz::{i}" for i in range(2))

CATEGORIES = {
    "Laterality & Bilateral Symmetry", "Longitudinal (Vertical) Position",
    "Anterior-Posterior (Depth) Relations", "Medial-Lateral Orientation (Centricity)",
    "Adjacency & Containment", "Spatial Extent & Boundaries",
}


@pytest.fixture
def con(mini_db):
    c = duckdb.connect(str(mini_db), read_only=True)
    yield c
    c.close()


def rows(con, sql, *params):
    return con.execute(sql, list(params)).fetchall()


def test_jury_verdicts_m3d_by_hand(con):
    got = {q: r for q, *r in rows(con, "SELECT qid, jury_size, yes_votes, no_votes, no_verdict, majority_correct, "
                                       "strict_correct FROM jury_verdicts WHERE model = 'm3d'")}
    assert got == {
        A0: [3, 3, 0, 0, True, True],
        A1: [3, 2, 0, 1, True, False],    # gemini repaired -> unparsed, not a vote
        A2: [3, 1, 1, 1, False, False],   # gemini null
        B0: [3, 2, 0, 1, True, False],
        B1: [3, 0, 2, 1, False, False],   # gemini "false" as a string is no verdict
        B2: [3, 2, 1, 0, True, False],
        C0: [3, 3, 0, 0, True, True],
        C1: [3, 0, 2, 1, False, False],   # gemini dropped the item: still a 3-judge jury
    }


def test_jury_verdicts_two_judge_jury_and_missing_row(con):
    got = {q: r for q, *r in rows(con, "SELECT qid, jury_size, yes_votes, majority_correct, strict_correct "
                                       "FROM jury_verdicts WHERE model = 'merlin'")}
    assert B2 not in got                              # no prediction row -> no jury row
    assert got[A0] == [2, 1, False, False]            # 1 of 2 is not a majority
    assert got[C0] == [2, 1, False, False]
    assert got[A1] == [2, 2, True, True]
    assert len(got) == 7


def test_model_accuracy_by_hand(con):
    got = {m: r for m, *r in rows(con, "SELECT model, n_questions, n_predictions, majority_accuracy, "
                                       "strict_accuracy, coverage, jury_size FROM model_accuracy")}
    assert got["m3d"] == [8, 8, 5 / 8, 2 / 8, 1.0, 3]
    assert got["merlin"][:2] == [8, 7]
    assert got["merlin"][2] == pytest.approx(4 / 7) and got["merlin"][3] == pytest.approx(4 / 7)
    assert got["merlin"][4:] == [7 / 8, 2]
    assert got["radfm"] == [8, 8, 6 / 8, 4 / 8, 1.0, 3]


def test_judge_accuracy_by_hand(con):
    got = {(m, j): r for m, j, *r in rows(con, "SELECT model, judge, n_valid, n_yes, n_no_verdict, accuracy "
                                               "FROM judge_accuracy")}
    assert got[("m3d", "gpt")] == [8, 6, 0, 0.75]
    assert got[("m3d", "qwen")] == [8, 4, 0, 0.5]
    assert got[("m3d", "gemini2.5")] == [3, 3, 5, 1.0]        # 4 failures + 1 dropped item
    assert got[("merlin", "gpt")][:3] == [7, 6, 0] and got[("merlin", "gpt")][3] == pytest.approx(6 / 7)
    assert got[("radfm", "gemini2.5")][:3] == [7, 5, 1]
    assert ("merlin", "gemini2.5") not in got                # not on merlin's jury
    assert len(got) == 8


def test_category_accuracy_by_hand(con):
    got = {(m, c): r for m, c, *r in rows(con, "SELECT model, category, n, majority_accuracy, strict_accuracy "
                                               "FROM category_accuracy")}
    lat, lon = "Laterality & Bilateral Symmetry", "Longitudinal (Vertical) Position"
    adj, ext = "Adjacency & Containment", "Spatial Extent & Boundaries"
    cen, ap = "Medial-Lateral Orientation (Centricity)", "Anterior-Posterior (Depth) Relations"
    assert got[("m3d", lat)] == [3, pytest.approx(1 / 3), pytest.approx(1 / 3)]
    assert got[("m3d", lon)] == [2, 0.0, 0.0]
    assert got[("m3d", adj)] == [3, 1.0, pytest.approx(1 / 3)]
    assert got[("m3d", cen)] == [1, 1.0, 0.0]               # raw label 'Medial-Lateral Orientation'
    assert got[("m3d", ap)] == [1, 1.0, 0.0]
    assert got[("m3d", ext)] == [2, 0.5, 0.5]
    assert got[("merlin", lat)] == [3, pytest.approx(2 / 3), pytest.approx(2 / 3)]
    assert ("merlin", cen) not in got                        # its only question has no prediction
    # B1 has no category: it appears in no row, so per-model n sums to labels of answered questions
    assert sum(n for (m, _), (n, *_) in got.items() if m == "m3d") == 12


def test_correctness_matrix_by_hand(con):
    got = {(q, m): v for q, m, v in rows(con, "SELECT qid, model, jury_mean FROM correctness_matrix")}
    assert got[(A1, "m3d")] == pytest.approx(2 / 3)
    assert got[(A0, "merlin")] == 0.5
    assert got[(B1, "radfm")] == pytest.approx(2 / 3)
    assert (B2, "merlin") not in got
    assert len(got) == 8 + 7 + 8


def test_judge_agreement_by_hand(con):
    got = {(m, a, b): r for m, a, b, *r in rows(con, "SELECT model, judge_a, judge_b, n, agreement, cohen_kappa "
                                                     "FROM judge_agreement")}
    assert got[("m3d", "gpt", "qwen")] == [8, 0.75, pytest.approx(0.5)]
    n, agree, kappa = got[("merlin", "gpt", "qwen")]
    assert (n, agree, kappa) == (7, pytest.approx(5 / 7), pytest.approx(8 / 22))
    # gpt and gemini agree on the 3 questions gemini judged, all 'yes': chance agreement is 1
    assert got[("m3d", "gemini2.5", "gpt")] == [3, 1.0, None]


def test_contracts(con):
    """Data contracts in the spirit of dbt's unique / not_null / accepted_values tests."""
    assert rows(con, "SELECT model, qid, panel, count(*) FROM jury_verdicts GROUP BY ALL HAVING count(*) > 1") == []
    n_judges = rows(con, "SELECT count(*) FROM judges")[0][0]
    assert rows(con, "SELECT count(*) FROM jury_verdicts WHERE jury_size NOT BETWEEN 1 AND ?", n_judges) == [(0,)]
    assert rows(con, "SELECT count(*) FROM jury_verdicts WHERE yes_votes + no_votes + no_verdict <> jury_size"
                ) == [(0,)]
    assert {c for (c,) in rows(con, "SELECT DISTINCT category FROM question_categories")} <= CATEGORIES
    assert {c for (c,) in rows(con, "SELECT DISTINCT category FROM category_accuracy")} <= CATEGORIES
    for view, col in (("model_accuracy", "majority_accuracy"), ("model_accuracy", "strict_accuracy"),
                      ("model_accuracy", "coverage"), ("judge_accuracy", "accuracy"),
                      ("category_accuracy", "majority_accuracy"), ("correctness_matrix", "jury_mean")):
        assert rows(con, f"SELECT count(*) FROM {view} WHERE {col} NOT BETWEEN 0 AND 1") == [(0,)], (view, col)
    # every prediction and judgment points at a known question / prediction / judge
    assert rows(con, "SELECT count(*) FROM predictions p JOIN runs r USING (run_id) ANTI JOIN questions q "
                     "ON q.dataset_id = r.dataset_id AND q.qid = p.qid") == [(0,)]
    assert rows(con, "SELECT count(*) FROM judgments j ANTI JOIN predictions p USING (run_id, qid)") == [(0,)]
    assert rows(con, "SELECT count(*) FROM judgments j JOIN predictions p USING (run_id, qid) "
                     "WHERE p.status <> 'ok'") == [(0,)]          # only answers are judged
    assert rows(con, "SELECT count(*) FROM judgments j ANTI JOIN judges USING (judge_id)") == [(0,)]
    assert rows(con, "SELECT count(*) FROM judgments WHERE (status = 'ok') <> (verdict IS NOT NULL)") == [(0,)]


def test_strict_never_exceeds_majority(con):
    for maj, strict in rows(con, "SELECT majority_accuracy, strict_accuracy FROM model_accuracy"):
        assert strict <= maj + 1e-12
        assert not math.isnan(maj)


def test_unjudged_run_has_null_accuracy_not_zero(mini_db):
    """A run whose predictions nobody judged yet is visible with coverage but no accuracy."""
    import warehouse
    from warehouse import loaders, summaries

    with warehouse.writer(mini_db) as c, warehouse.transaction(c):
        loaders.upsert_model(c, "blind")
        loaders.upsert_run(c, run_id="ct-spatialvqa/blind", dataset_id="ct-spatialvqa", name="blind",
                           model_id="blind", source="test", config={})
        loaders.replace_predictions(c, "ct-spatialvqa/blind", {
            "qid": [A0, A1], "text": ["Left.", None], "status": ["ok", "error"],
            "reason": [None, "CUDA out of memory"], "provenance": ["{}", "{}"]})
        summaries.refresh(c)                                   # what the inference flow does
    c = duckdb.connect(str(mini_db), read_only=True)
    got = c.execute("SELECT n_predictions, majority_accuracy, coverage, n_failed_predictions FROM model_accuracy "
                    "WHERE model = 'blind'").fetchall()
    assert got == [(1, None, 1 / 8, 1)]
    assert c.execute("SELECT count(*) FROM jury_verdicts WHERE model = 'blind'").fetchone() == (0,)
    c.close()


# --- summary tables (issue 7, item 9) -------------------------------------------------------------

M3D, MERLIN, RADFM = (f"ct-spatialvqa/upstream/{m}" for m in ("m3d", "merlin", "radfm"))


def add_live_judge(db, judge: str, panel: str, run_id: str, verdicts: dict[str, bool | None], refresh=True):
    """A judge of our own (not imported) on `panel` that has judged some of a run's predictions;
    None stores a transient failure ('error') the judge flow would retry."""
    import warehouse
    from warehouse import loaders, summaries

    with warehouse.writer(db) as c, warehouse.transaction(c):
        loaders.upsert_judge(c, judge_id=f"local/{judge}", name=judge, provider="offline", model=judge,
                             prompt_version="v1")
        loaders.add_panel_member(c, panel, f"local/{judge}")
        loaders.replace_judgments_from_source(c, run_id=run_id, source=f"judge:{judge}", rows={
            "judge_id": [f"local/{judge}"] * len(verdicts), "qid": list(verdicts),
            "verdict": list(verdicts.values()),
            "status": ["error" if v is None else "ok" for v in verdicts.values()],
            "reason": ["HTTP 503" if v is None else None for v in verdicts.values()],
            "raw_response": [None] * len(verdicts)})
        if refresh:
            summaries.refresh(c)


def assert_summaries_equal_definitions(db):
    from warehouse.summaries import SUMMARISED

    with duckdb.connect(str(db), read_only=True) as c:
        for view in SUMMARISED:
            for a, b in ((f"main.{view}", f"definitions.{view}"), (f"definitions.{view}", f"main.{view}")):
                extra = c.execute(f"SELECT count(*) FROM (FROM {a} EXCEPT ALL FROM {b})").fetchall()[0][0]
                assert extra == 0, f"{a} has {extra} row(s) that {b} has not"
            assert c.execute(f"SELECT count(*) FROM summaries.{view}").fetchall()[0][0] == \
                c.execute(f"SELECT count(*) FROM definitions.{view}").fetchall()[0][0]


def test_public_views_read_summary_tables_equal_to_the_definitions(mini_db):
    from warehouse.summaries import SUMMARISED

    with duckdb.connect(str(mini_db), read_only=True) as c:
        sql = dict(c.execute("SELECT view_name, sql FROM duckdb_views() WHERE schema_name = 'main'").fetchall())
    for view in SUMMARISED:
        assert f"summaries.{view}" in sql[view], view
    assert_summaries_equal_definitions(mini_db)


def test_refresh_after_more_judgments_recomputes_the_changed_run_only(mini_db):
    from warehouse import summaries

    add_live_judge(mini_db, "exact", "offline", M3D, {A0: True, A1: False, A2: None})   # new judge + panel: all runs
    assert_summaries_equal_definitions(mini_db)
    with duckdb.connect(str(mini_db), read_only=True) as c:
        before = c.execute("SELECT * FROM summaries.jury_verdicts WHERE run_id <> ? ORDER BY ALL", [MERLIN]).fetchall()
        assert c.execute("SELECT jury_size, yes_votes FROM jury_verdicts WHERE panel = 'offline' AND qid = ?",
                         [A0]).fetchall() == [(1, 1)]
    # more verdicts of the same judge, on another run: only that run is recomputed
    add_live_judge(mini_db, "exact", "offline", MERLIN, {A0: False, B0: True}, refresh=False)
    done = summaries.refresh(mini_db)
    assert (done.full, done.runs) == (False, 1)
    assert_summaries_equal_definitions(mini_db)
    with duckdb.connect(str(mini_db), read_only=True) as c:
        assert c.execute("SELECT * FROM summaries.jury_verdicts WHERE run_id <> ? ORDER BY ALL", [MERLIN]
                         ).fetchall() == before
        assert c.execute("SELECT n_predictions, majority_accuracy FROM model_accuracy "
                         "WHERE panel = 'offline' AND model = 'merlin'").fetchall() == [(7, pytest.approx(1 / 7))]


def test_a_stale_summary_raises_instead_of_answering(mini_db):
    import warehouse
    from warehouse import summaries

    with warehouse.writer(mini_db) as c:            # a hand-made edit that keeps row counts and timestamps
        c.execute("UPDATE judgments SET verdict = NOT verdict WHERE status = 'ok' AND run_id = ?", [M3D])
    with duckdb.connect(str(mini_db), read_only=True) as c:
        for view in summaries.SUMMARISED:
            with pytest.raises(duckdb.Error, match="ctsvqa db refresh"):
                c.execute(f"SELECT * FROM {view}").fetchall()
        live = c.execute("SELECT majority_accuracy FROM definitions.model_accuracy WHERE model = 'm3d'").fetchall()
    with warehouse.reader(mini_db) as c:            # our readers fall back to the live definitions
        assert summaries.reading_live(c)
        assert c.execute("SELECT majority_accuracy FROM model_accuracy WHERE model = 'm3d'").fetchall() == live
    summaries.refresh(mini_db)                       # what `ctsvqa db refresh` does
    assert_summaries_equal_definitions(mini_db)


def test_run_status_tells_a_half_judged_run_from_a_final_one(mini_db):
    # 'exact' judged 3 of m3d's 8 answers (one failed transiently); 'rules', also on the panel, none yet
    add_live_judge(mini_db, "exact", "offline", M3D, {A0: True, A1: False, A2: None})
    add_live_judge(mini_db, "rules", "offline", RADFM, {A0: True})
    with duckdb.connect(str(mini_db), read_only=True) as c:
        got = {(m, p): r for m, p, *r in c.execute(
            "SELECT model, panel, status, n_pending_judgments, judges_pending FROM run_status").fetchall()}
    assert got[("m3d", "upstream")] == ["complete", 0, []]      # imported verdicts are final as imported
    assert got[("m3d", "offline")] == ["judging", 6 + 8, ["exact", "rules"]]
    assert got[("radfm", "offline")] == ["judging", 8 + 7, ["exact", "rules"]]
    assert ("merlin", "offline") not in got


def test_a_half_judged_run_reads_as_not_final_in_model_accuracy_the_report_and_the_html(mini_db, tmp_path):
    """It used to be shown as an ordinary number (e.g. 11.8 %) while most of its judgments were pending."""
    from rich.console import Console

    import warehouse
    from tasks.report import print_report
    from tasks.report_html import write_report

    add_live_judge(mini_db, "exact", "offline", M3D, {A0: True, A1: False, A2: None})
    with duckdb.connect(str(mini_db), read_only=True) as c:
        got = {(m, p): r for m, p, *r in c.execute(
            "SELECT model, panel, status, n_pending_judgments FROM model_accuracy").fetchall()}
    assert got[("m3d", "offline")] == ["judging", 6]
    assert got[("m3d", "upstream")] == ["complete", 0]
    console = Console(record=True, width=400)
    with warehouse.reader(mini_db) as con:
        print_report(con, console=console)
    text = console.export_text()
    line = next(x for x in text.splitlines() if "offline" in x and "m3d" in x and "│" in x)
    assert "not final, 6 judgment(s) pending" in line
    assert not any("pending" in x for x in text.splitlines() if "upstream" in x and "m3d" in x and "│" in x)
    report = write_report(mini_db, tmp_path / "html", panel="offline", images=False)
    page = report.html.read_text()
    assert "not final, 6 judgment(s) pending" in page
