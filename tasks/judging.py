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
from pathlib import Path
from typing import Callable, Sequence

import duckdb
import pyarrow as pa

import warehouse
from adapters.judges import build_judge
from adapters.judges.llm import CallLog, LLMJudge, Outcome
from adapters.judges.prompts import Item
from adapters.judges.spec import JudgeSpec, Panel
from warehouse import loaders

SQL = Path(__file__).resolve().parent.parent / "sql" / "queries"
log = logging.getLogger("ctsvqa.judging")

ProgressFn = Callable[[str, int, int], None]        # (judge name, done, total)


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
    rows = con.execute((SQL / "pending_judgments.sql").read_text(), {
        "judge_id": spec.judge_id, "runs": list(runs or []), "retry_failed": retry_failed}).fetchall()
    work: dict[str, Work] = {}
    for run_id, qid, question, answer, prediction, item_key in rows:
        w = work.setdefault(item_key, Work(item_key, Item(question, answer, prediction)))
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
    """Buffers results and stores them in one transaction per flush (every `every` items or
    `seconds`); flushes from several judges in one process take turns."""

    _locks: dict[str, threading.Lock] = {}

    def __init__(self, db, judge_id: str, every: int = 200, seconds: float = 2.0):
        self.db, self.judge_id, self.every, self.seconds = db, judge_id, every, seconds
        self.lock = self._locks.setdefault(str(warehouse.resolve_db(db)), threading.Lock())
        self.judgments: list[dict] = []
        self.cache: list[dict] = []
        self.calls: list[dict] = []
        self.last_flush = time.monotonic()

    def add(self, work: Work, outcome: Outcome, source: str) -> None:
        for run_id, qid in work.targets:
            self.judgments.append({
                "run_id": run_id, "qid": qid, "judge_id": self.judge_id, "verdict": outcome.verdict,
                "status": outcome.status, "reason": outcome.reason, "raw_response": outcome.raw,
                "tokens_in": outcome.tokens_in, "tokens_out": outcome.tokens_out, "latency_ms": outcome.latency_ms,
                "cost_usd": outcome.cost_usd if source != "cache" else 0.0, "source": source,
                "item_key": work.item_key, "call_id": outcome.call_id,
            })
        if outcome.status == "ok" and source != "cache":
            self.cache.append({"item_key": work.item_key, "judge_id": self.judge_id, "verdict": outcome.verdict,
                               "raw_response": outcome.raw, "call_id": outcome.call_id})

    def add_calls(self, calls: list[CallLog]) -> None:
        self.calls.extend(vars(c) for c in calls)

    def maybe_flush(self) -> None:
        if len(self.judgments) >= self.every or time.monotonic() - self.last_flush >= self.seconds:
            self.flush()

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if not (self.judgments or self.calls):
            return
        tables = {
            "new_judgments": pa.Table.from_pylist(self.judgments, schema=JUDGMENT_SCHEMA),
            "new_cache": pa.Table.from_pylist(self.cache, schema=CACHE_SCHEMA),
            "new_calls": pa.Table.from_pylist(self.calls, schema=CALL_SCHEMA),
        }
        with self.lock, warehouse.writer(self.db) as con, warehouse.transaction(con):
            for name, table in tables.items():
                con.register(name, table)
            con.execute((SQL / "save_judgments.sql").read_text())
            for name in tables:
                con.unregister(name)
        self.judgments, self.cache, self.calls = [], [], []


JUDGMENT_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("qid", pa.string()), ("judge_id", pa.string()), ("verdict", pa.bool_()),
    ("status", pa.string()), ("reason", pa.string()), ("raw_response", pa.string()), ("tokens_in", pa.int32()),
    ("tokens_out", pa.int32()), ("latency_ms", pa.float64()), ("cost_usd", pa.float64()), ("source", pa.string()),
    ("item_key", pa.string()), ("call_id", pa.string())])
CACHE_SCHEMA = pa.schema([("item_key", pa.string()), ("judge_id", pa.string()), ("verdict", pa.bool_()),
                          ("raw_response", pa.string()), ("call_id", pa.string())])
