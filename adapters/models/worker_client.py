"""The host side of the worker protocol (adapters/models/worker.py): a ModelAdapter whose work happens in a
worker process running the real adapter in another interpreter (a family environment, or a user's own).

The runner treats it like any adapter. `identity()` and `recipe` come from the adapter class imported here
(its module imports only numpy and the standard library at module level), plus the environment's
fingerprint; `load()` starts the worker; `answer()` sends one volume's input reference and questions and
waits at most `worker_timeout` seconds (option; loading: `worker_load_timeout`). When the worker crashes or
hangs, it is killed (its whole process group), the call's questions come back as error answers naming the
exit code or the timeout and the last lines of the worker's stderr, later calls for the same volume fail
the same way without another try, and the next volume starts a new worker. The worker's stderr goes to a
log file (`$CTSVQA_WORKER_LOGS`, default ~/.cache/ctsvqa/logs/) and a ring buffer for those messages."""

from __future__ import annotations

import atexit
import collections
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Sequence

import adapters
from adapters.models.base import AdapterError, AdapterSettings, Answer, DatasetQuestion, ModelAdapter, ModelInput, Question

DEFAULT_LOAD_TIMEOUT = 1800.0
WORKER_OPTIONS = ("worker_timeout", "worker_load_timeout")      # how to run, not what to answer: no identity
TAIL_LINES = 8
_LIVE: set[subprocess.Popen] = set()


class WorkerFailure(RuntimeError):
    """The worker process crashed, hung or broke the protocol; the message is what the stored reason says."""


def _kill_all() -> None:
    for proc in list(_LIVE):
        _kill(proc)


