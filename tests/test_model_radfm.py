"""The RadFM adapter against a local fake of RadFM's repository (tests/fake_models/radfm: the class
name, constructor, Med-KEBERT download and `generate(lang_x, vision_x)` signature, tiny random
weights). What runs for real: our adapter, transformers' LlamaTokenizer and LlamaForCausalLM
(generate included), torch.load/load_state_dict of a pytorch_model.bin, the `radfm` recipe on a
phantom with a lesion on the patient's left. What is only the interface: RadFM's ViT, perceiver and
embedding code (the fake's stand-ins)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from adapters.models.base import AdapterError, AdapterSettings, ModelInput, Question
from adapters.models.offline_patch import add_import_root, drop_import_root
from adapters.models.preprocess import build, left_side
from adapters.models.radfm import RadFM, image_tokens
from adapters.models.recipes import RECIPES
from tasks.volumes import decode
from tests.radfm_checkpoint import FAKE, build_checkpoint
from tests.volume_factory import left_lesion_ras, save
from tests.worker_env import crash_hang_then_retry, family_envs  # noqa: F401  (family_envs: a fixture)

QUESTIONS = [Question("v.nii.gz::0", "Is the lesion in the left or the right lung?"),
             Question("v.nii.gz::1", "Which lobe contains the nodule?")]


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("radfm"))


@pytest.fixture(scope="module")
def phantom_input(tmp_path_factory) -> ModelInput:
    """The real `radfm` recipe on a volume stored L,P,S with a bright rod on the patient's left."""
    folder = tmp_path_factory.mktemp("vol")
    volume = decode(save(folder / "v.nii.gz", left_lesion_ras(), "LPS"))
    recipe = RECIPES["radfm"]
    arr = build(recipe, volume)["arr"]
    np.save(folder / "radfm.npy", arr)
    axis, end = left_side(recipe, volume)
    assert (axis, end) == (2, "high")                 # (3, H, W, D): patient left = high W
    return ModelInput("v.nii.gz", "radfm", "1", folder / "radfm.npy", arr.shape, str(arr.dtype), f"axis {axis}, {end} index")


def small_input(folder: Path, recipe: str) -> ModelInput:
    arr = np.random.default_rng(0).random((3, 64, 64, 8), dtype=np.float32)
    np.save(folder / f"{recipe}.npy", arr)
    return ModelInput("v.nii.gz", recipe, "1", folder / f"{recipe}.npy", arr.shape, "float32", "axis 2, high index")


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def half(profile: list[float]) -> str:
    p = np.asarray(profile)
    centre = (p * np.arange(len(p))).sum() / p.sum()
    return "low" if centre < (len(p) - 1) / 2 else "high"


def adapter(checkpoint: Path, **options) -> RadFM:
    return RadFM(AdapterSettings(checkpoint=str(checkpoint), code_dir=str(FAKE), options=options))


def test_official_prompt_volume_and_stop(checkpoint, phantom_input, tmp_path, monkeypatch):
    record = tmp_path / "calls.jsonl"
    monkeypatch.setenv("CTSVQA_FAKE_RECORD", str(record))
    model = adapter(checkpoint)
    model.load()
    try:
        answers = model.answer(phantom_input, QUESTIONS)
        tok = model.tokenizer
        provenance = model.provenance()
    finally:
        model.close()
    calls = records(record)
    assert [a.qid for a in answers] == [q.qid for q in QUESTIONS] and all(a.status == "ok" for a in answers)
    assert len(calls) == 2                                        # one generate per question

    # the prompt: BOS, <image>, the 32 perceiver slots, </image>, then the question's own tokens
    vocab = len(tok) - 2 - 3200                                   # the LLaMA's rows before the added tokens
    for call, q in zip(calls, QUESTIONS):
        [ids] = call["lang_x"]
        assert ids[:35] == [1, vocab, *range(vocab + 2, vocab + 34), vocab + 1]
        assert tok.decode(ids[35:]) == q.question and vocab + 34 > max(ids[35:])
    assert tok.decode(calls[0]["lang_x"][0][1:35]) == "<image>" + image_tokens() + "</image>"

    # the volume: [B=1, S=1, 3, H, W, D] float32 in [0, 1], grey in all three channels, left at high W
    call = calls[0]
    assert call["vision_shape"] == [1, 1, 3, 256, 256, 64] and call["vision_dtype"] == "torch.float32"
    arr = phantom_input.load()["arr"]
    assert call["vision_min"] == pytest.approx(float(arr.min())) and call["vision_max"] == pytest.approx(float(arr.max()))
    assert 0 <= call["vision_min"] < 1e-6 and 1 - 1e-6 < call["vision_max"] <= 1 and call["channels_equal"]
    assert half(call["bright_profile"]["W"]) == "high"            # the rod is on the patient's left
    assert call["lang_dtype"] == "torch.float32"

    # generation: RadFM's own hard-coded call; the stop is the tokenizer's </s> (2), not the config's <s> (1)
    assert call["generate_kwargs"] == {"max_new_tokens": 200, "top_k": 50}
    assert call["eos_token_id"] == 2
    for a, c in zip(answers, calls):
        ids = c["output"][0]
        assert a.text == tok.decode(ids, skip_special_tokens=True).strip()
        assert a.meta["new_tokens"] == len(ids) and len(ids) <= 200
        assert 2 not in ids[:-1]                                  # nothing generated past </s>
    load = provenance["load"]
    assert load["lang_model_built_from"] == "config" and load["config_eos_token_id"] == 1
    assert load["skipped_keys"] == 1 and load["tolerated_keys"] == 1
    assert provenance["recipe"] == "radfm@1" and provenance["code"]["sha256"]
    assert "Model" not in sys.modules                              # close() forgot the checkout's modules


