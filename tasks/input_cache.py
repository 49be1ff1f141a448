"""A bounded cache of built model inputs on disk: least recently used files go first.

Built inputs are large (about 1.1 GB per volume for every recipe at full size; see the README),
so with a budget (`--max-cache SIZE`, or `$CTSVQA_MAX_CACHE` for every command and the inference
runner) the oldest-used files are deleted once the folder exceeds it. Their `model_inputs` rows
stay 'ok': `plan()` and `ensure_inputs()` rebuild a file that is gone with the same recipe
version (and record its hash again). "Used" is the file's mtime, set when it is built and touched by
`ensure_inputs()` each time it hands the file to a reader, so no database write is needed per read.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from pydantic import ByteSize, TypeAdapter, ValidationError

ENV = "CTSVQA_MAX_CACHE"
SUFFIXES = (".npy", ".npz")


def parse_size(value: str | int | None) -> int | None:
    """'50G', '1.5 TiB', '800MB', 1000000 -> bytes; None or '' -> no budget."""
    if value is None or value == "":
        return None
    try:
        return int(TypeAdapter(ByteSize).validate_python(value))
    except ValidationError:
        raise ValueError(f"cache size {value!r} is not a size; write e.g. 50G, 800MB or 1.5TiB") from None


def budget(value: str | int | None = None) -> int | None:
    """The explicit value, else $CTSVQA_MAX_CACHE, else None (unbounded)."""
    return parse_size(value if value not in (None, "") else os.environ.get(ENV))


@dataclass
class CacheFile:
    path: Path
    size: int
    used: float                       # mtime: built or last handed to a reader


def cache_files(out_root: str | os.PathLike) -> list[CacheFile]:
    """Every built input under the root (temporary files of writers in progress excluded)."""
    found = []
    for folder, _, names in os.walk(out_root):
        for name in names:
            if name.endswith(SUFFIXES) and not name.startswith("."):
                path = Path(folder) / name
                try:
                    st = path.stat()
                except FileNotFoundError:             # evicted or replaced meanwhile
                    continue
                found.append(CacheFile(path, st.st_size, st.st_mtime))
    return found


def usage(out_root: str | os.PathLike) -> int:
    return sum(f.size for f in cache_files(out_root))


def touch(paths: Iterable[Path]) -> None:
    now = time.time()
    for path in paths:
        try:
            os.utime(path, (now, now))
        except FileNotFoundError:
            pass


def evict(out_root: str | os.PathLike, max_bytes: int | None, keep: Iterable[Path] = ()) -> list[Path]:
    """Delete least recently used inputs until the folder holds at most `max_bytes`; never the
    files in `keep` (what the caller is about to read), so the budget can be exceeded by those."""
    if max_bytes is None:
        return []
    files = sorted(cache_files(out_root), key=lambda f: f.used)
    total = sum(f.size for f in files)
    keep = {Path(p) for p in keep}
    removed = []
    for f in files:
        if total <= max_bytes:
            break
        if f.path in keep:
            continue
        try:
            f.path.unlink()
        except FileNotFoundError:
            pass
        total -= f.size
        removed.append(f.path)
    return removed
