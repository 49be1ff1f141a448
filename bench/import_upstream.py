"""Benchmark: the full upstream import and every view, on the shared CT-SpatialVQA files.

    .venv/bin/python bench/import_upstream.py [--upstream PATH] [--repeats 3]

Baseline measured in the same run: json.load of every input file, the floor any importer pays.
Goals (issue 2): import <= 10 s, all views together <= 0.5 s, on the 2-core dev machine.
Goal (issue 7): the CLI command `ctsvqa import-upstream` (a fresh process running the Prefect flow
against the resident server, started beforehand and not timed) <= 1.5x the plain functions.
Medians over --repeats runs; each import goes into a fresh warehouse file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import duckdb  # noqa: E402

import warehouse  # noqa: E402
from adapters.datasets import upstream  # noqa: E402
from tasks import upstream_import as ui  # noqa: E402
from warehouse.migrate import view_names  # noqa: E402

from bench.common import DEFAULT_UPSTREAM, median_s as timed  # noqa: E402



def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upstream", type=Path, default=DEFAULT_UPSTREAM)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if not (args.upstream / upstream.DATASET_JSON).is_file():
        print(f"upstream data not found at {args.upstream}", file=sys.stderr)
        return 1
    layout = upstream.discover(args.upstream)
    files = [layout.dataset, layout.categories, *layout.predictions.values(), *layout.judgments.values()]

    def json_floor():
        for f in files:
            if f.suffix == ".jsonl":
                [json.loads(line) for line in f.open("rb") if line.strip()]
            else:
                json.load(f.open("rb"))

    def parse():
        ds = ui.parse_dataset(layout)
        index = ds.qids_by_key()
        preds = {r: ui.parse_predictions(r, p, ds, index) for r, p in layout.predictions.items()}
        judged = [ui.parse_judgments(j, p, preds[r]) for (r, j), p in layout.judgments.items()]
        return ds, list(preds.values()), judged

    tmp = Path(tempfile.mkdtemp(prefix="ctsvqa-bench-"))
    counter = iter(range(10_000))

    def fresh_db() -> Path:
        return tmp / f"wh{next(counter)}.duckdb"

    t_floor, _ = timed(json_floor, args.repeats)
    t_parse, parsed = timed(parse, args.repeats)
    t_load, _ = timed(lambda: ui.load(fresh_db(), layout, *parsed), args.repeats)
    t_import, summary = timed(lambda: ui.import_upstream(args.upstream, fresh_db()), args.repeats)
    db = fresh_db()
    ui.import_upstream(args.upstream, db)
    t_reimport, _ = timed(lambda: ui.import_upstream(args.upstream, db), args.repeats)

    from flows import server

    cli_env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")}
    cli_env.update(PYTHONPATH=str(REPO), CTSVQA_PREFECT="resident")

    def cli(target: Path) -> None:
        done = subprocess.run([sys.executable, "-m", "flows.cli", "import-upstream", str(args.upstream),
                               "--db", str(target)], cwd=REPO, env=cli_env, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"ctsvqa import-upstream failed:\n{done.stderr[-3000:]}")

    server.start(tmp / "any.duckdb")              # Prefect's start, excluded from the timings
    try:
        t_cli, _ = timed(lambda: cli(fresh_db()), args.repeats)
        cli_db = fresh_db()
        cli(cli_db)
        t_cli_again, _ = timed(lambda: cli(cli_db), args.repeats)
    finally:
        server.stop(tmp / "any.duckdb")

    n_pred = sum(sum(s.values()) for s in summary.predictions.values())
    n_judg = sum(sum(c.values()) for j in summary.judgments.values() for c in j.values())
    n_rows = summary.n_questions + summary.n_category_labels + n_pred + n_judg

    print(f"upstream: {args.upstream}")
    print(f"rows loaded: {summary.n_questions} questions, {summary.n_category_labels} category labels, "
          f"{n_pred} predictions, {n_judg} judgments = {n_rows} rows; median of {args.repeats}\n")
    print(f"{'step':<44}{'median s':>10}{'rows/s':>12}")
    for name, t in (("baseline: json.load of every file", t_floor), ("parse (adapters, qid matching)", t_parse),
                    ("load (one DuckDB transaction, new file)", t_load),
                    ("full import, new warehouse", t_import), ("re-import, nothing changed", t_reimport),
                    ("CLI (flow, resident server), new warehouse", t_cli),
                    ("CLI re-import, nothing changed", t_cli_again)):
        print(f"{name:<44}{t:>10.3f}{n_rows / t:>12,.0f}")
    print(f"\nimport / json floor = {t_import / t_floor:.2f}x; goal import <= 10 s: "
          f"{'met' if t_import <= 10 else 'MISSED'} ({t_import:.2f} s)")
    print(f"CLI / plain functions = {t_cli / t_import:.2f}x; goal <= 1.5x: "
          f"{'met' if t_cli <= 1.5 * t_import else 'MISSED'}\n")

    with duckdb.connect(str(db), read_only=True) as con:
        print(f"{'view':<28}{'rows':>8}{'median ms':>12}")
        total = 0.0
        for view in view_names(con):
            t, n = timed(lambda: con.sql(f'SELECT * FROM "{view}"').to_arrow_table().num_rows,
                         max(args.repeats, 5))
            total += t
            print(f"{view:<28}{n:>8}{1000 * t:>12.1f}")
        print(f"{'all views':<28}{'':>8}{1000 * total:>12.1f}")
        print(f"goal all views <= 0.5 s: {'met' if total <= 0.5 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
