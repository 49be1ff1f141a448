"""Text metrics as plain functions: score the answered predictions that have no score for their current
text, store them in chunks (one transaction each, so a killed run keeps what it scored), then recompute
each touched run's corpus BLEU over exactly its kept pairs."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import pyarrow as pa

import warehouse
from adapters.metrics import text
from warehouse.connection import query_text

log = logging.getLogger("ctsvqa.scoring")
CHUNK = 2000

SCORE_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("qid", pa.string()), ("metrics_version", pa.string()), ("pair_sha256", pa.string()),
    ("kept", pa.bool_()), ("rouge1_f", pa.float64()), ("rouge2_f", pa.float64()), ("rougeL_f", pa.float64()),
    ("meteor", pa.float64()), ("sbert_cosine", pa.float64()), ("exact_match", pa.bool_())])


@dataclass
class ScoreSummary:
    runs: list[str] = field(default_factory=list)
    scored: int = 0
    skipped_empty: int = 0
    seconds: float = 0.0


def resolve_runs(db, names: Sequence[str] | None) -> list[str]:
    """Run ids for the given run names (all runs when none); an unknown name is an error listing the known."""
    with warehouse.reader(db) as con:
        rows = con.execute("SELECT run_id, name FROM runs ORDER BY name, run_id").fetchall()
    if not names:
        return [run_id for run_id, _ in rows]
    unknown = sorted(set(names) - {name for _, name in rows})
    if unknown:
        known = ", ".join(sorted({name for _, name in rows})) or "none"
        raise ValueError(f"unknown run(s) {', '.join(unknown)}; known runs: {known}")
    return [run_id for run_id, name in rows if name in set(names)]


def score_rows(rows: Sequence[tuple]) -> dict[str, list]:
    """(run_id, qid, reference, prediction, pair_sha256) -> columns of text_scores."""
    cols: dict[str, list] = {name: [] for name in SCORE_SCHEMA.names}
    kept_refs, kept_preds, kept_at = [], [], []
    for run_id, qid, reference, prediction, pair_sha in rows:
        ref, hyp = text.normalise(reference), text.normalise(prediction)
        kept = bool(ref and hyp)
        scores = text.pair_scores(ref, hyp) if kept else None
        for name, value in (("run_id", run_id), ("qid", qid), ("metrics_version", text.METRICS_VERSION),
                            ("pair_sha256", pair_sha), ("kept", kept),
                            ("rouge1_f", scores and scores.rouge1_f), ("rouge2_f", scores and scores.rouge2_f),
                            ("rougeL_f", scores and scores.rougeL_f), ("meteor", scores and scores.meteor),
                            ("sbert_cosine", None), ("exact_match", scores.exact_match if scores else None)):
            cols[name].append(value)
        if kept:
            kept_refs.append(ref)
            kept_preds.append(hyp)
            kept_at.append(len(cols["qid"]) - 1)
    for i, cosine in zip(kept_at, text.sbert_cosines(kept_refs, kept_preds)):
        cols["sbert_cosine"][i] = cosine
    return cols


def store_scores(db, cols: dict[str, list]) -> None:
    table = pa.Table.from_pydict(cols, schema=SCORE_SCHEMA)
    with warehouse.writer(db) as con, warehouse.transaction(con):
        con.register("new_scores", table)
        con.execute("INSERT OR REPLACE INTO text_scores BY NAME SELECT * FROM new_scores")
        con.unregister("new_scores")


def refresh_bleu(db, run_id: str) -> float | None:
    """Corpus BLEU over the run's kept pairs, stored with the hash of the set it describes."""
    query = query_text("text_kept_pairs.sql").rstrip().rstrip(";")
    params = {"run_id": run_id, "version": text.METRICS_VERSION}
    with warehouse.reader(db) as con:
        pairs = con.execute(query, params).fetchall()
        digest = con.execute(f"SELECT sha256(string_agg(qid || ':' || pair_sha256, ',' ORDER BY qid)) "
                             f"FROM ({query})", params).fetchone()[0]
    bleu = text.corpus_bleu([text.normalise(r) for _, r, _, _ in pairs],
                            [text.normalise(p) for _, _, p, _ in pairs]) if pairs else None
    with warehouse.writer(db) as con, warehouse.transaction(con):
        con.execute("INSERT OR REPLACE INTO text_corpus_scores (run_id, metrics_version, n_pairs, pairs_sha256, bleu) "
                    "VALUES (?, ?, ?, ?, ?)", [run_id, text.METRICS_VERSION, len(pairs), digest or "", bleu])
    return bleu


def score_runs(db, names: Sequence[str] | None = None,
               progress: Callable[[int, int], None] | None = None) -> ScoreSummary:
    t0 = time.perf_counter()
    run_ids = resolve_runs(db, names)
    summary = ScoreSummary(runs=run_ids)
    if not run_ids:
        return summary
    with warehouse.writer(db) as con:             # migrates an older warehouse before the first read
        rows = con.execute(query_text("text_pairs.sql"),
                           {"run_ids": run_ids, "version": text.METRICS_VERSION}).fetchall()
    for start in range(0, len(rows), CHUNK):
        cols = score_rows(rows[start:start + CHUNK])
        store_scores(db, cols)
        summary.scored += len(cols["qid"])
        summary.skipped_empty += cols["kept"].count(False)
        if progress:
            progress(summary.scored, len(rows))
    touched = sorted({r[0] for r in rows})
    with warehouse.reader(db) as con:
        have = {r for (r,) in con.execute("SELECT run_id FROM text_corpus_scores WHERE metrics_version = ?",
                                          [text.METRICS_VERSION]).fetchall()}
    for run_id in sorted(set(touched) | (set(run_ids) - have)):
        refresh_bleu(db, run_id)
    summary.seconds = round(time.perf_counter() - t0, 2)
    return summary


def text_metric_rows(db, run_ids: Sequence[str]) -> list[dict]:
    """The text_metrics view's rows for these runs (without their ids), by data set and model."""
    with warehouse.reader(db) as con:
        table = con.execute("SELECT * FROM text_metrics WHERE list_contains(?, run_id) ORDER BY dataset, model",
                            [list(run_ids)]).df()
    return table.drop(columns=["run_id"]).to_dict("records")
