from torch import nn

from .coca_attentional_pooler import AttentionalPoolProjector


def build_vision_projector(config, delay_load=False, **kwargs):
    kind = getattr(config, "mm_projector_type", "linear")
    if kind != "attn_pool+mlp2x_gelu":
        raise ValueError(f"fake projector: unknown type {kind}")
    return nn.Sequential(
        AttentionalPoolProjector(config.mm_hidden_size, config.mm_context_size, n_queries=256, n_head=8),
        nn.Linear(config.mm_hidden_size, config.hidden_size), nn.GELU(),
        nn.Linear(config.hidden_size, config.hidden_size))
