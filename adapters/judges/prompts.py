"""Versioned judge prompts (prompts/<version>.yaml): rendering and strict parsing.

Parsing never guesses. A batch reply is matched to its items by the index the judge returns; an
item that is missing, duplicated, out of range or not a JSON boolean gets no verdict here, and the
caller asks for it again on its own."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import yaml

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
_FENCE = re.compile(r"^\s*```[a-zA-Z]*\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL)
_WORD = re.compile(r"^\W*(yes|no)\W*$", re.IGNORECASE)
NOT_IN_REPLY = "not in the reply"
DID_NOT_PARSE = "reply did not parse as a verdict"


@dataclass(frozen=True)
class Item:
    """What a judge sees of one prediction."""

    question: str
    answer: str
    prediction: str
    run: str | None = None         # the run's name, given to judges whose verdict depends on it (no prompt shows it)


@dataclass(frozen=True)
class Prompt:
    version: str
    kind: str                      # 'batch' (indexed JSON list) or 'single' (YES/NO)
    batch_size: int
    system: str | None
    user: str
    item: str | None
    item_separator: str
    schema: dict | None
    expected_output_tokens_per_item: int

    def render(self, items: Sequence[Item]) -> str:
        if self.kind == "single":
            if len(items) != 1:
                raise ValueError(f"prompt {self.version} judges one item per call, got {len(items)}")
            return _fill(self.user, question=items[0].question, answer=items[0].answer,
                         prediction=items[0].prediction)
        lines = [_fill(self.item, k=str(k), question=it.question, answer=it.answer, prediction=it.prediction)
                 for k, it in enumerate(items, start=1)]
        return _fill(self.user, batch=self.item_separator.join(lines))

    def parse(self, text: str | None, n_items: int, structured: bool) -> dict[int, bool]:
        """Verdicts by 1-based item position; positions absent from the result need asking again."""
        return self.read(text, n_items, structured)[0]

    def read(self, text: str | None, n_items: int, structured: bool) -> tuple[dict[int, bool], dict[int, str]]:
        """Verdicts by 1-based item position, and for every other position why it has none:
        NOT_IN_REPLY when the reply parsed but left the item out, else what was wrong."""
        if self.kind == "single":
            verdict = parse_yes_no(text)
            if verdict is not None:
                return {1: verdict}, {}
            return {}, {1: "empty reply" if not text else DID_NOT_PARSE}
        return read_indexed_list(text, n_items)


def _fill(template: str, **values: str) -> str:
    # Plain replacement, not str.format: prompts contain literal JSON braces.
    for key, value in values.items():
        template = template.replace("{" + key + "}", value)
    return template


@lru_cache(maxsize=None)
def load_prompt(version: str) -> Prompt:
    path = PROMPTS_DIR / f"{version}.yaml"
    if not path.is_file():
        raise FileNotFoundError(path)
    raw = yaml.safe_load(path.read_text())
    if raw.get("version") != version:
        raise ValueError(f"{path}: declares version {raw.get('version')!r}")
    return Prompt(version, raw["kind"], int(raw.get("batch_size", 1)), raw.get("system"), raw["user"],
                  raw.get("item"), raw.get("item_separator", "\n"), raw.get("schema"),
                  int(raw.get("expected_output_tokens_per_item", 8)))


def strip_fence(text: str) -> str:
    match = _FENCE.match(text)
    return match.group(1) if match else text.strip()


def parse_yes_no(text: str | None) -> bool | None:
    """Accept a bare YES/NO (any case, surrounding punctuation) or {"verdict": "YES"|"NO"}."""
    if not text:
        return None
    body = strip_fence(text)
    if body.startswith("{"):
        try:
            obj = json.loads(body)
        except json.JSONDecodeError:
            return None
        value = obj.get("verdict") if isinstance(obj, dict) else None
        return {"YES": True, "NO": False}.get(value.upper()) if isinstance(value, str) else None
    match = _WORD.match(body)
    return None if match is None else match.group(1).lower() == "yes"


def looks_cut(text: str | None) -> bool:
    """A JSON reply that stops before it ends (the model ran out of tokens)."""
    body = strip_fence(text or "").strip() if text else ""
    if not body.startswith(("{", "[", "```")):
        return False
    try:
        json.loads(body)
    except json.JSONDecodeError as exc:
        # The parser stopped at (or within a word of) the end, or inside a string never closed.
        return exc.msg != "Extra data" and (len(body) - exc.pos <= 8 or exc.msg.startswith("Unterminated string")
                                            or body.startswith("```"))
    return False


def parse_indexed_list(text: str | None, n_items: int) -> dict[int, bool]:
    return read_indexed_list(text, n_items)[0]


def read_indexed_list(text: str | None, n_items: int) -> tuple[dict[int, bool], dict[int, str]]:
    everything = range(1, n_items + 1)
    if not text:
        return {}, {i: "empty reply" for i in everything}
    try:
        data: Any = json.loads(strip_fence(text))
    except json.JSONDecodeError:
        return {}, {i: DID_NOT_PARSE for i in everything}
    if isinstance(data, dict) and isinstance(data.get("items"), list):
        data = data["items"]
    if not isinstance(data, list):
        return {}, {i: "reply is not a JSON list of verdicts" for i in everything}
    seen: dict[int, list[bool]] = {}
    bad: dict[int, str] = {}
    for element in data:
        if not isinstance(element, dict):
            continue
        index, verdict = element.get("index"), element.get("is_correct")
        if isinstance(index, bool) or not isinstance(index, int) or not 1 <= index <= n_items:
            continue
        if isinstance(verdict, bool):
            seen.setdefault(index, []).append(verdict)
        else:
            bad[index] = f"verdict is not a JSON boolean: {verdict!r}"[:200]
    # An index answered twice is ambiguous even when both answers agree: ask again.
    verdicts = {i: v[0] for i, v in seen.items() if len(v) == 1 and i not in bad}
    reasons = {i: bad.get(i) or ("answered more than once" if i in seen else NOT_IN_REPLY)
               for i in everything if i not in verdicts}
    return verdicts, reasons
