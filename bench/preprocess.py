"""Benchmark: decoding and preprocessing full-size (CT-RATE sized) phantom volumes.

    .venv/bin/python bench/preprocess.py [--volumes 3] [--repeats 3]

  (a) python-isal decode alone (file -> int16 HU array with its affine)
  (b) the M3D recipe end to end: decode + build + np.save
  (c) all eight models' own recipes from one decode (what `ctsvqa preprocess` does per volume)
  (d) the upstream style: for each of the eight recipes, nibabel get_fdata() (float64) and the
      plain full-volume path, decoding again for every recipe
Goals (issue 4), 1 core: (b)/(a) <= 1.6 and (d)/(c) >= 4. Medians over volumes x repeats.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from adapters.models.preprocess import build  # noqa: E402
from adapters.models.recipes import RECIPES, select  # noqa: E402
from tasks.volumes import Volume, decode  # noqa: E402


def phantom_volumes(folder: Path, n: int) -> list[Path]:
    from adapters.datasets.phantom import generate

    cases = generate(folder, n, seed=11, size="full")
    return [c.path for c in cases]


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--volumes", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)                    # per-core figures: the flow runs one thread per worker
    folder = Path(tempfile.mkdtemp(prefix="ctsvqa-prep-bench-"))
    t0 = time.perf_counter()
    paths = phantom_volumes(folder / "phantoms", args.volumes)
    print(f"{len(paths)} full-size phantom volume(s) generated in {time.perf_counter() - t0:.1f} s")
    own = select("own")
    out = folder / "out"
    out.mkdir()

    def a(path):
        decode(path)

    def b(path):
        volume = decode(path)
        np.save(out / "m3d.npy", build(RECIPES["m3d"], volume)["arr"])

    def c(path):
        volume = decode(path)
        for recipe in own:
            arrays = build(recipe, volume)
            if "arr" in arrays:
                np.save(out / f"{recipe.name}.npy", arrays["arr"])
            else:
                np.savez(out / f"{recipe.name}.npz", **arrays)

    def d(path):
        for recipe in own:
            img = nib.load(str(path))
            data = img.get_fdata()                 # float64, slope/intercept applied
            volume = Volume(Path(path), "", data, img.affine, tuple(float(z) for z in img.header.get_zooms()[:3]))
            arrays = build(recipe, volume, fast=False)
            if "arr" in arrays:
                np.save(out / f"{recipe.name}.npy", arrays["arr"])
            else:
                np.savez(out / f"{recipe.name}.npz", **arrays)

    results = {}
    for name, fn, repeats in (("a", a, args.repeats), ("b", b, args.repeats), ("c", c, args.repeats),
                              ("d", d, 1)):
        times = [t for p in paths for t in timed(lambda: fn(p), repeats)]
        results[name] = statistics.median(times)
    shapes = {tuple(decode(p).data.shape) for p in paths}
    sizes = [os.path.getsize(p) / 1e6 for p in paths]
    print(f"volumes: shapes {sorted(shapes)}, {min(sizes):.0f}-{max(sizes):.0f} MB .nii.gz; 1 torch thread\n")
    labels = {"a": "(a) isal decode alone", "b": "(b) M3D recipe end to end",
              "c": "(c) 8 own recipes, decode once", "d": "(d) upstream style: get_fdata f64 per recipe"}
    print(f"{'step':<48}{'median s/volume':>16}")
    for key, label in labels.items():
        print(f"{label:<48}{results[key]:>16.3f}")
    ba, dc = results["b"] / results["a"], results["d"] / results["c"]
    print(f"\n(b)/(a) = {ba:.2f}  (goal <= 1.6: {'met' if ba <= 1.6 else 'MISSED'})")
    print(f"(d)/(c) = {dc:.2f}  (goal >= 4: {'met' if dc >= 4 else 'MISSED'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
