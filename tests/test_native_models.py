"""The native transformers adapters (MedGemma, Lingshu) on tiny random-weight checkpoints built
from configs (tests/tiny_vlms.py), loaded through the real from_pretrained path, answering
questions about a real phantom volume's recipe input.

The core check: the prefix-shared batched decoder gives exactly the greedy tokens of plain
per-question `model.generate` on the full prompt (the processor's own output), in float32 on CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adapters.datasets.phantom import generate as generate_phantoms
from adapters.models import prefix_batch
from adapters.models.base import AdapterError, AdapterSettings, ModelInput, Question
from adapters.models.lingshu import Lingshu
from adapters.models.medgemma import MedGemma
from adapters.models.preprocess import build
from adapters.models.recipes import RECIPES
from tasks.volumes import decode
from tests.tiny_vlms import build_tiny_lingshu, build_tiny_medgemma

ADAPTERS = {"medgemma": (MedGemma, build_tiny_medgemma), "lingshu": (Lingshu, build_tiny_lingshu)}


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@pytest.fixture(scope="session")
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("native-phantom")
    case = generate_phantoms(root / "ph", 1, 5, "small")[0]
    return case, decode(case.path), root


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("native-ckpt")
    return {name: builder(root / name) for name, (_, builder) in ADAPTERS.items()}


def model_input(phantom, recipe: str) -> ModelInput:
    case, volume, root = phantom
    path = root / f"{recipe}.npz"
    if not path.exists():
        np.savez(path, **build(RECIPES[recipe], volume))
    with np.load(path) as z:
        shape = z["slices"].shape
    return ModelInput(case.volume, recipe, RECIPES[recipe].version, path, shape, "uint8", "")


@pytest.fixture(scope="session")
def loaded(checkpoints):
    out = {}
    for name, (cls, _) in ADAPTERS.items():
        adapter = cls(AdapterSettings(checkpoint=str(checkpoints[name])))
        adapter.load()
        out[name] = adapter
    return out


def questions(phantom) -> list[Question]:
    """The phantom's own questions plus a short and a long one: suffixes of different lengths."""
    case = phantom[0]
    qs = [Question(f"q{i}", q["question"]) for i, q in enumerate(case.qa[:4])]
    return qs + [Question("short", "Left?"),
                 Question("long", "Considering every slice from the lung apices down to the diaphragm, on which "
                                  "side of the patient is the largest nodule, and in which lobe is it?")]


def reference(adapter, images, question: Question, settings: prefix_batch.GreedySettings) -> tuple[list[int], list[int]]:
    """Plain transformers: the processor on the full single-question prompt, then `model.generate`."""
    text = adapter.prompts_for(len(images), [question])[0]
    full = adapter.processor(text=[text], images=[images], return_tensors="pt",
                             add_special_tokens=prefix_batch.bos_adds_special(adapter.processor, text))
    with torch.inference_mode():
        out = adapter.model.generate(**full, do_sample=False, max_new_tokens=settings.max_new_tokens,
                                     min_new_tokens=settings.min_new_tokens, eos_token_id=list(settings.eos_token_ids),
                                     repetition_penalty=settings.repetition_penalty)
    prompt = full["input_ids"][0].tolist()
    return prompt, out[0, len(prompt):].tolist()


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_prefix_shared_batch_equals_per_question_generate(name, loaded, phantom):
    adapter = loaded[name]
    mi = model_input(phantom, adapter.recipe)
    qs = questions(phantom)
    images = adapter.images(mi)
    encoded = adapter.encode(mi, qs)
    assert len({len(s) for s in encoded.suffixes}) > 2            # really different lengths, padded
    family = prefix_batch.FAMILIES[adapter.family]
    settings = prefix_batch.GreedySettings(**{**adapter.greedy_settings().__dict__, "max_new_tokens": 12})
    decoded, _ = prefix_batch.generate(adapter.model, family, encoded, settings)
    assert len({tuple(d.tokens) for d in decoded}) > 1             # the tiny model's answers depend on the question
    for q, suffix, d in zip(qs, encoded.suffixes, decoded):
        prompt, tokens = reference(adapter, images, q, settings)
        # the shared prefix + this suffix is exactly the processor's prompt for this question
        assert encoded.prefix["input_ids"][0].tolist() + suffix == prompt
        assert d.tokens == tokens, q.qid

    # Rows stopping at different steps: a token the first answer emits early becomes the EOS;
    # with min_new_tokens and a repetition penalty, as generate applies them.
    stop = decoded[0].tokens[2]
    settings = prefix_batch.GreedySettings(max_new_tokens=12, min_new_tokens=2, repetition_penalty=1.3,
                                           eos_token_ids=(stop,), pad_token_id=settings.pad_token_id)
    decoded, _ = prefix_batch.generate(adapter.model, family, encoded, settings)
    assert any(d.stopped == "eos" for d in decoded) and len({len(d.tokens) for d in decoded}) > 1
    for q, d in zip(qs, decoded):
        assert d.tokens == reference(adapter, images, q, settings)[1], q.qid
        assert (d.stopped == "eos") == (d.tokens[-1] == stop) and stop not in d.tokens[:2]


