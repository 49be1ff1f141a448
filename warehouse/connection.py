"""Short-lived DuckDB connections that wait politely for the file lock.

DuckDB lets one process hold a read-write file and locks every other process out, readers
included. So every command opens the warehouse only for as long as it writes or reads, retries
while another process holds the lock, and then fails with a message naming that process.
"""

from __future__ import annotations

import os
import re
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import duckdb
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_random_exponential

DEFAULT_DB = Path(__file__).resolve().parent / "ctsvqa.duckdb"
SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
MIGRATIONS_DIR = SQL_DIR / "migrations"
VIEWS_DIR = SQL_DIR / "views"
QUERIES_DIR = SQL_DIR / "queries"
DEFAULT_LOCK_TIMEOUT_S = 30.0
_LOCK_PID = re.compile(r"Conflicting lock is held in (?P<exe>.*?) \(PID (?P<pid>\d+)\)")


def query_text(name: str) -> str:
    """The text of sql/queries/<name>, the longer statements the tasks run."""
    return (QUERIES_DIR / name).read_text()


class WarehouseError(RuntimeError):
    pass


class WarehouseLocked(WarehouseError):
    pass


class WarehouseMissing(WarehouseError):
    pass


def resolve_db(db: str | os.PathLike | None = None) -> Path:
    """--db beats $CTSVQA_DB beats warehouse/ctsvqa.duckdb in the project."""
    if db:
        return Path(db)
    if os.environ.get("CTSVQA_DB"):
        return Path(os.environ["CTSVQA_DB"])
    return DEFAULT_DB


def lock_timeout() -> float:
    return float(os.environ.get("CTSVQA_LOCK_TIMEOUT", DEFAULT_LOCK_TIMEOUT_S))


def is_lock_error(exc: BaseException) -> bool:
    return isinstance(exc, duckdb.IOException) and "lock" in str(exc).lower()


def describe_lock_holder(exc: BaseException) -> str:
    match = _LOCK_PID.search(str(exc))
    if not match:
        return "another process"
    pid = match["pid"]
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        cmd = match["exe"]
    cmd = " ".join(cmd.split())                     # one line, even for `python -c` with a script
    return f"PID {pid} ({cmd[:200] + '…' if len(cmd) > 200 else cmd})"


def held_by_reader(exc: BaseException) -> bool:
    """DuckDB says a read-only open would still work exactly when the holder only reads."""
    return "read-only mode" in str(exc)


SNAPSHOT_HINT = ("`ctsvqa db snapshot OUT.duckdb`, then duckdb.connect('OUT.duckdb', read_only=True): a copy "
                 "that never blocks the pipeline nor is blocked by it")


def lock_message(path: str | os.PathLike, exc: BaseException, role: str, waited: float) -> str:
    """What to tell whoever could not open the warehouse: `role` is 'read', 'write' or 'snapshot'."""
    holder = describe_lock_holder(exc)
    wait = f"waited {waited:g}s (CTSVQA_LOCK_TIMEOUT)"
    if role == "write" and held_by_reader(exc):
        return (f"warehouse {path} is held open by a reader, {holder}, and DuckDB lets no one write while a "
                f"reader has it open; {wait}. Close that connection, or have it open a snapshot instead: {SNAPSHOT_HINT}.")
    if role == "write":
        return (f"warehouse {path} is being written by {holder}; {wait}. Wait for it to finish (or stop it), "
                f"then run this again.")
    if role == "snapshot":
        return (f"warehouse {path} is being written by {holder}, which keeps even readers out, so no snapshot "
                f"could be taken; {wait}. Run this again when it finishes (the pipeline's writes are short, "
                f"so a longer CTSVQA_LOCK_TIMEOUT usually finds a gap).")
    return (f"warehouse {path} is being written by {holder}, and DuckDB keeps even readers out while it writes; "
            f"{wait}. Wait for it to finish, or, for analyses, open a snapshot: {SNAPSHOT_HINT}.")


def retry_on_lock(fn, what: str | os.PathLike, timeout: float | None = None, role: str = "read"):
    """Call fn() until it stops failing on the DuckDB file lock, for at most `timeout` seconds;
    then fail naming the holder and what to do. `what` is the warehouse file."""
    timeout = lock_timeout() if timeout is None else timeout
    retrying = Retrying(
        retry=retry_if_exception(is_lock_error),
        stop=stop_after_delay(timeout),
        wait=wait_random_exponential(multiplier=0.02, max=0.5),
        reraise=True,
    )
    try:
        return retrying(fn)
    except duckdb.IOException as exc:
        if not is_lock_error(exc):
            raise
        raise WarehouseLocked(lock_message(what, exc, role, timeout)) from exc


class _ModeGate:
    """In one process, DuckDB refuses a read-only and a read-write connection to the same file at the
    same time ("a different configuration than existing connections"). Threads of one process (the
    lease heartbeat, judges flushing, the runner reading) take turns by mode here: connections of one
    mode share the file, the other mode waits until they close. A thread that already holds the other
    mode is not made to wait for itself (DuckDB refuses it as before)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.held: dict[str, list] = {}             # file -> [mode, count]
        self.mine = threading.local()

    @contextmanager
    def hold(self, key: str, mode: str, timeout: float) -> Iterator[None]:
        mine = self.mine.__dict__.setdefault("modes", {})
        with self.cond:
            if not any(m != mode and n for (k, m), n in mine.items() if k == key):
                self.cond.wait_for(lambda: key not in self.held or self.held[key][0] == mode, timeout)
            entry = self.held.setdefault(key, [mode, 0])
            entry[1] += 1
        mine[(key, mode)] = mine.get((key, mode), 0) + 1
        try:
            yield
        finally:
            mine[(key, mode)] -= 1
            with self.cond:
                entry[1] -= 1
                if entry[1] == 0 and self.held.get(key) is entry:
                    del self.held[key]
                    self.cond.notify_all()


mode_gate = _ModeGate()


@contextmanager
def connect(db: str | os.PathLike | None = None, *, read_only: bool = False,
            timeout: float | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    path = resolve_db(db)
    if read_only and not path.exists():
        raise WarehouseMissing(f"no warehouse at {path}: load data first, e.g. `ctsvqa import-upstream PATH --db {path}`")
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    with mode_gate.hold(os.path.abspath(path), "read" if read_only else "write",
                    lock_timeout() if timeout is None else timeout):
        con = retry_on_lock(lambda: duckdb.connect(str(path), read_only=read_only), path, timeout,
                            role="read" if read_only else "write")
        try:
            yield con
        finally:
            con.close()


def sql_literal(value: str | os.PathLike) -> str:
    """Quote a path or string for statements (ATTACH, COPY) that take no bound parameters."""
    return "'" + str(value).replace("'", "''") + "'"


_open_transactions: set[int] = set()


def in_transaction(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether `con` is inside a transaction() (DuckDB has no way to ask without aborting one)."""
    return id(con) in _open_transactions


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """All or nothing: on any exception the transaction rolls back and the error propagates."""
    con.execute("BEGIN TRANSACTION")
    _open_transactions.add(id(con))
    try:
        yield con
    except BaseException:
        _open_transactions.discard(id(con))
        con.execute("ROLLBACK")
        raise
    _open_transactions.discard(id(con))
    con.execute("COMMIT")
