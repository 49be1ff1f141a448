"""Statistics over the jury verdicts, as plain functions: percentile bootstrap CIs of majority and strict
accuracy resampling volumes (questions of one volume are correlated), and comparisons of every two runs
of a dataset under the same panel: the exact McNemar test, a volume-clustered test of the paired
difference, Holm-adjusted p-values over the family of comparisons of one dataset and panel, and all of
it again on the jury the two runs have in common. Fleiss' kappa is a view (sql/views/31_fleiss_kappa.sql)."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd
from scipy.stats import binomtest, norm

import warehouse
from warehouse.connection import query_text

N_RESAMPLES = 2000
LEVEL = 0.95
SEED = 20261130


def bootstrap_by_volume(volume_correct: np.ndarray, volume_n: np.ndarray, n_resamples: int, seed: int,
                        level: float = LEVEL) -> tuple[float, float, float]:
    """Estimate and percentile CI of sum(correct)/sum(n), resampling volumes with replacement. Each
    resample draws every volume's multiplicity at once (a multinomial row), so the work is one matrix
    product."""
    k = len(volume_n)
    estimate = float(volume_correct.sum() / volume_n.sum())
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(k, np.full(k, 1.0 / k), size=n_resamples).astype(np.float64)
    stats = (weights @ volume_correct) / (weights @ volume_n)
    alpha = (1 - level) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return estimate, float(low), float(high)


def mcnemar_exact(only_a: int, only_b: int) -> float | None:
    n = only_a + only_b
    return None if n == 0 else float(binomtest(min(only_a, only_b), n, 0.5).pvalue)


def clustered_paired_test(diff: np.ndarray, cluster: np.ndarray) -> float | None:
    """Two-sided p of the mean paired difference (a right minus b right, per question) being 0, with a
    cluster-robust standard error over volumes: the z test of an intercept-only regression with
    cluster-robust covariance (statsmodels' OLS cov_type='cluster', small-sample factor G/(G-1))."""
    diff = np.asarray(diff, dtype=np.float64)
    n = len(diff)
    if n == 0:
        return None
    mean = diff.mean()
    codes, groups = np.unique(np.asarray(cluster), return_inverse=True)
    g = len(codes)
    if g < 2:
        return None
    scores = np.bincount(groups, weights=diff - mean, minlength=g)
    var = g / (g - 1) * float((scores ** 2).sum()) / n ** 2
    if var == 0:
        return None if mean == 0 else 0.0
    return float(2 * norm.sf(abs(mean) / np.sqrt(var)))


def holm(p_values) -> list[float | None]:
    """Holm's step-down adjustment (as statsmodels' multipletests(method='holm')); None stays None and
    is not counted in the family."""
    p = [(v, i) for i, v in enumerate(p_values) if v is not None and v == v]
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (v, i) in enumerate(sorted(p)):
        running = max(running, min(1.0, (len(p) - rank) * v))
        out[i] = running
    return out


def _outcomes(db) -> pd.DataFrame:
    with warehouse.reader(db) as con:
        return con.execute(query_text("jury_outcomes.sql")).df()


def _votes(db) -> pd.DataFrame:
    with warehouse.reader(db) as con:
        return con.execute(query_text("jury_votes.sql")).df()


def _pair(ra: np.ndarray, rb: np.ndarray, volumes: np.ndarray) -> dict:
    only_a, only_b = int((ra & ~rb).sum()), int((~ra & rb).sum())
    return {"n": len(ra), "both_correct": int((ra & rb).sum()), "only_a": only_a, "only_b": only_b,
            "both_wrong": int((~ra & ~rb).sum()), "p": mcnemar_exact(only_a, only_b),
            "diff": float(ra.mean() - rb.mean()) if len(ra) else None,
            "p_clustered": clustered_paired_test(ra.astype(float) - rb.astype(float), volumes),
            "n_volumes": len(set(volumes.tolist()))}


def _common_majority(votes: pd.DataFrame, run: str, judges: list[str]) -> pd.Series:
    """Majority correctness of one run's questions on a sub-jury: yes votes * 2 > its size (a judge
    without a verdict on a question casts no yes, as in the jury_verdicts view)."""
    mine = votes[(votes["run_id"] == run) & votes["judge"].isin(judges)]
    yes = mine.assign(yes=mine["verdict"].fillna(False).astype(bool)).groupby("qid")["yes"].sum()
    return yes * 2 > len(judges)


def intervals(outcomes: pd.DataFrame, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> pd.DataFrame:
    rows = []
    for (run_id, panel), g in outcomes.groupby(["run_id", "panel"], sort=True):
        per_volume = g.groupby("volume", sort=True).agg(n=("qid", "size"), majority=("majority_correct", "sum"),
                                                        strict=("strict_correct", "sum"))
        n = per_volume["n"].to_numpy(np.float64)
        for metric in ("majority", "strict"):
            est, low, high = bootstrap_by_volume(per_volume[metric].to_numpy(np.float64), n, n_resamples, seed)
            rows.append({"run_id": run_id, "panel": panel, "metric": metric, "estimate": est, "ci_low": low,
                         "ci_high": high, "level": LEVEL, "n_resamples": n_resamples, "seed": seed,
                         "n_questions": int(n.sum()), "n_volumes": len(n)})
    return pd.DataFrame(rows)


COMPARISON_COLUMNS = ["dataset", "panel", "run_a", "run_b", "n_shared", "both_correct", "only_a", "only_b",
                      "both_wrong", "p_value", "diff", "p_holm", "p_clustered", "p_clustered_holm", "n_volumes",
                      "common_judges", "same_jury", "common_n_shared", "common_only_a", "common_only_b",
                      "common_diff", "common_p_value", "common_p_holm", "common_p_clustered"]


def comparisons(outcomes: pd.DataFrame, votes: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every two runs of a dataset under one panel, on the questions both answered and both had judged:
    as published (each run's own jury) and, with `votes`, on the judges both juries have."""
    rows = []
    for (dataset, panel), g in outcomes.groupby(["dataset", "panel"], sort=True):
        wide = g.pivot(index="qid", columns="run_id", values="majority_correct")
        volume_of = g.drop_duplicates("qid").set_index("qid")["volume"]
        pv = votes[(votes["dataset"] == dataset) & (votes["panel"] == panel)] if votes is not None else None
        juries = pv.groupby("run_id")["judge"].agg(lambda s: sorted(set(s))).to_dict() if pv is not None else {}
        family = []
        for a, b in combinations(sorted(wide.columns), 2):
            both = wide[[a, b]].dropna().astype(bool)
            pub = _pair(both[a].to_numpy(), both[b].to_numpy(), volume_of.loc[both.index].to_numpy())
            row = {"dataset": dataset, "panel": panel, "run_a": a, "run_b": b, "n_shared": pub["n"],
                   "both_correct": pub["both_correct"], "only_a": pub["only_a"], "only_b": pub["only_b"],
                   "both_wrong": pub["both_wrong"], "p_value": pub["p"], "diff": pub["diff"],
                   "p_clustered": pub["p_clustered"], "n_volumes": pub["n_volumes"]}
            ja, jb = juries.get(a), juries.get(b)
            if ja is not None and jb is not None:
                common = sorted(set(ja) & set(jb))
                row.update(common_judges=common, same_jury=ja == jb)
                if common:
                    ca, cb = _common_majority(pv, a, common), _common_majority(pv, b, common)
                    shared = both.index.intersection(ca.index).intersection(cb.index)
                    c = _pair(ca.loc[shared].to_numpy(), cb.loc[shared].to_numpy(),
                              volume_of.loc[shared].to_numpy())
                    row.update(common_n_shared=c["n"], common_only_a=c["only_a"], common_only_b=c["only_b"],
                               common_diff=c["diff"], common_p_value=c["p"], common_p_clustered=c["p_clustered"])
            family.append(row)
        for key, adjusted in (("p_value", "p_holm"), ("p_clustered", "p_clustered_holm"),
                              ("common_p_value", "common_p_holm")):
            for row, p in zip(family, holm([r.get(key) for r in family])):
                row[adjusted] = p
        rows += family
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def refresh_statistics(db, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> dict[str, int]:
    """Recompute every interval and comparison from the current verdicts and replace the stored ones in
    one transaction (seconds for the five upstream runs)."""
    outcomes = _outcomes(db)
    ci = intervals(outcomes, n_resamples, seed)
    tests = comparisons(outcomes, _votes(db))
    with warehouse.writer(db) as con, warehouse.transaction(con):
        con.execute("DELETE FROM accuracy_intervals")
        con.execute("DELETE FROM run_comparisons")
        if len(ci):
            con.register("new_ci", ci)
            con.execute("INSERT INTO accuracy_intervals BY NAME SELECT * FROM new_ci")
            con.unregister("new_ci")
        if len(tests):
            con.register("new_tests", tests)
            con.execute("INSERT INTO run_comparisons BY NAME SELECT * FROM new_tests")
            con.unregister("new_tests")
    return {"intervals": len(ci), "comparisons": len(tests)}
