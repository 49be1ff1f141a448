"""Flow: load an upstream CT-SpatialVQA clone (or anything in its layout) into the warehouse."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.utilities.annotations import quote

from flows.snapshot import refresh_snapshot
from flows.artifacts import publish_accuracy
from tasks import upstream_import as ui
from warehouse import WarehouseLocked


# The Prefect wrappers of the plain steps (here, not in tasks/, so that `ctsvqa import-upstream` can
# tell an unchanged import without importing Prefect). Parsed files are large in-memory objects:
# hashing them for a cache key would cost more than parsing again, so these tasks are never cached.
parse_dataset_task = task(ui.parse_dataset, name="parse-dataset", cache_policy=NO_CACHE)
parse_predictions_task = task(ui.parse_predictions, name="parse-predictions", cache_policy=NO_CACHE,
                              task_run_name="parse-predictions-{run}")
parse_judgments_task = task(ui.parse_judgments, name="parse-judgments", cache_policy=NO_CACHE,
                            task_run_name="parse-judgments-{path.name}")


def _only_lock_errors(task, task_run, state) -> bool:
    try:
        state.result()
    except WarehouseLocked:
        return True
    except Exception:
        return False
    return False


load_task = task(ui.load, name="load-warehouse", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5,
                 retry_condition_fn=_only_lock_errors)


def _passed_as_is(task):
    """Call `task` with its large arguments (parsed files, the layout) wrapped in `quote()`: Prefect
    otherwise walks every object inside them, which cost 25 s of the 7 s import."""
    def call(*args):
        return task(*(a if isinstance(a, (str, Path, type(None))) else quote(a) for a in args))
    return call


TASK_STEPS = ui.Steps(parse_dataset=_passed_as_is(parse_dataset_task),
                      parse_predictions=_passed_as_is(parse_predictions_task),
                      parse_judgments=_passed_as_is(parse_judgments_task),
                      load=_passed_as_is(load_task))


def _run_name() -> str:
    params = flow_run.parameters
    return f"import-upstream/{params.get('dataset') or Path(params['path']).resolve().name}"


@flow(name="import-upstream", flow_run_name=_run_name)
def import_upstream(path: str, db: str | None = None, dataset: str | None = None) -> dict:
    """Parse every file first, then load all of it in one transaction (all or nothing); skipped when
    the warehouse already holds an import of exactly these files."""
    log = get_run_logger()
    summary = ui.import_upstream(path, db, dataset, steps=TASK_STEPS)
    if summary.unchanged:
        log.info("dataset %s: the files are unchanged since the last import; nothing parsed or written",
                 summary.dataset_id)
    else:
        log.info("loaded dataset %s: %d volumes, %d questions, %d runs",
                 summary.dataset_id, summary.n_volumes, summary.n_questions, len(summary.predictions))
        if summary.predictions:
            create_table_artifact(key="upstream-import", table=summary.as_rows(),
                                  description=f"Upstream import into dataset {summary.dataset_id}")
    publish_accuracy(db, dataset=summary.dataset_id)
    if not summary.unchanged:
        refresh_snapshot(db)
    return asdict(summary)
