from .intern.flash_attention import flash_attn  # noqa: F401


class InternVisionTower:
    pass
