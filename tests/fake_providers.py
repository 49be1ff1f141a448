"""A local fake of the three judge APIs, speaking their real wire formats, for the real clients.

Routes (all on 127.0.0.1):
  POST /v1/chat/completions                                   OpenAI chat completions
  POST /compatible-mode/v1/chat/completions                   DashScope, OpenAI-compatible mode
  POST /v1beta/models/{model}:generateContent                 Gemini (google-genai)
  POST /api/v1/services/aigc/text-generation/generation       DashScope native

It judges like a very simple judge (`oracle`: the first words agree), so tests know every verdict,
and it can be told to misbehave: queue faults per API with `fail(api, *faults)`, add latency, or
enforce a requests-per-minute limit answered with 429 + Retry-After. Every request is logged,
with when it arrived and when it was answered and which items the reply gave a verdict for.
`FakeProviders(verdict=True)` answers every item with that verdict instead of the oracle's (two
servers that disagree stand for two different judges).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from aiohttp import web

APIS = ("openai", "dashscope-compatible", "gemini", "dashscope")
_BATCH_ITEM = re.compile(r"^(\d+)\. Question: (.*?)\n   Answer: (.*?)\n   Prediction: (.*?)$", re.M | re.S)
_SINGLE = re.compile(r"Question: (.*?)\nReference answer: (.*?)\nModel answer: (.*?)\n\n", re.S)


def first_word(text: str) -> str:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return words[0] if words else ""


def oracle(answer: str, prediction: str) -> bool:
    """The fake judge's verdict: the answers start with the same word."""
    return first_word(prediction) != "" and first_word(prediction) == first_word(answer)


def tokens(text: str) -> int:
    return max(1, round(len(text.split()) * 1.3))


@dataclass
class Fault:
    kind: str            # status | delay | malformed | fenced | short | reorder | duplicate | out_of_range |
    #                      blocked | empty | html | prose | string_verdict | truncated (cut, finish_reason
    #                      length) | cut (cut, finish_reason stop)
    status: int = 500
    retry_after: str | None = None
    seconds: float = 0.0


def status(code: int, retry_after: str | None = None) -> Fault:
    return Fault("status", status=code, retry_after=retry_after)


def delay(seconds: float) -> Fault:
    return Fault("delay", seconds=seconds)


def fault(kind: str) -> Fault:
    return Fault(kind)


@dataclass
class Logged:
    api: str
    items: list[tuple[str, str, str]]      # (question, answer, prediction) the request asked about
    auth: str
    body: dict
    outcome: str
    t_request: float = 0.0                 # time.monotonic() when the request arrived
    t_reply: float = 0.0                   # ... and when the reply was sent
    answered: list[tuple[str, str, str]] = field(default_factory=list)   # items the reply gave a verdict for


