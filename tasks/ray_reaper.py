"""Stops the processes of a Ray started for one run when the run's process is gone, even after
`kill -9` (ray.shutdown() never runs then, and Ray's dashboard and runtime-env agents outlive their
raylet). Run as `python -m tasks.ray_reaper MARK` with stdin the read end of a pipe whose write end
only the run's process holds: EOF means that process ended. Every process whose environment carries
MARK (Ray's processes inherit it from the process that started them) is then sent SIGTERM, and
SIGKILL if still there after a few seconds. Imports nothing heavy: it starts in a blink."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

ENV = "CTSVQA_RAY_RUN"


def marked(mark: str) -> list[int]:
    needle = f"{ENV}={mark}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if needle in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    if stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                        found.append(int(entry))
            except OSError:
                pass
    return found


def reap(mark: str, grace: float = 5.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in marked(mark):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while marked(mark) and time.monotonic() < deadline:
            time.sleep(0.2)


def main(mark: str) -> None:
    while os.read(0, 1):
        pass
    reap(mark)


if __name__ == "__main__":
    main(sys.argv[1])
