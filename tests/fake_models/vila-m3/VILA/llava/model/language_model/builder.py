import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def build_llm_and_tokenizer(model_name_or_path, config, attn_implementation=None, model_max_length=None, *args,
                            **kwargs):
    dtype = eval(getattr(config, "model_dtype", "torch.float16"))
    llm = AutoModelForCausalLM.from_pretrained(model_name_or_path, torch_dtype=dtype)
    if not os.path.isfile(os.path.join(model_name_or_path, "tokenizer_config.json")):
        raise ValueError(f"Cannot find tokenizer in {model_name_or_path}.")
    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, use_fast=False)
    config.hidden_size = llm.config.hidden_size
    return llm, tokenizer
