import torch

from .base_projector import MultimodalProjector, MultimodalProjectorConfig


def build_mm_projector(model_type_or_path, config):
    if model_type_or_path is None:
        return None
    return MultimodalProjector.from_pretrained(model_type_or_path, config, torch_dtype=eval(config.model_dtype))
