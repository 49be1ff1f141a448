"""The shared-prefix engine (adapters/models/shared_prefix.py) on the tiny native models, in float32
on CPU: several volumes decoded together, each volume's prefix KV held once per slot, against plain
per-question `model.generate` on the full prompt.

The layout is chosen to reach every path: 2 slots x 3 rows for 3 volumes (so slots refill while
others decode), a volume with more questions than a slot has rows (its prefix copied to a second
slot), suffixes of different lengths, a token cap per question (rows finish at different steps), a
first volume with a shorter prefix than the next (the stores grow once the slots drain), and
split-K over 16-key chunks of the prefix."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from adapters.models import prefix_batch
from adapters.models.base import AdapterSettings, ModelInput
from adapters.models.shared_prefix import EngineSettings, SharedPrefixEngine, Timing
from tests.test_native_models import (  # noqa: F401  (fixtures)
    ADAPTERS, checkpoints, model_input, phantom, questions, reference,
)

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py

LAYOUT = {"volumes_per_batch": 2, "rows_per_volume": 3, "split_k": 16}


def volumes(phantom, recipe: str) -> list[ModelInput]:
    """Three different volumes from the phantom's recipe input: its first half of the slices (shorter
    prefix), all slices, and all slices upside down."""
    whole = model_input(phantom, recipe)
    with np.load(whole.path) as z:
        slices = z["slices"]
    out = []
    flipped = slices[::-1, ::-1].copy()
    for name, arr in (("short", slices[:len(slices) // 2]), ("whole", slices), ("flipped", flipped)):
        path = phantom[2] / f"{recipe}-{name}.npz"
        np.savez(path, slices=arr)
        out.append(ModelInput(name, recipe, whole.version, path, arr.shape, "uint8", ""))
    return out


@pytest.fixture(scope="module")
def adapters(checkpoints):
    out = {}
    for name, (cls, _) in ADAPTERS.items():
        adapter = cls(AdapterSettings(checkpoint=str(checkpoints[name]), options=LAYOUT))
        adapter.load()
        out[name] = adapter
    return out


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_many_volumes_in_shared_slots_equal_per_question_generate(name, adapters, phantom):
    adapter = adapters[name]
    qs = questions(phantom)
    mis = volumes(phantom, adapter.recipe)
    items = [(mis[0], qs[:2]), (mis[1], qs[:5]), (mis[2], qs[2:6])]
    caps = [[3, 9], [12, 1, 7, 4, 10], [6, 11, 2, 8]]
    timing = Timing()
    engine = adapter.engine()
    assert engine.settings == EngineSettings(slots=2, rows=3, split_k=16, cuda_graph=False)
    results = engine.run(adapter.jobs(items, caps), adapter.greedy_settings(), timing)
    prefix_lens = [adapter.encode(mi, q[:1]).prefix_len for mi, q in items]
    assert prefix_lens[0] < prefix_lens[1]                     # the stores had to grow after the first volume
    assert engine.prefix_len >= prefix_lens[1] and engine.kv.lengths["full"] % 16 == 0
    base = adapter.greedy_settings()
    for (mi, vqs), vcaps, decoded in zip(items, caps, results):
        images = adapter.images(mi)
        for q, cap, d in zip(vqs, vcaps, decoded):
            settings = dataclasses.replace(base, max_new_tokens=cap)
            assert d.tokens == reference(adapter, images, q, settings)[1], (mi.volume, q.qid)
            assert len(d.tokens) == cap or d.stopped == "eos"
    assert timing.steps >= 12 and timing.prefix > 0 and timing.decode > 0
    # the same volume and question in two calls (other neighbours, other slots) answers the same
    again = adapter.answer_many([(mis[2], qs[3:4]), (mis[0], qs[:1])], max_new=[[11], [3]])
    assert [a.meta["new_tokens"] for a, in again] == [len(results[2][1].tokens), len(results[0][0].tokens)]
    tok = adapter.processor.tokenizer
    assert again[0][0].text == tok.decode(results[2][1].tokens, skip_special_tokens=True).strip()


def test_empty_slots_and_repetition_penalty_stay_exact(adapters, phantom):
    """One volume in a 2-slot engine (the other slot empty: its rows see no prefix key at all) with
    min_new_tokens, a repetition penalty and an early EOS."""
    adapter = adapters["medgemma"]
    mi = volumes(phantom, adapter.recipe)[2]
    qs = questions(phantom)[:2]
    images = adapter.images(mi)
    first = reference(adapter, images, qs[0], dataclasses.replace(adapter.greedy_settings(), max_new_tokens=6))[1]
    settings = prefix_batch.GreedySettings(max_new_tokens=10, min_new_tokens=2, repetition_penalty=1.3,
                                           eos_token_ids=(first[3],), pad_token_id=0)
    engine = SharedPrefixEngine(adapter.model, prefix_batch.FAMILIES["gemma3"], EngineSettings(slots=2, rows=2))
    decoded = engine.run(adapter.jobs([(mi, qs)], [[10, 10]]), settings)[0]
    for q, d in zip(qs, decoded):
        assert d.tokens == reference(adapter, images, q, settings)[1]
    assert any(d.stopped == "eos" for d in decoded)


def test_a_volume_that_cannot_be_read_fails_only_its_questions(adapters, phantom, tmp_path):
    adapter = adapters["lingshu"]
    good = volumes(phantom, adapter.recipe)[0]
    bad = dataclasses.replace(good, volume="bad", path=tmp_path / "gone.npz")
    qs = questions(phantom)[:2]
    out = adapter.answer_many([(bad, qs), (good, qs)])
    assert [a.status for a in out[0]] == ["error", "error"] and "gone.npz" in out[0][0].reason
    assert [a.status for a in out[1]] == ["ok", "ok"] and out[1][0].meta["volumes"] == 2
    ids = {str(adapter.identity()), str(type(adapter)(AdapterSettings(checkpoint=adapter.settings.checkpoint))
                                          .identity())}
    assert len(ids) == 2                                        # the engine layout is part of the identity


def test_refilled_slots_around_a_busy_one_stay_exact(adapters, phantom):
    """Slots 0 and 2 free up while slot 1 still decodes: the next two volumes' suffixes run in one
    forward over slots 0-2, slot 1's row riding along on pad tokens; every answer stays exact."""
    adapter = adapters["medgemma"]
    mis = volumes(phantom, adapter.recipe)
    qs = questions(phantom)
    items = [(mis[1], qs[0:1]), (mis[2], qs[1:2]), (mis[1], qs[2:3]), (mis[2], qs[3:4]), (mis[1], qs[5:6])]
    caps = [[2], [12], [2], [5], [6]]
    engine = SharedPrefixEngine(adapter.model, prefix_batch.FAMILIES["gemma3"], EngineSettings(slots=3, rows=1))
    results = engine.run(adapter.jobs(items, caps), adapter.greedy_settings())
    base = adapter.greedy_settings()
    for (mi, (q,)), (cap,), (d,) in zip(items, caps, results):
        settings = dataclasses.replace(base, max_new_tokens=cap)
        assert d.tokens == reference(adapter, adapter.images(mi), q, settings)[1], (mi.volume, q.qid)


