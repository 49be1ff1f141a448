"""Judge providers: LLM APIs behind one chat interface, and offline judges."""

from __future__ import annotations

from adapters.judges.spec import JudgeSpec


def build_judge(spec: JudgeSpec):
    """A ready judge with `batch_size` and `async judge(items) -> (outcomes, calls)`."""
    if spec.provider == "learned":
        from adapters.judges.learned import LearnedJudge

        return LearnedJudge(spec)
    if spec.offline:
        from adapters.judges import offline

        return {"exact": offline.ExactJudge, "spatial-rules": offline.SpatialRulesJudge,
                "sbert": offline.SbertJudge}[spec.provider](spec)
    from adapters.judges.keys import api_key
    from adapters.judges.limiter import JudgeLimiter
    from adapters.judges.llm import LLMJudge
    from adapters.judges.prompts import load_prompt

    key = api_key(spec)
    # Always the endpoint the judge's identity names, never one a client library picks on its own.
    if spec.provider == "gemini":
        from adapters.judges.gemini import GeminiChat

        client = GeminiChat(key, spec.endpoint, spec.timeout_s)
    elif spec.provider == "dashscope":
        from adapters.judges.dashscope_native import DashScopeChat

        client = DashScopeChat(key, spec.endpoint, spec.timeout_s)
    else:
        from adapters.judges.openai_chat import OpenAIChat

        client = OpenAIChat(spec.provider, key, spec.endpoint, spec.timeout_s)
    limiter = JudgeLimiter(spec.requests_per_minute, spec.tokens_per_minute, spec.max_concurrency)
    return LLMJudge(spec, client, load_prompt(spec.prompt), limiter, secrets=(key,))
