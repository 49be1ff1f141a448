"""The worker process: runs one model adapter inside a family environment's interpreter, driven by the host
(adapters/models/worker_client.py) over JSON lines.

Started as `<env python> -m adapters.models.worker` with PYTHONPATH=<repo root> (our `adapters` package is
imported from the checkout, never installed in the env; it needs only numpy and the standard library).

Protocol: one JSON object per line; requests on stdin, replies on stdout, one reply per request, in order.
Every reply carries `"ctsvqa": 1` and `"ok"`; on failure `"error"` (one line) and `"kind"` (the exception type).

  {"op": "load", "adapter": "module:Class", "settings": {AdapterSettings fields}}
      -> {"ok": true, "provenance": {...}}          constructs the adapter and calls load()
  {"op": "prepare", "dataset": [{qid, volume, question, answer, categories}]}
      -> {"ok": true}                               only for adapters that learn from the data set
  {"op": "answer", "input": {volume, recipe, version, path, shape, dtype, patient_left} | null,
   "questions": [{"qid", "question"}]}
      -> {"ok": true, "answers": [{qid, text, status, reason, meta}]}   (the arrays are read from `path` here)
  {"op": "provenance"} -> {"ok": true, "provenance": {...}}   the adapter's, plus this interpreter's
  {"op": "shutdown"}   -> {"ok": true}, then close() and exit 0

stdout is the protocol's alone: at start the real stdout is kept for replies, and file descriptor 1 (what
print() and C code write to) is pointed at stderr, so a model's chatter cannot break a reply; stdin is
likewise kept for requests and fd 0 replaced by /dev/null. The host keeps stderr as the worker's log.
End of stdin (the host died or closed it) ends the worker at once, even in the middle of a generate call:
a thread reads requests and calls os._exit on EOF.

Fault injection for tests: CTSVQA_WORKER_FAULT=crash|hang makes every answer request crash (os._exit(3))
or hang; the six families' fakes honour CTSVQA_FAKE_FAULT inside their generate instead."""

from __future__ import annotations

import importlib
import json
import os
import platform
import queue
import sys
import threading
import time
import traceback
from typing import Any, TextIO

PROTOCOL = 1


def _take_stdio() -> tuple[TextIO, TextIO]:
    proto_out = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    proto_in = os.fdopen(os.dup(0), "r", encoding="utf-8")
    os.dup2(2, 1)                                   # print() and C-level writes to fd 1 land in the log
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.stdout = sys.stderr
    sys.stdin = open(os.devnull)
    return proto_in, proto_out


def _import_class(target: str):
    from adapters.models.base import ModelAdapter

    module_name, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, ModelAdapter)):
        raise TypeError(f"{target} is not a ModelAdapter subclass")
    return obj


class Worker:
    def __init__(self) -> None:
        self.adapter = None

    def provenance(self) -> dict[str, Any]:
        prov = self.adapter.provenance() if self.adapter is not None else {}
        prov["worker"] = {"python": sys.executable, "prefix": sys.prefix, "python_version": platform.python_version(),
                          "pid": os.getpid()}
        return prov

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "load":
            from adapters.models.base import AdapterSettings

            cls = _import_class(req["adapter"])
            self.adapter = cls(AdapterSettings(**req.get("settings", {})))
            self.adapter.load()
            return {"provenance": self.provenance()}
        if op == "provenance":
            return {"provenance": self.provenance()}
        if op == "shutdown":
            return {}
        if self.adapter is None:
            raise RuntimeError(f"{op!r} before load")
        if op == "prepare":
            from adapters.models.base import DatasetQuestion

            self.adapter.prepare([DatasetQuestion(d["qid"], d["volume"], d["question"], d["answer"],
                                                  tuple(d.get("categories") or ())) for d in req["dataset"]])
            return {}
        if op == "answer":
            return {"answers": self.answer(req)}
        raise ValueError(f"unknown op {op!r}")

    def answer(self, req: dict[str, Any]) -> list[dict[str, Any]]:
        from pathlib import Path

        from adapters.models.base import Answer, ModelInput, Question

        fault = os.environ.get("CTSVQA_WORKER_FAULT")
        if fault == "crash":
            os._exit(3)
        if fault == "hang":
            time.sleep(3600)
        inp = req.get("input")
        mi = None if inp is None else ModelInput(inp["volume"], inp["recipe"], inp["version"], Path(inp["path"]),
                                                 tuple(inp["shape"]), inp["dtype"], inp["patient_left"])
        questions = [Question(q["qid"], q["question"]) for q in req["questions"]]
        answers = self.adapter.answer(mi, questions)
        if not isinstance(answers, (list, tuple)):
            raise TypeError(f"adapter returned {type(answers).__name__}, not a list of Answer")
        out = []
        for a in answers:
            if isinstance(a, Answer):
                out.append({"qid": a.qid, "text": a.text, "status": a.status, "reason": a.reason,
                            "meta": _jsonable(a.meta)})
        return out


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _die_with_host() -> None:
    """Linux: SIGKILL when the thread that started us ends (the host sets the flag only when it started us
    from its main thread, whose end is the process's end)."""
    if os.environ.get("CTSVQA_WORKER_PDEATHSIG") != "1" or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))        # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(os.environ.get("CTSVQA_WORKER_HOST_PID", "0")):  # the host died before prctl
        os._exit(0)


def main() -> int:
    proto_in, proto_out = _take_stdio()
    _die_with_host()
    requests: queue.Queue = queue.Queue()

    def read() -> None:
        for line in proto_in:
            requests.put(line)
        os._exit(0)                                  # the host is gone: do not outlive it, even mid-generate

    threading.Thread(target=read, name="requests", daemon=True).start()
    worker = Worker()
    while True:
        line = requests.get()
        try:
            req = json.loads(line)
        except ValueError:
            req = None
            reply: dict[str, Any] = {"ok": False, "error": f"not JSON: {line[:80]!r}", "kind": "ProtocolError"}
        else:
            try:
                reply = {"ok": True, **worker.handle(req)}
            except BaseException as exc:  # noqa: BLE001  (reported to the host, which records it)
                traceback.print_exc(file=sys.stderr)
                text = " ".join(str(exc).split()) or type(exc).__name__
                reply = {"ok": False, "error": text, "kind": type(exc).__name__}
            reply["id"] = req.get("id") if isinstance(req, dict) else None
        reply["ctsvqa"] = PROTOCOL
        proto_out.write(json.dumps(reply, default=str) + "\n")
        proto_out.flush()
        if isinstance(req, dict) and req.get("op") == "shutdown":
            try:
                if worker.adapter is not None:
                    worker.adapter.close()
            finally:
                os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
