# As upstream: ct_clip.py exists in no commit, so importing this module fails unless a
# `llava.model.multimodal_encoder.ct_clip` module is put in sys.modules first.
from .ct_clip import CLIPVisionTower


def build_vision_tower(vision_tower_cfg, **kwargs):
    return CLIPVisionTower(vision_tower_cfg, **kwargs)
