"""The phantom expert with two test hooks, for tests/test_sharding.py (loaded as
`tests.sharding_adapters:ShardProbe` inside Ray's replica processes). Options (part of the identity,
like any option): `load_log` — a file each load() appends "pid CUDA_VISIBLE_DEVICES" to;
`die_on` — the volume whose question kills the process (os._exit, as a CUDA abort or the OOM killer
would) instead of answering; `delay` — seconds to sleep per call (a slow model)."""

from __future__ import annotations

import os
import time
from typing import Sequence

from adapters.models.base import Answer, ModelInput, Question
from adapters.models.phantom_expert import PhantomExpert


class ShardProbe(PhantomExpert):
    name = "shard-probe"
    OPTIONS = None          # the probe's own test options (load_log, calls_log, die_on, ...): any is taken

    def load(self) -> None:
        super().load()
        if log := self.settings.options.get("load_log"):
            with open(log, "a") as f:
                f.write(f"{os.getpid()} {os.environ.get('CUDA_VISIBLE_DEVICES')}\n")

    def answer(self, model_input: ModelInput | None, questions: Sequence[Question]) -> list[Answer]:
        if model_input is not None and model_input.volume == self.settings.options.get("die_on"):
            os._exit(3)
        time.sleep(float(self.settings.options.get("delay", 0)))
        return super().answer(model_input, questions)


class ShardManyProbe(ShardProbe):
    """ShardProbe that decodes several volumes per call (`answer_many`, like the native models'
    shared-prefix engine); option `calls_log`: a file each call appends "pid volume,volume,..." to."""
    name = "shard-many-probe"
    volumes_per_call = 2

    def answer_many(self, items):
        if log := self.settings.options.get("calls_log"):
            with open(log, "a") as f:
                f.write(f"{os.getpid()} {','.join(mi.volume for mi, _ in items)}\n")
        return [self.answer(mi, qs) for mi, qs in items]
