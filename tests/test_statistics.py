"""Statistics against hand-computed values and statsmodels: bootstrap CIs resample volumes, McNemar is
exact, Fleiss' kappa (a view) matches the reference implementation."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.inter_rater import fleiss_kappa

from tasks import statistics


def _outcomes(per_volume: list[list[bool]], run="r", panel="p") -> pd.DataFrame:
    rows = [{"run_id": run, "panel": panel, "dataset": "d", "volume": f"v{i}", "qid": f"v{i}::{j}",
             "majority_correct": ok, "strict_correct": ok}
            for i, answers in enumerate(per_volume) for j, ok in enumerate(answers)]
    return pd.DataFrame(rows)


def test_bootstrap_resamples_volumes_not_questions():
    # 40 volumes of 5 questions, each volume all right or all wrong: the questions are not independent,
    # so the volume bootstrap must be wider than a naive question bootstrap (about sqrt(5) times).
    per_volume = [[i % 2 == 0] * 5 for i in range(40)]
    ci = statistics.intervals(_outcomes(per_volume), n_resamples=4000, seed=1)
    row = ci[ci.metric == "majority"].iloc[0]
    assert row.estimate == 0.5 and row.n_volumes == 40 and row.n_questions == 200
    naive = np.random.default_rng(1).binomial(200, 0.5, size=4000) / 200
    naive_width = np.quantile(naive, 0.975) - np.quantile(naive, 0.025)
    assert (row.ci_high - row.ci_low) > 1.8 * naive_width
    assert row.ci_low < 0.5 < row.ci_high
    # deterministic for a seed; all-correct data has a degenerate interval
    again = statistics.intervals(_outcomes(per_volume), n_resamples=4000, seed=1)
    assert again.equals(ci)
    perfect = statistics.intervals(_outcomes([[True] * 3] * 10), n_resamples=500, seed=0).iloc[0]
    assert (perfect.estimate, perfect.ci_low, perfect.ci_high) == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("only_a,only_b", [(3, 11), (0, 6), (7, 7), (25, 40)])
def test_mcnemar_is_exact(only_a, only_b):
    expected = mcnemar([[10, only_a], [only_b, 5]], exact=True).pvalue
    assert statistics.mcnemar_exact(only_a, only_b) == pytest.approx(expected)
    assert statistics.mcnemar_exact(0, 0) is None


def test_statistics_on_the_imported_example_match_the_views_and_statsmodels(mini_db):
    counts = statistics.refresh_statistics(mini_db, n_resamples=1000, seed=3)
    assert counts["intervals"] == 6 and counts["comparisons"] == 3      # 3 runs x 2 metrics; 3 pairs
    con = duckdb.connect(str(mini_db), read_only=True)
    try:
        ci = con.execute("SELECT model, metric, estimate, ci_low, ci_high, stale FROM accuracy_ci").df()
        acc = con.execute("SELECT model, majority_accuracy, strict_accuracy FROM model_accuracy "
                          "WHERE panel = 'upstream'").df().set_index("model")
        for r in ci.itertuples():
            assert r.estimate == pytest.approx(acc.loc[r.model, f"{r.metric}_accuracy"])
            assert r.ci_low <= r.estimate <= r.ci_high and not r.stale
        # McNemar counts from the correctness of the two runs on shared questions
        verdicts = con.execute("SELECT model, qid, majority_correct FROM jury_verdicts WHERE panel = 'upstream'").df()
        wide = verdicts.pivot(index="qid", columns="model", values="majority_correct")
        cmp = con.execute("SELECT * FROM model_comparisons WHERE model_a = 'm3d' AND model_b = 'radfm' "
                          "OR model_a = 'radfm' AND model_b = 'm3d'").df().iloc[0]
        shared = wide[[cmp.model_a, cmp.model_b]].dropna().astype(bool)
        a, b = shared[cmp.model_a], shared[cmp.model_b]
        assert (cmp.only_a, cmp.only_b, cmp.n_shared) == (int((a & ~b).sum()), int((~a & b).sum()), len(shared))
        # Fleiss' kappa view vs statsmodels on the items every judge answered
        fk = con.execute("SELECT model, kappa, n_items FROM fleiss_kappa WHERE panel = 'upstream'").df()
        for r in fk.itertuples():
            votes = con.execute("SELECT yes_votes, no_votes FROM jury_verdicts WHERE panel = 'upstream' "
                                "AND model = ? AND no_verdict = 0", [r.model]).fetchall()
            assert r.n_items == len(votes)
            assert r.kappa == pytest.approx(fleiss_kappa(np.array(votes)), abs=1e-9)
    finally:
        con.close()
    # a judgment changed after the intervals were computed marks them stale
    con = duckdb.connect(str(mini_db))
    con.execute("UPDATE judgments SET created_at = now() + INTERVAL 1 SECOND WHERE qid = (SELECT min(qid) FROM "
                "judgments) AND run_id = (SELECT run_id FROM runs WHERE name = 'm3d')")
    stale = con.execute("SELECT bool_and(stale) FROM accuracy_ci WHERE model = 'm3d'").fetchone()[0]
    con.close()
    assert stale
