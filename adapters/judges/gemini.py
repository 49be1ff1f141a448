"""Gemini through google-genai (`generateContent`)."""

from __future__ import annotations

import asyncio

import httpx
from google import genai
from google.genai import errors, types

from adapters.judges.base import ChatReply, ChatRequest, ProviderError, parse_retry_after

RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}
BLOCKING_FINISH = {"SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "RECITATION", "IMAGE_SAFETY"}


class GeminiChat:
    def __init__(self, api_key: str, base_url: str | None, timeout_s: float):
        # No retry_options: the SDK would retry on its own; tenacity owns retries. The client is
        # kept on the adapter: a temporary genai.Client closes its HTTP client when collected.
        options = types.HttpOptions(timeout=int(timeout_s * 1000), base_url=base_url,
                                    api_version="v1beta" if base_url else None)
        self.client = genai.Client(api_key=api_key, http_options=options)
        self.timeout_s = timeout_s

    async def aclose(self) -> None:
        close = getattr(self.client.aio, "aclose", None)
        if close is not None:
            await close()

    async def complete(self, req: ChatRequest) -> ChatReply:
        config = types.GenerateContentConfig(
            system_instruction=req.system, temperature=req.temperature, max_output_tokens=req.max_tokens,
            response_mime_type="application/json" if req.schema else None, response_schema=req.schema,
        )
        try:
            # The SDK's timeout covers one HTTP read; wait_for bounds the whole call as well.
            resp = await asyncio.wait_for(
                self.client.aio.models.generate_content(model=req.model, contents=req.user, config=config),
                timeout=self.timeout_s + 5)
        except errors.APIError as exc:
            code = exc.code
            retry_after = parse_retry_after(exc.response.headers.get("retry-after")) if getattr(
                exc, "response", None) is not None and hasattr(exc.response, "headers") else None
            raise ProviderError("error", f"HTTP {code} {exc.status}: {exc.message}"[:400],
                                retryable=code in RETRYABLE_STATUS, retry_after=retry_after,
                                http_status=code) from None
        except (asyncio.TimeoutError, httpx.TimeoutException) as exc:
            raise ProviderError("timeout", f"timed out: {type(exc).__name__}", retryable=True) from None
        except httpx.TransportError as exc:
            raise ProviderError("error", f"connection error: {exc}", retryable=True) from None
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ProviderError("error", f"unexpected response: {type(exc).__name__}: {exc}"[:400]) from None
        usage = resp.usage_metadata
        tokens = (getattr(usage, "prompt_token_count", None), getattr(usage, "candidates_token_count", None))
        feedback = resp.prompt_feedback
        if feedback is not None and feedback.block_reason is not None:
            raise ProviderError("blocked", f"prompt blocked: {feedback.block_reason}")
        if not resp.candidates:
            raise ProviderError("blocked", "no candidates in the reply (blocked or empty)")
        candidate = resp.candidates[0]
        finish = str(candidate.finish_reason.value if hasattr(candidate.finish_reason, "value")
                     else candidate.finish_reason) if candidate.finish_reason else None
        if finish in BLOCKING_FINISH:
            raise ProviderError("blocked", f"candidate blocked: finish_reason={finish}")
        parts = candidate.content.parts if candidate.content and candidate.content.parts else []
        text = "".join(p.text for p in parts if getattr(p, "text", None) and not getattr(p, "thought", False))
        return ChatReply(text or None, *tokens, finish)
