"""How much of a phantom set a model that never looks at the image can get right: the blind ceiling.

    python bench/blind_ceiling.py [--n 40] [--seed 777] [--size small] [--versions 1 2]

For each generator version, generates the set and scores the *perfect blind model*, `blind-oracle`
(adapters/models/baselines.py): for every question, the most frequent reference answer to the same
question text in the other volumes (the median for "About N mm." measurements). Printed per question
template: how often it is asked, the number of answers k it can have by design (phantom.answer_options),
chance (1/k, a uniform guess among them; for a measurement, a guess drawn from the set's own answers), the blind-oracle accuracy (exact match of the normalised answer: the answers are the
templates' own strings) and the share of its commonest answer in the whole set ("top share": what a
blind model that knew the answer distribution exactly would score, an upper bound; blind-oracle can fall
below it on a balanced template, where leaving the volume's own answer out tips the majority to the
other answer); then overall against chance, and the ratio v2 / v1. Nothing is timed: the figure is what a question-only model can reach.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.datasets.phantom import answer_options, generate  # noqa: E402
from adapters.judges.offline import normalise  # noqa: E402
from adapters.models.base import AdapterSettings, DatasetQuestion, Question  # noqa: E402
from adapters.models.baselines import BlindOracle  # noqa: E402


def score(cases) -> list[dict]:
    dataset = [DatasetQuestion(f"{c.volume}#{k}", c.volume, qa["question"], qa["answer"], tuple(qa["category"]))
               for c in cases for k, qa in enumerate(c.qa)]
    oracle = BlindOracle(AdapterSettings())
    oracle.prepare(dataset)
    answers = {a.qid: a for a in oracle.answer(None, [Question(q.qid, q.question) for q in dataset])}
    return [{"question": q.question, "reference": q.answer, "prediction": answers[q.qid].text,
             "right": answers[q.qid].text is not None and normalise(answers[q.qid].text) == normalise(q.answer)}
            for q in dataset]


def per_template(rows: list[dict], version: int) -> list[dict]:
    options, out = answer_options(version), []
    for question in sorted({r["question"] for r in rows}):
        sel = [r for r in rows if r["question"] == question]
        answers = [normalise(r["reference"]) for r in sel]
        k = options.get(question)
        # a measurement has no fixed answer set: chance is then a guess drawn like the answers are
        chance = 1 / k if k else sum((answers.count(a) / len(sel)) ** 2 for a in set(answers))
        out.append({"template": question, "n": len(sel), "k": k or "mm", "chance": chance,
                    "blind": sum(r["right"] for r in sel) / len(sel),
                    "top": max(answers.count(a) for a in set(answers)) / len(sel)})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--seed", type=int, default=777)
    ap.add_argument("--size", default="small")
    ap.add_argument("--versions", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args(argv)
    overall = {}
    for version in args.versions:
        with tempfile.TemporaryDirectory() as tmp:
            cases = generate(Path(tmp), args.n, args.seed, args.size, version)
        rows = score(cases)
        table = per_template(rows, version)
        print(f"\nphantom set v{version}: n={args.n} seed={args.seed} size={args.size}, {len(rows)} questions, "
              f"{sum(c.situs == 'inversus' for c in cases)} of {len(cases)} bodies mirrored")
        print(f"{'template':<72}{'n':>5}{'k':>4}{'chance':>8}{'blind':>8}{'top share':>11}")
        for t in sorted(table, key=lambda t: t["blind"] - t["chance"], reverse=True):
            flag = "   <- one answer everywhere" if t["top"] == 1 and t["n"] > 1 else ""
            print(f"{t['template']:<72}{t['n']:>5}{t['k']:>4}{t['chance']:>8.1%}{t['blind']:>8.1%}{t['top']:>11.1%}{flag}")
        chance = sum(t["chance"] * t["n"] for t in table) / len(rows)
        blind = sum(r["right"] for r in rows) / len(rows)
        top = sum(t["top"] * t["n"] for t in table) / len(rows)
        overall[version] = (blind, chance)
        print(f"{'overall (question-weighted)':<72}{len(rows):>5}{'':>4}{chance:>8.1%}{blind:>8.1%}{top:>11.1%}"
              f"   blind - chance {100 * (blind - chance):+.1f} points, top share - chance {100 * (top - chance):+.1f}")
    if 1 in overall and len(overall) > 1:
        for version, (blind, chance) in overall.items():
            if version != 1:
                print(f"\nblind ceiling v{version} / v1: {blind / overall[1][0]:.2f} "
                      f"({blind:.1%} vs {overall[1][0]:.1%}); goal: within 5 points of chance ({chance:.1%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
