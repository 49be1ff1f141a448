"""Fake CTViT: the constructor and forward signature of CT-CLIP's, a trivial encoder inside (per
patch of temporal_patch_size x patch_size^2 voxels: mean and max -> Linear -> LayerNorm). Like
upstream, forward hard-codes torch.device('cuda')."""
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn


def _pair(x):
    return (x, x) if isinstance(x, int) else tuple(x)


class CTViT(nn.Module):
    def __init__(self, *, dim, codebook_size, image_size, patch_size, temporal_patch_size, spatial_depth,
                 temporal_depth, discr_base_dim=16, dim_head=64, heads=8, channels=1, use_vgg_and_gan=True, vgg=None,
                 discr_attn_res_layers=(16,), use_hinge_loss=True, attn_dropout=0.0, ff_dropout=0.0):
        super().__init__()
        self.image_size = _pair(image_size)
        self.patch_size = _pair(patch_size)
        self.temporal_patch_size = temporal_patch_size
        self.to_tokens = nn.Linear(2 * channels, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, video, mask=None, return_recons=False, return_recons_only=False, return_discr_loss=False,
                apply_grad_penalty=True, return_only_codebook_ids=False, return_encoded_tokens=False):
        device = torch.device("cuda")           # as upstream: the device is hard-coded
        assert video.ndim == 5
        b, c, f, *image_dims = video.shape
        assert tuple(image_dims) == self.image_size
        video = video.to(device)
        pt, (ph, pw) = self.temporal_patch_size, self.patch_size
        patches = video.reshape(b, c, f // pt, pt, image_dims[0] // ph, ph, image_dims[1] // pw, pw)
        patches = patches.permute(0, 2, 4, 6, 1, 3, 5, 7).flatten(-3)      # b t h w c (pt ph pw)
        stats = torch.cat([patches.mean(-1), patches.amax(-1)], dim=-1)     # b t h w 2c
        tokens = self.norm(self.to_tokens(stats))
        folder = os.environ.get("CTSVQA_FAKE_RECORD")
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            n = len(list(Path(folder).glob("ctvit_patch_means_*.npy")))
            np.save(Path(folder) / f"ctvit_patch_means_{n}.npy", patches.mean(-1)[0, ..., 0].float().cpu().numpy())
            with open(Path(folder) / "ctvit.jsonl", "a") as fh:
                fh.write(json.dumps({"shape": list(video.shape), "dtype": str(video.dtype), "device": str(video.device),
                                     "min": float(video.min()), "max": float(video.max()),
                                     "return_encoded_tokens": return_encoded_tokens}) + "\n")
        if return_encoded_tokens:
            return tokens
        raise NotImplementedError("fake CTViT: only return_encoded_tokens=True")
