"""Exports in the upstream CT-SpatialVQA file formats, computed from the warehouse views, plus
Parquet of every view (the same dataset and panel). Files are written to a temporary name and renamed, so a reader never sees
half a file."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import duckdb

from warehouse.snapshot import export_views_parquet

MATRIX_CSV = "correctness_matrix_avg3.csv"
JURY_JSON = "llm_jury_accuracy.json"
CATEGORY_CSV = "category_performance.csv"
TEXT_CSV, TEXT_JSON = "text_metrics_summary.csv", "text_metrics_summary.json"
# benchmarking/reports/metrics/text_metrics_summary.{csv,json} upstream: the CSV's columns sorted by
# name (pandas' default there), the JSON's keys in the order its script wrote them
TEXT_CSV_COLUMNS = ("bleu", "count", "meteor", "model", "rouge1_f", "rouge2_f", "rougeL_f", "sbert_cosine")
TEXT_JSON_KEYS = ("model", "count", "sbert_cosine", "bleu", "rouge1_f", "rouge2_f", "rougeL_f", "meteor")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def datasets(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [r[0] for r in con.execute("SELECT dataset_id FROM datasets ORDER BY dataset_id").fetchall()]


def pick_dataset(con: duckdb.DuckDBPyConnection, dataset: str | None) -> str:
    known = datasets(con)
    if dataset is not None:
        if dataset not in known:
            raise ValueError(f"unknown dataset {dataset!r}; the warehouse has {known}")
        return dataset
    if len(known) != 1:
        raise ValueError(f"the warehouse has {len(known)} datasets {known}; choose one with --dataset")
    return known[0]


def pick_panel(con: duckdb.DuckDBPyConnection, dataset: str, panel: str | None) -> str | None:
    """The jury panel to export: the one asked for, else the only one with verdicts."""
    known = [r[0] for r in con.execute(
        "SELECT DISTINCT panel FROM jury_verdicts WHERE dataset = ? ORDER BY panel", [dataset]).fetchall()]
    if panel is not None:
        if panel not in known:
            raise ValueError(f"no verdicts of panel {panel!r} in dataset {dataset!r}; panels: {known}")
        return panel
    if len(known) > 1:
        raise ValueError(f"dataset {dataset!r} has verdicts of {len(known)} jury panels {known}; choose one with --panel")
    return known[0] if known else None


def correctness_matrix_csv(con: duckdb.DuckDBPyConnection, dataset: str, panel: str | None) -> str:
    """question_id + one column per model (sorted), rows sorted as Python sorts strings (so '::10'
    precedes '::2', as upstream), cells floor(100 * yes/jury)/100 as %.2f, empty when unanswered."""
    rows = con.execute(
        "SELECT qid, model, yes_votes, jury_size FROM correctness_matrix WHERE dataset = ? AND panel = ?",
        [dataset, panel]).fetchall()
    models = sorted({m for _, m, _, _ in rows})
    # Integer arithmetic: floor(100 * 2/3) must be 66 however the float rounds.
    cells = {(q, m): f"{(100 * yes // size) / 100:.2f}" for q, m, yes, size in rows}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["question_id", *models])
    for qid in sorted({q for q, _, _, _ in rows}):
        writer.writerow([qid, *(cells.get((qid, m), "") for m in models)])
    return out.getvalue()


def llm_jury_accuracy_json(con: duckdb.DuckDBPyConnection, dataset: str, panel: str | None) -> str:
    """Upstream keys (model, count, llm_jury_accuracy = majority) plus strict accuracy and coverage."""
    rows = con.execute(
        "SELECT model, n_predictions, majority_accuracy, strict_accuracy, coverage FROM model_accuracy "
        "WHERE dataset = ? AND panel = ? ORDER BY model", [dataset, panel]).fetchall()
    return json.dumps([
        {"model": m, "count": n, "llm_jury_accuracy": maj, "strict_accuracy": strict, "coverage": cov}
        for m, n, maj, strict, cov in rows
    ], indent=2)


def category_performance_csv(con: duckdb.DuckDBPyConnection, dataset: str, panel: str | None) -> str:
    """category,count,<models>: count = questions of the dataset with that label; cells = majority
    accuracy in percent over the model's answered questions of that category."""
    counts = dict(con.execute(
        "SELECT category, count(*) FROM question_categories WHERE dataset_id = ? GROUP BY category", [dataset]
    ).fetchall())
    acc = {(c, m): a for m, c, a in con.execute(
        "SELECT model, category, majority_accuracy FROM category_accuracy WHERE dataset = ? AND panel = ?",
        [dataset, panel]).fetchall()}
    models = sorted({m for _, m in acc})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["category", "count", *models])
    for (category,) in con.execute("SELECT category FROM categories ORDER BY category").fetchall():
        writer.writerow([category, counts.get(category, 0), *(
            f"{100 * acc[(category, m)]:.2f}" if (category, m) in acc else "" for m in models)])
    return out.getvalue()


def _text_rows(con: duckdb.DuckDBPyConnection, dataset: str) -> list[dict]:
    from adapters.metrics.text import METRICS_VERSION

    cols = ", ".join(dict.fromkeys(TEXT_JSON_KEYS))
    cur = con.execute(f"SELECT {cols} FROM text_metrics WHERE dataset = ? AND metrics_version = ? ORDER BY model",
                      [dataset, METRICS_VERSION])
    return [dict(zip(TEXT_JSON_KEYS, row)) for row in cur.fetchall()]


def text_metrics_summary_csv(con: duckdb.DuckDBPyConnection, dataset: str, panel: str | None) -> str:
    """One row per scored run, upstream's columns and order (full float precision, as pandas writes)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(TEXT_CSV_COLUMNS)
    for row in _text_rows(con, dataset):
        writer.writerow(["" if row[c] is None else row[c] for c in TEXT_CSV_COLUMNS])
    return out.getvalue()


def text_metrics_summary_json(con: duckdb.DuckDBPyConnection, dataset: str, panel: str | None) -> str:
    return json.dumps(_text_rows(con, dataset), indent=2)


def export_all(con: duckdb.DuckDBPyConnection, out_dir: str | os.PathLike, dataset: str | None = None,
               panel: str | None = None) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset = pick_dataset(con, dataset)
    panel = pick_panel(con, dataset, panel)
    written = []
    for name, render in ((MATRIX_CSV, correctness_matrix_csv), (JURY_JSON, llm_jury_accuracy_json),
                         (CATEGORY_CSV, category_performance_csv), (TEXT_CSV, text_metrics_summary_csv),
                         (TEXT_JSON, text_metrics_summary_json)):
        _write_atomic(out_dir / name, render(con, dataset, panel))
        written.append(out_dir / name)
    written += export_views_parquet(con, out_dir / "parquet", dataset=dataset, panel=panel)
    return written