CAP = 7


def decode_capped(adapter, mi, qs):
    """One volume's questions through the engine, each capped at CAP new tokens."""
    return adapter.engine().run(adapter.jobs([(mi, qs)], [[CAP] * len(qs)]), adapter.greedy_settings())[0]


def assert_equal_to_generate(adapter, mi, qs, decoded):
    settings = dataclasses.replace(adapter.greedy_settings(), max_new_tokens=CAP)
    images = adapter.images(mi)
    for q, d in zip(qs, decoded):
        assert d.tokens == reference(adapter, images, q, settings)[1], q.qid


def test_compiled_prefill_layers_answer_the_same_and_leave_the_layers_eager(adapters, phantom):
    """compile_prefill (MedGemma's default on CUDA): the prefix runs through torch.compile'd decoder
    layers (inductor's CPU code here); the answers equal per-question generate, and outside the
    prefix the layers are the eager ones again."""
    from torch._dynamo.utils import counters

    adapter = adapters["medgemma"]
    lm = adapter.model.model.language_model
    mi = volumes(phantom, adapter.recipe)[1]
    qs = questions(phantom)[:3]
    adapter.settings.options["compile_prefill"] = True
    try:
        adapter.prepare_model()
        assert adapter.generation()["compile_prefill"] is True
        assert all("_ctsvqa_prefill_forward" in layer.__dict__ for layer in lm.layers)
        graphs = counters["stats"]["unique_graphs"]
        decoded = decode_capped(adapter, mi, qs)
        assert counters["stats"]["unique_graphs"] > graphs                     # the compiled forwards ran
        assert not any("forward" in layer.__dict__ for layer in lm.layers)      # and were swapped out again
        assert_equal_to_generate(adapter, mi, qs, decoded)
    finally:
        adapter.settings.options.pop("compile_prefill")
        adapter.prepare_model()
    assert not any("_ctsvqa_prefill_forward" in layer.__dict__ for layer in lm.layers)


