"""Judging as plain functions: find what a judge still has to judge, answer what the verdict cache
already knows, send the rest (each distinct question/reference/prediction once, however many runs
share it) and store results in small transactions as they complete. Killed at any moment and run
again, it stores no duplicate and never pays again for a verdict it stored."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import duckdb
import pyarrow as pa

import warehouse
from adapters.judges import build_judge
from adapters.judges.base import Stopped
from adapters.judges.keys import MissingKey, check_keys as check_spec_keys
from adapters.judges.base import Outcome
from adapters.judges.llm import CallLog, LLMJudge
from adapters.judges.prompts import Item
from adapters.judges.spec import JudgeSpec, Panel, load_panel  # noqa: F401  (load_panel: the flows' name)
from tasks import interrupt
from warehouse import leases, loaders
from warehouse.connection import query_text

log = logging.getLogger("ctsvqa.judging")

ProgressFn = Callable[[str, int, int], None]        # (judge name, done, total)
FLUSH_SECONDS = 2.0          # every result is stored within this long of its arrival
# Ctrl-C, as the CLI reports it (signals arrive in the main thread; judges run in worker threads):
# STOP, the first: send nothing more, store what arrived; HURRY, the second: stop waiting for the calls
# already sent as well.
STOP, HURRY = interrupt.STOP, interrupt.HURRY


class JudgingInterrupted(Exception):
    """Judging stopped on Ctrl-C; what arrived is stored. The CLI exits 130 with this one line."""

    def __init__(self, judged: int, left: int):
        self.judged, self.left = judged, left
        super().__init__(f"interrupted: {judged} judged, {left} left; run the same command to continue")


@dataclass
class Work:
    """One distinct thing to judge, and every (run, qid) that is waiting for it."""

    item_key: str
    item: Item
    targets: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class JudgeSummary:
    judge: str
    judge_id: str
    pending: int = 0
    from_cache: int = 0
    distinct_sent: int = 0
    calls: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    seconds: float = 0.0
    judged: int = 0                # judgment rows stored by this run (cache hits included)
    calls_answered: int = 0        # calls that got a reply (a verdict, an unparsable text or a block)
    calls_failed: int = 0          # calls that failed for good (HTTP errors, timeouts)
    first_error: str | None = None
    interrupted: bool = False

    @property
    def left(self) -> int:
        return max(0, self.pending - self.judged)

    @property
    def all_calls_failed(self) -> bool:
        return self.calls_failed > 0 and self.calls_answered == 0


def register_panel(db, panel: Panel) -> None:
    """Record the panel's judges (identity and public settings, never keys) and membership."""
    with warehouse.writer(db) as con, warehouse.transaction(con):
        for spec in panel.judges:
            taken = con.execute("SELECT judge_id FROM judges WHERE name = ? AND judge_id <> ?",
                                [spec.name, spec.judge_id]).fetchone()
            if taken:
                raise ValueError(f"judge name {spec.name!r} already belongs to judge {taken[0]} (a different "
                                 f"provider, model, prompt or setting); give this judge another name")
            loaders.upsert_judge(con, judge_id=spec.judge_id, name=spec.name, provider=spec.provider,
                                 model=spec.model, prompt_version=spec.prompt or "rules",
                                 settings=spec.public_settings(), notes=f"from {panel.source}")
            loaders.add_panel_member(con, panel.name, spec.judge_id, panel.description)


def pending_work(con: duckdb.DuckDBPyConnection, spec: JudgeSpec, runs: Sequence[str] | None,
                 retry_failed: bool) -> tuple[list[Work], int]:
    rows = con.execute(query_text("pending_judgments.sql"), {
        "judge_id": spec.judge_id, "runs": list(runs or []), "retry_failed": retry_failed}).fetchall()
    work: dict[str, Work] = {}
    for run_id, run_name, qid, question, answer, prediction, item_key in rows:
        # not shared: every (run, question) is its own item, sent on its own (and the judge may know its run)
        if spec.share_verdicts:
            w = work.setdefault(item_key, Work(item_key, Item(question, answer, prediction)))
        else:
            w = work.setdefault(f"{item_key}:{run_id}:{qid}", Work(item_key, Item(question, answer, prediction, run_name)))
        w.targets.append((run_id, qid))
    return list(work.values()), len(rows)


