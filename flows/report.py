"""Flow: refresh the shareable outputs — the HTML report (charts, PNG/SVG) and the analysts' read-only
snapshot — from what the warehouse holds now. Computes no metric: the views define them."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.artifacts import create_markdown_artifact

import warehouse
from tasks.report_html import write_report
from warehouse.snapshot import default_snapshot, publish_snapshot


def _run_name() -> str:
    return f"report/{flow_run.parameters.get('dataset') or 'the-dataset'}"


@flow(name="report", flow_run_name=_run_name)
def report(db: str | None = None, out: str = "out", dataset: str | None = None, panel: str | None = None) -> dict:
    out_dir = Path(out).resolve()
    written = write_report(db, out_dir / "report", dataset=dataset, panel=panel)
    snapshot = publish_snapshot(db, default_snapshot(db))
    get_run_logger().info("report %s (panel %s), snapshot %s", written.html, written.panel, snapshot)
    create_markdown_artifact(key="report", markdown=(
        f"# ctsvqa report\n\n- report: `{written.html}` (dataset {written.dataset}, panel {written.panel})\n"
        f"- snapshot: `{snapshot}`\n- warehouse: `{warehouse.resolve_db(db)}`"))
    return {"report": str(written.html), "snapshot": str(snapshot), "panel": written.panel}
