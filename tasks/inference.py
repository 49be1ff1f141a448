"""Inference as plain functions: plan a run from a model configuration, build the inputs it lacks,
load the model once, hand it each volume's input with that volume's pending questions, and store
the predictions as volumes finish. Killed at any moment and run again, it answers only the qids
without a stored prediction; a question or volume that fails is stored as 'error' with the reason."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pyarrow as pa

import warehouse
from adapters.models.base import (
    AdapterError, DatasetQuestion, ModelAdapter, ModelInput, Question, identity_hash,
)
from adapters.models.recipes import RECIPES
from tasks import interrupt
from tasks.answering import (  # noqa: F401  (re-exported: the flows and tests use them as inference.*)
    ABLATIONS, InferenceError, InferRequest, WorkItem, answer_group, answer_here, answer_item, answer_streamed,
    answer_volume, answer_volumes, check_device, failed_rows, load_adapter, make_adapter, read_input, source_changed,
    volumes_per_call,
)
from warehouse import leases, loaders, summaries
from warehouse.connection import query_text

SOURCE = "inference"
log = logging.getLogger("ctsvqa.inference")

ProgressFn = Callable[[int, int], None]            # (done, total) questions of this session


@dataclass
class RunPlan:
    run_id: str
    name: str
    dataset_id: str
    model: str
    recipe: str | None                     # recipe name (None: the adapter reads no image)
    config: dict[str, Any]
    mapping: dict[str, str] | None         # question's volume -> volume whose input it is shown (ablation)
    exists: bool                           # the run is already stored (this is a resume)
    pending: dict[str, list[Question]]     # volume -> questions still to answer, in dataset order

    @property
    def n_pending(self) -> int:
        return sum(len(qs) for qs in self.pending.values())

    def input_volume(self, volume: str) -> str:
        return self.mapping[volume] if self.mapping else volume

    def ref(self) -> dict[str, Any]:
        """The plan as a flow or task parameter: everything but the pending questions (a run's share
        of the data set, re-read from the warehouse by `replan`, as it must be once the run's lease is
        held)."""
        return {"run_id": self.run_id, "name": self.name, "dataset_id": self.dataset_id, "model": self.model,
                "recipe": self.recipe, "config": self.config, "mapping": self.mapping, "exists": self.exists,
                "n_pending": self.n_pending}

    @classmethod
    def from_ref(cls, ref: dict[str, Any]) -> "RunPlan":
        fields = {k: v for k, v in ref.items() if k != "n_pending"}
        return cls(**fields, pending={})


@dataclass
class InferSummary:
    run_id: str
    name: str
    dataset_id: str
    model: str
    session_id: str | None = None
    pending: int = 0
    ok: int = 0
    error: int = 0
    volumes: int = 0
    seconds: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)      # error reason -> count (most common first)
    interrupted: bool = False              # Ctrl-C: no new volume was started after it; what finished is stored

    @property
    def left(self) -> int:
        return self.pending - self.ok - self.error

    @property
    def all_failed(self) -> bool:
        return self.error > 0 and self.ok == 0 and not self.interrupted

    def row(self) -> dict[str, Any]:
        top = "; ".join(f"{n}x {r}" for r, n in list(self.reasons.items())[:3])
        return {"run": self.name, "run_id": self.run_id, "dataset": self.dataset_id, "model": self.model,
                "pending": self.pending, "ok": self.ok, "error": self.error, "volumes": self.volumes,
                "seconds": round(self.seconds, 2), "errors": top, "interrupted": self.interrupted, "left": self.left}


# -- configuration ------------------------------------------------------------------------------

def resolve_dataset(con, dataset: str | None) -> str:
    ids = [r[0] for r in con.execute("SELECT dataset_id FROM datasets ORDER BY dataset_id").fetchall()]
    if dataset is not None:
        if dataset not in ids:
            raise ValueError(f"unknown dataset {dataset!r}; the warehouse has: {', '.join(ids) or 'none'}")
        return dataset
    if not ids:
        raise ValueError("the warehouse has no dataset; import one first (ctsvqa import-upstream PATH)")
    if len(ids) > 1:
        raise ValueError(f"the warehouse has several datasets ({', '.join(ids)}); pass --dataset")
    return ids[0]


def derangement(volumes: Sequence[str], seed: int) -> dict[str, str]:
    """A seeded permutation of the volumes in which none maps to itself (Sattolo's algorithm: one
    cycle through every volume). The same volumes and seed give the same pairing."""
    order = list(volumes)
    if len(order) < 2:
        raise InferenceError(f"--ablate shuffle-volumes needs at least two volumes in the data set; it has "
                             f"{len(order)}")
    rng = random.Random(int.from_bytes(hashlib.sha256(f"shuffle-volumes:{seed}".encode()).digest()[:8], "big"))
    perm = list(range(len(order)))
    for i in range(len(perm) - 1, 0, -1):
        j = rng.randrange(i)                      # j < i: Sattolo, never a fixed point
        perm[i], perm[j] = perm[j], perm[i]
    return {order[i]: order[perm[i]] for i in range(len(order))}


def run_config(adapter: ModelAdapter, dataset_id: str, ablation: dict[str, Any] | None) -> dict[str, Any]:
    return {"identity": adapter.identity(), "ablation": ablation, "dataset": dataset_id}


def default_name(request: InferRequest, adapter: ModelAdapter) -> str:
    base = adapter.name if ":" in request.model else request.model        # module:Class -> the class's name
    return base + ("-shuffled" if request.ablate == "shuffle-volumes" else "")


def plan_run(db, request: InferRequest, adapter: ModelAdapter | None = None, device_here: bool = True) -> RunPlan:
    """Read-only: the run's id and name, and what it still has to answer. Refuses a name that
    already belongs to another configuration."""
    adapter = adapter or make_adapter(request, device_here)
    try:
        identity = adapter.identity()
    except OSError as exc:
        raise AdapterError(f"checkpoint {request.checkpoint} cannot be read: {exc}") from exc
    with warehouse.reader(db) as con:
        dataset_id = resolve_dataset(con, request.dataset)
        mapping = ablation = None
        if request.ablate == "shuffle-volumes":
            volumes = [v for (v,) in con.execute("SELECT volume FROM volumes WHERE dataset_id = ? ORDER BY position",
                                                 [dataset_id]).fetchall()]
            mapping = derangement(volumes, request.seed)
            ablation = {"kind": "shuffle-volumes", "seed": request.seed, "mapping": mapping}
        config = {"identity": identity, "ablation": ablation, "dataset": dataset_id}
        run_id = "infer-" + identity_hash(config)[:24]
        name = request.name or default_name(request, adapter)
        by_name = con.execute("SELECT run_id FROM runs WHERE dataset_id = ? AND name = ?", [dataset_id, name]).fetchone()
        if by_name and by_name[0] != run_id:
            raise InferenceError(
                f"run name {name!r} on dataset {dataset_id} already belongs to another configuration (run "
                f"{by_name[0]}); pass --name to store this configuration as a new run")
        stored = con.execute("SELECT name FROM runs WHERE run_id = ?", [run_id]).fetchone()
        if stored and stored[0] != name:
            if request.name is not None:
                raise InferenceError(f"this configuration is already stored as run {stored[0]!r} ({run_id}); pass "
                                     f"--name {stored[0]} to resume it, or change the configuration")
            name = stored[0]
        pending = _pending(con, run_id, dataset_id, request)
    return RunPlan(run_id, name, dataset_id, adapter.name, adapter.recipe, config, mapping, bool(stored), pending)


def _pending(con, run_id: str, dataset_id: str, request: InferRequest) -> dict[str, list[Question]]:
    rows = con.execute(query_text("pending_predictions.sql"), {
        "run_id": run_id, "dataset": dataset_id, "limit": request.limit_volumes,
        "retry_failed": request.retry_failed}).fetchall()
    pending: dict[str, list[Question]] = {}
    for volume, qid, question in rows:
        pending.setdefault(volume, []).append(Question(qid, question))
    return pending


def replan(db, plan: RunPlan, request: InferRequest) -> RunPlan:
    """The same plan with what is pending now (another session may have answered meanwhile): the
    identity and its code fingerprints are not computed again."""
    from dataclasses import replace

    with warehouse.reader(db) as con:
        exists = con.execute("SELECT 1 FROM runs WHERE run_id = ?", [plan.run_id]).fetchone() is not None
        return replace(plan, exists=exists, pending=_pending(con, plan.run_id, plan.dataset_id, request))


# -- inputs ----------------------------------------------------------------------------------------

def input_rows(db, dataset_id: str, recipe: str, volumes: Sequence[str]) -> dict[str, tuple]:
    r = RECIPES[recipe]
    with warehouse.reader(db) as con:
        rows = con.execute(
            "SELECT m.volume, m.status, m.reason, m.path, m.shape, m.dtype, m.patient_left FROM model_inputs m "
            "JOIN (SELECT unnest(?::VARCHAR[]) AS volume) USING (volume) "
            "WHERE m.dataset_id = ? AND m.recipe = ? AND m.version = ?",
            [list(volumes), dataset_id, r.name, r.version]).fetchall()
    return {row[0]: row[1:] for row in rows}


def missing_inputs(db, plan: RunPlan) -> list[str]:
    """Input volumes the plan needs whose input for its recipe is not built, whose file is gone, or
    whose source volume changed since it was built (the same check `preprocess` makes)."""
    from tasks import model_inputs

    if plan.recipe is None:
        return []
    wanted = {plan.input_volume(v) for v in plan.pending}
    jobs = model_inputs.plan(db, plan.dataset_id, [RECIPES[plan.recipe]], [], model_inputs.output_root(db),
                             only=wanted)
    return sorted(job.volume for job in jobs)


def build_inputs(db, dataset_id: str, recipe: str, volumes: Sequence[str]) -> int:
    """Without Prefect: the preprocess steps for one recipe and these volumes only."""
    from tasks import model_inputs

    out_root = model_inputs.output_root(db)
    jobs = model_inputs.plan(db, dataset_id, [RECIPES[recipe]], [], out_root, only=set(volumes))
    return model_inputs.record(db, [row for job in jobs for row in model_inputs.process_volume(job, str(out_root))])


def model_inputs_for(db, plan: RunPlan) -> dict[str, ModelInput | str]:
    """Each input volume's ModelInput, or why there is none."""
    if plan.recipe is None:
        return {}
    r = RECIPES[plan.recipe]
    wanted = sorted({plan.input_volume(v) for v in plan.pending})
    have = input_rows(db, plan.dataset_id, plan.recipe, wanted)
    out: dict[str, ModelInput | str] = {}
    for v in wanted:
        if v not in have:
            out[v] = f"no {r.key} input for volume {v} (run `ctsvqa preprocess --recipes {r.name}`)"
            continue
        status, reason, path, shape, dtype, left = have[v]
        if status != "ok":
            out[v] = f"no {r.key} input for volume {v}: {reason}"
        elif not Path(path).is_file():
            out[v] = f"{r.key} input of volume {v} is gone ({path}); run `ctsvqa preprocess --recipes {r.name}`"
        else:
            out[v] = ModelInput(v, r.name, r.version, Path(path), tuple(shape), dtype, left)
    return out