def test_upstream_harness_differs_only_where_the_harness_did(checkpoint, tmp_path, monkeypatch):
    official, harness = adapter(checkpoint), adapter(checkpoint, variant="upstream-harness")
    a, b = official.identity(), harness.identity()
    assert (a["recipe"], b["recipe"]) == ("radfm@1", "radfm-upstream-harness@1")
    diff = {k for k in a["generation"] if a["generation"][k] != b["generation"][k]}
    assert diff == {"stop", "truncate_new_tokens", "decode"}      # same prompt, same call; dtype only on GPUs
    assert a["generation"]["prompt"] == b["generation"]["prompt"]
    assert RadFM(AdapterSettings(device="cuda", options={"variant": "upstream-harness"})).generation()["dtype"] == "float16"
    assert RadFM(AdapterSettings(device="cuda")).generation()["dtype"] == "bfloat16"

    record = tmp_path / "calls.jsonl"
    monkeypatch.setenv("CTSVQA_FAKE_RECORD", str(record))
    harness.load()
    try:
        [answer] = harness.answer(small_input(tmp_path, "radfm-upstream-harness"), QUESTIONS[:1])
        tok = harness.tokenizer
    finally:
        harness.close()
    [call] = records(record)
    assert call["eos_token_id"] == 1                              # the config's, as the harness ran it
    assert call["vision_shape"] == [1, 1, 3, 64, 64, 8]
    assert answer.text == tok.decode(call["output"][0][:256], skip_special_tokens=True)   # not stripped


def test_missing_code_or_weights_is_one_line_naming_what_to_download(checkpoint, tmp_path):
    reqs = {r.what: r for r in RadFM.requirements(AdapterSettings(checkpoint=str(tmp_path), code_dir=str(tmp_path)))}
    assert not reqs["code"].found and "github.com/chaoyi-wu/RadFM" in reqs["code"].detail
    assert not reqs["weights"].found and "chaoyi-wu/RadFM" in reqs["weights"].detail
    assert all(r.found for r in RadFM.requirements(AdapterSettings(checkpoint=str(checkpoint), code_dir=str(FAKE))))
    for settings in (AdapterSettings(checkpoint=str(checkpoint)), AdapterSettings(code_dir=str(FAKE)),
                     AdapterSettings(checkpoint=str(tmp_path), code_dir=str(FAKE))):
        with pytest.raises(AdapterError) as err:
            RadFM(settings).load()
        message = str(err.value)
        assert "\n" not in message and ("--code-dir" in message or "--checkpoint" in message)
    with pytest.raises(AdapterError, match="option variant"):
        RadFM(AdapterSettings(options={"variant": "nope"}))


def test_a_checkpoint_missing_weights_is_refused_not_half_loaded(tmp_path):
    ckpt = build_checkpoint(tmp_path / "broken", drop="lang_model.lm_head.weight")
    with pytest.raises(AdapterError, match=r"1 missing \(e.g. \['lang_model.lm_head.weight'\]\)"):
        adapter(ckpt).load()
    assert "Model" not in sys.modules                              # the failed load left no modules behind


