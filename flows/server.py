"""A resident local Prefect server, one per warehouse folder, shared by every command.

Prefect's temporary ("ephemeral") server costs 7-14 s to start on 2 cores, in every command. A
`prefect server start` kept running beside the warehouse costs that once; commands then only
connect to it. Its files live in `<warehouse dir>/.prefect-server/`: `server.pid`, `server.port`,
`server.log`, and `home/` (its own PREFECT_HOME, so its SQLite database and settings do not depend
on ~/.prefect).

`CTSVQA_PREFECT` picks the mode of the commands that run flows:
  resident (default)  use our server, starting it if none is up;
  ephemeral           Prefect's own temporary server per command (a watchdog stops it even when
                      the command is killed with SIGKILL).
A `PREFECT_API_URL` set in the environment always wins.

No Prefect import at module level: this module must run before Prefect reads its settings.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

STATE_DIRNAME = ".prefect-server"
START_TIMEOUT_S = 180.0
# The server's own PREFECT_* settings; the analytics heartbeat trips "database is locked" in SQLite
# (../shared/research/platform.md section 2.1).
SERVER_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_LOGGING_LEVEL": "WARNING"}


class ServerError(RuntimeError):
    pass


@dataclass
class ServerState:
    dir: Path
    pid: int | None
    port: int | None
    running: bool          # the PID is a live process of ours
    healthy: bool          # and its API answers /api/health
    stale: bool = False    # a PID file was left by a process that is gone (now removed)

    @property
    def url(self) -> str | None:
        return f"http://127.0.0.1:{self.port}/api" if self.port else None

    @property
    def ui(self) -> str | None:
        return f"http://127.0.0.1:{self.port}" if self.port else None

    @property
    def log(self) -> Path:
        return self.dir / "server.log"


def state_dir(db: str | os.PathLike | None = None) -> Path:
    from warehouse.connection import resolve_db

    return resolve_db(db).resolve().parent / STATE_DIRNAME


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _is_our_server(pid: int) -> bool:
    """Alive (not a zombie) and still a Prefect server: a recycled PID is not ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X") and b"prefect" in cmdline and b"server" in cmdline


def _healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as reply:
            return reply.status == 200
    except OSError:
        return False


def _clear(d: Path) -> None:
    for name in ("server.pid", "server.port"):
        (d / name).unlink(missing_ok=True)


def status(db: str | os.PathLike | None = None) -> ServerState:
    d = state_dir(db)
    pid, port = _read_int(d / "server.pid"), _read_int(d / "server.port")
    running = pid is not None and _is_our_server(pid)
    state = ServerState(d, pid, port, running, running and port is not None and _healthy(ServerState(
        d, pid, port, True, True).url))
    if pid is not None and not running:
        _clear(d)
        state.stale, state.pid, state.port = True, None, None
    return state


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _StartLock:
    """Two commands starting at once must not start two servers for one folder."""

    def __init__(self, d: Path):
        d.mkdir(parents=True, exist_ok=True)
        self.file = (d / "start.lock").open("w")

    def __enter__(self):
        fcntl.flock(self.file, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


def start(db: str | os.PathLike | None = None, timeout: float = START_TIMEOUT_S) -> tuple[ServerState, bool]:
    """Start the server of this warehouse folder unless it is up; wait until its API answers.
    Returns the state and whether this call started it."""
    d = state_dir(db)
    with _StartLock(d):
        state = status(db)
        if state.running:
            return _wait_healthy(state, None, timeout), False
        port = _free_port()
        home = d / "home"
        home.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")}
        # The UI asks /ui-settings where its API is; left alone, the answer is Prefect's default port 4200,
        # where nothing of ours listens, and the UI's pages stay empty.
        env.update(SERVER_ENV, PREFECT_HOME=str(home), PREFECT_SERVER_API_HOST="127.0.0.1",
                   PREFECT_SERVER_API_PORT=str(port), PREFECT_UI_API_URL=f"http://127.0.0.1:{port}/api")
        with (d / "server.log").open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=d, env=env,
                start_new_session=True)        # its own process group: outlives the command, stopped as a group
        (d / "server.port").write_text(f"{port}\n")
        (d / "server.pid").write_text(f"{proc.pid}\n")
        state = ServerState(d, proc.pid, port, True, False)
        return _wait_healthy(state, proc, timeout), True


