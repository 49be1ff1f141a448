import torch
from transformers import SiglipImageProcessor, SiglipVisionModel

from .vision_encoder import VisionTower


class SiglipVisionTower(VisionTower):
    def __init__(self, model_name_or_path, config, state_dict=None):
        super().__init__(model_name_or_path, config)
        self.image_processor = SiglipImageProcessor.from_pretrained(model_name_or_path)
        self.vision_tower = SiglipVisionModel.from_pretrained(model_name_or_path,
                                                              torch_dtype=eval(config.model_dtype))
        self.is_loaded = True