def cached_verdicts(con: duckdb.DuckDBPyConnection, keys: list[str]) -> dict[str, tuple]:
    if not keys:
        return {}
    con.register("wanted_keys", pa.table({"item_key": keys}))
    try:
        return {k: (v, raw, call) for k, v, raw, call in con.execute(
            "SELECT c.item_key, c.verdict, c.raw_response, c.call_id FROM judge_cache c JOIN wanted_keys USING (item_key)"
        ).fetchall()}
    finally:
        con.unregister("wanted_keys")


class JudgmentWriter:
    """Buffers results and stores them in one transaction per flush. A flush is due when `every`
    items wait, or when the oldest has waited so long that, with a write as slow as the recent
    ones (twice over), it is stored within `seconds` of its arrival. Flushes from several judges
    in one process take turns."""

    _locks: dict[str, threading.Lock] = {}

    def __init__(self, db, judge_id: str, every: int = 200, seconds: float = FLUSH_SECONDS):
        self.db, self.judge_id, self.every, self.seconds = db, judge_id, every, seconds
        self.lock = self._locks.setdefault(str(warehouse.resolve_db(db)), threading.Lock())
        self.buffer_lock = threading.Lock()
        self.judgments: list[dict] = []
        self.cache: list[dict] = []
        self._cached: set[str] = set()
        self.calls: list[dict] = []
        self.oldest: float | None = None           # when the oldest buffered row arrived
        self.stored = 0                            # judgment rows stored so far
        self.write_s = 0.1                         # how long a flush takes (moving average)

    def _arrived(self) -> None:
        if self.oldest is None:
            self.oldest = time.monotonic()

    def add(self, work: Work, outcome: Outcome, source: str) -> None:
        rows = [{
            "run_id": run_id, "qid": qid, "judge_id": self.judge_id, "verdict": outcome.verdict,
            "status": outcome.status, "reason": outcome.reason, "raw_response": outcome.raw,
            "tokens_in": outcome.tokens_in, "tokens_out": outcome.tokens_out, "latency_ms": outcome.latency_ms,
            "cost_usd": outcome.cost_usd if source != "cache" else 0.0, "source": source,
            "item_key": work.item_key, "call_id": outcome.call_id, "shared": source == "cache" or i > 0,
        } for i, (run_id, qid) in enumerate(work.targets)]
        with self.buffer_lock:
            self._arrived()
            self.judgments.extend(rows)
            # (not sharing, one content can be judged twice in one flush: the cache keeps the first)
            if outcome.status == "ok" and source != "cache" and work.item_key not in self._cached:
                self._cached.add(work.item_key)
                self.cache.append({"item_key": work.item_key, "judge_id": self.judge_id,
                                   "verdict": outcome.verdict, "raw_response": outcome.raw,
                                   "call_id": outcome.call_id})

    def add_calls(self, calls: list[CallLog]) -> None:
        with self.buffer_lock:
            self._arrived()
            self.calls.extend(vars(c) for c in calls)

    def due(self, tick: float = 0.0) -> bool:
        wait = max(self.seconds / 10, self.seconds - 2 * self.write_s - tick)
        with self.buffer_lock:
            return self.oldest is not None and (
                len(self.judgments) >= self.every or time.monotonic() - self.oldest >= wait)

    def flush(self) -> None:
        with self.buffer_lock:
            judgments, cache, calls = self.judgments, self.cache, self.calls
            self.judgments, self.cache, self.calls, oldest, self.oldest = [], [], [], self.oldest, None
        if not (judgments or calls):
            return
        tables = {
            "new_judgments": pa.Table.from_pylist(judgments, schema=JUDGMENT_SCHEMA),
            "new_cache": pa.Table.from_pylist(cache, schema=CACHE_SCHEMA),
            "new_calls": pa.Table.from_pylist(calls, schema=CALL_SCHEMA),
        }
        t0 = time.monotonic()
        try:
            with self.lock, warehouse.writer(self.db) as con, warehouse.transaction(con):
                for name, table in tables.items():
                    con.register(name, table)
                con.execute(query_text("save_judgments.sql"))
                for name in tables:
                    con.unregister(name)
        except BaseException:
            with self.buffer_lock:             # nothing was stored: keep it for the next flush
                self.judgments[:0], self.cache[:0], self.calls[:0] = judgments, cache, calls
                self.oldest = oldest if self.oldest is None else min(oldest, self.oldest)
            raise
        self.stored += len(judgments)
        self.write_s = 0.7 * self.write_s + 0.3 * (time.monotonic() - t0)


