"""Commands that look after the warehouse and the Prefect server: db snapshot|refresh|migrate, server."""

from __future__ import annotations

import argparse
import sys

from flows.cli.render import print_json


def cmd_db_snapshot(args: argparse.Namespace) -> int:
    import warehouse
    from warehouse.snapshot import export_views_parquet, publish_snapshot, snapshot_state

    out = publish_snapshot(args.db, args.out, **({"storage_version": args.storage_version}
                                                  if args.storage_version else {}))
    print(f"snapshot written: {out} (open it with duckdb.connect({str(out)!r}, read_only=True))")
    with warehouse.reader(out) as con:
        taken_at, incomplete = snapshot_state(con)
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
    from warehouse.migrate import applied_versions, view_names

    with warehouse.writer(args.db) as con:
        version = max(applied_versions(con), default=None)
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
        print_json({"running": state.running, "healthy": state.healthy, "pid": state.pid, "port": state.port,
                     "ui": state.ui if state.port else None, "api": state.url, "dir": state.dir,
                     "log": state.log, "stale_pid_file_removed": state.stale})
        return 0 if state.healthy else (3 if not state.running else 1)
    if not state.running:
        print(f"no Prefect server running for {state.dir.parent}{stale}")
        return 3
    print(f"Prefect server PID {state.pid}: {'healthy' if state.healthy else 'not answering'}; UI {state.ui}, "
          f"API {state.url}, log {state.log}")
    return 0 if state.healthy else 1
