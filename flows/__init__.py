"""Prefect flows and the `ctsvqa` command line."""

import os

# Measured on a 2-core box (../shared/research/platform.md §2.1): the ephemeral server needs 11-14 s
# to start cold, and its analytics heartbeat trips "database is locked" in SQLite.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
