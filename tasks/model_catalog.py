"""What the command line asks about models before any run: each adapter and whether what it needs is
found, a lab's per-model settings (models.yaml), and the family environments the remote-code models
run in. The flows and the CLI ask here; they import no adapter themselves."""

from __future__ import annotations

import time
from typing import Callable

from adapters.models import environments
from adapters.models import models_config
from adapters.models.base import AdapterSettings
from adapters.models.environments import EnvError, EnvStatus  # noqa: F401  (the CLI's names)
from adapters.models.registry import AdapterInfo, describe


def lab_settings(model: str, config: str | None) -> dict:
    """The lab's checkpoint, code_dir, device, dtype, options and env for this model (flags win)."""
    return models_config.for_model(model, config)


def describe_models(checkpoint: str | None, code_dir: str | None, config: str | None,
                    only: str | None = None) -> list[AdapterInfo]:
    """Every registered adapter (or `only`), with the lab's settings where models.yaml names it."""
    settings = AdapterSettings(checkpoint=checkpoint, code_dir=code_dir)
    per_model = {name: (AdapterSettings(checkpoint=checkpoint or sec.get("checkpoint"),
                                        code_dir=code_dir or sec.get("code_dir"),
                                        options=dict(sec.get("options") or {})), sec.get("env"))
                 for name, sec in models_config.load(config).items()}
    return [i for i in describe(settings, per_model) if not only or i.name == only]


def create_env(family: str, python: str | None, torch: str | None,
               log: Callable[[str], None]) -> tuple[EnvStatus, float]:
    """Build (or repair) a family's environment; its status and the seconds it took."""
    t0 = time.monotonic()
    st = environments.create(family, python=python, torch=torch, log=log)
    return st, time.monotonic() - t0


def list_envs() -> list[EnvStatus]:
    return environments.list_envs()


def envs_root():
    return environments.root()
