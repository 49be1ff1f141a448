"""Tiny random-weight checkpoints for the two LLaVA-family adapters, in the folder layouts the
adapters document, built with the fake model code under tests/fake_models/ (which is what loads them):

- `build_tiny_ctchat(dir)`: `model/` (a merged CT-CHAT LlavaLlamaForCausalLM: config with the
  mm_* keys, safetensors, a Llama-3-style tokenizer) and `ct_clip.pt` (a CT-CLIP state dict whose
  `visual_transformer.*` keys hold the CTViT).
- `build_tiny_vila_m3(dir)`: VILA's `llm/`, `vision_tower/` (a tiny SigLIP at 384 px, patch 14:
  27x27 tokens, with its image processor) and `mm_projector/` (mlp_downsample), plus the top
  `config.json` naming them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from adapters.models.code_roots import ImportRoots
from tests.tiny_vlms import _init

FAKES = Path(__file__).parent / "fake_models"
CTCHAT_CODE = FAKES / "ctchat"
VILA_CODE = FAKES / "vila-m3"

LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
CTCHAT_TOKENS = ["<provided>", "<multiple_choice>", "<long_answer>", "<short_answer>", "<report_generation>"]


def llama3_tokenizer(extra_special: list[str] = ()):
    """A byte-level BPE tokenizer with Llama 3's special tokens (trained here on a few sentences)."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    special = LLAMA3_SPECIAL + list(extra_special)
    pipeline = Tokenizer(BPE())
    pipeline.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    pipeline.decoder = decoders.ByteLevel()
    corpus = ["Is the lesion in the left or the right lung?", "Which lobe contains the nodule?",
              "The answer is left.", "The nodule is in the right upper lobe.", "This is a CT image.",
              "You are a helpful language and vision assistant.", "system user assistant"] * 3
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    pipeline.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=pipeline, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   additional_special_tokens=special[5:] or None)


def build_tiny_ctchat(out_dir, code_dir: Path = CTCHAT_CODE) -> Path:
    out = Path(out_dir)
    roots = ImportRoots([code_dir / "CT-CHAT", code_dir / "CT-CLIP" / "transformer_maskgit"],
                        ("llava", "transformer_maskgit"))
    from adapters.models.ctchat import stub_ct_clip

    roots.enter()
    try:
        stub_ct_clip(code_dir / "CT-CHAT")
        from llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM
        from transformer_maskgit import CTViT

        tok = llama3_tokenizer(CTCHAT_TOKENS)
        config = LlavaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                             bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.eos_token_id, mm_vision_tower="ct_clip",
                             mm_projector_type="attn_pool+mlp2x_gelu", mm_hidden_size=512, mm_context_size=512,
                             mm_patch_merge_type="flat", tie_word_embeddings=False)
        torch.manual_seed(0)
        model = LlavaLlamaForCausalLM(config).eval()
        _init(model, seed=5, std=0.2)
        (out / "model").mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out / "model")
        tok.save_pretrained(out / "model")
        vit = CTViT(dim=512, codebook_size=8192, image_size=480, patch_size=20, temporal_patch_size=10,
                    spatial_depth=4, temporal_depth=4, dim_head=32, heads=8)
        _init(vit, seed=6, std=1.0)
        state = {f"visual_transformer.{k}": v for k, v in vit.state_dict().items()}
        state["text_transformer.unused.weight"] = torch.zeros(2)      # CT-CLIP's other parts: ignored
        torch.save(state, out / "ct_clip.pt")
    finally:
        roots.leave()
    return out


def build_tiny_vila_m3(out_dir, code_dir: Path = VILA_CODE) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM, PretrainedConfig, SiglipVisionConfig, SiglipVisionModel

    try:                # transformers 5 (ours)
        from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil as Processor
    except ImportError:  # 4.x (the vila-m3 family env, tests/real_code)
        from transformers import SiglipImageProcessor as Processor

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = llama3_tokenizer()
    llm_cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    llm = LlamaForCausalLM(llm_cfg).eval()
    _init(llm, seed=7, std=0.2)
    llm.save_pretrained(out / "llm")
    tok.save_pretrained(out / "llm")
    vt_cfg = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=384, patch_size=14, vision_use_head=False)
    vt = SiglipVisionModel(vt_cfg).eval()
    _init(vt, seed=8, std=0.1)
    vt.save_pretrained(out / "vision_tower")
    Processor(size={"height": 384, "width": 384}, image_mean=[0.5] * 3,
                            image_std=[0.5] * 3).save_pretrained(out / "vision_tower")
    roots = ImportRoots([code_dir / "VILA", code_dir / "scaling_on_scales"], ("llava", "s2wrapper"))
    from adapters.models.vila_m3 import drop_stubs, shim_transformers, stub_unused_modules

    roots.enter()
    try:
        shim_transformers()
        stub_unused_modules()
        from llava.model.multimodal_projector.base_projector import MultimodalProjector, MultimodalProjectorConfig

        proj_cfg = MultimodalProjectorConfig(mm_projector_type="mlp_downsample")
        proj = MultimodalProjector(proj_cfg, PretrainedConfig(mm_hidden_size=32, hidden_size=64))
        _init(proj, seed=9, std=0.2)
        proj.save_pretrained(out / "mm_projector")
    finally:
        roots.leave()
        drop_stubs()
    # as the hub checkpoint's config.json: each part's config inline (VILA then loads <root>/llm etc.)
    parts = {f"{k}_cfg": json.loads((out / k / "config.json").read_text()) for k in ("llm", "vision_tower", "mm_projector")}
    config = {"architectures": ["LlavaLlamaModel"], "model_type": "llava_llama", **parts,
              "mm_vision_select_layer": -2, "mm_vision_select_feature": "cls_patch", "image_aspect_ratio": "resize",
              "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "hidden_size": 64,
              "mm_hidden_size": 32, "model_dtype": "torch.float16"}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out
