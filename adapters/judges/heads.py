"""Where the `learned` judge's heads lie and what their bytes hash to: the judge's identity (spec.py)
names each head by its sha256, so this module needs nothing of the judge itself.

A head is an .npz; `head.npz` beside this module is the shipped one (with `learned/manifest.json`),
and leave-one-out/<run>/head.npz the heads trained without one upstream run's verdicts."""

from __future__ import annotations

import hashlib
import io
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from adapters.judges.spec import JudgeSpec

HEAD_DIR = Path(__file__).resolve().parent / "learned"
DEFAULT_HEAD = HEAD_DIR / "head.npz"


def head_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz whose bytes depend only on the arrays (np.savez stamps the current time into the zip)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue())
    return buffer.getvalue()


def head_path(spec: JudgeSpec) -> Path:
    head = spec.options.get("head")
    return Path(head).expanduser().resolve() if head else DEFAULT_HEAD


LOO_DIR = "leave-one-out"


def loo_paths(spec: JudgeSpec) -> dict[str, Path]:
    """With options.leave_one_out: run name -> the head trained without that run's verdicts, from
    <head's folder>/leave-one-out/<run>/head.npz (`ctsvqa judge-train` writes them)."""
    if not spec.options.get("leave_one_out"):
        return {}
    root = head_path(spec).parent / LOO_DIR
    heads = {p.parent.name: p for p in sorted(root.glob("*/head.npz"))}
    if not heads:
        raise FileNotFoundError(f"judge {spec.name!r}: options.leave_one_out is set but {root} holds no "
                                f"<run>/head.npz; train them with `ctsvqa judge-train` or unset it")
    return heads


def loo_sha256(spec: JudgeSpec) -> dict[str, str]:
    out = {}
    for run, path in loo_paths(spec).items():
        stat = path.stat()
        out[run] = _sha256(str(path), stat.st_mtime_ns, stat.st_size)
    return out


@lru_cache(maxsize=16)
def _sha256(path: str, mtime_ns: int, size: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def head_sha256(spec: JudgeSpec) -> str:
    path = head_path(spec)
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"judge {spec.name!r}: head file {path} not found; train one with "
                                f"`ctsvqa judge-train` or point options.head at it") from None
    return _sha256(str(path), stat.st_mtime_ns, stat.st_size)