JUDGMENT_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("qid", pa.string()), ("judge_id", pa.string()), ("verdict", pa.bool_()),
    ("status", pa.string()), ("reason", pa.string()), ("raw_response", pa.string()), ("tokens_in", pa.int32()),
    ("tokens_out", pa.int32()), ("latency_ms", pa.float64()), ("cost_usd", pa.float64()), ("source", pa.string()),
    ("item_key", pa.string()), ("call_id", pa.string()), ("shared", pa.bool_())])
CACHE_SCHEMA = pa.schema([("item_key", pa.string()), ("judge_id", pa.string()), ("verdict", pa.bool_()),
                          ("raw_response", pa.string()), ("call_id", pa.string())])
CALL_SCHEMA = pa.schema([
    ("call_id", pa.string()), ("judge_id", pa.string()), ("request_hash", pa.string()), ("n_items", pa.int32()),
    ("attempts", pa.int32()), ("status", pa.string()), ("error", pa.string()), ("tokens_in", pa.int32()),
    ("tokens_out", pa.int32()), ("latency_ms", pa.float64()), ("cost_usd", pa.float64())])


FAILED_CALL = ("error", "timeout")


async def _run(judge, spec: JudgeSpec, work: list[Work], writer: JudgmentWriter, summary: JudgeSummary,
               progress: ProgressFn | None, stop: threading.Event, hurry: threading.Event) -> None:
    size = judge.batch_size
    batches = [work[i:i + size] for i in range(0, len(work), size)]
    done = [summary.from_cache]
    streams = isinstance(judge, LLMJudge)          # reports each outcome as it arrives
    running = [True]

    def record_call(call: CallLog) -> None:
        writer.add_calls([call])
        summary.calls += 1
        summary.tokens_in += call.tokens_in or 0
        summary.tokens_out += call.tokens_out or 0
        summary.cost_usd += call.cost_usd or 0
        if call.status in FAILED_CALL:
            summary.calls_failed += 1
            summary.first_error = summary.first_error or call.error
        elif call.status != "interrupted":
            summary.calls_answered += 1

    async def one(batch: list[Work]) -> None:
        reported: set[int] = set()

        def on_outcome(i: int, outcome: Outcome) -> None:
            reported.add(i)
            writer.add(batch[i], outcome, "judge")
            summary.statuses[outcome.status] = summary.statuses.get(outcome.status, 0) + len(batch[i].targets)

        try:
            if streams:
                await judge.judge([w.item for w in batch], on_outcome, record_call)
            elif not stop.is_set():
                outcomes, calls = await judge.judge([w.item for w in batch])
                for i, outcome in enumerate(outcomes):
                    on_outcome(i, outcome)
                for call in calls:
                    record_call(call)
        except Stopped:
            pass                                    # interrupted: what is not reported stays pending
        except asyncio.CancelledError:
            if not hurry.is_set():
                raise
        except Exception as exc:  # noqa: BLE001  (a bug must not lose the other batches' results)
            log.exception("judge %s crashed on a batch", spec.name)
            for i in set(range(len(batch))) - reported:
                on_outcome(i, Outcome(None, "error", f"judge crashed: {type(exc).__name__}: {exc}"))
        done[0] += sum(len(batch[i].targets) for i in reported)
        if progress:
            progress(spec.name, done[0], summary.pending)

    async def flusher() -> None:
        # Stores what arrived while calls are still out, from a thread: the event loop keeps sending.
        tick = min(0.1, writer.seconds / 10)
        while running[0]:
            await asyncio.sleep(tick)
            if writer.due(tick):
                await asyncio.to_thread(writer.flush)

    tasks = [asyncio.create_task(one(b)) for b in batches]

    async def watch() -> None:
        # Ctrl-C arrives in the main thread as a threading.Event; this loop runs in a worker thread.
        while not stop.is_set():
            await asyncio.sleep(0.05)
        halt = getattr(judge, "halt", None)
        if halt is not None:
            halt()
        while not hurry.is_set():
            await asyncio.sleep(0.05)
        for task in tasks:                          # a second Ctrl-C: stop waiting for calls in flight
            task.cancel()

    helpers = [asyncio.create_task(flusher()), asyncio.create_task(watch())]
    try:
        await asyncio.gather(*tasks)
    finally:
        running[0] = False
        helpers[1].cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        close = getattr(judge, "aclose", None)
        if close is not None:
            await close()


