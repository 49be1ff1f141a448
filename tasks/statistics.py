"""Statistics over the jury verdicts, as plain functions: percentile bootstrap CIs of majority and strict
accuracy resampling volumes (questions of one volume are correlated), and exact McNemar tests between
every two runs of a dataset under the same panel. Fleiss' kappa is a view (sql/views/31_fleiss_kappa.sql)."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import binomtest

import warehouse

SQL = Path(__file__).resolve().parent.parent / "sql" / "queries"
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


def _outcomes(db) -> pd.DataFrame:
    with warehouse.reader(db) as con:
        return con.execute((SQL / "jury_outcomes.sql").read_text()).df()


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


def comparisons(outcomes: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (dataset, panel), g in outcomes.groupby(["dataset", "panel"], sort=True):
        wide = g.pivot(index="qid", columns="run_id", values="majority_correct")
        for a, b in combinations(sorted(wide.columns), 2):
            both = wide[[a, b]].dropna().astype(bool)
            ra, rb = both[a].to_numpy(), both[b].to_numpy()
            only_a, only_b = int((ra & ~rb).sum()), int((~ra & rb).sum())
            rows.append({"dataset": dataset, "panel": panel, "run_a": a, "run_b": b, "n_shared": len(both),
                         "both_correct": int((ra & rb).sum()), "only_a": only_a, "only_b": only_b,
                         "both_wrong": int((~ra & ~rb).sum()), "p_value": mcnemar_exact(only_a, only_b)})
    return pd.DataFrame(rows, columns=["dataset", "panel", "run_a", "run_b", "n_shared", "both_correct",
                                       "only_a", "only_b", "both_wrong", "p_value"])


def refresh_statistics(db, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> dict[str, int]:
    """Recompute every interval and comparison from the current verdicts and replace the stored ones in
    one transaction (seconds for the five upstream runs)."""
    outcomes = _outcomes(db)
    ci = intervals(outcomes, n_resamples, seed)
    tests = comparisons(outcomes)
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
