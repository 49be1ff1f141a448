"""What the offline judges read in an answer: the text without generation junk, its normal form,
the spatial facts it states (side, level, depth, centricity), its yes/no polarity, and the
`spatial-rules` verdict built on them. The `spatial-rules` judge and the `learned` judge's
features both use them."""

from __future__ import annotations

import re

_JUNK = re.compile(r"</s>|<\|eot_id\|>|<\|im_end\|>|<\|endoftext\|>|###")
_PUNCT = re.compile(r"[^\w\s]")
_ARTICLES = re.compile(r"\b(the|a|an)\b")


def clean(text: str) -> str:
    """The answer without end-of-sequence tokens and '###' separators some models emit."""
    return _JUNK.sub(" ", text).strip()


def normalise(text: str) -> str:
    text = _PUNCT.sub(" ", clean(text).lower())
    return " ".join(_ARTICLES.sub(" ", text).split())


DIMENSIONS: dict[str, dict[str, re.Pattern]] = {
    "side": {
        "bilateral": re.compile(r"\b(bilateral(ly)?|both (sides|lungs|hemithora\w*|hila|kidneys|adrenals?|"
                                r"lobes|hemidiaphragms|breasts|axillae)|on each side)\b"),
        "left": re.compile(r"\bleft\b"),
        "right": re.compile(r"\bright\b"),
    },
    "level": {
        "upper": re.compile(r"\b(upper|superior|apex|apical|apices|cranial|top)\b"),
        "middle": re.compile(r"\b(middle|mid|lingula\w*)\b"),
        "lower": re.compile(r"\b(lower|inferior|basal|base|bases|caudal|bottom)\b"),
    },
    "depth": {
        "anterior": re.compile(r"\b(anterior(ly)?|ventral|front)\b"),
        "posterior": re.compile(r"\b(posterior(ly)?|dorsal|back|dependent)\b"),
    },
    "centricity": {
        "central": re.compile(r"\b(central(ly)?|medial(ly)?|midline|hilar|perihilar|mediastinal)\b"),
        "peripheral": re.compile(r"\b(peripheral(ly)?|lateral(ly)?|subpleural)\b"),
    },
}
_YES = re.compile(r"^(yes|yeah|present|there (is|are))\b")
_NO = re.compile(r"^(no|none|not|absent|negative|there (is|are) no)\b")
YES_NO_QUESTION = re.compile(r"^(is|are|was|were|does|do|did|has|have|had|can|could|should|will|would)\b")
CHOICE = re.compile(r"\b(or|which|where|what)\b")
NEGATION = re.compile(r"\b(no|not|without|absent|none|negative for|free of|unremarkable)\b")


def spatial_facts(text: str) -> dict[str, frozenset[str]]:
    lowered = clean(text).lower()
    facts = {}
    for dimension, values in DIMENSIONS.items():
        found = {value for value, pattern in values.items() if pattern.search(lowered)}
        if dimension == "side":
            if "bilateral" in found or {"left", "right"} <= found:
                found = {"bilateral"}
        if found:
            facts[dimension] = frozenset(found)
    return facts


def polarity(text: str, is_reference: bool) -> bool | None:
    lowered = clean(text).lower().lstrip(" ,.")
    if _YES.match(lowered):
        return True
    if _NO.match(lowered):
        return False
    if is_reference:
        # Reference answers are sentences ("No pleural effusion is seen."): a negation word anywhere
        # makes a negative finding; otherwise the sentence asserts one.
        return not NEGATION.search(lowered)
    return None


def spatial_verdict(question: str, answer: str, prediction: str) -> tuple[bool | None, str]:
    """(verdict, why). None when the answers share no fact the rules can compare."""
    if not clean(prediction):
        return False, "empty prediction"
    q = question.strip().lower()
    # A plain yes/no question; "Is it in one or both lungs?" and "..., and if so, where?" ask for a place.
    yes_no = bool(YES_NO_QUESTION.match(q)) and not CHOICE.search(q)
    agreements, conflicts = [], []
    if YES_NO_QUESTION.match(q):
        ref_pol, pred_pol = polarity(answer, True), polarity(prediction, False)
        if ref_pol is not None and pred_pol is not None:
            (agreements if ref_pol == pred_pol else conflicts).append("polarity")
    ref, pred = spatial_facts(answer), spatial_facts(prediction)
    for dimension in ref.keys() & pred.keys():
        (agreements if ref[dimension] == pred[dimension] else conflicts).append(dimension)
    if conflicts:
        return False, "conflicting " + ", ".join(conflicts)
    missing = sorted(ref.keys() - pred.keys())
    if missing and not yes_no and not agreements:
        # A where-question answered with no part of the reference's location. (Also rejecting
        # answers that give the side but not the level lowered kappa on the tune half.)
        return False, "prediction states none of the reference's " + ", ".join(missing)
    if agreements:
        return True, "agreeing " + ", ".join(agreements)
    return None, "no comparable spatial fact"


RULES_VERSION = "spatial-rules-v2"       # bump with every rule change: it is part of the judge's identity