class UnknownRun(ValueError):
    pass


def check_runs(con: duckdb.DuckDBPyConnection, runs: Sequence[str] | None) -> None:
    """Refuse run names the warehouse does not know, listing the ones it does."""
    if not runs:
        return
    known = con.execute("SELECT name, run_id FROM runs ORDER BY name").fetchall()
    unknown = [r for r in runs if r not in {n for n, _ in known} | {i for _, i in known}]
    if unknown:
        names = ", ".join(sorted({n for n, _ in known})) or "none (import or predict some first)"
        raise UnknownRun(f"unknown run{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                         f"known runs: {names}")


def require_runs(db, runs: Sequence[str] | None) -> None:
    if runs:
        with warehouse.reader(db) as con:
            check_runs(con, runs)


def pending_total(db, panel: Panel, runs: Sequence[str] | None, retry_failed: bool) -> int:
    """How many judgments the panel still owes (what `judge` would do now, cache hits included)."""
    with warehouse.reader(db) as con:
        return sum(pending_work(con, spec, runs, retry_failed)[1] for spec in panel.judges)


def judge_runs(db, spec: JudgeSpec, runs: Sequence[str] | None = None, retry_failed: bool = False,
               progress: ProgressFn | None = None, flush_every: int = 200, flush_seconds: float = FLUSH_SECONDS,
               stop: threading.Event | None = None, hurry: threading.Event | None = None,
               wait: bool = False) -> JudgeSummary:
    """Judge every answered prediction of `runs` (all runs if empty) that `spec` has not judged.
    `stop` (default: the process-wide STOP that Ctrl-C sets) ends sending; what arrived is stored.
    Another session judging the same runs with this judge: LeaseHeld, or with `wait` it waits."""
    stop, hurry = stop or STOP, hurry or HURRY
    t0 = time.perf_counter()
    with warehouse.writer(db) as con:
        check_runs(con, runs)
        work, _ = pending_work(con, spec, runs, retry_failed)
    if not work:
        return JudgeSummary(spec.name, spec.judge_id, seconds=time.perf_counter() - t0)
    resources = judge_leases(spec, work)
    leases.acquire(db, resources, f"judge {spec.name} on run(s) {', '.join(sorted({r for w in work for r, _ in w.targets}))}",
                   wait=wait)
    try:
        return _judge_held(db, spec, runs, retry_failed, progress, flush_every, flush_seconds, stop, hurry, t0)
    finally:
        leases.release(db, resources)


def judge_leases(spec: JudgeSpec, work: list[Work]) -> list[str]:
    """One lease per judge and run with pending work: two sessions never pay for the same verdicts."""
    return [f"judge:{spec.judge_id}:{run_id}" for run_id in sorted({r for w in work for r, _ in w.targets})]


def panel_leases(db, panel: Panel, runs: Sequence[str] | None, retry_failed: bool) -> list[str]:
    with warehouse.reader(db) as con:
        return [r for spec in panel.judges for r in judge_leases(spec, pending_work(con, spec, runs, retry_failed)[0])]


def _judge_held(db, spec: JudgeSpec, runs, retry_failed: bool, progress, flush_every: int, flush_seconds: float,
                stop: threading.Event, hurry: threading.Event, t0: float) -> JudgeSummary:
    summary = JudgeSummary(spec.name, spec.judge_id)
    with warehouse.writer(db) as con:             # again, under the lease: a holder before us may have judged them
        work, summary.pending = pending_work(con, spec, runs, retry_failed)
        cache = cached_verdicts(con, [w.item_key for w in work]) if spec.share_verdicts else {}
    writer = JudgmentWriter(db, spec.judge_id, every=flush_every, seconds=flush_seconds)
    for w in work:
        if w.item_key in cache:
            verdict, raw, call_id = cache[w.item_key]
            writer.add(w, Outcome(verdict, "ok", raw=raw, call_id=call_id), "cache")
            summary.from_cache += len(w.targets)
    writer.flush()
    to_send = [w for w in work if w.item_key not in cache]
    summary.distinct_sent = len(to_send)
    if progress:
        progress(spec.name, summary.from_cache, summary.pending)
    if to_send and not stop.is_set():
        judge = build_judge(spec)
        try:
            asyncio.run(_run(judge, spec, to_send, writer, summary, progress, stop, hurry))
        finally:
            writer.flush()
    summary.judged = writer.stored
    summary.interrupted = stop.is_set() and summary.judged < summary.pending
    summary.seconds = time.perf_counter() - t0
    return summary


def forecast(db, panel: Panel, runs: Sequence[str] | None = None, retry_failed: bool = False) -> list[dict]:
    """What `judge` would do now: items, cache hits, calls, tokens and dollars, without sending anything."""
    rows = []
    with warehouse.reader(db) as con:
        check_runs(con, runs)
        for spec in panel.judges:
            work, pending = pending_work(con, spec, runs, retry_failed)
            cache = cached_verdicts(con, [w.item_key for w in work]) if _has_cache(con) and spec.share_verdicts else {}
            to_send = [w for w in work if w.item_key not in cache]
            tokens_in = tokens_out = calls = 0
            if not spec.offline:
                from adapters.judges.limiter import JudgeLimiter
                from adapters.judges.prompts import load_prompt

                judge = LLMJudge(spec, None, load_prompt(spec.prompt), JudgeLimiter(None, None, 1))
                size = judge.batch_size
                for i in range(0, len(to_send), size):
                    t_in, t_out = judge.forecast_tokens([w.item for w in to_send[i:i + size]])
                    tokens_in, tokens_out, calls = tokens_in + t_in, tokens_out + t_out, calls + 1
            rows.append({"judge": spec.name, "judge_id": spec.judge_id, "endpoint": spec.endpoint, "pending": pending,
                         "cache_hits": sum(len(w.targets) for w in work if w.item_key in cache),
                         "distinct_to_send": len(to_send), "calls": calls, "tokens_in": tokens_in,
                         "tokens_out": tokens_out, "cost_usd": spec.cost(tokens_in, tokens_out),
                         "minutes_at_rate_limit": (calls / spec.requests_per_minute)
                         if spec.requests_per_minute else None})
    return rows


def _has_cache(con: duckdb.DuckDBPyConnection) -> bool:
    return bool(con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'judge_cache'").fetchall()[0][0])


def format_forecast(rows: list[dict]) -> str:
    lines = [f"{'judge':<22}{'pending':>9}{'cached':>8}{'to send':>9}{'calls':>8}{'tokens in':>11}"
             f"{'tokens out':>11}{'cost $':>10}{'minutes':>9}"]
    for r in rows:
        minutes = "" if r["minutes_at_rate_limit"] is None else f"{math.ceil(r['minutes_at_rate_limit'])}"
        lines.append(f"{r['judge']:<22}{r['pending']:>9}{r['cache_hits']:>8}{r['distinct_to_send']:>9}"
                     f"{r['calls']:>8}{r['tokens_in']:>11,}{r['tokens_out']:>11,}{r['cost_usd']:>10.4f}{minutes:>9}")
    lines.append("identities (what verdicts and the cache are keyed by):")
    for r in rows:
        lines.append(f"  {r['judge']}: {r['judge_id']}" + (f" at {r['endpoint']}" if r.get("endpoint") else ""))
    return "\n".join(lines)


def summary_row(s: JudgeSummary) -> dict:
    return {"judge": s.judge, "pending": s.pending, "from_cache": s.from_cache, "sent": s.distinct_sent,
            "calls": s.calls, "statuses": json.dumps(s.statuses, sort_keys=True), "tokens_in": s.tokens_in,
            "tokens_out": s.tokens_out, "cost_usd": round(s.cost_usd, 6), "seconds": round(s.seconds, 2),
            "judged": s.judged, "left": s.left, "interrupted": s.interrupted, "calls_failed": s.calls_failed,
            "all_calls_failed": s.all_calls_failed, "first_error": s.first_error}


# -- what the flows ask of a panel (they import no adapter themselves) ---------------------------------

def check_keys(panel: Panel) -> None:
    """Every judge's API key is where its spec says (MissingKey names the first that is not)."""
    check_spec_keys(panel.judges)


def panel_ready(judges: str) -> tuple[Panel | None, str | None]:
    """The panel, loaded and its keys checked, or why it cannot sit now (a missing key)."""
    panel = load_panel(judges)
    try:
        check_keys(panel)
    except MissingKey as exc:
        return None, str(exc)
    return panel, None


def nothing_to_judge(db, panel: Panel, runs: Sequence[str] | None) -> bool:
    try:
        return pending_total(db, panel, runs or None, False) == 0
    except Exception:  # noqa: BLE001  (the judge flow reports the problem in its own words)
        return False
