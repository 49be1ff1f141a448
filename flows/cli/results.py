"""Commands that read results: benchmark (the main job and its headline), score, report, export."""

from __future__ import annotations

import argparse
import sys

from flows.cli.render import print_json
from flows.server import ensure_server


def cmd_benchmark(args: argparse.Namespace) -> int:
    from tasks.benchmark_config import describe, load_config

    cfg = load_config(args.config)                # a bad config fails before Prefect starts
    print(f"benchmark: {describe(cfg)}", file=sys.stderr)
    ensure_server(args.db)
    from flows.benchmark import benchmark

    from flows.server import start_temporary_server_ignoring_ctrl_c
    from tasks import interrupt

    start_temporary_server_ignoring_ctrl_c()
    from flows.progress import stage_bars

    with interrupt.ctrl_c("finishing the stage in hand and starting no other; storing what finished (Ctrl-C "
                          "again: exit now)"), stage_bars():
        result = benchmark(config=str(args.config) if args.config else None, db=args.db, out=str(args.out))
    if result.get("interrupted"):
        print(f"ctsvqa: interrupted in {result['interrupted']} (left: {result['left']}); what finished is stored: "
              f"run the same command to continue", file=sys.stderr)
        return 130
    print(f"\njury accuracy — dataset {result['dataset']}, panel {result['panel']}:")
    print(f"  {'model':<28} {'answered':>9} {'majority %':>11} {'strict %':>9}")
    for r in result["headline"]:
        pct = lambda x: "—" if x is None or x != x else f"{100 * x:.1f}"   # noqa: E731
        print(f"  {r['model']:<28} {r['n_predictions']:>4}/{r['n_questions']:<4} {pct(r['majority_accuracy']):>11} "
              f"{pct(r['strict_accuracy']):>9}" + (f"   not final: {r['n_pending_judgments']} judgment(s) pending"
                                                  if r.get("status") == "judging" else ""))
    if result.get("leaderboard"):
        print("\nyour runs among the published ones (majority of each row's jury):")
        if result.get("leaderboard_note"):
            print(f"  {result['leaderboard_note']}")
        for r in result["leaderboard"]:
            print(f"  {r['rank']:>3}. {r['model']:<28} {r['majority %']:>6}  {r['answered']:>11}  {r['what']:<22} {r['jury']}")
    for line in result["failures"]:
        print(f"  failed: {line}")
    for line in result["skipped"]:
        print(f"  jury skipped: {line}")
    print(f"\nreport:   {result['report']}\nwarehouse: {result['db']}\nsnapshot: {result['snapshot']}")
    return 1 if result["failures"] else 0


def cmd_score(args: argparse.Namespace) -> int:
    ensure_server(args.db)
    from flows.score import score

    rows = score(runs=args.run, db=args.db)
    cols = ("model", "count", "bleu", "rouge1_f", "rouge2_f", "rougeL_f", "meteor", "sbert_cosine", "exact_match")
    print("  ".join(f"{c:>12}" for c in cols))
    for r in rows:
        print("  ".join(f"{r[c]:>12.4f}" if isinstance(r[c], float) else f"{str(r[c]):>12}" for c in cols))
    print("statistics refreshed: views accuracy_ci (bootstrap by volume), model_comparisons (McNemar), "
          "fleiss_kappa")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import warehouse
    from tasks.report import print_report

    with warehouse.reader(args.db) as con:
        if args.json:
            from tasks.report import report_data

            print_json(report_data(con, dataset=args.dataset))
        else:
            print_report(con, dataset=args.dataset)
    if args.html:
        from tasks.report_html import write_report

        report = write_report(args.db, args.html, dataset=args.dataset, panel=args.panel)
        print(f"report: {report.html} (panel {report.panel or 'none'}; {len(report.images)} chart images beside it)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import warehouse
    from tasks.exports import export_all

    with warehouse.reader(args.db) as con:
        written = export_all(con, args.out, args.dataset, args.panel)
    for path in written:
        print(path)
    return 0
