"""Fake of VILA's llava/model/builder.py: load_pretrained_model (GPU-only, as upstream: SigLIP gets
device_map='cuda') and prepare_config_for_eval."""
import torch
from transformers import AutoConfig, PretrainedConfig

from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_PATCH_TOKEN
from llava.model import *  # noqa: F401,F403
from llava.model.language_model.llava_llama import LlavaLlamaModel
from llava.model.utils import is_mm_model


def load_pretrained_model(model_path, model_name, model_base=None, load_8bit=False, load_4bit=False,
                          device_map="auto", device="cuda", **kwargs):
    kwargs = {"device_map": device_map, **kwargs}
    if device != "cuda":
        kwargs["device_map"] = {"": device}
    kwargs["torch_dtype"] = torch.float16
    if not is_mm_model(model_path) or model_base is not None:
        raise NotImplementedError("fake builder: only a merged VILA checkpoint")
    config = AutoConfig.from_pretrained(model_path)
    config.resume_path = model_path
    prepare_config_for_eval(config, kwargs)
    if not torch.cuda.is_available():
        raise RuntimeError("Torch not compiled with CUDA enabled")   # what device_map='cuda' does on a CPU box
    model = LlavaLlamaModel(config=config, low_cpu_mem_usage=True, **kwargs)
    tokenizer = model.tokenizer
    model.eval()
    if getattr(model.config, "mm_use_im_patch_token", True):
        tokenizer.add_tokens([DEFAULT_IMAGE_PATCH_TOKEN], special_tokens=True)
    if getattr(model.config, "mm_use_im_start_end", False):
        tokenizer.add_tokens([DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN], special_tokens=True)
    model.resize_token_embeddings(len(tokenizer))
    model.get_vision_tower().to(device=device, dtype=torch.float16)
    model.get_mm_projector().to(device=device, dtype=torch.float16)
    return tokenizer, model, model.get_vision_tower().image_processor, 2048


def parse_model_name_or_path(config: PretrainedConfig, model_name="llm", suffix="_cfg"):
    cfg = getattr(config, f"{model_name}{suffix}", None)
    if isinstance(cfg, str):
        return cfg
    if isinstance(cfg, dict):
        return cfg["architectures"][0]
    raise ValueError(f"Invalid {model_name}{suffix} configuration!")


def prepare_config_for_eval(config: PretrainedConfig, kwargs: dict):
    if getattr(config, "vision_tower_cfg", None) is None:
        config.vision_tower_cfg = config.mm_vision_tower
    config.model_dtype = kwargs.pop("torch_dtype").__str__()
    if "siglip" in parse_model_name_or_path(config, "vision_tower").lower():
        kwargs["device_map"] = "cuda"
