"""The last step of every flow: refresh the analysts' read-only snapshot (warehouse.snapshot), so a
notebook that opens it sees what the flow just stored without ever holding the warehouse's lock.
A sub-flow leaves it to its parent, which publishes once at its end."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.context import FlowRunContext

from warehouse.snapshot import default_snapshot, publish_snapshot


@task(name="publish-snapshot", retries=1, retry_delay_seconds=5)
def publish_snapshot_task(db: str | None) -> str:
    return str(publish_snapshot(db, default_snapshot(db)))


def refresh_snapshot(db: str | None) -> str | None:
    """The snapshot's path, or None when this is a sub-flow or the copy could not be made (a warning:
    the flow's own results are stored either way, and the next flow or `ctsvqa db snapshot` retries)."""
    ctx = FlowRunContext.get()
    if ctx is not None and ctx.flow_run is not None and ctx.flow_run.parent_task_run_id is not None:
        return None
    try:
        return publish_snapshot_task(db)
    except Exception as exc:  # noqa: BLE001  (a snapshot is a convenience copy; never fail the flow's work for it)
        get_run_logger().warning("snapshot not refreshed: %s: %s", type(exc).__name__, exc)
        return None
