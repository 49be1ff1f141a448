"""When a failed task is worth running again: a fault that can pass (the warehouse lock held by a
writer, a file system hiccup, a crash), not bad input that would fail the same way (an unknown run, a
bad value, another session holding the work)."""

from __future__ import annotations

from warehouse import WarehouseError, WarehouseLocked

DETERMINISTIC = (ValueError, LookupError, TypeError)


def transient_only(task, task_run, state) -> bool:
    """Prefect's retry_condition_fn: retry unless the failure is deterministic."""
    try:
        state.result()
    except WarehouseLocked:
        return True
    except (WarehouseError, *DETERMINISTIC):
        return False                 # LeaseHeld is a WarehouseError: another session has it; waiting is --wait's
    except Exception:  # noqa: BLE001
        return True
    return True
