"""Preprocessing as plain functions: find each volume of a dataset on disk, decode it once, build
every requested recipe's input from memory, write content-addressed files, record them."""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Iterable, Sequence

import numpy as np
import pyarrow as pa

import warehouse
from adapters.datasets.upstream import ct_rate_folder
from adapters.models.recipes import RECIPES, Recipe, select

VOLUME_SUBDIRS = ("volumes", "dataset/data_volumes/dataset/valid_fixed", "valid_fixed", ".")


@dataclass
class VolumeJob:
    dataset_id: str
    volume: str
    path: str | None                 # None: not found on disk; else absolute
    looked_in: str
    recipes: tuple[str, ...]         # recipe names still missing (or stale) for this volume
    source_size: int | None = None   # the file as plan() saw it: stored with the rows, compared next time
    source_mtime_ns: int | None = None

    def source(self) -> dict:
        """The columns naming where this job's rows came from (also used to re-label a cached result)."""
        return {"dataset_id": self.dataset_id, "volume": self.volume, "source_path": self.path,
                "source_size": self.source_size, "source_mtime_ns": self.source_mtime_ns}


def output_root(db, out: str | os.PathLike | None = None) -> Path:
    """Where model inputs are written: `out`, else `inputs/` beside the warehouse file; absolute, so
    stored paths never depend on the working directory."""
    return (Path(out) if out else warehouse.resolve_db(db).parent / "inputs").resolve()


def find_volume(volume: str, roots: Sequence[Path]) -> Path | None:
    """Absolute path of the volume's file. Anything at a candidate path counts (a directory or a
    broken link is reported by the decoder for what it is, not as 'not found'). A name that would
    reach outside its root (a warehouse imported before volume keys were checked) finds nothing."""
    for root in roots:
        top = os.path.abspath(root)
        for sub in VOLUME_SUBDIRS:
            for candidate in (root / sub / ct_rate_folder(volume) / volume, root / sub / volume):
                where = os.path.abspath(candidate)
                if os.path.commonpath([top, where]) != top:
                    return None
                if os.path.lexists(where):
                    return Path(where)
    return None


def _stat(path: Path | None) -> tuple[int | None, int | None]:
    try:
        st = os.stat(path) if path else None
    except OSError:
        st = None
    return (st.st_size, st.st_mtime_ns) if st else (None, None)


def plan(db, dataset: str | None, recipes: Sequence[Recipe], volume_roots: Sequence[Path],
         out_root: Path, only: set[str] | None = None) -> list[VolumeJob]:
    """Volumes of the dataset(s) (or of `only` among them) with at least one requested recipe not
    yet built, whose output file is gone (evicted), or whose source file changed since it was built
    (see `_plan`)."""
    with warehouse.reader(db) as con:
        jobs, unchanged = _plan(con, dataset, recipes, volume_roots, only)
    restat(db, unchanged)
    return jobs


def file_sha256(path: str | os.PathLike) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def restat(db, unchanged: list[tuple]) -> None:
    """Record the new size and mtime of source files whose content was found unchanged (touched or
    copied), so the next plan trusts the cheap check again instead of hashing them once more."""
    if not unchanged:
        return
    with warehouse.writer(db) as con, warehouse.transaction(con):
        con.executemany("UPDATE model_inputs SET source_size = ?, source_mtime_ns = ? "
                        "WHERE dataset_id = ? AND volume = ? AND volume_sha256 = ?", unchanged)


