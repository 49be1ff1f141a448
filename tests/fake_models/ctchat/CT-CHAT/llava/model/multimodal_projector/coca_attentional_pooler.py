"""Fake attentional pooler: 256 learned queries, 8 heads, over the flattened CT tokens."""
import torch
from torch import nn


class AttentionalPoolProjector(nn.Module):
    def __init__(self, embed_dim, context_dim, projector=None, n_head=8, n_queries=256, norm_layer=nn.LayerNorm):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(n_queries, embed_dim) * 0.02)
        self.attn = nn.MultiheadAttention(embed_dim, n_head, kdim=context_dim, vdim=context_dim, batch_first=True)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x):
        q = self.queries.unsqueeze(0).expand(x.shape[0], -1, -1).to(x.dtype)
        out, _ = self.attn(q, x, x, need_weights=False)
        return self.norm(out)
