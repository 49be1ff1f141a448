"""The runner's own overhead with the `random` baseline (no model time) on a synthetic dataset of many
volumes: a flush per volume (baseline) against the default policy (a flush when a volume finishes and
at least a second passed). Prints medians of --repeats runs and the ratio.

    python bench/infer_flush.py [--volumes 400] [--per-volume 6] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import warehouse  # noqa: E402
from tasks.inference import InferRequest, run_inference  # noqa: E402
from warehouse import loaders  # noqa: E402

CATS = ("Laterality & Bilateral Symmetry", "Longitudinal (Vertical) Position")


def make_db(path: Path, n_volumes: int, per_volume: int) -> None:
    volumes = [f"valid_{i}_a_1.nii.gz" for i in range(n_volumes)]
    q = {"qid": [], "volume": [], "idx": [], "question": [], "answer": []}
    cats = {"qid": [], "category": []}
    for v in volumes:
        for k in range(per_volume):
            qid = f"{v}::{k}"
            q["qid"].append(qid), q["volume"].append(v), q["idx"].append(k)
            q["question"].append(f"Where is finding {k} of {v}?"), q["answer"].append(f"answer {k} {v}")
            cats["qid"].append(qid), cats["category"].append(CATS[k % 2])
    with warehouse.writer(path) as con, warehouse.transaction(con):
        loaders.replace_dataset(con, dataset_id="bench", source="bench", source_path="", synthetic=True,
                                description=None, volumes=volumes, questions=q, categories=cats)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--volumes", type=int, default=400)
    ap.add_argument("--per-volume", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        template = Path(tmp) / "template.duckdb"
        make_db(template, args.volumes, args.per_volume)
        results: dict[str, list[float]] = {"flush every volume": [], "flush ≥1 s apart (default)": []}
        for r in range(args.repeats):
            for label, seconds in (("flush every volume", 0.0), ("flush ≥1 s apart (default)", 1.0)):
                db = Path(tmp) / f"{r}-{seconds}.duckdb"
                db.write_bytes(template.read_bytes())
                t0 = time.perf_counter()
                summary = run_inference(db, InferRequest(model="random"), flush_seconds=seconds)
                results[label].append(time.perf_counter() - t0)
                assert summary.ok == args.volumes * args.per_volume
    n = args.volumes * args.per_volume
    base = statistics.median(results["flush every volume"])
    print(f"{'policy':<30}{'median s':>10}{'questions/s':>14}{'vs baseline':>13}")
    for label, times in results.items():
        m = statistics.median(times)
        print(f"{label:<30}{m:>10.2f}{n / m:>14.0f}{base / m:>12.1f}x")


if __name__ == "__main__":
    main()
