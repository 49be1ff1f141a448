"""Med3DVLM Qwen-2.5-7B through mirthAI/Med3DVLM's own code (`VLMQwenForCausalLM`, models-code.md §2).

official (recipe `med3dvlm`): the demo's prompt `"<im_patch>" * 256 + question`, greedy with 256
new tokens as src/eval/eval_vqa.py, bf16 on a GPU. upstream-harness (recipe
`med3dvlm-upstream-harness`): CT-SpatialVQA inference/med3dvlm/run_custom_eval.py — same prompt,
bf16, sampling (do_sample, temperature 1.0, top_p 0.9, 256 tokens); the harness set no seed, here
every question's sampling is seeded and recorded.

Both variants tokenize as the demo, training and harness did: Qwen2.5 adds no BOS, so position 0 is
an `<im_patch>` whose embedding stays and the splice (positions 1..256) overwrites the first
question token; reproduced on purpose, and the dropped token is kept in each answer's meta
(`overwritten`). The repository's code needs Python >= 3.12 (a PEP 701 f-string in vlm_arch.py).
See adapters/models/impatch.py for the call, the layout check and why questions go one by one.
"""

from __future__ import annotations

from adapters.models.impatch import ImPatchAdapter
from adapters.models.prompts.impatch import MED3DVLM_DEMO


class Med3DVLM(ImPatchAdapter):
    name = "med3dvlm"
    version = "1"
    default_recipe = "med3dvlm"
    environment = "med3dvlm"
    description = "Med3DVLM Qwen-2.5-7B (mirthAI/Med3DVLM code, --code-dir), one generate per question, image encoded once"
    hub_id = "MagicXin/Med3DVLM-Qwen-2.5-7B"
    repo_url = "https://github.com/mirthAI/Med3DVLM"
    repo_commit = "cbbd6335a64370f829710a1412e46afc68f243ff"
    code_module = "src.model.llm.qwen"
    code_class = "VLMQwenForCausalLM"
    model_type = "vlm_qwen"
    python_min = (3, 12)
    image_shape = (1, 128, 256, 256)
    prompts = {"official": MED3DVLM_DEMO, "upstream-harness": MED3DVLM_DEMO}
    bos = {"official": "tokenizer", "upstream-harness": "tokenizer"}
    decoding = {"official": {"max_new_tokens": 256, "do_sample": False},
                "upstream-harness": {"max_new_tokens": 256, "do_sample": True, "temperature": 1.0, "top_p": 0.9}}
    gpu_dtype = {"official": "bfloat16", "upstream-harness": "bfloat16"}
    sources = {"official": "Med3DVLM src/demo/demo.py (prompt, bf16); src/eval/eval_vqa.py (greedy, 256 tokens)",
               "upstream-harness": "CT-SpatialVQA benchmarking/inference/med3dvlm/run_custom_eval.py"}
    packages = ImPatchAdapter.packages + ("timm", "einops")
