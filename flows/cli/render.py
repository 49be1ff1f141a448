"""What the command line prints besides its sentences: JSON for machines, one line per error, and
the progress bars of a run."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


def print_json(obj) -> None:
    """Machine-readable output: NaN and infinities become null (JSON has neither), paths and times text."""
    import json
    import math
    from dataclasses import asdict, is_dataclass

    def clean(x):
        if is_dataclass(x) and not isinstance(x, type):
            return clean(asdict(x))
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, float) and not math.isfinite(x):
            return None
        return x

    print(json.dumps(clean(obj), indent=2, default=str))


def one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}" + (f" (-> {exc.filename2})" if exc.filename2 else "")
    else:
        text = str(exc)
    return " ".join(text.split()) or type(exc).__name__


@contextmanager
def progress_bars() -> Iterator:
    """A rich Progress on stderr (nothing when stderr is not a terminal), its columns the same for
    every command."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    with Progress(TextColumn("{task.description:<20}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, disable=not console.is_terminal) as progress:
        yield progress
