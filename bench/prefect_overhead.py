"""Benchmark: what Prefect costs a command that has nothing to do (issue 7, item 8).

    .venv/bin/python bench/prefect_overhead.py [--repeats 3]

Commands, each run once first (so the import is cached and the inputs are recorded) and then
timed --repeats times as a user runs them (`python -m flows.cli ...` in a fresh process):
  import-upstream examples/upstream-mini     (unchanged files: nothing to parse or load)
  preprocess --recipes vila-m3 (2 phantoms, every input built: nothing left to build)
Modes: the resident server (`ctsvqa server`, started once by the first command, not timed) and
Prefect's temporary server per command (CTSVQA_PREFECT=ephemeral, its PREFECT_HOME already warm).
Baseline measured in the same run, without Prefect: a fresh Python importing the project's
non-Prefect modules, plus the same functions called in-process (the work the command does).
"Prefect s" = command median - baseline median. Goal: <= 3 s with the resident server.
Wall seconds depend on how loaded the machine is; the CPU seconds (user + system of the command's
process and its children, from rusage) much less so: both are printed, with the load average.
The resident server's own CPU is not a child's and is not counted; the temporary server's is.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MINI = REPO / "examples" / "upstream-mini"
BARE = "import duckdb, warehouse, adapters.datasets.upstream, adapters.models.recipes"


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")}
    e.update(PYTHONPATH=str(REPO), **extra)
    return e


CPU: list[float] = []          # CPU seconds of the last `wall` call's process tree


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def wall(cmd: list[str], environ: dict[str, str]) -> float:
    c0, t0 = _children_cpu(), time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=environ, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    CPU.append(_children_cpu() - c0)
    if done.returncode not in (0, 1, 2):       # preprocess exits non-zero when volumes failed (mini has none)
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return elapsed


def median_of(fn, repeats: int) -> float:
    return statistics.median(fn() for _ in range(repeats))


def cpu_median_of(argv: list[str], environ: dict[str, str], repeats: int) -> tuple[float, float]:
    """(wall, cpu) medians of a command."""
    CPU.clear()
    w = median_of(lambda: wall(argv, environ), repeats)
    return w, statistics.median(CPU)


def process_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from flows import server
    from flows.preprocess import select
    from tasks import model_inputs
    from tasks import upstream_import as ui

    from adapters.datasets.phantom import generate

    tmp = Path(tempfile.mkdtemp(prefix="ctsvqa-overhead-"))
    db = tmp / "wh.duckdb"
    cli = [sys.executable, "-m", "flows.cli"]
    generate(tmp / "ph", 2, 3, "small")      # a data set whose volumes exist, so its inputs can all be built
    phantoms = "phantom-small-s3"
    commands = {
        "import-upstream (unchanged)": ["import-upstream", str(MINI), "--db", str(db)],
        "preprocess (nothing to build)": ["preprocess", "--recipes", "vila-m3", "--dataset", phantoms, "--db", str(db)],
    }
    resident = env(CTSVQA_PREFECT="resident")
    ephemeral = env(CTSVQA_PREFECT="ephemeral", PREFECT_HOME=str(tmp / "ephemeral-home"))

    t0 = time.perf_counter()
    wall(cli + ["import-upstream", str(tmp / "ph"), "--db", str(db)], env(CTSVQA_PREFECT="resident"))
    for argv in commands.values():             # first run: starts the server, imports, builds the inputs
        wall(cli + argv, resident)
    first = time.perf_counter() - t0
    state = server.status(db)
    try:
        bare, bare_cpu = cpu_median_of([sys.executable, "-c", BARE], env(), args.repeats)
        work = {
            "import-upstream (unchanged)": lambda: ui.import_upstream(MINI, db),
            "preprocess (nothing to build)": lambda: model_inputs.plan(db, phantoms, select("vila-m3"), [],
                                                                       db.parent / "inputs"),
        }

        def timed_call(fn) -> float:
            t, c = time.perf_counter(), process_cpu()
            fn()
            CPU.append(process_cpu() - c)
            return time.perf_counter() - t

        for argv in commands.values():         # warm the ephemeral PREFECT_HOME (its database)
            wall(cli + argv, ephemeral)
        rows, cpu_rows = [], []
        for name, argv in commands.items():
            CPU.clear()
            plain = bare + median_of(lambda: timed_call(work[name]), args.repeats)
            plain_cpu = bare_cpu + statistics.median(CPU)
            res, res_cpu = cpu_median_of(cli + argv, resident, args.repeats)
            eph, eph_cpu = cpu_median_of(cli + argv, ephemeral, args.repeats)
            rows.append((name, plain, res, eph))
            cpu_rows.append((name, plain_cpu, res_cpu, eph_cpu))
    finally:
        server.stop(db)

    print(f"first resident command (starts the server, PID {state.pid}) plus the first preprocess: "
          f"{first:.1f} s; median of {args.repeats}; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}\n")
    head = (f"{'command':<32}{'no Prefect s':>13}{'resident s':>12}{'ephemeral s':>13}"
            f"{'Prefect s (res.)':>18}{'res./plain':>12}{'eph./plain':>12}")
    for title, table in (("wall seconds", rows), ("CPU seconds (user + system)", cpu_rows)):
        print(f"{title}:\n{head}")
        for name, plain, res, eph in table:
            print(f"{name:<32}{plain:>13.2f}{res:>12.2f}{eph:>13.2f}{res - plain:>18.2f}"
                  f"{res / plain:>11.1f}x{eph / plain:>11.1f}x")
        print()
    worst = max(res - plain for _, plain, res, _ in rows)
    worst_cpu = max(res - plain for _, plain, res, _ in cpu_rows)
    print(f"\ngoal: a command with nothing to do spends <= 3 s in Prefect with the resident server: "
          f"{'met' if worst <= 3 else 'MISSED'} in wall time (worst {worst:.2f} s, load "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs); {worst_cpu:.2f} CPU s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
