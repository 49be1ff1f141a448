"""Test stand-in for BAAI-DCAI/M3D `LaMed/src/model/language_model/lamed_phi3.py` (written for
ctsvqa, not upstream code): `LamedPhi3Config` (model_type "lamed_phi3") and `LamedPhi3ForCausalLM`,
a real transformers Phi-3 with the stand-in vision path of ../lamed_arch.py.

Call signatures as documented (models-code.md §1):
- `generate(images=None, inputs=None, seg_enable=False, **hf_generate_kwargs)`: like the real one it
  drops `attention_mask` and `position_ids`, splices the image into the embeddings and calls
  `Phi3ForCausalLM.generate(inputs_embeds=...)`, so it returns only the new ids;
- `forward(images, input_ids, labels, attention_mask, segs, position_ids, past_key_values,
  inputs_embeds, use_cache, output_attentions, output_hidden_states, return_dict, cache_position)`
  with no **kwargs, like the real one — plus `cache` and `logits_to_keep`, which transformers 5's
  generate passes (the KV cache is named `cache` from 5.24 on; Phi-3's prepare_inputs_for_generation
  always passes logits_to_keep=0). The real code predates both; the adapter refuses such code under
  such a transformers (adapters/models/impatch.py `check_generate_compat`).
Each `generate` call is recorded (../lamed_arch.py `_record`), and `CTSVQA_FAKE_FAULT` is honoured.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn as nn
from transformers import AutoConfig, AutoModelForCausalLM, Phi3Config, Phi3ForCausalLM, Phi3Model

from ..lamed_arch import LamedMetaForCausalLM, LamedMetaModel, _describe_images, _fault, _jsonable, _record

# transformers >= 5.24 names the KV cache `cache` (past_key_values before)
CACHE_ARG = "cache" if "cache" in inspect.signature(Phi3ForCausalLM.forward).parameters else "past_key_values"


class LamedPhi3Config(Phi3Config):
    model_type = "lamed_phi3"


class LamedPhi3Model(LamedMetaModel, Phi3Model):
    config_class = LamedPhi3Config


class LamedPhi3ForCausalLM(LamedMetaForCausalLM, Phi3ForCausalLM):
    config_class = LamedPhi3Config

    def __init__(self, config):
        super().__init__(config)
        self.model = LamedPhi3Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.calls = []
        self.post_init()

    def get_model(self):
        return self.model

    def forward(self, images=None, input_ids=None, labels=None, attention_mask=None, segs=None, position_ids=None,
                past_key_values=None, inputs_embeds=None, use_cache=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, cache_position=None, cache=None,
                logits_to_keep=None):
        past_key_values = cache if cache is not None else past_key_values
        if inputs_embeds is None:
            input_ids, position_ids, attention_mask, past_key_values, inputs_embeds, labels = \
                self.prepare_inputs_for_multimodal(input_ids, position_ids, attention_mask, past_key_values,
                                                   labels, images)
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               inputs_embeds=inputs_embeds, labels=labels, **{CACHE_ARG: past_key_values},
                               use_cache=use_cache, output_attentions=output_attentions,
                               output_hidden_states=output_hidden_states, return_dict=return_dict,
                               cache_position=cache_position,
                               **({} if logits_to_keep is None else {"logits_to_keep": logits_to_keep}))

    @torch.no_grad()
    def generate(self, images=None, inputs=None, seg_enable=False, **kwargs):
        _fault()
        dropped = {k: kwargs.pop(k) is not None for k in ("attention_mask", "position_ids") if k in kwargs}
        if seg_enable:
            raise NotImplementedError("the stand-in has no segmentation module")
        entry = {"model": "lamed_phi3", "images": None if images is None else _describe_images(images),
                 "inputs": inputs.tolist(), "kwargs": _jsonable(kwargs), "dropped": dropped,
                 "vision_calls_before": self.get_model().vision_tower.forward_calls}
        if images is not None:
            _, _, _, _, inputs_embeds, _ = self.prepare_inputs_for_multimodal(inputs, None, None, None, None, images)
        else:
            inputs_embeds = self.get_model().embed_tokens(inputs)
        out = super().generate(inputs_embeds=inputs_embeds, **kwargs)
        entry["vision_calls_after"] = self.get_model().vision_tower.forward_calls
        entry["output"] = out.tolist()
        _record(self, entry)
        return out

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, inputs_embeds=None, **kwargs):
        images = kwargs.pop("images", None)
        if past_key_values is not None:
            kwargs["past_key_values"] = past_key_values
        inputs = super().prepare_inputs_for_generation(input_ids, inputs_embeds=inputs_embeds, **kwargs)
        if images is not None:
            inputs["images"] = images
        return inputs


AutoConfig.register("lamed_phi3", LamedPhi3Config, exist_ok=True)
AutoModelForCausalLM.register(LamedPhi3Config, LamedPhi3ForCausalLM, exist_ok=True)
