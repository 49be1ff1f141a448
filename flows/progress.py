"""A terminal view of a running benchmark: one bar per stage as it starts (volumes preprocessed,
questions answered per model, judgments per judge), with rate and time left; nothing when the output
is not a terminal (the same counts go to the Prefect log in steps of a tenth)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text


class RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.1f}/s", style="progress.data.speed")


@contextmanager
def stage_bars(console: Console | None = None) -> Iterator[Progress]:
    import flows.infer as infer_flow
    import flows.judge as judge_flow
    import flows.preprocess as preprocess_flow

    console = console or Console(stderr=True)
    progress = Progress(TextColumn("{task.description:<34}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
                        TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(), console=console,
                        disable=not console.is_terminal)
    bars: dict[str, int] = {}

    def update(label: str, done: int, total: int) -> None:
        if label not in bars:
            bars[label] = progress.add_task(label, total=total)
        progress.update(bars[label], completed=done, total=total)

    hooks = (infer_flow, judge_flow, preprocess_flow)
    saved = [m.progress_hook for m in hooks]
    infer_flow.progress_hook = lambda run, done, total: update(f"infer {run} (questions)", done, total)
    judge_flow.progress_hook = lambda judge, done, total: update(f"judge {judge} (judgments)", done, total)
    preprocess_flow.progress_hook = lambda done, total: update("preprocess (volumes)", done, total)
    try:
        with progress:
            yield progress
    finally:
        for m, hook in zip(hooks, saved):
            m.progress_hook = hook
