"""The VILA-M3 adapter against a fake VILA + s2wrapper checkout (tests/fake_models/vila-m3: the
upstream module paths, class names and call signatures, tiny transformers Llama and SigLIP inside,
recording what they are handed). What this proves: the adapter's side of the interface — the
transformers-5 shims and module stubs make `import llava` work, the checkpoint's llm/ vision_tower/
mm_projector/ layout is constructed on a CPU, the slice that reaches process_images and the model
(size, value range, where the patient's left is), the Llama-3 template prompt with one <image>, 196
image embeddings, M3Generator's generation settings, decoding, the variant's differences and the
refusal when the image is lost. Not that NVlabs/VILA@355fda9 itself runs under our stack."""

from __future__ import annotations

import json
import sys

import duckdb
import numpy as np
import pytest

from adapters.models.base import AdapterError, AdapterSettings, ModelInput, Question
from adapters.models.preprocess import build, left_side
from adapters.models.recipes import RECIPES
from adapters.models.vila_m3 import VilaM3
from tasks.volumes import decode
from tests.test_recipes import half_of
from tests.tiny_llava import VILA_CODE, build_tiny_vila_m3
from tests.volume_factory import left_lesion_ras, save
from tests.worker_env import crash_hang_then_retry, family_envs  # noqa: F401  (family_envs: a fixture)

