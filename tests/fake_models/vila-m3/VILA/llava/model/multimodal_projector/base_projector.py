"""Fake of VILA's base_projector.py: MultimodalProjector with mm_projector_type='mlp_downsample'
(pad 27x27 to 28x28, merge 2x2 -> 196 tokens of 4C, LayerNorm, Linear, GELU, Linear)."""
import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel


class MultimodalProjectorConfig(PretrainedConfig):
    model_type = "v2l_projector"

    def __init__(self, mm_projector_type: str = None, **kwargs):
        super().__init__()
        self.mm_projector_type = mm_projector_type


class DownSampleBlock(nn.Module):
    def forward(self, x):
        n = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], n, n, -1)
        if n % 2:
            x = nn.functional.pad(x, (0, 0, 0, 1, 0, 1))
            n += 1
        b, _, _, c = x.shape
        x = x.reshape(b, n // 2, 2, n // 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(b, (n // 2) ** 2, 4 * c)
        return x


class MultimodalProjector(PreTrainedModel):
    config_class = MultimodalProjectorConfig

    def __init__(self, mm_projector_cfg: MultimodalProjectorConfig, config: PretrainedConfig):
        super().__init__(mm_projector_cfg)
        if mm_projector_cfg.mm_projector_type != "mlp_downsample":
            raise ValueError(f"fake projector: unknown type {mm_projector_cfg.mm_projector_type}")
        self.layers = nn.Sequential(DownSampleBlock(), nn.LayerNorm(config.mm_hidden_size * 4),
                                    nn.Linear(config.mm_hidden_size * 4, config.hidden_size), nn.GELU(),
                                    nn.Linear(config.hidden_size, config.hidden_size))
        self.post_init()          # transformers 5's from_pretrained needs it (upstream's 4.37 did not)

    def forward(self, x, *args, **kwargs):
        return self.layers(x)


AutoConfig.register("v2l_projector", MultimodalProjectorConfig)
AutoModel.register(MultimodalProjectorConfig, MultimodalProjector)
