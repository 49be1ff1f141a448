"""Import of an upstream CT-SpatialVQA clone: parse every file first (no lock held, nothing
written), then load everything in one warehouse transaction, so a bad file anywhere leaves the
database exactly as it was and a re-import of the same files changes nothing."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path


import duckdb

import warehouse
from adapters.datasets import upstream
from adapters.datasets.upstream import UpstreamFormatError  # noqa: F401  (the CLI's name for a bad layout)
from warehouse import loaders, summaries

SOURCE = "upstream-import"
DEFAULT_DATASET_ID = "ct-spatialvqa"
UPSTREAM_PANEL = "upstream"


@dataclass
class ImportSummary:
    dataset_id: str
    n_volumes: int
    n_questions: int
    n_category_labels: int
    predictions: dict[str, dict[str, int]] = field(default_factory=dict)          # run -> status -> n
    judgments: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)  # run -> judge -> status -> n
    stale_judgments_removed: int = 0
    unchanged: bool = False          # same files as the last import: nothing was parsed or written

    def as_rows(self) -> list[dict]:
        rows = []
        for run, statuses in self.predictions.items():
            row = {"run": run, "predictions": sum(statuses.values()), "failed": sum(
                n for s, n in statuses.items() if s != "ok")}
            for judge, counts in self.judgments.get(run, {}).items():
                row[judge] = ", ".join(f"{s} {n}" for s, n in sorted(counts.items()))
            rows.append(row)
        return rows


def run_id_for(dataset_id: str, run: str) -> str:
    return f"{dataset_id}/upstream/{run}"


def parse_dataset(layout: upstream.Layout) -> upstream.Dataset:
    return upstream.read_dataset(layout)


def parse_predictions(run: str, path: Path, dataset: upstream.Dataset,
                      qids_by_key: dict | None = None) -> upstream.Predictions:
    return upstream.read_predictions(run, path, qids_by_key or dataset.qids_by_key())


def parse_judgments(judge_name: str, path: Path, predictions: upstream.Predictions) -> upstream.Judgments:
    judge = next(j for j in upstream.UPSTREAM_JUDGES if j.name == judge_name)
    return upstream.read_judgments(judge, path, predictions)


def load(db: str | os.PathLike | None, layout: upstream.Layout, dataset: upstream.Dataset,
         predictions: list[upstream.Predictions], judgments: list[upstream.Judgments],
         dataset_id: str | None = None, fingerprint: str | None = None) -> ImportSummary:
    dataset_id = dataset_id or dataset.name or DEFAULT_DATASET_ID
    summary = ImportSummary(dataset_id, len(dataset.volumes), len(dataset.questions), len(dataset.categories))
    questions = {
        "qid": [q.qid for q in dataset.questions], "volume": [q.volume for q in dataset.questions],
        "idx": [q.idx for q in dataset.questions], "question": [q.question for q in dataset.questions],
        "answer": [q.answer for q in dataset.questions],
    }
    categories = None
    if dataset.has_categories:
        categories = {"qid": [q for q, _ in dataset.categories], "category": [c for _, c in dataset.categories]}
    root = layout.root.resolve()
    with warehouse.writer(db) as con, warehouse.transaction(con):
        loaders.replace_dataset(
            con, dataset_id=dataset_id, source="upstream-layout", source_path=str(root),
            synthetic=dataset.synthetic, description=dataset.description, volumes=dataset.volumes,
            questions=questions, categories=categories,
        )
        for preds in predictions:
            run_id = run_id_for(dataset_id, preds.run)
            rel = str(preds.path.resolve().relative_to(root))
            loaders.upsert_model(con, preds.run, description="imported from upstream CT-SpatialVQA predictions")
            loaders.upsert_run(con, run_id=run_id, dataset_id=dataset_id, name=preds.run, model_id=preds.run,
                               source=SOURCE, config={"source_file": rel})
            summary.stale_judgments_removed += loaders.replace_predictions(con, run_id, {
                "qid": [r.qid for r in preds.rows], "text": [r.text for r in preds.rows],
                "status": [r.status for r in preds.rows], "reason": [r.reason for r in preds.rows],
                "provenance": [json.dumps({"file": rel, "line": r.line}) for r in preds.rows],
            })
            summary.predictions[preds.run] = dict(Counter(r.status for r in preds.rows))
        by_run: dict[str, list[upstream.Judgments]] = {p.run: [] for p in predictions}
        for judged in judgments:
            by_run[judged.run].append(judged)
            judge = judged.judge
            loaders.upsert_judge(con, judge_id=judge.judge_id, name=judge.name, provider=judge.provider,
                                 model=judge.model, prompt_version=judge.prompt_version,
                                 settings={"source": "upstream published verdicts"}, notes=judge.notes)
            loaders.add_panel_member(con, UPSTREAM_PANEL, judge.judge_id, "the three published CT-SpatialVQA judges")
            summary.judgments.setdefault(judged.run, {})[judge.name] = dict(Counter(r.status for r in judged.rows))
        for run, files in by_run.items():
            rows = [(j.judge.judge_id, r) for j in files for r in j.rows]
            loaders.replace_judgments_from_source(con, run_id=run_id_for(dataset_id, run), source=SOURCE, rows={
                "judge_id": [jid for jid, _ in rows], "qid": [r.qid for _, r in rows],
                "verdict": [r.verdict for _, r in rows], "status": [r.status for _, r in rows],
                "reason": [r.reason for _, r in rows], "raw_response": [r.raw_response for _, r in rows],
            })
        if fingerprint:
            con.execute("INSERT OR REPLACE INTO import_fingerprints (dataset_id, fingerprint, summary) VALUES (?, ?, ?)",
                        [dataset_id, fingerprint, json.dumps(asdict(summary))])
        summaries.refresh(con)        # in the same transaction: readers never see stale summaries
    return summary


# What can change an import besides its files: the code that parses and loads them.
_IMPORTER_CODE = (Path(upstream.__file__), Path(__file__), Path(loaders.__file__))


def fingerprint(layout: upstream.Layout, dataset_id: str | None) -> str | None:
    """sha256 over the importer's code, the dataset id asked for, the folder, and every input
    file's role and bytes; None when a file cannot be read (parsing will then say why)."""
    h = hashlib.sha256(f"{dataset_id}\0{layout.root.resolve()}\0".encode())
    manifest = layout.root / upstream.MANIFEST_JSON          # it names the dataset: part of what was imported
    files = [("code", p) for p in _IMPORTER_CODE] + [("dataset", layout.dataset), ("categories", layout.categories)]
    files += [("manifest", manifest if manifest.exists() or manifest.is_symlink() else None)]
    files += sorted((f"predictions:{run}", p) for run, p in layout.predictions.items())
    files += sorted((f"judgments:{run}:{judge}", p) for (run, judge), p in layout.judgments.items())
    try:
        for role, path in files:
            h.update(f"{role}\0{path}\0".encode())
            if path is not None:
                if not Path(path).is_file():            # a FIFO would block open(); parsing names the problem
                    return None
                with open(path, "rb") as f:
                    h.update(hashlib.file_digest(f, "sha256").digest())
    except (OSError, ValueError):
        return None
    return h.hexdigest()


