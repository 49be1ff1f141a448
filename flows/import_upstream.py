"""Flow: load an upstream CT-SpatialVQA clone (or anything in its layout) into the warehouse."""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from adapters.datasets import upstream
from tasks.upstream_import import load_task, parse_dataset_task, parse_judgments_task, parse_predictions_task
from warehouse import summaries


@flow(name="import-upstream", validate_parameters=False)
def import_upstream(path: str, db: str | None = None, dataset: str | None = None) -> dict:
    """Parse every file first, then load all of it in one transaction (all or nothing)."""
    log = get_run_logger()
    layout = upstream.discover(path)
    log.info("found %d prediction file(s) and %d judge file(s) under %s",
             len(layout.predictions), len(layout.judgments), layout.root)
    parsed = parse_dataset_task(layout)
    index = parsed.qids_by_key()
    preds = {run: parse_predictions_task(run, p, parsed, index) for run, p in layout.predictions.items()}
    judged = [parse_judgments_task(judge, p, preds[run]) for (run, judge), p in layout.judgments.items()]
    summary = load_task(db, layout, parsed, list(preds.values()), judged, dataset)
    summaries.refresh(db)          # a no-op after load (it refreshes in its transaction); kept for safety
    log.info("loaded dataset %s: %d volumes, %d questions, %d runs",
             summary.dataset_id, summary.n_volumes, summary.n_questions, len(summary.predictions))
    if summary.predictions:
        create_table_artifact(key="upstream-import", table=summary.as_rows(),
                              description=f"Upstream import into dataset {summary.dataset_id}")
    return asdict(summary)
