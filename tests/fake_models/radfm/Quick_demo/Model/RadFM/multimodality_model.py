"""Fake of RadFM's Model/RadFM/multimodality_model.py (not its code): `MultiLLaMAForCausalLM(lang_model_path)`
builds the LLaMA with `LlamaForCausalLM.from_pretrained(lang_model_path)` and a `MyEmbedding` whose
text rows are tied to the LLaMA's input embeddings; `generate(lang_x, vision_x)` takes nothing else
and calls `lang_model.generate(inputs_embeds=..., max_new_tokens=200, top_k=50)` as upstream.

Deviation: the real MyEmbedding is built with its hard-coded defaults (32000 x 5120); this one takes
the tiny LLaMA's vocabulary and hidden size so a test checkpoint stays small.

CTSVQA_FAKE_FAULT=crash|hang fails inside generate; CTSVQA_FAKE_RECORD=FILE appends what generate
was handed (ids, shape, dtype, device, value range, where the brightest voxels are along H, W and
D, the stop id in force) and what it returned."""

import json
import os
import time

import torch
from torch import nn
from transformers.models.llama import LlamaForCausalLM

from .my_embedding_layer import MyEmbedding


class MultiLLaMAForCausalLM(nn.Module):
    def __init__(self, lang_model_path):
        super().__init__()
        self.lang_model = LlamaForCausalLM.from_pretrained(lang_model_path)
        self.lang_model.gradient_checkpointing_enable()
        self.lang_model.enable_input_require_grads()
        config = self.lang_model.config
        self.embedding_layer = MyEmbedding(num_embeddings=config.vocab_size, embedding_dim=config.hidden_size,
                                           vis_dim=16)
        self.embedding_layer.weight = self.lang_model.get_input_embeddings().weight
        self.hidden_dim = config.hidden_size
        self.voc_size = config.vocab_size

    def forward(self, lang_x, vision_x, attention_mask, labels, loss_reweight, key_words_query):
        raise NotImplementedError("fake RadFM: forward is training only")

    def generate(self, lang_x, vision_x):
        fault = os.environ.get("CTSVQA_FAKE_FAULT")
        if fault == "crash":
            os._exit(3)
        if fault == "hang":
            time.sleep(3600)
        self.embedding_layer.flag = "Text"
        with torch.no_grad():
            input_embedding, _ = self.embedding_layer(lang_x, vision_x)
            generation = self.lang_model.generate(inputs_embeds=input_embedding, max_new_tokens=200, top_k=50)
        _record(self.lang_model, lang_x, vision_x, generation)
        return generation


def _record(lang_model, lang_x, vision_x, generation):
    path = os.environ.get("CTSVQA_FAKE_RECORD")
    if not path:
        return
    v = vision_x.detach().float().cpu()
    grey = v[0, 0, 0]                                                    # (H, W, D) of the first scan
    bright = (grey >= grey.max() - 0.05 * (grey.max() - grey.min())).float()
    row = {
        "lang_x": lang_x.tolist(),
        "vision_shape": list(vision_x.shape),
        "vision_dtype": str(vision_x.dtype),
        "vision_device": str(vision_x.device),
        "vision_min": float(v.min()),
        "vision_max": float(v.max()),
        "channels_equal": bool(torch.equal(v[:, :, 0], v[:, :, 1]) and torch.equal(v[:, :, 0], v[:, :, 2])),
        "bright_profile": {"H": bright.sum(dim=(1, 2)).tolist(), "W": bright.sum(dim=(0, 2)).tolist(),
                           "D": bright.sum(dim=(0, 1)).tolist()},
        "lang_dtype": str(lang_model.dtype),
        "eos_token_id": lang_model.generation_config.eos_token_id,
        "generate_kwargs": {"max_new_tokens": 200, "top_k": 50},
        "output": generation.tolist(),
    }
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
