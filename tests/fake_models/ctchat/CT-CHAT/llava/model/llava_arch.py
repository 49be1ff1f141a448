"""Fake of CT-CHAT's llava_arch.py: the projector over precomputed CTViT embeddings and the splice of
image features at each IMAGE_TOKEN_INDEX (no <image> in the ids: the image is dropped, as upstream)."""
import os

import torch

from llava.constants import IMAGE_TOKEN_INDEX
from .multimodal_encoder.builder import build_vision_tower  # noqa: F401  (needs the ct_clip stub)
from .multimodal_projector.builder import build_vision_projector


class LlavaMetaModel:
    def __init__(self, config):
        super().__init__(config)
        if hasattr(config, "mm_vision_tower"):
            # as upstream, the vision tower is never built (CTViT runs outside the model)
            self.mm_projector = build_vision_projector(config)

    def get_vision_tower(self):
        return None


class LlavaMetaForCausalLM:
    def get_model(self):
        raise NotImplementedError

    def encode_images(self, images):
        flat = images.reshape(images.shape[0], -1, images.shape[-1])      # [B, 24*24*24, 512]
        return self.get_model().mm_projector(flat)                         # [B, 256, hidden]

    def prepare_inputs_labels_for_multimodal(self, input_ids, position_ids, attention_mask, past_key_values,
                                             labels, images, image_sizes=None):
        if images is None or input_ids.shape[1] == 1:
            return input_ids, position_ids, attention_mask, past_key_values, None, labels
        features = self.encode_images(images.to(self.dtype))
        embed = self.get_model().embed_tokens
        drop = os.environ.get("CTSVQA_FAKE_DROP_IMAGE") == "model"
        rows, image_i = [], 0
        for ids in input_ids:
            where = torch.nonzero(ids == IMAGE_TOKEN_INDEX).flatten().tolist()
            pieces, start = [], 0
            for pos in where:
                pieces.append(embed(ids[start:pos]))
                if not drop:
                    pieces.append(features[image_i])
                image_i += 1
                start = pos + 1
            pieces.append(embed(ids[start:]))
            if not where:
                pieces.append(features[0][0:0])                            # upstream: the image is dropped
            rows.append(torch.cat(pieces, dim=0))
        longest = max(r.shape[0] for r in rows)
        out = torch.zeros(len(rows), longest, rows[0].shape[-1], dtype=rows[0].dtype, device=rows[0].device)
        mask = torch.zeros(len(rows), longest, dtype=torch.long, device=rows[0].device)
        for i, r in enumerate(rows):
            out[i, : r.shape[0]] = r
            mask[i, : r.shape[0]] = 1
        return None, position_ids, mask, past_key_values, out, labels
