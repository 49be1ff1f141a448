"""Importing a model's own code from a user's checkout (`--code-dir`), for the remote-code adapters.

Two checkouts can ship a top-level package of the same name (CT-CHAT's and VILA's both are `llava`),
so an adapter imports its code with its roots first on `sys.path` and every module of those packages
dropped from `sys.modules` before and after: the classes it keeps references to stay valid, and the
next adapter imports its own `llava`, not a stale one. Stdlib only at module level.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any, Iterable


def purge(packages: Iterable[str]) -> None:
    """Forget the imported modules of these top-level packages (and their submodules)."""
    names = tuple(packages)
    for mod in list(sys.modules):
        if mod.split(".", 1)[0] in names:
            del sys.modules[mod]


class ImportRoots:
    """`sys.path` entries and top-level packages an adapter owns while it imports its code."""

    def __init__(self, roots: Iterable[Path], packages: Iterable[str]) -> None:
        self.roots = [str(Path(r)) for r in roots]
        self.packages = tuple(packages)
        self.active = False

    def enter(self) -> None:
        purge(self.packages)
        for root in reversed(self.roots):
            if root in sys.path:
                sys.path.remove(root)
            sys.path.insert(0, root)
        self.active = True

    def leave(self) -> None:
        if not self.active:
            return
        for root in self.roots:
            while root in sys.path:
                sys.path.remove(root)
        purge(self.packages)
        self.active = False


def stub_module(name: str, parents: bool = True, **attrs: Any) -> types.ModuleType:
    """A placeholder module in `sys.modules` (a dependency imported at module level but never used
    on the inference path); with `parents`, missing parents are created as empty packages (else the
    real parents, imported later, find the leaf in sys.modules)."""
    parts = name.split(".")
    for i in range(1, len(parts) if parents else 1):
        parent = ".".join(parts[:i])
        if parent not in sys.modules:
            sys.modules[parent] = _stub(parent)
    module = _stub(name)
    for key, value in attrs.items():
        setattr(module, key, value)
    sys.modules[name] = module
    if len(parts) > 1 and ".".join(parts[:-1]) in sys.modules:
        setattr(sys.modules[".".join(parts[:-1])], parts[-1], module)
    return module


def _stub(name: str) -> types.ModuleType:
    """An empty package module with a __spec__: `importlib.util.find_spec(name)` raises ValueError for a
    module in sys.modules whose __spec__ is None (transformers' `is_*_available` checks call it)."""
    import importlib.machinery

    module = types.ModuleType(name)
    module.__path__ = []                            # a package, so `import name.child` works
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
    module.__ctsvqa_stub__ = True
    return module


def importable(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
