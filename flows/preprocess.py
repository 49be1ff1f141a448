"""Flow: build model inputs for the volumes of a dataset (decode once, every recipe from memory)."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from flows.retrying import transient_only

from flows.snapshot import refresh_snapshot
from tasks import input_cache, interrupt, model_inputs

_pool = None
# Set by the CLI to drive a terminal progress bar: (done, total) volumes of this flow run.
progress_hook = None


def _content_key(context, parameters) -> str:
    """Prefect cache key: the volume file's content hash + the recipes (name@version) + where outputs go.
    Not the volume's name: equal bytes give equal (shared, content-addressed) outputs, and the flow
    re-labels a cached result for the job that asked (`_for_job`)."""
    job = parameters["job"]
    digest = hashlib.sha256()
    if job.path and Path(job.path).is_file():
        with open(job.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    else:                                    # missing, or not a file: the decoder names what it is
        digest.update(f"not-a-file:{job.dataset_id}:{job.volume}:{job.path}".encode())
    recipes = ",".join(sorted(model_inputs.recipe_keys(job.recipes)))
    return f"model-inputs-{digest.hexdigest()}-{hashlib.sha256((recipes + parameters['out_root']).encode()).hexdigest()[:16]}"


@task(name="preprocess-volume", cache_key_fn=_content_key, cache_expiration=timedelta(days=30),
      persist_result=True, result_serializer="json", retries=1, retry_condition_fn=transient_only,
      task_run_name="preprocess-{job.volume}")
def preprocess_volume(job: model_inputs.VolumeJob, out_root: str, decode_cache: str | None) -> list[dict]:
    return _pool.submit(model_inputs.process_volume, job, out_root, decode_cache).result()


def _for_job(rows: list[dict], job: model_inputs.VolumeJob) -> list[dict]:
    """A result may come from the cache entry of another volume with the same bytes (another name,
    another dataset): the outputs are that content's, the rows must name this job's volume."""
    return [{**row, **job.source()} for row in rows]


def _run_name() -> str:
    params = flow_run.parameters
    only = params.get("only_volumes")
    return (f"preprocess/{params.get('dataset') or 'every-dataset'}"
            + (f" ({len(only)} volume{'s' if len(only) != 1 else ''} for a run)" if only else ""))


@flow(name="preprocess", task_runner=ThreadPoolTaskRunner(max_workers=2), flow_run_name=_run_name)
def preprocess(recipes: str = "all", db: str | None = None, dataset: str | None = None,
               volumes: list[str] | None = None, out: str | None = None, workers: int = 2,
               decode_cache: str | None = None, max_cache: str | None = None,
               only_volumes: list[str] | None = None) -> dict:
    """Skips what is already built; a bad volume is recorded as failed and the rest go on.
    `only_volumes`: build only these volumes (what an inference run lacks)."""
    global _pool
    log = get_run_logger()
    chosen = model_inputs.select_recipes(recipes)
    max_bytes = input_cache.budget(max_cache)
    out_root = model_inputs.output_root(db, out)
    jobs = model_inputs.plan(db, dataset, chosen, [Path(v).resolve() for v in volumes or []], out_root,
                             None if only_volumes is None else set(only_volumes))
    log.info("%d volume(s) need %d recipe(s); outputs under %s", len(jobs), len(chosen), out_root)
    rows: list[dict] = []
    if jobs:
        _pool = model_inputs.worker_pool(workers)
        try:
            futures = [preprocess_volume.submit(job, str(out_root), decode_cache) for job in jobs]
            step = -1
            for done, (job, future) in enumerate(zip(jobs, futures)):
                if progress_hook:
                    progress_hook(done, len(jobs))
                if 10 * done // len(jobs) > step:
                    step = 10 * done // len(jobs)
                    log.info("%d/%d volumes preprocessed", done, len(jobs))
                if interrupt.STOP.is_set() and future.wrapped_future.cancel():
                    continue                         # Ctrl-C: volumes not started are left for the next run
                result = future.result()
                if any(r["status"] == "ok" and not Path(r["path"]).is_file() for r in result):
                    # a cached result whose files were deleted since: build again
                    result = preprocess_volume.with_options(refresh_cache=True)(job, str(out_root), decode_cache)
                rows.extend(_for_job(result, job))
                if len(rows) >= 200:                 # store as we go: a crash keeps what was built
                    log.info("recorded %d model inputs", model_inputs.record(db, rows))
                    rows = []
                input_cache.evict(out_root, max_bytes)
            if progress_hook:
                progress_hook(len(jobs), len(jobs))
            log.info("%d/%d volumes preprocessed", len(jobs), len(jobs))
        finally:
            model_inputs.record(db, rows)
            input_cache.evict(out_root, max_bytes)
            _pool.shutdown()
            _pool = None
    result = model_inputs.summary(db, dataset, chosen, out_root, max_bytes, len(jobs))
    by_volume = result["failed_volumes"]
    for volume, reason in by_volume.items():
        log.info("failed input %s: %s", volume, reason)       # the caller reports them (CLI: stdout, exit 1)
    if by_volume:
        create_table_artifact(key="preprocess-failures", table=[{"volume": v, "reason": r}
                                                               for v, r in by_volume.items()])
    if jobs:
        refresh_snapshot(db)
    return result
