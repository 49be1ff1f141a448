"""Your runs ranked among the published ones, as DeepTumorVQA's leaderboard prints them: on the
CT-SpatialVQA dataset, every run of the chosen jury panel beside the five imported upstream runs
(their published predictions, counted by ctsvqa from the published verdict files, panel `upstream`)
and the eight published jury accuracies (adapters/datasets/published/), each row marked with what
it is and the jury it used."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import duckdb

from tasks.upstream_import import UPSTREAM_PANEL
from warehouse.connection import query_text

PUBLISHED = Path(__file__).resolve().parent.parent / "adapters" / "datasets" / "published" / "ct_spatialvqa_jury.json"
DATASET = "ct-spatialvqa"
YOUR_PANELS = ("paper", "offline-learned", "offline")     # which jury your runs are ranked by, first found


@dataclass
class Row:
    model: str
    accuracy: float | None
    answered: int
    questions: int
    jury: str
    kind: str                 # 'yours' | 'published predictions' | 'published figure'


@lru_cache(maxsize=1)
def published() -> dict:
    """The pinned published figures (read once per process)."""
    return json.loads(PUBLISHED.read_text())


def your_panel(con: duckdb.DuckDBPyConnection, dataset: str) -> str | None:
    panels = [p for (p,) in con.execute(
        "SELECT DISTINCT m.panel FROM model_accuracy AS m JOIN runs AS r USING (run_id) WHERE m.dataset = ? "
        "AND m.panel IS NOT NULL AND r.source <> 'upstream-import' ORDER BY 1", [dataset]).fetchall()]
    return next((p for p in YOUR_PANELS if p in panels), panels[0] if panels else None)


def leaderboard(con: duckdb.DuckDBPyConnection, dataset: str, panel: str | None = None) -> list[Row]:
    """Ranked rows, or [] when the dataset is not CT-SpatialVQA's. `panel`: the jury of your runs
    (default: paper, offline-learned, offline, whichever judged them first)."""
    if dataset != DATASET:
        return []
    panel = panel or your_panel(con, dataset)
    rows = []
    for model, source, acc, answered, nq, row_panel in con.execute(
            "SELECT m.model, r.source, m.majority_accuracy, m.n_predictions, m.n_questions, m.panel "
            "FROM model_accuracy AS m JOIN runs AS r USING (run_id) WHERE m.dataset = ? AND m.panel IS NOT NULL "
            "AND m.status <> 'judging'", [dataset]).fetchall():
        if source == "upstream-import" and row_panel == UPSTREAM_PANEL:
            rows.append(Row(model, acc, answered, nq, "their published verdicts (gpt, gemini2.5, qwen)",
                            "published predictions"))
        elif source != "upstream-import" and row_panel == panel:
            rows.append(Row(model, acc, answered, nq, f"panel {panel}", "yours"))
    pub = published()
    for r in pub["rows"]:
        rows.append(Row(r["shown_as"], r["llm_jury_accuracy"], r["count"], pub["n_questions"], pub["jury"],
                        "published figure"))
    return sorted(rows, key=lambda r: (-(r.accuracy if r.accuracy is not None else -1), r.kind, r.model))


def caveat(con: duckdb.DuckDBPyConnection, dataset: str) -> str | None:
    n = con.execute("SELECT count(*) FROM questions WHERE dataset_id = ?", [dataset]).fetchone()[0]
    full = published()["n_questions"]
    if n != full:
        return (f"note: this dataset has {n} questions; the published figures are over all {full:,}, so the "
                f"ranks are not comparable until you run the full set")
    return None


def table_rows(rows: list[Row]) -> list[dict]:
    """The rows as the terminal, the CLI headline and the HTML report show them."""
    return [{"rank": i, "model": r.model, "majority %": "—" if r.accuracy is None else f"{100 * r.accuracy:.1f}",
             "answered": f"{r.answered}/{r.questions}", "what": r.kind, "jury": r.jury}
            for i, r in enumerate(rows, start=1)]


def headline(con: duckdb.DuckDBPyConnection, dataset: str, panel: str | None) -> list[dict]:
    """Each model's jury accuracy under the report's panel, best first (the benchmark's summary)."""
    return con.execute(query_text("benchmark_headline.sql"), {"dataset": dataset, "panel": panel}).df().to_dict(
        "records")
