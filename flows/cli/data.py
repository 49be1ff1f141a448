"""Commands that bring data in: import-upstream, phantoms, preprocess."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flows.server import ensure_server


def cmd_import_upstream(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from tasks.upstream_import import imported_already

    # The same files as the last import: nothing to do, so no flow run (Prefect's start-up would be
    # the only cost). The flow makes the same check, for deployments and direct calls.
    done = imported_already(args.path, args.db, args.dataset)
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


def cmd_phantoms(args: argparse.Namespace) -> int:
    from tasks.phantom_sets import write_phantoms

    n_volumes, n_qa = write_phantoms(args.out, args.n, args.seed, args.size, args.version)
    print(f"wrote {n_volumes} phantom volume(s) and {n_qa} questions under {args.out} (upstream layout; "
          f"load with: ctsvqa import-upstream {args.out})")
    return 0


def cmd_preprocess(args: argparse.Namespace) -> int:
    import warehouse
    from tasks import input_cache, model_inputs

    # Every requested input built and current: nothing to do, so no flow run (Prefect's start-up would
    # be the only cost); the budget is still applied.
    chosen = model_inputs.select_recipes(args.recipes)
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