@pytest.mark.parametrize("name,variant", [("medgemma", "official"), ("lingshu", "upstream-harness")])
def test_answer_meta_and_determinism(name, variant, checkpoints, phantom):
    adapter = ADAPTERS[name][0](AdapterSettings(checkpoint=str(checkpoints[name]),
                                                options={"variant": variant, "max_new_tokens": 16}))
    adapter.load()
    assert adapter.recipe.endswith("-upstream-harness") == (variant == "upstream-harness")
    mi = model_input(phantom, adapter.recipe)
    assert mi.shape[0] == RECIPES[adapter.recipe].n_slices or mi.shape[0] < RECIPES[adapter.recipe].n_slices
    qs = questions(phantom)[:3]
    first = adapter.answer(mi, qs)
    second = adapter.answer(mi, list(reversed(qs)))
    assert [a.qid for a in first] == [q.qid for q in qs]
    by_qid = {a.qid: a.text for a in second}
    assert all(a.status == "ok" and a.text == by_qid[a.qid] for a in first)
    for a in first:
        assert a.meta["new_tokens"] >= 1 and a.meta["stopped"] in ("eos", "max_new_tokens")
        assert a.meta["seconds"] > 0 and a.meta["batch"] == 3 and a.meta["prefix_tokens"] > 0
        assert "<start_of_turn>" not in a.text and "<|im_end|>" not in a.text


def test_missing_checkpoint_says_what_to_download(tmp_path):
    with pytest.raises(AdapterError, match=r"google/medgemma-1\.5-4b-it.*--checkpoint"):
        MedGemma(AdapterSettings(checkpoint=str(tmp_path / "nope"))).load()
    with pytest.raises(AdapterError, match=r"Health AI Developer Foundations"):
        MedGemma(AdapterSettings()).load()
    with pytest.raises(AdapterError, match=r"lingshu-medical-mllm/Lingshu-7B.*--checkpoint"):
        Lingshu(AdapterSettings(checkpoint=str(tmp_path))).load()


def test_requirements_and_unreadable_checkpoint(checkpoints, tmp_path):
    found = {r.what: r.found for r in MedGemma.requirements(AdapterSettings(checkpoint=str(checkpoints["medgemma"])))}
    assert found["config"] and found["weights"] and found["processor"] and found["tokenizer"]
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in checkpoints["lingshu"].iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(AdapterError, match=r"cannot load Qwen2_5_VLForConditionalGeneration.*broken"):
        Lingshu(AdapterSettings(checkpoint=str(broken))).load()
    found = {r.what: r.found for r in Lingshu.requirements(AdapterSettings(checkpoint=str(tmp_path)))}
    assert not found["weights"] and not found["config"]


