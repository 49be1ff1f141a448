"""Fake of RadFM's Model/RadFM/my_embedding_layer.py (not its code): the class name, the
constructor's keyword defaults, the Med-KEBERT download at construction, the shared embedding
`weight` and the forward contract — ids one-hot over [text vocabulary | <image>, </image> |
perceiver_num outputs per scan] — with a patchify + linear "encoder" in place of the 3D ViT and
perceiver. `vision_x` is [B, S, 3, H, W, D]; H, W must be multiples of patch_size and D of
frame_patch_size, as for the real ViT."""

import torch
import torch.nn as nn
import torch.nn.functional as F
import transformers
from transformers import AutoModel, AutoTokenizer

MED_KEBERT = "xmcmic/Med-KEBERT"


class MyEmbedding(nn.Module):
    def __init__(self, num_embeddings=32000, embedding_dim=5120, perceiver_num=32, vis_dim=768,
                 patch_size=32, frame_patch_size=4, seg_channel=256):
        super().__init__()
        # Upstream downloads Med-KEBERT here (used only for the training loss): the real classes
        # must have been swapped for offline stand-ins before construction.
        if AutoTokenizer is transformers.AutoTokenizer or AutoModel is transformers.AutoModel:
            raise RuntimeError(f"fake RadFM: MyEmbedding would download {MED_KEBERT} from the Hub; patch "
                               f"AutoTokenizer and AutoModel in Model.RadFM.my_embedding_layer first")
        self.bert_tokenizer = AutoTokenizer.from_pretrained(MED_KEBERT)
        self.bert_model = AutoModel.from_pretrained(MED_KEBERT)
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.weight = nn.Parameter(torch.randn((num_embeddings, embedding_dim)))
        self.figure_token_weight = nn.Parameter(torch.randn((2, embedding_dim)))
        self.flag = "Text"
        self.patch_size = patch_size
        self.frame_patch_size = frame_patch_size
        self.perceiver_num = perceiver_num
        # the real layout: `vision_encoder` (upstream the 3D ViT, returning (tokens, pos_embedding)) is
        # called on `vision_x` rearranged to (B*S, C, H, W, D), a view of the caller's tensor
        self.vision_encoder = _PatchEncoder(patch_size, frame_patch_size, vis_dim)
        self.latents = nn.Parameter(torch.randn(perceiver_num, vis_dim))
        self.fc = nn.Linear(vis_dim, embedding_dim)

    def forward(self, text_input, vision_x, key_words_query=None):
        B, S, C, H, W, D = vision_x.shape
        tokens, _ = self.vision_encoder(vision_x.reshape(B * S, C, H, W, D))
        pooled = tokens.mean(dim=1)                                         # (B*S, vis_dim)
        vis = self.fc(self.latents[None] + pooled[:, None])                 # (B*S, perceiver_num, embedding_dim)
        vis = vis.reshape(B, S * self.perceiver_num, self.embedding_dim)
        table = torch.cat([self.weight, self.figure_token_weight], dim=0).unsqueeze(0).repeat(B, 1, 1)
        table = torch.cat([table, vis], dim=1)
        one_hot = F.one_hot(text_input, table.shape[1]).to(vis.dtype).to(vis.device)
        return torch.matmul(one_hot, table), None


class _PatchEncoder(nn.Module):
    def __init__(self, patch_size, frame_patch_size, vis_dim):
        super().__init__()
        self.patch_size, self.frame_patch_size = patch_size, frame_patch_size
        self.patch_embed = nn.Linear(3 * patch_size * patch_size * frame_patch_size, vis_dim)

    def forward(self, x):
        N, C, H, W, D = x.shape
        p, f = self.patch_size, self.frame_patch_size
        x = x.reshape(N, C, H // p, p, W // p, p, D // f, f)
        x = x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(N, (H // p) * (W // p) * (D // f), C * p * p * f)
        return self.patch_embed(x), None
