"""Text metrics: hand-checked values, the upstream definitions recomputed independently on the example
data, and the store's identity (a changed prediction is scored again; nothing is scored twice)."""

from __future__ import annotations

import duckdb
import pytest

from adapters.metrics import text
from tasks import scoring


def test_hand_checked_pair_scores():
    same = text.pair_scores("left lung", "left lung")
    # METEOR of an identical 2-word pair: F = 1, one chunk of 2 matches -> penalty 0.5 * (1/2)^3
    assert (same.rouge1_f, same.rouge2_f, same.rougeL_f, same.exact_match) == (1.0, 1.0, 1.0, True)
    assert same.meteor == pytest.approx(0.9375)
    # ROUGE with the stemmer: "lungs" ~ "lung"; unigrams P = 2/2, R = 2/3 -> F = 0.8
    plural = text.pair_scores("the left lungs", "left lung")
    assert plural.rouge1_f == pytest.approx(0.8) and plural.rouge2_f == pytest.approx(2 / 3)
    # WordNet synonyms count for METEOR (ill ~ sick), not for ROUGE
    synonym = text.pair_scores("sick patient", "ill patient")
    assert synonym.meteor == pytest.approx(0.9375) and synonym.rouge1_f == pytest.approx(0.5)
    assert text.pair_scores("on the left side.", "right side").meteor == 0.0


def test_corpus_bleu_is_sacrebleu_default():
    assert text.corpus_bleu(["the left lung is larger"], ["the left lung is larger"]) == pytest.approx(100.0)
    assert text.corpus_bleu(["the left lung is larger", "no"], ["the right lung is larger", "yes"]) == \
        pytest.approx(40.824829, abs=1e-5)


def _upstream_style(con: duckdb.DuckDBPyConnection, run: str) -> dict:
    """The upstream evaluate_text_metrics.py loop, written independently of adapters.metrics."""
    import numpy as np
    import sacrebleu
    from nltk.translate.meteor_score import meteor_score
    from rouge_score import rouge_scorer

    from adapters.judges.minilm import sbert_model
    from adapters.metrics.wordnet import wordnet

    rows = con.execute("SELECT q.answer, p.text FROM predictions p JOIN runs r USING (run_id) "
                       "JOIN questions q ON q.dataset_id = r.dataset_id AND q.qid = p.qid "
                       "WHERE r.name = ? AND p.status = 'ok' ORDER BY p.qid", [run]).fetchall()
    refs, hyps = [], []
    for ref, hyp in rows:
        ref, hyp = ref.strip().lower(), hyp.strip().lower()
        if ref and hyp:
            refs.append(ref)
            hyps.append(hyp)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    rouge = [scorer.score(r, h) for r, h in zip(refs, hyps)]
    model = sbert_model()
    e_ref = model.encode(refs, normalize_embeddings=True)
    e_hyp = model.encode(hyps, normalize_embeddings=True)
    return {
        "count": len(refs),
        "bleu": sacrebleu.corpus_bleu(hyps, [refs]).score,
        "rouge1_f": float(np.mean([s["rouge1"].fmeasure for s in rouge])),
        "rouge2_f": float(np.mean([s["rouge2"].fmeasure for s in rouge])),
        "rougeL_f": float(np.mean([s["rougeL"].fmeasure for s in rouge])),
        "meteor": float(np.mean([meteor_score([r.split()], h.split(), wordnet=wordnet()) for r, h in zip(refs, hyps)])),
        "sbert_cosine": float(np.mean((e_ref * e_hyp).sum(axis=1))),
        "exact_match": float(np.mean([r == h for r, h in zip(refs, hyps)])),
    }


def _view(db, run: str) -> dict:
    con = duckdb.connect(str(db), read_only=True)
    try:
        df = con.execute("SELECT * FROM text_metrics WHERE model = ?", [run]).df()
    finally:
        con.close()
    assert len(df) == 1
    return df.iloc[0].to_dict()


def test_score_reproduces_the_upstream_definitions_and_never_scores_twice(mini_db):
    summary = scoring.score_runs(mini_db)
    assert summary.scored > 0 and len(summary.runs) == 3
    con = duckdb.connect(str(mini_db), read_only=True)
    try:
        expected = {run: _upstream_style(con, run) for run in ("m3d", "merlin", "radfm")}
    finally:
        con.close()
    for run, want in expected.items():
        got = _view(mini_db, run)
        assert got["count"] == want["count"]
        for metric in ("bleu", "rouge1_f", "rouge2_f", "rougeL_f", "meteor", "sbert_cosine", "exact_match"):
            assert got[metric] == pytest.approx(want[metric], rel=1e-6, abs=1e-6), (run, metric)
    again = scoring.score_runs(mini_db)
    assert again.scored == 0


def test_changed_prediction_is_rescored_and_stale_scores_never_count(mini_db):
    scoring.score_runs(mini_db, ["radfm"])
    before = _view(mini_db, "radfm")
    con = duckdb.connect(str(mini_db))
    qid = con.execute("SELECT p.qid FROM predictions p JOIN runs r USING (run_id) WHERE r.name = 'radfm' "
                      "AND p.status = 'ok' AND trim(p.text) <> '' ORDER BY p.qid LIMIT 1").fetchone()[0]
    answer = con.execute("SELECT answer FROM questions WHERE qid = ?", [qid]).fetchone()[0]
    con.execute("UPDATE predictions SET text = ? WHERE qid = ? AND run_id IN "
                "(SELECT run_id FROM runs WHERE name = 'radfm')", [answer, qid])
    con.close()
    stale = _view(mini_db, "radfm")
    assert stale["count"] == before["count"] - 1           # the old text's score no longer counts
    assert stale["bleu"] is None or stale["bleu"] != stale["bleu"]   # NULL (NaN in pandas) until re-scored
    summary = scoring.score_runs(mini_db, ["radfm"])
    assert summary.scored == 1
    after = _view(mini_db, "radfm")
    assert after["count"] == before["count"]
    assert after["exact_match"] > before["exact_match"]
    con = duckdb.connect(str(mini_db), read_only=True)
    try:
        want = _upstream_style(con, "radfm")
    finally:
        con.close()
    assert after["bleu"] == pytest.approx(want["bleu"]) and after["meteor"] == pytest.approx(want["meteor"])


def test_empty_texts_are_skipped_and_unknown_runs_refused(mini_db):
    con = duckdb.connect(str(mini_db))
    con.execute("UPDATE predictions SET text = '   ' WHERE qid = (SELECT min(qid) FROM predictions "
                "WHERE status = 'ok') AND run_id IN (SELECT run_id FROM runs WHERE name = 'm3d')")
    n_ok = con.execute("SELECT count(*) FROM predictions p JOIN runs r USING (run_id) WHERE r.name = 'm3d' "
                       "AND p.status = 'ok' AND trim(p.text) <> ''").fetchone()[0]
    con.close()
    summary = scoring.score_runs(mini_db, ["m3d"])
    assert summary.skipped_empty >= 1
    assert _view(mini_db, "m3d")["count"] == n_ok
    with pytest.raises(ValueError, match=r"unknown run\(s\) nope; known runs: m3d, merlin, radfm"):
        scoring.score_runs(mini_db, ["nope"])
