"""OpenAI chat completions, and everything that speaks them: DashScope's compatible mode and any
OpenAI-compatible server (vLLM, llama.cpp, Ollama) for local judges."""

from __future__ import annotations

import httpx
import openai

from adapters.judges.base import ChatReply, ChatRequest, ProviderError, parse_retry_after

RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}


class OpenAIChat:
    def __init__(self, provider: str, api_key: str, base_url: str, timeout_s: float):
        self.provider = provider
        # max_retries=0: tenacity owns retries (the client's own would double them, ignoring our cap).
        self.client = openai.AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout_s)

    async def aclose(self) -> None:
        await self.client.close()

    def _response_format(self, schema: dict | None) -> dict | None:
        if schema is None:
            return None
        if self.provider == "dashscope-compatible":
            return {"type": "json_object"}      # DashScope takes JSON mode, not a schema
        return {"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema, "strict": True}}

    async def complete(self, req: ChatRequest) -> ChatReply:
        messages = ([{"role": "system", "content": req.system}] if req.system else []) + [
            {"role": "user", "content": req.user}]
        kwargs = {"model": req.model, "messages": messages}
        if req.temperature is not None:
            kwargs["temperature"] = req.temperature
        if req.max_tokens is not None:
            kwargs["max_tokens"] = req.max_tokens
        if (fmt := self._response_format(req.schema)) is not None:
            kwargs["response_format"] = fmt
        try:
            resp = await self.client.chat.completions.create(**kwargs)
        except openai.APITimeoutError as exc:
            raise ProviderError("timeout", f"timed out: {exc}", retryable=True) from None
        except openai.APIConnectionError as exc:
            raise ProviderError("error", f"connection error: {exc}", retryable=True) from None
        except openai.APIStatusError as exc:
            code = exc.status_code
            body = _body_text(exc.response)
            if code == 400 and "content_filter" in body:
                raise ProviderError("blocked", f"HTTP 400 content filter: {body[:300]}", http_status=code) from None
            raise ProviderError(
                "error", f"HTTP {code}: {body[:300]}", retryable=code in RETRYABLE_STATUS,
                retry_after=_retry_after(exc.response), http_status=code,
            ) from None
        except (openai.APIResponseValidationError, ValueError, TypeError, AttributeError) as exc:
            raise ProviderError("error", f"unexpected response: {type(exc).__name__}: {exc}"[:400]) from None
        if isinstance(resp, str) or not getattr(resp, "choices", None):
            raise ProviderError("error", f"unexpected response without choices: {str(resp)[:200]!r}")
        choice = resp.choices[0]
        usage = getattr(resp, "usage", None)
        tokens = (getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None))
        if choice.finish_reason == "content_filter" or getattr(choice.message, "refusal", None):
            raise ProviderError("blocked", f"blocked: finish_reason={choice.finish_reason}, "
                                           f"refusal={getattr(choice.message, 'refusal', None)!r}")
        return ChatReply(choice.message.content, *tokens, choice.finish_reason)


def _retry_after(response: httpx.Response | None) -> float | None:
    if response is None:
        return None
    ms = response.headers.get("retry-after-ms")
    if ms is not None:
        seconds = parse_retry_after(ms)
        return None if seconds is None else seconds / 1000
    return parse_retry_after(response.headers.get("retry-after"))


def _body_text(response: httpx.Response | None) -> str:
    try:
        return response.text if response is not None else ""
    except Exception:  # noqa: BLE001  (a streamed or closed body)
        return ""