QUESTIONS = [Question("q1", "Is the lesion in the left or the right lung?"), Question("q2", "Which lobe contains the nodule?")]
# the fake checkout's llama_3 template (tests/fake_models/vila-m3/VILA/llava/conversation.py)
HEAD = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nFake VILA system prompt for tests.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n")
TAIL = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return build_tiny_vila_m3(tmp_path_factory.mktemp("vila"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Both recipes' slices of an L,P,S-stored volume with a bright rod on the patient's left."""
    folder = tmp_path_factory.mktemp("vol")
    volume = decode(save(folder / "v.nii.gz", left_lesion_ras(), "LPS"))
    out = {}
    for name in ("vila-m3", "vila-m3-upstream-harness"):
        recipe = RECIPES[name]
        arrays = build(recipe, volume)
        path = folder / f"{name}.npz"
        np.savez(path, **arrays)
        out[name] = (ModelInput("v", name, recipe.version, path, arrays["slices"].shape, "uint8", recipe.left),
                     left_side(recipe, volume))
    return out


def records(folder, component):
    path = folder / f"{component}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def adapter(ckpt, **options):
    a = VilaM3(AdapterSettings(checkpoint=str(ckpt), code_dir=str(VILA_CODE), options={"max_new_tokens": 4, **options}))
    a.load()
    return a


def test_official_slice_prompt_generation_and_decoding(ckpt, inputs, tmp_path, monkeypatch):
    monkeypatch.setenv("CTSVQA_FAKE_RECORD", str(tmp_path))
    model_input, (axis, end) = inputs["vila-m3"]
    a = adapter(ckpt)
    try:
        answers = a.answer(model_input, QUESTIONS)
        tok = a.tokenizer
        provenance = a.provenance()
    finally:
        a.close()
    assert "llava" not in sys.modules and "s2wrapper" not in sys.modules and "deepspeed" not in sys.modules

    # the slice: one RGB image of the recipe's size, resized by process_images to SigLIP's 384 px
    (processed,) = records(tmp_path, "process_images")
    assert processed == {"sizes": [[64, 56]], "modes": ["RGB"], "target": [384, 384]}
    pixels = np.load(tmp_path / "pixels_0.npy")                 # the tensor handed to generate
    assert pixels.shape == (1, 3, 384, 384) and -1.0 <= pixels.min() < pixels.max() <= 1.0
    # the patient's left: high W of the (1, H, W, 3) slice = the last axis of (1, 3, 384, 384)
    assert (axis, end) == (2, "high")
    assert half_of(pixels[0, 0] >= pixels[0, 0].max() - 0.05, axis=1) == "high"

    prompts = records(tmp_path, "tokenizer_image_token")
    assert [p["prompt"] for p in prompts] == [f"{HEAD}<image>This is a CT image.\n{q.question}{TAIL}" for q in QUESTIONS]
    assert all(p["ids"].count(-200) == 1 for p in prompts)

    calls = records(tmp_path, "generate")
    assert len(calls) == 2 and all(len(c["images"]) == 1 and c["images"][0]["shape"] == [1, 3, 384, 384] for c in calls)
    assert [c["input_ids"] for c in calls] == [[p["ids"]] for p in prompts]
    assert calls[0]["kwargs"] == {"do_sample": False, "num_beams": 1, "max_new_tokens": 4, "use_cache": True,
                                  "pad_token_id": tok.eos_token_id, "min_new_tokens": 2}
    assert calls[0]["stopping"] == ["KeywordsStoppingCriteria"]
    assert records(tmp_path, "stopping_criteria")[0]["keywords"] == ["<|eot_id|>"]

    outputs = [r["output_ids"][0] for r in records(tmp_path, "generated")]
    for ans, out, p in zip(answers, outputs, prompts):
        assert ans.status == "ok" and ans.text == tok.decode(out, skip_special_tokens=True).strip()
        assert ans.meta["input_embeddings"] == len(p["ids"]) - 1 + 196 and ans.meta["new_tokens"] == len(out)
    assert provenance["code"]["vila"]["sha256"] and provenance["code"]["s2"]["sha256"]
    assert provenance["checkpoint"]["llm"]["sha256"] and provenance["checkpoint"]["mm_projector"]["sha256"]
    assert provenance["recipe"] == "vila-m3@1"
    shims = " ".join(provenance["shims"])
    for name in ("no_init_weights", "is_torch_fx_available", "is_tf_available", "deepspeed.comm stubbed"):
        assert name in shims


def test_upstream_harness_variant_differs_where_it_should(ckpt, inputs, tmp_path, monkeypatch):
    official = VilaM3(AdapterSettings(checkpoint=str(ckpt), code_dir=str(VILA_CODE)))
    harness = VilaM3(AdapterSettings(checkpoint=str(ckpt), code_dir=str(VILA_CODE), options={"variant": "upstream-harness"}))
    assert (official.recipe, harness.recipe) == ("vila-m3", "vila-m3-upstream-harness")
    g0, g1 = official.generation(), harness.generation()
    assert {k for k in set(g0) | set(g1) if g0.get(k) != g1.get(k)} == {
        "prompt", "decoding", "temperature", "top_p", "seed", "max_new_tokens", "stopping"}
    assert (g0["max_new_tokens"], g1["max_new_tokens"], g1["temperature"], g1["top_p"]) == (1024, 256, 0.2, 0.9)
    assert official.identity() != harness.identity()

    monkeypatch.setenv("CTSVQA_FAKE_RECORD", str(tmp_path))
    a = adapter(ckpt, variant="upstream-harness")
    try:
        first = a.answer(inputs["vila-m3-upstream-harness"][0], QUESTIONS[:1])
        again = a.answer(inputs["vila-m3-upstream-harness"][0], QUESTIONS[:1])
    finally:
        a.close()
    (p, _) = records(tmp_path, "tokenizer_image_token")
    assert p["prompt"] == f"{HEAD}<image> {QUESTIONS[0].question}{TAIL}"
    call = records(tmp_path, "generate")[0]
    assert call["kwargs"]["do_sample"] is True and call["kwargs"]["temperature"] == 0.2 and call["kwargs"]["top_p"] == 0.9
    assert call["stopping"] == ["_SuffixStop"]
    assert first[0].status == "ok" and first[0].text == again[0].text          # seeded sampling


@pytest.mark.parametrize("where,reason", [("prompt", "carries 0 image tokens"), ("model", "expected")])
def test_an_answer_without_the_image_is_refused(ckpt, inputs, tmp_path, monkeypatch, where, reason):
    monkeypatch.setenv("CTSVQA_FAKE_RECORD", str(tmp_path))
    monkeypatch.setenv("CTSVQA_FAKE_DROP_IMAGE", where)
    a = adapter(ckpt)
    try:
        answers = a.answer(inputs["vila-m3"][0], QUESTIONS)
    finally:
        a.close()
    assert all(x.status == "error" and x.text is None and "image did not reach the model" in x.reason
               and reason in x.reason for x in answers)


def test_missing_code_or_weights_is_one_clear_line(tmp_path):
    reqs = {r.what: r for r in VilaM3.requirements(AdapterSettings(code_dir=str(tmp_path), checkpoint=str(tmp_path)))}
    assert not reqs["code VILA"].found and "NVlabs/VILA" in reqs["code VILA"].detail
    assert "355fda9114c966cf46af3057e9b977064af08751" in reqs["code VILA"].detail
    assert not reqs["code scaling_on_scales"].found and "9c008a37" in reqs["code scaling_on_scales"].detail
    assert not reqs["weights llm"].found and "MONAI/Llama3-VILA-M3-8B" in reqs["weights llm"].detail
    with pytest.raises(AdapterError) as err:
        VilaM3(AdapterSettings(code_dir=str(VILA_CODE))).load()
    assert "\n" not in str(err.value) and "no --checkpoint given" in str(err.value)
    with pytest.raises(AdapterError, match="variant must be one of"):
        VilaM3(AdapterSettings(options={"variant": "expert"}))


def test_vila_m3_answers_through_ctsvqa_infer(prefect_server, family_envs, ckpt, tmp_path, capsys):
    family_envs("vila-m3")      # runs in a worker in the family env, as a user's run does
    from adapters.datasets.phantom import generate
    from flows.cli import main
    from tasks.upstream_import import import_upstream

    generate(tmp_path / "ph", 1, 13, "small")
    db = tmp_path / "wh.duckdb"
    import_upstream(tmp_path / "ph", db)
    args = ["infer", "--model", "vila-m3", "--code-dir", str(VILA_CODE), "--checkpoint", str(ckpt),
            "--limit-volumes", "1", "--batch-size", "8", "--option", "max_new_tokens=3", "--db", str(db)]
    assert main(args) == 0, capsys.readouterr().err
    con = duckdb.connect(str(db), read_only=True)
    try:
        (n_q,) = con.execute("SELECT count(*) FROM questions").fetchone()
        preds = con.execute("SELECT p.status, p.text, p.provenance, r.config FROM predictions p JOIN runs r "
                            "USING (run_id) WHERE r.name = 'vila-m3'").fetchall()
    finally:
        con.close()
    assert len(preds) == n_q and all(status == "ok" and text is not None for status, text, _, _ in preds)
    provenance, config = json.loads(preds[0][2]), json.loads(preds[0][3])
    assert provenance["recipe"] == "vila-m3@1"
    assert config["identity"]["code"]["vila"]["sha256"] and config["identity"]["checkpoint"]["llm"]["sha256"]


def test_options_are_checked_and_checkout_paths_stay_out_of_the_identity(ckpt):
    with pytest.raises(AdapterError, match=r"unknown option\(s\) max_tokens; known: variant"):
        VilaM3(AdapterSettings(options={"max_tokens": 5}))
    a = VilaM3(AdapterSettings(checkpoint=str(ckpt), options={"vila_code": str(VILA_CODE / "VILA"),
                                                               "s2wrapper_code": str(VILA_CODE / "scaling_on_scales")}))
    b = VilaM3(AdapterSettings(checkpoint=str(ckpt), code_dir=str(VILA_CODE)))
    assert a.identity() == b.identity() and a.identity()["code"]["vila"]["sha256"]
    assert all(r.found for r in VilaM3.requirements(a.settings))


def test_a_crash_and_a_hang_in_the_worker_fail_only_those_questions(family_envs, ckpt, tmp_path, monkeypatch):
    family_envs("vila-m3")
    crash_hang_then_retry(tmp_path, monkeypatch, "vila-m3", VILA_CODE, ckpt, {"max_new_tokens": 3})
