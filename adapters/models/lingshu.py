"""Lingshu-7B (`Qwen2_5_VLForConditionalGeneration`), as CT-SpatialVQA ran it under the name
"MedEvalKit" (inference/medevalkit/run_custom_eval.py): 32 slices with MedGemma's three RGB
windows at native resolution, the harness's instruction, per slice the image and "SLICE i", its
query suffix with the question; Qwen2.5-VL chat template; greedy, 256 new tokens. Lingshu has no
official CT recipe, so both variants use that prompt; they differ in the slices (recipe `lingshu`:
display frame; `lingshu-upstream-harness`: stored voxel order).

The images go to the processor as PIL images (what `qwen_vl_utils.process_vision_info` would hand
it for in-memory images), so qwen-vl-utils is not needed. Qwen2.5-VL's processor class wants a
video processor, which needs torchvision; without torchvision the processor is assembled from the
checkpoint's own image processor, tokenizer and chat template, with no video support.
"""

from __future__ import annotations

from adapters.models.prefix_batch import SliceChatAdapter
from adapters.models.prompts import CTSVQA_HARNESS


class Lingshu(SliceChatAdapter):
    name = "lingshu"
    version = "1"
    default_recipe = "lingshu"
    description = "Lingshu-7B (transformers Qwen2_5_VLForConditionalGeneration), prefix-shared greedy batches"
    family = "qwen2_5_vl"
    model_class = "Qwen2_5_VLForConditionalGeneration"
    hub_id = "lingshu-medical-mllm/Lingshu-7B"
    prompts = {"official": CTSVQA_HARNESS, "upstream-harness": CTSVQA_HARNESS}
    max_new_tokens = {"official": 256, "upstream-harness": 256}

    def _load_processor(self, path: str, backend: str):
        from transformers.utils import is_torchvision_available

        if is_torchvision_available():
            return super()._load_processor(path, backend)
        from transformers import AutoImageProcessor, AutoTokenizer, Qwen2_5_VLProcessor

        class ImageOnlyProcessor(Qwen2_5_VLProcessor):
            def check_argument_for_proper_class(self, argument_name, argument):
                if argument_name == "video_processor" and argument is None:
                    return None
                return super().check_argument_for_proper_class(argument_name, argument)

        tokenizer = AutoTokenizer.from_pretrained(path)
        return ImageOnlyProcessor(image_processor=AutoImageProcessor.from_pretrained(path, backend=backend),
                                  tokenizer=tokenizer, video_processor=None, chat_template=tokenizer.chat_template)
