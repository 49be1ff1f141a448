"""Judge providers: LLM APIs behind one chat interface, and offline judges."""

from __future__ import annotations

from importlib import import_module

from adapters.judges.base import Judge
from adapters.judges.spec import JudgeSpec

# provider -> (module, class). Imported on first use: a run loads only the client library it calls.
OFFLINE_JUDGES = {
    "exact": ("adapters.judges.offline", "ExactJudge"),
    "spatial-rules": ("adapters.judges.offline", "SpatialRulesJudge"),
    "sbert": ("adapters.judges.offline", "SbertJudge"),
    "learned": ("adapters.judges.learned", "LearnedJudge"),
}
# Every OpenAI-compatible provider (openai, openai-compatible, dashscope-compatible) speaks through
# OpenAIChat, which also takes the provider's name; the two with wire formats of their own:
NATIVE_CLIENTS = {
    "gemini": ("adapters.judges.gemini", "GeminiChat"),
    "dashscope": ("adapters.judges.dashscope_native", "DashScopeChat"),
}


def _load(where: tuple[str, str]):
    module, name = where
    return getattr(import_module(module), name)


def build_judge(spec: JudgeSpec) -> Judge:
    """A ready judge with `batch_size` and `async judge(items) -> (outcomes, calls)`."""
    if spec.offline:
        return _load(OFFLINE_JUDGES[spec.provider])(spec)
    from adapters.judges.keys import api_key
    from adapters.judges.limiter import JudgeLimiter
    from adapters.judges.llm import LLMJudge
    from adapters.judges.prompts import load_prompt

    key = api_key(spec)
    # Always the endpoint the judge's identity names, never one a client library picks on its own.
    if spec.provider in NATIVE_CLIENTS:
        client = _load(NATIVE_CLIENTS[spec.provider])(key, spec.endpoint, spec.timeout_s)
    else:
        from adapters.judges.openai_chat import OpenAIChat

        client = OpenAIChat(spec.provider, key, spec.endpoint, spec.timeout_s)
    limiter = JudgeLimiter(spec.requests_per_minute, spec.tokens_per_minute, spec.max_concurrency)
    return LLMJudge(spec, client, load_prompt(spec.prompt), limiter, secrets=(key,))