atexit.register(_kill_all)


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)          # the worker leads its own group: its children go too
    except (ProcessLookupError, PermissionError, OSError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    _LIVE.discard(proc)


def import_roots(cls: type) -> list[str]:
    """Where the worker imports our `adapters` package and the adapter's module from: the checkout's root;
    the adapter module's own import root when it lies elsewhere (not a site-packages: that would bring this
    environment's packages into the worker's)."""
    roots = []
    ours = Path(adapters.__file__).resolve().parent.parent
    if "site-packages" in ours.parts or "dist-packages" in ours.parts:
        link_dir = Path(tempfile.mkdtemp(prefix="ctsvqa-worker-path-"))   # only `adapters`, not its neighbours
        (link_dir / "adapters").symlink_to(ours / "adapters")
        ours = link_dir
    roots.append(str(ours))
    module = sys.modules.get(cls.__module__)
    file = getattr(module, "__file__", None)
    if file:
        depth = cls.__module__.count(".") + (1 if Path(file).stem == "__init__" else 0)
        root = Path(file).resolve().parents[depth]
        if str(root) not in roots and not {"site-packages", "dist-packages"} & set(root.parts):
            roots.append(str(root))
    return roots


class WorkerAdapter(ModelAdapter):
    """Subclassed per adapter class by `worker_adapter_class`, so name, version, recipe, description and
    the module recorded with the model are the real adapter's."""

    inner_class: type[ModelAdapter]

    def __init__(self, settings: AdapterSettings | None = None, python: str | None = None,
                 environment: dict[str, Any] | None = None, label: str = "") -> None:
        settings = settings or AdapterSettings()
        opts = dict(settings.options)
        try:
            given = opts.pop("worker_timeout", None)
            self.timeout = float(given) if given is not None else None      # None: the model's own default
            self.load_timeout = float(opts.pop("worker_load_timeout", DEFAULT_LOAD_TIMEOUT))
        except (TypeError, ValueError):
            self.timeout = self.load_timeout = -1.0
        if not ((self.timeout is None or self.timeout > 0) and self.load_timeout > 0):
            raise AdapterError("--option worker_timeout / worker_load_timeout must be a positive number of seconds, "
                               f"not {settings.options.get('worker_timeout', settings.options.get('worker_load_timeout'))!r}")
        super().__init__(replace(settings, options=opts))
        self.inner = self.inner_class(self.settings)
        self.python = python or sys.executable
        self.environment_identity = environment or {}
        self.label = label or self.python
        self.proc: subprocess.Popen | None = None
        self.replies: queue.Queue = queue.Queue()
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=400)
        self.log_path: Path | None = None
        self.worker_provenance: dict[str, Any] = {}
        self.failed_volume: tuple[str | None, str] | None = None
        self.dead: str | None = None          # a restart failed: every later call fails with this reason
        self.dataset: list[DatasetQuestion] | None = None
        self.next_id = 0
        self.starts = 0
        self.busy = False

    # -- what the runner asks before loading: the real adapter's answers ---------------------------
    @property
    def recipe(self) -> str | None:
        return self.inner.recipe

    def generation(self) -> dict[str, Any]:
        return self.inner.generation()

    def checkpoint_identity(self) -> dict[str, Any] | None:
        return self.inner.checkpoint_identity()

    def code_identity(self) -> dict[str, Any] | None:
        return self.inner.code_identity()

    def compute_identity(self) -> dict[str, Any]:
        return {**self.inner.identity(), "environment": self.environment_identity}

    @classmethod
    def requirements(cls, settings: AdapterSettings) -> list:
        return cls.inner_class.requirements(settings)

    # -- the process -------------------------------------------------------------------------------
    def _log_file(self) -> Path:
        logs = Path(os.environ.get("CTSVQA_WORKER_LOGS") or Path.home() / ".cache" / "ctsvqa" / "logs").expanduser()
        logs.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        return logs / f"worker-{self.name}-{stamp}-{os.getpid()}.log"

    def _spawn(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH", "VIRTUAL_ENV",
                                                                   "PYTHONSTARTUP")}
        roots = import_roots(self.inner_class)
        env.update(PYTHONPATH=os.pathsep.join(roots), PYTHONUNBUFFERED="1", PYTHONNOUSERSITE="1",
                   CTSVQA_WORKER_HOST_PID=str(os.getpid()))
        if threading.current_thread() is threading.main_thread():
            env["CTSVQA_WORKER_PDEATHSIG"] = "1"       # see worker._die_with_host
        else:
            env.pop("CTSVQA_WORKER_PDEATHSIG", None)
        self.log_path = self.log_path or self._log_file()
        try:
            proc = subprocess.Popen([self.python, "-m", "adapters.models.worker"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=roots[0],
                                    start_new_session=True)
        except OSError as exc:
            raise AdapterError(f"model {self.name!r}: cannot start its worker with {self.python}: "
                               f"{exc.strerror or exc}") from exc
        _LIVE.add(proc)
        self.proc, self.replies, self.starts = proc, queue.Queue(), self.starts + 1
        self.stderr_tail = collections.deque(maxlen=400)          # this worker's lines only
        log = self.log_path.open("a", encoding="utf-8", errors="replace")
        log.write(f"--- worker {self.starts} of {self.name}: pid {proc.pid}, {self.python} ({self.label}), "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        log.flush()
        tail, replies = self.stderr_tail, self.replies

        def read_stdout() -> None:
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace")
                try:
                    msg = json.loads(line)
                except ValueError:
                    msg = None
                if isinstance(msg, dict) and msg.get("ctsvqa"):
                    replies.put(msg)
                else:                                   # cannot happen (fd 1 is stderr there); kept as log
                    tail.append("[stdout] " + line.rstrip())
            proc.stdout.close()
            replies.put(None)

        def read_stderr() -> None:
            with log:
                for raw in proc.stderr:
                    line = raw.decode("utf-8", "replace")
                    tail.append(line.rstrip().split("\r")[-1])      # a progress bar's last state
                    log.write(line)
                    log.flush()
            proc.stderr.close()

        threading.Thread(target=read_stdout, name=f"worker-{proc.pid}-out", daemon=True).start()
        threading.Thread(target=read_stderr, name=f"worker-{proc.pid}-err", daemon=True).start()

    def _tail(self) -> str:
        time.sleep(0.1)                                 # let the stderr thread take the last lines
        lines = [ln for ln in list(self.stderr_tail)[-TAIL_LINES:] if ln.strip()]
        text = " | ".join(lines)
        text = text if len(text) <= 1500 else "…" + text[-1500:]
        return (f"; last stderr: {text}" if text else "; no stderr") + f" (log {self.log_path})"

    def _exit_text(self, code: int | None) -> str:
        if code is None:
            return "exit unknown"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit {code}"

    def _request(self, payload: dict[str, Any], timeout: float, doing: str) -> dict[str, Any]:
        proc = self.proc
        assert proc is not None
        self.next_id += 1
        self.busy = True                                # still True if an interrupt ends the wait: close() kills
        payload = {**payload, "id": self.next_id}
        try:
            proc.stdin.write((json.dumps(payload, default=str) + "\n").encode())
            proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass                                        # it died: the reply queue says so below
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self.replies.get(timeout=max(0.0, min(1.0, deadline - time.monotonic())))
            except queue.Empty:
                if time.monotonic() >= deadline:
                    self._stop(kill=True)
                    raise WorkerFailure(f"timed out after {timeout:g} s {doing} (the worker was killed; "
                                        f"--option worker_timeout=SECONDS){self._tail()}") from None
                continue
            if msg is None:
                try:
                    code = proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    code = None
                self._stop(kill=True)
                raise WorkerFailure(f"worker crashed ({self._exit_text(code)}) {doing}{self._tail()}")
            if msg.get("id") == self.next_id:
                self.busy = False
                return msg

    def _stop(self, kill: bool) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if not kill:
            try:
                proc.stdin.write(b'{"op": "shutdown"}\n')
                proc.stdin.flush()
                proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                pass
        _kill(proc)
        try:
            proc.stdin.close()
        except OSError:
            pass                            # stdout/stderr: their reader threads close them at EOF

    def _start(self) -> None:
        self._spawn()
        settings = asdict(self.settings)
        for key in ("checkpoint", "code_dir"):        # the worker runs elsewhere (cwd): absolute paths
            if settings.get(key) and Path(settings[key]).expanduser().exists():
                settings[key] = str(Path(settings[key]).expanduser().resolve())
        target = f"{self.inner_class.__module__}:{self.inner_class.__qualname__}"
        try:
            reply = self._request({"op": "load", "adapter": target, "settings": settings}, self.load_timeout,
                                  "while loading")
        except WorkerFailure as exc:
            raise AdapterError(f"model {self.name!r} ({self.label}): {exc}") from None
        if not reply["ok"]:
            self._stop(kill=True)
            if reply.get("kind") == "AdapterError":
                raise AdapterError(reply["error"])
            raise _remote(reply)
        self.worker_provenance = reply.get("provenance") or {}
        if self.dataset is not None:
            reply = self._request({"op": "prepare", "dataset": [asdict(d) for d in self.dataset]},
                                  self.load_timeout, "while preparing")
            if not reply["ok"]:
                self._stop(kill=True)
                raise _remote(reply)

    # -- the work ------------------------------------------------------------------------------------
    def load(self) -> None:
        self._start()

    def prepare(self, dataset: Sequence[DatasetQuestion]) -> None:
        if type(self.inner).prepare is ModelAdapter.prepare:
            return                                      # models ignore the data set: do not ship it
        self.dataset = list(dataset)
        reply = self._request({"op": "prepare", "dataset": [asdict(d) for d in self.dataset]}, self.load_timeout,
                              "while preparing")
        if not reply["ok"]:
            raise _remote(reply)

    def answer(self, model_input: ModelInput | None, questions: Sequence[Question]) -> list[Answer]:
        volume = model_input.volume if model_input is not None else None

        def failed(reason: str) -> list[Answer]:
            return [Answer(q.qid, None, status="error", reason=reason) for q in questions]

        if self.failed_volume is not None and model_input is not None and self.failed_volume[0] == volume:
            return failed(self.failed_volume[1])
        if self.dead:
            return failed(self.dead)
        if self.proc is None:
            try:
                self._start()                           # after a crash: a new worker, loaded again
            except Exception as exc:  # noqa: BLE001
                self.dead = f"the worker could not be started again: {exc}"
                return failed(self.dead)
        inp = None
        if model_input is not None:
            inp = {"volume": model_input.volume, "recipe": model_input.recipe, "version": model_input.version,
                   "path": str(Path(model_input.path).resolve()), "shape": list(model_input.shape),
                   "dtype": model_input.dtype, "patient_left": model_input.patient_left}
        try:
            reply = self._request({"op": "answer", "input": inp, "questions": [asdict(q) for q in questions]},
                                  self.call_timeout(len(questions)), f"while answering volume {volume}")
        except WorkerFailure as exc:
            self.failed_volume = (volume, str(exc))
            return failed(str(exc))
        if not reply["ok"]:
            raise _remote(reply)
        out = []
        for a in reply.get("answers") or []:
            try:
                out.append(Answer(a["qid"], a.get("text"), a.get("status", "ok"), a.get("reason"), a.get("meta") or {}))
            except (KeyError, TypeError, ValueError):
                continue                                # the runner records "no answer for this question"
        return out

    def call_timeout(self, n_questions: int) -> float:
        """--option worker_timeout, else the model's WORKER_SECONDS for a call of this many questions."""
        if self.timeout is not None:
            return self.timeout
        per_call, per_question = self.inner_class.WORKER_SECONDS
        return per_call + per_question * n_questions

    def close(self) -> None:
        self._stop(kill=self.busy)          # interrupted mid-call (Ctrl-C): it would finish the call first

    def provenance(self) -> dict[str, Any]:
        if self.proc is not None:
            try:
                reply = self._request({"op": "provenance"}, 60, "while reporting provenance")
                if reply["ok"]:
                    self.worker_provenance = reply["provenance"]
            except WorkerFailure:
                pass
        return {**self.worker_provenance, **self.identity(), "device": self.settings.device,
                "dtype": self.settings.dtype, "worker_log": str(self.log_path) if self.log_path else None,
                "worker_starts": self.starts}


def _remote(reply: dict[str, Any]) -> Exception:
    """The worker's exception under its own type name, so the runner's reason reads as in-process."""
    kind = str(reply.get("kind") or "WorkerError")
    cls = type(kind if kind.isidentifier() else "WorkerError", (RuntimeError,), {})
    return cls(reply.get("error") or "the worker reported an error without a message")


def worker_adapter_class(cls: type[ModelAdapter]) -> type[WorkerAdapter]:
    attrs = {k: getattr(cls, k) for k in ("name", "version", "default_recipe", "description", "packages",
                                          "environment") if hasattr(cls, k)}
    return type(cls.__name__, (WorkerAdapter,), {**attrs, "inner_class": cls, "__module__": cls.__module__,
                                                 "__qualname__": f"{cls.__qualname__}[worker]"})
