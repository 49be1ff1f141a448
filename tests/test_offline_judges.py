"""The offline judges on hand-picked answer pairs."""

from __future__ import annotations

import asyncio

import pytest

from adapters.judges.offline import ExactJudge, SbertJudge, normalise, spatial_facts, spatial_verdict
from adapters.judges.prompts import Item
from adapters.judges.spec import JudgeSpec


@pytest.mark.parametrize("question, answer, prediction, expected", [
    ("Which side is the nodule on?", "On the left side.", "Left", True),
    ("Which side is the nodule on?", "On the left side.", "right side", False),
    ("Where is the effusion?", "Bilateral pleural effusion.", "In both lungs", True),
    ("Where is the effusion?", "Bilateral pleural effusion.", "left", False),
    ("Where is the nodule?", "In the right upper lobe.", "Right lower lobe", False),      # level conflicts
    ("Where is the nodule?", "In the right upper lobe.", "the right upper lobe", True),
    ("Is there pleural effusion?", "No pleural effusion was observed.", "No.###</s>", True),
    ("Is there pleural effusion?", "No pleural effusion was observed.", "Yes", False),
    ("Is the aorta dilated?", "Yes, the ascending aorta measures 45 mm.", "yes", True),
    ("Where is the hernia?", "Posterior to the heart.", "anterior", False),
    ("Is the lesion central or peripheral?", "It is peripheral, subpleural.", "central", False),
    ("Where is the nodule?", "In the right upper lobe.", "Yes", False),                     # no spatial fact
    ("Where is the nodule?", "In the right upper lobe.", "", False),                        # empty answer
    ("What is the size of the heart?", "Heart size is normal.", "Normal", None),            # nothing to compare
    ("Is the nodule present, and if so, where?", "Yes, in the right upper lobe.", "In the lung", False),
])
def test_spatial_rules(question, answer, prediction, expected):
    assert spatial_verdict(question, answer, prediction)[0] is expected


def test_left_and_right_together_are_bilateral():
    assert spatial_facts("nodules in the left upper lobe and the right lower lobe")["side"] == {"bilateral"}


def test_exact_normalisation():
    assert normalise("The Left side.</s>") == normalise("left side") == "left side"
    outcomes, calls = asyncio.run(ExactJudge(JudgeSpec("exact", "exact", "exact-v1")).judge(
        [Item("q", "Left side.", "left side###"), Item("q", "Left side.", "Left")]))
    assert [o.verdict for o in outcomes] == [True, False] and calls == []


def test_sbert_uses_the_real_embedding_model():
    judge = SbertJudge(JudgeSpec("sbert", "sbert", "all-MiniLM-L6-v2", options={"threshold": 0.6}))
    outcomes, _ = asyncio.run(judge.judge([
        Item("Is there a hypodense lesion in the liver?", "Hypodense hepatic lesion present.",
             "There is a hypodense lesion in the liver."),
        Item("Is the heart normal?", "Hypodense hepatic lesion present.", "The heart is normal in size."),
        Item("q", "Left.", "</s>"),
    ]))
    assert [o.verdict for o in outcomes] == [True, False, False]
    assert "cosine" in outcomes[0].reason and outcomes[2].reason == "empty prediction"


def test_every_offline_provider_has_a_judge_class():
    from adapters.judges import NATIVE_CLIENTS, OFFLINE_JUDGES, _load
    from adapters.judges.spec import LLM_PROVIDERS, OFFLINE_PROVIDERS

    assert sorted(OFFLINE_JUDGES) == sorted(OFFLINE_PROVIDERS)
    assert set(NATIVE_CLIENTS) <= set(LLM_PROVIDERS)
    for where in [*OFFLINE_JUDGES.values(), *NATIVE_CLIENTS.values()]:
        assert callable(getattr(_load(where), "judge", None) or getattr(_load(where), "complete", None))
