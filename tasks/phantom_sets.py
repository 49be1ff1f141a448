"""The phantom data sets the project generates in place of CT volumes (adapters/datasets/phantom.py):
written on request (`ctsvqa phantoms`), or once per benchmark configuration and then kept."""

from __future__ import annotations

import json
from pathlib import Path

from adapters.datasets.phantom import GENERATORS, MANIFEST_JSON, generate


def write_phantoms(out: str | Path, n: int, seed: int, size: str, version: int) -> tuple[int, int]:
    """n phantom volumes and their questions under `out` (the upstream layout): (volumes, questions)."""
    cases = generate(out, n, seed, size, version)
    return len(cases), sum(len(c.qa) for c in cases)


def ensure_phantom_set(spec, out: str | Path) -> Path:
    """A benchmark configuration's phantom set (`PhantomSet`: n, seed, size, version) under `out`,
    generated once: the same files are kept (a re-generation would change their mtimes, and with them
    every input built from them)."""
    version = f"-v{spec.version}" if spec.version != 1 else ""
    root = Path(out) / f"phantoms{version}-{spec.size}-s{spec.seed}-n{spec.n}"
    try:
        have = json.loads((root / MANIFEST_JSON).read_text())
    except (OSError, ValueError):
        have = {}
    wanted = {"n": spec.n, "seed": spec.seed, "size": spec.size, "generator": GENERATORS[spec.version]}
    if {k: have.get(k) for k in wanted} != wanted:
        generate(root, spec.n, spec.seed, spec.size, spec.version)
    return root