def test_the_fake_refuses_to_download_med_kebert(checkpoint):
    """Proves the adapter's patch matters: unpatched, the fake's MyEmbedding refuses the hub id."""
    entry = add_import_root(FAKE / "Quick_demo")
    try:
        embedding = importlib.import_module("Model.RadFM.my_embedding_layer")
        with pytest.raises(RuntimeError, match="xmcmic/Med-KEBERT"):
            embedding.MyEmbedding(num_embeddings=10, embedding_dim=8, vis_dim=4)
    finally:
        drop_import_root(entry, ("Model",))


def test_through_ctsvqa_infer(prefect_server, family_envs, tmp_path, capsys, checkpoint):
    """`ctsvqa infer --model radfm --code-dir tests/fake_models/radfm`: preprocess (recipe radfm),
    the runner, the warehouse, through a worker in the family env; the same command again has nothing
    to do."""
    family_envs("radfm")
    import duckdb

    from adapters.datasets.phantom import generate
    from flows.cli import main
    from tasks.upstream_import import import_upstream

    generate(tmp_path / "ph", 1, 5, "small")
    db = tmp_path / "wh.duckdb"
    import_upstream(tmp_path / "ph", db)
    args = ["infer", "--model", "radfm", "--code-dir", str(FAKE), "--checkpoint", str(checkpoint),
            "--limit-volumes", "1", "--db", str(db)]
    assert main(args) == 0, capsys.readouterr().err
    con = duckdb.connect(str(db), read_only=True)
    try:
        preds = con.execute("SELECT p.status, p.text, p.provenance, r.config FROM predictions p JOIN runs r "
                            "USING (run_id) WHERE r.name = 'radfm'").fetchall()
    finally:
        con.close()
    assert preds and all(status == "ok" and text is not None for status, text, _, _ in preds)
    provenance, config = json.loads(preds[0][2]), json.loads(preds[0][3])
    identity = config.get("identity", config)
    assert provenance["recipe"] == "radfm@1" and identity["generation"]["stop"].startswith("generation config")
    assert identity["code"]["sha256"] and identity["checkpoint"]["sha256"]
    assert main(args) == 0
    assert "nothing to do" in capsys.readouterr().out


@pytest.mark.parametrize("fault", ["crash", "hang"])
def test_the_fake_injects_faults_inside_generate(fault):
    """CTSVQA_FAKE_FAULT makes the fake's generate exit the process (status 3) or hang, for the
    family worker's crash and hang tests."""
    import os
    import subprocess
    import time

    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "from Model.RadFM.multimodality_model import MultiLLaMAForCausalLM as M; "
            "print('ready', flush=True); M.generate(None, None, None); print('returned', flush=True)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(FAKE / "Quick_demo")], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env={**os.environ, "CTSVQA_FAKE_FAULT": fault})
    try:
        assert proc.stdout.readline().strip() == "ready"
        if fault == "crash":
            assert proc.wait(timeout=30) == 3
        else:
            time.sleep(2)
            assert proc.poll() is None                            # still inside generate
        assert "returned" not in proc.stdout.read() if fault == "crash" else True
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_language_files_come_from_the_checkpoint_else_the_checkout(checkpoint, tmp_path):
    import shutil

    code = tmp_path / "RadFM"
    shutil.copytree(FAKE, code)
    shutil.copytree(checkpoint / "Language_files", code / "Quick_demo" / "Language_files")
    weights_only = tmp_path / "weights"
    weights_only.mkdir()
    (weights_only / "pytorch_model.bin").symlink_to(checkpoint / "pytorch_model.bin")
    both = AdapterSettings(checkpoint=str(checkpoint), code_dir=str(code))
    assert RadFM._language_files(both) == checkpoint / "Language_files"
    fallback = AdapterSettings(checkpoint=str(weights_only), code_dir=str(code))
    assert RadFM._language_files(fallback) == code / "Quick_demo" / "Language_files"
    assert all(r.found for r in RadFM.requirements(fallback))
    # the same files give the same identity, wherever they are
    assert RadFM(fallback).checkpoint_identity()["sha256"] == RadFM(both).checkpoint_identity()["sha256"]
    chosen = AdapterSettings(checkpoint=str(weights_only), code_dir=str(FAKE), options={"language_files": str(tmp_path)})
    assert RadFM._language_files(chosen) is None and not all(r.found for r in RadFM.requirements(chosen))


def test_a_crash_and_a_hang_in_the_worker_fail_only_those_questions(family_envs, checkpoint, tmp_path, monkeypatch):
    family_envs("radfm")
    crash_hang_then_retry(tmp_path, monkeypatch, "radfm", FAKE, checkpoint)
