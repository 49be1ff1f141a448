"""Fake of VILA's llava_llama.py: LlavaLlamaConfig and LlavaLlamaModel (llm + vision tower + projector)."""
import os
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModel, PreTrainedModel

from llava._fake_record import fault, record
from ..configuration_llava import LlavaConfig
from ..llava_arch import LlavaMetaForCausalLM, LlavaMetaModel


class LlavaLlamaConfig(LlavaConfig):
    model_type = "llava_llama"


class LlavaLlamaModel(LlavaMetaModel, LlavaMetaForCausalLM, PreTrainedModel):
    config_class = LlavaLlamaConfig
    main_input_name = "input_embeds"
    supports_gradient_checkpointing = True

    def __init__(self, config: LlavaLlamaConfig = None, *args, **kwargs):
        super().__init__(config)
        self.init_vlm(config=config, *args, **kwargs)

    def forward(self, input_ids=None, images=None, attention_mask=None, position_ids=None, past_key_values=None,
                seqlens_in_batch=None, inputs_embeds=None, labels=None, use_cache=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, dpo_forward=False, **kwargs):
        if inputs_embeds is None:
            (input_ids, position_ids, attention_mask, past_key_values, inputs_embeds, labels) = \
                self.prepare_inputs_labels_for_multimodal(input_ids, position_ids, attention_mask, past_key_values,
                                                          labels, images)
        return self.llm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                        inputs_embeds=inputs_embeds, labels=labels, use_cache=use_cache, **kwargs)

    @torch.inference_mode()
    def generate(self, input_ids=None, images=None, attention_mask=None, **generation_kwargs):
        record("generate", input_ids=None if input_ids is None else input_ids.tolist(),
               images=None if images is None else [{"shape": list(i.shape), "dtype": str(i.dtype),
                                                    "min": float(i.min()), "max": float(i.max())} for i in images],
               kwargs={k: v for k, v in generation_kwargs.items() if k != "stopping_criteria"},
               stopping=[type(s).__name__ for s in generation_kwargs.get("stopping_criteria") or []])
        folder = os.environ.get("CTSVQA_FAKE_RECORD")
        if folder and images is not None:
            n = len(list(Path(folder).glob("pixels_*.npy")))
            np.save(Path(folder) / f"pixels_{n}.npy", torch.cat(list(images)).float().cpu().numpy())
        fault()
        if images is not None:
            (_, _, attention_mask, _, inputs_embeds, _) = self.prepare_inputs_labels_for_multimodal(
                input_ids, None, attention_mask, None, None, images)
        else:
            inputs_embeds = self.llm.get_input_embeddings()(input_ids)
        out = self.llm.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **generation_kwargs)
        record("generated", output_ids=out.tolist())
        return out


AutoConfig.register("llava_llama", LlavaLlamaConfig)
AutoModel.register(LlavaLlamaConfig, LlavaLlamaModel)
