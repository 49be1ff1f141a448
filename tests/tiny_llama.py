"""Tiny LLaMA language folders for the remote-code model tests: a `LlamaTokenizer` (transformers'
own class, a small BPE with byte fallback, `<unk>`/`<s>`/`</s>` at ids 0/1/2 as in LLaMA) and a
`LlamaConfig`, saved the way the real folders are. Imports only torch, transformers and tokenizers,
so a model family's own environment (the Merlin test) can import it too.

- `radfm_language_files(dir)`: RadFM's `Language_files/` (config with bos 0 / eos 1 / pad -1, as the
  real LLaMA-13B config has; tokenizer; no weights, as upstream).
- `radllama_folder(dir, with_weights)`: a RadLLaMA-7b stand-in for Merlin: hidden size 4096 (the
  Merlin adapter is `Linear(2048, 4096)`) but one layer, two 8-wide heads, a 16-wide MLP and a small
  vocabulary holding `###` and `###\\n` as tokens (the report separator).
"""

from __future__ import annotations

import json
from pathlib import Path

CORPUS = [
    "Is the lesion in the left or the right lung?", "Which lobe contains the nodule?",
    "Is there a pleural effusion on the left side?", "Where is the largest lymph node?",
    "The answer is left.", "The nodule is in the right upper lobe.", "Generate a radiology report for lungs",
    "Answer the question concisely using this CT. Output only the answer (no preamble). Question: Answer:",
    "Which side is the mass on? Is the heart enlarged? Is the liver normal? kidney spleen aorta trachea",
]


def llama_tokenizer(extra_tokens: tuple[str, ...] = (), vocab_size: int = 300):
    from tokenizers import Tokenizer, pre_tokenizers, trainers
    from tokenizers.models import BPE
    from transformers import AddedToken, LlamaTokenizer

    pipeline = Tokenizer(BPE(unk_token="<unk>", byte_fallback=True))
    # trained on words (split=True): no merges across words, so questions tokenize word by word
    pipeline.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    pipeline.train_from_iterator(CORPUS * 3, trainer=trainer)
    model = json.loads(pipeline.to_str())["model"]
    vocab = dict(model["vocab"])
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    tok = LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True)      # as LLaMA's tokenizer_config
    if extra_tokens:
        tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in extra_tokens])
    assert [tok.convert_tokens_to_ids(t) for t in ("<unk>", "<s>", "</s>")] == [0, 1, 2]
    return tok


def _config(vocab_size: int, hidden: int, **kw):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=kw.pop("intermediate", 64),
                       num_hidden_layers=kw.pop("layers", 2), num_attention_heads=kw.pop("heads", 4),
                       num_key_value_heads=kw.pop("kv_heads", 2), max_position_embeddings=2048, **kw)


def radfm_language_files(folder) -> Path:
    """Config and tokenizer only, like RadFM's Quick_demo/Language_files (bos 0, eos 1, pad -1)."""
    out = Path(folder)
    tok = llama_tokenizer()
    config = _config(len(tok), 64, bos_token_id=0, eos_token_id=1, pad_token_id=-1)
    config.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def radllama_folder(folder, with_weights: bool = False, seed: int = 0) -> Path:
    """A tiny StanfordAIMI/RadLLaMA-7b stand-in (hidden size 4096, as Merlin's adapter needs)."""
    import torch
    from transformers import LlamaForCausalLM

    out = Path(folder)
    tok = llama_tokenizer(extra_tokens=("###\n", "###"))
    tok.pad_token = "<unk>"
    config = _config(len(tok), 4096, intermediate=16, layers=1, heads=2, kv_heads=1, head_dim=8,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0)
    config.save_pretrained(out)
    tok.save_pretrained(out)
    if with_weights:
        torch.manual_seed(seed)
        LlamaForCausalLM(config).save_pretrained(out)
    return out