@dataclass
class FakeProviders:
    latency_s: float = 0.0
    rpm: int | None = None
    verdict: bool | None = None            # answer every item with this verdict (None: the oracle)
    log: list[Logged] = field(default_factory=list)

    def __post_init__(self):
        self._faults: dict[str, deque[tuple[str | None, Fault]]] = {api: deque() for api in APIS}
        self._windows: dict[str, deque[float]] = {api: deque() for api in APIS}   # rpm is per API
        self._lock = threading.Lock()
        self.port = 0

    # --- control --------------------------------------------------------------------------------
    def fail(self, api: str, *faults: Fault, match: str | None = None) -> None:
        """Queue faults for the next requests to `api` (only those whose prompt contains `match`)."""
        with self._lock:
            self._faults[api].extend((match, f) for f in faults)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self, api: str | None = None, outcome: str | None = None) -> list[Logged]:
        with self._lock:
            return [r for r in self.log if (api is None or r.api == api) and (outcome is None or r.outcome == outcome)]

    def asked_items(self, api: str | None = None) -> list[tuple[str, str, str]]:
        return [item for r in self.requests(api, "ok") for item in r.items]

    def start(self) -> "FakeProviders":
        ready = threading.Event()

        def serve():
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            app = web.Application()
            app.router.add_post("/v1/chat/completions", self._handler("openai"))
            app.router.add_post("/compatible-mode/v1/chat/completions", self._handler("dashscope-compatible"))
            app.router.add_post("/v1beta/models/{model}:generateContent", self._handler("gemini"))
            app.router.add_post("/api/v1/services/aigc/text-generation/generation", self._handler("dashscope"))
            self._runner = web.AppRunner(app, access_log=None)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            self._loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        async def shutdown():
            await self._runner.cleanup()
        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # --- serving --------------------------------------------------------------------------------
    def _next_fault(self, api: str, prompt: str) -> Fault | None:
        with self._lock:
            for i, (match, f) in enumerate(self._faults[api]):
                if match is None or match in prompt:
                    del self._faults[api][i]
                    return f
        return None

    def _over_rate(self, api: str) -> float | None:
        """Seconds until the next request to `api` would be allowed (a rolling 60 s window), or
        None if it is allowed now."""
        if self.rpm is None:
            return None
        now = time.monotonic()
        window = self._windows[api]
        with self._lock:
            while window and now - window[0] >= 60:
                window.popleft()
            if len(window) >= self.rpm:
                return 60 - (now - window[0])
            window.append(now)
        return None

    def _handler(self, api: str):
        async def handle(request: web.Request) -> web.StreamResponse:
            t_request = time.monotonic()
            body = await request.json()
            auth = request.headers.get("Authorization") or request.headers.get("x-goog-api-key") or ""
            system, user = _messages(api, body)
            items, single = _items(user)
            wants_json = _wants_json(api, body)
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            wait = self._over_rate(api)
            if wait is not None:
                self._record(api, items, auth, body, "rate_limited", t_request)
                return _error(api, 429, {"Retry-After": f"{wait:.2f}"})
            f = self._next_fault(api, user)
            late = f is not None and f.kind == "delay"
            if late:                         # the client gave up meanwhile: log it as not delivered
                await asyncio.sleep(f.seconds)
                f = None
            if f is not None and f.kind == "status":
                self._record(api, items, auth, body, f"status {f.status}", t_request)
                return _error(api, f.status, {"Retry-After": f.retry_after} if f.retry_after else {})
            if f is not None and f.kind == "html":
                self._record(api, items, auth, body, "html", t_request)
                return web.Response(text="<html><body>Gateway says hello</body></html>", content_type="text/html")
            if f is not None and f.kind == "malformed":
                self._record(api, items, auth, body, "malformed", t_request)
                return web.Response(text='{"choices": [{"message": {"content": "tru', content_type="application/json")
            if f is not None and f.kind == "blocked":
                self._record(api, items, auth, body, "blocked", t_request)
                return _blocked(api)
            kind = f.kind if f else None
            text = _verdict_text(items, single, wants_json, kind, self.verdict)
            self._record(api, items, auth, body, "late" if late else "ok" if f is None else f.kind, t_request,
                         _answered(items, single, kind))
            return web.json_response(_reply(api, body, text, tokens((system or "") + user), tokens(text or ""),
                                            "length" if kind == "truncated" else None))
        return handle

    def _record(self, api, items, auth, body, outcome, t_request=0.0, answered=()) -> None:
        with self._lock:
            self.log.append(Logged(api, items, auth, body, outcome, t_request, time.monotonic(), list(answered)))


def _messages(api: str, body: dict) -> tuple[str | None, str]:
    if api == "gemini":
        system = body.get("systemInstruction", {}).get("parts", [{}])[0].get("text")
        return system, body["contents"][0]["parts"][0]["text"]
    messages = body["messages"] if api != "dashscope" else body["input"]["messages"]
    system = next((m["content"] for m in messages if m["role"] == "system"), None)
    return system, next(m["content"] for m in messages if m["role"] == "user")


def _items(user: str) -> tuple[list[tuple[str, str, str]], bool]:
    batch = [(q, a, p) for _, q, a, p in _BATCH_ITEM.findall(user)]
    if batch:
        return batch, False
    match = _SINGLE.search(user)
    return ([match.groups()] if match else []), True


def _wants_json(api: str, body: dict) -> bool:
    if api == "gemini":
        return body.get("generationConfig", {}).get("responseMimeType") == "application/json"
    fmt = body.get("response_format") or body.get("parameters", {}).get("response_format")
    return bool(fmt)


