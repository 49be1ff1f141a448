"""The `<im_patch>` adapters (M3D-LaMed, Med3DVLM) against stand-ins of their repositories
(tests/fake_models/m3d, tests/fake_models/med3dvlm: the upstream import roots, class names and call
signatures, a tiny real Phi-3 / Qwen2 under a tiny vision stand-in, recording what `generate` gets)
and tiny checkpoints built here (tests/tiny_impatch.py).

What this proves: the adapters hand the models' documented `generate(images, inputs, **kw)` the
recipe's array unchanged (shape, dtype, axis order, range, the patient's left where the recipe says),
the exact prompt ids and BOS/`<im_patch>` layout the splice needs, the published generation settings
(greedy; the harness's seeded sampling), decode what comes back, and fail in one line naming what to
fetch. What it cannot prove: that the real repositories' code runs (it is not on this machine).
"""

from __future__ import annotations

import json
import shutil
import sys

import duckdb
import numpy as np
import pytest
import torch

from adapters.models.base import AdapterError, AdapterSettings, ModelInput, Question
from adapters.models.impatch import LayoutError, check_generate_compat, question_seed, splice_layout
from adapters.models.m3d import M3D
from adapters.models.med3dvlm import Med3DVLM
from adapters.models.preprocess import build
from adapters.models.recipes import RECIPES
from tasks.volumes import decode
from tests.tiny_impatch import M3D_CODE, MED3DVLM_CODE, build_tiny_m3d, build_tiny_med3dvlm, phi3_tokenizer
from tests.volume_factory import left_lesion_ras, save

from tests.worker_env import crash_hang_then_retry, family_envs  # noqa: F401  (family_envs: a fixture)

N_NEW = 6
QUESTIONS = [Question("q1", "Is the lesion in the left lung?"), Question("q2", "Where is the nodule?"),
             Question("q3", "Which side of the patient is the largest nodule on?")]


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Each recipe's input for an L,P,S-stored volume (CT-RATE's storage) with a bright lesion on the
    patient's left, built by the real recipe code."""
    root = tmp_path_factory.mktemp("impatch-inputs")
    volume = decode(save(root / "left.nii.gz", left_lesion_ras(), "LPS"))
    out = {}
    for name in ("m3d", "m3d-upstream-harness", "med3dvlm", "med3dvlm-upstream-harness"):
        arr = build(RECIPES[name], volume)["arr"]
        np.save(root / f"{name}.npy", arr)
        out[name] = ModelInput("left", name, RECIPES[name].version, root / f"{name}.npy", arr.shape, "float32", "")
    return out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("impatch-ckpt")
    m3d = build_tiny_m3d(root / "m3d")
    nobos = root / "m3d-nobos"                  # the same weights, a tokenizer that adds no BOS
    shutil.copytree(m3d, nobos)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (nobos / f).unlink()
    phi3_tokenizer(add_bos_token=False).save_pretrained(nobos)
    return {"m3d": m3d, "m3d-nobos": nobos, "med3dvlm": build_tiny_med3dvlm(root / "med3dvlm")}


def adapter(cls, checkpoint, **options):
    code = M3D_CODE if cls is M3D else MED3DVLM_CODE
    a = cls(AdapterSettings(checkpoint=str(checkpoint), code_dir=str(code), options={"max_new_tokens": N_NEW, **options}))
    a.load()
    a.model.calls.clear()
    return a


@pytest.fixture(scope="module")
def loaded(checkpoints):
    out = {"m3d": adapter(M3D, checkpoints["m3d"]), "med3dvlm": adapter(Med3DVLM, checkpoints["med3dvlm"])}
    yield out
    for a in out.values():
        a.close()


def digest(arr: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(arr[None].astype(np.float32)).tobytes()).hexdigest()


