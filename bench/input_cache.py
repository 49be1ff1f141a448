"""Benchmark: what a bounded cache of built model inputs costs (issue 7, item 7).

    .venv/bin/python bench/input_cache.py [--volumes 6] [--size small|full] [--recipe m3d] [--budget 2]

Phantom volumes are imported into a temporary warehouse, then `tasks.model_inputs.ensure_inputs`
(what the inference runner calls before a batch) is timed per volume:
  cold      nothing built: decode + recipe + write + record
  warm      everything on disk: plan + touch + np.load
  evicted   rows say 'ok' but the file was evicted: rebuilt on demand
and a runner's pass over all volumes, one at a time, without a budget and with a budget of
`--budget` volumes' worth of files: total time and peak disk. Last, the bytes one volume costs
per recipe (every recipe, built once from one volume of the chosen size).
Medians over volumes; ratios against the warm read (time) and the unbounded pass (disk).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from adapters.models.preprocess import build  # noqa: E402
from adapters.models.recipes import RECIPES  # noqa: E402
from adapters.volumes.nifti import decode  # noqa: E402
from tasks import input_cache, model_inputs  # noqa: E402
from tasks.upstream_import import import_upstream  # noqa: E402


def per_volume(db, dataset, recipe, volumes, out_root, **kw) -> list[float]:
    times = []
    for volume in volumes:
        t0 = time.perf_counter()
        paths = model_inputs.ensure_inputs(db, dataset, recipe, [volume], out_root, **kw)
        for path in paths.values():
            np.load(path)                                    # what the model feeder does next
        times.append(time.perf_counter() - t0)
    return times


def runner_pass(db, dataset, recipe, volumes, out_root, max_cache) -> tuple[float, int]:
    peak, t0 = 0, time.perf_counter()
    for volume in volumes:
        for path in model_inputs.ensure_inputs(db, dataset, recipe, [volume], out_root, max_cache=max_cache).values():
            np.load(path)
        peak = max(peak, input_cache.usage(out_root))
    return time.perf_counter() - t0, peak


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--volumes", type=int, default=6)
    ap.add_argument("--size", choices=("small", "full"), default="small")
    ap.add_argument("--recipe", default="m3d")
    ap.add_argument("--budget", type=float, default=2, help="cache budget in volumes' worth of files")
    ap.add_argument("--no-sizes", action="store_true", help="skip the bytes-per-recipe table")
    args = ap.parse_args()
    from adapters.datasets.phantom import generate

    work = Path(tempfile.mkdtemp(prefix="ctsvqa-cache-bench-"))
    try:
        generate(work / "ph", args.volumes, seed=5, size=args.size)
        db = work / "wh.duckdb"
        summary = import_upstream(work / "ph", db)
        dataset, out_root = summary.dataset_id, work / "inputs"
        import duckdb

        con = duckdb.connect(str(db), read_only=True)
        volumes = [v for (v,) in con.execute("SELECT volume FROM volumes ORDER BY position").fetchall()]
        con.close()
        cold = per_volume(db, dataset, args.recipe, volumes, out_root)
        warm = per_volume(db, dataset, args.recipe, volumes, out_root)
        input_cache.evict(out_root, 0)
        evicted = per_volume(db, dataset, args.recipe, volumes, out_root)
        one = input_cache.usage(out_root) / len(volumes)

        input_cache.evict(out_root, 0)
        per_volume(db, dataset, args.recipe, volumes, out_root)              # built, unbounded
        t_free, peak_free = runner_pass(db, dataset, args.recipe, volumes, out_root, None)
        input_cache.evict(out_root, 0)
        budget = int(args.budget * one)
        t_bounded, peak_bounded = runner_pass(db, dataset, args.recipe, volumes, out_root, budget)

        w = statistics.median(warm)
        print(f"\n{len(volumes)} {args.size} phantom volume(s), recipe {args.recipe}, "
              f"{one / 1e6:.1f} MB per volume; medians per volume\n")
        print(f"{'ensure_inputs + np.load':<34}{'median s':>10}{'x warm':>10}")
        for name, times in (("cold (decode + build + record)", cold), ("warm (on disk)", warm),
                            ("after eviction (rebuilt)", evicted)):
            m = statistics.median(times)
            print(f"{name:<34}{m:>10.3f}{m / w:>10.1f}")
        print(f"\n{'runner pass over all volumes':<34}{'total s':>10}{'peak MB':>10}{'disk x':>10}")
        print(f"{'no budget (all built, warm)':<34}{t_free:>10.2f}{peak_free / 1e6:>10.1f}{1:>10.2f}")
        print(f"{f'budget {budget / 1e6:.0f} MB ({args.budget:g} volumes)':<34}{t_bounded:>10.2f}"
              f"{peak_bounded / 1e6:>10.1f}{peak_bounded / peak_free:>10.2f}")

        if not args.no_sizes:
            volume = decode(next((work / "ph").rglob(volumes[0])))
            print(f"\nbytes per volume per recipe ({args.size} phantom {volume.data.shape}, as written)")
            print(f"{'recipe':<30}{'MB':>10}  shape, dtype")
            total = 0
            for name, recipe in RECIPES.items():
                arrays = build(recipe, volume)
                path = model_inputs.output_path(work / "sizes", recipe, volume.sha256)
                model_inputs._write(path, recipe, arrays)
                size = path.stat().st_size
                total += size
                main_arr = arrays.get("arr", arrays.get("slices"))
                print(f"{name:<30}{size / 1e6:>10.1f}  {tuple(main_arr.shape)}, {main_arr.dtype}")
            print(f"{'all recipes':<30}{total / 1e6:>10.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
