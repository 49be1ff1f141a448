"""The CT-CHAT adapter against a fake CT-CHAT + CT-CLIP checkout (tests/fake_models/ctchat: the
upstream module paths, class names and call signatures, a tiny transformers Llama inside, recording
what it is handed). What this proves: the adapter's side of the interface — the recipe array that
reaches CTViT (shape, dtype, range, where the patient's left is), the CTViT device patch on CPU, the
shims, the exact prompt and image-token layout, the generation settings, decoding, the variant's
differences and the refusal to answer when the image does not reach the model. It does not prove
the real repositories run under our stack (they are not on this machine)."""

from __future__ import annotations

import json
import sys

import duckdb
import numpy as np
import pytest
import torch

from adapters.models.base import AdapterError, AdapterSettings, ModelInput, Question
from adapters.models.ctchat import CTChat
from adapters.models.preprocess import build, left_side
from adapters.models.recipes import RECIPES
from tasks.volumes import decode
from tests.test_recipes import half_of
from tests.tiny_llava import CTCHAT_CODE, build_tiny_ctchat
from tests.volume_factory import left_lesion_ras, save
from tests.worker_env import crash_hang_then_retry, family_envs  # noqa: F401  (family_envs: a fixture)

QUESTIONS = [Question("q1", "Is the lesion in the left or the right lung?"), Question("q2", "Which lobe contains the nodule?")]

# the fake checkout's llama3 template (tests/fake_models/ctchat/CT-CHAT/llava/conversation.py)
SYSTEM = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nFake CT-CHAT system prompt; "
          "a CT volume is indicated by the <provided> token.")