@pytest.mark.parametrize("name,shape", [("m3d", [1, 1, 32, 256, 256]), ("med3dvlm", [1, 1, 128, 256, 256])])
def test_the_model_gets_the_recipe_array_and_the_documented_prompt(name, shape, loaded, inputs):
    a = loaded[name]
    a.model.calls.clear()
    answers = a.answer(inputs[name], QUESTIONS)
    calls = list(a.model.calls)
    assert [x.qid for x in answers] == [q.qid for q in QUESTIONS] and len(calls) == len(QUESTIONS)
    imp = a.tokenizer.convert_tokens_to_ids("<im_patch>")
    expected = digest(np.load(inputs[name].path))
    for q, ans, call in zip(QUESTIONS, answers, calls):
        img = call["images"]
        # the recipe's (1, D, H, W) array with a batch axis, bit for bit: same axis order and values
        assert img["shape"] == shape and img["dtype"] == "float32" and img["sha256"] == expected
        assert 0.0 <= img["min"] and img["max"] <= 1.0 and img["max"] > 0.9
        # display frame: the lesion on the patient's left is in the high half of W (the last axis)
        d, h, w = img["bright_centroid"]
        assert w > 0.6 and abs(d - 0.5) < 0.1
        ids = call["inputs"][0]
        if name == "m3d":        # exactly one BOS, the 256 placeholders at 1..256, then the question
            assert ids[0] == a.tokenizer.bos_token_id and ids[1:257] == [imp] * 256 and imp not in ids[257:]
            assert a.tokenizer.decode(ids[257:]) == q.question and ans.meta["bos"] == "tokenizer"
        else:                    # Qwen: no BOS, 256 placeholders at 0..255; the splice drops id 256
            assert ids[:256] == [imp] * 256 and imp not in ids[256:] and a.tokenizer.bos_token_id not in ids
            assert a.tokenizer.decode(ids[256:]) == q.question and ans.meta["bos"] == "absent"
            assert ans.meta["overwritten"] == q.question.split()[0]
        assert call["kwargs"] == {"max_new_tokens": N_NEW, "do_sample": False}
        assert call["dropped"] == {}                       # no attention mask the model would ignore
        assert ans.status == "ok" and ans.meta["new_tokens"] == len(call["output"][0]) <= N_NEW
        assert ans.text == a.tokenizer.decode(call["output"][0], skip_special_tokens=True).strip()
        assert ans.meta["image_encodes"] == 1 and ans.meta["batch"] == len(QUESTIONS)
    # the volume went through the vision tower once for the whole call
    assert calls[0]["vision_calls_before"] + 1 == calls[0]["vision_calls_after"] == calls[-1]["vision_calls_after"]
    assert len({x.text for x in answers}) > 1                          # the tiny model answers depend on the question

    # reusing the features changes nothing: plain uncached generate gives the same tokens
    image = torch.tensor(np.load(inputs[name].path)).unsqueeze(0)
    for call in calls:
        out = a.model.generate(image, torch.tensor(call["inputs"]), max_new_tokens=N_NEW, do_sample=False)
        assert out.tolist() == call["output"]
    # and the image matters (so that equality has teeth): other pixels, other answers
    other = [a.model.generate(1 - image, torch.tensor(c["inputs"]), max_new_tokens=N_NEW, do_sample=False).tolist()
             for c in calls]
    assert other != [c["output"] for c in calls]


def test_m3d_puts_exactly_one_bos_before_the_placeholders(checkpoints, inputs):
    """A tokenizer that adds no BOS: the official variant prepends one (the layout the splice is
    written for); the upstream-harness variant tokenizes as the harness did and records it."""
    official = adapter(M3D, checkpoints["m3d-nobos"])
    harness = adapter(M3D, checkpoints["m3d-nobos"], variant="upstream-harness")
    imp = official.tokenizer.convert_tokens_to_ids("<im_patch>")
    bos = official.tokenizer.bos_token_id
    assert official.tokenizer("<im_patch>x")["input_ids"][0] == imp           # really no BOS from the tokenizer
    [ans] = official.answer(inputs["m3d"], QUESTIONS[:1])
    ids = official.model.calls[-1]["inputs"][0]
    assert ans.meta["bos"] == "prepended" and ids[0] == bos and ids[1:257] == [imp] * 256 and ids.count(bos) == 1
    [ans] = harness.answer(inputs["m3d-upstream-harness"], QUESTIONS[:1])
    ids = harness.model.calls[-1]["inputs"][0]
    assert ans.meta["bos"] == "absent" and ids[:256] == [imp] * 256 and bos not in ids
    official.close()
    harness.close()


def test_layout_is_asserted():
    layout = dict(image_token_id=9, n_image_tokens=3, bos_token_id=1)
    assert splice_layout([1, 9, 9, 9, 5], policy="ensure-one", **layout) == ([1, 9, 9, 9, 5], "tokenizer")
    assert splice_layout([9, 9, 9, 5], policy="ensure-one", **layout) == ([1, 9, 9, 9, 5], "prepended")
    assert splice_layout([9, 9, 9, 5], policy="tokenizer", **layout) == ([9, 9, 9, 5], "absent")
    for ids, policy in (([1, 1, 9, 9, 9, 5], "ensure-one"),      # two BOS: the image would land one off
                        ([1, 9, 9, 5], "ensure-one"),            # placeholders missing
                        ([9, 9, 9, 5, 9], "tokenizer")):         # a placeholder in the question
        with pytest.raises(LayoutError):
            splice_layout(ids, policy=policy, **layout)
    with pytest.raises(LayoutError, match="no BOS"):
        splice_layout([9, 9, 9], policy="ensure-one", image_token_id=9, n_image_tokens=3, bos_token_id=None)


