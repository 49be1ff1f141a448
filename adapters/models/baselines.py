"""Offline baselines that read no image and need no weights: what "no image" scores on the benchmark.

- `random`: the reference answer of a question drawn from the same category in another volume
  (seeded per qid, so the same seed gives the same answers in any order or batch).
- `blind`: the reference answer of the most similar question (by wording) from another volume.

Neither ever answers from the question's own volume: that would leak the volume's own findings."""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from typing import Any, Sequence

import numpy as np

from adapters.models.base import Answer, DatasetQuestion, ModelAdapter, ModelInput, Question


def _unknown(q: Question) -> Answer:
    return Answer(q.qid, None, "error", f"question {q.qid} is not in the data set given to prepare()")


def _per_question(by_qid: dict[str, DatasetQuestion], questions: Sequence[Question], one) -> list[Answer]:
    """one(question, its data-set entry) for each question prepare() saw; an error answer for the rest."""
    return [one(q, by_qid[q.qid]) if q.qid in by_qid else _unknown(q) for q in questions]


class RandomAnswer(ModelAdapter):
    name = "random"
    version = "1"
    OPTIONS = ()
    description = "reference answer drawn (seeded per qid) from the same category in another volume"

    def generation(self) -> dict[str, Any]:
        return {"draw": "same category, other volume; else any other volume", "rng": "sha256(seed:qid)"}

    def prepare(self, dataset: Sequence[DatasetQuestion]) -> None:
        self.by_qid = {q.qid: q for q in dataset}
        self.by_category: dict[str, list[DatasetQuestion]] = defaultdict(list)
        for q in sorted(dataset, key=lambda q: q.qid):
            for c in q.categories:
                self.by_category[c].append(q)
        self.all = sorted(dataset, key=lambda q: q.qid)

    def _draw(self, pool: list[DatasetQuestion], qid: str) -> DatasetQuestion:
        digest = hashlib.sha256(f"{self.settings.seed}:{qid}".encode()).digest()
        return pool[int.from_bytes(digest[:8], "big") % len(pool)]

    def answer(self, model_input: ModelInput | None, questions: Sequence[Question]) -> list[Answer]:
        return _per_question(self.by_qid, questions, self._answer_one)

    def _answer_one(self, q: Question, own: DatasetQuestion) -> Answer:
        seen: set[str] = set()
        pool = [c for cat in own.categories for c in self.by_category[cat]
                if c.volume != own.volume and not (c.qid in seen or seen.add(c.qid))]
        source = "category"
        if not pool:
            pool, source = [c for c in self.all if c.volume != own.volume], "any-volume"
        if not pool:
            return Answer(q.qid, None, "error", "no other volume in the data set to draw an answer from")
        pool.sort(key=lambda c: c.qid)
        pick = self._draw(pool, q.qid)
        return Answer(q.qid, pick.answer, meta={"from_qid": pick.qid, "pool": source, "pool_size": len(pool)})


_TOKEN = re.compile(r"[a-z0-9]+")


def _tokens(text: str) -> set[str]:
    return set(_TOKEN.findall(text.lower()))


