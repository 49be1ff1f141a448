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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pyarrow as pa

import warehouse
from adapters.models import registry
from adapters.models.base import (
    AdapterError, AdapterSettings, Answer, DatasetQuestion, ModelAdapter, ModelInput, Question, identity_hash,
)
from adapters.models.recipes import RECIPES
from tasks import interrupt
from warehouse import leases, loaders, summaries

SQL = Path(__file__).resolve().parent.parent / "sql" / "queries"
SOURCE = "inference"
ABLATIONS = ("shuffle-volumes",)
log = logging.getLogger("ctsvqa.inference")

ProgressFn = Callable[[int, int], None]            # (done, total) questions of this session


class InferenceError(RuntimeError):
    """The run cannot start or went wholly wrong; the message says what to do."""


@dataclass(frozen=True)
class InferRequest:
    """What the user asked for: small, serialisable, passed between tasks instead of the model."""
    model: str
    checkpoint: str | None = None
    name: str | None = None
    dataset: str | None = None
    device: str = "cpu"
    dtype: str | None = None
    batch_size: int = 8
    limit_volumes: int | None = None
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    ablate: str | None = None
    retry_failed: bool = False
    code_dir: str | None = None
    env: str | None = None                 # None: the adapter's family env (worker) or in-process; 'current';
    #                                        a family name; a path to a python (adapters/models/registry.create)
    wait: bool = False                     # another session holds the run: wait for it instead of refusing

    def settings(self) -> AdapterSettings:
        return AdapterSettings(checkpoint=self.checkpoint, device=self.device, dtype=self.dtype, seed=self.seed,
                               options=dict(self.options), code_dir=self.code_dir)


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

def check_device(device: str) -> None:
    """Refuse a device this machine does not have: run on the CPU instead, the run would be stored
    as if it ran on the device asked for."""
    import re

    if device == "cpu":
        return
    m = re.fullmatch(r"(cuda|mps)(?::(\d+))?", device or "")
    if not m:
        raise ValueError(f"--device {device!r} is not a device; use cpu, cuda, cuda:N or mps")
    import torch

    if m[1] == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError("--device mps: this machine has no Apple GPU (MPS) available to torch; use --device cpu")
        return
    if not torch.cuda.is_available():
        raise ValueError(f"--device {device}: torch {torch.__version__} sees no CUDA GPU on this machine "
                         f"({'a CPU-only build' if torch.version.cuda is None else 'no driver or device'}); "
                         f"use --device cpu")
    if m[2] is not None and int(m[2]) >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                         f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")