def test_a_bad_question_fails_alone(loaded, inputs):
    a = loaded["m3d"]
    answers = a.answer(inputs["m3d"], [Question("bad", "What is <im_patch> here?"), QUESTIONS[0]])
    assert answers[0].status == "error" and "prompt layout" in answers[0].reason and answers[0].text is None
    assert answers[1].status == "ok"


@pytest.mark.parametrize("cls,name", [(M3D, "m3d"), (Med3DVLM, "med3dvlm")])
def test_upstream_harness_variant_differs_where_it_should(cls, name, checkpoints, inputs):
    """Harness: its recipe (stored voxel order, raw-HU min-max), sampling at T=1.0/top_p=0.9 — seeded
    per question here (the harness set no seed), so answers reproduce in any order."""
    a = adapter(cls, checkpoints[name], variant="upstream-harness")
    assert a.recipe == f"{name}-upstream-harness"
    first = a.answer(inputs[a.recipe], QUESTIONS)
    calls = list(a.model.calls)
    again = a.answer(inputs[a.recipe], list(reversed(QUESTIONS))[:2])
    assert {x.qid: x.text for x in again} == {x.qid: x.text for x in first if x.qid in ("q2", "q3")}
    assert all(x.meta["seed"] == question_seed(0, x.qid) for x in first)
    expected = digest(np.load(inputs[a.recipe].path))
    for call in calls:
        assert call["kwargs"] == {"max_new_tokens": N_NEW, "do_sample": True, "temperature": 1.0, "top_p": 0.9}
        assert call["images"]["sha256"] == expected
        assert call["images"]["bright_centroid"][2] > 0.6      # L,P,S storage: the left is high W here too
    other_seed = cls(AdapterSettings(checkpoint=str(checkpoints[name]), code_dir=a.settings.code_dir, seed=1,
                                     options={"max_new_tokens": N_NEW, "variant": "upstream-harness"}))
    other_seed.model, other_seed.tokenizer = a.model, a.tokenizer
    assert [x.text for x in other_seed.answer(inputs[a.recipe], QUESTIONS)] != [x.text for x in first]
    a.close()

    official = cls(AdapterSettings(checkpoint=str(checkpoints[name]), code_dir=a.settings.code_dir, device="cuda"))
    harness = cls(AdapterSettings(checkpoint=str(checkpoints[name]), code_dir=a.settings.code_dir, device="cuda",
                                  options={"variant": "upstream-harness"}))
    g1, g2 = official.generation(), harness.generation()
    differs = {k for k in g1 if g1[k] != g2[k]}
    expected_diff = {"generate_kwargs", "decoding", "source"} | ({"bos", "dtype"} if name == "m3d" else set())
    assert differs == expected_diff
    assert g1["decoding"] == "greedy" and g1["generate_kwargs"] == {"max_new_tokens": 256, "do_sample": False}
    assert g2["generate_kwargs"]["max_new_tokens"] == 256
    assert (g1["dtype"], g2["dtype"]) == (("bfloat16", "float16") if name == "m3d" else ("bfloat16", "bfloat16"))
    assert official.identity() != harness.identity()


