"""Tokenizers for tiny checkpoints, built with the classes of whatever transformers is installed
(4.28 to 5.x): the real-code builders run inside the family environments, whose pinned transformers
predates the `vocab=`/`merges=` constructors the rest of the tests use.

- `llama_sp(out, ...)`: a real sentencepiece model (`tokenizer.model`, BPE with byte fallback,
  `<unk>`/`<s>`/`</s>` at 0/1/2 as LLaMA's) through `transformers.LlamaTokenizer(vocab_file=...)`.
- `qwen_bpe(out, ...)`: a byte-level BPE written as `vocab.json` + `merges.txt` through
  `transformers.Qwen2Tokenizer(vocab_file, merges_file)` (no BOS, as Qwen2.5's).
Llama 3's byte-level BPE (CT-CHAT, VILA-M3) is tests/tiny_llava.py's `llama3_tokenizer`: a
`PreTrainedTokenizerFast`, which every 4.x has.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.tiny_llama import CORPUS as _WORDS

CORPUS = _WORDS + [
    "Is the heart to the left of the spine? Which hemidiaphragm is higher? How many lobes has the right lung?",
    "This is a CT image. You are a helpful language and vision assistant. anterior posterior superior inferior",
    "What is the largest diameter of the mass in millimetres? midline deviated shifted compressed",
]


def llama_sp(out: Path, special: list[str] = (), vocab_size: int = 400, **kwargs):
    """A slow LlamaTokenizer over a sentencepiece model trained here; `special` become added special
    tokens; `kwargs` go to the constructor (add_bos_token, legacy, ...)."""
    import io

    import sentencepiece as spm
    from transformers import AddedToken, LlamaTokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS * 4), model_writer=buf, vocab_size=vocab_size,
                                   model_type="bpe", byte_fallback=True, character_coverage=1.0, unk_id=0,
                                   bos_id=1, eos_id=2, pad_id=-1, hard_vocab_limit=False, minloglevel=2,
                                   split_by_whitespace=True)
    model_file = out / "tokenizer.model"
    model_file.write_bytes(buf.getvalue())
    tok = LlamaTokenizer(vocab_file=str(model_file), **kwargs)
    if special:
        tok.add_tokens([AddedToken(t, normalized=False, special=True) for t in special], special_tokens=True)
    assert [tok.convert_tokens_to_ids(t) for t in ("<unk>", "<s>", "</s>")] == [0, 1, 2]
    return tok


def qwen_bpe(out: Path, special: list[str], added_special: list[str] = (), vocab_size: int = 700, **kwargs):
    """A slow Qwen2Tokenizer over a byte-level BPE trained here; `special` are trained in first (ids
    0..), `added_special` added afterwards as special tokens."""
    from tokenizers import Tokenizer, pre_tokenizers, trainers
    from tokenizers.models import BPE
    from transformers import AddedToken, Qwen2Tokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pipeline = Tokenizer(BPE())
    pipeline.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    pipeline.train_from_iterator(CORPUS * 4, trainer=trainer)
    model = json.loads(pipeline.to_str())["model"]
    # the specials are added tokens (after the vocabulary), as in Qwen's files: renumber the rest from 0
    kept = sorted((v, k) for k, v in model["vocab"].items() if k not in special)
    vocab = {k: i for i, (_, k) in enumerate(kept)}
    merges = [" ".join(m) if not isinstance(m, str) else m for m in model["merges"]]
    (out / "vocab.json").write_text(json.dumps(vocab))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = Qwen2Tokenizer(vocab_file=str(out / "vocab.json"), merges_file=str(out / "merges.txt"), **kwargs)
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in list(special) + list(added_special)],
                   special_tokens=True)
    return tok

