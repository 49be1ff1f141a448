"""Per-judge request and token rates (aiolimiter's leaky bucket) and a cap on calls in flight."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from aiolimiter import AsyncLimiter


class JudgeLimiter:
    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None, max_concurrency: int):
        # A bucket of two requests: requests stay evenly spaced (a provider counting a rolling window
        # sees no burst), and a waiter woken late by a busy event loop can catch up by one.
        self.requests = AsyncLimiter(2, 120.0 / requests_per_minute) if requests_per_minute else None
        # Tokens: buckets of 6 s worth, so one large request never exceeds the bucket.
        self.tokens = AsyncLimiter(tokens_per_minute / 10, 6.0) if tokens_per_minute else None
        self.in_flight = asyncio.Semaphore(max_concurrency)

    @asynccontextmanager
    async def slot(self, estimated_tokens: int):
        async with self.in_flight:
            if self.tokens is not None:
                await self.tokens.acquire(min(estimated_tokens, self.tokens.max_rate))
            if self.requests is not None:
                await self.requests.acquire()
            yield
