"""Tiny random-weight checkpoints for the `<im_patch>` models (M3D-LaMed, Med3DVLM), built from the
stand-in code under tests/fake_models/ and saved with `save_pretrained` the way the real checkpoints
are: config (the vision keys the model code reads), weights, generation config and a tokenizer that
has `<im_patch>` as an added special token.

- M3D: a Llama-style (sentencepiece-like, byte fallback) tokenizer as Phi-3 has, BOS `<s>`, EOS
  `<|endoftext|>`, `<|end|>`; `add_bos_token` chooses whether it adds BOS (the adapter must end up
  with exactly one either way).
- Med3DVLM: the Qwen2 tokenizer of tests/tiny_vlms.py (no BOS, as Qwen2.5's) plus `<im_patch>`.

Real input sizes (32x256x256, 128x256x256) are kept: the stand-in vision towers only average-pool,
so the recipes' arrays go in unchanged.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import torch

from tests.tiny_vlms import _init, _train_bpe, qwen_tokenizer

FAKES = Path(__file__).resolve().parent / "fake_models"
M3D_CODE = FAKES / "m3d"
MED3DVLM_CODE = FAKES / "med3dvlm"
PHI3_SPECIAL = ["<unk>", "<s>", "</s>", "<|endoftext|>", "<|end|>", "<|assistant|>", "<|user|>"]
M3D_ADDED = ["<im_patch>", "<bx_start>", "<bx_end>", "[SEG]"]


def _fake(code_dir: Path, module: str):
    """The stand-in's module, imported from its folder (sys.path restored afterwards)."""
    from adapters.models.impatch import drop_package

    drop_package(module.split(".")[0], keep_from=code_dir.resolve())
    saved = list(sys.path)
    sys.path.insert(0, str(code_dir))
    try:
        return importlib.import_module(module)
    finally:
        sys.path[:] = saved


def phi3_tokenizer(add_bos_token: bool = True):
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import AddedToken, LlamaTokenizer

    pipeline = Tokenizer(BPE(unk_token="<unk>", byte_fallback=True))
    pipeline.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    vocab, merges = _train_bpe(pipeline, PHI3_SPECIAL[:3], 600)
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    tok = LlamaTokenizer(vocab=vocab, merges=merges, unk_token="<unk>", bos_token="<s>", eos_token="<|endoftext|>",
                         pad_token="<|endoftext|>", add_bos_token=add_bos_token, add_eos_token=False)
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in PHI3_SPECIAL[3:] + M3D_ADDED],
                   special_tokens=True)
    return tok


def build_tiny_m3d(out_dir, add_bos_token: bool = True, seed: int = 3) -> Path:
    from transformers import GenerationConfig

    module = _fake(M3D_CODE, "LaMed.src.model.language_model.lamed_phi3")
    out = Path(out_dir)
    tok = phi3_tokenizer(add_bos_token)
    ids = {t: tok.convert_tokens_to_ids(t) for t in PHI3_SPECIAL + M3D_ADDED}
    config = module.LamedPhi3Config(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=1024, original_max_position_embeddings=1024,
        bos_token_id=ids["<s>"], eos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
        # the vision keys LaMed reads (train.py defaults), with a narrow stand-in width
        vision_tower="vit3d", image_channel=1, image_size=[32, 256, 256], patch_size=[4, 16, 16],
        vision_select_layer=-1, vision_select_feature="patch", mm_projector_type="spp", proj_layer_type="mlp",
        proj_layer_num=2, proj_pooling_type="spatial", proj_pooling_size=2, mm_hidden_size=32,
        segmentation_module=None, seg_token_id=ids["[SEG]"])
    torch.manual_seed(0)
    model = module.LamedPhi3ForCausalLM(config).eval()
    _init(model, seed=seed)
    model.generation_config = GenerationConfig(bos_token_id=ids["<s>"], pad_token_id=ids["<|endoftext|>"],
                                               eos_token_id=[ids["<|endoftext|>"], ids["<|end|>"]])
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def build_tiny_med3dvlm(out_dir, seed: int = 4) -> Path:
    from transformers import AddedToken, GenerationConfig

    module = _fake(MED3DVLM_CODE, "src.model.llm.qwen")
    out = Path(out_dir)
    tok = qwen_tokenizer()
    tok.add_tokens([AddedToken("<im_patch>", special=True, normalized=False)], special_tokens=True)
    eos, pad = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    config = module.VLMQwenConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=pad, eos_token_id=eos, pad_token_id=pad,
        tie_word_embeddings=False,
        # the vision keys Med3DVLM reads (train_vlm.py / finetune_lora.sh), with a narrow stand-in width
        vision_tower="dcformer", input_size=[256, 256, 128], dim=32, depth=12, vision_select_layer=-2,
        vision_select_feature="cls_patch", mm_projector_type="mixer", mm_mlp_depth=2, proj_out_num=256,
        low_output_size=[192, 128], high_output_size=[64, 128], low_input_size=[256, 384],
        high_input_size=[32, 768], mm_hidden_size=32)
    torch.manual_seed(0)
    model = module.VLMQwenForCausalLM(config).eval()
    _init(model, seed=seed, std=0.4)   # Qwen needs a wider spread for input-dependent greedy tokens
    model.generation_config = GenerationConfig(bos_token_id=pad, pad_token_id=pad, eos_token_id=[eos, pad])
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


__all__ = ["build_tiny_m3d", "build_tiny_med3dvlm", "phi3_tokenizer", "M3D_CODE", "MED3DVLM_CODE"]
