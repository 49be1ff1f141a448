"""The Merlin adapter. Two kinds of test:

- here, in our environment (no merlin-vlm: its torchvision needs a CUDA build of torch): identity,
  variants, requirements and errors, and the image the adapter hands Merlin, built by the real
  `merlin` / `merlin-upstream-harness` recipes from a volume with a lesion on the patient's left;
- in the Merlin environment (`ctsvqa env create merlin`, or CTSVQA_MERLIN_PYTHON=<python with
  merlin-vlm==0.0.7>): tests/merlin_real.py runs the adapter on the REAL package — I3D ResNet-152,
  Adapter, TextDecoder with LoRA, generate — with a tiny RadLLaMA (hidden 4096, one layer) and a
  checkpoint saved from that model, and reports what reached the encoder, the tokenizer and HF
  generate. Skipped, with the reason, when no such environment is found.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from adapters.models.base import AdapterError, AdapterSettings, ModelInput
from adapters.models.merlin import CHECKPOINTS, Merlin
from adapters.models.preprocess import build, left_side
from adapters.models.recipes import RECIPES
from tasks.volumes import decode
from tests.volume_factory import left_lesion_ras, save
from tests.worker_env import merlin_python  # noqa: F401  (a fixture)

REPO = Path(__file__).resolve().parent.parent


def fake_checkpoint(folder: Path) -> Path:
    """The layout a user downloads (empty stand-ins: these tests never load them)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in CHECKPOINTS.values():
        (folder / name).write_bytes(b"")
    radllama = folder / "RadLLaMA-7b"
    radllama.mkdir()
    (radllama / "config.json").write_text('{"hidden_size": 4096}')
    (radllama / "tokenizer_config.json").write_text("{}")
    return folder


def test_variants_differ_where_the_harness_did(tmp_path):
    ckpt = fake_checkpoint(tmp_path / "m")
    official = Merlin(AdapterSettings(checkpoint=str(ckpt)))
    harness = Merlin(AdapterSettings(checkpoint=str(ckpt), options={"variant": "upstream-harness"}))
    a, b = official.identity(), harness.identity()
    assert (a["recipe"], b["recipe"]) == ("merlin@1", "merlin-upstream-harness@1")
    ga, gb = a["generation"], b["generation"]
    assert ga["prompt"]["template"] == "{question}###\n"
    assert gb["prompt"]["template"].startswith("Answer the question concisely using this CT.")
    assert ga["generate_kwargs"] == {"do_sample": False, "num_beams": 1, "repetition_penalty": 1.2, "max_new_tokens": 128}
    assert gb["generate_kwargs"] == {"max_new_tokens": 64, "do_sample": False}
    assert (ga["stop_token_id"], gb["stop_token_id"]) == (48134, None)
    # 0.0.7's RadiologyReport checkpoint vs what 0.0.6 loaded (0.0.7's RadiologyReportStage1_Stage2)
    assert ga["checkpoint_file"] == "resnet_gpt2_best_stanford_report_generation_average_mtl.pt"
    assert gb["checkpoint_file"] == "resnet_gpt2_best_stanford_report_generation_average.pt"
    assert a["checkpoint"]["name"] != b["checkpoint"]["name"]
    assert Merlin(AdapterSettings(device="cuda")).generation()["dtype"] == "bfloat16"
    assert Merlin(AdapterSettings(device="cuda", options={"variant": "upstream-harness"})).generation()["dtype"] == "float32"
    assert Merlin.environment == "merlin" and "merlin-vlm" in Merlin.packages


def test_missing_weights_name_the_downloads_in_one_line(tmp_path):
    reqs = {r.what: r for r in Merlin.requirements(AdapterSettings(checkpoint=str(tmp_path)))}
    assert not reqs["weights"].found and "stanfordmimi/Merlin" in reqs["weights"].detail
    assert not reqs["RadLLaMA config and tokenizer"].found
    assert "StanfordAIMI/RadLLaMA-7b" in reqs["RadLLaMA config and tokenizer"].detail
    harness = {r.what: r for r in Merlin.requirements(AdapterSettings(checkpoint=str(tmp_path),
                                                                      options={"variant": "upstream-harness"}))}
    assert CHECKPOINTS["report_generation_stage1_stage2"] in harness["weights"].detail
    for settings in (AdapterSettings(), AdapterSettings(checkpoint=str(tmp_path))):
        with pytest.raises(AdapterError) as err:
            Merlin(settings).load()
        assert "\n" not in str(err.value) and "--checkpoint" in str(err.value)
    ckpt = fake_checkpoint(tmp_path / "m")
    assert all(r.found for r in Merlin.requirements(AdapterSettings(checkpoint=str(ckpt))))
    with pytest.raises(AdapterError, match="option task"):
        Merlin(AdapterSettings(options={"task": "nope"}))


@pytest.mark.skipif(importlib.util.find_spec("merlin") is not None, reason="merlin-vlm is installed here")
def test_without_the_package_the_error_names_the_environment(tmp_path):
    with pytest.raises(AdapterError, match=r"ctsvqa env create merlin.*merlin-vlm==0\.0\.7"):
        Merlin(AdapterSettings(checkpoint=str(fake_checkpoint(tmp_path / "m")))).load()


@pytest.mark.parametrize("recipe,shape,left_axis", [("merlin", (1, 1, 224, 224, 160), 2),
                                                    ("merlin-upstream-harness", (1, 1, 160, 224, 224), 4)])
