"""Judges that need no network.

- `exact`: normalised exact match (case, punctuation, articles and generation junk removed).
- `spatial-rules`: compares the spatial facts both answers state — side, level, depth,
  centricity, yes/no polarity — and gives no verdict when they share none it can compare.
- `sbert`: cosine similarity of all-MiniLM-L6-v2 embeddings against a threshold.
"""

from __future__ import annotations

from typing import Sequence

from adapters.judges.base import Outcome
from adapters.judges.minilm import sbert_model
from adapters.judges.prompts import Item
from adapters.judges.spec import JudgeSpec
# the rules are re-exported: `offline` is where the offline judges' behaviour is looked up
from adapters.judges.text_rules import (RULES_VERSION, clean, normalise, polarity, spatial_facts,  # noqa: F401
                                        spatial_verdict)


class ExactJudge:
    batch_size = 1024

    def __init__(self, spec: JudgeSpec):
        if spec.model != "exact-v1":
            raise ValueError(f"judge {spec.name!r}: only exact-v1 is implemented, not {spec.model!r}")
        self.spec = spec

    async def judge(self, items: Sequence[Item]):
        return [Outcome(normalise(it.prediction) == normalise(it.answer), "ok") for it in items], []


class SpatialRulesJudge:
    batch_size = 1024

    def __init__(self, spec: JudgeSpec):
        if spec.model != RULES_VERSION:
            raise ValueError(f"judge {spec.name!r}: this version of ctsvqa implements {RULES_VERSION}, "
                             f"not {spec.model!r}; cached {spec.model} verdicts stay in the warehouse")
        self.spec = spec

    async def judge(self, items: Sequence[Item]):
        outcomes = []
        for it in items:
            verdict, why = spatial_verdict(it.question, it.answer, it.prediction)
            outcomes.append(Outcome(verdict, "ok", why) if verdict is not None
                            else Outcome(None, "no_verdict", why))
        return outcomes, []


class SbertJudge:
    batch_size = 512

    def __init__(self, spec: JudgeSpec):
        self.spec = spec
        self.threshold = float(spec.options.get("threshold", 0.75))

    async def judge(self, items: Sequence[Item]):
        model = sbert_model()
        predictions = [clean(it.prediction) for it in items]
        answers = [it.answer for it in items]
        embeddings = model.encode(predictions + answers, normalize_embeddings=True, batch_size=128,
                                  convert_to_numpy=True, show_progress_bar=False)
        n = len(items)
        cosines = (embeddings[:n] * embeddings[n:]).sum(axis=1)
        return [Outcome(bool(c >= self.threshold), "ok", f"cosine {c:.3f} vs threshold {self.threshold}")
                if p else Outcome(False, "ok", "empty prediction")
                for c, p in zip(cosines, predictions)], []