def input_sources(db, plan: RunPlan) -> dict[str, tuple]:
    """Input volume -> (source file, size, mtime_ns, content sha256) its input was built from."""
    if plan.recipe is None:
        return {}
    r = RECIPES[plan.recipe]
    with warehouse.reader(db) as con:
        rows = con.execute(
            "SELECT volume, source_path, source_size, source_mtime_ns, volume_sha256 FROM model_inputs "
            "WHERE dataset_id = ? AND recipe = ? AND version = ? AND status = 'ok' AND source_path IS NOT NULL",
            [plan.dataset_id, r.name, r.version]).fetchall()
    return {v: tuple(rest) for v, *rest in rows}


def dataset_questions(db, dataset_id: str) -> list[DatasetQuestion]:
    with warehouse.reader(db) as con:
        rows = con.execute(query_text("dataset_questions.sql"), {"dataset": dataset_id}).fetchall()
    return [DatasetQuestion(qid, volume, q, a, tuple(cats)) for qid, volume, q, a, cats in rows]


# -- storing ---------------------------------------------------------------------------------------

PREDICTION_SCHEMA = pa.schema([("run_id", pa.string()), ("qid", pa.string()), ("text", pa.string()),
                               ("status", pa.string()), ("reason", pa.string()), ("provenance", pa.string())])


