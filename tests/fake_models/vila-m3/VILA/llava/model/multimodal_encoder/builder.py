import os

from .intern_encoder import InternVisionTower  # noqa: F401
from .radio_encoder import RADIOVisionTower  # noqa: F401
from .siglip_encoder import SiglipVisionTower


def build_vision_tower(model_name_or_path, config):
    if model_name_or_path is None:
        return None
    if "siglip" not in model_name_or_path.lower() and not os.path.isdir(model_name_or_path):
        raise ValueError(f"Unknown vision tower: {model_name_or_path}")
    tower = SiglipVisionTower(model_name_or_path, config)
    config.mm_hidden_size = tower.config.hidden_size
    return tower
