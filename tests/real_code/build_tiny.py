"""Tiny random-weight checkpoints built from the real upstream classes, inside the family environment.

    <family env python> -m tests.real_code.build_tiny FAMILY CODE_DIR OUT

runs with the family's pinned stack (PYTHONPATH = this repository, for the tokenizer helpers and the
adapters' import shims), imports the model's own code from CODE_DIR (the checkout at the commit in
shared/research/models-code.md), builds the smallest model its code allows (hidden <= 128, 1-2
layers where the width is not hard-coded) and saves it in the layout the adapter loads. Prints (and
writes to OUT/tiny.json) one JSON line: what was built, with which torch and transformers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from tests.tiny_vlms import _init


def _on_path(*roots: Path) -> None:
    for r in reversed(roots):
        sys.path.insert(0, str(r))


# -- M3D-LaMed: LamedPhi3ForCausalLM (ViT3D width 768, 12 layers: hard-coded) -------------------------

PHI3_SPECIAL = ["<|endoftext|>", "<|end|>", "<|assistant|>", "<|user|>"]
M3D_ADDED = ["<im_patch>", "<bx_start>", "<bx_end>", "[SEG]"]


def m3d(code: Path, out: Path, pad_vocab: bool = False) -> dict:
    """`pad_vocab`: the embedding table padded past the tokenizer to a multiple of 64 rows, as Phi-3's
    32064 rows for 32011 tokens; random weights make the padding rows as likely as any other."""
    from transformers import GenerationConfig

    from tests.real_code.tiny_tokenizers import llama_sp

    _on_path(code)
    from LaMed.src.model.language_model.lamed_phi3 import LamedPhi3Config, LamedPhi3ForCausalLM

    # the checkpoint's tokenizer: a slow LlamaTokenizer with legacy=False (sentencepiece + protobuf)
    tok = llama_sp(out, special=PHI3_SPECIAL + M3D_ADDED, add_bos_token=True, legacy=False,
                   eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    ids = {t: tok.convert_tokens_to_ids(t) for t in PHI3_SPECIAL + M3D_ADDED}
    config = LamedPhi3Config(
        vocab_size=-(-len(tok) // 64) * 64 if pad_vocab else len(tok), hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
        original_max_position_embeddings=1024,
        bos_token_id=1, eos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
        vision_tower="vit3d", image_channel=1, image_size=[32, 256, 256], patch_size=[4, 16, 16],
        vision_select_layer=-1, vision_select_feature="patch", mm_projector_type="spp", proj_layer_type="mlp",
        proj_layer_num=2, proj_pooling_type="spatial", proj_pooling_size=2, mm_hidden_size=768,
        segmentation_module=None, seg_token_id=ids["[SEG]"])
    torch.manual_seed(0)
    model = LamedPhi3ForCausalLM(config).eval()
    _init(model, seed=3, std=0.3)
    model.generation_config = GenerationConfig(bos_token_id=1, pad_token_id=ids["<|endoftext|>"],
                                               eos_token_id=[ids["<|endoftext|>"], ids["<|end|>"]])
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return {"params": sum(p.numel() for p in model.parameters())}


# -- Med3DVLM: VLMQwenForCausalLM (DCFormer decomp_small: channels and blocks hard-coded) -------------

QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def med3dvlm(code: Path, out: Path) -> dict:
    from transformers import GenerationConfig

    from tests.real_code.tiny_tokenizers import qwen_bpe

    _on_path(code)
    from src.model.llm.qwen import VLMQwenConfig, VLMQwenForCausalLM

    tok = qwen_bpe(out, QWEN_SPECIAL, ["<im_patch>"], unk_token=None, bos_token=None, eos_token="<|im_end|>",
                   pad_token="<|endoftext|>")
    eos, pad = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    config = VLMQwenConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=pad, eos_token_id=eos, pad_token_id=pad,
        tie_word_embeddings=False,
        # train_vlm.py / finetune_lora.sh at full input size (the recipe's 128x256x256)
        vision_tower="dcformer", input_size=[256, 256, 128], dim=768, depth=12, vision_select_layer=-2,
        vision_select_feature="cls_patch", mm_projector_type="mixer", mm_mlp_depth=2, proj_out_num=256,
        low_output_size=[192, 128], high_output_size=[64, 128], low_input_size=[256, 384],
        high_input_size=[32, 768], mm_hidden_size=768)
    torch.manual_seed(0)
    model = VLMQwenForCausalLM(config).eval()
    _init(model, seed=4, std=0.4)
    model.generation_config = GenerationConfig(bos_token_id=pad, pad_token_id=pad, eos_token_id=[eos, pad])
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return {"params": sum(p.numel() for p in model.parameters())}


# -- CT-CHAT: LlavaLlamaForCausalLM + CT-CLIP's CTViT ----------------------------------------------------

# the smallest CTViT that gives the (24, 24, 24, dim) grid of the recipe's (240, 480, 480) input
CTVIT_TINY = dict(dim=64, codebook_size=64, image_size=480, patch_size=20, temporal_patch_size=10,
                  spatial_depth=1, temporal_depth=1, dim_head=16, heads=2)


def ctchat(code: Path, out: Path) -> dict:
    from adapters.models.code_roots import ImportRoots
    from adapters.models.ctchat import CTVIT_CONFIG, stub_ct_clip, shim_all_layernorm_layers
    from tests.tiny_llava import CTCHAT_TOKENS, llama3_tokenizer

    roots = ImportRoots([code / "CT-CHAT", code / "CT-CLIP" / "transformer_maskgit"], ("llava", "transformer_maskgit"))
    roots.enter()
    stub_ct_clip(code / "CT-CHAT")
    shim_all_layernorm_layers()
    from llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM
    from transformer_maskgit import CTViT

    tok = llama3_tokenizer(["<pad>", *CTCHAT_TOKENS])
    config = LlavaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.convert_tokens_to_ids("<pad>"), mm_vision_tower="ct_clip",
                         mm_projector_type="attn_pool+mlp2x_gelu", mm_hidden_size=CTVIT_TINY["dim"],
                         mm_context_size=CTVIT_TINY["dim"], mm_patch_merge_type="flat", tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlavaLlamaForCausalLM(config).eval()
    _init(model, seed=5, std=0.2)
    (out / "model").mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out / "model")
    tok.save_pretrained(out / "model")
    vit = CTViT(**CTVIT_TINY)
    _init(vit, seed=6, std=1.0)
    state = {f"visual_transformer.{k}": v for k, v in vit.state_dict().items()}
    torch.save(state, out / "ct_clip.pt")
    (out / CTVIT_CONFIG).write_text(json.dumps(CTVIT_TINY))
    return {"params": sum(p.numel() for p in model.parameters()), "ctvit_params": sum(p.numel() for p in vit.parameters())}


# -- RadFM: MultiLLaMAForCausalLM (MyEmbedding hard-codes 5120 wide, ViT/perceiver fixed) -----------------

def radfm(code: Path, out: Path) -> dict:
    import importlib

    from transformers import LlamaConfig, LlamaForCausalLM

    from adapters.models.offline_patch import add_import_root, patched
    from adapters.models.radfm import _OfflineMedKEBERT
    from tests.real_code.tiny_tokenizers import llama_sp

    lang = out / "Language_files"
    tok = llama_sp(lang)
    # Language_files/config.json as upstream's LLaMA-13B one: bos 0, eos 1, pad -1; hidden 5120 (MyEmbedding's)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=5120, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=40, max_position_embeddings=2048, bos_token_id=0, eos_token_id=1,
                         pad_token_id=-1)
    config.save_pretrained(lang)
    tok.save_pretrained(lang)
    add_import_root(code / "Quick_demo")
    embedding = importlib.import_module("Model.RadFM.my_embedding_layer")
    multimodal = importlib.import_module("Model.RadFM.multimodality_model")
    build = type("FromConfig", (), {"from_pretrained": staticmethod(lambda path: LlamaForCausalLM(LlamaConfig.from_pretrained(path)))})
    with patched(embedding, AutoTokenizer=_OfflineMedKEBERT("t"), AutoModel=_OfflineMedKEBERT("m")), \
            patched(multimodal, LlamaForCausalLM=build):
        torch.manual_seed(0)
        model = multimodal.MultiLLaMAForCausalLM(str(lang))
    _init(model, seed=1, std=0.05)
    torch.save(model.state_dict(), out / "pytorch_model.bin")
    return {"params": sum(p.numel() for p in model.parameters())}


# -- VILA-M3: VILA's LlavaLlamaModel from llm/, vision_tower/ (SigLIP 384 px, patch 14), mm_projector/ ------

def vila_m3(code: Path, out: Path) -> dict:
    from tests.tiny_llava import build_tiny_vila_m3

    build_tiny_vila_m3(out, code_dir=code)
    return {}


# -- Merlin: merlin-vlm's Clip3DForTextGeneration (I3D ResNet-152; RadLLaMA hidden 4096: the Adapter's) ------

def merlin(code: Path, out: Path) -> dict:
    from tests.merlin_real import build_checkpoint

    build_checkpoint(out)
    return {}


FAMILIES = {"m3d": m3d, "m3d-padded": lambda code, out: m3d(code, out, pad_vocab=True), "med3dvlm": med3dvlm,
            "ctchat": ctchat, "radfm": radfm, "vila-m3": vila_m3, "merlin": merlin}


def main(argv: list[str]) -> int:
    family, code, out = argv[0], Path(argv[1]).resolve(), Path(argv[2]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    info = FAMILIES[family](code, out)
    import transformers

    info.update(family=family, torch=torch.__version__, transformers=transformers.__version__)
    (out / "tiny.json").write_text(json.dumps(info))
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