class PredictionWriter:
    """Buffers rows and stores them in one transaction per flush: when a volume finishes and at
    least `seconds` passed since the last flush (slow models: every volume; fast baselines: about
    once a second), or when `every` rows wait."""

    def __init__(self, db, seconds: float = 1.0, every: int = 1000):
        self.db, self.seconds, self.every = db, seconds, every
        self.rows: list[dict] = []
        self.last = time.monotonic()

    def add(self, rows: list[dict]) -> None:
        self.rows.extend(rows)

    def volume_done(self) -> None:
        if len(self.rows) >= self.every or time.monotonic() - self.last >= self.seconds:
            self.flush()

    def flush(self) -> None:
        self.last = time.monotonic()
        if not self.rows:
            return
        table = pa.Table.from_pylist(self.rows, schema=PREDICTION_SCHEMA)
        with warehouse.writer(self.db) as con, warehouse.transaction(con):
            con.register("new_predictions", table)
            con.execute(query_text("save_predictions.sql"))
            con.unregister("new_predictions")
        self.rows = []


def register_run(db, plan: RunPlan, adapter: ModelAdapter, session_id: str, flow_run_id: str | None,
                 extra: dict[str, Any] | None = None) -> None:
    with warehouse.writer(db) as con, warehouse.transaction(con):
        taken = con.execute("SELECT run_id FROM runs WHERE dataset_id = ? AND name = ? AND run_id <> ?",
                            [plan.dataset_id, plan.name, plan.run_id]).fetchone()
        if taken:
            raise InferenceError(f"run name {plan.name!r} on dataset {plan.dataset_id} already belongs to another "
                                 f"configuration (run {taken[0]}); pass --name to store this one as a new run")
        loaders.upsert_model(con, adapter.name, family=type(adapter).__module__,
                             checkpoint=adapter.settings.checkpoint, description=adapter.description or None)
        exists = con.execute("SELECT 1 FROM runs WHERE run_id = ?", [plan.run_id]).fetchone()
        if not exists:                            # a resumed run keeps its row (and created_at) as it was
            loaders.upsert_run(con, run_id=plan.run_id, dataset_id=plan.dataset_id, name=plan.name,
                               model_id=adapter.name, source=SOURCE, config=plan.config)
        con.execute("INSERT INTO inference_sessions (session_id, run_id, flow_run_id, provenance, pending) "
                    "VALUES (?, ?, ?, ?, ?)", [session_id, plan.run_id, flow_run_id,
                                                json.dumps({**adapter.provenance(), **(extra or {})}, default=str),
                                                plan.n_pending])