def _wait_healthy(state: ServerState, proc: subprocess.Popen | None, timeout: float) -> ServerState:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _healthy(state.url):
            state.healthy = True
            return state
        if (proc.poll() is not None) if proc else not _is_our_server(state.pid):
            _clear(state.dir)
            raise ServerError(f"the Prefect server exited while starting; see {state.log}: " + _tail(state.log))
        time.sleep(0.25)
    raise ServerError(f"the Prefect server (PID {state.pid}) did not answer on {state.url} within {timeout:.0f} s; "
                      f"see {state.log}")


def _tail(path: Path, n: int = 3) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])


def stop(db: str | os.PathLike | None = None, timeout: float = 20.0) -> ServerState:
    """SIGTERM the server's process group, SIGKILL it after `timeout`; returns the state before."""
    state = status(db)
    if state.running:
        _kill_group(state.pid, timeout)
    _clear(state.dir)
    return state


def _kill_group(pid: int, timeout: float) -> None:
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:                        # reap it if it is our child (a test that started it in-process)
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            if not _is_our_server(pid):
                return
            time.sleep(0.1)


def _prefect_configured() -> bool:
    if os.environ.get("PREFECT_API_URL"):
        return True
    if "prefect" in sys.modules:        # already imported (in-process callers, tests): settings are fixed
        from prefect.settings import get_current_settings

        return bool(get_current_settings().api.url)
    return False


def ensure_server(db: str | os.PathLike | None = None) -> str | None:
    """Called by each command that runs a flow, before Prefect is imported: point Prefect at our
    resident server (starting it, and saying so in one line on stderr, if none is up). Returns the
    API URL used, or None when Prefect was configured elsewhere or the mode is ephemeral."""
    mode = os.environ.get("CTSVQA_PREFECT", "resident").strip().lower()
    if mode not in ("resident", "ephemeral"):
        raise ValueError(f"CTSVQA_PREFECT={mode!r}: use 'resident' (the default) or 'ephemeral'")
    if _prefect_configured():
        return None
    if mode == "ephemeral":
        _start_reaper()
        return None
    state, started = start(db)
    if started:
        print(f"ctsvqa: started a Prefect server for {state.dir.parent} — UI at {state.ui} "
              f"(stop it with: ctsvqa server stop)", file=sys.stderr)
    os.environ["PREFECT_API_URL"] = state.url
    os.environ.setdefault("PREFECT_HOME", str(state.dir / "home"))
    return state.url


# --- ephemeral mode: Prefect's temporary server must die with the command -----------------------
# Prefect starts it as a plain child (uvicorn ... prefect.server.api.server:create_app) and stops it
# at interpreter exit; a SIGKILLed command never gets there and the child lives on. A small watchdog
# process holds the read end of a pipe whose write end only this process has: EOF means the command
# is gone, and the watchdog stops the server children it saw.

_reaper: subprocess.Popen | None = None
_SERVER_MARK = b"prefect.server.api.server:create_app"


def _start_reaper() -> None:
    global _reaper
    if _reaper is not None:
        return
    read_end, write_end = os.pipe()
    _reaper = subprocess.Popen([sys.executable, "-c", "import sys; from flows.server import _reap; "
                                "_reap(int(sys.argv[1]))", str(os.getpid())],
                               stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               cwd=Path(__file__).resolve().parent.parent, start_new_session=True)
    os.close(read_end)
    _reaper._ctsvqa_pipe = write_end    # kept open (never inherited: os.pipe fds are not inheritable)


def _children(parent: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                out.append(int(entry))
    return out


def _is_ephemeral_server(pid: int) -> bool:
    try:
        return _SERVER_MARK in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _reap(parent: int) -> None:
    seen: set[int] = set()
    while True:
        ready, _, _ = select.select([0], [], [], 0.5)
        seen.update(p for p in _children(parent) if _is_ephemeral_server(p))
        if ready and not os.read(0, 1):
            break
    _signal_servers(seen, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_is_ephemeral_server(p) for p in seen):
        time.sleep(0.2)
    _signal_servers(seen, signal.SIGKILL)


def _signal_servers(pids: set[int], sig: int) -> None:
    """Send `sig` to those of `pids` that are still ephemeral Prefect servers (a PID may be reused)."""
    for pid in pids:
        if _is_ephemeral_server(pid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def start_temporary_server_ignoring_ctrl_c() -> None:
    """When no server is configured, start Prefect's temporary one now, with SIGINT blocked. A
    terminal's Ctrl-C goes to the whole process group, that server included: it would die and leave
    the flow unable to finish storing its state. Started with SIGINT blocked (a mask is inherited
    across exec), it ignores Ctrl-C; Prefect still stops it when this process exits."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return
    from prefect.server.api.server import SubprocessASGIServer   # the one Prefect's client reuses

    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        SubprocessASGIServer().start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
