"""The upstream CT-SpatialVQA text metrics, reproduced exactly (evaluate_text_metrics.py, with its
METEOR call fixed for current nltk): both texts stripped and lower-cased, a pair where either is empty
is skipped; BLEU = sacrebleu corpus BLEU with default settings; ROUGE-1/2/L = rouge-score F-measure with
the stemmer on; METEOR = nltk meteor_score on whitespace tokens with WordNet 3.0; SBERT = cosine of
L2-normalised all-MiniLM-L6-v2 embeddings; exact match of the normalised texts. Per-pair scores are
averaged by the `text_metrics` view; BLEU is a corpus statistic, computed per run."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

# Part of every stored score's identity: bump when a definition or a library choice changes.
METRICS_VERSION = "upstream-text-v1"


def normalise(text: str | None) -> str:
    return (text or "").strip().lower()


@dataclass(frozen=True)
class PairScores:
    rouge1_f: float
    rouge2_f: float
    rougeL_f: float
    meteor: float
    exact_match: bool


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


def pair_scores(reference: str, prediction: str) -> PairScores:
    """Scores of one kept pair; both texts already normalised and non-empty."""
    from nltk.translate.meteor_score import meteor_score

    from adapters.metrics.wordnet import wordnet

    rouge = _rouge().score(reference, prediction)
    meteor = meteor_score([reference.split()], prediction.split(), wordnet=wordnet())
    return PairScores(rouge["rouge1"].fmeasure, rouge["rouge2"].fmeasure, rouge["rougeL"].fmeasure,
                      float(meteor), reference == prediction)


def sbert_cosines(references: Sequence[str], predictions: Sequence[str]) -> list[float]:
    """Cosine of L2-normalised embeddings, each distinct text embedded once."""
    import numpy as np

    from adapters.judges.minilm import sbert_model

    texts = sorted(set(references) | set(predictions))
    if not texts:
        return []
    vectors = sbert_model().encode(texts, normalize_embeddings=True, batch_size=128, convert_to_numpy=True,
                                    show_progress_bar=False)
    index = {t: i for i, t in enumerate(texts)}
    ref = vectors[[index[t] for t in references]]
    hyp = vectors[[index[t] for t in predictions]]
    return [float(c) for c in np.einsum("ij,ij->i", ref, hyp)]


def corpus_bleu(references: Sequence[str], predictions: Sequence[str]) -> float:
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)
