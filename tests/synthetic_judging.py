"""A warehouse with one synthetic run of n distinct question/answer/prediction triples, for judging
tests and the throughput benchmark (the example data has only 16 distinct items)."""

from __future__ import annotations

from pathlib import Path

import warehouse
from adapters.judges.prompts import Item
from warehouse import loaders

SIDES = ["left", "right", "both"]
LOBES = ["upper", "middle", "lower"]


def build_warehouse(db: Path, n: int, dataset: str = "bench", run: str = "bench-model") -> list[Item]:
    qids, questions, answers, preds = [], [], [], []
    for i in range(n):
        qids.append(f"synthetic_{i // 6}.nii.gz::{i % 6}")
        questions.append(f"Where is nodule number {i} located?")
        answers.append(f"In the {SIDES[i % 3]} {LOBES[(i // 3) % 3]} lobe.")
        preds.append(f"{SIDES[(i // 2) % 3]} {LOBES[i % 3]} lobe, lesion {i}")
    volumes = sorted({q.split("::")[0] for q in qids})
    with warehouse.writer(db) as con, warehouse.transaction(con):
        loaders.replace_dataset(con, dataset_id=dataset, source="synthetic", source_path="", synthetic=True,
                                description=None, volumes=volumes, categories=None, questions={
                                    "qid": qids, "volume": [q.split("::")[0] for q in qids],
                                    "idx": [int(q.split("::")[1]) for q in qids], "question": questions,
                                    "answer": answers})
        loaders.upsert_model(con, run)
        loaders.upsert_run(con, run_id=f"{dataset}/run", dataset_id=dataset, name=run, model_id=run,
                           source="bench", config={})
        loaders.replace_predictions(con, f"{dataset}/run", {"qid": qids, "text": preds, "status": ["ok"] * n,
                                                            "reason": [None] * n, "provenance": ["{}"] * n})
    return [Item(q, a, p) for q, a, p in zip(questions, answers, preds)]
