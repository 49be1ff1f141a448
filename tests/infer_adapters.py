"""A third-party-style adapter for the runner's tests, registered through a real entry point
(tests/test_infer.py writes a dist-info folder whose entry_points.txt names it).

It reads the `lingshu` recipe's slices and answers with facts of the pixels it was given, so a test can
tell which volume's input it saw. Environment (not identity, since they never change an answer):
ECHO_TEST_LOG appends every qid it answers to that file; ECHO_TEST_DELAY sleeps that long per call."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Sequence

from adapters.models.base import AdapterError, AdapterSettings, Answer, ModelAdapter, ModelInput, Question, Requirement


class EchoModel(ModelAdapter):
    name = "echo-test"
    version = "1"
    default_recipe = "lingshu"
    description = "test adapter: answers with the mean of the slices it was shown"

    @classmethod
    def requirements(cls, settings: AdapterSettings) -> list[Requirement]:
        ckpt = settings.checkpoint
        found = ckpt is None or (Path(ckpt) / "config.json").is_file()
        return [Requirement("weights", found, f"{ckpt}/config.json" if ckpt else "none needed")]

    def generation(self) -> dict:
        return {"template": "mean={mean:.4f}", "greedy": True}

    def load(self) -> None:
        if self.settings.checkpoint:
            path = Path(self.settings.checkpoint) / "config.json"
            if not path.is_file():
                raise AdapterError(f"no checkpoint at {self.settings.checkpoint}: put config.json there")
            self.config = json.loads(path.read_text())        # garbage: the runner reports it in one line

    def answer(self, model_input: ModelInput | None, questions: Sequence[Question]) -> list[Answer]:
        if model_input is None:
            raise ValueError("echo-test needs an image")
        if os.environ.get("ECHO_TEST_DELAY"):
            time.sleep(float(os.environ["ECHO_TEST_DELAY"]))
        if model_input.volume == self.settings.options.get("fail_volume"):
            raise RuntimeError(f"cannot read volume {model_input.volume}")
        if self.settings.options.get("fail_qid") in {q.qid for q in questions}:
            raise ValueError("this question breaks the model")
        slices = model_input.load()["slices"]
        mean = float(slices.mean())
        if os.environ.get("ECHO_TEST_LOG"):
            with open(os.environ["ECHO_TEST_LOG"], "a") as f:
                for q in questions:
                    f.write(q.qid + "\n")
                f.flush()
        return [Answer(q.qid, f"mean={mean:.4f}", meta={"seen": model_input.volume}) for q in questions]


class EchoManyModel(EchoModel):
    """EchoModel that also answers several volumes per call (`answer_many`), like the native
    models' shared-prefix engine; option `per_call` sets how many, `fail_many` makes a call that
    includes that volume raise (the runner then asks each volume alone). ECHO_TEST_CALLS appends
    one line per call: the volumes it was given."""
    name = "echo-many-test"

    @property
    def volumes_per_call(self) -> int:
        return int(self.settings.options.get("per_call", 2))

    def answer_many(self, items):
        volumes = [mi.volume for mi, _ in items]
        if os.environ.get("ECHO_TEST_CALLS"):
            with open(os.environ["ECHO_TEST_CALLS"], "a") as f:
                f.write(",".join(volumes) + "\n")
        if self.settings.options.get("fail_many") in volumes:
            raise RuntimeError("this group breaks the model")
        return [self.answer(mi, qs) for mi, qs in items]


class EchoStreamModel(EchoModel):
    """EchoModel that answers a whole run as one stream (`answer_stream`), like the native models'
    engine, handing volumes back as they "finish": last first. Option `break_after` makes the
    stream raise after that many volumes; `stop_after` raises KeyboardInterrupt there (a user's
    Ctrl-C); `end_after` ends the stream there without the rest. ECHO_TEST_CALLS appends one line per stream: the volumes it was given."""
    name = "echo-stream-test"

    def answer_stream(self, items):
        items = list(items)
        if os.environ.get("ECHO_TEST_CALLS"):
            with open(os.environ["ECHO_TEST_CALLS"], "a") as f:
                f.write(",".join(mi.volume for mi, _ in items) + "\n")
        for n, i in enumerate(reversed(range(len(items)))):
            if n == self.settings.options.get("break_after"):
                raise RuntimeError("the engine broke")
            if n == self.settings.options.get("stop_after"):
                raise KeyboardInterrupt
            if n == self.settings.options.get("end_after"):
                return
            mi, qs = items[i]
            yield i, self.answer(mi, qs)


class CountingModel(EchoModel):
    """EchoModel that appends a line to COUNT_TEST_LOG each time it is constructed ('built') and each
    time its checkpoint and code are fingerprinted ('fingerprinted'): a command's count of both."""
    name = "counting-test"

    def __init__(self, settings: AdapterSettings | None = None) -> None:
        super().__init__(settings)
        self._count("built")

    def checkpoint_identity(self):
        self._count("fingerprinted")
        return super().checkpoint_identity()

    @staticmethod
    def _count(what: str) -> None:
        if os.environ.get("COUNT_TEST_LOG"):
            with open(os.environ["COUNT_TEST_LOG"], "a") as f:
                f.write(what + "\n")