def close_session(db, summary: InferSummary) -> None:
    with warehouse.writer(db) as con:
        con.execute("UPDATE inference_sessions SET finished_at = now(), ok = ?, error = ?, seconds = ? "
                    "WHERE session_id = ?", [summary.ok, summary.error, summary.seconds, summary.session_id])


# -- answering -------------------------------------------------------------------------------------

def work_items(plan: RunPlan, inputs: dict[str, ModelInput | str], session_id: str,
               sources: dict[str, tuple] | None = None) -> list[WorkItem]:
    recipe_key = RECIPES[plan.recipe].key if plan.recipe else None
    items = []
    for volume, questions in plan.pending.items():
        base = {"session": session_id, "volume": volume,
                "input_volume": plan.input_volume(volume) if plan.recipe else None, "recipe": recipe_key}
        mi: ModelInput | str | None = None
        if plan.recipe:
            mi = inputs.get(plan.input_volume(volume)) or f"no input for volume {plan.input_volume(volume)}"
        items.append(WorkItem(volume, questions, mi, base,
                              (sources or {}).get(plan.input_volume(volume)) if plan.recipe else None))
    return items


def run_inference(db, request: InferRequest, progress: ProgressFn | None = None, flow_run_id: str | None = None,
                  build_missing: bool = True, flush_seconds: float = 1.0, sharding=None,
                  plan: RunPlan | None = None) -> InferSummary:
    """The whole run: plan (unless the caller planned it: `plan`, from `plan_run`), build missing
    inputs (without Prefect when `build_missing`), load the model once, answer volume by volume, store
    as volumes finish. Without `sharding` everything runs in this process; with a
    `tasks.sharding.Sharding` the volumes go to one model replica per GPU (Ray actors) and come back
    here as rows, so this process alone writes the warehouse."""
    t0 = time.perf_counter()
    adapter = make_adapter(request, device_here=sharding is None)
    if plan is None:
        plan = plan_run(db, request, adapter)
    elif identity_hash(adapter.identity()) != identity_hash(plan.config["identity"]):
        raise InferenceError(f"the plan of run {plan.name} ({plan.run_id}) was made for another configuration "
                             f"than this request's; plan it again")
    elif not plan.pending:
        plan = replan(db, plan, request)       # a plan from a reference: its pending questions are read here
    if not plan.pending:
        return InferSummary(plan.run_id, plan.name, plan.dataset_id, plan.model)
    lease = [run_lease(plan)]
    leases.acquire(db, lease, f"run {plan.name} ({plan.run_id}) on {plan.dataset_id}", wait=request.wait,
                   on_wait=lambda h: log.warning("waiting for %s, which holds run %s", h.describe(), plan.name))
    try:
        return _run_held(db, request, adapter, replan(db, plan, request), t0, progress, flow_run_id,
                         build_missing, flush_seconds, sharding)      # the holder may have answered meanwhile
    finally:
        leases.release(db, lease)


