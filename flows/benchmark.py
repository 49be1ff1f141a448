"""The main job: data set -> preprocess -> infer -> judge -> score -> report, each stage a sub-flow that
does only the missing work, so a second call is quick and a killed call resumes where it stopped."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

import warehouse
from flows.import_upstream import import_upstream
from flows.infer import infer
from flows.judge import judge
from flows.preprocess import preprocess
from flows.score import score
from warehouse import WarehouseLocked
from warehouse.leases import LeaseHeld
from tasks import interrupt, judging, model_inputs
from tasks.benchmark_config import BenchmarkConfig, PhantomSet, describe, load_config
from tasks.phantom_sets import ensure_phantom_set


@task(name="phantom-set", cache_policy=NO_CACHE)
def phantom_set(spec: PhantomSet, out: str) -> str:
    return str(ensure_phantom_set(spec, out))


def _infer_params(m: dict) -> dict:
    params = {k: v for k, v in m.items() if k in ("model", "name", "checkpoint", "device", "dtype", "seed",
                                                   "options", "ablate", "limit_volumes")}
    if "batch_size" in m:
        params["batch_size"] = int(m["batch_size"])
    return params


def _recipes(models: list[dict]) -> list[str]:
    from tasks.answering import InferRequest, build_adapter

    out = []
    for m in models:
        adapter = build_adapter(InferRequest(**_infer_params(m)))      # the adapter its run will use
        if adapter.recipe and adapter.recipe not in out:
            out.append(adapter.recipe)
    return out


def _imported_already(source: str, db, dataset: str | None) -> dict | None:
    from dataclasses import asdict

    from tasks.upstream_import import imported_already

    try:
        done = imported_already(source, db, dataset)
    except Exception:  # noqa: BLE001  (the import sub-flow reports a bad layout in its own words)
        return None
    return asdict(done) if done is not None else None


def _plan(db, dataset: str, params: dict):
    """The run's plan, or None when it cannot be made here (a model that cannot be built, a name taken:
    the infer sub-flow reports the problem in its own words)."""
    from tasks.inference import InferRequest, plan_run

    try:
        return plan_run(db, InferRequest(dataset=dataset, **params))
    except Exception:  # noqa: BLE001
        return None


def _interrupted(dataset: str, stage: str, left: str) -> dict:
    get_run_logger().warning("interrupted in %s; left: %s", stage, left)
    return {"dataset": dataset, "interrupted": stage, "left": left}


def _run_name() -> str:
    config = flow_run.parameters.get("config")
    return f"benchmark/{Path(config).stem if config else 'default'}"


@flow(name="benchmark", flow_run_name=_run_name)
def benchmark(config: str | None = None, db: str | None = None, out: str | None = None) -> dict:
    from tasks.answering import one_adapter_per_request

    with one_adapter_per_request():      # each model's adapter: built once for its recipe, plan and run
        return _benchmark(config, db, out)


def _benchmark(config: str | None, db, out: str | None) -> dict:
    log = get_run_logger()
    cfg: BenchmarkConfig = load_config(config)
    out_dir = Path(out or "out").resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info("benchmark: %s", describe(cfg))

    source = phantom_set(cfg.phantoms, str(out_dir)) if cfg.phantoms else cfg.upstream
    # A stage with nothing to do is not started as a sub-flow (each costs about a second of Prefect's
    # bookkeeping): a second call of the same benchmark takes seconds. The log says what was skipped.
    if (done := _imported_already(source, db, cfg.dataset)) is not None:
        log.info("import: the files are unchanged since the last import; nothing to do")
        imported = done
    else:
        imported = import_upstream(path=source, db=db, dataset=cfg.dataset)
    dataset = imported["dataset_id"]

    recipes = _recipes(cfg.models)
    if recipes and model_inputs.missing_for(db, dataset, recipes, cfg.volumes):
        preprocess(recipes=",".join(recipes), db=db, dataset=dataset, volumes=cfg.volumes or None)
    elif recipes:
        log.info("preprocess: every model input is built and current; nothing to do")
    if interrupt.STOP.is_set():
        return _interrupted(dataset, "preprocess", "model inputs")

    runs, failures = [], []
    for m in cfg.models:
        params = _infer_params(m)
        plan = _plan(db, dataset, params)
        if plan is not None and plan.exists and not plan.pending:
            log.info("infer %s: every prediction is stored; nothing to do", plan.name)
            runs.append(plan.name)
            continue
        state = infer(db=db, dataset=dataset, return_state=True, plan=plan.ref() if plan else None, **params)
        if state.is_failed() and isinstance(exc := state.result(raise_on_failure=False), (LeaseHeld, WarehouseLocked)):
            # the warehouse is held (an analyst's connection, another session): every later stage would
            # fail or report stale numbers, so stop here with the one line that says who holds it
            raise exc
        if state.is_failed():
            failures.append(f"{m['model']}: {state.message}")
            log.warning("model %s failed: %s", m["model"], state.message)
        else:
            row = state.result()
            runs.append(row["run"])
            if row["interrupted"]:
                return _interrupted(dataset, f"infer {row['run']}", f"{row['left']} answer(s)")
        if interrupt.STOP.is_set():
            return _interrupted(dataset, f"infer {m.get('name') or m['model']}", "the models after it")

    juries, skipped = [], []
    for spec in cfg.judges:
        panel, why = judging.panel_ready(spec)
        if why is not None:
            skipped.append(f"{spec}: {why}")
            log.warning("jury %s skipped: %s", spec, why)
            continue
        if judging.nothing_to_judge(db, panel, runs):
            log.info("judge %s: every prediction is judged; nothing to do", spec)
            juries.append(spec)
            continue
        rows = judge(judges=spec, runs=runs or None, db=db, panel=panel.ref())
        juries.append(spec)
        if interrupt.STOP.is_set():
            return _interrupted(dataset, f"judge {spec}", f"{sum(r['left'] for r in rows)} judgment(s)")

    score(runs=runs or None, db=db)

    from tasks.report_html import write_report
    from warehouse.snapshot import default_snapshot, publish_snapshot

    report = write_report(db, out_dir / "report", dataset=dataset)
    snapshot = publish_snapshot(db, default_snapshot(db))
    from tasks import leaderboard

    with warehouse.reader(db) as con:
        board = leaderboard.table_rows(leaderboard.leaderboard(con, dataset))
        caveat = leaderboard.caveat(con, dataset) if board else None
        headline = leaderboard.headline(con, dataset, report.panel)
    create_table_artifact(key="benchmark-accuracy", table=headline,
                          description=f"Jury accuracy, dataset {dataset}, panel {report.panel}")
    create_markdown_artifact(key="benchmark-report", markdown=(
        f"# ctsvqa benchmark\n\n- report: `{report.html}`\n- warehouse: `{warehouse.resolve_db(db)}`\n"
        f"- snapshot: `{snapshot}`\n- {describe(cfg)}"))
    return {"dataset": dataset, "panel": report.panel, "report": str(report.html), "snapshot": str(snapshot),
            "db": str(warehouse.resolve_db(db)), "headline": headline, "failures": failures, "skipped": skipped,
            "runs": runs, "juries": juries, "interrupted": None, "leaderboard": board, "leaderboard_note": caveat}