CALL_SCHEMA = pa.schema([
    ("call_id", pa.string()), ("judge_id", pa.string()), ("request_hash", pa.string()), ("n_items", pa.int32()),
    ("attempts", pa.int32()), ("status", pa.string()), ("error", pa.string()), ("tokens_in", pa.int32()),
    ("tokens_out", pa.int32()), ("latency_ms", pa.float64()), ("cost_usd", pa.float64())])


async def _run(judge, spec: JudgeSpec, work: list[Work], writer: JudgmentWriter, summary: JudgeSummary,
               progress: ProgressFn | None) -> None:
    size = judge.batch_size
    batches = [work[i:i + size] for i in range(0, len(work), size)]
    done = [summary.from_cache]

    async def one(batch: list[Work]) -> None:
        try:
            outcomes, calls = await judge.judge([w.item for w in batch])
        except Exception as exc:  # noqa: BLE001  (a bug must not lose the other batches' results)
            log.exception("judge %s crashed on a batch", spec.name)
            outcomes, calls = [Outcome(None, "error", f"judge crashed: {type(exc).__name__}: {exc}")] * len(batch), []
        for w, outcome in zip(batch, outcomes):
            writer.add(w, outcome, "judge")
            summary.statuses[outcome.status] = summary.statuses.get(outcome.status, 0) + len(w.targets)
        writer.add_calls(calls)
        summary.calls += len(calls)
        summary.tokens_in += sum(c.tokens_in or 0 for c in calls)
        summary.tokens_out += sum(c.tokens_out or 0 for c in calls)
        summary.cost_usd += sum(c.cost_usd or 0 for c in calls)
        writer.maybe_flush()
        done[0] += sum(len(w.targets) for w in batch)
        if progress:
            progress(spec.name, done[0], summary.pending)

    try:
        await asyncio.gather(*(one(b) for b in batches))
    finally:
        close = getattr(judge, "aclose", None)
        if close is not None:
            await close()


def judge_runs(db, spec: JudgeSpec, runs: Sequence[str] | None = None, retry_failed: bool = False,
               progress: ProgressFn | None = None, flush_every: int = 200) -> JudgeSummary:
    """Judge every answered prediction of `runs` (all runs if empty) that `spec` has not judged."""
    t0 = time.perf_counter()
    summary = JudgeSummary(spec.name, spec.judge_id)
    with warehouse.writer(db) as con:
        work, summary.pending = pending_work(con, spec, runs, retry_failed)
        cache = cached_verdicts(con, [w.item_key for w in work])
    writer = JudgmentWriter(db, spec.judge_id, every=flush_every)
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
    if to_send:
        judge = build_judge(spec)
        try:
            asyncio.run(_run(judge, spec, to_send, writer, summary, progress))
        finally:
            writer.flush()
    summary.seconds = time.perf_counter() - t0
    return summary


def forecast(db, panel: Panel, runs: Sequence[str] | None = None, retry_failed: bool = False) -> list[dict]:
    """What `judge` would do now: items, cache hits, calls, tokens and dollars, without sending anything."""
    rows = []
    with warehouse.reader(db) as con:
        for spec in panel.judges:
            work, pending = pending_work(con, spec, runs, retry_failed)
            cache = cached_verdicts(con, [w.item_key for w in work]) if _has_cache(con) else {}
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
            rows.append({"judge": spec.name, "judge_id": spec.judge_id, "pending": pending,
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
    return "\n".join(lines)


def summary_row(s: JudgeSummary) -> dict:
    return {"judge": s.judge, "pending": s.pending, "from_cache": s.from_cache, "sent": s.distinct_sent,
            "calls": s.calls, "statuses": json.dumps(s.statuses, sort_keys=True), "tokens_in": s.tokens_in,
            "tokens_out": s.tokens_out, "cost_usd": round(s.cost_usd, 6), "seconds": round(s.seconds, 2)}