def test_identity_follows_generation_settings_and_variant(checkpoints):
    ck = str(checkpoints["medgemma"])
    base = MedGemma(AdapterSettings(checkpoint=ck))
    harness = MedGemma(AdapterSettings(checkpoint=ck, options={"variant": "upstream-harness"}))
    shorter = MedGemma(AdapterSettings(checkpoint=ck, options={"max_new_tokens": 64}))
    assert base.recipe == "medgemma" and harness.recipe == "medgemma-upstream-harness"
    assert harness.generation()["max_new_tokens"] == 512 and harness.generation()["min_new_tokens"] == 4
    assert harness.generation()["prompt"]["name"] == "ctsvqa-harness-v1"
    ids = [str(a.identity()) for a in (base, harness, shorter)]
    assert len(set(ids)) == 3
    assert str(base.identity()) == str(MedGemma(AdapterSettings(checkpoint=ck)).identity())
    assert Lingshu(AdapterSettings(options={"variant": "upstream-harness"})).recipe == "lingshu-upstream-harness"
    assert Lingshu().generation()["max_new_tokens"] == 256
    with pytest.raises(AdapterError, match="variant"):
        MedGemma(AdapterSettings(options={"variant": "nope"}))


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_equality_check_has_teeth(name, loaded, phantom):
    """Positions off by one (what counting the pads would do) change the greedy tokens; on Gemma,
    so does ignoring the sliding window (the prefix is ~10x the tiny model's 48-token window)."""
    adapter = loaded[name]
    encoded = adapter.encode(model_input(phantom, adapter.recipe), questions(phantom))
    settings = prefix_batch.GreedySettings(**{**adapter.greedy_settings().__dict__, "max_new_tokens": 12})
    family = prefix_batch.FAMILIES[adapter.family]
    right, _ = prefix_batch.generate(adapter.model, family, encoded, settings)

    class Shifted(type(family)):
        def position_ids(self, state, real):
            return super().position_ids(state, real + 1)

    shifted, _ = prefix_batch.generate(adapter.model, Shifted(), encoded, settings)
    assert [d.tokens for d in shifted] != [d.tokens for d in right]
    if adapter.family == "gemma3":
        text_config = adapter.model.config.get_text_config()
        assert encoded.prefix_len > 4 * text_config.sliding_window
        window, text_config.sliding_window = text_config.sliding_window, 10 ** 6
        try:
            unwindowed, _ = prefix_batch.generate(adapter.model, family, encoded, settings)
        finally:
            text_config.sliding_window = window
        assert [d.tokens for d in unwindowed] != [d.tokens for d in right]


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_eager_attention_also_exact(name, checkpoints, phantom):
    """Eager attention takes additive float masks instead of SDPA's boolean ones."""
    adapter = ADAPTERS[name][0](AdapterSettings(checkpoint=str(checkpoints[name]),
                                                options={"attn_implementation": "eager"}))
    adapter.load()
    assert adapter.model.config._attn_implementation == "eager"
    mi = model_input(phantom, adapter.recipe)
    qs = questions(phantom)[-3:]
    images = adapter.images(mi)
    settings = prefix_batch.GreedySettings(**{**adapter.greedy_settings().__dict__, "max_new_tokens": 8})
    decoded, _ = prefix_batch.generate(adapter.model, prefix_batch.FAMILIES[adapter.family],
                                       adapter.encode(mi, qs), settings)
    assert [d.tokens for d in decoded] == [reference(adapter, images, q, settings)[1] for q in qs]


def test_slices_reach_the_processor_as_published(phantom, checkpoints):
    """MedGemma's notebook sends each slice as a PIL-default JPEG; the harness scripts (and Lingshu)
    hand over the uint8 arrays losslessly."""
    official = MedGemma(AdapterSettings(checkpoint=str(checkpoints["medgemma"])))
    harness = Lingshu(AdapterSettings(checkpoint=str(checkpoints["lingshu"])))
    for adapter, lossless in ((official, False), (harness, True)):
        mi = model_input(phantom, adapter.recipe)
        with np.load(mi.path) as z:
            slices = z["slices"]
        images = adapter.images(mi)
        assert len(images) == len(slices) and all(im.mode == "RGB" for im in images)
        diff = np.abs(np.stack([np.asarray(im) for im in images]).astype(int) - slices.astype(int))
        assert (diff.max() == 0) == lossless and diff.mean() < 15     # JPEG q75, 4:2:0 chroma: ~6 levels here
    bad = phantom[2] / "bad.npz"
    np.savez(bad, slices=np.zeros((2, 8, 8), np.float32))
    with pytest.raises(AdapterError, match=r"bad\.npz.*uint8 \(N, H, W, 3\)"):
        official.images(ModelInput("v", "medgemma", "1", bad, (2, 8, 8), "float32", ""))
