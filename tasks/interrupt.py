"""Ctrl-C as data: the CLI turns the first SIGINT into STOP (start no new work: no new volume, stage
or API call; store what finished) and the second into HURRY (judging: stop waiting for calls in
flight) or an immediate exit. Signals arrive in the main thread; the work checks these events, so
nothing is cut in the middle of a write (every store is one transaction)."""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

STOP = threading.Event()     # the first Ctrl-C
HURRY = threading.Event()    # the second


class Interrupted(Exception):
    """Work stopped on Ctrl-C with what finished stored; the CLI prints this one line and exits 130."""


@contextmanager
def ctrl_c(first: str, second: str | None = None) -> Iterator[None]:
    """While inside: the first Ctrl-C sets STOP and prints `first`; the second sets HURRY and prints
    `second` when given, else raises KeyboardInterrupt at once (the CLI exits 130). Not the main
    thread (in-process use by tests or a notebook): nothing is installed."""
    STOP.clear()
    HURRY.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigint(signum, frame) -> None:
        if not STOP.is_set():
            STOP.set()
            print(f"ctsvqa: Ctrl-C: {first}", file=sys.stderr, flush=True)
            return
        HURRY.set()
        if second is None:
            raise KeyboardInterrupt
        print(f"ctsvqa: Ctrl-C again: {second}", file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