def _answered(items, single: bool, kind: str | None) -> list:
    """The items a reply of this kind gives a usable verdict for."""
    if kind is None or kind in ("fenced", "reorder"):
        return list(items)
    if single:
        return []
    if kind in ("short", "out_of_range"):
        return items[:-1]
    if kind in ("duplicate", "string_verdict"):
        return items[1:]
    return []


def _verdict_text(items, single: bool, wants_json: bool, kind: str | None, fixed: bool | None = None) -> str | None:
    judge = (lambda a, p: fixed) if fixed is not None else oracle
    if kind == "empty":
        return ""
    if kind == "prose":
        return "I believe the first prediction is right but I am not sure about the others."
    if single:
        verdict = judge(items[0][1], items[0][2]) if items else False
        if kind == "string_verdict":
            return json.dumps({"verdict": "MAYBE"})
        text = json.dumps({"verdict": "YES" if verdict else "NO"}) if wants_json else ("YES" if verdict else "NO")
        return text[:len(text) // 2] if kind in ("truncated", "cut") else text
    elements = [{"index": k, "is_correct": judge(a, p)} for k, (_, a, p) in enumerate(items, start=1)]
    if kind == "short":
        elements = elements[:-1]
    elif kind == "reorder":
        elements = elements[::-1]
    elif kind == "duplicate":
        elements = elements + [dict(elements[0], is_correct=not elements[0]["is_correct"])]
    elif kind == "out_of_range":
        elements[-1] = dict(elements[-1], index=len(items) + 7)
    elif kind == "string_verdict":
        elements[0] = dict(elements[0], is_correct="true")
    text = json.dumps({"items": elements} if wants_json else elements, indent=1)
    if kind in ("truncated", "cut"):
        return text[:len(text) // 2]
    return f"```json\n{text}\n```" if kind == "fenced" else text


def _reply(api: str, body: dict, text: str, t_in: int, t_out: int, finish: str | None = None) -> dict:
    """A successful reply; finish='length' means the reply was cut at max_tokens."""
    if api == "gemini":
        return {"candidates": [{"content": {"role": "model", "parts": [{"text": text}]},
                                "finishReason": "MAX_TOKENS" if finish else "STOP", "index": 0}],
                "usageMetadata": {"promptTokenCount": t_in, "candidatesTokenCount": t_out,
                                  "totalTokenCount": t_in + t_out}, "modelVersion": "fake"}
    if api == "dashscope":
        return {"request_id": "fake", "output": {"choices": [{"finish_reason": finish or "stop", "message": {
            "role": "assistant", "content": text}}]},
                "usage": {"input_tokens": t_in, "output_tokens": t_out, "total_tokens": t_in + t_out}}
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model"), "choices": [{"index": 0, "finish_reason": finish or "stop", "message": {
                "role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": t_in, "completion_tokens": t_out, "total_tokens": t_in + t_out}}


def _error(api: str, code: int, headers: dict) -> web.Response:
    if api == "gemini":
        status = {429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE"}.get(code, "INTERNAL")
        payload = {"error": {"code": code, "message": "fake failure", "status": status}}
    elif api == "dashscope":
        payload = {"request_id": "fake", "code": "Throttling" if code == 429 else "InternalError",
                   "message": "fake failure"}
    else:
        payload = {"error": {"message": "fake failure", "type": "rate_limit" if code == 429 else "server_error",
                             "code": None}}
    return web.json_response(payload, status=code, headers={k: v for k, v in headers.items() if v})


def _blocked(api: str) -> web.Response:
    if api == "gemini":
        return web.json_response({"promptFeedback": {"blockReason": "SAFETY"},
                                  "usageMetadata": {"promptTokenCount": 10, "totalTokenCount": 10}})
    if api == "dashscope":
        return web.json_response({"request_id": "fake", "code": "DataInspectionFailed",
                                  "message": "Input data may contain inappropriate content."}, status=400)
    return web.json_response({"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": [
        {"index": 0, "finish_reason": "content_filter", "message": {"role": "assistant", "content": None}}]})