def _plan(con, dataset: str | None, recipes: Sequence[Recipe], volume_roots: Sequence[Path],
          only: set[str] | None) -> tuple[list[VolumeJob], list[tuple]]:
    """(jobs, unchanged). The source is found in the given roots, else the dataset's import folder,
    else where its inputs were built from. An input is stale when that file's size or mtime differ
    from when it was built and its content hash differs too (a file only touched is not rebuilt; it
    is listed in `unchanged` to be re-stat-ed). A source that is gone leaves its inputs as they are."""
    datasets = con.execute("SELECT dataset_id, source_path FROM datasets WHERE ? IS NULL OR dataset_id = ?",
                           [dataset, dataset]).fetchall()
    if dataset is not None and not datasets:
        known = [d for (d,) in con.execute("SELECT dataset_id FROM datasets ORDER BY 1").fetchall()]
        raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(known) or 'none (import one first)'}")
    done = {(d, v, r, ver): (p, size, mtime, sha, src) for d, v, r, ver, p, size, mtime, sha, src in con.execute(
        "SELECT dataset_id, volume, recipe, version, path, source_size, source_mtime_ns, volume_sha256, source_path "
        "FROM model_inputs WHERE status = 'ok' AND (? IS NULL OR dataset_id = ?)", [dataset, dataset]).fetchall()}
    built_from = {(d, v): src for (d, v, _, _), (_, _, _, _, src) in done.items() if src}
    volumes = {d: [v for (v,) in con.execute("SELECT volume FROM volumes WHERE dataset_id = ? ORDER BY position",
                                             [d]).fetchall()] for d, _ in datasets}
    jobs, unchanged = [], []
    for dataset_id, source_path in datasets:
        roots = [Path(os.path.abspath(r)) for r in volume_roots] + ([Path(source_path)] if source_path else [])
        for volume in volumes[dataset_id]:
            if only is not None and volume not in only:
                continue
            found = find_volume(volume, roots)
            if found is None and (earlier := built_from.get((dataset_id, volume))) and os.path.lexists(earlier):
                found = Path(earlier)          # found through a --volumes folder this command was not given
            size, mtime = _stat(found)
            hashed: list[str | None] = []

            def current(recipe: Recipe) -> bool:
                built = done.get((dataset_id, volume, recipe.name, recipe.version))
                if built is None or not Path(built[0]).is_file():
                    return False
                if found is None or size is None or built[1:3] == (size, mtime):
                    return True
                if not hashed:                 # size or mtime changed: the content decides (once per volume)
                    hashed.append(file_sha256(found))
                if hashed[0] is not None and hashed[0] == built[3]:
                    unchanged.append((size, mtime, dataset_id, volume, built[3]))
                    return True
                return False

            missing = tuple(r.name for r in recipes if not current(r))
            if missing:
                jobs.append(VolumeJob(dataset_id, volume, str(found) if found else None,
                                      ", ".join(str(r) for r in roots), missing, size, mtime))
    return jobs, list(dict.fromkeys(unchanged))


def output_path(out_root: Path, recipe: Recipe, volume_sha: str) -> Path:
    suffix = ".npz" if recipe.output == "npz" else ".npy"
    return out_root / recipe.name / recipe.version / volume_sha[:2] / f"{volume_sha}{suffix}"


def _write(path: Path, recipe: Recipe, arrays: dict[str, np.ndarray]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    if recipe.output == "npz":
        np.savez(tmp, **arrays)
    else:
        np.save(tmp, arrays["arr"])
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    os.replace(tmp, path)
    return digest


def process_volume(job: VolumeJob, out_root: str, decode_cache: str | None = None) -> list[dict]:
    """Decode once, build every missing recipe from memory. Never raises for a bad volume: a failure
    becomes one 'failed' row per recipe with the reason."""
    from adapters.models.preprocess import build, left_side
    from adapters.volumes.nifti import DecodeCache, VolumeError, decode

    base = job.source()
    out_root = os.path.abspath(out_root)         # stored paths never depend on the working directory
    recipes = [RECIPES[n] for n in job.recipes]

    def all_failed(reason: str) -> list[dict]:
        return [{**base, "recipe": r.name, "version": r.version, "status": "failed", "reason": reason}
                for r in recipes]

    if job.path is None:
        return all_failed(f"volume file not found (looked in {job.looked_in})")
    try:
        volume = DecodeCache(decode_cache).get(job.path) if decode_cache else decode(job.path)
    except VolumeError as exc:
        return all_failed(exc.reason)
    except Exception as exc:  # noqa: BLE001  (anything else about one file must not stop the rest)
        return all_failed(f"unreadable: {type(exc).__name__}: {exc}")
    rows = []
    for recipe in recipes:
        t0 = time.perf_counter()
        row = {**base, "recipe": recipe.name, "version": recipe.version, "volume_sha256": volume.sha256}
        try:
            arrays = build(recipe, volume)
            path = output_path(Path(out_root), recipe, volume.sha256)
            digest = _write(path, recipe, arrays)
            main = arrays.get("arr", arrays.get("slices"))
            axis, end = left_side(recipe, volume)
            row.update(status="ok", path=str(path), shape=list(main.shape), dtype=str(main.dtype), sha256=digest,
                       patient_left=f"axis {axis}, {end} index")
        except Exception as exc:  # noqa: BLE001
            row.update(status="failed", reason=f"{recipe.name} failed: {type(exc).__name__}: {exc}")
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
    return rows


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)                 # two processes of one thread beat one of two (decode is serial)


def worker_pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=workers, initializer=_one_thread)


MODEL_INPUT_SCHEMA = pa.schema([
    ("dataset_id", pa.string()), ("volume", pa.string()), ("recipe", pa.string()), ("version", pa.string()),
    ("status", pa.string()), ("reason", pa.string()), ("source_path", pa.string()), ("volume_sha256", pa.string()),
    ("path", pa.string()), ("shape", pa.list_(pa.int32())), ("dtype", pa.string()), ("sha256", pa.string()),
    ("patient_left", pa.string()), ("seconds", pa.float64()), ("source_size", pa.int64()),
    ("source_mtime_ns", pa.int64())])


