"""How well do the offline judges agree with the published GPT / Gemini / Qwen verdicts?

    .venv/bin/python bench/offline_agreement.py [--upstream PATH] [--run m3d ...] [--tune]

Imports the shared upstream files, judges the chosen runs with the `offline` preset and prints
Cohen's kappa of every offline judge against every upstream judge and the upstream majority, from
the `judge_agreement` logic, on a held-out half of the volumes. The volumes are split by a hash of
their name: the `tune` half is the only one looked at while choosing rules and the sbert threshold
(--tune prints the threshold sweep on it); the `test` half is the one reported.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import duckdb  # noqa: E402

from adapters.judges.spec import load_panel  # noqa: E402
from tasks import judging  # noqa: E402
from tasks.upstream_import import import_upstream  # noqa: E402
from warehouse import summaries  # noqa: E402

from bench.common import DEFAULT_UPSTREAM  # noqa: E402


def split_of(volume: str) -> str:
    return "tune" if int(hashlib.sha256(volume.encode()).hexdigest(), 16) % 2 == 0 else "test"


KAPPA_SQL = """
WITH labelled AS (
    SELECT j.model, j.qid, j.judge, j.verdict, split_of(q.volume) AS split
    FROM stg_judgments j JOIN questions q ON q.qid = j.qid AND q.dataset_id = j.dataset
    WHERE j.verdict IS NOT NULL AND j.model IN (SELECT unnest($runs))
), majority AS (
    SELECT model, qid, 'upstream-majority' AS judge, majority_correct AS verdict, split_of(split_part(qid, '::', 1)) AS split
    FROM jury_verdicts WHERE panel = 'upstream' AND model IN (SELECT unnest($runs))
), everything AS (SELECT * FROM labelled UNION ALL SELECT * FROM majority),
pairs AS (
    SELECT a.split, a.judge AS offline, b.judge AS upstream, a.verdict AS va, b.verdict AS vb
    FROM everything a JOIN everything b USING (model, qid)
    WHERE a.judge IN (SELECT unnest($offline)) AND b.judge IN (SELECT unnest($upstream))
), rates AS (
    SELECT split, offline, upstream, count(*) AS n, avg((va = vb)::DOUBLE) AS po, avg(va::DOUBLE) AS pa,
           avg(vb::DOUBLE) AS pb FROM pairs GROUP BY ALL
)
SELECT split, offline, upstream, n, po, (po - (pa*pb + (1-pa)*(1-pb))) / (1 - (pa*pb + (1-pa)*(1-pb))) AS kappa
FROM rates ORDER BY split, offline, upstream
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upstream", type=Path, default=DEFAULT_UPSTREAM)
    ap.add_argument("--run", action="append", help="runs to judge (default: m3d)")
    ap.add_argument("--db", type=Path, help="reuse this warehouse (default: a fresh temporary one)")
    ap.add_argument("--tune", action="store_true", help="also print the sbert threshold sweep on the tune half")
    args = ap.parse_args()
    runs = args.run or ["m3d"]
    db = args.db or Path(tempfile.mkdtemp(prefix="ctsvqa-offline-")) / "wh.duckdb"
    import_upstream(args.upstream, db)
    panel = load_panel("offline")
    judging.register_panel(db, panel)
    for spec in panel.judges:
        s = judging.judge_runs(db, spec, runs)
        print(f"{spec.name}: {s.pending} judged ({s.distinct_sent} distinct) in {s.seconds:.1f} s, {s.statuses}")
    summaries.refresh(db)                          # as the judge flow does when it ends

    con = duckdb.connect(str(db), read_only=True)
    con.create_function("split_of", split_of, ["VARCHAR"], "VARCHAR")
    offline = [s.name for s in panel.judges]
    rows = con.execute(KAPPA_SQL, {"runs": runs, "offline": offline,
                                   "upstream": ["gpt", "gemini2.5", "qwen", "upstream-majority"]}).fetchall()
    print(f"\nCohen's kappa (agreement) vs the published judges, runs {', '.join(runs)}; "
          "held-out 'test' half of the volumes:")
    uppers = ["gpt", "gemini2.5", "qwen", "upstream-majority"]
    table = {(o, u): (n, po, k) for split, o, u, n, po, k in rows if split == "test"}
    print(f"{'offline judge':<16}" + "".join(f"{u:>24}" for u in uppers))
    for o in offline:
        cells = [table.get((o, u)) for u in uppers]
        print(f"{o:<16}" + "".join(f"{k:>10.3f} ({po:.2f}, n={n})".rjust(24) if c else f"{'—':>24}"
                                   for c in cells for n, po, k in [c or (0, 0, 0)]))
    coverage = con.execute("SELECT judge, status, count(*) FROM stg_judgments WHERE judge IN (SELECT unnest($o)) "
                           "GROUP BY ALL ORDER BY ALL", {"o": offline}).fetchall()
    print("\njudgment statuses:", coverage)
    gpt_qwen = con.execute(
        "SELECT judge_a, judge_b, n, agreement, cohen_kappa FROM judge_agreement "
        "WHERE model IN (SELECT unnest($runs)) AND judge_a IN ('gpt', 'gemini2.5', 'qwen') "
        "AND judge_b IN ('gpt', 'gemini2.5', 'qwen')", {"runs": runs}).fetchall()
    print("for scale, the published judges among themselves (all volumes):",
          [(a, b, round(k, 3)) for a, b, n, po, k in gpt_qwen])
    if args.tune:
        sweep_sbert(con, runs)
    return 0


def sweep_sbert(con: duckdb.DuckDBPyConnection, runs: list[str]) -> None:
    """Kappa of sbert against the upstream majority on the tune half, for a range of thresholds."""
    import numpy as np

    from adapters.judges.minilm import sbert_model
    from adapters.judges.text_rules import clean

    rows = con.execute(
        "SELECT v.qid, q.answer, p.text, v.majority_correct FROM jury_verdicts v "
        "JOIN questions q ON q.qid = v.qid JOIN predictions p ON p.run_id = v.run_id AND p.qid = v.qid "
        "WHERE v.panel = 'upstream' AND v.model IN (SELECT unnest($runs))", {"runs": runs}).fetchall()
    rows = [r for r in rows if split_of(r[0].split("::")[0]) == "tune"]
    t0 = time.perf_counter()
    model = sbert_model()
    emb = model.encode([clean(r[2]) for r in rows] + [r[1] for r in rows], normalize_embeddings=True,
                       batch_size=128, convert_to_numpy=True)
    cos = (emb[:len(rows)] * emb[len(rows):]).sum(axis=1)
    truth = np.array([r[3] for r in rows], dtype=float)
    print(f"\nsbert threshold sweep on the tune half (n={len(rows)}, {time.perf_counter() - t0:.0f} s):")
    for t in np.arange(0.3, 0.95, 0.05):
        pred = (cos >= t).astype(float)
        po = (pred == truth).mean()
        pe = pred.mean() * truth.mean() + (1 - pred.mean()) * (1 - truth.mean())
        print(f"  threshold {t:.2f}: kappa {(po - pe) / (1 - pe):.3f}, agreement {po:.3f}")


if __name__ == "__main__":
    sys.exit(main())
