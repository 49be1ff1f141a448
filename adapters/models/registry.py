"""Model adapters by name: the shipped ones (imported only when asked for, so `ctsvqa models` does not
pay for torch or transformers) and third-party ones registered in the `ctsvqa.models` entry-point group:

    [project.entry-points."ctsvqa.models"]
    my-model = "my_package.adapter:MyAdapter"

A name of the form `module:Class` is imported directly (handy while writing an adapter)."""

from __future__ import annotations

import importlib
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from adapters.models.base import AdapterError, AdapterSettings, ModelAdapter, Requirement

ENTRY_POINT_GROUP = "ctsvqa.models"

SHIPPED: dict[str, str] = {
    "blind": "adapters.models.baselines:Blind",
    "blind-oracle": "adapters.models.baselines:BlindOracle",
    "random": "adapters.models.baselines:RandomAnswer",
    "phantom-expert": "adapters.models.phantom_expert:PhantomExpert",
    "medgemma": "adapters.models.medgemma:MedGemma",
    "lingshu": "adapters.models.lingshu:Lingshu",
    "ctchat": "adapters.models.ctchat:CTChat",
    "vila-m3": "adapters.models.vila_m3:VilaM3",
    "radfm": "adapters.models.radfm:RadFM",
    "merlin": "adapters.models.merlin:Merlin",
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


def create(name: str, settings: AdapterSettings | None = None, env: str | None = None) -> ModelAdapter:
    """The adapter, in-process; or, when its class names a family `environment` (or `env` names an
    interpreter), the proxy that runs it in a worker process there (adapters/models/worker_client.py).
    `env`: None = the class's choice; 'current' = in-process, here; a family name; a path to a python."""
    cls = adapter_class(name)
    if ":" in name and getattr(cls, "name", None) is None:
        raise AdapterError(f"{name}: the adapter class must set a `name`")
    settings = settings or AdapterSettings()
    target = env if env is not None else cls.environment
    if target is None or (target == "current" and cls.environment is None):
        return cls(settings)              # an adapter for our own stack: in-process, identity unchanged
    from adapters.models import environments, worker_client

    try:
        if target == "current":
            return _in_process(cls)(settings)
        if "/" in target or target.startswith("python"):
            python = environments.shutil.which(target) or target
            if not Path(python).is_file():
                raise environments.EnvError(f"--env {target}: no such interpreter")
            identity = {"python": environments.python_version(python),
                        "fingerprint": environments.fingerprint_of(environments.interpreter_distributions(python))}
            label = f"--env {target}"
        else:
            python = str(environments.python_for(target))
            st = environments.status(target)
            identity = {"family": st.family, "python": st.python_version, "fingerprint": st.fingerprint}
            label = f"family environment {st.family}"
    except environments.EnvError as exc:
        raise AdapterError(f"model {name!r}: {exc}") from None
    return worker_client.worker_adapter_class(cls)(settings, python=python, environment=identity, label=label)


def _in_process(cls: type[ModelAdapter]) -> type[ModelAdapter]:
    """`--env current` for an adapter that names a family environment: it runs here, and the identity
    says so with this interpreter's package set (a different stack can change an answer)."""
    from adapters.models import environments

    def compute_identity(self) -> dict:
        dists = {d.metadata["Name"]: d.version for d in metadata.distributions() if d.metadata["Name"]}
        return {**cls.compute_identity(self), "environment": {
            "current": True, "python": platform.python_version(),
            "fingerprint": environments.fingerprint_of({environments._canon(k): v for k, v in dists.items()})}}

    return type(cls.__name__, (cls,), {"compute_identity": compute_identity, "__module__": cls.__module__})


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


def describe(settings: AdapterSettings | None = None, per_model: dict[str, tuple[AdapterSettings, str | None]] | None
             = None) -> list[AdapterInfo]:
    """What `ctsvqa models` shows: every adapter, its recipe, and whether what it needs is found.
    `per_model`: name -> (settings, env) from a models config, instead of `settings` for that adapter."""
    default = settings or AdapterSettings()
    rows = []
    for entry in entries().values():
        settings, env = (per_model or {}).get(entry.name, (default, None))
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
            if cls.environment or env:
                info.requirements.append(environment_requirement(env or cls.environment))
        except Exception as exc:  # noqa: BLE001  (a third party's bug must not hide the other adapters)
            info.error = f"{type(exc).__name__}: {exc}"
        rows.append(info)
    return rows


def environment_requirement(family: str) -> Requirement:
    """Whether the family environment a remote-code adapter runs in is built (`ctsvqa models`)."""
    from adapters.models import environments

    if family == "current":
        return Requirement("environment", True, "runs in this process, with this environment (env: current)")
    if "/" in family:
        found = Path(family).expanduser().is_file()
        return Requirement("environment", found, f"{family} (your own interpreter)" if found else
                           f"{family}: no such interpreter")
    st = environments.status(family)
    if st.ready:
        versions = ", ".join(f"{k} {v}" for k, v in st.packages.items())
        return Requirement(f"environment {st.family}", True, f"{st.path} (Python {st.python_version}; {versions})")
    return Requirement(f"environment {st.family}", False, f"{st.path}: {st.reason}; run `ctsvqa env create "
                                                          f"{st.family}` (or run it with --env current / --env PYTHON)")
