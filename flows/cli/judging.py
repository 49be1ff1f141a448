"""Commands that judge: judge (a panel over runs), judge-train (the learned judge's heads)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flows.cli.render import progress_bars
from flows.server import ensure_server


def cmd_judge(args: argparse.Namespace) -> int:
    from tasks import judging

    # Checked before Prefect starts: a bad judges file or run name costs no start-up.
    panel = judging.load_panel(args.judges)
    judging.require_runs(args.db, args.run)
    if args.dry_run:
        return _judge(args, panel)
    from warehouse import leases

    # Held from here, before Prefect starts: a second session on the same panel and runs is refused at
    # once; the judge tasks take the same leases again (re-entrant in this process).
    with leases.held(args.db, judging.panel_leases(args.db, panel, args.run, args.retry_failed),
                     f"panel {panel.name} on " + (", ".join(args.run) if args.run else "every run"), wait=args.wait,
                     on_wait=lambda h: print(f"ctsvqa: waiting for {h.describe()}, which is judging these runs",
                                             file=sys.stderr)):
        return _judge(args, panel)


def _judge(args: argparse.Namespace, panel) -> int:
    from tasks import judging
    import flows.judge as judge_flow

    ensure_server(args.db)

    if args.dry_run:
        rows = judge_flow.judge(judges=args.judges, runs=args.run, db=args.db, retry_failed=args.retry_failed,
                                dry_run=True, panel=panel.ref())
        print("forecast — nothing was sent:")
        print(judging.format_forecast(rows))
        return 0
    judging.check_keys(panel)
    before = judging.pending_total(args.db, panel, args.run, args.retry_failed)
    from flows.server import start_temporary_server_ignoring_ctrl_c
    from tasks import interrupt

    start_temporary_server_ignoring_ctrl_c()
    rows = None
    try:
        with interrupt.ctrl_c("sending nothing more, storing what arrived (Ctrl-C again: stop waiting for calls "
                              "in flight)", "no longer waiting for calls in flight"), progress_bars() as progress:
            bars: dict[str, int] = {}

            def hook(name: str, done: int, total: int) -> None:
                if name not in bars:
                    bars[name] = progress.add_task(name, total=total)
                progress.update(bars[name], completed=done, total=total)

            judge_flow.progress_hook = hook
            rows = judge_flow.judge(judges=args.judges, runs=args.run, db=args.db, retry_failed=args.retry_failed,
                                    wait=args.wait, panel=panel.ref())
    except Exception:
        if not judging.STOP.is_set():
            raise                      # after Ctrl-C the flow may fail on its way out; the data is stored
    finally:
        judge_flow.progress_hook = None

    if judging.STOP.is_set() and (rows is None or any(r["interrupted"] for r in rows)):
        left = judging.pending_total(args.db, panel, args.run, args.retry_failed)
        print(f"ctsvqa: {judging.JudgingInterrupted(max(0, before - left), left)}", file=sys.stderr)
        return 130
    for r in rows:
        print(f"{r['judge']}: {r['pending']} pending, {r['from_cache']} from cache, {r['sent']} distinct judged in "
              f"{r['calls']} API calls, statuses {r['statuses']}, ${r['cost_usd']:.4f}, {r['seconds']} s")
    failed = [r for r in rows if r["all_calls_failed"]]
    if failed:
        print("ctsvqa: error: " + "; ".join(f"judge {r['judge']!r}: all {r['calls_failed']} calls failed, "
                                            f"the first with {' '.join(str(r['first_error']).split())[:200]}" for r in failed)
              + " (stored as errors; they are asked again on the next run)", file=sys.stderr)
        return 1
    return 0


def cmd_judge_train(args: argparse.Namespace) -> int:
    from tasks.judge_training import HEAD_DIR, LOO_DIR, train, train_all

    out = args.out or HEAD_DIR
    if args.leave_one_out:
        m, *loo = train_all(args.db, out=out, seed=args.seed, embed_cache=args.embed_cache, target=args.target)
        print(f"leave-one-out heads written under {Path(out) / LOO_DIR}: "
              + ", ".join(f"{x['left_out_run']} (threshold {x['decision_rule']['threshold']})" for x in loo))
    else:
        m = train(args.db, target=args.target, out=out, seed=args.seed, embed_cache=args.embed_cache)
    print(f"head written: {Path(out) / 'head.npz'} ({m['head_bytes']:,} bytes, sha256 {m['head_sha256'][:12]}) "
          f"from {m['data']['n_items']} {m['target']} verdicts; threshold {m['decision_rule']['threshold']}, "
          f"abstain in [{m['decision_rule']['abstain_low']}, {m['decision_rule']['abstain_high']}); "
          f"training kappa {m['metrics']['kappa_covered']} at coverage {m['metrics']['coverage']}")
    return 0
