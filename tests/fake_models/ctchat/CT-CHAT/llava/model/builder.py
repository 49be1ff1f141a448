"""Fake of CT-CHAT's llava/model/builder.py: load_pretrained_model's signature and return value. The
merged-weights branch is real (from_pretrained, as upstream, in float16 with a device_map); the LoRA
branch records its arguments and stops (no peft here)."""
import torch
from transformers import AutoTokenizer

from llava._fake_record import record
from llava.model import LlavaLlamaForCausalLM
from llava.train.train import smart_tokenizer_and_embedding_resize  # noqa: F401  (upstream's import chain)


def load_pretrained_model(model_path, model_base, model_name, load_8bit=False, load_4bit=False, device_map="auto",
                          device="cuda", use_flash_attn=False, **kwargs):
    record("load_pretrained_model", model_path=model_path, model_base=model_base, model_name=model_name,
           device=device, device_map=device_map)
    kwargs = {"device_map": device_map, **kwargs}
    if device != "cuda":
        kwargs["device_map"] = {"": device}
    kwargs["torch_dtype"] = torch.float16
    if "llava" not in model_name.lower():
        raise NotImplementedError("fake builder: only LLaVA models")
    if "lora" in model_name.lower() and model_base is not None:
        raise NotImplementedError("fake builder: the LoRA branch needs peft and a base model")
    tokenizer = AutoTokenizer.from_pretrained(model_path, use_fast=False)
    kwargs.pop("device_map")       # accelerate is not installed where the fake runs
    model = LlavaLlamaForCausalLM.from_pretrained(model_path, low_cpu_mem_usage=True, **kwargs)
    model.to(device)
    return tokenizer, model, None, getattr(model.config, "max_sequence_length", 2048)
