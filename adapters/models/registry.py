"""Model adapters by name: the shipped ones (imported only when asked for, so `ctsvqa models` does not
pay for torch or transformers) and third-party ones registered in the `ctsvqa.models` entry-point group:

    [project.entry-points."ctsvqa.models"]
    my-model = "my_package.adapter:MyAdapter"

A name of the form `module:Class` is imported directly (handy while writing an adapter)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib import metadata

from adapters.models.base import AdapterError, AdapterSettings, ModelAdapter, Requirement

ENTRY_POINT_GROUP = "ctsvqa.models"

SHIPPED: dict[str, str] = {
    "blind": "adapters.models.baselines:Blind",
    "random": "adapters.models.baselines:RandomAnswer",
    "phantom-expert": "adapters.models.phantom_expert:PhantomExpert",
    "medgemma": "adapters.models.medgemma:MedGemma",
    "lingshu": "adapters.models.lingshu:Lingshu",
    "m3d": "adapters.models.m3d:M3D",
    "med3dvlm": "adapters.models.med3dvlm:Med3DVLM",
}


class UnknownModel(ValueError):
    pass


@dataclass(frozen=True)
class AdapterEntry:
    name: str
    target: str                  # 'module:Class'
    origin: str                  # 'shipped' | 'entry point (distribution X)' | 'module path'


def entries() -> dict[str, AdapterEntry]:
    """Every known adapter by name; a shipped name wins over a third party's of the same name."""
    found: dict[str, AdapterEntry] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep.dist, "name", None) or "unknown distribution"
        found.setdefault(ep.name, AdapterEntry(ep.name, ep.value, f"entry point ({dist})"))
    for name, target in SHIPPED.items():
        found[name] = AdapterEntry(name, target, "shipped")
    return dict(sorted(found.items()))


def _import(entry: AdapterEntry) -> type[ModelAdapter]:
    module_name, _, attr = entry.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AdapterError(f"model {entry.name!r} ({entry.origin}) cannot be imported: module {module_name!r}: "
                           f"{type(exc).__name__}: {exc}") from exc
    obj = module
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part, None)
        if obj is None:
            raise AdapterError(f"model {entry.name!r} ({entry.origin}): {module_name!r} has no attribute {attr!r}")
    if not (isinstance(obj, type) and issubclass(obj, ModelAdapter)):
        raise AdapterError(f"model {entry.name!r} ({entry.origin}): {entry.target} is not a ModelAdapter subclass")
    return obj


def adapter_class(name: str) -> type[ModelAdapter]:
    known = entries()
    if name in known:
        return _import(known[name])
    if ":" in name:
        return _import(AdapterEntry(name, name, "module path"))
    raise UnknownModel(f"unknown model {name!r}; known models: {', '.join(known)} "
                       f"(or register one in the {ENTRY_POINT_GROUP!r} entry-point group, or pass module:Class)")


def create(name: str, settings: AdapterSettings | None = None) -> ModelAdapter:
    cls = adapter_class(name)
    adapter = cls(settings or AdapterSettings())
    if ":" in name and getattr(cls, "name", None) is None:
        raise AdapterError(f"{name}: the adapter class must set a `name`")
    return adapter


@dataclass
class AdapterInfo:
    name: str
    origin: str
    target: str
    importable: bool
    recipe: str | None = None
    description: str = ""
    requirements: list[Requirement] | None = None
    error: str | None = None

    @property
    def ready(self) -> bool:
        return self.importable and self.error is None and all(r.found for r in self.requirements or [])


def describe(settings: AdapterSettings | None = None) -> list[AdapterInfo]:
    """What `ctsvqa models` shows: every adapter, its recipe, and whether what it needs is found."""
    settings = settings or AdapterSettings()
    rows = []
    for entry in entries().values():
        info = AdapterInfo(entry.name, entry.origin, entry.target, importable=False)
        try:
            cls = _import(entry)
        except AdapterError as exc:
            info.error = str(exc)
            rows.append(info)
            continue
        info.importable = True
        info.description = cls.description
        try:
            info.recipe = cls(settings).recipe
            info.requirements = list(cls.requirements(settings))
        except Exception as exc:  # noqa: BLE001  (a third party's bug must not hide the other adapters)
            info.error = f"{type(exc).__name__}: {exc}"
        rows.append(info)
    return rows