def test_identity_options_and_requirements(checkpoints, tmp_path):
    ck = str(checkpoints["m3d"])
    base = M3D(AdapterSettings(checkpoint=ck, code_dir=str(M3D_CODE)))
    assert base.identity()["code"]["sha256"] and base.identity()["checkpoint"]["sha256"]
    assert base.identity() == M3D(AdapterSettings(checkpoint=ck, code_dir=str(M3D_CODE))).identity()
    shorter = M3D(AdapterSettings(checkpoint=ck, code_dir=str(M3D_CODE), options={"max_new_tokens": 8}))
    assert shorter.identity() != base.identity() and shorter.generation()["generate_kwargs"]["max_new_tokens"] == 8
    edited = tmp_path / "m3d-code"
    shutil.copytree(M3D_CODE, edited)
    with open(edited / "LaMed" / "src" / "model" / "lamed_arch.py", "a") as f:
        f.write("# a local edit\n")
    assert M3D(AdapterSettings(checkpoint=ck, code_dir=str(edited))).identity()["code"] != base.identity()["code"]
    with pytest.raises(AdapterError, match="variant"):
        M3D(AdapterSettings(options={"variant": "nope"}))
    with pytest.raises(AdapterError, match="unknown option"):
        Med3DVLM(AdapterSettings(options={"temprature": 0.5}))
    found = {r.what: r.found for r in M3D.requirements(base.settings)}
    assert found == {"code": True, "weights": True, "config": True, "tokenizer": True}
    found = {r.what: r.found for r in Med3DVLM.requirements(AdapterSettings(code_dir=str(M3D_CODE)))}
    assert found == {"code": False, "weights": False}
    from adapters.models.registry import describe

    rows = {r.name: r for r in describe(AdapterSettings())}
    assert rows["m3d"].recipe == "m3d" and rows["med3dvlm"].recipe == "med3dvlm" and not rows["m3d"].ready


def test_missing_or_wrong_code_and_weights_say_what_to_fetch(checkpoints, tmp_path):
    cases = [
        (M3D, AdapterSettings(checkpoint=str(checkpoints["m3d"])),
         r"code missing \(no --code-dir given: clone https://github\.com/BAAI-DCAI/M3D at commit 63e72005"),
        (M3D, AdapterSettings(checkpoint=str(checkpoints["m3d"]), code_dir=str(tmp_path)),
         r"no LaMed/src/model/language_model/lamed_phi3\.py.*--code-dir DIR"),
        (M3D, AdapterSettings(checkpoint=str(tmp_path / "nope"), code_dir=str(M3D_CODE)),
         r"hf download GoodBaiBai88/M3D-LaMed-Phi-3-4B.*--checkpoint DIR"),
        (Med3DVLM, AdapterSettings(code_dir=str(MED3DVLM_CODE)),
         r"no --checkpoint given: download MagicXin/Med3DVLM-Qwen-2\.5-7B"),
        (Med3DVLM, AdapterSettings(checkpoint=str(checkpoints["m3d"]), code_dir=str(MED3DVLM_CODE)),
         r"holds a 'lamed_phi3' model, not 'vlm_qwen'"),
    ]
    for cls, settings, pattern in cases:
        with pytest.raises(AdapterError, match=pattern) as err:
            cls(settings).load()
        assert "\n" not in str(err.value)


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="the PEP 701 f-string imports on 3.12+")
def test_med3dvlm_code_on_old_python_names_the_python_it_needs(checkpoints, tmp_path):
    code = tmp_path / "Med3DVLM"
    (code / "src" / "model" / "llm").mkdir(parents=True)
    (code / "src" / "model" / "llm" / "qwen.py").write_text('x = {"a": 1}\nmsg = f"{x["a"]}"\n')
    with pytest.raises(AdapterError, match=r"qwen\.py:2: .*needs Python >= 3\.12.*'med3dvlm' environment"):
        Med3DVLM(AdapterSettings(checkpoint=str(checkpoints["med3dvlm"]), code_dir=str(code))).load()


def test_code_written_for_older_transformers_is_refused(loaded):
    """The real forward() signatures (models-code.md): M3D's takes no **kwargs; Med3DVLM's swallows
    unknown ones. Under a transformers that passes the KV cache as `cache` (>= 5.24) or Phi-3's
    logits_to_keep, they would fail or decode without their cache; the adapter refuses them."""
    import inspect

    from transformers import Phi3ForCausalLM, Qwen2ForCausalLM

    class OldLamed(Phi3ForCausalLM):
        def forward(self, images=None, input_ids=None, labels=None, attention_mask=None, segs=None,
                    position_ids=None, past_key_values=None, inputs_embeds=None, use_cache=None,
                    output_attentions=None, output_hidden_states=None, return_dict=None, cache_position=None):
            raise NotImplementedError

    class OldVLMQwen(Qwen2ForCausalLM):
        def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                    inputs_embeds=None, labels=None, use_cache=None, output_attentions=None,
                    output_hidden_states=None, images=None, image_sizes=None, return_dict=None,
                    num_logits_to_keep=None, **kwargs):
            raise NotImplementedError

    renamed = "cache" in inspect.signature(Qwen2ForCausalLM.forward).parameters
    for cls, pattern in ((OldLamed, r"logits_to_keep"), (OldVLMQwen, r"no `cache` parameter")):
        if cls is OldVLMQwen and not renamed:
            check_generate_compat(cls.__new__(cls))
            continue
        with pytest.raises(AdapterError, match=pattern):
            check_generate_compat(cls.__new__(cls))
    # the stand-ins accept what this transformers passes
    for a in loaded.values():
        check_generate_compat(a.model)


