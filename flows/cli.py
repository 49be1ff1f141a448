"""The `ctsvqa` command line. Heavy imports (Prefect) happen inside the commands that need them,
so `ctsvqa report` answers in well under a second."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import flows  # noqa: F401  (sets Prefect defaults before Prefect is imported)


def _db_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--db", metavar="FILE",
                        help="warehouse file (default: $CTSVQA_DB, else warehouse/ctsvqa.duckdb)")
    return parent


def cmd_import_upstream(args: argparse.Namespace) -> int:
    from flows.import_upstream import import_upstream

    summary = import_upstream(path=str(args.path), db=args.db, dataset=args.dataset)
    print(f"imported dataset {summary['dataset_id']}: {summary['n_volumes']} volumes, "
          f"{summary['n_questions']} questions, {summary['n_category_labels']} category labels")
    for run, statuses in summary["predictions"].items():
        judges = summary["judgments"].get(run, {})
        print(f"  {run}: {sum(statuses.values())} predictions; judges: "
              + (", ".join(f"{j} ({sum(c.values())})" for j, c in judges.items()) or "none"))
    return 0


def cmd_judge(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    import flows.judge as judge_flow
    from tasks.judging import format_forecast

    if args.dry_run:
        rows = judge_flow.judge(judges=args.judges, runs=args.run, db=args.db, retry_failed=args.retry_failed,
                                dry_run=True)
        print("forecast — nothing was sent:")
        print(format_forecast(rows))
        return 0
    console = Console(stderr=True)
    with Progress(TextColumn("{task.description:<20}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, disable=not console.is_terminal) as progress:
        bars: dict[str, int] = {}

        def hook(name: str, done: int, total: int) -> None:
            if name not in bars:
                bars[name] = progress.add_task(name, total=total)
            progress.update(bars[name], completed=done, total=total)

        judge_flow.progress_hook = hook
        try:
            rows = judge_flow.judge(judges=args.judges, runs=args.run, db=args.db, retry_failed=args.retry_failed)
        finally:
            judge_flow.progress_hook = None
    for r in rows:
        print(f"{r['judge']}: {r['pending']} pending, {r['from_cache']} from cache, {r['sent']} distinct judged in "
              f"{r['calls']} API calls, statuses {r['statuses']}, ${r['cost_usd']:.4f}, {r['seconds']} s")
    return 0


def cmd_judge_train(args: argparse.Namespace) -> int:
    from adapters.judges.learned import HEAD_DIR
    from tasks.judge_training import train

    out = args.out or HEAD_DIR
    m = train(args.db, target=args.target, out=out, seed=args.seed, embed_cache=args.embed_cache)
    print(f"head written: {Path(out) / 'head.npz'} ({m['head_bytes']:,} bytes, sha256 {m['head_sha256'][:12]}) "
          f"from {m['data']['n_items']} {m['target']} verdicts; threshold {m['decision_rule']['threshold']}, "
          f"abstain in [{m['decision_rule']['abstain_low']}, {m['decision_rule']['abstain_high']}); "
          f"training kappa {m['metrics']['kappa_covered']} at coverage {m['metrics']['coverage']}")
    return 0


def cmd_phantoms(args: argparse.Namespace) -> int:
    from adapters.datasets.phantom import generate

    cases = generate(args.out, args.n, args.seed, args.size)
    n_qa = sum(len(c.qa) for c in cases)
    print(f"wrote {len(cases)} phantom volume(s) and {n_qa} questions under {args.out} (upstream layout; "
          f"load with: ctsvqa import-upstream {args.out})")
    return 0


def cmd_preprocess(args: argparse.Namespace) -> int:
    from flows.preprocess import preprocess

    result = preprocess(recipes=args.recipes, db=args.db, dataset=args.dataset, volumes=args.volumes,
                        out=args.out, workers=args.workers, decode_cache=args.decode_cache)
    print(f"{result['volumes_processed']} volume(s) processed; {result['inputs_ok']} model inputs built in total "
          f"under {result['out_root']}")
    for volume, reason in result["failed_volumes"].items():
        print(f"  failed: {volume}: {reason}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import warehouse
    from tasks.report import print_report

    with warehouse.reader(args.db) as con:
        print_report(con, dataset=args.dataset)
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

    out = publish_snapshot(args.db, args.out, storage_version=args.storage_version)
    print(f"snapshot written: {out} (open it with duckdb.connect({str(out)!r}, read_only=True))")
    if args.parquet:
        with warehouse.reader(out) as con:
            for path in export_views_parquet(con, args.parquet):
                print(path)
    return 0


def cmd_db_migrate(args: argparse.Namespace) -> int:
    import warehouse
    from warehouse.migrate import view_names

    with warehouse.writer(args.db) as con:
        version = con.execute("SELECT max(version) FROM schema_version").fetchone()[0]
        print(f"{warehouse.resolve_db(args.db)}: schema version {version}; views: {', '.join(view_names(con))}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    db = _db_parent()
    parser = argparse.ArgumentParser(prog="ctsvqa", description="Benchmark 3D medical VLMs on CT-SpatialVQA.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("import-upstream", parents=[db],
                       help="load an upstream CT-SpatialVQA clone (dataset, predictions, judge verdicts)")
    p.add_argument("path", type=Path, help="root of the clone (or of any dataset in its layout)")
    p.add_argument("--dataset", help="dataset id (default: the layout's manifest name, else ct-spatialvqa)")
    p.set_defaults(func=cmd_import_upstream)

    p = sub.add_parser("judge", parents=[db], help="judge predictions with a panel of judges")
    p.add_argument("--judges", required=True, metavar="FILE|PRESET",
                   help="a judges YAML file, or a preset: paper, offline, offline-learned")
    p.add_argument("--run", action="append", metavar="NAME", help="only this run (repeatable; default: all runs)")
    p.add_argument("--dry-run", action="store_true", help="forecast calls, tokens and cost; send nothing")
    p.add_argument("--retry-failed", action="store_true",
                   help="also judge again what ended unparsed, blocked or without a verdict")
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
    p.set_defaults(func=cmd_judge_train)

    p = sub.add_parser("phantoms", help="generate a synthetic chest-CT data set in the upstream layout")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--n", type=int, default=6, help="number of volumes")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--size", choices=("small", "full"), default="small",
                   help="small: fast demo volumes; full: CT-RATE sized (512x512x200-300)")
    p.set_defaults(func=cmd_phantoms)

    p = sub.add_parser("preprocess", parents=[db], help="build model inputs for the volumes of a dataset")
    p.add_argument("--recipes", default="all", help="all | own | upstream | comma-separated recipe names")
    p.add_argument("--dataset", help="only this dataset (default: all)")
    p.add_argument("--volumes", action="append", metavar="DIR",
                   help="where the .nii.gz files are (repeatable; the dataset's import folder is searched too)")
    p.add_argument("--out", help="output root (default: inputs/ beside the warehouse file)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (one thread each)")
    p.add_argument("--decode-cache", metavar="DIR", help="also keep decoded int16 volumes here, by content hash")
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("report", parents=[db], help="print the accuracy tables")
    p.add_argument("--dataset", help="only this dataset")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("export", parents=[db], help="write upstream-format CSV/JSON and Parquet of every view")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--dataset", help="dataset to export (required when the warehouse has several)")
    p.add_argument("--panel", help="jury panel to export (required when the dataset has verdicts of several)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("db", help="warehouse maintenance")
    dbsub = p.add_subparsers(dest="db_command", required=True)
    s = dbsub.add_parser("snapshot", parents=[db], help="write a read-only copy for analysts")
    s.add_argument("out", type=Path, help="snapshot file, e.g. snapshots/ctsvqa.duckdb")
    s.add_argument("--parquet", type=Path, metavar="DIR", help="also write every view as Parquet here")
    s.add_argument("--storage-version", metavar="V",
                   help="DuckDB storage version of the copy, e.g. v1.5.0 for older DuckDB CLIs")
    s.set_defaults(func=cmd_db_snapshot)
    s = dbsub.add_parser("migrate", parents=[db], help="create or upgrade the schema and views")
    s.set_defaults(func=cmd_db_migrate)
    return parser


def main(argv: list[str] | None = None) -> int:
    from adapters.datasets.upstream import UpstreamFormatError
    from adapters.judges.keys import MissingKey
    from warehouse import WarehouseError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UpstreamFormatError, WarehouseError, MissingKey, ValueError, FileNotFoundError) as exc:
        print(f"ctsvqa: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
