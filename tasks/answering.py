"""What a model process does with a run's work, as plain functions: the request, the adapter built
and loaded from it, and each volume's pending questions answered as prediction rows (every question
exactly one row; a failure is a row with its reason). Below both `tasks.inference` (everything in
one process) and `tasks.sharding` (one model replica per GPU), which call the same functions."""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from adapters.models import registry
from adapters.models.base import AdapterError, AdapterSettings, Answer, ModelAdapter, ModelInput, Question
from adapters.models.recipes import RECIPES

ABLATIONS = ("shuffle-volumes",)
log = logging.getLogger("ctsvqa.inference")


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


# -- one adapter per request within a command or a flow run ------------------------------------------
_built: dict[str, ModelAdapter] = {}       # request's adapter settings -> the adapter built, not yet loaded
_scopes = 0
_lock = threading.Lock()


def _adapter_key(request: InferRequest) -> str:
    return json.dumps([request.model, request.env, asdict(request.settings())], sort_keys=True, default=str)


@contextmanager
def one_adapter_per_request() -> Iterator[None]:
    """Within it (one command, one flow run: the CLI, the benchmark flow and the infer flow open it),
    `make_adapter` for the same model settings gives the adapter built first until it is loaded, so a
    run's checks, its plan and its answers share one adapter and one identity: the model's code and
    checkpoint are fingerprinted once. Loading takes the adapter out (a later run builds its own), and
    the last scope to close forgets the rest, so a long-lived process never plans with an identity
    read before the files changed."""
    global _scopes
    with _lock:
        _scopes += 1
    try:
        yield
    finally:
        with _lock:
            _scopes -= 1
            if not _scopes:
                _built.clear()


def build_adapter(request: InferRequest) -> ModelAdapter:
    """The request's adapter, not loaded, without `make_adapter`'s checks of the run's settings (the
    benchmark asks each model's recipe before any run starts)."""
    key = _adapter_key(request)
    with _lock:
        adapter = _built.get(key) if _scopes else None
    if adapter is None:
        adapter = registry.create(request.model, request.settings(), env=request.env)
        with _lock:
            if _scopes:
                adapter = _built.setdefault(key, adapter)
    return adapter


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
    adapter = build_adapter(request)
    recipe = adapter.recipe
    if recipe is not None and recipe not in RECIPES:
        raise AdapterError(f"model {request.model!r} asks for recipe {recipe!r}, which is not in "
                           f"adapters/models/recipes.py (known: {', '.join(RECIPES)})")
    return adapter


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
    with _lock:
        for key in [k for k, a in _built.items() if a is adapter]:
            del _built[key]                # loaded (or failed to): the next run builds its own
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


def answer_here(adapter: ModelAdapter, run_id: str, items: list[WorkItem], batch_size: int):
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