def test_wrong_input_file_is_refused_in_one_line(loaded, tmp_path):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((1, 32, 128, 128), np.float32))
    with pytest.raises(AdapterError, match=r"bad\.npy is not a recipe 'm3d' input: expected 'arr' float32 "
                                           r"\(1, 32, 256, 256\)"):
        loaded["m3d"].answer(ModelInput("v", "m3d", "1", bad, (1, 32, 128, 128), "float32", ""), QUESTIONS[:1])
    hu = tmp_path / "hu.npy"
    np.save(hu, np.full((1, 128, 256, 256), 40.0, np.float32))
    with pytest.raises(AdapterError, match=r"hu\.npy: values span \[40, 40\], the model takes \[0, 1\]"):
        loaded["med3dvlm"].answer(ModelInput("v", "med3dvlm", "1", hu, (1, 128, 256, 256), "float32", ""),
                                  QUESTIONS[:1])


@pytest.mark.parametrize("model,builder,code", [("m3d", build_tiny_m3d, M3D_CODE),
                                                ("med3dvlm", build_tiny_med3dvlm, MED3DVLM_CODE)])
def test_infer_through_the_cli(prefect_server, family_envs, tmp_path, capsys, monkeypatch, model, builder, code):
    """`ctsvqa infer --model M --code-dir tests/fake_models/M --checkpoint CKPT` on a phantom data set:
    the CLI, the flow, the runner, the recipe built on demand, the model's generate and the warehouse.
    In-process until the worker's family environments are merged; then in a worker in an environment
    that inherits ours (tests/worker_env.py), the stand-in recording through CTSVQA_FAKE_RECORD."""
    from adapters.datasets.phantom import generate
    from flows.cli import main
    from tasks.upstream_import import import_upstream

    family_envs(model)
    record = tmp_path / "calls.jsonl"
    monkeypatch.setenv("CTSVQA_FAKE_RECORD", str(record))
    generate(tmp_path / "ph", 2, 13, "small")
    db = tmp_path / "wh.duckdb"
    import_upstream(tmp_path / "ph", db)
    ckpt = builder(tmp_path / model)
    args = ["infer", "--model", model, "--code-dir", str(code), "--checkpoint", str(ckpt), "--limit-volumes", "1",
            "--batch-size", "4", "--option", "max_new_tokens=4", "--db", str(db)]
    assert main(args) == 0, capsys.readouterr().err
    con = duckdb.connect(str(db), read_only=True)
    try:
        (n_q,) = con.execute("SELECT count(*) FROM questions WHERE volume = (SELECT volume FROM volumes "
                             "ORDER BY position LIMIT 1)").fetchone()
        preds = con.execute("SELECT p.status, p.text, p.provenance, r.config FROM predictions p JOIN runs r "
                            "USING (run_id) WHERE r.name = ?", [model]).fetchall()
    finally:
        con.close()
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(preds) == n_q == len(calls) and all(s == "ok" and t is not None for s, t, _, _ in preds)
    assert {tuple(c["images"]["shape"][2:]) for c in calls} == {RECIPES[model].size}
    texts = sorted(t for _, t, _, _ in preds)
    assert texts == sorted(torch_decode(ckpt, c["output"][0]) for c in calls)
    provenance, config = json.loads(preds[0][2]), json.loads(preds[0][3])
    identity = config.get("identity", config)
    assert provenance["recipe"] == f"{model}@1" and identity["code"]["sha256"]
    assert identity["generation"]["generate_kwargs"] == {"max_new_tokens": 4, "do_sample": False}
    assert main(args) == 0 and "nothing to do" in capsys.readouterr().out


def torch_decode(ckpt, ids) -> str:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(ckpt)).decode(ids, skip_special_tokens=True).strip()


@pytest.mark.parametrize("name", ["m3d", "med3dvlm"])
def test_a_crash_and_a_hang_in_the_worker_fail_only_those_questions(name, family_envs, checkpoints, tmp_path,
                                                                     monkeypatch):
    family_envs(name)
    crash_hang_then_retry(tmp_path, monkeypatch, name, M3D_CODE if name == "m3d" else MED3DVLM_CODE,
                          checkpoints[name], {"max_new_tokens": 3})
