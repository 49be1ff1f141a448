"""What the benchmarks share: where the repository and the upstream data are, and median timing."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_UPSTREAM = Path(os.environ.get("CTSVQA_UPSTREAM", REPO.parent / "shared" / "upstream" / "CT-SpatialVQA"))


def median_s(fn, repeats: int) -> tuple[float, object]:
    """Median wall seconds of `repeats` calls, and the last call's result."""
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result
