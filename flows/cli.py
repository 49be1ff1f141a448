"""The `ctsvqa` command line. Heavy imports (Prefect) happen inside the commands that need them,
so `ctsvqa report` answers in well under a second."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import traceback
from pathlib import Path

import flows  # noqa: F401  (sets Prefect defaults before Prefect is imported)
from flows.server import ensure_server


def _print_json(obj) -> None:
    """Machine-readable output: NaN and infinities become null (JSON has neither), paths and times text."""
    import json
    import math
    from dataclasses import asdict, is_dataclass

    def clean(x):
        if is_dataclass(x) and not isinstance(x, type):
            return clean(asdict(x))
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, float) and not math.isfinite(x):
            return None
        return x

    print(json.dumps(clean(obj), indent=2, default=str))


def _db_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--db", metavar="FILE",
                        help="warehouse file (default: $CTSVQA_DB, else warehouse/ctsvqa.duckdb)")
    return parent


def cmd_import_upstream(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from adapters.datasets import upstream
    from tasks.upstream_import import fingerprint, previous_import

    # The same files as the last import: nothing to do, so no flow run (Prefect's start-up would be
    # the only cost). The flow makes the same check, for deployments and direct calls.
    done = previous_import(args.db, fingerprint(upstream.discover(args.path), args.dataset))
    if done is not None:
        summary = asdict(done)
        print("the files are unchanged since the last import of this dataset; nothing to do")
    else:
        ensure_server(args.db)
        from flows.import_upstream import import_upstream

        summary = import_upstream(path=str(args.path), db=args.db, dataset=args.dataset)
    print(f"{'dataset' if done else 'imported dataset'} {summary['dataset_id']}: {summary['n_volumes']} volumes, "
          f"{summary['n_questions']} questions, {summary['n_category_labels']} category labels")
    for run, statuses in summary["predictions"].items():
        judges = summary["judgments"].get(run, {})
        print(f"  {run}: {sum(statuses.values())} predictions; judges: "
              + (", ".join(f"{j} ({sum(c.values())})" for j, c in judges.items()) or "none"))
    return 0


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


def cmd_judge(args: argparse.Namespace) -> int:
    from adapters.judges.spec import load_panel
    from tasks import judging

    # Checked before Prefect starts: a bad judges file or run name costs no start-up.
    panel = load_panel(args.judges)
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
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from tasks import judging
    import flows.judge as judge_flow

    ensure_server(args.db)

    if args.dry_run:
        rows = judge_flow.judge(judges=args.judges, runs=args.run, db=args.db, retry_failed=args.retry_failed,
                                dry_run=True, panel=panel.ref())
        print("forecast — nothing was sent:")
        print(judging.format_forecast(rows))
        return 0
    from adapters.judges.keys import check_keys

    check_keys(panel.judges)
    before = judging.pending_total(args.db, panel, args.run, args.retry_failed)
    from flows.server import start_temporary_server_ignoring_ctrl_c
    from tasks import interrupt

    start_temporary_server_ignoring_ctrl_c()
    console = Console(stderr=True)
    rows = None
    try:
        with interrupt.ctrl_c("sending nothing more, storing what arrived (Ctrl-C again: stop waiting for calls "
                              "in flight)", "no longer waiting for calls in flight"), \
                Progress(TextColumn("{task.description:<20}"), BarColumn(), MofNCompleteColumn(),
                         TimeRemainingColumn(), console=console, disable=not console.is_terminal) as progress:
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
    from adapters.judges.heads import HEAD_DIR, LOO_DIR
    from tasks.judge_training import train, train_all

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


def cmd_phantoms(args: argparse.Namespace) -> int:
    from adapters.datasets.phantom import generate

    cases = generate(args.out, args.n, args.seed, args.size, args.version)
    n_qa = sum(len(c.qa) for c in cases)
    print(f"wrote {len(cases)} phantom volume(s) and {n_qa} questions under {args.out} (upstream layout; "
          f"load with: ctsvqa import-upstream {args.out})")
    return 0


def cmd_preprocess(args: argparse.Namespace) -> int:
    import warehouse
    from adapters.models.recipes import select
    from tasks import input_cache, model_inputs

    # Every requested input built and current: nothing to do, so no flow run (Prefect's start-up would
    # be the only cost); the budget is still applied.
    chosen = select(args.recipes)
    out_root = model_inputs.output_root(args.db, args.out)
    max_bytes = input_cache.budget(args.max_cache)
    if warehouse.resolve_db(args.db).is_file() and not model_inputs.plan(
            args.db, args.dataset, chosen, [Path(v).resolve() for v in args.volumes or []], out_root):
        input_cache.evict(out_root, max_bytes)
        result = model_inputs.summary(args.db, args.dataset, chosen, out_root, max_bytes, 0)
    else:
        ensure_server(args.db)
        from flows.preprocess import preprocess

        result = preprocess(recipes=args.recipes, db=args.db, dataset=args.dataset, volumes=args.volumes,
                            out=args.out, workers=args.workers, decode_cache=args.decode_cache,
                            max_cache=args.max_cache)
    budget = f" of a {result['max_cache'] / 1e9:.1f} GB budget" if result["max_cache"] else ""
    print(f"{result['volumes_processed']} volume(s) processed; {result['inputs_ok']} model inputs built in total "
          f"under {result['out_root']} ({result['cache_bytes'] / 1e9:.2f} GB on disk{budget})")
    for volume, reason in result["failed_volumes"].items():
        print(f"  failed: {volume}: {reason}")
    if result["failed_volumes"]:
        print(f"ctsvqa: {len(result['failed_volumes'])} of {result['n_volumes']} volume(s) have no usable input "
              "(listed above); every other input is built", file=sys.stderr)
        return 1
    return 0


def _options(pairs: list[str] | None) -> dict:
    import json

    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--option {pair!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)           # numbers, booleans, lists; anything else stays text
        except json.JSONDecodeError:
            out[key] = value
    return out


def cmd_infer(args: argparse.Namespace) -> int:
    from tasks.answering import one_adapter_per_request

    with one_adapter_per_request():        # one adapter for the checks here, the plan and the run
        return _infer(args)


def _infer(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from adapters.models.base import AdapterError
    from tasks.inference import InferenceError, InferRequest, plan_run, replan

    from adapters.models import models_config

    cfg = models_config.for_model(args.model, args.models_config)      # the lab's paths; flags win
    shard = {}
    if args.devices is not None or args.gpus is not None or args.ray_address:
        from tasks.sharding import sharding_from

        sharding = sharding_from(args.devices, args.gpus, args.ray_address)     # refused here, before Prefect
        shard = dict(devices=list(sharding.replicas) if isinstance(sharding.replicas, tuple) else None,
                     gpus=sharding.replicas if isinstance(sharding.replicas, int) else None,
                     ray_address=args.ray_address)
    device = args.device or cfg.get("device") or ("cuda" if shard else "cpu")
    params = dict(model=args.model, checkpoint=args.checkpoint or cfg.get("checkpoint"), name=args.name,
                  dataset=args.dataset, device=device, dtype=args.dtype or cfg.get("dtype"), batch_size=args.batch_size,
                  limit_volumes=args.limit_volumes, seed=args.seed,
                  options={**(cfg.get("options") or {}), **_options(args.option)}, ablate=args.ablate,
                  retry_failed=args.retry_failed, code_dir=args.code_dir or cfg.get("code_dir"),
                  env=args.env or cfg.get("env"), wait=args.wait)
    try:
        plan = plan_run(args.db, InferRequest(**params), device_here=not shard)   # a bad model, dataset or name
        #                                                                            fails before Prefect starts
    except (AdapterError, InferenceError) as exc:
        print(f"ctsvqa: error: {exc}", file=sys.stderr)
        return 2
    if not plan.pending:
        print(f"run {plan.name} ({plan.run_id}) on {plan.dataset_id} has every prediction stored; nothing to do "
              f"(--retry-failed answers its failures again)")
        return 0
    from flows.server import start_temporary_server_ignoring_ctrl_c
    from tasks import interrupt
    from tasks.inference import run_lease
    from warehouse import leases

    # Held from here to the end, so a second session of the same run is refused before Prefect starts;
    # the flow's task takes the same lease again (re-entrant in this process).
    with leases.held(args.db, [run_lease(plan)], f"run {plan.name} ({plan.run_id}) on {plan.dataset_id}",
                     wait=args.wait, on_wait=lambda h: print(f"ctsvqa: waiting for {h.describe()}, which holds run "
                                                            f"{plan.name}", file=sys.stderr)):
        if args.wait and not (plan := replan(args.db, plan, InferRequest(**params))).pending:
            print(f"run {plan.name} ({plan.run_id}) on {plan.dataset_id}: the session waited for answered "
                  f"everything; nothing to do")
            return 0
        ensure_server(args.db)
        import flows.infer as infer_flow

        console = Console(stderr=True)
        with Progress(TextColumn("{task.description:<20}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=console, disable=not console.is_terminal) as progress:
            bar = progress.add_task(plan.name, total=plan.n_pending)
            infer_flow.progress_hook = lambda _, done, total: progress.update(bar, completed=done, total=total)
            start_temporary_server_ignoring_ctrl_c()
            try:
                with interrupt.ctrl_c("starting no new volume; storing what is answered (Ctrl-C again: exit now)"):
                    state = infer_flow.infer(**params, **shard, db=args.db, plan=plan.ref(), return_state=True)
            finally:
                infer_flow.progress_hook = None
    if not state.is_completed():
        print(f"ctsvqa: error: {state.message}", file=sys.stderr)
        return 1
    row = state.result()
    if row["interrupted"]:
        print(f"ctsvqa: interrupted: {row['ok'] + row['error']} answered, {row['left']} left; run the same command "
              f"to continue", file=sys.stderr)
        return 130
    print(f"run {row['run']} ({row['run_id']}) on {row['dataset']}: {row['ok']} answered, {row['error']} failed "
          f"of {row['pending']} in {row['seconds']} s" + (f"; errors: {row['errors']}" if row["errors"] else ""))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from adapters.models.base import AdapterSettings
    from adapters.models.registry import describe

    from adapters.models import models_config

    settings = AdapterSettings(checkpoint=args.checkpoint, code_dir=args.code_dir)
    per_model = {name: (AdapterSettings(checkpoint=args.checkpoint or sec.get("checkpoint"),
                                        code_dir=args.code_dir or sec.get("code_dir"),
                                        options=dict(sec.get("options") or {})), sec.get("env"))
                 for name, sec in models_config.load(args.models_config).items()}
    infos = [i for i in describe(settings, per_model) if not args.model or i.name == args.model]
    if args.json:
        _print_json([{**{k: v for k, v in vars(i).items()}, "ready": i.ready} for i in infos])
        return 0
    for info in infos:
        state = "ready" if info.ready else ("not importable" if not info.importable else "missing requirements")
        print(f"{info.name:<16} recipe {info.recipe or '-':<26} {state:<20} {info.origin}: {info.target}")
        if info.description:
            print(f"    {info.description}")
        for r in info.requirements or []:
            print(f"    [{'found' if r.found else 'MISSING'}] {r.what}: {r.detail}")
        if info.error:
            print(f"    error: {info.error}")
def cmd_env(args: argparse.Namespace) -> int:
    import time

    from adapters.models import environments as envs

    try:
        if args.env_command == "create":
            t0 = time.monotonic()
            st = envs.create(args.family, python=args.python, torch=args.torch,
                             log=lambda line: print(line, file=sys.stderr, flush=True))
            print(f"{st.family}: ready at {st.path} (Python {st.python_version}, "
                  + ", ".join(f"{k} {v}" for k, v in st.packages.items()) + f") in {time.monotonic() - t0:.0f} s")
            return 0
        listed = envs.list_envs()
        if args.json:
            _print_json([{"family": st.family, "path": st.path, "ready": st.ready, "reason": st.reason,
                          "python": st.python_version, "packages": st.packages, "fingerprint": st.fingerprint}
                         for st in listed])
            return 0
        print(f"family environments in {envs.root()} ($CTSVQA_ENVS):")
        for st in listed:
            state = "ready" if st.ready else f"NOT READY ({st.reason})"
            print(f"{st.family:<10} {state}  {st.path}")
            if st.ready:
                print(f"    Python {st.python_version}; " + ", ".join(f"{k} {v}" for k, v in st.packages.items())
                      + f"; fingerprint {st.fingerprint[:12]}")
        return 0
    except envs.EnvError as exc:
        print(f"ctsvqa: error: {exc}", file=sys.stderr)
        return 2


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

            _print_json(report_data(con, dataset=args.dataset))
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


def cmd_db_snapshot(args: argparse.Namespace) -> int:
    import warehouse
    from warehouse.snapshot import export_views_parquet, publish_snapshot

    out = publish_snapshot(args.db, args.out, **({"storage_version": args.storage_version}
                                                  if args.storage_version else {}))
    print(f"snapshot written: {out} (open it with duckdb.connect({str(out)!r}, read_only=True))")
    with warehouse.reader(out) as con:
        taken_at, incomplete = con.execute("SELECT taken_at, runs_incomplete FROM snapshot_info").fetchall()[0]
        print(f"taken at {taken_at}; runs still being judged then (table snapshot_info, view run_status): "
              + ("; ".join(incomplete) or "none"))
        if args.parquet:
            for path in export_views_parquet(con, args.parquet, dataset=args.dataset, panel=args.panel):
                print(path)
    return 0


def cmd_db_refresh(args: argparse.Namespace) -> int:
    from warehouse import summaries

    done = summaries.refresh(args.db, full=args.full)
    print(f"summaries are up to date ({'all' if done.full else done.runs} run(s) recomputed, {done.seconds:.2f} s)")
    return 0


def cmd_db_migrate(args: argparse.Namespace) -> int:
    import warehouse
    from warehouse.migrate import view_names

    with warehouse.writer(args.db) as con:
        version = con.execute("SELECT max(version) FROM schema_version").fetchone()[0]
        print(f"{warehouse.resolve_db(args.db)}: schema version {version}; views: {', '.join(view_names(con))}")
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    from flows import server

    if args.action == "start":
        state, started = server.start(args.db)
        print(f"Prefect server {'started' if started else 'already running'}: PID {state.pid}, "
              f"UI {state.ui}, API {state.url}, files in {state.dir}")
        return 0
    if args.action == "stop":
        state = server.stop(args.db)
        print(f"Prefect server stopped (PID {state.pid})" if state.running else
              f"no Prefect server running for {state.dir.parent}")
        return 0
    state = server.status(args.db)
    stale = " (removed a stale PID file)" if state.stale else ""
    if args.action == "env":
        if not state.healthy:
            print(f"ctsvqa: error: no Prefect server running for {state.dir.parent}{stale}; "
                  "start it with: ctsvqa server start", file=sys.stderr)
            return 3
        print(f"export PREFECT_API_URL={state.url}")
        return 0
    if args.json:
        _print_json({"running": state.running, "healthy": state.healthy, "pid": state.pid, "port": state.port,
                     "ui": state.ui if state.port else None, "api": state.url, "dir": state.dir,
                     "log": state.log, "stale_pid_file_removed": state.stale})
        return 0 if state.healthy else (3 if not state.running else 1)
    if not state.running:
        print(f"no Prefect server running for {state.dir.parent}{stale}")
        return 3
    print(f"Prefect server PID {state.pid}: {'healthy' if state.healthy else 'not answering'}; UI {state.ui}, "
          f"API {state.url}, log {state.log}")
    return 0 if state.healthy else 1


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("ctsvqa")
    except metadata.PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def build_parser() -> argparse.ArgumentParser:
    db = _db_parent()
    parser = argparse.ArgumentParser(prog="ctsvqa", description="Benchmark 3D medical VLMs on CT-SpatialVQA.")
    parser.add_argument("--debug", action="store_true",
                        help="show Prefect's full console log and the traceback of an error ($CTSVQA_DEBUG=1)")
    parser.add_argument("--verbose", action="store_true", help="show Prefect's progress (INFO) log lines")
    parser.add_argument("--version", action="version", version=f"ctsvqa {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("import-upstream", parents=[db],
                       help="load an upstream CT-SpatialVQA clone (dataset, predictions, judge verdicts)")
    p.add_argument("path", type=Path, help="root of the clone (or of any dataset in its layout)")
    p.add_argument("--dataset", help="dataset id (default: the layout's manifest name, else ct-spatialvqa)")
    p.set_defaults(func=cmd_import_upstream)

    p = sub.add_parser("benchmark", parents=[db],
                       help="the main job: data set -> preprocess -> infer -> judge -> score -> report")
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="benchmark YAML (see examples/benchmark.yaml; default: a phantom set, the offline "
                        "baselines, the phantom expert and its shuffle ablation, the learned offline judge)")
    p.add_argument("--out", type=Path, default=Path("out"), help="report, snapshot and generated data (default: out/)")
    p.set_defaults(func=cmd_benchmark)

    p = sub.add_parser("judge", parents=[db], help="judge predictions with a panel of judges")
    p.add_argument("--judges", required=True, metavar="FILE|PRESET",
                   help="a judges YAML file, or a preset: paper, offline, offline-learned")
    p.add_argument("--run", action="append", metavar="NAME", help="only this run (repeatable; default: all runs)")
    p.add_argument("--dry-run", action="store_true", help="forecast calls, tokens and cost; send nothing")
    p.add_argument("--retry-failed", action="store_true",
                   help="also judge again what ended unparsed, blocked or without a verdict")
    p.add_argument("--wait", action="store_true",
                   help="if another session is judging these runs with these judges, wait for it (default: exit 2)")
    p.set_defaults(func=cmd_judge)

    p = sub.add_parser("judge-train", parents=[db],
                       help="train the offline `learned` judge's head from the imported upstream verdicts")
    p.add_argument("--target", default="majority", choices=("majority", "gpt", "gemini2.5", "qwen"),
                   help="which published verdicts to learn (default: the published jury's majority)")
    p.add_argument("--out", type=Path, help="where head.npz and manifest.json go (default: the shipped "
                   "adapters/judges/learned/, which makes a new learned-v1 judge)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--embed-cache", type=Path, metavar="FILE",
                   help="keep the text embeddings in this .npz so a re-training embeds nothing twice")
    p.add_argument("--no-leave-one-out", dest="leave_one_out", action="store_false",
                   help="train only the head on every run, not also one per run without that run's verdicts "
                        "(OUT/leave-one-out/<run>/, what a judge with options.leave_one_out scores that run with)")
    p.set_defaults(func=cmd_judge_train)

    p = sub.add_parser("phantoms", help="generate a synthetic chest-CT data set in the upstream layout")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--n", type=int, default=6, help="number of volumes")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--size", choices=("small", "full"), default="small",
                   help="small: fast demo volumes; full: CT-RATE sized (512x512x200-300)")
    p.add_argument("--version", type=int, choices=(1, 2), default=2,
                   help="generator version: 2 (default) mirrors half the bodies so no answer is fixed by anatomy; "
                        "1 reproduces the earlier sets")
    p.set_defaults(func=cmd_phantoms)

    p = sub.add_parser("preprocess", parents=[db], help="build model inputs for the volumes of a dataset")
    p.add_argument("--recipes", default="all", help="all | own | upstream | comma-separated recipe names")
    p.add_argument("--dataset", help="only this dataset (default: all)")
    p.add_argument("--volumes", action="append", metavar="DIR",
                   help="where the .nii.gz files are (repeatable; the dataset's import folder is searched too)")
    p.add_argument("--out", help="output root (default: inputs/ beside the warehouse file)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (one thread each)")
    p.add_argument("--decode-cache", metavar="DIR", help="also keep decoded int16 volumes here, by content hash")
    p.add_argument("--max-cache", metavar="SIZE",
                   help="keep at most this much of built inputs on disk (e.g. 50G), least recently used go first; "
                        "rebuilt on demand (default: $CTSVQA_MAX_CACHE, else unbounded)")
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("infer", parents=[db], help="run a model (or a baseline) over a dataset; resumable")
    p.add_argument("--model", required=True, metavar="NAME", help="an adapter name (see `ctsvqa models`) or module:Class")
    p.add_argument("--checkpoint", metavar="PATH", help="checkpoint directory or hub id (default: the adapter's)")
    p.add_argument("--code-dir", metavar="DIR", help="a checkout of the model's own repository (see `ctsvqa models`)")
    p.add_argument("--name", help="run name (default: the model name, plus -shuffled under the ablation)")
    p.add_argument("--dataset", help="dataset id (required when the warehouse has several)")
    p.add_argument("--device", help="cpu | cuda | cuda:N (default: cpu; cuda with --devices/--gpus)")
    p.add_argument("--devices", metavar="cuda:0,cuda:1",
                   help="one model replica per GPU of this host, volumes shared out as replicas free up (Ray)")
    p.add_argument("--gpus", type=int, metavar="N", help="N one-GPU model replicas on a local Ray or --ray-address")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="join this Ray cluster (default: $RAY_ADDRESS, else a local Ray just for the run)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="default: the adapter's")
    p.add_argument("--batch-size", type=int, default=8, help="questions of one volume per adapter call")
    p.add_argument("--limit-volumes", type=int, metavar="N", help="only the first N volumes of the dataset")
    p.add_argument("--seed", type=int, default=0, help="recorded; drives sampling, the random baseline and the ablation")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="adapter option (repeatable)")
    p.add_argument("--ablate", choices=("shuffle-volumes",),
                   help="shuffle-volumes: show every question another patient's volume (a seeded derangement)")
    p.add_argument("--retry-failed", action="store_true", help="also answer again the questions stored as errors")
    p.add_argument("--wait", action="store_true",
                   help="if another session is answering this run, wait for it to finish (default: refuse, exit 2)")
    p.add_argument("--env", metavar="FAMILY|current|PYTHON",
                   help="where a remote-code model runs: its family environment (default, a worker process; "
                        "`ctsvqa env create FAMILY`), `current` (in this process), or PATH/TO/python (your own env)")
    p.add_argument("--models-config", metavar="FILE",
                   help="YAML: per model checkpoint, code_dir, env, options, dtype (default: $CTSVQA_MODELS_CONFIG)")
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("models", help="list the model adapters, their recipes and whether what they need is found")
    p.add_argument("--model", metavar="NAME", help="only this adapter")
    p.add_argument("--checkpoint", metavar="PATH", help="check this checkpoint instead of the adapters' defaults")
    p.add_argument("--code-dir", metavar="DIR", help="check this checkout of the model's own code")
    p.add_argument("--models-config", metavar="FILE",
                   help="YAML: per model checkpoint, code_dir, env, options (default: $CTSVQA_MODELS_CONFIG)")
    p.add_argument("--json", action="store_true", help="print the adapters as JSON")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("env", help="the family environments that remote-code models run in (create|list)")
    envsub = p.add_subparsers(dest="env_command", required=True)
    s = envsub.add_parser("create", help="build (or repair) a family's environment from adapters/models/envs/")
    s.add_argument("family", help="m3d, med3dvlm, ctchat, radfm, vila-m3, merlin")
    s.add_argument("--python", metavar="PATH", help="base interpreter (default: one that fits the family's # python:)")
    s.add_argument("--torch", metavar="REQS", help="replace the torch line, e.g. 'torch==2.13.0' or "
                   "'torch==2.14.1 torchvision==0.29.1' (a package named here is dropped from the rest)")
    s.set_defaults(func=cmd_env)
    s = envsub.add_parser("list", help="each family: path, ready or not, Python and key package versions")
    s.add_argument("--json", action="store_true", help="print the environments as JSON")
    s.set_defaults(func=cmd_env)

    p = sub.add_parser("score", parents=[db], help="text metrics (BLEU, ROUGE, METEOR, SBERT, exact match) per run")
    p.add_argument("--run", action="append", metavar="NAME", help="only this run (repeatable; default: all runs)")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("report", parents=[db], help="print the accuracy tables")
    p.add_argument("--dataset", help="only this dataset")
    p.add_argument("--html", type=Path, metavar="DIR",
                   help="also write a self-contained HTML report (charts inlined) and PNG/SVG charts here")
    p.add_argument("--panel", help="jury panel of the HTML report (default: paper, upstream, offline-learned, "
                                   "offline — the first that judged the dataset)")
    p.add_argument("--json", action="store_true", help="print the tables as JSON (one object per dataset)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("export", parents=[db], help="write upstream-format CSV/JSON and Parquet of every view")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--dataset", help="dataset to export (required when the warehouse has several)")
    p.add_argument("--panel", help="jury panel to export (required when the dataset has verdicts of several)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("server", parents=[db],
                       help="the local Prefect server the commands share (start|stop|status|env)")
    p.add_argument("action", choices=("start", "stop", "status", "env"),
                   help="env prints `export PREFECT_API_URL=...` for the prefect CLI: eval \"$(ctsvqa server env)\"")
    p.add_argument("--json", action="store_true", help="status: print the server's state as JSON")
    p.set_defaults(func=cmd_server)

    p = sub.add_parser("db", help="warehouse maintenance")
    dbsub = p.add_subparsers(dest="db_command", required=True)
    s = dbsub.add_parser("snapshot", parents=[db], help="write a read-only copy for analysts")
    s.add_argument("out", type=Path, help="snapshot file, e.g. snapshots/ctsvqa.duckdb")
    s.add_argument("--parquet", type=Path, metavar="DIR", help="also write every view as Parquet here")
    s.add_argument("--storage-version", metavar="V",
                   help="DuckDB storage version of the copy (default v1.5.0: DuckDB 1.5 and newer, the newest "
                        "duckdb-cli on PyPI included, open it; `current`: this DuckDB's own)")
    s.add_argument("--dataset", help="Parquet: only this dataset's rows")
    s.add_argument("--panel", help="Parquet: only this jury panel's rows (views with a panel column)")
    s.set_defaults(func=cmd_db_snapshot)
    s = dbsub.add_parser("refresh", parents=[db], help="bring the summary tables behind the metric views up to date")
    s.add_argument("--full", action="store_true", help="recompute every run, not only the changed ones")
    s.set_defaults(func=cmd_db_refresh)
    s = dbsub.add_parser("migrate", parents=[db], help="create or upgrade the schema and views")
    s.set_defaults(func=cmd_db_migrate)
    return parser


GLOBAL_FLAGS = ("--debug", "--verbose")


@contextlib.contextmanager
def _console(debug: bool, verbose: bool):
    """Keep Prefect's run-failure tracebacks out of the terminal (see flows/console.py); `--debug`
    leaves Prefect's console as it is."""
    if debug:
        yield
        return
    env = {"PREFECT_LOGGING_HANDLERS_CONSOLE_CLASS": "flows.console.CliConsoleHandler",
           "CTSVQA_CONSOLE_LEVEL": "INFO" if verbose else "WARNING"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    added = []
    if "prefect.logging.handlers" in sys.modules:    # Prefect already configured its logging (in-process use)
        from prefect.logging.handlers import PrefectConsoleHandler

        from flows.console import QuietFailures

        for handler in logging.getLogger().handlers:
            if isinstance(handler, PrefectConsoleHandler) and not any(
                    isinstance(f, QuietFailures) for f in handler.filters):
                quiet = QuietFailures()
                handler.addFilter(quiet)
                added.append((handler, quiet))
    try:
        yield
    finally:
        for handler, quiet in added:
            handler.removeFilter(quiet)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}" + (f" (-> {exc.filename2})" if exc.filename2 else "")
    else:
        text = str(exc)
    return " ".join(text.split()) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """Errors end as one line on stderr: exit 2 for bad input or a bad environment (the message says
    which file, item or field and what to do), 1 for anything unexpected. The traceback is in the
    Prefect flow run's log, and on the terminal with `--debug`."""
    from adapters.datasets.upstream import UpstreamFormatError
    from adapters.judges.keys import MissingKey
    from flows.server import ServerError
    from warehouse import WarehouseError

    argv = list(sys.argv[1:] if argv is None else argv)
    # global flags are accepted anywhere on the line
    argv = [a for a in argv if a in GLOBAL_FLAGS] + [a for a in argv if a not in GLOBAL_FLAGS]
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("CTSVQA_DEBUG", "") not in ("", "0")
    try:
        with _console(debug, args.verbose):
            return args.func(args)
    except BrokenPipeError:
        # the reader went away (`ctsvqa report | head`): no error to report; end as a shell's SIGPIPE would
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        return 141
    except (UpstreamFormatError, WarehouseError, MissingKey, ServerError, ValueError, OSError) as exc:
        if debug:
            traceback.print_exc()
        print(f"ctsvqa: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print("ctsvqa: interrupted; what finished is stored: run the same command to continue", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001  (a bug: still one line, the details on request)
        if debug:
            traceback.print_exc()
        print(f"ctsvqa: internal error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        if not debug:
            print("ctsvqa: run the same command with --debug for the traceback", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
