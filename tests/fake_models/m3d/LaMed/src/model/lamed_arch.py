"""Test stand-in for BAAI-DCAI/M3D `LaMed/src/model/lamed_arch.py` (written for ctsvqa, not upstream
code). Same class names and the same contract as documented in models-code.md §1:

- `LamedMetaModel` builds `vision_tower` and `mm_projector` from the config keys the real code reads
  (`image_channel`, `image_size`, `patch_size`, `mm_hidden_size`); the tower is a tiny stand-in for
  MONAI's ViT + spatial pooling that refuses any other input shape and yields one token per 2x2x2
  group of patches (256 for 32x256x256 with 4x16x16 patches, like the real spp projector).
- `LamedMetaForCausalLM.encode_images` = tower + projector; `prepare_inputs_for_multimodal` does the
  documented splice: keep embedding 0, then the image tokens, then the embeddings from position
  1 + n_image_tokens on (the ids at 1..256 are dropped).

`_record(...)` keeps what `generate` was handed, for the tests (see tests/fake_models/README.md).
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


def _fault() -> None:
    mode = os.environ.get("CTSVQA_FAKE_FAULT")
    if mode == "crash":
        os._exit(3)
    if mode == "hang":
        time.sleep(3600)


def _describe_images(images: torch.Tensor) -> dict:
    """Shape, dtype, range, an exact digest, and where the brightest voxels sit along each spatial
    axis (0 = low index, 1 = high index)."""
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


def _jsonable(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return repr(value)


def _record(model, entry: dict) -> None:
    model.calls.append(entry)
    path = os.environ.get("CTSVQA_FAKE_RECORD")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(entry) + "\n")


class _FakeVisionTower(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.input_shape = (int(config.image_channel), *(int(s) for s in config.image_size))
        self.patch_size = tuple(int(p) for p in config.patch_size)
        grid = [s // p for s, p in zip(self.input_shape[1:], self.patch_size)]
        if any(g % 2 for g in grid):
            raise ValueError(f"image_size / patch_size = {grid} must be even (2x2x2 pooling)")
        self.n_tokens = int(np.prod(grid)) // 8
        self.hidden_size = int(config.mm_hidden_size)
        self.proj = nn.Linear(8 * self.input_shape[0], self.hidden_size)
        self.forward_calls = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[1:]) != self.input_shape:
            raise ValueError(f"vision tower expects [B, {', '.join(map(str, self.input_shape))}], "
                             f"got {list(images.shape)}")
        self.forward_calls += 1
        x = F.avg_pool3d(images, kernel_size=self.patch_size)           # (B, C, d, h, w) patch means
        b, c, d, h, w = x.shape
        x = x.reshape(b, c, d // 2, 2, h // 2, 2, w // 2, 2).permute(0, 2, 4, 6, 1, 3, 5, 7)
        return self.proj(x.reshape(b, self.n_tokens, c * 8))


class LamedMetaModel:
    def __init__(self, config):
        super().__init__(config)
        self.seg_enable = False
        if hasattr(config, "vision_tower"):
            self.vision_tower = _FakeVisionTower(config)
            self.mm_projector = nn.Sequential(nn.Linear(config.mm_hidden_size, config.hidden_size), nn.GELU(),
                                              nn.Linear(config.hidden_size, config.hidden_size))

    def get_vision_tower(self):
        return getattr(self, "vision_tower", None)


class LamedMetaForCausalLM(ABC):
    @abstractmethod
    def get_model(self):
        ...

    def get_vision_tower(self):
        return self.get_model().get_vision_tower()

    def encode_images(self, images):
        return self.get_model().mm_projector(self.get_model().get_vision_tower()(images))

    def prepare_inputs_for_multimodal(self, input_ids, position_ids, attention_mask, past_key_values, labels,
                                      images):
        if self.get_vision_tower() is None or images is None or input_ids.shape[1] == 1:
            return input_ids, position_ids, attention_mask, past_key_values, None, labels
        features = self.encode_images(images)
        embeds = self.get_model().embed_tokens(input_ids)
        n = features.shape[1]
        embeds = torch.cat((embeds[:, :1, :], features, embeds[:, n + 1:, :]), dim=1)
        return None, position_ids, attention_mask, past_key_values, embeds, labels
