"""The benchmark's configuration (a YAML file, see examples/benchmark.yaml): which data set, which model
runs, which juries. Plain data and validation; the `benchmark` flow does the work."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from typing_extensions import Annotated, Literal

from adapters.judges.spec import JudgeConfigError, load_panel
from adapters.models import registry
from adapters.models.base import AdapterError
from tasks.inference import ABLATIONS

@dataclass(frozen=True)
class PhantomSet:
    n: int = 12
    seed: int = 11
    size: str = "small"
    version: int = 2            # the phantom generator: 2 mirrors half the bodies (no question is blind-answerable)


@dataclass
class BenchmarkConfig:
    phantoms: PhantomSet | None = field(default_factory=PhantomSet)
    upstream: str | None = None              # an upstream-layout folder instead of phantoms
    volumes: list[str] = field(default_factory=list)      # where its .nii.gz files are (CT-RATE layout)
    dataset: str | None = None               # dataset id (default: the layout's manifest name)
    models: list[dict[str, Any]] = field(default_factory=lambda: [
        {"model": "phantom-expert"}, {"model": "blind"}, {"model": "blind-oracle"}, {"model": "random"},
        {"model": "phantom-expert", "ablate": "shuffle-volumes"}])
    # The learned judge: no keys, no network; κ 0.81 vs the published majority on unseen volumes, 0.77-0.83
    # on unseen models (bench/learned_judge.py), and it agrees with spatial-rules on phantom answers.
    judges: list[str] = field(default_factory=lambda: ["offline-learned"])
    source: str = "built-in default"


class ConfigError(ValueError):
    pass


# -- the file's schema (pydantic): every field typed, nothing unknown, checked before any work ----------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class PhantomSpec(_Strict):
    n: Annotated[int, Field(ge=2)] = 12
    seed: int = 11
    size: Literal["small", "full"] = "small"
    version: Literal[1, 2] = 2


class DatasetSpec(_Strict):
    phantoms: PhantomSpec | None = None
    upstream: str | None = None
    volumes: str | list[str] = []
    name: str | None = None


class ModelSpec(_Strict):
    model: str
    name: str | None = None
    checkpoint: str | None = None
    device: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    batch_size: Annotated[int, Field(ge=1)] = 8
    seed: int = 0
    options: dict[str, Any] = {}
    ablate: Literal[ABLATIONS] | None = None
    limit_volumes: Annotated[int, Field(ge=1)] | None = None


class ConfigFile(_Strict):
    dataset: DatasetSpec | None = None
    models: Annotated[list[ModelSpec | str], Field(min_length=1)] | None = None
    judges: Annotated[list[str], Field(min_length=1)] | str | None = None


HINTS = {   # what to write, by field, where pydantic's own words would not say it
    "models": "expected a non-empty list of {model: NAME, ...}",
    "judges": "expected a list of presets or judges files (e.g. [offline, paper])",
    "dataset": "expected a mapping (phantoms: {n, seed, size} or upstream: PATH)",
    "dataset.phantoms": "expected n and seed integers, size small|full, version 1|2",
    "dataset.phantoms.n": "expected a whole number, n at least 2",
    "limit_volumes": "expected a whole number of at least 1 (leave it out for every volume)",
    "batch_size": "expected a whole number of at least 1",
    "options": "expected a mapping of option: value",
}


def _where(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("ModelSpec", "str", "list[str]", "list[ModelSpec | str]", "PhantomSpec", "DatasetSpec"):
            continue                                 # the branch of a union pydantic tried
        elif part.startswith(("function-", "constrained-", "literal[", "nullable[", "tagged-union")):
            continue
        else:
            out += ("." if out else "") + part
    return out


def _schema_error(path: Path, exc: ValidationError) -> ConfigError:
    """The most specific error as one line: file, field, what was found, what to write."""
    errors = sorted(exc.errors(), key=lambda e: -len(e["loc"]))
    e = errors[0]
    where = _where(e["loc"])
    parent, _, field_name = where.rpartition(".")
    if e["type"] == "extra_forbidden":
        unknown = sorted(_where(x["loc"]).rpartition(".")[2] for x in errors
                         if x["type"] == "extra_forbidden" and _where(x["loc"]).rpartition(".")[0] == parent)
        known = ModelSpec if parent.startswith("models[") else {"dataset": DatasetSpec, "dataset.phantoms": PhantomSpec}.get(
            parent, ConfigFile)
        return ConfigError(f"{path}: {parent + ': ' if parent else ''}unknown key(s) {', '.join(unknown)} "
                           f"(known: {', '.join(known.model_fields)})")
    if e["type"] == "missing":
        return ConfigError(f"{path}: {parent or 'the file'}: missing key {field_name!r}")
    if re.fullmatch(r"models\[\d+\]", where):
        hint = "expected a model name or a mapping with a `model` key"
    elif e["type"] == "literal_error":
        hint = e["msg"].replace("Input should be", "expected")
    else:
        hint = HINTS.get(where) or HINTS.get(field_name) or e["msg"]
    found = e.get("input")
    return ConfigError(f"{path}: {where or 'the file'}: {hint}" + (f", not {found!r}" if not isinstance(found, (dict, list)) else ""))


def _read(path: Path) -> Any:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the benchmark config: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save the config as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(exc).split())}") from None
    if data is None:
        raise ConfigError(f"{path}: the file is empty; give at least one of dataset, models, judges "
                          f"(see examples/benchmark.yaml)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with keys dataset, models, judges")
    return data


def load_config(path: str | Path | None) -> BenchmarkConfig:
    """The default (a phantom set, the offline baselines and the ablation, the offline jury), or a YAML
    file, validated whole before any work: an unknown key, a bad value, a model, device, option or
    jury that does not exist here is an error naming the file and the field."""
    if path is None:
        return BenchmarkConfig()
    path = Path(path)
    try:
        spec = ConfigFile.model_validate(_read(path))
    except ValidationError as exc:
        raise _schema_error(path, exc) from None
    cfg = BenchmarkConfig(source=str(path))
    ds = spec.dataset
    if ds is not None:
        if ds.upstream is not None and ds.phantoms is not None:
            raise ConfigError(f"{path}: dataset: give either phantoms or upstream, not both")
        if ds.upstream is not None:
            cfg.phantoms = None
            cfg.upstream = str((path.parent / ds.upstream).resolve())
            volumes = [ds.volumes] if isinstance(ds.volumes, str) else ds.volumes
            cfg.volumes = [str((path.parent / v).resolve()) for v in volumes]
        elif ds.phantoms is not None:
            cfg.phantoms = PhantomSet(n=ds.phantoms.n, seed=ds.phantoms.seed, size=ds.phantoms.size,
                                      version=ds.phantoms.version)
        cfg.dataset = ds.name
    if spec.models is not None:
        cfg.models = [_check_model(path, i, ModelSpec(model=m) if isinstance(m, str) else m)
                      for i, m in enumerate(spec.models)]
    if spec.judges is not None:
        judges = [spec.judges] if isinstance(spec.judges, str) else spec.judges
        cfg.judges = [j if "/" not in j and not j.endswith((".yaml", ".yml")) else str((path.parent / j).resolve())
                      for j in judges]
        for i, j in enumerate(cfg.judges):
            try:
                load_panel(j)
            except (JudgeConfigError, OSError, ValueError) as exc:
                raise ConfigError(f"{path}: judges[{i}]: {' '.join(str(exc).split())}") from None
    return cfg


def _check_model(path: Path, i: int, m: ModelSpec) -> dict[str, Any]:
    """The model exists here, its device is on this machine, it knows its options."""
    from adapters.models.base import AdapterSettings
    from tasks.inference import check_device

    where = f"{path}: models[{i}]"
    try:
        cls = registry.adapter_class(m.model)
    except (AdapterError, ValueError) as exc:            # unknown, or not importable here
        raise ConfigError(f"{where}: {exc}") from None
    if m.device is not None:
        try:
            check_device(m.device)
        except ValueError as exc:
            raise ConfigError(f"{where}.device: {str(exc).removeprefix('--device ')}") from None
    try:
        cls(AdapterSettings(checkpoint=m.checkpoint, options=dict(m.options)))
    except AdapterError as exc:
        raise ConfigError(f"{where}.options: {exc}") from None
    except Exception:  # noqa: BLE001  (an adapter that needs more to be built is checked when it runs)
        pass
    return m.model_dump(exclude_defaults=True) | {"model": m.model}


def describe(cfg: BenchmarkConfig) -> str:
    data = (f"phantoms v{cfg.phantoms.version} n={cfg.phantoms.n} seed={cfg.phantoms.seed} size={cfg.phantoms.size}"
            if cfg.phantoms
            else f"upstream layout {cfg.upstream}")
    models = ", ".join(m["model"] + (f" ({m['ablate']})" if m.get("ablate") else "") for m in cfg.models)
    return f"{data}; models: {models}; juries: {', '.join(cfg.judges)} [{cfg.source}]"


def as_json(cfg: BenchmarkConfig) -> str:
    from dataclasses import asdict

    return json.dumps(asdict(cfg), sort_keys=True, default=str)
