"""A tiny RadFM checkpoint for the local fake of RadFM's repository (tests/fake_models/radfm):
`pytorch_model.bin` of the fake MultiLLaMAForCausalLM plus `Language_files/` (config and tokenizer
only, as upstream). Light imports, so bench/remote_models_gpu_check.py can use it on a GPU machine."""

from __future__ import annotations

import importlib
import types
from pathlib import Path

import torch

from adapters.models.offline_patch import add_import_root, drop_import_root, patched
from adapters.models.radfm import _OfflineMedKEBERT
from tests.tiny_llama import radfm_language_files

FAKE = Path(__file__).resolve().parent / "fake_models" / "radfm"


def build_checkpoint(folder: Path, drop: str | None = None) -> Path:
    """pytorch_model.bin of the fake MultiLLaMAForCausalLM (built with its LLaMA from the config) plus
    Language_files/ (config and tokenizer only, as upstream). Carries the two kinds of keys a real
    RadFM checkpoint has that today's model does not: Med-KEBERT's and the saved rotary buffers."""
    from transformers import LlamaConfig, LlamaForCausalLM

    lang = radfm_language_files(folder / "Language_files")
    entry = add_import_root(FAKE / "Quick_demo")
    try:
        embedding = importlib.import_module("Model.RadFM.my_embedding_layer")
        multimodal = importlib.import_module("Model.RadFM.multimodality_model")
        from_config = types.SimpleNamespace(
            from_pretrained=lambda path: LlamaForCausalLM._from_config(LlamaConfig.from_pretrained(path)))
        with patched(embedding, AutoTokenizer=_OfflineMedKEBERT("t"), AutoModel=_OfflineMedKEBERT("m")), \
                patched(multimodal, LlamaForCausalLM=from_config):
            torch.manual_seed(0)
            model = multimodal.MultiLLaMAForCausalLM(str(lang))
    finally:
        drop_import_root(entry, ("Model",))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    state = model.state_dict()
    state["embedding_layer.bert_model.embeddings.position_ids"] = torch.arange(512)[None]
    state["lang_model.model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    if drop:
        del state[drop]
    torch.save(state, folder / "pytorch_model.bin")
    return folder