def record(db, rows: Iterable[dict]) -> int:
    rows = list(rows)
    if not rows:
        return 0
    table = pa.Table.from_pylist([{k: r.get(k) for k in MODEL_INPUT_SCHEMA.names} for r in rows],
                                 schema=MODEL_INPUT_SCHEMA)
    with warehouse.writer(db) as con, warehouse.transaction(con):
        con.register("new_inputs", table)
        con.execute("INSERT OR REPLACE INTO model_inputs BY NAME SELECT * FROM new_inputs")
        con.unregister("new_inputs")
    return len(rows)


def ensure_inputs(db, dataset: str, recipe: str | Recipe, volumes: Iterable[str], out_root: str | os.PathLike, *,
                  volume_roots: Sequence[Path] = (), decode_cache: str | None = None,
                  max_cache: str | int | None = None, failures: dict[str, str] | None = None) -> dict[str, Path]:
    """{volume: input file} for one recipe, (re)building in this process only what is missing,
    evicted or stale: what the inference runner calls before feeding a batch to a model. Volumes
    that cannot be used are left out (their reason goes into `failures` when given, and is in
    `model_inputs`). The files returned count as just used; afterwards the cache is trimmed to
    `max_cache` (else $CTSVQA_MAX_CACHE), never removing them."""
    from tasks import input_cache

    recipe = RECIPES[recipe] if isinstance(recipe, str) else recipe
    wanted = list(dict.fromkeys(volumes))
    out_root = Path(os.path.abspath(out_root))
    query = ("SELECT volume, status, path, reason FROM model_inputs WHERE dataset_id = ? AND recipe = ? "
             "AND version = ? AND list_contains(?, volume)", [dataset, recipe.name, recipe.version, wanted])
    with warehouse.reader(db) as con:                # one connection when everything is on disk
        jobs, unchanged = _plan(con, dataset, [recipe], volume_roots, set(wanted))
        rows = con.execute(*query).fetchall()
    restat(db, unchanged)
    if jobs:
        record(db, [row for job in jobs for row in process_volume(job, str(out_root), decode_cache)])
        with warehouse.reader(db) as con:
            rows = con.execute(*query).fetchall()
    paths: dict[str, Path] = {}
    reasons = {v: f"not a volume of dataset {dataset!r}" for v in wanted}
    for volume, status, path, reason in rows:
        reasons.pop(volume, None)
        if status == "ok" and Path(path).is_file():
            paths[volume] = Path(path)
        else:
            reasons[volume] = reason or "input file missing after a rebuild"
    if failures is not None:
        failures.update(reasons)
    input_cache.touch(paths.values())
    input_cache.evict(out_root, input_cache.budget(max_cache), keep=paths.values())
    return {v: paths[v] for v in wanted if v in paths}


def summary(db, dataset: str | None, recipes: Sequence[Recipe], out_root: Path, max_bytes: int | None,
            volumes_processed: int) -> dict:
    """What `preprocess` reports: inputs built, volumes whose requested recipes failed (first reason
    each), and the cache's size against its budget."""
    from tasks import input_cache

    keys = [f"{r.name}@{r.version}" for r in recipes]
    with warehouse.reader(db) as con:
        failed = con.execute(
            "SELECT volume, recipe, reason FROM model_inputs WHERE status = 'failed' AND (? IS NULL OR dataset_id = ?) "
            "AND list_contains(?, recipe || '@' || version) ORDER BY volume, recipe", [dataset, dataset, keys]).fetchall()
        built = con.execute("SELECT count(*) FROM model_inputs WHERE status = 'ok' AND (? IS NULL OR dataset_id = ?)",
                            [dataset, dataset]).fetchone()[0]
        n_volumes = con.execute("SELECT count(*) FROM volumes WHERE ? IS NULL OR dataset_id = ?",
                                [dataset, dataset]).fetchone()[0]
    by_volume: dict[str, str] = {}
    for volume, _, reason in failed:
        by_volume.setdefault(volume, reason)
    return {"volumes_processed": volumes_processed, "inputs_ok": built, "failed_volumes": by_volume,
            "n_volumes": n_volumes, "out_root": str(out_root), "cache_bytes": input_cache.usage(out_root),
            "max_cache": max_bytes}


def missing_for(db, dataset: str, recipes: Sequence[str], volumes: Sequence[str] | None) -> bool:
    """Whether any of these recipes' inputs is not built, gone or stale (the preprocess flow's plan)."""
    return bool(plan(db, dataset, [RECIPES[r] for r in recipes], [Path(v) for v in volumes or []], output_root(db)))


def select_recipes(spec: str) -> list[Recipe]:
    """`all` or a comma-separated list of recipe names (an unknown one is a ValueError naming the known)."""
    return select(spec)


def recipe_keys(names: Iterable[str]) -> list[str]:
    """name@version of each recipe: what a cached input is keyed by."""
    return [RECIPES[n].key for n in names]
