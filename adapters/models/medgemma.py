"""MedGemma 1.5 4B (`Gemma3ForConditionalGeneration`) on a recipe's RGB slice stack.

official (recipe `medgemma`): the Google-Health high_dimensional_ct notebook — 85 slices, RGB
windows (-1024,1024)/(-135,215)/(0,80), each slice sent as PIL-default JPEG, instruction text,
then per slice the image and "SLICE i", then the question; Gemma chat template (one user turn);
greedy, bf16 on a GPU. The notebook caps at max_new_tokens=2000; the default here is 1024 (option
`max_new_tokens`): greedy answers to one spatial question end far sooner, and a row that never
emits EOS holds its whole prefix-shared batch until the cap.
upstream-harness (recipe `medgemma-upstream-harness`): CT-SpatialVQA's run_custom_eval.py — its
instruction and query suffix, lossless slices, max_new_tokens=512, min_new_tokens=4.
"""

from __future__ import annotations

from adapters.models.prefix_batch import SliceChatAdapter
from adapters.models.prompts import CTSVQA_HARNESS, MEDGEMMA_NOTEBOOK


class MedGemma(SliceChatAdapter):
    name = "medgemma"
    version = "1"
    default_recipe = "medgemma"
    description = "MedGemma 1.5 4B (transformers Gemma3ForConditionalGeneration), prefix-shared greedy batches"
    family = "gemma3"
    model_class = "Gemma3ForConditionalGeneration"
    cuda_prefill_attention = "flex_attention"     # block-sparse image-heavy prefill: 1.6x (bench/gpu_inference.py)
    cuda_compile_vision = True                    # SigLIP 1.37 -> 1.17 s per 85 slices after a ~30 s compile
    cuda_compile_prefill = True                   # text layers in the prefix: 0.47 -> 0.30 s per volume
    cuda_fuse_vision_gelu = True                  # GELU in the vision MLP's GEMM: 1.170 -> 1.087 s per volume
    cuda_image_device = "gpu"                     # slices normalized on the GPU: 3.22 -> 3.50 QA/s, same tokens
    hub_id = "google/medgemma-1.5-4b-it"
    download_note = (" (gated: accept the Health AI Developer Foundations terms on its Hugging Face page "
                     "first, then log in with `hf auth login`)")
    prompts = {"official": MEDGEMMA_NOTEBOOK, "upstream-harness": CTSVQA_HARNESS}
    max_new_tokens = {"official": 1024, "upstream-harness": 512}
    min_new_tokens = {"official": 0, "upstream-harness": 4}
    image_encoding = {"official": "jpeg", "upstream-harness": "none"}   # harness: PNG data URIs (lossless)
