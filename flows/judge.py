"""Flow: judge the predictions of some runs with a panel of judges (a judges file or a preset)."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from flows.snapshot import refresh_snapshot
from flows.artifacts import publish_accuracy
from tasks import judging
from tasks.judging import JudgeSpec, Panel
from warehouse import summaries
from flows.retrying import transient_only

# Set by the CLI to drive a terminal progress bar; tasks run in threads of the same process.
progress_hook: judging.ProgressFn | None = None


@task(name="judge-runs", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10, retry_condition_fn=transient_only,
      task_run_name="judge-{spec.name}")
def judge_task(db: str | None, spec: JudgeSpec, runs: list[str] | None, retry_failed: bool,
               wait: bool = False) -> judging.JudgeSummary:
    log = get_run_logger()
    step = [0]

    def report(name: str, done: int, total: int) -> None:
        if progress_hook:
            progress_hook(name, done, total)
        decile = 10 * done // max(total, 1)
        if decile > step[0] or done == total:
            step[0] = decile
            log.info("%s: %d/%d judged", name, done, total)

    summary = judging.judge_runs(db, spec, runs, retry_failed, progress=report, wait=wait)
    log.info("%s: %d pending, %d from cache, %d distinct items sent in %d calls, statuses %s",
             spec.name, summary.pending, summary.from_cache, summary.distinct_sent, summary.calls, summary.statuses)
    return summary


def _run_name() -> str:
    judges = str(flow_run.parameters.get("judges") or "offline")
    return "judge/" + (judges.rsplit("/", 1)[-1].removesuffix(".yaml").removesuffix(".yml"))


@flow(name="judge", task_runner=ThreadPoolTaskRunner(max_workers=4),
      flow_run_name=_run_name)
def judge(judges: str = "offline", runs: list[str] | None = None, db: str | None = None,
          retry_failed: bool = False, dry_run: bool = False, wait: bool = False,
          panel: dict | None = None) -> list[dict]:
    """Every judge of the panel works in parallel; each stores its results as they complete. `panel`:
    the panel the caller loaded and checked, with its runs (`Panel.ref()`, the CLI's and the
    benchmark's, which also checked its keys), so the flow does not load and check it again."""
    log = get_run_logger()
    checked_by_caller = panel is not None        # the panel, its runs and its keys
    if checked_by_caller:
        panel = Panel.from_ref(panel)
    else:
        panel = judging.load_panel(judges)
        judging.require_runs(db, runs)
    if dry_run:
        rows = judging.forecast(db, panel, runs, retry_failed)
        log.info("forecast (nothing sent):\n%s", judging.format_forecast(rows))
        create_table_artifact(key="judge-forecast", table=rows, description=f"Forecast for panel {panel.name}")
        return rows
    if not checked_by_caller:
        judging.check_keys(panel)
    judging.register_panel(db, panel)
    futures = [judge_task.submit(db, spec, runs, retry_failed, wait) for spec in panel.judges]
    rows, failed = [], []
    for spec, future in zip(panel.judges, futures):
        result = future.result(raise_on_failure=False)      # let every judge finish before failing
        if isinstance(result, BaseException):
            failed.append((spec.name, result))
        else:
            rows.append(judging.summary_row(result))
    summaries.refresh(db)          # the metric views read summary tables: bring them up to date
    if rows:
        create_table_artifact(key="judge-summary", table=rows, description=f"Judging with panel {panel.name}")
        publish_accuracy(db, panel=panel.name)
    refresh_snapshot(db)
    if any(r["interrupted"] for r in rows):
        log.warning("interrupted: %d judged, %d left", sum(r["judged"] for r in rows), sum(r["left"] for r in rows))
    for r in rows:
        if r["all_calls_failed"]:
            log.error("judge %s: all %d calls failed: %s", r["judge"], r["calls_failed"], r["first_error"])
    if failed:
        raise failed[0][1] if len(failed) == 1 else RuntimeError(
            "; ".join(f"judge {name}: {type(exc).__name__}: {exc}" for name, exc in failed))
    return rows
