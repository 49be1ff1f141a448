"""An LLM judge: render the prompt for a batch, call the provider under the judge's limits, parse
strictly, and ask again — one item per call — for every item the reply did not settle. Each
item's outcome is handed on the moment it is known, so none waits for the rest of its batch."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from adapters.judges.base import ChatReply, ChatRequest, Outcome, ProviderError, Stopped, scrub, with_retries
from adapters.judges.limiter import AGAIN, FIRST, JudgeLimiter
from adapters.judges.prompts import DID_NOT_PARSE, NOT_IN_REPLY, Item, Prompt, looks_cut
from adapters.judges.spec import JudgeSpec


class ChatClient(Protocol):
    async def complete(self, req: ChatRequest) -> ChatReply: ...


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


OutcomeFn = Callable[[int, Outcome], None]      # (0-based position in the batch, outcome)
CallFn = Callable[[CallLog], None]
TRUNCATED = {"length", "max_tokens", "MAX_TOKENS"}


class LLMJudge:
    def __init__(self, spec: JudgeSpec, client: ChatClient, prompt: Prompt, limiter: JudgeLimiter,
                 secrets: tuple[str, ...] = ()):
        self.spec, self.client, self.prompt, self.limiter, self.secrets = spec, client, prompt, limiter, secrets

    @property
    def batch_size(self) -> int:
        return self.prompt.batch_size

    def halt(self) -> None:
        """Send nothing more (Ctrl-C); calls already sent finish and are reported."""
        self.limiter.halt()

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

    async def judge(self, items: Sequence[Item], on_outcome: OutcomeFn | None = None,
                    on_call: CallFn | None = None) -> tuple[list[Outcome | None], list[CallLog]]:
        """Judge a batch. Each item's outcome is reported through `on_outcome` as soon as it is
        known (the batch's reply settles most; the rest are asked again, alone, concurrently), and
        each call through `on_call` as soon as it ends. Raises Stopped when interrupted: items not
        yet reported have no outcome, and are asked for on the next run."""
        calls: list[CallLog] = []
        outcomes: list[Outcome | None] = [None] * len(items)

        def settle(i: int, outcome: Outcome) -> None:
            outcomes[i] = outcome
            if on_outcome is not None:
                on_outcome(i, outcome)

        def log_call(call: CallLog) -> None:
            calls.append(call)
            if on_call is not None:
                on_call(call)

        verdicts, reasons, share, failure = await self._ask(items, log_call, FIRST)
        if failure is not None and not (failure.status == "blocked" and len(items) > 1):
            reason = scrub(str(failure), self.secrets)
            for i in range(len(items)):
                settle(i, Outcome(None, failure.status, reason, call_id=share.call_id))
            return outcomes, calls
        for pos, verdict in verdicts.items():
            settle(pos - 1, Outcome(verdict, "ok", raw=share.raw, **share.costs()))
        unsettled = [i for i in range(len(items)) if outcomes[i] is None]
        if len(items) == 1 and unsettled:
            if share.truncated:                # cut off: worth one more try
                settle(0, await self._alone(items[0], log_call, share))
            else:
                settle(0, _unsettled(reasons.get(1), share))
            return outcomes, calls

        async def again(i: int) -> None:
            settle(i, await self._alone(items[i], log_call, share if failure is None else None,
                                        reasons.get(i + 1)))

        # Every re-ask runs to its end (or its own Stopped) before this returns: none is left behind.
        for result in await asyncio.gather(*(again(i) for i in unsettled), return_exceptions=True):
            if isinstance(result, BaseException):
                raise result
        return outcomes, calls

    async def _alone(self, item: Item, log_call: CallFn, previous: "_Share | None",
                     batch_reason: str | None = None) -> Outcome:
        """Ask about one item on its own (once more if that reply is cut off too)."""
        for _ in range(2):
            verdicts, reasons, single, failure = await self._ask([item], log_call, AGAIN)
            if failure is not None:
                return Outcome(None, failure.status, scrub(str(failure), self.secrets), call_id=single.call_id)
            if 1 in verdicts:
                return Outcome(verdicts[1], "ok", raw=single.raw, **single.costs())
            if not single.truncated:
                break
        reason = reasons.get(1)
        if batch_reason is not None or previous is not None and previous.n > 1:
            reason = f"{reason}, also when asked alone"
        return _unsettled(reason, single, NOT_IN_REPLY if batch_reason == NOT_IN_REPLY else None)

    async def _ask(self, items: Sequence[Item], log_call: CallFn, priority: int):
        req = self.request(items)
        estimated_in, estimated_out = self.forecast_tokens(items, req)
        call_id = uuid.uuid4().hex
        last_latency = [None]
        sent = [0]

        async def attempt(number: int) -> ChatReply:
            # The first attempt of a batch waits its turn; retries go before waiting first attempts.
            async with self.limiter.slot(estimated_in + estimated_out, priority if number == 1 else AGAIN):
                sent[0] += 1
                t0 = time.perf_counter()
                try:
                    return await self.client.complete(req)
                finally:
                    last_latency[0] = 1000 * (time.perf_counter() - t0)

        share = _Share(call_id, len(items))
        digest = req.digest(self.spec.provider)
        try:
            reply, attempts = await with_retries(attempt, self.spec.max_attempts, lambda: self.limiter.halted)
        except ProviderError as exc:
            log_call(CallLog(call_id, self.spec.judge_id, digest, len(items), getattr(exc, "attempts", 1),
                             exc.status, scrub(str(exc), self.secrets), None, None, last_latency[0], 0.0))
            return {}, {}, share, exc
        except (Stopped, asyncio.CancelledError) as exc:
            if sent[0]:                        # attempts were made (and failed or were cut short): log them
                last = getattr(exc, "last_error", None)
                log_call(CallLog(call_id, self.spec.judge_id, digest, len(items), sent[0], "interrupted",
                                 scrub(f"interrupted after: {last}" if last else "interrupted", self.secrets),
                                 None, None, last_latency[0], 0.0))
            raise
        verdicts, reasons = self.prompt.read(reply.text, len(items), self.spec.structured)
        cost = self.spec.cost(reply.tokens_in, reply.tokens_out)
        share.raw = scrub(reply.text, self.secrets)
        share.truncated = len(verdicts) < len(items) and (reply.finish_reason in TRUNCATED or looks_cut(reply.text))
        if share.truncated:
            reasons = {i: f"reply cut off (finish_reason {reply.finish_reason})" for i in reasons}
        share.set(reply.tokens_in, reply.tokens_out, last_latency[0], cost)
        log_call(CallLog(call_id, self.spec.judge_id, digest, len(items), attempts,
                         "ok" if len(verdicts) == len(items) else "unparsed", None,
                         reply.tokens_in, reply.tokens_out, last_latency[0], cost))
        return verdicts, reasons, share, None


def _unsettled(reason: str | None, share: "_Share", status_reason: str | None = None) -> Outcome:
    """An item the judge's reply did not settle: no_verdict when the judge left it out (also when
    asked alone), unparsed otherwise; the raw reply is kept either way."""
    status = "no_verdict" if status_reason == NOT_IN_REPLY and (reason or "").startswith(NOT_IN_REPLY) \
        else "unparsed"
    return Outcome(None, status, reason or DID_NOT_PARSE, raw=share.raw, **share.costs())


class _Share:
    """One call's tokens, latency and cost, divided among the items it judged."""

    def __init__(self, call_id: str, n: int):
        self.call_id, self.n, self.raw, self.truncated = call_id, n, None, False
        self.tokens_in = self.tokens_out = self.latency_ms = self.cost_usd = None

    def set(self, tokens_in, tokens_out, latency_ms, cost_usd) -> None:
        self.tokens_in = None if tokens_in is None else round(tokens_in / self.n)
        self.tokens_out = None if tokens_out is None else round(tokens_out / self.n)
        self.latency_ms, self.cost_usd = latency_ms, cost_usd / self.n

    def costs(self) -> dict:
        return {"call_id": self.call_id, "tokens_in": self.tokens_in, "tokens_out": self.tokens_out,
                "latency_ms": self.latency_ms, "cost_usd": self.cost_usd}