USER, ASSISTANT, SEP = ("<|start_header_id|>user<|end_header_id|>\n\n",
                        "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>")


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return build_tiny_ctchat(tmp_path_factory.mktemp("ctchat"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Both recipes' arrays for an L,P,S-stored volume with a bright rod on the patient's left."""
    folder = tmp_path_factory.mktemp("vol")
    volume = decode(save(folder / "v.nii.gz", left_lesion_ras(), "LPS"))
    out = {}
    for name in ("ctchat", "ctchat-upstream-harness"):
        recipe = RECIPES[name]
        arr = build(recipe, volume)["arr"]
        path = folder / f"{name}.npy"
        np.save(path, arr)
        out[name] = (ModelInput("v", name, recipe.version, path, arr.shape, str(arr.dtype), recipe.left),
                     left_side(recipe, volume))
    return out


def records(folder, component):
    path = folder / f"{component}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def adapter(ckpt, **options):
    a = CTChat(AdapterSettings(checkpoint=str(ckpt), code_dir=str(CTCHAT_CODE), options={"max_new_tokens": 4, **options}))
    a.load()
    return a


def test_official_volume_prompt_generation_and_decoding(ckpt, inputs, tmp_path, monkeypatch):
    monkeypatch.setenv("CTSVQA_FAKE_RECORD", str(tmp_path))
    model_input, (axis, end) = inputs["ctchat"]
    a = adapter(ckpt)
    try:
        answers = a.answer(model_input, QUESTIONS)
        tok = a.tokenizer
        provenance = a.provenance()
    finally:
        a.close()
    assert "llava" not in sys.modules and "transformer_maskgit" not in sys.modules     # close() forgot the checkout

    # CTViT: the recipe's volume once per call, as [1, 1, 240, 480, 480] float32 in [-1, 1], on the CPU
    (vit,) = records(tmp_path, "ctvit")
    assert vit["shape"] == [1, 1, 240, 480, 480] and vit["dtype"] == "torch.float32" and vit["device"] == "cpu"
    assert -1.0 <= vit["min"] < vit["max"] <= 1.0 and vit["return_encoded_tokens"] is True
    # the patient's left: high H in the recipe array (axis 2 of (1, D, H, W)) = axis 1 of CTViT's (t, h, w) grid
    assert (axis, end) == (2, "high")
    means = np.load(tmp_path / "ctvit_patch_means_0.npy")
    assert means.shape == (24, 24, 24)
    assert half_of(means >= means.max() - 0.05 * (means.max() - means.min()), axis=1) == "high"

    # the prompt: the checkout's llama3 template, "<image>\n <provided>" + question, one -200
    prompts = records(tmp_path, "tokenizer_image_token")
    assert [p["prompt"] for p in prompts] == [
        f"{SYSTEM}{SEP}{USER}<image>\n <provided>{q.question}{SEP}{ASSISTANT}" for q in QUESTIONS]
    assert all(p["ids"].count(-200) == 1 and p["image_token_index"] == -200 for p in prompts)

    calls = records(tmp_path, "generate")
    assert len(calls) == 2
    for call, p in zip(calls, prompts):
        assert call["input_ids"] == [p["ids"]]
        assert call["images"] == {"shape": [1, 24, 24, 24, 512], "dtype": "torch.float32", "device": "cpu"}
        assert call["image_sizes"] == [24 * 24 * 24 * 512]
        assert call["kwargs"] == {"do_sample": False, "num_beams": 1, "max_new_tokens": 4, "use_cache": True}

    # decoded text is the generated ids, special tokens skipped (official); 256 embeddings per image
    outputs = [r["output_ids"][0] for r in records(tmp_path, "generated")]
    for ans, out, p in zip(answers, outputs, prompts):
        assert ans.status == "ok" and ans.text == tok.decode(out, skip_special_tokens=True).strip()
        assert ans.meta["new_tokens"] == len(out) and ans.meta["input_embeddings"] == len(p["ids"]) - 1 + 256
    assert len({a.text for a in answers}) == 2                   # the question reached the model too

    assert provenance["code"]["ctchat"]["sha256"] and provenance["code"]["ctclip"]["sha256"]
    assert provenance["checkpoint"]["model"]["sha256"] and provenance["checkpoint"]["ct_clip"]["size"] > 0
    assert provenance["recipe"] == "ctchat@1" and provenance["dtype"] is None
    assert any("ct_clip stubbed" in s for s in provenance["shims"])
    assert any("torch.device('cuda') -> cpu" in s for s in provenance["shims"])
    assert [r["model_name"] for r in records(tmp_path, "load_pretrained_model")] == ["llava"]


def test_upstream_harness_variant_differs_where_it_should_and_keeps_the_image(ckpt, inputs, tmp_path, monkeypatch):
    official = CTChat(AdapterSettings(checkpoint=str(ckpt), code_dir=str(CTCHAT_CODE)))
    harness = CTChat(AdapterSettings(checkpoint=str(ckpt), code_dir=str(CTCHAT_CODE),
                                     options={"variant": "upstream-harness"}))
    assert (official.recipe, harness.recipe) == ("ctchat", "ctchat-upstream-harness")
    g0, g1 = official.generation(), harness.generation()
    assert {k for k in g0 if g0[k] != g1[k]} == {"prompt", "max_new_tokens", "decode", "image_token"}
    assert "not reproduced" in g1["image_token"] and "ADDED" not in g0["image_token"]
    assert (g0["max_new_tokens"], g1["max_new_tokens"]) == (512, 128)
    assert g1["prompt"]["user"] == "<image>\n{question}"
    assert official.identity() != harness.identity()
    with pytest.raises(AdapterError, match="variant must be one of"):
        CTChat(AdapterSettings(options={"variant": "nope"}))

    monkeypatch.setenv("CTSVQA_FAKE_RECORD", str(tmp_path))
    a = adapter(ckpt, variant="upstream-harness")
    try:
        (ans,) = a.answer(inputs["ctchat-upstream-harness"][0], QUESTIONS[:1])
        tok = a.tokenizer
    finally:
        a.close()
    (p,) = records(tmp_path, "tokenizer_image_token")
    assert p["prompt"] == f"{SYSTEM}{SEP}{USER}<image>\n{QUESTIONS[0].question}{SEP}{ASSISTANT}"
    assert p["ids"].count(-200) == 1 and ans.meta["input_embeddings"] == len(p["ids"]) - 1 + 256
    (out,) = [r["output_ids"][0] for r in records(tmp_path, "generated")]
    assert ans.text == tok.decode(out).strip()                   # the harness kept special tokens


@pytest.mark.parametrize("where,reason", [("prompt", "carries 0 image tokens"), ("model", "expected")])
def test_an_answer_without_the_image_is_refused(ckpt, inputs, tmp_path, monkeypatch, where, reason):
    """A template that loses <image> (the upstream harness's defect), or a model that ignores the
    image: no text is stored, the question fails with the reason."""
    monkeypatch.setenv("CTSVQA_FAKE_RECORD", str(tmp_path))
    monkeypatch.setenv("CTSVQA_FAKE_DROP_IMAGE", where)
    a = adapter(ckpt)
    try:
        answers = a.answer(inputs["ctchat"][0], QUESTIONS)
    finally:
        a.close()
    assert all(x.status == "error" and x.text is None and "image did not reach the model" in x.reason
               and reason in x.reason for x in answers)
    assert len(records(tmp_path, "generate")) == (0 if where == "prompt" else 2)


def test_missing_code_or_weights_is_one_clear_line(ckpt, tmp_path):
    reqs = {r.what: r for r in CTChat.requirements(AdapterSettings(code_dir=str(tmp_path), checkpoint=str(tmp_path)))}
    assert not reqs["code CT-CHAT"].found and "ibrahimethemhamamci/CT-CHAT" in reqs["code CT-CHAT"].detail
    assert "33c9b973" in reqs["code CT-CHAT"].detail and "--code-dir" in reqs["code CT-CHAT"].detail
    assert not reqs["code CT-CLIP"].found and "a2a155c6" in reqs["code CT-CLIP"].detail
    assert not reqs["weights model/"].found and "ibrahimhamamci/CT-RATE" in reqs["weights model/"].detail
    with pytest.raises(AdapterError) as err:
        CTChat(AdapterSettings(checkpoint=str(ckpt))).load()
    assert "\n" not in str(err.value) and "no --code-dir given" in str(err.value)
    # a LoRA folder needs its base LLM
    lora = tmp_path / "lora"
    (lora / "model").mkdir(parents=True)
    for f in ("config.json", "adapter_config.json"):
        (lora / "model" / f).write_text("{}")
    reqs = {r.what: r for r in CTChat.requirements(AdapterSettings(code_dir=str(CTCHAT_CODE), checkpoint=str(lora)))}
    assert not reqs["weights base/"].found and "Meta-Llama-3.1-8B-Instruct" in reqs["weights base/"].detail


def test_ctchat_answers_through_ctsvqa_infer(prefect_server, family_envs, ckpt, tmp_path, capsys):
    family_envs("ctchat")      # runs in a worker in the family env, as a user's run does
    from adapters.datasets.phantom import generate
    from flows.cli import main
    from tasks.upstream_import import import_upstream

    generate(tmp_path / "ph", 1, 13, "small")
    db = tmp_path / "wh.duckdb"
    import_upstream(tmp_path / "ph", db)
    args = ["infer", "--model", "ctchat", "--code-dir", str(CTCHAT_CODE), "--checkpoint", str(ckpt),
            "--limit-volumes", "1", "--batch-size", "8", "--option", "max_new_tokens=3", "--db", str(db)]
    assert main(args) == 0, capsys.readouterr().err
    con = duckdb.connect(str(db), read_only=True)
    try:
        (n_q,) = con.execute("SELECT count(*) FROM questions").fetchone()
        preds = con.execute("SELECT p.status, p.text, p.provenance, r.config FROM predictions p JOIN runs r "
                            "USING (run_id) WHERE r.name = 'ctchat'").fetchall()
    finally:
        con.close()
    assert len(preds) == n_q and all(status == "ok" and text is not None for status, text, _, _ in preds)
    provenance, config = json.loads(preds[0][2]), json.loads(preds[0][3])
    assert provenance["recipe"] == "ctchat@1"
    assert config["identity"]["code"]["ctchat"]["sha256"] and config["identity"]["checkpoint"]["model"]["sha256"]


def test_a_lora_folder_goes_through_the_builders_lora_branch_with_its_base(ckpt, tmp_path, monkeypatch):
    """As the harness calls it: model name 'llava-lora' and the base LLM folder (the fake builder stops
    there: its LoRA merge needs peft and real weights)."""
    import shutil

    lora = tmp_path / "lora"
    (lora / "model").mkdir(parents=True)
    shutil.copy(ckpt / "model" / "config.json", lora / "model" / "config.json")
    (lora / "model" / "adapter_config.json").write_text("{}")
    shutil.copytree(ckpt / "model", lora / "base")
    shutil.copy(ckpt / "ct_clip.pt", lora / "ct_clip.pt")
    monkeypatch.setenv("CTSVQA_FAKE_RECORD", str(tmp_path / "rec"))
    with pytest.raises(AdapterError, match="cannot load CT-CHAT .*LoRA branch"):
        CTChat(AdapterSettings(checkpoint=str(lora), code_dir=str(CTCHAT_CODE))).load()
    (call,) = records(tmp_path / "rec", "load_pretrained_model")
    assert call["model_name"] == "llava-lora" and call["model_base"] == str(lora / "base")
    assert call["model_path"] == str(lora / "model") and call["device"] == "cpu"
    assert "llava" not in sys.modules                           # a failed load forgets the checkout too


@pytest.mark.parametrize("root", ["ctchat/CT-CHAT", "vila-m3/VILA"])
def test_fakes_honour_the_injected_crash(root):
    import subprocess

    path = CTCHAT_CODE.parent / root / "llava" / "_fake_record.py"
    code = ("import importlib.util as u; s = u.spec_from_file_location('r', %r); m = u.module_from_spec(s); "
            "s.loader.exec_module(m); m.fault()" % str(path))
    env = {"CTSVQA_FAKE_FAULT": "crash", "PATH": "/usr/bin:/bin"}
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=60).returncode == 3


def test_a_crash_and_a_hang_in_the_worker_fail_only_those_questions(family_envs, ckpt, tmp_path, monkeypatch):
    family_envs("ctchat")
    crash_hang_then_retry(tmp_path, monkeypatch, "ctchat", CTCHAT_CODE, ckpt, {"max_new_tokens": 3})
