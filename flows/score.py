"""Flow: text metrics for runs in the warehouse (only what is not scored yet)."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows.retrying import transient_only

from flows.snapshot import refresh_snapshot
from tasks import scoring, statistics


@task(name="score-text", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5, retry_condition_fn=transient_only)
def score_task(db: str | None, runs: list[str] | None) -> scoring.ScoreSummary:
    log = get_run_logger()
    step = [0]

    def report(done: int, total: int) -> None:
        decile = 10 * done // max(total, 1)
        if decile > step[0] or done == total:
            step[0] = decile
            log.info("%d/%d predictions scored", done, total)

    return scoring.score_runs(db, runs, progress=report)


@task(name="statistics", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5, retry_condition_fn=transient_only)
def statistics_task(db: str | None) -> dict[str, int]:
    counts = statistics.refresh_statistics(db)
    get_run_logger().info("%d bootstrap intervals, %d McNemar comparisons", counts["intervals"],
                          counts["comparisons"])
    return counts


def _run_name() -> str:
    runs = flow_run.parameters.get("runs")
    return "score/" + (",".join(runs) if runs else "all-runs")


@flow(name="score", flow_run_name=_run_name)
def score(runs: list[str] | None = None, db: str | None = None) -> list[dict]:
    """Text metrics of the runs (only what is not scored yet), then every run's statistics."""
    summary = score_task(db, runs)
    statistics_task(db)
    rows = scoring.text_metric_rows(db, summary.runs)
    get_run_logger().info("scored %d prediction(s) in %.1f s", summary.scored, summary.seconds)
    refresh_snapshot(db)
    if rows:
        create_table_artifact(key="text-metrics", table=rows, description="text metrics per run")
    return rows
