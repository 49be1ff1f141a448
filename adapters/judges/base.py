"""What every judge returns (an Outcome per item) and the shape of a judge; what every LLM provider
adapter speaks: one chat request in, one reply out, typed failures.

Each adapter turns its client's own retries off; `with_retries` (tenacity) owns them: 429, 5xx,
timeouts and connection errors are retried with exponential backoff and jitter, honouring
Retry-After, up to the judge's max_attempts."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol, Sequence

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

if TYPE_CHECKING:
    from adapters.judges.prompts import Item

BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 60.0
RETRY_AFTER_MAX_S = 120.0


@dataclass
class Outcome:
    """The result for one item. verdict is set only when status is 'ok'."""

    verdict: bool | None
    status: str                    # 'ok' | 'unparsed' | 'error' | 'timeout' | 'blocked' | 'no_verdict'
    reason: str | None = None
    raw: str | None = None
    call_id: str | None = None
    tokens_in: int | None = None   # this item's share of its call
    tokens_out: int | None = None
    latency_ms: float | None = None
    cost_usd: float | None = None


class Judge(Protocol):
    """Every judge, LLM or offline, as build_judge returns it: items in, one Outcome per item (None where
    a stopped run left it undecided) and the provider calls it made."""

    batch_size: int

    async def judge(self, items: Sequence["Item"]) -> tuple[list[Outcome | None], list[Any]]: ...


@dataclass(frozen=True)
class ChatRequest:
    model: str
    system: str | None
    user: str
    temperature: float | None
    max_tokens: int | None
    schema: dict | None          # JSON schema for structured output, or None for free text

    def digest(self, provider: str) -> str:
        body = json.dumps({"provider": provider, **asdict(self)}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(body.encode()).hexdigest()


@dataclass
class ChatReply:
    text: str | None
    tokens_in: int | None = None
    tokens_out: int | None = None
    finish_reason: str | None = None


class ProviderError(Exception):
    """status: 'error' | 'timeout' | 'blocked'. retryable: worth another attempt."""

    def __init__(self, status: str, message: str, *, retryable: bool = False, retry_after: float | None = None,
                 http_status: int | None = None):
        super().__init__(message)
        self.status, self.retryable, self.retry_after, self.http_status = status, retryable, retry_after, http_status


class Stopped(Exception):
    """Judging was interrupted (Ctrl-C): nothing more is sent. Not a provider failure: the items
    it leaves are not stored, and the next run asks for them."""


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds form; HTTP dates are rare from these APIs)."""
    if value is None:
        return None
    try:
        return max(0.0, min(float(value), RETRY_AFTER_MAX_S))
    except ValueError:
        return None


def _wait(state: RetryCallState) -> float:
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, ProviderError) and exc.retry_after is not None:
        return exc.retry_after + random.uniform(0, 0.1 * exc.retry_after + 0.05)
    backoff = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (state.attempt_number - 1))
    return random.uniform(0.5 * backoff, backoff)                         # jitter


async def with_retries(call: Callable[[int], Awaitable[ChatReply]], max_attempts: int,
                       halted: Callable[[], bool] = lambda: False) -> tuple[ChatReply, int]:
    """Run `call(attempt_number)` until it succeeds, fails for good, or max_attempts are used.
    Returns the reply and the number of attempts; raises the last ProviderError (with `.attempts`
    set) otherwise, or Stopped (with `.attempts` and `.last_error`) when `halted()` turns true
    while waiting to retry."""
    attempts = 0
    last_error: list[ProviderError | None] = [None]

    async def sleep(seconds: float) -> None:
        # Backoff and Retry-After waits end early on Ctrl-C, in steps short enough to feel instant.
        end = asyncio.get_running_loop().time() + seconds
        while not halted():
            left = end - asyncio.get_running_loop().time()
            if left <= 0:
                return
            await asyncio.sleep(min(left, 0.1))
        raise Stopped("judging was interrupted")

    retrying = AsyncRetrying(
        retry=retry_if_exception(lambda e: isinstance(e, ProviderError) and e.retryable),
        stop=stop_after_attempt(max_attempts), wait=_wait, reraise=True, sleep=sleep,
    )
    try:
        async for attempt in retrying:
            with attempt:
                attempts += 1
                try:
                    reply = await call(attempts)
                except ProviderError as exc:
                    last_error[0] = exc
                    raise
    except (ProviderError, Stopped) as exc:
        exc.attempts = attempts
        exc.last_error = last_error[0]
        raise
    return reply, attempts


def scrub(text: str | None, secrets: tuple[str, ...]) -> str | None:
    """Remove API keys from anything about to be stored or logged."""
    if text is None:
        return None
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text
