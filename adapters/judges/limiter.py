"""Per-judge request and token rates (aiolimiter's leaky bucket) and a cap on calls in flight.

Calls in flight are handed out by priority, not in arrival order: a retry or a one-item re-ask
goes before the first attempts still waiting, so a batch's last items are settled (and stored)
soon after its reply instead of behind every other batch. `halt()` refuses every waiting and
future call (Ctrl-C): calls already sent are left to finish."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from contextlib import asynccontextmanager

from aiolimiter import AsyncLimiter

from adapters.judges.base import Stopped

FIRST, AGAIN = 1, 0          # priorities: first attempts, then retries and re-asks before them


class PrioritySlots:
    """A semaphore whose waiters are served lowest priority first, then in arrival order."""

    def __init__(self, n: int):
        self.free = n
        self.waiters: list[tuple[int, int, asyncio.Future]] = []
        self.order = itertools.count()
        self.halted = False

    async def acquire(self, priority: int) -> None:
        if self.halted:
            raise Stopped("judging was interrupted")
        if self.free > 0 and not self.waiters:
            self.free -= 1
            return
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self.waiters, (priority, next(self.order), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.exception() is None:
                self.release()             # the slot was handed over just as we were cancelled
            raise

    def release(self) -> None:
        while self.waiters:
            future = heapq.heappop(self.waiters)[2]
            if not future.done():
                future.set_result(None)    # hand the slot straight over
                return
        self.free += 1

    def halt(self) -> None:
        self.halted = True
        while self.waiters:
            future = heapq.heappop(self.waiters)[2]
            if not future.done():
                future.set_exception(Stopped("judging was interrupted"))


class JudgeLimiter:
    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None, max_concurrency: int):
        # A bucket of two requests: requests stay evenly spaced (a provider counting a rolling window
        # sees no burst), and a waiter woken late by a busy event loop can catch up by one.
        self.requests = AsyncLimiter(2, 120.0 / requests_per_minute) if requests_per_minute else None
        # Tokens: buckets of 6 s worth, so one large request never exceeds the bucket.
        self.tokens = AsyncLimiter(tokens_per_minute / 10, 6.0) if tokens_per_minute else None
        self.max_concurrency = max_concurrency
        self._slots: PrioritySlots | None = None

    @property
    def in_flight(self) -> PrioritySlots:
        if self._slots is None:            # made lazily: futures belong to the loop that runs the judge
            self._slots = PrioritySlots(self.max_concurrency)
        return self._slots

    @property
    def halted(self) -> bool:
        return self._slots is not None and self._slots.halted

    def halt(self) -> None:
        self.in_flight.halt()

    @asynccontextmanager
    async def slot(self, estimated_tokens: int, priority: int = FIRST):
        await self.in_flight.acquire(priority)
        try:
            if self.tokens is not None:
                await self.tokens.acquire(min(estimated_tokens, self.tokens.max_rate))
            if self.requests is not None:
                await self.requests.acquire()
            if self.halted:                # interrupted while waiting for the rate: send nothing
                raise Stopped("judging was interrupted")
            yield
        finally:
            self.in_flight.release()
