"""Benchmark: every view over the upstream import and over 10x its runs, summaries against definitions.

    python bench/views.py [--upstream PATH] [--repeats 3] [--copies 9]

Imports the shared CT-SpatialVQA files (5 runs), then synthesises `--copies` more of every run by
copying its predictions and judgments under new run ids in SQL (9 copies: 50 runs, 10x the rows).
Each view is read in full into Arrow, median of --repeats, two ways measured in the same run:
baseline = the live definition (`definitions.<view>`), new = the public view (`<view>`, which reads
the summary table for the per-run metrics). Also times what keeps the summaries current.
Goals (issue 7, item 9): all views <= 0.5 s on the upstream import, <= 2 s at 10x.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import duckdb  # noqa: E402

import warehouse  # noqa: E402
from tasks.upstream_import import import_upstream  # noqa: E402
from warehouse import summaries  # noqa: E402
from warehouse.migrate import view_names  # noqa: E402

from bench.common import DEFAULT_UPSTREAM, median_s  # noqa: E402



def fetch(con: duckdb.DuckDBPyConnection, relation: str) -> int:
    return con.sql(f"SELECT * FROM {relation}").to_arrow_table().num_rows


def synthesise(db: Path, copies: int) -> None:
    """`copies` more runs per run: the same predictions and judgments under new run ids."""
    with warehouse.writer(db) as con, warehouse.transaction(con):
        con.execute(f"CREATE TEMP TABLE copies AS SELECT i FROM range(1, {copies + 1}) AS t(i)")
        con.execute("INSERT INTO runs (run_id, dataset_id, name, model_id, source, config) "
                    "SELECT run_id || '~' || i, dataset_id, name || '~' || i, model_id, 'synthetic', config "
                    "FROM runs, copies")
        con.execute("INSERT INTO predictions BY NAME SELECT p.* REPLACE (p.run_id || '~' || i AS run_id) "
                    "FROM predictions AS p, copies")
        con.execute("INSERT INTO judgments BY NAME SELECT j.* REPLACE (j.run_id || '~' || i AS run_id) "
                    "FROM judgments AS j, copies")
        con.execute("DROP TABLE copies")


def time_views(db: Path, repeats: int) -> dict[str, tuple[int, float, float]]:
    """view -> (rows, definition s, public view s)."""
    out = {}
    with duckdb.connect(str(db), read_only=True) as con:
        con.execute("SET enable_progress_bar = false")
        for view in view_names(con):
            t_def, n = median_s(lambda: fetch(con, f"definitions.{view}"), repeats)
            t_pub, m = median_s(lambda: fetch(con, view), repeats)
            assert n == m, (view, n, m)
            out[view] = (n, t_def, t_pub)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upstream", type=Path, default=DEFAULT_UPSTREAM)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--copies", type=int, default=9)
    args = ap.parse_args()
    if not (args.upstream / "dataset").is_dir():
        print(f"upstream data not found at {args.upstream}", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="ctsvqa-views-"))
    small, big = tmp / "x1.duckdb", tmp / "x10.duckdb"
    import_upstream(args.upstream, small)
    with warehouse.writer(small) as con:
        t_full_1, _ = median_s(lambda: summaries.refresh(con, full=True), args.repeats)
    big.write_bytes(small.read_bytes())
    synthesise(big, args.copies)

    costs = {}
    with warehouse.writer(big) as con:
        con.execute("SET enable_progress_bar = false")
        n_runs = con.execute("SELECT count(*) FROM runs").fetchall()[0][0]
        n_pred, n_judg = (con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in ("predictions", "judgments"))
        costs["full refresh, 10x (import, new definitions)"], _ = median_s(
            lambda: summaries.refresh(con, full=True), args.repeats)
        costs["refresh with nothing changed, 10x"], _ = median_s(lambda: summaries.refresh(con), args.repeats)
        run = con.execute("SELECT min(run_id) FROM runs").fetchall()[0][0]

        def one_flush():             # what a judging flush does to one run, then the refresh after it
            con.execute("UPDATE judgments SET created_at = now() WHERE run_id = ? AND qid IN "
                        "(SELECT qid FROM judgments WHERE run_id = ? LIMIT 200)", [run, run])
            return summaries.refresh(con)

        costs["refresh after one run changed, 10x"], done = median_s(one_flush, args.repeats)
        assert (done.full, done.runs) == (False, 1), done
        costs["freshness check (in every summary view), 10x"], _ = median_s(
            lambda: con.execute("SELECT fresh FROM summaries.freshness").fetchall(), args.repeats)
        costs["fallback inside a view (UNION ALL, fresh), 10x"], _ = median_s(lambda: fetch(
            con, "(SELECT * FROM summaries.model_accuracy WHERE (SELECT fresh FROM summaries.freshness) "
                 "UNION ALL SELECT * FROM definitions.model_accuracy WHERE NOT (SELECT fresh FROM summaries.freshness))"),
            args.repeats)
        costs["floor: predictions + judgments tables to Arrow, 10x"], _ = median_s(
            lambda: fetch(con, "predictions") + fetch(con, "judgments"), args.repeats)

    x1, x10 = time_views(small, args.repeats), time_views(big, args.repeats)
    print(f"upstream: {args.upstream}; 10x = {n_runs} runs, {n_pred:,} predictions, {n_judg:,} judgments; "
          f"median of {args.repeats}; every view read in full into Arrow; {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} at the end (the times scale with it: compare the columns, not runs)\n")
    print(f"{'view':<22}{'rows 1x':>9}{'defn ms':>10}{'view ms':>10}{'rows 10x':>11}{'defn ms':>10}{'view ms':>10}"
          f"{'10x speed-up':>14}")
    totals = {"all views": [0.0] * 4, "summarised (per-run metrics)": [0.0] * 4}
    for view in x1:
        (n1, d1, p1), (n10, d10, p10) = x1[view], x10[view]
        mark = "*" if view in summaries.SUMMARISED else " "
        print(f"{mark}{view:<21}{n1:>9,}{1000 * d1:>10.1f}{1000 * p1:>10.1f}{n10:>11,}{1000 * d10:>10.1f}"
              f"{1000 * p10:>10.1f}{d10 / p10:>13.1f}x")
        for key in totals:
            if key == "all views" or view in summaries.SUMMARISED:
                for i, t in enumerate((d1, p1, d10, p10)):
                    totals[key][i] += t
    for key, (d1, p1, d10, p10) in totals.items():
        print(f" {key:<30}{1000 * d1:>10.1f}{1000 * p1:>10.1f}{'':>11}{1000 * d10:>10.1f}{1000 * p10:>10.1f}"
              f"{d10 / p10:>13.1f}x")
    print("(* = public view reads a summary table; the others read their definition live)\n")
    print(f"{'keeping summaries current':<52}{'median ms':>10}")
    print(f"{'full refresh, 1x (import)':<52}{1000 * t_full_1:>10.1f}")
    for name, t in costs.items():
        print(f"{name:<52}{1000 * t:>10.1f}")
    d1, p1, d10, p10 = totals["all views"]
    print(f"\ngoal all views <= 0.5 s at 1x: {'met' if p1 <= 0.5 else 'MISSED'} ({p1:.2f} s, baseline {d1:.2f} s); "
          f"<= 2 s at 10x: {'met' if p10 <= 2 else 'MISSED'} ({p10:.2f} s, baseline {d10:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
