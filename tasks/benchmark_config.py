"""The benchmark's configuration (a YAML file, see examples/benchmark.yaml): which data set, which model
runs, which juries. Plain data and validation; the `benchmark` flow does the work."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from adapters.models import registry
from adapters.models.base import AdapterError

MODEL_KEYS = {"model", "name", "checkpoint", "device", "dtype", "batch_size", "seed", "options", "ablate",
              "limit_volumes"}


@dataclass(frozen=True)
class PhantomSet:
    n: int = 12
    seed: int = 11
    size: str = "small"


@dataclass
class BenchmarkConfig:
    phantoms: PhantomSet | None = field(default_factory=PhantomSet)
    upstream: str | None = None              # an upstream-layout folder instead of phantoms
    volumes: list[str] = field(default_factory=list)      # where its .nii.gz files are (CT-RATE layout)
    dataset: str | None = None               # dataset id (default: the layout's manifest name)
    models: list[dict[str, Any]] = field(default_factory=lambda: [
        {"model": "phantom-expert"}, {"model": "blind"}, {"model": "random"},
        {"model": "phantom-expert", "ablate": "shuffle-volumes"}])
    # The learned judge reached the paid jury's agreement (κ >= 0.80 vs the published majority on unseen
    # volumes and models, bench/learned_judge.py) and agrees with spatial-rules on phantom answers.
    judges: list[str] = field(default_factory=lambda: ["offline-learned"])
    source: str = "built-in default"


class ConfigError(ValueError):
    pass


def load_config(path: str | Path | None) -> BenchmarkConfig:
    """The default (a phantom set, the offline baselines and the ablation, the offline jury), or a YAML
    file; an unknown key or a bad value is an error naming the file and the field."""
    if path is None:
        return BenchmarkConfig()
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the benchmark config: {' '.join(str(exc).split())}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with keys dataset, models, judges")
    unknown = set(raw) - {"dataset", "models", "judges"}
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))} (known: dataset, models, judges)")
    cfg = BenchmarkConfig(source=str(path))
    ds = raw.get("dataset") or {}
    if not isinstance(ds, dict):
        raise ConfigError(f"{path}: dataset: expected a mapping (phantoms: {{n, seed, size}} or upstream: PATH)")
    bad = set(ds) - {"phantoms", "upstream", "volumes", "name"}
    if bad:
        raise ConfigError(f"{path}: dataset: unknown key(s) {', '.join(sorted(bad))} "
                          "(known: phantoms, upstream, volumes, name)")
    if "upstream" in ds:
        if "phantoms" in ds:
            raise ConfigError(f"{path}: dataset: give either phantoms or upstream, not both")
        cfg.phantoms = None
        cfg.upstream = str((path.parent / str(ds["upstream"])).resolve())
        volumes = ds.get("volumes") or []
        cfg.volumes = [str((path.parent / str(v)).resolve()) for v in ([volumes] if isinstance(volumes, str) else volumes)]
    elif "phantoms" in ds:
        p = ds["phantoms"] or {}
        try:
            cfg.phantoms = PhantomSet(n=int(p.get("n", 12)), seed=int(p.get("seed", 11)), size=str(p.get("size", "small")))
        except (TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{path}: dataset.phantoms: expected n and seed integers, size small|full") from exc
        if cfg.phantoms.size not in ("small", "full") or cfg.phantoms.n < 2:
            raise ConfigError(f"{path}: dataset.phantoms: size must be small or full and n at least 2")
    cfg.dataset = ds.get("name")
    if "models" in raw:
        models = raw["models"]
        if not isinstance(models, list) or not models:
            raise ConfigError(f"{path}: models: expected a non-empty list of {{model: NAME, ...}}")
        for i, m in enumerate(models):
            if isinstance(m, str):
                m = {"model": m}
            if not isinstance(m, dict) or "model" not in m:
                raise ConfigError(f"{path}: models[{i}]: expected a mapping with a `model` key")
            bad = set(m) - MODEL_KEYS
            if bad:
                raise ConfigError(f"{path}: models[{i}]: unknown key(s) {', '.join(sorted(bad))} "
                                  f"(known: {', '.join(sorted(MODEL_KEYS))})")
            limit = m.get("limit_volumes")
            if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
                raise ConfigError(f"{path}: models[{i}].limit_volumes: expected a whole number of at least 1, "
                                  f"not {limit!r} (leave it out for every volume)")
            try:
                registry.adapter_class(str(m["model"]))
            except (AdapterError, ValueError) as exc:            # unknown, or not importable here
                raise ConfigError(f"{path}: models[{i}]: {exc}") from exc
            models[i] = m
        cfg.models = models
    if "judges" in raw:
        judges = raw["judges"]
        judges = [judges] if isinstance(judges, str) else judges
        if not isinstance(judges, list) or not judges or not all(isinstance(j, str) for j in judges):
            raise ConfigError(f"{path}: judges: expected a list of presets or judges files (e.g. [offline, paper])")
        cfg.judges = [j if "/" not in j and not j.endswith((".yaml", ".yml")) else str((path.parent / j).resolve())
                      for j in judges]
    return cfg


def describe(cfg: BenchmarkConfig) -> str:
    data = (f"phantoms n={cfg.phantoms.n} seed={cfg.phantoms.seed} size={cfg.phantoms.size}" if cfg.phantoms
            else f"upstream layout {cfg.upstream}")
    models = ", ".join(m["model"] + (f" ({m['ablate']})" if m.get("ablate") else "") for m in cfg.models)
    return f"{data}; models: {models}; juries: {', '.join(cfg.judges)} [{cfg.source}]"


def as_json(cfg: BenchmarkConfig) -> str:
    from dataclasses import asdict

    return json.dumps(asdict(cfg), sort_keys=True, default=str)
