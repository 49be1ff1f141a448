"""A remote-code-style adapter for the worker tests: pure numpy, `environment = "testfam"`, run by the real
worker (adapters/models/worker.py) in a venv of its own (tests/worker_env.py).

It behaves like a model's code that misbehaves: it prints to stdout (Python and C level) while loading and
answering, and honours the fakes' fault switch inside its "generate": CTSVQA_FAKE_FAULT=crash (os._exit(3))
or hang (sleep an hour), only for the volume CTSVQA_FAKE_FAULT_VOLUME when that is set. WORKER_TEST_DELAY
sleeps that long per call; WORKER_TEST_PIDS appends this process's pid at load."""

from __future__ import annotations

import os
import sys
import time
from typing import Sequence

from adapters.models.base import Answer, ModelAdapter, ModelInput, Question


def generate(volume: str) -> None:
    """Where the model's own generate would run: the fault switch the six families' fakes honour too."""
    fault = os.environ.get("CTSVQA_FAKE_FAULT")
    only = os.environ.get("CTSVQA_FAKE_FAULT_VOLUME")
    if fault and (not only or only == volume):
        print(f"fake model: injected {fault} on {volume}", file=sys.stderr, flush=True)
        if fault == "crash":
            os._exit(3)
        if fault == "hang":
            time.sleep(3600)


class WorkerEcho(ModelAdapter):
    name = "worker-echo"
    version = "1"
    default_recipe = "lingshu"
    environment = "testfam"
    description = "test adapter run in the testfam environment: answers with the mean of its slices"

    def generation(self) -> dict:
        return {"template": "mean={mean:.4f}", "greedy": True}

    def load(self) -> None:
        print("loading checkpoint shards: 100%|##########| {not json")       # chatter, as libraries do
        os.write(1, b'C-level chatter on fd 1 {"ctsvqa": 1, "ok": true}\n')
        if os.environ.get("WORKER_TEST_PIDS"):
            with open(os.environ["WORKER_TEST_PIDS"], "a") as f:
                f.write(f"{os.getpid()}\n")

    def answer(self, model_input: ModelInput | None, questions: Sequence[Question]) -> list[Answer]:
        print("generating...", end="")                                       # no newline: a torn line
        if os.environ.get("WORKER_TEST_DELAY"):
            time.sleep(float(os.environ["WORKER_TEST_DELAY"]))
        generate(model_input.volume)
        mean = float(model_input.load()["slices"].mean())
        meta = {"seen": model_input.volume, "pid": os.getpid(), "prefix": sys.prefix}
        return [Answer(q.qid, f"mean={mean:.4f}", meta=meta) for q in questions]