class Blind(ModelAdapter):
    name = "blind"
    version = "1"
    OPTIONS = ()
    description = "question only: the reference answer of the most similar question from another volume"

    def _method(self) -> str:
        try:
            import sklearn  # noqa: F401
        except ImportError:
            return "token-jaccard"
        return "tfidf-char_wb-3-5"

    def generation(self) -> dict[str, Any]:
        # the similarity measure changes answers, so it is part of the identity
        return {"similarity": self._method(), "tie_break": "lowest qid"}

    def prepare(self, dataset: Sequence[DatasetQuestion]) -> None:
        self.pool = sorted(dataset, key=lambda q: q.qid)      # sorted: ties go to the lowest qid
        self.by_qid = {q.qid: q for q in self.pool}
        self.volumes = np.array([q.volume for q in self.pool])
        if self._method() == "token-jaccard":
            self.pool_tokens = [_tokens(q.question) for q in self.pool]
            self.vectorizer = None
        else:
            from sklearn.feature_extraction.text import TfidfVectorizer

            self.vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), lowercase=True,
                                              sublinear_tf=True)
            self.matrix = self.vectorizer.fit_transform([q.question for q in self.pool]) if self.pool else None

    def _similarity(self, texts: list[str]) -> np.ndarray:
        if self.vectorizer is None:
            rows = []
            for t in texts:
                a = _tokens(t)
                rows.append([len(a & b) / len(a | b) if a | b else 0.0 for b in self.pool_tokens])
            return np.array(rows, dtype=np.float64).reshape(len(texts), len(self.pool))
        return (self.vectorizer.transform(texts) @ self.matrix.T).toarray()

    def answer(self, model_input: ModelInput | None, questions: Sequence[Question]) -> list[Answer]:
        known = [q for q in questions if q.qid in self.by_qid]
        out = [_unknown(q) for q in questions if q.qid not in self.by_qid]
        if not known:
            return out
        sims = self._similarity([q.question for q in known])
        for q, row in zip(known, sims):
            row = np.where(self.volumes == self.by_qid[q.qid].volume, -np.inf, row)
            if not np.isfinite(row).any():
                out.append(Answer(q.qid, None, "error", "no other volume in the data set to borrow an answer from"))
                continue
            best = int(np.argmax(row))               # argmax returns the first maximum: the lowest qid
            pick = self.pool[best]
            out.append(Answer(q.qid, pick.answer, meta={"from_qid": pick.qid, "similarity": round(float(row[best]), 6)}))
        return out


def _half(volume: str) -> int:
    return hashlib.sha256(volume.encode()).digest()[0] % 2


_MEASUREMENT = re.compile(r"^about (\d+(?:\.\d+)?) mm\.?$", re.IGNORECASE)


class BlindOracle(ModelAdapter):
    """The perfect question-only model for a data set whose questions repeat across volumes (the
    phantom templates): the most frequent reference answer to the same question text in the other
    volumes (ties: the alphabetically first), or for "About N mm." measurements their median. Its
    score is the blind ceiling: what a model can reach without the image.

    "The other volumes" are those of the other half of the data set (volumes split in two by a hash
    of their name), not every volume but this one: leaving out only the volume's own answer tips a
    balanced template's majority to the other answer every time, and a 50/50 question would score 0 %."""

    name = "blind-oracle"
    version = "1"
    OPTIONS = ()
    description = "question only: the commonest answer to the same question in other volumes (median for mm)"

    def generation(self) -> dict[str, Any]:
        return {"pool": "same question text, volumes of the other half (sha256 of the volume name, mod 2)",
                "categorical": "most frequent, ties alphabetical",
                "measurement": "median of 'About N mm.', rounded half to even"}

    def prepare(self, dataset: Sequence[DatasetQuestion]) -> None:
        self.by_qid = {q.qid: q for q in dataset}
        self.by_text: dict[str, list[DatasetQuestion]] = defaultdict(list)
        for q in sorted(dataset, key=lambda q: q.qid):
            self.by_text[q.question.strip().lower()].append(q)

    def answer(self, model_input: ModelInput | None, questions: Sequence[Question]) -> list[Answer]:
        return _per_question(self.by_qid, questions, self._answer_one)

    def _answer_one(self, q: Question, own: DatasetQuestion) -> Answer:
        same = self.by_text[own.question.strip().lower()]
        others = [o.answer.strip() for o in same if _half(o.volume) != _half(own.volume)]
        pool = "other half"
        if not others:          # the question is asked in one half only
            others, pool = [o.answer.strip() for o in same if o.volume != own.volume], "other volumes"
        if not others:
            return Answer(q.qid, None, "error", "no other volume asks this question: nothing to learn its answer from")
        numbers = [_MEASUREMENT.match(a) for a in others]
        if all(numbers):
            mm = float(np.median([float(m.group(1)) for m in numbers]))
            return Answer(q.qid, f"About {int(round(mm))} mm.", meta={"rule": "median", "pool": pool,
                                                                     "pool_size": len(others)})
        counts = Counter(others)
        text = min(counts, key=lambda a: (-counts[a], a))
        return Answer(q.qid, text, meta={"rule": "most frequent", "share": round(counts[text] / len(others), 4),
                                         "pool": pool, "pool_size": len(others)})
