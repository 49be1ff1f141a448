"""Tiny random-weight MedGemma (Gemma3ForConditionalGeneration) and Lingshu
(Qwen2_5_VLForConditionalGeneration) checkpoints, saved the way the real ones are: model, generation
config, tokenizer (with the real special tokens and chat template) and image processor, loadable
with `from_pretrained` / `AutoProcessor.from_pretrained` from the directory.

Configs follow ../shared/research/models.md §A, with a vocabulary trained here (the `tokenizers`
library's BPE trainer, in each model's own tokenizer pipeline) so the special-token ids are small;
the image/boi/eoi/vision token ids in the configs point at them. Images are small (Gemma: 56 px,
4 tokens; Qwen: 84 px, 9 tokens) so a recipe's 85 or 32 slices stay quick on a CPU.

`build_tiny_medgemma(dir)` and `build_tiny_lingshu(dir)` write a checkpoint and return the dir.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from adapters.models.prompts import PROMPTS

IMAGE = 56                       # px; patch 14 -> 4x4 patches

GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = \"\" -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = \"model\" -%}{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- elif message['content'] is iterable -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{'<start_of_turn>model\n'}}{%- endif -%}"
)

QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}{% set image_count.value = image_count.value + 1 %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

GEMMA_SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>",
                 "<start_of_image>", "<end_of_image>", "<image_soft_token>"]
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]


def _corpus() -> list[str]:
    texts = []
    for p in PROMPTS.values():
        texts += [p.instruction, p.query, *(p.slice_label.format(i=i) for i in range(1, 90))]
    texts += ["Is the lesion in the left or the right lung?", "Which lobe contains the nodule?",
              "Is there a pleural effusion on the left side?", "Where is the largest lymph node?",
              "The answer is left.", "The nodule is in the right upper lobe.", "system user model assistant",
              "You are a helpful assistant."]
    return texts * 3


def _train_bpe(pipeline, special: list[str], vocab_size: int, **trainer_kw) -> tuple[dict, list]:
    from tokenizers import trainers

    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False, **trainer_kw)
    pipeline.train_from_iterator(_corpus(), trainer=trainer)
    model = json.loads(pipeline.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return dict(model["vocab"]), merges


def gemma_tokenizer():
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import AddedToken, GemmaTokenizer

    pipeline = Tokenizer(BPE(unk_token="<unk>", byte_fallback=True))
    pipeline.normalizer = normalizers.Replace(" ", "▁")
    pipeline.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
    vocab, merges = _train_bpe(pipeline, GEMMA_SPECIAL, 600)
    for b in range(256):                               # byte fallback: any character encodes
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    tok = GemmaTokenizer(vocab=vocab, merges=merges, extra_special_tokens={
        "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"})
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in GEMMA_SPECIAL[5:]], special_tokens=True)
    tok.chat_template = GEMMA_CHAT_TEMPLATE
    return tok


def qwen_tokenizer():
    from tokenizers import Regex, Tokenizer, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import AddedToken, Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    pipeline = Tokenizer(BPE())
    pipeline.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    vocab, merges = _train_bpe(pipeline, QWEN_SPECIAL, 700, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token="<|im_end|>",
                         pad_token="<|endoftext|>",
                         extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                                               "vision_bos_token": "<|vision_start|>",
                                               "vision_eos_token": "<|vision_end|>"})
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL], special_tokens=True)
    tok.chat_template = QWEN_CHAT_TEMPLATE
    return tok


def _init(model, seed: int, std: float = 0.02) -> None:
    """Explicit N(0, std) weights (v5 construction may leave parameters uninitialised); a larger std
    than real models use makes the tiny model's greedy tokens depend on its input."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
            elif name.endswith("bias"):
                p.zero_()


def build_tiny_medgemma(out_dir) -> Path:
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor, GenerationConfig
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    out = Path(out_dir)
    tok = gemma_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in GEMMA_SPECIAL}
    config = Gemma3Config(
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32,
                         layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                         sliding_window=48, max_position_embeddings=4096, rope_theta=10000.0,
                         pad_token_id=ids["<pad>"], bos_token_id=ids["<bos>"], eos_token_id=ids["<eos>"]),
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2, image_size=IMAGE, patch_size=14,
                           vision_use_head=False),
        mm_tokens_per_image=4, boi_token_index=ids["<start_of_image>"], eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"])
    torch.manual_seed(0)
    model = Gemma3ForConditionalGeneration(config).eval()
    _init(model, seed=1)
    model.generation_config = GenerationConfig(bos_token_id=ids["<bos>"], pad_token_id=ids["<pad>"],
                                               eos_token_id=[ids["<eos>"], ids["<end_of_turn>"]])
    model.save_pretrained(out)
    image_processor = Gemma3ImageProcessorPil(size={"height": IMAGE, "width": IMAGE}, image_mean=[0.5] * 3,
                                              image_std=[0.5] * 3, do_pan_and_scan=False)
    Gemma3Processor(image_processor=image_processor, tokenizer=tok, chat_template=GEMMA_CHAT_TEMPLATE,
                    image_seq_length=4).save_pretrained(out)
    return out


def build_tiny_lingshu(out_dir) -> Path:
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    out = Path(out_dir)
    tok = qwen_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}, rope_theta=10000.0,
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=False),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           fullatt_block_indexes=[1], patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                           window_size=28),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    _init(model, seed=2, std=0.1)
    model.generation_config = GenerationConfig(bos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
                                               eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]])
    model.save_pretrained(out)
    # 96 px phantom slices -> 84 px (Qwen's smart_resize, factor 28) -> 6x6 patches -> 9 tokens per image
    image_processor = Qwen2VLImageProcessorPil(min_pixels=IMAGE * IMAGE, max_pixels=84 * 84, patch_size=14,
                                               merge_size=2, temporal_patch_size=2)
    # Saved as the Lingshu repository holds them: preprocessor_config.json (processor_class
    # Qwen2_5_VLProcessor), tokenizer files and the chat template; no video processor (it needs
    # torchvision, and CT slices are images).
    image_processor.processor_class = "Qwen2_5_VLProcessor"
    image_processor.save_pretrained(out)
    tok.save_pretrained(out)
    return out
