"""Prefect's console log in a terminal: quiet by default (flows/console.py), as it is with --debug."""

from __future__ import annotations

import contextlib
import logging
import os
import sys


@contextlib.contextmanager
def quiet_console(debug: bool, verbose: bool):
    """Keep Prefect's run-failure tracebacks out of the terminal (see flows/console.py); `--debug`
    leaves Prefect's console as it is."""
    if debug:
        yield
        return
    env = {"PREFECT_LOGGING_HANDLERS_CONSOLE_CLASS": "flows.console.CliConsoleHandler",
           "CTSVQA_CONSOLE_LEVEL": "INFO" if verbose else "WARNING"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    added = []
    if "prefect.logging.handlers" in sys.modules:    # Prefect already configured its logging (in-process use)
        from prefect.logging.handlers import PrefectConsoleHandler

        from flows.console import QuietFailures

        for handler in logging.getLogger().handlers:
            if isinstance(handler, PrefectConsoleHandler) and not any(
                    isinstance(f, QuietFailures) for f in handler.filters):
                quiet = QuietFailures()
                handler.addFilter(quiet)
                added.append((handler, quiet))
    try:
        yield
    finally:
        for handler, quiet in added:
            handler.removeFilter(quiet)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
