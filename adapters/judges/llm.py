"""An LLM judge: render the prompt for a batch, call the provider under the judge's limits, parse
strictly, and ask again — one item per call — for every item the reply did not settle."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Protocol, Sequence

from adapters.judges.base import ChatReply, ChatRequest, ProviderError, scrub, with_retries
from adapters.judges.limiter import JudgeLimiter
from adapters.judges.prompts import Item, Prompt
from adapters.judges.spec import JudgeSpec


class ChatClient(Protocol):
    async def complete(self, req: ChatRequest) -> ChatReply: ...


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


@dataclass
class CallLog:
    call_id: str
    judge_id: str
    request_hash: str
    n_items: int
    attempts: int
    status: str
    error: str | None
    tokens_in: int | None
    tokens_out: int | None
    latency_ms: float | None
    cost_usd: float | None


def estimate_tokens(text: str) -> int:
    """A provider-neutral estimate (about 4 characters a token for English) for limits and forecasts."""
    return max(1, round(len(text) / 4))


class LLMJudge:
    def __init__(self, spec: JudgeSpec, client: ChatClient, prompt: Prompt, limiter: JudgeLimiter,
                 secrets: tuple[str, ...] = ()):
        self.spec, self.client, self.prompt, self.limiter, self.secrets = spec, client, prompt, limiter, secrets

    @property
    def batch_size(self) -> int:
        return self.prompt.batch_size

    async def aclose(self) -> None:
        close = getattr(self.client, "aclose", None)
        if close is not None:
            await close()

    def request(self, items: Sequence[Item]) -> ChatRequest:
        return ChatRequest(
            model=self.spec.model, system=self.prompt.system if self.spec.system_prompt else None,
            user=self.prompt.render(items), temperature=self.spec.temperature, max_tokens=self.spec.max_tokens,
            schema=self.prompt.schema if self.spec.structured else None,
        )

    def forecast_tokens(self, items: Sequence[Item], req: ChatRequest | None = None) -> tuple[int, int]:
        req = req or self.request(items)
        return (estimate_tokens((req.system or "") + req.user),
                self.prompt.expected_output_tokens_per_item * len(items) + 2)

    async def judge(self, items: Sequence[Item]) -> tuple[list[Outcome], list[CallLog]]:
        calls: list[CallLog] = []
        outcomes: list[Outcome | None] = [None] * len(items)
        verdicts, share, failure = await self._ask(items, calls)
        if failure is not None and not (failure.status == "blocked" and len(items) > 1):
            reason = scrub(str(failure), self.secrets)
            return [Outcome(None, failure.status, reason, call_id=share.call_id) for _ in items], calls
        for pos, verdict in verdicts.items():
            outcomes[pos - 1] = Outcome(verdict, "ok", raw=share.raw, **share.costs())
        unsettled = [i for i, o in enumerate(outcomes) if o is None]
        if len(items) == 1 and unsettled:
            outcomes[0] = Outcome(None, "unparsed", "reply did not parse as a verdict", raw=share.raw,
                                  **share.costs())
            unsettled = []
        for i in unsettled:                          # ask again, alone
            again, single, failure = await self._ask([items[i]], calls)
            if failure is not None:
                outcomes[i] = Outcome(None, failure.status, scrub(str(failure), self.secrets), call_id=single.call_id)
            elif 1 in again:
                outcomes[i] = Outcome(again[1], "ok", raw=single.raw, **single.costs())
            else:
                outcomes[i] = Outcome(None, "unparsed", "reply did not parse as a verdict, also when asked alone",
                                      raw=single.raw, **single.costs())
        return outcomes, calls

    async def _ask(self, items: Sequence[Item], calls: list[CallLog]):
        req = self.request(items)
        estimated_in, estimated_out = self.forecast_tokens(items, req)
        call_id = uuid.uuid4().hex
        last_latency = [None]

        async def attempt() -> ChatReply:
            async with self.limiter.slot(estimated_in + estimated_out):
                t0 = time.perf_counter()
                try:
                    return await self.client.complete(req)
                finally:
                    last_latency[0] = 1000 * (time.perf_counter() - t0)

        share = _Share(call_id, len(items))
        try:
            reply, attempts = await with_retries(attempt, self.spec.max_attempts)
        except ProviderError as exc:
            calls.append(CallLog(call_id, self.spec.judge_id, req.digest(self.spec.provider), len(items),
                                 getattr(exc, "attempts", 1), exc.status, scrub(str(exc), self.secrets),
                                 None, None, last_latency[0], 0.0))
            return {}, share, exc
        verdicts = self.prompt.parse(reply.text, len(items), self.spec.structured)
        cost = self.spec.cost(reply.tokens_in, reply.tokens_out)
        share.raw = scrub(reply.text, self.secrets)
        share.set(reply.tokens_in, reply.tokens_out, last_latency[0], cost)
        calls.append(CallLog(call_id, self.spec.judge_id, req.digest(self.spec.provider), len(items), attempts,
                             "ok" if len(verdicts) == len(items) else "unparsed", None,
                             reply.tokens_in, reply.tokens_out, last_latency[0], cost))
        return verdicts, share, None


class _Share:
    """One call's tokens, latency and cost, divided among the items it judged."""

    def __init__(self, call_id: str, n: int):
        self.call_id, self.n, self.raw = call_id, n, None
        self.tokens_in = self.tokens_out = self.latency_ms = self.cost_usd = None

    def set(self, tokens_in, tokens_out, latency_ms, cost_usd) -> None:
        self.tokens_in = None if tokens_in is None else round(tokens_in / self.n)
        self.tokens_out = None if tokens_out is None else round(tokens_out / self.n)
        self.latency_ms, self.cost_usd = latency_ms, cost_usd / self.n

    def costs(self) -> dict:
        return {"call_id": self.call_id, "tokens_in": self.tokens_in, "tokens_out": self.tokens_out,
                "latency_ms": self.latency_ms, "cost_usd": self.cost_usd}
