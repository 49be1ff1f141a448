"""One writer per piece of work: leases in the warehouse (see sql/migrations/010_leases.sql).

DuckDB's file lock only keeps two processes from writing at the same instant; the pipeline opens the
file for short writes, so two sessions of the same run would interleave and both answer (or pay for)
every question. A lease names the process that holds a resource (PID, host, its command) and is
refreshed by a heartbeat thread; a second session is told who holds it, or waits (`wait=True`). A
holder killed with -9 leaves its row behind: its PID is gone (same host) or its heartbeat stops
(another host), and the next session takes the lease over. Leases are re-entrant within a process:
the CLI takes a run's lease before Prefect starts, and the task inside the flow takes it again."""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator

import warehouse
from warehouse.connection import WarehouseError, transaction

log = logging.getLogger("ctsvqa.leases")
HEARTBEAT_S = float(os.environ.get("CTSVQA_LEASE_HEARTBEAT", 10.0))
EXPIRE_S = float(os.environ.get("CTSVQA_LEASE_EXPIRE", 120.0))      # silent for this long: the holder is gone
WAIT_POLL_S = 1.0
HOLDER = uuid.uuid4().hex                                          # this process
HOST = socket.gethostname()

_held: dict[tuple[str, str], int] = {}                             # (db, resource) -> nesting depth
_held_lock = threading.Lock()
_beat: threading.Thread | None = None


class LeaseHeld(WarehouseError):
    """Another live session holds the resource; the message says who and what to do."""


@dataclass
class Holder:
    resource: str
    pid: int
    host: str
    started: str | None
    command: str | None
    taken_at: object
    heartbeat_at: object
    age_s: float

    def describe(self) -> str:
        cmd = " ".join((self.command or "").split())
        cmd = cmd[:120] + "…" if len(cmd) > 120 else cmd
        return f"PID {self.pid} on {self.host}" + (f" ({cmd})" if cmd else "") + f" since {self.taken_at:%Y-%m-%d %H:%M:%S}"


def _proc_stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _started(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or None."""
    fields = _proc_stat(pid)
    return fields[19] if fields else None


def _alive(h: Holder) -> bool:
    if h.age_s > EXPIRE_S:
        return False
    if h.host != HOST:
        return True                                   # another host: only its heartbeat tells
    try:
        os.kill(h.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass                                          # alive, another user's
    fields = _proc_stat(h.pid)
    if fields and fields[0] in ("Z", "X"):            # killed, not yet reaped
        return False
    return h.started is None or fields is None or fields[19] == h.started


def _command() -> str:
    return " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))


def holders(con, resources: list[str]) -> list[Holder]:
    rows = con.execute(
        "SELECT resource, pid, host, started, command, taken_at, heartbeat_at, "
        "epoch(current_timestamp::TIMESTAMP) - epoch(heartbeat_at) FROM leases "
        "WHERE list_contains(?, resource) AND holder <> ?", [resources, HOLDER]).fetchall()
    return [Holder(*r) for r in rows]


def _try_take(db, resources: list[str]) -> Holder | None:
    """Take every resource in one transaction, or none: the live holder of one of them, else None."""
    with warehouse.writer(db) as con, transaction(con):
        others = holders(con, resources)
        live = [h for h in others if _alive(h)]
        if live:
            return live[0]
        for h in others:
            log.warning("taking over %s from %s: that session is gone", h.resource, h.describe())
        con.execute("DELETE FROM leases WHERE list_contains(?, resource)", [resources])
        con.executemany(
            "INSERT INTO leases (resource, holder, pid, host, started, command) VALUES (?, ?, ?, ?, ?, ?)",
            [(r, HOLDER, os.getpid(), HOST, _started(os.getpid()), _command()) for r in resources])
    return None


def acquire(db, resources: Iterable[str], what: str, wait: bool = False, on_wait=None) -> None:
    """Hold `resources` (re-entrant). Held by another live session: LeaseHeld naming it, or with
    `wait` poll until it is free (`on_wait(holder)` is told once who is waited for)."""
    key_db = str(warehouse.resolve_db(db).resolve())
    resources = list(dict.fromkeys(resources))
    with _held_lock:
        new = [r for r in resources if (key_db, r) not in _held]
    told = False
    while new:
        holder = _try_take(db, new)
        if holder is None:
            break
        if not wait:
            raise LeaseHeld(f"{what} is already being worked on by {holder.describe()}; wait for it to finish (or "
                            f"stop it), or run this with --wait to start when it is done")
        if not told and on_wait:
            on_wait(holder)
            told = True
        time.sleep(WAIT_POLL_S)
    with _held_lock:
        for r in resources:
            _held[(key_db, r)] = _held.get((key_db, r), 0) + 1
    _start_heartbeat()


def release(db, resources: Iterable[str]) -> None:
    key_db = str(warehouse.resolve_db(db).resolve())
    done = []
    with _held_lock:
        for r in dict.fromkeys(resources):
            n = _held.get((key_db, r), 0) - 1
            if n <= 0:
                _held.pop((key_db, r), None)
                done.append(r)
            else:
                _held[(key_db, r)] = n
    if done:
        try:
            with warehouse.writer(db) as con:
                con.execute("DELETE FROM leases WHERE list_contains(?, resource) AND holder = ?", [done, HOLDER])
        except Exception:  # noqa: BLE001  (an unreleased lease expires; it must not mask the real outcome)
            log.warning("could not release %s; it expires when this process is gone", ", ".join(done), exc_info=True)


@contextmanager
def held(db, resources: Iterable[str], what: str, wait: bool = False, on_wait=None) -> Iterator[None]:
    resources = list(resources)
    acquire(db, resources, what, wait, on_wait)
    try:
        yield
    finally:
        release(db, resources)


def _start_heartbeat() -> None:
    global _beat
    with _held_lock:
        if _beat is not None and _beat.is_alive():
            return
        _beat = threading.Thread(target=_heartbeat, name="ctsvqa-lease-heartbeat", daemon=True)
        _beat.start()


def _heartbeat() -> None:
    while True:
        time.sleep(HEARTBEAT_S)
        with _held_lock:
            by_db: dict[str, list[str]] = {}
            for db, r in _held:
                by_db.setdefault(db, []).append(r)
        if not by_db:
            return
        for db, resources in by_db.items():
            try:
                with warehouse.writer(db) as con:
                    con.execute("UPDATE leases SET heartbeat_at = current_timestamp "
                                "WHERE list_contains(?, resource) AND holder = ?", [resources, HOLDER])
            except Exception:  # noqa: BLE001  (a missed beat is retried; EXPIRE_S allows many)
                log.debug("lease heartbeat failed", exc_info=True)
