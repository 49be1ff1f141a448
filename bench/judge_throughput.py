"""Benchmark: judging throughput against rate-limited providers.

    .venv/bin/python bench/judge_throughput.py [--items 3000] [--rpm 1200] [--latency 0.3]

A local fake of the OpenAI, Gemini and DashScope-compatible APIs answers after --latency seconds
and enforces --rpm requests per rolling minute per API (429 + Retry-After beyond it). The `paper`
preset (its prompt, models and settings) is pointed at it, with its request rate set to --rpm, and
judges --items distinct predictions. Baseline, measured in the same run: the upstream scripts'
way — one 5-item call at a time, waiting for each reply.

Goals (issue 3): achieved requests/s >= 0.9 x the limit; an immediate re-run makes 0 calls.

Then (issue 7) a kill -9 at a random moment: one judge (gpt-4o-mini's settings, every 8th batch
leaving an item out so re-asks are in play) judges --kill-items items in a child process that is
killed when a random 30-70 % of them were answered; a re-run judges the rest. Counted: items
whose reply had arrived before the kill and that were sent again. Goal: none whose reply arrived
more than one flush interval (2 s) before the kill. --kill-items 0 skips it.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import duckdb  # noqa: E402
import openai  # noqa: E402

import yaml  # noqa: E402

from adapters.judges.prompts import Item, load_prompt  # noqa: E402
from adapters.judges.spec import Panel, load_panel  # noqa: E402
from tasks import judging  # noqa: E402
from tests.fake_providers import FakeProviders, fault  # noqa: E402
from tests.synthetic_judging import build_warehouse  # noqa: E402

def sequential_upstream_style(fake: FakeProviders, items: list[Item], n_calls: int) -> float:
    """Requests/s of one blocking 5-item call after another (the upstream evaluate_with_gpt loop)."""
    prompt = load_prompt("upstream-batch5-v1")
    client = openai.OpenAI(base_url=fake.url + "/v1", api_key="bench", max_retries=0)
    t0 = time.perf_counter()
    for i in range(n_calls):
        batch = items[5 * i:5 * i + 5]
        client.chat.completions.create(model="gpt-4o-mini", temperature=0.0, max_tokens=512, messages=[
            {"role": "system", "content": prompt.system}, {"role": "user", "content": prompt.render(batch)}])
    return n_calls / (time.perf_counter() - t0)


def kill_and_rerun(args, in_flight: int) -> dict:
    """Judge in a child process, kill -9 it at a random moment, judge the rest here; count what
    was paid for twice."""
    fake = FakeProviders(latency_s=args.latency, rpm=args.rpm).start()
    work = Path(tempfile.mkdtemp(prefix="ctsvqa-judge-kill-"))
    db = work / "wh.duckdb"
    build_warehouse(db, args.kill_items)
    gpt = load_panel("paper").judges[0]
    judges = work / "judges.yaml"
    judges.write_text(yaml.safe_dump({"panel": "kill", "judges": [{
        "name": gpt.name, "provider": gpt.provider, "model": gpt.model, "prompt": gpt.prompt,
        "temperature": gpt.temperature, "max_tokens": gpt.max_tokens, "structured": gpt.structured,
        "base_url": fake.url + "/v1", "requests_per_minute": args.rpm, "max_concurrency": in_flight}]}))
    for i in range(0, args.kill_items, 40):
        fake.fail("openai", fault("short"), match=f"nodule number {i} located")
    spec = load_panel(judges).judges[0]
    judging.register_panel(db, load_panel(judges))
    code = textwrap.dedent(f"""
        from adapters.judges.spec import load_panel
        from tasks import judging
        judging.judge_runs({str(db)!r}, load_panel({str(judges)!r}).judges[0], None)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    target = int(args.kill_items * random.uniform(0.3, 0.7))
    while sum(len(r.answered) for r in fake.requests("openai")) < target and child.poll() is None:
        time.sleep(0.01)
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)   # the killed client's dropped requests
    child.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    child.wait()
    before = fake.requests("openai")
    answered = {item: r.t_reply for r in before for item in r.answered}
    judging.judge_runs(db, spec, None)
    resent = {item for r in fake.requests("openai")[len(before):] for item in r.items} & set(answered)
    fake.stop()
    old = [item for item in resent if answered[item] < killed_at - judging.FLUSH_SECONDS]
    return {"answered": len(answered), "resent": len(resent), "resent_old": len(old),
            "at": target / args.kill_items}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=3000)
    ap.add_argument("--rpm", type=int, default=1200, help="each provider's limit, requests per minute")
    ap.add_argument("--latency", type=float, default=0.3, help="seconds the fake takes per reply")
    ap.add_argument("--baseline-calls", type=int, default=40)
    ap.add_argument("--kill-items", type=int, default=2000, help="items of the kill -9 run (0: skip it)")
    args = ap.parse_args()

    fake = FakeProviders(latency_s=args.latency, rpm=args.rpm).start()
    os.environ.update({"OPENAI_BASE_URL": fake.url + "/v1", "GOOGLE_GEMINI_BASE_URL": fake.url,
                       "DASHSCOPE_COMPATIBLE_BASE_URL": fake.url + "/compatible-mode/v1",
                       "OPENAI_API_KEY": "bench", "GEMINI_API_KEY": "bench", "DASHSCOPE_API_KEY": "bench"})
    paper = load_panel("paper")
    # Same prompt, models and decoding as the preset; the rate set to the provider's limit and
    # enough calls in flight to fill it (latency x rate, with headroom).
    in_flight = max(4, int(args.rpm / 60 * args.latency * 2) + 2)
    panel = Panel(paper.name, paper.description, tuple(
        replace(s, requests_per_minute=args.rpm, tokens_per_minute=None, max_concurrency=in_flight)
        for s in paper.judges), paper.source)
    db = Path(tempfile.mkdtemp(prefix="ctsvqa-judge-bench-")) / "wh.duckdb"
    items = build_warehouse(db, args.items)

    forecast = {r["judge"]: r for r in judging.forecast(db, panel)}
    judging.register_panel(db, panel)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(panel.judges)) as pool:
        summaries = list(pool.map(lambda s: judging.judge_runs(db, s, None, flush_every=500), panel.judges))
    elapsed = time.perf_counter() - t0
    requests_before_rerun = len(fake.requests())
    with ThreadPoolExecutor(len(panel.judges)) as pool:
        reruns = list(pool.map(lambda s: judging.judge_runs(db, s, None), panel.judges))
    rerun_calls = len(fake.requests()) - requests_before_rerun
    served = {api: (len(fake.requests(api, "ok")), len(fake.requests(api, "rate_limited")))
              for api in ("openai", "gemini", "dashscope-compatible")}
    fake.rpm = None
    baseline = sequential_upstream_style(fake, items, args.baseline_calls)
    fake.stop()

    limit = args.rpm / 60
    with duckdb.connect(str(db), read_only=True) as con:
        statuses = dict(con.execute("SELECT status, count(*) FROM judgments GROUP BY status").fetchall())
        latency = con.execute("SELECT median(latency_ms) FROM judge_calls").fetchone()[0]
    print(f"{args.items} distinct items x {len(panel.judges)} judges, 5 items per call; fake latency "
          f"{args.latency:.2f} s, limit {args.rpm} requests/min per provider = {limit:.1f}/s; "
          f"{in_flight} calls in flight per judge; wall {elapsed:.1f} s\n")
    print(f"{'judge':<18}{'ok calls':>9}{'429s':>7}{'req/s':>8}{'/ limit':>9}{'tokens in (forecast)':>26}"
          f"{'tokens out (forecast)':>26}")
    rates = []
    for s in summaries:
        ok_calls, limited = served[next(j.provider for j in panel.judges if j.name == s.judge)]
        rate = ok_calls / s.seconds
        rates.append(rate / limit)
        f = forecast[s.judge]
        print(f"{s.judge:<18}{ok_calls:>9}{limited:>7}{rate:>8.2f}{rate / limit:>9.2f}"
              f"{s.tokens_in:>14,} ({f['tokens_in']:,})".rjust(26) + f"{s.tokens_out:>14,} ({f['tokens_out']:,})"
              .rjust(26))
    print(f"\nbaseline, sequential upstream style: {baseline:.2f} req/s (one judge); ours: "
          f"{statistics.median(r * limit for r in rates):.2f} req/s per judge = "
          f"{statistics.median(r * limit for r in rates) / baseline:.1f}x")
    print(f"median call latency {latency:.0f} ms; judgment statuses {statuses}")
    print(f"achieved / limit, median over judges: {statistics.median(rates):.2f} (goal >= 0.90: "
          f"{'met' if statistics.median(rates) >= 0.9 else 'MISSED'})")
    print(f"immediate re-run: {rerun_calls} calls, {sum(r.pending for r in reruns)} pending (goal 0: "
          f"{'met' if rerun_calls == 0 else 'MISSED'})")
    if args.kill_items:
        k = kill_and_rerun(args, in_flight)
        print(f"items re-sent after a kill -9 (at {k['at']:.0%} of {args.kill_items} items, "
              f"{k['answered']} answered before it): {k['resent']}, of which answered more than "
              f"{judging.FLUSH_SECONDS:g} s before the kill: {k['resent_old']} (goal 0: "
              f"{'met' if k['resent_old'] == 0 else 'MISSED'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
