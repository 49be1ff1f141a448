"""Judge configuration: a judges file (YAML) names a panel and its judges; `paper` and `offline`
are bundled presets. A judge's identity — what its judgments and cached verdicts are keyed by — is
provider + model + prompt version + decoding settings + endpoint, never its display name or its
rate limits: the same model name on two servers is two judges."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from adapters.judges.heads import head_sha256, loo_sha256
from adapters.judges.prompts import load_prompt

PRESETS_DIR = Path(__file__).resolve().parent / "presets"
LLM_PROVIDERS = ("openai", "openai-compatible", "gemini", "dashscope", "dashscope-compatible")
OFFLINE_PROVIDERS = ("exact", "spatial-rules", "sbert", "learned")
DEFAULT_PROMPT = "radiologist-yesno-v1"

# Where each provider's client sends requests when the judges file names no base_url: the
# environment variable the client (or we) read, else the provider's public endpoint.
ENDPOINT_ENV = {"openai": "OPENAI_BASE_URL", "gemini": "GOOGLE_GEMINI_BASE_URL",
                "dashscope": "DASHSCOPE_HTTP_BASE_URL", "dashscope-compatible": "DASHSCOPE_COMPATIBLE_BASE_URL"}
DEFAULT_ENDPOINT = {"openai": "https://api.openai.com/v1",
                    "gemini": "https://generativelanguage.googleapis.com",
                    "dashscope": "https://dashscope.aliyuncs.com/api/v1",
                    "dashscope-compatible": "https://dashscope.aliyuncs.com/compatible-mode/v1"}
_API_VERSION = re.compile(r"/v\d+(alpha|beta)?\d*$")


class JudgeConfigError(ValueError):
    pass


@dataclass(frozen=True)
class JudgeSpec:
    name: str
    provider: str
    model: str
    prompt: str | None = None
    temperature: float | None = 0.0
    max_tokens: int | None = 512
    structured: bool = True
    system_prompt: bool = True
    base_url: str | None = None
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    max_concurrency: int = 4
    timeout_s: float = 60.0
    max_attempts: int = 6
    price_per_1m_input: float = 0.0
    price_per_1m_output: float = 0.0
    api_key_env: str | None = None          # name of the variable holding the key, never the key
    api_key_secret: str | None = None       # name of a Prefect Secret block holding the key
    options: dict[str, Any] = field(default_factory=dict)
    # One verdict per distinct (question, reference, prediction), reused for every run and question that
    # has it (the verdict cache). False judges every (run, question) on its own, as the upstream scripts
    # did: what to set to reproduce published files item for item. A verdict's `source` ('cache' or
    # 'judge') records which it was; the setting itself is no part of the judge's identity (the same
    # judge, prompt and settings give the verdict either way), so both kinds of verdict are one judge's.
    share_verdicts: bool = True

    @property
    def offline(self) -> bool:
        return self.provider in OFFLINE_PROVIDERS

    @property
    def endpoint(self) -> str | None:
        """The normalised URL this judge's requests go to (None for offline judges)."""
        if self.offline:
            return None
        url = self.base_url or os.environ.get(ENDPOINT_ENV.get(self.provider, "")) or DEFAULT_ENDPOINT.get(
            self.provider)
        return normalise_url(url) if url else None

    def identity_settings(self) -> dict[str, Any]:
        """Everything that can change a verdict. Rates, prices, timeouts and keys cannot. The
        provider's public endpoint is left implicit, so judges of real APIs keep their ids."""
        if self.provider == "learned":
            # the head's content, not where it lies, can change a verdict
            settings = {"options": {k: v for k, v in self.options.items() if k != "head"},
                        "head_sha256": head_sha256(self)}
            if loo := loo_sha256(self):
                settings["leave_one_out_sha256"] = loo
            return settings
        if self.offline:
            return {"options": self.options}
        settings = {"temperature": self.temperature, "max_tokens": self.max_tokens, "structured": self.structured,
                    "system_prompt": self.system_prompt, "options": self.options}
        endpoint = self.endpoint
        if endpoint != DEFAULT_ENDPOINT.get(self.provider):
            settings["endpoint"] = endpoint
        return settings

    @property
    def judge_id(self) -> str:
        digest = hashlib.sha256(json.dumps(self.identity_settings(), sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.provider}/{self.model}/{self.prompt or 'rules'}/{digest}"

    def cost(self, tokens_in: int | None, tokens_out: int | None) -> float:
        return ((tokens_in or 0) * self.price_per_1m_input + (tokens_out or 0) * self.price_per_1m_output) / 1e6

    def public_settings(self) -> dict[str, Any]:
        """What the warehouse records about the judge (no secrets, only the names of where they live)."""
        return {**{k: v for k, v in asdict(self).items() if k not in ("name",)}, "endpoint": self.endpoint}


def normalise_url(url: str) -> str:
    """One spelling per endpoint: lower-case scheme and host, no default port, no trailing slash."""
    parts = urlsplit(url.strip())
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    port = parts.port
    netloc = host if port is None or (scheme, port) in (("http", 80), ("https", 443)) else f"{host}:{port}"
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    return urlunsplit((scheme, netloc, parts.path.rstrip("/"), parts.query, ""))


@dataclass(frozen=True)
class Panel:
    name: str
    description: str | None
    judges: tuple[JudgeSpec, ...]
    source: str

    def ref(self) -> dict[str, Any]:
        """The panel as loaded and checked, as a flow parameter: the flow does not read the file again."""
        return asdict(self)

    @classmethod
    def from_ref(cls, ref: dict[str, Any]) -> "Panel":
        return cls(ref["name"], ref.get("description"), tuple(JudgeSpec(**j) for j in ref["judges"]), ref["source"])


_FIELDS = set(JudgeSpec.__dataclass_fields__)


def _spec(raw: Any, where: str) -> JudgeSpec:
    if not isinstance(raw, dict):
        raise JudgeConfigError(f"{where}: each judge must be a mapping, got {raw!r}")
    unknown = set(raw) - _FIELDS
    if unknown:
        raise JudgeConfigError(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(_FIELDS)}")
    for required in ("name", "provider", "model"):
        if not raw.get(required):
            raise JudgeConfigError(f"{where}: field {required!r} is required")
    provider = raw["provider"]
    if provider not in LLM_PROVIDERS + OFFLINE_PROVIDERS:
        raise JudgeConfigError(f"{where}: provider {provider!r} is not one of {list(LLM_PROVIDERS + OFFLINE_PROVIDERS)}")
    values = dict(raw)
    if provider in LLM_PROVIDERS:
        values.setdefault("prompt", DEFAULT_PROMPT)
        try:
            load_prompt(values["prompt"])
        except FileNotFoundError:
            raise JudgeConfigError(f"{where}: unknown prompt {values['prompt']!r}") from None
    else:
        values["prompt"] = None
    if provider == "openai-compatible" and not values.get("base_url"):
        raise JudgeConfigError(f"{where}: provider openai-compatible needs a base_url")
    if values.get("base_url") is not None:
        url = str(values["base_url"])
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
            raise JudgeConfigError(f"{where}: base_url {url!r} is not an http(s) URL")
        if provider == "gemini" and _API_VERSION.search(urlsplit(url).path.rstrip("/")):
            raise JudgeConfigError(f"{where}: a gemini base_url is the bare host, e.g. "
                                   f"https://generativelanguage.googleapis.com (google-genai adds /v1beta), "
                                   f"not {url!r}")
    if provider == "learned" and (values.get("options") or {}).get("leave_one_out"):
        # its verdict depends on the run (a head per run): never one verdict for two runs
        if values.get("share_verdicts") is True:
            raise JudgeConfigError(f"{where}: a learned judge with options.leave_one_out scores each run with "
                                   f"its own head, so it cannot share verdicts between runs: drop share_verdicts")
        values["share_verdicts"] = False
    try:
        spec = JudgeSpec(**values)
    except TypeError as exc:
        raise JudgeConfigError(f"{where}: {exc}") from None
    if not isinstance(spec.share_verdicts, bool):
        raise JudgeConfigError(f"{where}: share_verdicts must be true or false, not {spec.share_verdicts!r}")
    if spec.max_concurrency < 1 or spec.max_attempts < 1:
        raise JudgeConfigError(f"{where}: max_concurrency and max_attempts must be at least 1")
    return spec


def load_panel(judges: str | Path) -> Panel:
    """`judges` is a preset name (paper, offline) or the path of a YAML judges file."""
    path = Path(judges)
    if not path.is_file():
        preset = PRESETS_DIR / f"{judges}.yaml"
        if not preset.is_file():
            known = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
            raise JudgeConfigError(f"{judges!r} is neither a judges file nor a preset ({', '.join(known)})")
        path = preset
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise JudgeConfigError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("judges"), list) or not data["judges"]:
        raise JudgeConfigError(f"{path}: expected a mapping with a non-empty 'judges' list")
    specs = tuple(_spec(raw, f"{path}: judges[{i}]") for i, raw in enumerate(data["judges"]))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise JudgeConfigError(f"{path}: judge names must be unique, got {names}")
    seen: dict[str, str] = {}
    for spec in specs:
        if spec.judge_id in seen:
            raise JudgeConfigError(
                f"{path}: judges {seen[spec.judge_id]!r} and {spec.name!r} are the same judge ({spec.judge_id}: "
                f"same provider, model, prompt, settings and endpoint {spec.endpoint}); their verdicts would "
                f"be mixed up: change one or drop it")
        seen[spec.judge_id] = spec.name
    return Panel(str(data.get("panel") or path.stem), data.get("description"), specs, str(path))
