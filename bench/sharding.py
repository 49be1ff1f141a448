"""Sharded inference (tasks/sharding.py) against the single-process runner, same model, same phantom
volumes, answers checked equal. On a CPU machine the replicas hold *logical* GPUs and run on CPU
cores, so the ratio says what Ray's hand-out costs and what two CPU-bound replicas gain on this
box — nothing about GPUs. On a GPU host pass --devices cuda:0,cuda:1 and a GPU model.

    python bench/sharding.py [--volumes 8] [--replicas 2] [--repeats 1] [--model phantom-expert]
    python bench/sharding.py --devices cuda:0,cuda:1 --model medgemma --checkpoint ckpt/ --device cuda

Prints, per mode, the median wall time of a whole run (replica start and model load included, Ray's
own start measured once, apart), volumes per second and the ratio against the single process.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import warehouse  # noqa: E402
from adapters.datasets.phantom import generate  # noqa: E402
from tasks import inference  # noqa: E402
from tasks.inference import InferRequest, run_inference  # noqa: E402
from tasks.sharding import Sharding, parse_devices, ray_session  # noqa: E402
from tasks.upstream_import import import_upstream  # noqa: E402


def answers(db: Path) -> dict:
    with warehouse.reader(db) as con:
        return dict(((q, (t, s)) for q, t, s in con.execute("SELECT qid, text, status FROM predictions").fetchall()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--volumes", type=int, default=8)
    ap.add_argument("--replicas", type=int, default=2, help="logical GPUs / replicas on a CPU machine")
    ap.add_argument("--devices", help="real GPUs of this host, e.g. cuda:0,cuda:1 (instead of --replicas)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--model", default="phantom-expert")
    ap.add_argument("--checkpoint")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    request = InferRequest(model=args.model, checkpoint=args.checkpoint, device=args.device)
    devices = parse_devices(args.devices) if args.devices else ()
    n = len(devices) or args.replicas
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate(root / "phantom", args.volumes, 11, "small")
        template = root / "template.duckdb"
        import_upstream(root / "phantom", template)
        plan = inference.plan_run(template, request)
        if plan.recipe:
            inference.build_inputs(template, plan.dataset_id, plan.recipe, list(plan.pending))

        def one(label: str, sharding: Sharding | None, r: int) -> tuple[float, dict]:
            db = root / f"{label}-{r}.duckdb"
            shutil.copy(template, db)
            t0 = time.perf_counter()
            summary = run_inference(db, request, build_missing=False, sharding=sharding)
            assert summary.volumes == args.volumes, summary.row()
            return time.perf_counter() - t0, answers(db)

        times: dict[str, list[float]] = {"single process": []}
        reference = None
        for r in range(args.repeats):
            seconds, reference = one("single", None, r)
            times["single process"].append(seconds)
        t0 = time.perf_counter()
        with ray_session(None, devices, {} if devices else {"num_gpus": n}):
            ray_start = time.perf_counter() - t0
            for k in sorted({1, n}):
                label = f"{k} replica(s)"
                times[label] = []
                for r in range(args.repeats):
                    seconds, got = one(label.split()[0], Sharding(devices[:k] if devices else k), r)
                    assert got == reference, f"{label}: answers differ from the single process"
                    times[label].append(seconds)
    base = statistics.median(times["single process"])
    print(f"{args.volumes} volumes, model {args.model}, {'GPUs ' + ','.join(devices) if devices else 'logical GPUs'}; "
          f"Ray start {ray_start:.1f} s (once, not in the rows); median of {args.repeats}")
    print(f"{'mode':<18} {'seconds':>8} {'volumes/s':>10} {'vs single':>10}")
    for label, ts in times.items():
        m = statistics.median(ts)
        print(f"{label:<18} {m:>8.2f} {args.volumes / m:>10.2f} {base / m:>9.2f}x")


if __name__ == "__main__":
    main()
