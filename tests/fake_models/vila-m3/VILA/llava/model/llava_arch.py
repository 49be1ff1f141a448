"""Fake of VILA's llava_arch.py: init_vlm from the checkpoint's llm/, vision_tower/, mm_projector/,
encode_images, and the splice of image features at each IMAGE_TOKEN_INDEX."""
import os

import torch
# as upstream: transformers 5 moved no_init_weights to transformers.initialization
from transformers.modeling_utils import ContextManagers, no_init_weights  # noqa: F401

from llava.constants import IMAGE_TOKEN_INDEX
from llava.train.sequence_parallel import get_pg_manager  # noqa: F401
from .language_model.builder import build_llm_and_tokenizer
from .multimodal_encoder.builder import build_vision_tower
from .multimodal_projector.builder import build_mm_projector
from .utils import get_model_config


class LlavaMetaModel:
    def init_vlm(self, config=None, *args, **kwargs):
        if hasattr(self, "llm") or hasattr(self, "vision_tower") or hasattr(self, "mm_projector"):
            return
        model_dtype = getattr(config, "model_dtype", "torch.float16")
        if not hasattr(config, "model_dtype"):
            config.model_dtype = model_dtype
        llm_path, vt_path, proj_path = get_model_config(config)
        self.llm, self.tokenizer = build_llm_and_tokenizer(llm_path, config, *args, **kwargs)
        self.vision_tower = build_vision_tower(vt_path, config)
        self.mm_projector = build_mm_projector(proj_path, config)
        self.post_config()
        self.is_loaded = True

    def post_config(self):
        self.training = self.llm.training
        self.config.llm_cfg = self.llm.config
        self.config.vision_tower_cfg = self.vision_tower.config
        self.config.mm_projector_cfg = self.mm_projector.config

    def get_llm(self):
        return self.llm

    def get_lm_head(self):
        return self.llm.lm_head

    def get_vision_tower(self):
        return self.vision_tower

    def get_mm_projector(self):
        return self.mm_projector

    def encode_images(self, images):
        features = self.get_vision_tower()(images)
        return self.get_mm_projector()(features)

    def resize_token_embeddings(self, embed_size):
        return self.llm.resize_token_embeddings(embed_size)


class LlavaMetaForCausalLM:
    def prepare_inputs_labels_for_multimodal(self, input_ids, position_ids, attention_mask, past_key_values,
                                             labels, images):
        if images is None or input_ids.shape[1] == 1:
            return input_ids, position_ids, attention_mask, past_key_values, None, labels
        if isinstance(images, (list, tuple)):
            images = torch.cat(list(images), dim=0)
        features = self.encode_images(images)                       # [N, 196, hidden]
        embed = self.llm.get_input_embeddings()
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
            rows.append(torch.cat(pieces, dim=0))
        longest = max(r.shape[0] for r in rows)
        out = torch.zeros(len(rows), longest, rows[0].shape[-1], dtype=rows[0].dtype, device=rows[0].device)
        mask = torch.zeros(len(rows), longest, dtype=torch.long, device=rows[0].device)
        for i, r in enumerate(rows):
            out[i, longest - r.shape[0]:] = r                          # left padding for generation
            mask[i, longest - r.shape[0]:] = 1
        return None, position_ids, mask, past_key_values, out, labels
