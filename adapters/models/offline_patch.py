"""Small tools for running third-party model code offline: swap names inside an imported module
for the duration of a construction, and keep the code's own prints off stdout (the family worker
speaks JSON lines there)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def patched(module: Any, **names: Any) -> Iterator[None]:
    """Replace module-level `names` in `module`, restoring them afterwards (even on error)."""
    missing = object()
    before = {name: getattr(module, name, missing) for name in names}
    for name, value in names.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is missing:
                delattr(module, name)
            else:
                setattr(module, name, value)


@contextlib.contextmanager
def prints_to_stderr() -> Iterator[None]:
    with contextlib.redirect_stdout(sys.stderr):
        yield


def add_import_root(root: Path) -> str:
    """Put `root` first on sys.path (once) and return the entry, for `drop_import_root`."""
    entry = str(root)
    if entry not in sys.path:
        sys.path.insert(0, entry)
    return entry


def drop_import_root(entry: str, packages: tuple[str, ...]) -> None:
    """Undo `add_import_root` and forget the modules imported from there under `packages`, so a
    later load from another checkout imports its own code."""
    while entry in sys.path:
        sys.path.remove(entry)
    for name in [n for n in sys.modules if n.split(".")[0] in packages]:
        module = sys.modules[name]
        files = [getattr(module, "__file__", None) or "", *list(getattr(module, "__path__", []) or [])]
        if any(f.startswith(entry) for f in files):
            del sys.modules[name]


def has_weights(folder: Path) -> bool:
    """Whether a transformers model folder carries weights (not only config and tokenizer)."""
    return any(any(folder.glob(p)) for p in ("*.safetensors", "pytorch_model*.bin", "model.safetensors.index.json"))
