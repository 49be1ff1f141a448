"""Qwen through the dashscope SDK's native API. DashScope answers throttling with a *result*
(status_code 429, code 'Throttling'), not an exception: it is turned into a retryable error here."""

from __future__ import annotations

import asyncio

import aiohttp
from dashscope import AioGeneration

from adapters.judges.base import ChatReply, ChatRequest, ProviderError

RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}
BLOCKED_CODES = {"DataInspectionFailed", "data_inspection_failed"}


class DashScopeChat:
    def __init__(self, api_key: str, base_url: str | None, timeout_s: float):
        self.api_key, self.base_url, self.timeout_s = api_key, base_url, timeout_s
        self.session: aiohttp.ClientSession | None = None

    async def aclose(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def complete(self, req: ChatRequest) -> ChatReply:
        messages = ([{"role": "system", "content": req.system}] if req.system else []) + [
            {"role": "user", "content": req.user}]
        kwargs = {"model": req.model, "messages": messages, "api_key": self.api_key, "result_format": "message",
                  "request_timeout": int(self.timeout_s)}
        if req.temperature is not None:
            kwargs["temperature"] = req.temperature
        if req.max_tokens is not None:
            kwargs["max_tokens"] = req.max_tokens
        if req.schema is not None:
            kwargs["response_format"] = {"type": "json_object"}
        if self.base_url:
            kwargs["base_address"] = self.base_url
        # Our own session, closed with the judge: the SDK's shared one outlives the event loop.
        # (The SDK resends once on a pooled connection that dropped before any reply; that is its
        # only retry, and it cannot duplicate a processed request.)
        if self.session is None:
            self.session = aiohttp.ClientSession()
        kwargs["session"] = self.session
        try:
            resp = await asyncio.wait_for(AioGeneration.call(**kwargs), timeout=self.timeout_s + 5)
        except asyncio.TimeoutError:
            raise ProviderError("timeout", "timed out", retryable=True) from None
        except (OSError, ConnectionError) as exc:
            raise ProviderError("error", f"connection error: {exc}", retryable=True) from None
        except Exception as exc:  # noqa: BLE001  (the SDK raises bare exceptions on odd replies)
            name = type(exc).__name__
            retryable = "Timeout" in name or "Connection" in name or "ClientError" in name
            raise ProviderError("timeout" if "Timeout" in name else "error",
                                f"{name}: {exc}"[:400], retryable=retryable) from None
        status = getattr(resp, "status_code", None)
        if status != 200:
            code = getattr(resp, "code", None)
            message = f"HTTP {status} {code}: {getattr(resp, 'message', '')}"[:400]
            if code in BLOCKED_CODES:
                raise ProviderError("blocked", message, http_status=status)
            raise ProviderError("error", message, retryable=status in RETRYABLE_STATUS, http_status=status)
        try:
            choice = resp.output.choices[0]
            text = choice.message.content
            finish = choice.finish_reason
        except (AttributeError, IndexError, KeyError, TypeError) as exc:
            raise ProviderError("error", f"unexpected response: {exc}"[:400]) from None
        usage = getattr(resp, "usage", None)
        return ChatReply(text if isinstance(text, str) else None,
                         getattr(usage, "input_tokens", None), getattr(usage, "output_tokens", None), finish)