def test_the_image_is_the_recipe_array_as_stored(tmp_path, recipe, shape, left_axis):
    """Merlin permutes (B, 1, X, Y, Z) itself: the adapter must hand over the recipe's array unchanged —
    (X, Y, Z) with the patient's left at low X for `merlin`; the harness's (Z, Y, X) for its variant."""
    volume = decode(save(tmp_path / "v.nii.gz", left_lesion_ras(), "LPS"))
    arr = build(RECIPES[recipe], volume)["arr"]
    np.save(tmp_path / "in.npy", arr)
    axis, end = left_side(RECIPES[recipe], volume)
    model_input = ModelInput("v.nii.gz", recipe, "1", tmp_path / "in.npy", arr.shape, str(arr.dtype), f"axis {axis}, {end} index")
    variant = "upstream-harness" if recipe.endswith("harness") else "official"
    image = Merlin(AdapterSettings(options={"variant": variant})).image(model_input).numpy()
    assert image.shape == shape and image.dtype == np.float32
    np.testing.assert_array_equal(image[0], arr)
    assert (axis + 1, end) == (left_axis, "low")
    values = image[0, 0]
    bright = values >= values.max() - 0.05 * (values.max() - values.min())
    profile = bright.sum(axis=tuple(i for i in range(3) if i != left_axis - 2))
    centre = (profile * np.arange(len(profile))).sum() / profile.sum()
    assert centre < (len(profile) - 1) / 2                        # the lesion is in the low half
    with pytest.raises(AdapterError, match="expected 'arr' \\(1, X, Y, Z\\)"):
        np.save(tmp_path / "bad.npy", arr[0])
        Merlin(AdapterSettings()).image(ModelInput("v", recipe, "1", tmp_path / "bad.npy", arr[0].shape, "float32", ""))


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, merlin_python):
    python = merlin_python
    work = tmp_path_factory.mktemp("merlin")
    arr = np.zeros((1, 32, 32, 16), np.float32)             # (1, X, Y, Z): a bright block at low X
    arr[0, 4:8, 10:20, :] = 1.0
    arr[0, 16:, :, :] = 0.3
    np.save(work / "in.npy", arr)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([str(python), str(REPO / "tests" / "merlin_real.py"), str(work), str(work / "in.npy"),
                           str(work / "out.json")], cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    # the package prints (PEFT's trainable-parameter count) went to stderr: stdout is the worker's channel
    assert "trainable params" in done.stderr and "trainable params" not in done.stdout
    return json.loads((work / "out.json").read_text())


def test_real_merlin_official(real_run):
    run = real_run["official"]
    seen = run["seen"]
    # the image reached the I3D encoder as [1, 1, X, Y, Z], float32 in [0, 1], once for both questions
    assert len(seen["encoder"]) == 2                              # one answer() call + one direct generate
    enc = seen["encoder"][0]
    assert enc["shape"] == [1, 1, 32, 32, 16] and enc["dtype"] == "torch.float32"
    assert (enc["min"], enc["max"]) == (0.0, 1.0)
    profile = np.asarray(enc["bright_axis0"])
    assert profile[:8].sum() > 0 and profile[8:].sum() == 0       # the block is at low X, as stored
    # the prompts: the question plus Merlin's "###\n" separator, one per generate call
    questions = ["Is the lesion in the left or the right lung?", "Which lobe contains the nodule?"]
    assert seen["prompts"][:2] == [[q + "###\n"] for q in questions]
    gen = seen["generate"][0]
    assert gen["kwargs"] == {"do_sample": False, "num_beams": 1, "repetition_penalty": 1.2, "max_new_tokens": 128,
                             "stopping_criteria": "StoppingCriteriaList"}
    # image tokens first, then the prompt without its BOS (Merlin drops input_ids[:, 0])
    assert run["prompt_ids"][0] == 1
    assert gen["inputs_embeds"] == [1, run["answers"][0]["meta"]["image_tokens"] + len(run["prompt_ids"]) - 1, 4096]
    stop = real_run["stop_token_id"]
    for answer, decoded, g in zip(run["answers"], run["decoded_outputs"], seen["generate"]):
        assert answer["status"] == "ok" and answer["meta"]["raw"] == decoded
        assert answer["text"] == decoded.split("###")[0].strip()
        assert stop not in g["output"][0][:-1]                    # generation stopped at '###'
    assert run["direct"] == run["answers"][0]["meta"]["raw"]     # == model.generate(image, [prompt], ...)
    load = run["provenance"]["load"]
    assert load["merlin_vlm"] == "0.0.7" and load["stop_token"] == "###" and load["radllama_weights"] == "config only"
    assert load["checkpoint_file"] == CHECKPOINTS["report_generation"]


def test_real_merlin_upstream_harness(real_run):
    run = real_run["upstream-harness"]
    seen = run["seen"]
    assert seen["prompts"][0] == ["Answer the question concisely using this CT. Output only the answer (no preamble). "
                                  "Question: Is the lesion in the left or the right lung?\nAnswer:"]
    assert seen["generate"][0]["kwargs"] == {"max_new_tokens": 64, "do_sample": False}
    for answer, decoded in zip(run["answers"], run["decoded_outputs"]):
        assert answer["text"] == decoded.strip()                  # no '###' cut, as the harness stored it
    assert run["provenance"]["load"]["checkpoint_file"] == CHECKPOINTS["report_generation_stage1_stage2"]
    assert run["direct"] == run["answers"][0]["meta"]["raw"]
