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


def test_clustered_paired_test_is_statsmodels_cluster_robust_ols():
    import statsmodels.api as sm

    rng = np.random.default_rng(4)
    volumes = np.repeat(np.arange(30), 6)
    effect = rng.normal(0, 0.6, 30)[volumes]                  # volumes differ: questions of one are correlated
    diff = np.clip(np.round(effect + rng.normal(0.15, 0.5, len(volumes))), -1, 1)
    fit = sm.OLS(diff, np.ones((len(diff), 1))).fit(cov_type="cluster", cov_kwds={"groups": volumes})
    assert statistics.clustered_paired_test(diff, volumes) == pytest.approx(float(fit.pvalues[0]), rel=1e-9)
    # no difference at all, or a single volume: nothing to test
    assert statistics.clustered_paired_test(np.zeros(10), np.arange(10)) is None
    assert statistics.clustered_paired_test(np.array([1.0, 0.0]), np.array([0, 0])) is None


def test_holm_matches_statsmodels_and_skips_missing():
    from statsmodels.stats.multitest import multipletests

    p = [0.035, 0.029, 0.2, 1e-5, 0.04, 0.5]
    assert statistics.holm(p) == pytest.approx(list(multipletests(p, method="holm")[1]))
    first, missing, last = statistics.holm([0.01, None, 0.04])      # a family of two
    assert missing is None and (first, last) == pytest.approx((0.02, 0.04))


def test_comparisons_on_the_common_jury_leave_out_a_judge_one_run_lacks():
    """Run b has no verdicts from judge z: against b, a counts only x and y, and says so."""
    qs = [f"v{i // 2}::{i % 2}" for i in range(8)]
    votes = []
    for q in qs:
        i = int(q[1:].split("::")[0]) * 2 + int(q[-1])
        for judge, yes in (("x", i < 6), ("y", i < 4), ("z", True)):
            votes.append({"run_id": "a", "panel": "p", "dataset": "d", "volume": q.split("::")[0], "qid": q,
                          "judge": judge, "verdict": yes})
        for judge, yes in (("x", i % 2 == 0), ("y", i % 2 == 0)):
            votes.append({"run_id": "b", "panel": "p", "dataset": "d", "volume": q.split("::")[0], "qid": q,
                          "judge": judge, "verdict": yes})
    votes = pd.DataFrame(votes)
    def majority(run, n):
        yes = votes[votes.run_id == run].groupby("qid")["verdict"].sum()
        return yes * 2 > n
    outcomes = pd.DataFrame([{"run_id": r, "panel": "p", "dataset": "d", "volume": q.split("::")[0], "qid": q,
                              "majority_correct": bool(majority(r, n)[q]), "strict_correct": False}
                             for r, n in (("a", 3), ("b", 2)) for q in qs])
    (row,) = statistics.comparisons(outcomes, votes).to_dict("records")
    assert row["common_judges"] == ["x", "y"] and row["same_jury"] is False
    a3, b2 = majority("a", 3), majority("b", 2)          # as published: a on its 3 judges
    a2 = votes[(votes.run_id == "a") & votes.judge.isin(["x", "y"])].groupby("qid")["verdict"].sum() * 2 > 2
    assert (row["only_a"], row["only_b"]) == (int((a3 & ~b2).sum()), int((~a3 & b2).sum()))
    assert (row["common_only_a"], row["common_only_b"]) == (int((a2 & ~b2).sum()), int((~a2 & b2).sum()))
    assert row["diff"] == pytest.approx(a3.mean() - b2.mean())
    assert row["common_diff"] == pytest.approx(a2.mean() - b2.mean()) and row["common_diff"] != row["diff"]


def test_upstream_comparisons_follow_the_common_jury(upstream_root, tmp_path):
    """On the published files: merlin has no Gemini file, so against merlin only GPT and Qwen count,
    and the merlin-vila order flips (the published majority of merlin is GPT and Qwen both yes)."""
    from tasks.upstream_import import import_upstream

    db = tmp_path / "wh.duckdb"
    import_upstream(upstream_root, db)
    statistics.refresh_statistics(db, n_resamples=200, seed=1)
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = {(r["model_a"], r["model_b"]): r for r in con.execute(
            "SELECT * FROM model_comparisons WHERE panel = 'upstream'").df().to_dict("records")}
    finally:
        con.close()
    mv = rows[("merlin", "vila_m3_vista3d")]
    assert list(mv["common_judges"]) == ["gpt", "qwen"] and not mv["same_jury"]
    assert mv["diff"] < 0 < mv["common_diff"] and mv["common_p_value"] < 0.01
    same = rows[("m3d", "med3dvlm")]
    assert same["same_jury"] and same["common_diff"] == pytest.approx(same["diff"])
    assert same["p_value"] < 0.05 < same["p_holm"]                    # does not survive Holm
    assert all(r["p_holm"] >= r["p_value"] for r in rows.values())
