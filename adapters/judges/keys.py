"""API keys come from the environment or a Prefect Secret block, and nowhere else. Only the
*name* of where a key lives is ever recorded."""

from __future__ import annotations

import os

from adapters.judges.spec import JudgeSpec

DEFAULT_KEY_ENV = {
    "openai": ("OPENAI_API_KEY",),
    "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
    "dashscope": ("DASHSCOPE_API_KEY",),
    "dashscope-compatible": ("DASHSCOPE_API_KEY",),
    "openai-compatible": ("OPENAI_COMPATIBLE_API_KEY",),
}


class MissingKey(RuntimeError):
    pass


def api_key(spec: JudgeSpec) -> str:
    if spec.api_key_secret:
        from prefect.blocks.system import Secret

        return Secret.load(spec.api_key_secret).get()
    names = (spec.api_key_env,) if spec.api_key_env else DEFAULT_KEY_ENV.get(spec.provider, ())
    for name in names:
        if os.environ.get(name):
            return os.environ[name]
    if spec.provider == "openai-compatible":
        return "not-needed"          # local servers (vLLM, llama.cpp, Ollama) usually take any key
    raise MissingKey(f"judge {spec.name!r}: no API key; set {' or '.join(names)} "
                     f"(or api_key_env / api_key_secret in the judges file)")


def check_keys(specs) -> None:
    """Fail before anything is sent or stored when any judge lacks its key, naming all of them."""
    problems = []
    for spec in specs:
        if spec.offline:
            continue
        try:
            api_key(spec)
        except MissingKey as exc:
            problems.append(str(exc))
    if problems:
        raise MissingKey("; ".join(problems))