def test_gpu_image_processing_needs_a_gpu(adapters):
    adapter = adapters["medgemma"]
    adapter.settings.options["image_device"] = "gpu"
    try:
        with pytest.raises(Exception, match="image_device=gpu needs --device cuda"):
            adapter.generation()
    finally:
        adapter.settings.options.pop("image_device")
    assert adapter.generation()["image_device"] == "cpu"


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_slices_as_one_uint8_tensor_give_the_processor_the_same_pixels(name, adapters, phantom):
    """image_device=gpu hands the processor the slices as uint8 (3, H, W) tensors cut from one stack
    (copied to the GPU at once) instead of PIL images; on CPU the two inputs give identical prefixes."""
    adapter = adapters[name]
    mi = volumes(phantom, adapter.recipe)[1]
    qs = questions(phantom)[:2]
    images = adapter.images(mi)
    texts = adapter.prompts_for(len(images), qs)
    special = prefix_batch.bos_adds_special(adapter.processor, texts[0])
    stack = torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2)
    from_pil = prefix_batch.encode(adapter.processor, texts, images, add_special_tokens=special)
    from_tensors = prefix_batch.encode(adapter.processor, texts, list(stack), add_special_tokens=special)
    assert from_pil.suffixes == from_tensors.suffixes
    assert from_pil.prefix.keys() == from_tensors.prefix.keys()
    for k, v in from_pil.prefix.items():
        assert torch.equal(v, from_tensors.prefix[k]), k


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_only_the_question_tails_are_tokenized_and_the_ids_equal_whole_prompts(name, adapters, phantom):
    """prefix_batch.question_ids tokenizes each prompt's text after the shared head's last added
    token (the image tokens are in the head); the ids equal tokenizing every prompt whole, and a
    first prompt whose ids do not match that split makes it tokenize everything whole."""
    adapter = adapters[name]
    processor = adapter.processor
    mi = volumes(phantom, adapter.recipe)[1]
    images = adapter.images(mi)
    texts = adapter.prompts_for(len(images), questions(phantom)[:4])
    special = prefix_batch.bos_adds_special(processor, texts[0])
    first = processor(text=[texts[0]], images=[images], return_tensors="pt", add_special_tokens=special,
                      return_text_replacement_offsets=True)
    replacements = [o["replacement"] for o in first.pop("text_replacement_offsets")[0] if o["type"] == "image"]
    whole = [list(processor.tokenizer(processor.get_text_with_replacements([t], replacements)[0][0],
                                      add_special_tokens=special)["input_ids"]) for t in texts]
    seen: list[int] = []

    class Recording:
        tokenizer = type("Tok", (), {
            "__call__": lambda self, text, **kw: (seen.append(len(text)), processor.tokenizer(text, **kw))[1],
            "get_added_vocab": lambda self: processor.tokenizer.get_added_vocab()})()
        get_text_with_replacements = staticmethod(processor.get_text_with_replacements)

    ids = prefix_batch.question_ids(Recording(), texts, replacements, special, first["input_ids"][0].tolist())
    assert ids == whole
    assert len(seen) == len(texts) and 4 * max(seen) < min(map(len, texts))     # tails only
    seen.clear()
    assert prefix_batch.question_ids(Recording(), texts, replacements, special, [0]) == whole
    assert len(seen) == 2 * len(texts)                           # the split did not check out: whole prompts