def make_adapter(request: InferRequest, device_here: bool = True) -> ModelAdapter:
    """`device_here`: the model runs in this process, so its device must be on this machine (a sharded
    run's driver builds the adapter only to plan; each replica checks its own GPU)."""
    if device_here:
        check_device(request.device)
    if request.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, not {request.batch_size}")
    if request.limit_volumes is not None and (isinstance(request.limit_volumes, bool)
                                              or not isinstance(request.limit_volumes, int)
                                              or request.limit_volumes < 1):
        # 0 or -1 would read as "nothing to do" and store nothing, silently
        raise ValueError(f"--limit-volumes must be a whole number of at least 1, not {request.limit_volumes!r}; "
                         f"leave it out for every volume")
    if request.ablate is not None and request.ablate not in ABLATIONS:
        raise ValueError(f"unknown ablation {request.ablate!r}; known: {', '.join(ABLATIONS)}")
    adapter = registry.create(request.model, request.settings(), env=request.env)
    recipe = adapter.recipe
    if recipe is not None and recipe not in RECIPES:
        raise AdapterError(f"model {request.model!r} asks for recipe {recipe!r}, which is not in "
                           f"adapters/models/recipes.py (known: {', '.join(RECIPES)})")
    return adapter


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
    rows = con.execute((SQL / "pending_predictions.sql").read_text(), {
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


def source_changed(source: tuple | None) -> str | None:
    """Why the input built from `source` no longer shows that file (it changed after the input was
    built, or can no longer be read), or None. A file that is gone leaves its input valid."""
    from tasks.model_inputs import file_sha256

    if not source:
        return None
    path, size, mtime, sha = source
    try:
        st = Path(path).stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"volume file {path} cannot be read ({exc.strerror}); fix it and run the same command with --retry-failed"
    if (st.st_size, st.st_mtime_ns) == (size, mtime):
        return None
    now = file_sha256(path)
    if now == sha:
        return None
    return (f"volume file {path} changed after its input was built (size {size} -> {st.st_size}); run the same "
            f"command with --retry-failed to rebuild the input and answer these questions")


def dataset_questions(db, dataset_id: str) -> list[DatasetQuestion]:
    with warehouse.reader(db) as con:
        rows = con.execute((SQL / "dataset_questions.sql").read_text(), {"dataset": dataset_id}).fetchall()
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
            con.execute((SQL / "save_predictions.sql").read_text())
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

def _row(run_id: str, qid: str, text: str | None, status: str, reason: str | None, prov: dict) -> dict:
    return {"run_id": run_id, "qid": qid, "text": text, "status": status, "reason": reason,
            "provenance": json.dumps(prov, sort_keys=True, default=str)}


def _call(adapter: ModelAdapter, model_input: ModelInput | None, chunk: list[Question],
          volume: str | None) -> tuple[dict[str, Answer], str | None, float]:
    """One adapter call: its answers by qid, or why the whole call failed, and the seconds it took."""
    t0 = time.perf_counter()
    try:
        answers = adapter.answer(model_input, chunk)
    except Exception as exc:  # noqa: BLE001  (one volume's failure must not stop the run)
        failure = f"adapter raised {type(exc).__name__}: {exc}"
        log.warning("%s on %s: %s", adapter.name, volume, failure)
        return {}, failure, time.perf_counter() - t0
    seconds = time.perf_counter() - t0
    if not isinstance(answers, (list, tuple)):
        return {}, f"adapter returned {type(answers).__name__}, not a list of Answer", seconds
    by_qid: dict[str, Answer] = {}
    for a in answers:
        if isinstance(a, Answer) and a.qid not in by_qid:
            by_qid[a.qid] = a
    return by_qid, None, seconds


def _rows(run_id: str, chunk: list[Question], by_qid: dict[str, Answer], failure: str | None, prov: dict) -> list[dict]:
    rows = []
    for q in chunk:
        a = by_qid.get(q.qid)
        if failure is not None:
            rows.append(_row(run_id, q.qid, None, "error", failure, prov))
        elif a is None:
            rows.append(_row(run_id, q.qid, None, "error", "the adapter returned no answer for this question", prov))
        elif a.status == "ok" and not isinstance(a.text, str):
            rows.append(_row(run_id, q.qid, None, "error", f"the adapter's answer is a {type(a.text).__name__}, "
                             "not text", prov))
        else:
            meta = {**prov, **({"meta": a.meta} if a.meta else {})}
            reason = None if a.status == "ok" else (a.reason or "the adapter reported an error without a reason")
            rows.append(_row(run_id, q.qid, a.text, a.status, reason, meta))
    return rows


def answer_volume(adapter: ModelAdapter, run_id: str, model_input: ModelInput | None, questions: list[Question],
                  batch_size: int, base: dict[str, Any]) -> list[dict]:
    """The volume's questions in chunks of batch_size; every question ends as exactly one row. A chunk
    whose call raises is asked again one question at a time, so one bad question (or a batch too big
    for the GPU) fails only itself."""
    rows = []
    for start in range(0, len(questions), batch_size):
        chunk = questions[start:start + batch_size]
        by_qid, failure, seconds = _call(adapter, model_input, chunk, base.get("volume"))
        if failure is not None and len(chunk) > 1:
            for q in chunk:
                one, failure_one, secs = _call(adapter, model_input, [q], base.get("volume"))
                prov = {**base, "batch": 1, "seconds": round(secs, 6), "batch_seconds": round(secs, 6),
                        "retried_alone_after": failure}
                rows.extend(_rows(run_id, [q], one, failure_one, prov))
            continue
        prov = {**base, "batch": len(chunk), "seconds": round(seconds / len(chunk), 6),
                "batch_seconds": round(seconds, 6)}
        rows.extend(_rows(run_id, chunk, by_qid, failure, prov))
    return rows


def volumes_per_call(adapter: ModelAdapter) -> int:
    """Volumes per adapter call: more than one only for adapters with `answer_many`."""
    if not callable(getattr(adapter, "answer_many", None)):
        return 1
    return max(1, int(getattr(adapter, "volumes_per_call", 1)))


def answer_volumes(adapter: ModelAdapter, run_id: str, items: list[tuple[str, ModelInput | None, list[Question], dict]],
                   batch_size: int) -> list[list[dict]]:
    """Several volumes in one `answer_many` call (the adapter decodes them together); each item's
    rows. If the call raises or returns something else than one answer list per volume, every
    volume is asked again on its own (`answer_volume`), so one bad volume fails only itself."""
    t0 = time.perf_counter()
    failure = None
    try:
        out = adapter.answer_many([(mi, questions) for _, mi, questions, _ in items])
        if not isinstance(out, (list, tuple)) or len(out) != len(items) or \
                not all(isinstance(a, (list, tuple)) for a in out):
            failure = f"answer_many returned {type(out).__name__}, not one list of Answer per volume"
    except Exception as exc:  # noqa: BLE001  (retried volume by volume below)
        failure = f"adapter raised {type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - t0
    if failure is not None:
        log.warning("%s on %d volumes: %s; answering them one by one", adapter.name, len(items), failure)
        return [answer_volume(adapter, run_id, mi, questions, batch_size, {**base, "retried_alone_after": failure})
                for _, mi, questions, base in items]
    n = sum(len(questions) for _, _, questions, _ in items)
    rows = []
    for (_, _, questions, base), answers in zip(items, out):
        by_qid: dict[str, Answer] = {}
        for a in answers:
            if isinstance(a, Answer) and a.qid not in by_qid:
                by_qid[a.qid] = a
        prov = {**base, "batch": n, "volumes": len(items), "seconds": round(seconds / max(n, 1), 6),
                "batch_seconds": round(seconds, 6)}
        rows.append(_rows(run_id, questions, by_qid, None, prov))
    return rows


def load_adapter(adapter: ModelAdapter, request: InferRequest) -> None:
    try:
        adapter.load()
    except AdapterError:
        raise
    except Exception as exc:  # noqa: BLE001  (any loader failure becomes one line that names the checkpoint)
        where = f" from {request.checkpoint}" if request.checkpoint else ""
        raise AdapterError(f"model {request.model!r} could not be loaded{where}: {type(exc).__name__}: {exc}") from exc


def read_input(mi: ModelInput | str | None) -> ModelInput | str | None:
    """Read the input file now (off the model's thread); a string says why there is none."""
    if mi is None or isinstance(mi, str):
        return mi
    try:
        mi.load()
    except Exception as exc:  # noqa: BLE001
        return f"unreadable model input {mi.path}: {type(exc).__name__}: {exc}"
    return mi


@dataclass
class WorkItem:
    """One volume's share of a run: its pending questions, the input they are shown (referenced by
    path; a string says why there is none; None when the adapter reads no image) and the provenance
    every row of the volume carries. Small: it crosses process boundaries (tasks/sharding.py)."""
    volume: str
    questions: list[Question]
    model_input: ModelInput | str | None
    base: dict[str, Any]
    source: tuple | None = None          # the volume file the input was built from (path, size, mtime, sha)

    def stale(self) -> str | None:
        return source_changed(self.source)


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


def failed_rows(run_id: str, item: WorkItem, reason: str, extra: dict[str, Any] | None = None) -> list[dict]:
    base = {**item.base, **(extra or {})}
    return [_row(run_id, q.qid, None, "error", reason, base) for q in item.questions]


def answer_item(adapter: ModelAdapter, run_id: str, item: WorkItem, mi: ModelInput | str | None,
                batch_size: int, extra: dict[str, Any] | None = None) -> list[dict]:
    """Every question of the item as one row; `mi` is the item's input once read (or why not). A
    volume whose file changed since its input was built fails with that reason (never a stale answer)."""
    if not isinstance(mi, str) and mi is not None and (why := item.stale()):
        mi = why
    if isinstance(mi, str):
        return failed_rows(run_id, item, mi, extra)
    base = {**item.base, **(extra or {})}
    if mi is not None:
        base["input_volume_sha256"] = Path(mi.path).stem     # inputs are named by it
    rows = answer_volume(adapter, run_id, mi, item.questions, batch_size, base)
    if mi is not None:
        mi.release()
    return rows


def answer_group(adapter: ModelAdapter, run_id: str, items: list[WorkItem], mis: list[ModelInput | str | None],
                 batch_size: int, extra: dict[str, Any] | None = None) -> list[list[dict]]:
    """Several volumes in one `answer_many` call (inputs not read yet: the adapter reads them itself,
    a few ahead); a volume without an input fails alone. Each item's rows, in order."""
    ready, rows_of = [], {}
    for item, mi in zip(items, mis):
        if not isinstance(mi, str) and mi is not None and (why := item.stale()):
            mi = why
        if isinstance(mi, str):
            rows_of[item.volume] = failed_rows(run_id, item, mi, extra)
            continue
        base = {**item.base, **(extra or {})}
        if mi is not None:
            base["input_volume_sha256"] = Path(mi.path).stem     # inputs are named by it
        ready.append((item.volume, mi, item.questions, base))
    if ready:
        rows_of.update(zip([r[0] for r in ready], answer_volumes(adapter, run_id, ready, batch_size)))
    for mi in mis:
        if isinstance(mi, ModelInput):
            mi.release()
    return [rows_of[item.volume] for item in items]


def answer_streamed(adapter: ModelAdapter, run_id: str, items: list[WorkItem], batch_size: int):
    """Every volume through one `answer_stream` of the adapter (the native models' engine keeps its
    slots full for the whole run and hands each volume back as it finishes), so each volume's rows
    are stored as soon as it is done, in the order the engine finishes them. A volume without an
    input fails alone; if the stream breaks, the volumes it had not handed back are asked one by one
    (`answer_volume`), as a failed `answer_many` call's are."""
    ready: list[tuple[WorkItem, ModelInput | None, dict]] = []
    for item in items:
        mi = item.model_input
        if not isinstance(mi, str) and mi is not None and (why := item.stale()):
            mi = why
        if isinstance(mi, str):
            yield item.volume, failed_rows(run_id, item, mi)
            continue
        base = dict(item.base)
        if mi is not None:
            base["input_volume_sha256"] = Path(mi.path).stem     # inputs are named by it
        ready.append((item, mi, base))
    handed: set[int] = set()
    try:
        for i, answers in adapter.answer_stream((mi, item.questions) for item, mi, _ in ready):
            item, mi, base = ready[i]
            by_qid: dict[str, Answer] = {}
            for a in answers if isinstance(answers, (list, tuple)) else []:
                if isinstance(a, Answer) and a.qid not in by_qid:
                    by_qid[a.qid] = a
            handed.add(i)
            if isinstance(mi, ModelInput):
                mi.release()
            yield item.volume, _rows(run_id, item.questions, by_qid, None, {**base, "streamed": True})
    except Exception as exc:  # noqa: BLE001  (the volumes not handed back are asked alone below)
        failure = f"adapter raised {type(exc).__name__}: {exc}"
        log.warning("%s: the stream of %d volumes broke after %d: %s; answering the rest one by one",
                    adapter.name, len(ready), len(handed), failure)
        for i, (item, mi, base) in enumerate(ready):
            if i not in handed:
                yield item.volume, answer_volume(adapter, run_id, mi, item.questions, batch_size,
                                                 {**base, "retried_alone_after": failure})
                if isinstance(mi, ModelInput):
                    mi.release()
        return
    for i, (item, _, base) in enumerate(ready):         # never silently: a volume the stream skipped
        if i not in handed:
            yield item.volume, _rows(run_id, item.questions, {}, "the adapter's stream ended without this volume",
                                     base)


def _answer_here(adapter: ModelAdapter, run_id: str, items: list[WorkItem], batch_size: int):
    """In this process. One volume per call, in dataset order: the next volume's input is read while
    the model answers this one. An adapter with `answer_stream` gets every volume in one stream
    (`answer_streamed`); one with only `answer_many` gets `volumes_per_call` volumes at once. Both
    read their inputs themselves, a few ahead (all of a run's slices at once would not fit in memory)."""
    if callable(getattr(adapter, "answer_stream", None)):
        yield from answer_streamed(adapter, run_id, items, batch_size)
        return
    per_call = volumes_per_call(adapter)
    if per_call > 1:
        for start in range(0, len(items), per_call):
            group = items[start:start + per_call]
            yield from zip([i.volume for i in group],
                           answer_group(adapter, run_id, group, [i.model_input for i in group], batch_size))
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as pool:
        nxt = pool.submit(read_input, items[0].model_input)
        for i, item in enumerate(items):
            mi = nxt.result()
            if i + 1 < len(items):
                nxt = pool.submit(read_input, items[i + 1].model_input)
            yield item.volume, answer_item(adapter, run_id, item, mi, batch_size)


def run_inference(db, request: InferRequest, progress: ProgressFn | None = None, flow_run_id: str | None = None,
                  build_missing: bool = True, flush_seconds: float = 1.0, sharding=None) -> InferSummary:
    """The whole run: plan, build missing inputs (without Prefect when `build_missing`), load the
    model once, answer volume by volume, store as volumes finish. Without `sharding` everything runs
    in this process; with a `tasks.sharding.Sharding` the volumes go to one model replica per GPU
    (Ray actors) and come back here as rows, so this process alone writes the warehouse."""
    t0 = time.perf_counter()
    adapter = make_adapter(request, device_here=sharding is None)
    plan = plan_run(db, request, adapter)
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
            results = _answer_here(adapter, plan.run_id, items, request.batch_size)
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
