"""Flow: run one model configuration over a dataset (resumable; see tasks/inference.py)."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Failed

from flows.snapshot import refresh_snapshot
from flows.preprocess import preprocess
from tasks import inference
from tasks.answering import AdapterError, one_adapter_per_request
from tasks.inference import InferenceError, InferRequest
from warehouse import WarehouseLocked
from warehouse.leases import LeaseHeld

# Set by the CLI to drive a terminal progress bar: (run label, done, total); the answer task runs in
# this process.
progress_hook = None


@task(name="plan-inference", cache_policy=NO_CACHE)
def plan_task(db: str | None, request: InferRequest, sharded: bool = False, plan: dict | None = None) -> dict:
    """The run's plan as a reference (`RunPlan.ref`) and the inputs still to build. A plan the caller
    made (the CLI, to fail fast) is taken as it is: only what is pending is read again."""
    if plan is None:
        made = inference.plan_run(db, request, device_here=not sharded)
    else:
        made = inference.replan(db, inference.RunPlan.from_ref(plan), request)
    return {**made.ref(), "missing_inputs": inference.missing_inputs(db, made)}


@task(name="answer", cache_policy=NO_CACHE, task_run_name="answer-{request.model}")
def answer_task(db: str | None, request: InferRequest, sharding: dict | None = None,
                plan: dict | None = None) -> inference.InferSummary:
    """Loads the model and answers every pending question in this one task, so the model object
    never crosses a task boundary. With `sharding` (devices / gpus / ray_address) the model loads
    once per GPU in Ray actors (tasks/sharding.py) and their rows come back to this task, which alone
    writes the warehouse."""
    log = get_run_logger()
    step = [-1]

    def report(done: int, total: int) -> None:
        if progress_hook:
            progress_hook(request.name or request.model, done, total)
        decile = 10 * done // max(total, 1)
        if decile > step[0]:
            step[0] = decile
            log.info("%s: %d/%d questions answered", request.model, done, total)

    shards = None
    if sharding:
        from tasks.sharding import sharding_from

        try:
            shards = sharding_from(sharding.get("devices"), sharding.get("gpus"), sharding.get("ray_address"))
        except ValueError as exc:
            return Failed(message=str(exc))
    try:
        return inference.run_inference(db, request, progress=report, flow_run_id=str(flow_run.get_id() or ""),
                                       build_missing=False, sharding=shards,
                                       plan=inference.RunPlan.from_ref(plan) if plan else None)
    except (AdapterError, InferenceError) as exc:
        # a configuration problem (e.g. a checkpoint that does not load): a failed state with one
        # clear line, no traceback, since there is no bug to debug
        return Failed(message=str(exc))


def _run_name() -> str:
    """infer/<run name>: the --name, else the model's name (a module:Class model's class), as the run is
    named in the warehouse, so a benchmark's model runs tell apart in the UI."""
    params = flow_run.parameters
    if params.get("name"):
        return f"infer/{params['name']}"
    model = str(params.get("model", "")).rsplit(":", 1)[-1]
    return f"infer/{model}" + ("-shuffled" if params.get("ablate") == "shuffle-volumes" else "")


@flow(name="infer", flow_run_name=_run_name)
def infer(model: str, checkpoint: str | None = None, name: str | None = None, dataset: str | None = None,
          device: str = "cpu", dtype: str | None = None, batch_size: int = 8, limit_volumes: int | None = None,
          seed: int = 0, options: dict | None = None, ablate: str | None = None, retry_failed: bool = False,
          db: str | None = None, code_dir: str | None = None, devices: list[str] | str | None = None,
          gpus: int | None = None, ray_address: str | None = None, env: str | None = None, wait: bool = False,
          plan: dict | None = None) -> dict:
    """Same configuration: resumes the stored run; a missing model input is built first (that recipe,
    those volumes only). Ends Failed (with a one-line message) when the model cannot be loaded or every
    question of this session failed; otherwise returns the summary row. `devices` (cuda:0,cuda:1 of
    this host) or `gpus` (N, on `ray_address`/$RAY_ADDRESS or a local Ray) shard the volumes over one
    model replica per GPU. Another session holding the run: LeaseHeld (or, with `wait`, it waits).
    `plan`: the run planned by the caller (`RunPlan.ref()`), so the flow does not plan it again."""
    with one_adapter_per_request():      # the CLI's adapter, the plan's and the run's: one
        log = get_run_logger()
        request = InferRequest(model=model, checkpoint=checkpoint, name=name, dataset=dataset, device=device,
                               dtype=dtype, batch_size=batch_size, limit_volumes=limit_volumes, seed=seed,
                               options=dict(options or {}), ablate=ablate, retry_failed=retry_failed,
                               code_dir=code_dir, env=env, wait=wait)
        sharded = devices is not None or gpus is not None or bool(ray_address)
        info = plan_task(db, request, sharded, plan)
        log.info("run %s (%s) on %s: %d question(s) to answer%s", info["name"], info["run_id"], info["dataset_id"],
                 info["n_pending"], " (resuming)" if info["exists"] else "")
        if info["missing_inputs"]:
            log.info("building the %s input of %d volume(s) first", info["recipe"], len(info["missing_inputs"]))
            preprocess(recipes=info["recipe"], db=db, dataset=info["dataset_id"], only_volumes=info["missing_inputs"])
        sharding = ({"devices": devices, "gpus": gpus, "ray_address": ray_address}
                    if devices is not None or gpus is not None or ray_address else None)
        plan = {k: v for k, v in info.items() if k != "missing_inputs"}
        state = answer_task(db, request, sharding, plan, return_state=True)
        if state.is_failed():
            if isinstance(exc := state.result(raise_on_failure=False), (LeaseHeld, WarehouseLocked)):
                raise exc                # the warehouse, not the model: a caller (the benchmark) stops on it
            return Failed(message=state.message)
        summary = state.result()
        refresh_snapshot(db)             # failures are data too: stored either way
        row = summary.row()
        create_table_artifact(key="infer-summary", table=[row],
                              description=f"Inference run {summary.name} ({summary.run_id}) on {summary.dataset_id}")
        log.info("%s: %d ok, %d error of %d in %.1f s%s", summary.name, summary.ok, summary.error, summary.pending,
                 summary.seconds, f"; interrupted, {summary.left} left" if summary.interrupted else "")
        if summary.all_failed:
            return Failed(message=f"every one of the {summary.pending} question(s) failed in run {summary.name}; "
                                  f"first reason: {next(iter(summary.reasons), 'unknown')}")
        return row
