"""M3D-LaMed Phi-3-4B through BAAI-DCAI/M3D's own code (`LamedPhi3ForCausalLM`, models-code.md §1).

official (recipe `m3d`): the README's prompt `"<im_patch>" * 256 + question`, exactly one BOS before
the placeholders (prepended if the checkpoint's tokenizer adds none: the splice keeps position 0 and
puts the image at 1..256), greedy with 256 new tokens as Bench/eval/eval_vqa.py, bf16 on a GPU.
upstream-harness (recipe `m3d-upstream-harness`): CT-SpatialVQA inference/m3d/run_custom_eval.py —
the same string tokenized as it comes, fp16, sampling (do_sample, temperature 1.0, top_p 0.9, 256
tokens); the harness set no seed, here every question's sampling is seeded and recorded.
See adapters/models/impatch.py for the call, the layout check and why questions go one by one.
"""

from __future__ import annotations

from adapters.models.impatch import ImPatchAdapter
from adapters.models.prompts.impatch import M3D_README


class M3D(ImPatchAdapter):
    name = "m3d"
    version = "1"
    default_recipe = "m3d"
    environment = "m3d"
    description = "M3D-LaMed Phi-3-4B (BAAI-DCAI/M3D code, --code-dir), one generate per question, image encoded once"
    hub_id = "GoodBaiBai88/M3D-LaMed-Phi-3-4B"
    repo_url = "https://github.com/BAAI-DCAI/M3D"
    repo_commit = "63e72005a2304eda74579870239bfc7b04b0edae"
    code_module = "LaMed.src.model.language_model.lamed_phi3"
    code_class = "LamedPhi3ForCausalLM"
    model_type = "lamed_phi3"
    image_shape = (1, 32, 256, 256)
    prompts = {"official": M3D_README, "upstream-harness": M3D_README}
    bos = {"official": "ensure-one", "upstream-harness": "tokenizer"}
    decoding = {"official": {"max_new_tokens": 256, "do_sample": False},
                "upstream-harness": {"max_new_tokens": 256, "do_sample": True, "temperature": 1.0, "top_p": 0.9}}
    gpu_dtype = {"official": "bfloat16", "upstream-harness": "float16"}
    sources = {"official": "M3D README quick start (prompt, bf16); Bench/eval/eval_vqa.py (greedy, 256 tokens)",
               "upstream-harness": "CT-SpatialVQA benchmarking/inference/m3d/run_custom_eval.py"}
    packages = ImPatchAdapter.packages + ("monai", "einops", "sentencepiece")
