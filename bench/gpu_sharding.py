#!/usr/bin/env python3
"""MedGemma's product path on one GPU against two, through the product's Ray sharding
(tasks/sharding.py: one model replica per GPU as a Ray actor, volumes handed out in groups as
replicas free up, rows returned to this process), in one run, on the same work.

Each replica builds the full-size MedGemma-1.5-4B architecture with random weights (as
bench/gpu_inference.py does: no checkpoint can be downloaded on the GPU machine) and warms up
(flex compile, vision compile, CUDA-graph capture) inside `load()`, then writes the time it was ready.
The clock of a configuration runs from the moment its last replica was ready to its last row,
so loading and compiling (the same per replica in both) are not counted; they are printed apart.
Inputs: harness-shaped slice stacks (85 x 896² uint8 RGB) written once as .npz files that the
replicas read themselves (paths cross processes, arrays do not), 6 questions per volume, answers
forced to 48 new tokens.

    python bench/gpu_sharding.py --size tiny --device cpu --logical-gpus   # this machine: the code path
    python bench/gpu_sharding.py                                            # a host with two GPUs
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# Ray's replica processes import this module (the adapter below) by name
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])

from adapters.models.base import ModelInput, Question  # noqa: E402
from adapters.models.medgemma import MedGemma  # noqa: E402
from bench.gpu_inference import QUESTIONS, build  # noqa: E402


class RandomMedGemma(MedGemma):
    """MedGemma whose load() builds the random-weight architecture in memory and warms it up.
    Options: size ('full' | 'tiny'), ready_log (a file the ready time is appended to), warm_input
    (an .npz the warm-up reads)."""
    name = "random-medgemma"

    def load(self) -> None:
        import torch

        dev = torch.device(self.settings.device)
        dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
        torch.set_grad_enabled(False)
        _, self.model, self.processor = build("medgemma", self.settings.options["size"], dev, dtype)
        self.prepare_model()
        warm = ModelInput("warm", self.recipe, "1", Path(self.settings.options["warm_input"]), (), "uint8", "")
        qs = [Question(f"w{i}", QUESTIONS[i % len(QUESTIONS)]) for i in range(6)]
        self.answer_many([(warm, qs), (warm, qs)])
        with open(self.settings.options["ready_log"], "a") as f:
            f.write(f"{time.time()} {os.environ.get('CUDA_VISIBLE_DEVICES')}\n")


def write_inputs(folder: Path, n_files: int, n_slices: int, side: int) -> list[Path]:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (n_slices, side, side, 3), dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n_files):
        p = folder / f"synthetic-{k}.npz"
        if not p.exists():
            np.savez(p, slices=base ^ np.uint8((37 * k) % 256))
        paths.append(p)
    return paths


def run(replicas: list[str] | int, args, files: list[Path], out: Path, init_kwargs: dict) -> dict:
    from tasks.inference import InferRequest, WorkItem
    from tasks.sharding import answer_sharded

    n = replicas if isinstance(replicas, int) else len(replicas)
    ready_log = out / f"ready-{n}.txt"
    ready_log.unlink(missing_ok=True)
    options = {"variant": "upstream-harness", "max_new_tokens": args.new_tokens, "min_new_tokens": 10 ** 4,
               "size": args.size, "ready_log": str(ready_log), "warm_input": str(files[0]),
               "volumes_per_call": args.volumes_per_call, **({"encode_workers": args.encode_workers} if args.encode_workers else {})}
    request = InferRequest(model="bench.gpu_sharding:RandomMedGemma", device=args.device,
                           dtype="bfloat16" if args.device.startswith("cuda") else "float32", options=options)
    adapter = RandomMedGemma(request.settings())
    qs = [Question(f"q{i}", QUESTIONS[i % len(QUESTIONS)]) for i in range(args.questions)]
    items = []
    for v in range(args.volumes):
        mi = ModelInput(f"vol-{v}", adapter.recipe, "1", files[v % len(files)], (), "uint8", "")
        items.append(WorkItem(f"vol-{v}", [Question(f"vol-{v}::{q.qid}", q.question) for q in qs], mi,
                              {"volume": f"vol-{v}"}))
    t0 = time.time()
    rows, first_row_at = [], None
    for _volume, got in answer_sharded(request, items, replicas, init_kwargs=init_kwargs):
        rows.extend(got)
        first_row_at = first_row_at or time.time()
    end = time.time()
    ready = [float(line.split()[0]) for line in ready_log.read_text().splitlines()]
    bad = [r["reason"] for r in rows if r["status"] != "ok"]
    if bad:
        raise RuntimeError(f"{len(bad)} failed rows, first: {bad[0]}")
    by_replica: dict[str, int] = {}
    for r in rows:
        key = json.loads(r["provenance"])["replica"]["cuda_visible_devices"] if isinstance(r["provenance"], str) \
            else r["provenance"]["replica"]["cuda_visible_devices"]
        by_replica[key] = by_replica.get(key, 0) + 1
    seconds = end - max(ready)
    return {"gpus": n, "qa": len(rows), "seconds": seconds, "qa_s": len(rows) / seconds,
            "start_to_ready_s": max(ready) - t0, "qa_per_replica": by_replica,
            "texts": {r["qid"]: r["text"] for r in rows}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=["tiny", "full"], default="full")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--volumes", type=int, default=32)
    ap.add_argument("--volumes-per-call", type=int, default=16)
    ap.add_argument("--questions", type=int, default=6)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--encode-workers", type=int, default=None, help="producer threads per replica (default: the adapter's)")
    ap.add_argument("--logical-gpus", action="store_true", help="declare 2 logical GPUs (a machine without any)")
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    full = args.size == "full"
    files = write_inputs(out / "inputs" if not full else Path("/tmp/ctsvqa-bench-inputs"), 4, 85, 896 if full else 56)
    init = {"num_gpus": 2, "num_cpus": 4} if args.logical_gpus else {}
    results = []
    # a list names this host's GPUs (a local Ray with exactly those); a count asks the logical GPUs
    configs = ([1, 2] if args.logical_gpus else [["cuda:0"], ["cuda:0", "cuda:1"]])
    for replicas in configs:
        r = run(replicas, args, files, out, init)
        print(f"{r['gpus']} GPU(s): {r['qa']} QA in {r['seconds']:.2f} s = {r['qa_s']:.3f} QA/s "
              f"(start to ready {r['start_to_ready_s']:.1f} s; QA per replica {r['qa_per_replica']})", flush=True)
        results.append(r)
    one, two = results
    same = sum(one["texts"][q] == two["texts"].get(q) for q in one["texts"])
    print()
    print("| GPUs | volumes | QA | seconds (ready to last row) | QA/s | x one GPU | hours for 9,077 QA | "
          "start to ready s | QA per replica |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['gpus']} | {args.volumes} | {r['qa']} | {r['seconds']:.2f} | {r['qa_s']:.3f} | "
              f"**{r['qa_s'] / one['qa_s']:.2f}x** | {9077 / r['qa_s'] / 3600:.2f} | {r['start_to_ready_s']:.1f} | "
              f"{r['qa_per_replica']} |")
    print(f"\nanswers identical between one and two GPUs: {same}/{len(one['texts'])}")
    (out / f"gpu_sharding_{args.size}.json").write_text(json.dumps(
        [{k: v for k, v in r.items() if k != "texts"} for r in results] + [{"same_answers": same}], indent=1))


if __name__ == "__main__":
    main()
