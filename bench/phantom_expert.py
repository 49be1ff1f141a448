"""How well the phantom expert reads a phantom set, on its own volumes and on shuffled ones.

    python bench/phantom_expert.py [--n 12] [--seed 11] [--size small] [--version 2] [--shuffle-seed 0] [--wrong]

Generates the set, builds every volume's `phantom-expert` recipe input (decode + build, as the
preprocess flow does), answers every question, and judges each answer against the reference with
the offline `spatial-rules` judge's plain function and with normalised exact match. Printed per
category (multi-label: a question counts in each of its categories) and overall, for the expert on
its own volume and on another patient's volume (a seeded derangement, as `--ablate
shuffle-volumes` does), next to a blind reference point (`majority`: the commonest reference
answer to the same question in the other volumes). An error answer (a node it cannot see, an
ambiguous measurement) counts as wrong in the table; the line above it also gives spatial-rules
accuracy over answered questions only (what `judge_accuracy` reports). `spatial-rules` gives no
verdict on the millimetre questions, so its n is smaller than exact match's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.datasets.phantom import generate  # noqa: E402
from adapters.judges.offline import normalise, spatial_verdict  # noqa: E402
from adapters.models.base import ModelInput, Question  # noqa: E402
from adapters.models.phantom_expert import PhantomExpert  # noqa: E402
from adapters.models.preprocess import build  # noqa: E402
from adapters.models.recipes import RECIPES  # noqa: E402
from tasks.volumes import decode  # noqa: E402


def build_inputs(cases, folder: Path) -> dict[str, ModelInput]:
    recipe = RECIPES["phantom-expert"]
    out = {}
    for case in cases:
        arrays = build(recipe, decode(case.path))
        path = folder / f"{case.volume}.npz"
        np.savez(path, **arrays)
        out[case.volume] = ModelInput(case.volume, recipe.name, recipe.version, path, tuple(arrays["arr"].shape),
                                      str(arrays["arr"].dtype), "axis 3, low index")
    return out


def derangement(n: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(n)
        if n < 2 or not (perm == np.arange(n)).any():
            return [int(i) for i in perm]


def run(cases, inputs, pairing) -> list[dict]:
    expert = PhantomExpert()
    rows = []
    for i, case in enumerate(cases):
        model_input = inputs[cases[pairing[i]].volume]
        questions = [Question(f"{case.volume}#{k}", qa["question"]) for k, qa in enumerate(case.qa)]
        answers = {a.qid: a for a in expert.answer(model_input, questions)}
        for q, qa in zip(questions, case.qa):
            a = answers[q.qid]
            verdict = None
            if a.status == "ok":
                verdict, _ = spatial_verdict(qa["question"], qa["answer"], a.text)
            else:
                ref_verdict, _ = spatial_verdict(qa["question"], qa["answer"], qa["answer"])
                verdict = False if ref_verdict is not None else None
            rows.append({"volume": case.volume, "question": qa["question"], "reference": qa["answer"],
                         "prediction": a.text, "status": a.status, "reason": a.reason,
                         "categories": qa["category"], "rules": verdict,
                         "exact": a.status == "ok" and normalise(a.text) == normalise(qa["answer"])})
    return rows


def majority_rows(cases) -> list[dict]:
    """A blind reference point: for every question, the commonest reference answer to the same question
    in the *other* volumes (no answer when no other volume has it) — roughly what `blind` scores."""
    rows = []
    for case in cases:
        for qa in case.qa:
            others = [o["answer"] for c in cases if c is not case for o in c.qa if o["question"] == qa["question"]]
            text = max(sorted(set(others)), key=others.count) if others else None
            ref_verdict, _ = spatial_verdict(qa["question"], qa["answer"], qa["answer"])
            verdict = spatial_verdict(qa["question"], qa["answer"], text)[0] if text else (
                False if ref_verdict is not None else None)
            rows.append({"volume": case.volume, "question": qa["question"], "reference": qa["answer"],
                         "prediction": text, "status": "ok" if text else "error", "reason": None,
                         "categories": qa["category"], "rules": verdict,
                         "exact": text is not None and normalise(text) == normalise(qa["answer"])})
    return rows


def table(named_rows: dict[str, list[dict]]) -> str:
    cats = sorted({c for rows in named_rows.values() for r in rows for c in r["categories"]})
    head = f"{'category':<22}" + "".join(f"{name + ' rules':>24}{name + ' exact':>22}" for name in named_rows)
    lines = [head, "-" * len(head)]
    for cat in cats + ["overall"]:
        line = f"{cat:<22}"
        for rows in named_rows.values():
            sel = [r for r in rows if cat == "overall" or cat in r["categories"]]
            judged = [r for r in sel if r["rules"] is not None]
            rules = sum(r["rules"] for r in judged) / len(judged) if judged else float("nan")
            exact = sum(r["exact"] for r in sel) / len(sel) if sel else float("nan")
            line += f"{rules:>16.1%} (n={len(judged):>3})" + f"{exact:>14.1%} (n={len(sel):>3})"
        lines.append(line)
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--size", default="small")
    ap.add_argument("--version", type=int, default=2, help="phantom generator version (1 or 2)")
    ap.add_argument("--shuffle-seed", type=int, default=0)
    ap.add_argument("--wrong", action="store_true", help="list every wrong or failed answer on own volumes")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        cases = generate(tmp / "set", args.n, args.seed, args.size, args.version)
        inputs = build_inputs(cases, tmp)
        t1 = time.perf_counter()
        own = run(cases, inputs, list(range(len(cases))))
        t2 = time.perf_counter()
        shuffled = run(cases, inputs, derangement(len(cases), args.shuffle_seed))
    majority = majority_rows(cases)
    n_q = len(own)
    print(f"phantom set v{args.version}: n={args.n} seed={args.seed} size={args.size}, {n_q} questions; "
          f"generate+preprocess {t1 - t0:.1f} s, answer {t2 - t1:.1f} s ({(t2 - t1) / len(cases):.2f} s/volume)")
    for name, rows in (("own", own), ("shuffled", shuffled), ("majority", majority)):
        errors = sum(r["status"] == "error" for r in rows)
        answered = [r for r in rows if r["status"] == "ok" and r["rules"] is not None]
        print(f"{name}: {n_q - errors}/{n_q} answered ({errors} errors); spatial-rules over answered only: "
              f"{sum(r['rules'] for r in answered) / max(len(answered), 1):.1%} (n={len(answered)})")
    print(table({"own": own, "shuffled": shuffled, "majority": majority}))
    if args.wrong:
        by_template = defaultdict(lambda: [0, 0])
        for r in own:
            by_template[r["question"]][0] += 1
            by_template[r["question"]][1] += bool(r["rules"] if r["rules"] is not None else r["exact"])
        print("\nper question (own volume): right / asked")
        for q, (n, ok) in sorted(by_template.items(), key=lambda kv: kv[1][1] / kv[1][0]):
            print(f"  {ok:>3}/{n:<3} {q}")
        print("\nwrong or failed (own volume):")
        for r in own:
            if not (r["rules"] if r["rules"] is not None else r["exact"]):
                got = r["prediction"] if r["status"] == "ok" else f"ERROR {r['reason']}"
                print(f"  {r['volume']}: {r['question']} | ref: {r['reference']} | got: {got}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