def previous_import(db: str | os.PathLike | None, fp: str | None) -> ImportSummary | None:
    """The summary stored with this fingerprint, if the warehouse holds an import of these files."""
    if fp is None or not warehouse.resolve_db(db).is_file():
        return None
    try:
        with warehouse.reader(db) as con:
            row = con.execute("SELECT summary FROM import_fingerprints WHERE fingerprint = ?", [fp]).fetchone()
    except (warehouse.WarehouseError, duckdb.CatalogException):
        return None                  # no warehouse yet, or one from before the fingerprints table
    return ImportSummary(**{**json.loads(row[0]), "unchanged": True}) if row else None


def imported_already(root: str | os.PathLike, db: str | os.PathLike | None = None,
                     dataset_id: str | None = None) -> ImportSummary | None:
    """The stored summary when the warehouse holds an import of exactly these files (a bad layout
    raises UpstreamFormatError, in its own words)."""
    return previous_import(db, fingerprint(upstream.discover(root), dataset_id))


@dataclass(frozen=True)
class Steps:
    """How each step is called: plainly here, as Prefect tasks by the flow. One wiring for both."""
    parse_dataset: Callable = parse_dataset
    parse_predictions: Callable = parse_predictions
    parse_judgments: Callable = parse_judgments
    load: Callable = load


def import_upstream(root: str | os.PathLike, db: str | os.PathLike | None = None,
                    dataset_id: str | None = None, steps: Steps = Steps()) -> ImportSummary:
    """The whole import: skipped when the warehouse already holds an import of exactly these files,
    else every file parsed, then everything loaded in one transaction."""
    layout = upstream.discover(root)
    fp = fingerprint(layout, dataset_id)
    if (done := previous_import(db, fp)) is not None:
        return done
    dataset = steps.parse_dataset(layout)
    index = dataset.qids_by_key()
    preds = {run: steps.parse_predictions(run, p, dataset, index) for run, p in layout.predictions.items()}
    judged = [steps.parse_judgments(judge, p, preds[run]) for (run, judge), p in layout.judgments.items()]
    return steps.load(db, layout, dataset, list(preds.values()), judged, dataset_id, fp)
