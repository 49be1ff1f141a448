"""Test stand-in for mirthAI/Med3DVLM `src/model/llm/qwen.py` (written for ctsvqa, not upstream
code): `VLMQwenConfig` (model_type "vlm_qwen") and `VLMQwenForCausalLM`, a real transformers Qwen2
with the stand-in vision path of ../vlm_arch.py.

Call signatures as documented (models-code.md §2):
- `generate(images=None, inputs=None, **hf_generate_kwargs)`: like the real one it drops
  `attention_mask` and `position_ids`, splices the image into the embeddings and calls
  `Qwen2ForCausalLM.generate(inputs_embeds=...)`, so it returns only the new ids;
- `forward(input_ids, attention_mask, position_ids, past_key_values, inputs_embeds, labels, use_cache,
  output_attentions, output_hidden_states, images, image_sizes, return_dict, num_logits_to_keep,
  **kwargs)` — plus `cache`, the name transformers >= 5.24 passes the KV cache under (the real code
  would swallow it in **kwargs and decode without its cache; the adapter refuses such code under such
  a transformers, adapters/models/impatch.py `check_generate_compat`).
Each `generate` call is recorded (../vlm_arch.py `record`), and `CTSVQA_FAKE_FAULT` is honoured.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn as nn
from transformers import AutoConfig, AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen2Model

from ..vlm_arch import VLMMetaForCausalLM, VLMMetaModel, describe_images, fault, jsonable, record

_BASE_FORWARD = inspect.signature(Qwen2ForCausalLM.forward).parameters
CACHE_ARG = "cache" if "cache" in _BASE_FORWARD else "past_key_values"


class VLMQwenConfig(Qwen2Config):
    model_type = "vlm_qwen"


class VLMQwenModel(VLMMetaModel, Qwen2Model):
    config_class = VLMQwenConfig


class VLMQwenForCausalLM(Qwen2ForCausalLM, VLMMetaForCausalLM):
    config_class = VLMQwenConfig

    def __init__(self, config):
        super().__init__(config)
        self.model = VLMQwenModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.calls = []
        self.post_init()

    def get_model(self):
        return self.model

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, inputs_embeds=None,
                labels=None, use_cache=None, output_attentions=None, output_hidden_states=None, images=None,
                image_sizes=None, return_dict=None, num_logits_to_keep=None, cache=None, **kwargs):
        past_key_values = cache if cache is not None else past_key_values
        if inputs_embeds is None:
            input_ids, position_ids, attention_mask, past_key_values, inputs_embeds, labels = \
                self.prepare_inputs_for_multimodal(input_ids, position_ids, attention_mask, past_key_values, labels,
                                                   images)
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               inputs_embeds=inputs_embeds, labels=labels, use_cache=use_cache,
                               output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                               return_dict=return_dict, **{CACHE_ARG: past_key_values})

    @torch.no_grad()
    def generate(self, images=None, inputs=None, **kwargs):
        fault()
        dropped = {k: kwargs.pop(k) is not None for k in ("attention_mask", "position_ids") if k in kwargs}
        entry = {"model": "vlm_qwen", "images": None if images is None else describe_images(images),
                 "inputs": inputs.tolist(), "kwargs": jsonable(kwargs), "dropped": dropped,
                 "vision_calls_before": self.get_model().vision_tower.forward_calls}
        if images is not None:
            _, _, _, _, inputs_embeds, _ = self.prepare_inputs_for_multimodal(inputs, None, None, None, None, images)
        else:
            inputs_embeds = self.get_model().embed_tokens(inputs)
        out = super().generate(inputs_embeds=inputs_embeds, **kwargs)
        entry["vision_calls_after"] = self.get_model().vision_tower.forward_calls
        entry["output"] = out.tolist()
        record(self, entry)
        return out

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, inputs_embeds=None, **kwargs):
        images = kwargs.pop("images", None)
        if past_key_values is not None:
            kwargs["past_key_values"] = past_key_values
        inputs = super().prepare_inputs_for_generation(input_ids, inputs_embeds=inputs_embeds, **kwargs)
        if images is not None:
            inputs["images"] = images
        return inputs


AutoConfig.register("vlm_qwen", VLMQwenConfig, exist_ok=True)
AutoModelForCausalLM.register(VLMQwenConfig, VLMQwenForCausalLM, exist_ok=True)
