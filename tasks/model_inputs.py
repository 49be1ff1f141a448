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
from adapters.models.recipes import RECIPES, Recipe

VOLUME_SUBDIRS = ("volumes", "dataset/data_volumes/dataset/valid_fixed", "valid_fixed", ".")


@dataclass
class VolumeJob:
    dataset_id: str
    volume: str
    path: str | None                 # None: not found on disk
    looked_in: str
    recipes: tuple[str, ...]         # recipe names still missing for this volume


def find_volume(volume: str, roots: Sequence[Path]) -> Path | None:
    for root in roots:
        for sub in VOLUME_SUBDIRS:
            for candidate in (root / sub / ct_rate_folder(volume) / volume, root / sub / volume):
                if candidate.is_file():
                    return candidate
    return None


def plan(db, dataset: str | None, recipes: Sequence[Recipe], volume_roots: Sequence[Path],
         out_root: Path, only_volumes: Collection[str] | None = None) -> list[VolumeJob]:
    """Volumes of the dataset(s) with at least one requested recipe not yet built (or whose file is gone);
    with `only_volumes`, only those (the runner builds just what its run lacks)."""
    only = None if only_volumes is None else set(only_volumes)
    with warehouse.reader(db) as con:
        datasets = con.execute("SELECT dataset_id, source_path FROM datasets WHERE ? IS NULL OR dataset_id = ?",
                               [dataset, dataset]).fetchall()
        if dataset is not None and not datasets:
            raise ValueError(f"unknown dataset {dataset!r}")
        done = {(d, v, r, ver): p for d, v, r, ver, p in con.execute(
            "SELECT dataset_id, volume, recipe, version, path FROM model_inputs WHERE status = 'ok'").fetchall()}
        jobs = []
        for dataset_id, source_path in datasets:
            roots = [Path(r) for r in volume_roots] + ([Path(source_path)] if source_path else [])
            for (volume,) in con.execute("SELECT volume FROM volumes WHERE dataset_id = ? ORDER BY position",
                                         [dataset_id]).fetchall():
                if only is not None and volume not in only:
                    continue
                missing = tuple(r.name for r in recipes
                                if not (p := done.get((dataset_id, volume, r.name, r.version))) or not Path(p).is_file())
                if missing:
                    found = find_volume(volume, roots)
                    jobs.append(VolumeJob(dataset_id, volume, str(found) if found else None,
                                          ", ".join(str(r) for r in roots), missing))
    return jobs


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
    from tasks.volumes import DecodeCache, VolumeError, decode

    base = {"dataset_id": job.dataset_id, "volume": job.volume, "source_path": job.path}
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
    ("patient_left", pa.string()), ("seconds", pa.float64())])


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
