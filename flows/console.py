"""What `ctsvqa` shows in the terminal of Prefect's logging.

A task or flow that raises makes Prefect log the traceback two or three times (task run, flow run,
final state) before the exception reaches the command line, which then says the same in one line.
The command line therefore swaps Prefect's console handler (through Prefect's documented
`PREFECT_LOGGING_HANDLERS_CONSOLE_CLASS` override, so nothing is imported before it is needed) for
one that keeps run failures and tracebacks out of the terminal; the API handler is untouched, so
every traceback stays in the flow run's log in the Prefect UI/API. Only warnings and errors reach
the terminal unless the user asks for `--verbose` (Prefect's INFO lines) or `--debug` (everything).
"""

from __future__ import annotations

import logging
import os

from prefect.logging.handlers import PrefectConsoleHandler

RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")
LEVEL_ENV = "CTSVQA_CONSOLE_LEVEL"


class QuietFailures(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.getLevelNamesMapping().get(os.environ.get(LEVEL_ENV, ""), logging.WARNING):
            return False
        if record.name in RUN_LOGGERS and (record.exc_info or record.levelno >= logging.ERROR):
            return False                 # the command line reports the failure itself, once
        if record.exc_info and record.name.startswith("prefect"):
            record.exc_info, record.exc_text = None, None    # e.g. a server shutting down: its line, no traceback
        return True


class CliConsoleHandler(PrefectConsoleHandler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.addFilter(QuietFailures())
