"""Test stand-in for mirthAI/Med3DVLM `src/model/vlm_arch.py` (written for ctsvqa, not upstream code).
Same class names and contract as documented in models-code.md §2:

- `VLMMetaModel` builds `vision_tower` and `mm_projector` from the config keys the real code reads
  (`input_size` as (H, W, D), `dim` = the encoder width); the tower is a tiny stand-in for DCFormer +
  the MLP-Mixer projector: like the real encoder it permutes [B, 1, D, H, W] to [B, 1, H, W, D],
  refuses any other size, and yields `proj_out_num` (256) tokens.
- `VLMMetaForCausalLM.encode_images` and `prepare_inputs_for_multimodal` with the documented splice:
  keep embedding 0, then the image tokens, then the embeddings from position 1 + n on.

`record(...)` keeps what `generate` was handed, for the tests (see tests/fake_models/README.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from abc import ABC, abstractmethod

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def fault() -> None:
    mode = os.environ.get("CTSVQA_FAKE_FAULT")
    if mode == "crash":
        os._exit(3)
    if mode == "hang":
        time.sleep(3600)


def describe_images(images: torch.Tensor) -> dict:
    """Shape, dtype, range, an exact digest, and where the brightest voxels sit along each spatial
    axis of the array as handed over (0 = low index, 1 = high index)."""
    arr = images.detach().float().cpu().numpy()
    bright = arr >= arr.max() - 0.05 * (arr.max() - arr.min())
    centroids = []
    for axis in range(2, arr.ndim):
        profile = bright.sum(axis=tuple(i for i in range(arr.ndim) if i != axis)).astype(np.float64)
        centre = (profile * np.arange(len(profile))).sum() / max(profile.sum(), 1)
        centroids.append(round(float(centre / max(len(profile) - 1, 1)), 4))
    return {"shape": list(images.shape), "dtype": str(images.dtype).replace("torch.", ""),
            "device": str(images.device), "min": float(arr.min()), "max": float(arr.max()),
            "sha256": hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest(),
            "bright_centroid": centroids}


def jsonable(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return repr(value)


def record(model, entry: dict) -> None:
    model.calls.append(entry)
    path = os.environ.get("CTSVQA_FAKE_RECORD")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(entry) + "\n")


class FakeDCFormerTower(nn.Module):
    POOL = 16                                # 256x256x128 -> 16x16x8 cells -> 2x2x2 groups -> 8x8x4 = 256 tokens

    def __init__(self, config):
        super().__init__()
        self.input_size = tuple(int(s) for s in config.input_size)          # (H, W, D)
        grid = [s // self.POOL for s in self.input_size]
        if any(g % 2 for g in grid):
            raise ValueError(f"input_size / {self.POOL} = {grid} must be even")
        self.n_tokens = int(np.prod(grid)) // 8
        self.hidden_size = int(config.dim)
        self.proj = nn.Linear(8, self.hidden_size)
        self.forward_calls = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 1, 3, 4, 2)                                   # (B, 1, D, H, W) -> (B, 1, H, W, D)
        if tuple(x.shape[1:]) != (1, *self.input_size):
            raise ValueError(f"DCFormer expects [B, 1, D, H, W] = [B, 1, {self.input_size[2]}, {self.input_size[0]}, "
                             f"{self.input_size[1]}], got {list(images.shape)}")
        self.forward_calls += 1
        x = F.avg_pool3d(x, kernel_size=self.POOL)
        b, c, h, w, d = x.shape
        x = x.reshape(b, h // 2, 2, w // 2, 2, d // 2, 2).permute(0, 1, 3, 5, 2, 4, 6)
        return self.proj(x.reshape(b, self.n_tokens, 8))


class VLMMetaModel:
    def __init__(self, config):
        super().__init__(config)
        if hasattr(config, "vision_tower"):
            self.vision_tower = FakeDCFormerTower(config)
            self.mm_projector = nn.Sequential(nn.Linear(config.dim, config.hidden_size), nn.GELU(),
                                              nn.Linear(config.hidden_size, config.hidden_size))

    def get_vision_tower(self):
        return getattr(self, "vision_tower", None)


class VLMMetaForCausalLM(ABC):
    @abstractmethod
    def get_model(self):
        ...

    def get_vision_tower(self):
        return self.get_model().get_vision_tower()

    def encode_images(self, images):
        return self.get_model().mm_projector(self.get_model().get_vision_tower()(images))

    def prepare_inputs_for_multimodal(self, input_ids, position_ids, attention_mask, past_key_values, labels, images):
        if self.get_vision_tower() is None or images is None or input_ids.shape[1] == 1:
            return input_ids, position_ids, attention_mask, past_key_values, None, labels
        features = self.encode_images(images)
        embeds = self.get_model().embed_tokens(input_ids)
        n = features.shape[1]
        embeds = torch.cat((embeds[:, :1, :], features, embeds[:, n + 1:, :]), dim=1)
        return None, position_ids, attention_mask, past_key_values, embeds, labels