def test_answer_stream_hands_volumes_back_as_they_finish_and_reads_its_items_lazily(adapters, phantom):
    """`answer_stream` (what `ctsvqa infer` runs for the native models): 2 slots, six volumes read
    from a generator; a volume comes back when its rows are done (a long one after shorter ones
    loaded later), before the generator is exhausted, with the answers `answer_many` gives."""
    adapter = adapters["medgemma"]
    mis = volumes(phantom, adapter.recipe)
    qs = questions(phantom)[:2]
    items = [(mis[i % 3], qs) for i in range(6)]
    caps = [[2, 2], [9, 9], [2, 2], [3, 3], [2, 2], [2, 2]]
    consumed: list[int] = []

    def lazily():
        for n, item in enumerate(items):
            consumed.append(n)
            yield item

    streamed, read_at_first = {}, None
    for i, answers in adapter.answer_stream(lazily(), max_new=caps):
        read_at_first = len(consumed) if read_at_first is None else read_at_first
        streamed[i] = [(a.text, a.meta["new_tokens"]) for a in answers]
    assert read_at_first < len(items)
    assert list(streamed).index(2) < list(streamed).index(1)          # 2 tokens a row finish before 9
    together = adapter.answer_many(items, max_new=caps)
    assert streamed == {i: [(a.text, a.meta["new_tokens"]) for a in per] for i, per in enumerate(together)}


def test_fused_vision_gelu_answers_the_same_and_can_be_undone(adapters, phantom):
    """fuse_vision_gelu (MedGemma's default on CUDA): the vision MLPs run their first linear and
    tanh GELU as one op; the answers equal per-question generate, and turning it off restores the
    model's own MLPs."""
    from adapters.models.vision_fusion import fused

    adapter = adapters["medgemma"]
    tower = adapter.model.model.vision_tower
    layers = adapter.model.config.vision_config.num_hidden_layers
    mi = volumes(phantom, adapter.recipe)[1]
    qs = questions(phantom)[:3]
    assert fused(tower) == 0
    adapter.settings.options["fuse_vision_gelu"] = True
    try:
        adapter.prepare_model()
        assert adapter.generation()["fuse_vision_gelu"] is True
        assert fused(tower) == layers
        assert_equal_to_generate(adapter, mi, qs, decode_capped(adapter, mi, qs))
    finally:
        adapter.settings.options.pop("fuse_vision_gelu")
        adapter.prepare_model()
    assert fused(tower) == 0 and adapter.generation()["fuse_vision_gelu"] is False


def test_fused_vision_gelu_is_refused_for_a_tower_without_such_an_mlp(adapters):
    adapter = adapters["lingshu"]                # Qwen2.5-VL's vision MLP is gated SiLU
    adapter.settings.options["fuse_vision_gelu"] = True
    try:
        with pytest.raises(Exception, match="fuse_vision_gelu: the vision tower has no fc1 -> tanh GELU -> fc2"):
            adapter.prepare_model()
    finally:
        adapter.settings.options.pop("fuse_vision_gelu")
        adapter.prepare_model()