def run_lease(plan: RunPlan) -> str:
    return f"infer:{plan.run_id}"


def _run_held(db, request: InferRequest, adapter: ModelAdapter, plan: RunPlan, t0: float, progress, flow_run_id,
              build_missing: bool, flush_seconds: float, sharding) -> InferSummary:
    summary = InferSummary(plan.run_id, plan.name, plan.dataset_id, plan.model, pending=plan.n_pending)
    if build_missing and (missing := missing_inputs(db, plan)):
        log.info("building %d missing %s input(s)", len(missing), plan.recipe)
        build_inputs(db, plan.dataset_id, plan.recipe, missing)
    if not plan.pending:
        return summary
    if sharding is None:
        load_adapter(adapter, request)
    writer = PredictionWriter(db, seconds=flush_seconds)
    results = None
    try:
        dataset = dataset_questions(db, plan.dataset_id)
        if sharding is None:
            adapter.prepare(dataset)
        summary.session_id = str(uuid.uuid4())
        register_run(db, plan, adapter, summary.session_id, flow_run_id,
                     extra={"sharding": sharding.describe()} if sharding is not None else None)
        items = work_items(plan, model_inputs_for(db, plan), summary.session_id, input_sources(db, plan))
        if sharding is None:
            results = answer_here(adapter, plan.run_id, items, request.batch_size)
        else:
            from tasks.sharding import answer_sharded

            results = answer_sharded(request, items, sharding.replicas, sharding.address, run_id=plan.run_id,
                                     dataset=dataset, init_kwargs=sharding.init_kwargs)
        reasons: Counter[str] = Counter()
        done = 0
        if progress:
            progress(0, summary.pending)
        summary.interrupted = interrupt.STOP.is_set()       # Ctrl-C while the model loaded: start nothing
        for _volume, rows in results if not summary.interrupted else ():
            writer.add(rows)
            writer.volume_done()
            for r in rows:
                if r["status"] == "ok":
                    summary.ok += 1
                else:
                    summary.error += 1
                    reasons[r["reason"]] += 1
            summary.volumes += 1
            done += len(rows)
            if progress:
                progress(done, summary.pending)
            if interrupt.STOP.is_set() and done < summary.pending:
                summary.interrupted = True           # no new volume; closing `results` stops the model
                log.warning("interrupted: %d answered, %d left", done, summary.pending - done)
                break
        summary.reasons = dict(reasons.most_common())
    finally:
        summary.seconds = time.perf_counter() - t0
        try:
            if results is not None:
                results.close()                   # the sharded path stops its replicas (and its Ray) here
        finally:
            try:
                writer.flush()                    # what was answered before a failure is kept
                adapter.close()
            finally:
                if summary.session_id:
                    try:
                        close_session(db, summary)
                        summaries.refresh(db)    # the metric views read summary tables: bring this run's up to date
                    except Exception:  # noqa: BLE001  (bookkeeping must not mask the real error)
                        log.exception("could not close inference session %s", summary.session_id)
    return summary


def summary_table(summary: InferSummary) -> list[dict]:
    return [summary.row()]
