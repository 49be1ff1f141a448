#!/usr/bin/env python3
"""GPU throughput of the native MedGemma (and Lingshu) adapters against the upstream harness loop,
in one run, on the same synthetic inputs and the same weights.

The model is the full-size architecture with random weights (MedGemma-1.5-4B: Gemma 3 config of
../shared/research/models.md §C; Lingshu-7B: Qwen2.5-VL-7B), initialised explicitly (matrices
N(0, 0.02), biases 0, LayerNorm 1, Gemma RMSNorm 0, buffers recomputed), bf16. Inputs are
harness-shaped: 85 random slices of 896x896 (Lingshu: 32 of 504x504) per volume, the harness
prompt, 6 questions per volume; answers are forced to a length (EOS banned): 48 new tokens, and a
second row at the upstream answer-length distribution.

(a) upstream-style: one `model.generate()` per question on the processor's full prompt, the
    volume's slices re-encoded every time (GPU work only: the processor output is made before the
    clock starts; the harness also re-reads and re-encodes the images on the CPU per question).
(u) the same loop written as the harness scripts are (their messages, the processor's chat template,
    plain generate), sharing no code with (a) or (b): the baseline the ratio is quoted against.
(b) the product path: `adapter.answer_many(items)`, the call `ctsvqa infer` makes (slices ->
    processor in worker threads -> vision + prefix prefill once per volume -> all questions of up
    to 16 volumes decoded together over one copy of each prefix KV -> CUDA-graph decode steps).

Prints QA/s for each, (b)/(a), hours for the 9,077 QA, peak GPU memory, the time split, and the
share of greedy tokens on which (a) and (b) agree (with the top-2 logit gap of (a) where they
first differ: bf16 near-ties flip).

    python bench/gpu_inference.py --size tiny --device cpu          # this machine: the code paths
    python bench/gpu_inference.py --size full                       # one H200 (README, "Benchmarks")
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.models.base import AdapterSettings, ModelInput, Question  # noqa: E402
from adapters.models.lingshu import Lingshu  # noqa: E402
from adapters.models.medgemma import MedGemma  # noqa: E402
from adapters.models.prefix_batch import bos_adds_special  # noqa: E402
from adapters.models.shared_prefix import Timing  # noqa: E402

BENCHMARK_QA, BENCHMARK_VOLUMES = 9077, 1601
QUESTIONS = [
    "Is the largest pulmonary nodule located in the right or the left lung?",
    "Which lobe contains the consolidation?",
    "Is the pleural effusion bilateral?",
    "Is the aortic arch superior or inferior to the carina?",
    "Where is the mediastinal lymph node relative to the trachea, anterior or posterior?",
    "Does the lesion extend beyond the lung apex?",
]
# Word counts (regex \b\w+\b, as upstream's analysis script counts them) of every prediction in the
# imported upstream files (m3d, med3dvlm, merlin, radfm, vila_m3_vista3d: 45,385 answers; MedGemma's
# file is not in the published snapshot): the 5th, 10th, ..., 100th percentiles. Recomputed from
# --upstream when that folder is there. Tokens = words x 1.3 (English under Gemma's tokenizer), >= 1.
UPSTREAM_WORDS_CONST = [1, 1, 1, 1, 2, 2, 2, 3, 3, 4, 4, 5, 6, 7, 9, 11, 12, 14, 21, 235]   # mean 6.9 words


def log(*a):
    print(*a, flush=True)


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def peak_gib(dev):
    return torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else float("nan")


def reset_peak(dev):
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


# -- models ---------------------------------------------------------------------------------------

def gemma_config(size: str, tok):
    from transformers import Gemma3Config

    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<start_of_image>", "<end_of_image>", "<image_soft_token>",
                                                     "<pad>", "<bos>", "<eos>", "<end_of_turn>")}
    if size == "full":
        layer_types = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(34)]
        text = dict(vocab_size=262208, hidden_size=2560, intermediate_size=10240, num_hidden_layers=34,
                    num_attention_heads=8, num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256,
                    sliding_window=1024, max_position_embeddings=131072, layer_types=layer_types,
                    rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                                     "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})
        vision = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                      image_size=896)
        mm = 256
    else:
        text = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                    num_attention_heads=2, num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32,
                    sliding_window=48, max_position_embeddings=4096,
                    layer_types=["sliding_attention", "full_attention", "sliding_attention"])
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56)
        mm = 4
    text.update(hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6, final_logit_softcapping=None,
                attn_logit_softcapping=None, tie_word_embeddings=True, pad_token_id=ids["<pad>"],
                bos_token_id=ids["<bos>"], eos_token_id=[ids["<eos>"], ids["<end_of_turn>"]])
    vision.update(model_type="siglip_vision_model", patch_size=14, hidden_act="gelu_pytorch_tanh",
                  layer_norm_eps=1e-6, vision_use_head=False)
    return Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=mm,
                        boi_token_index=ids["<start_of_image>"], eoi_token_index=ids["<end_of_image>"],
                        image_token_index=ids["<image_soft_token>"], tie_word_embeddings=True)


def qwen_config(size: str, tok):
    from transformers import Qwen2_5_VLConfig

    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
                                                     "<|vision_end|>", "<|endoftext|>", "<|im_end|>")}
    if size == "full":
        text = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                    num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000,
                    rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]})
        vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                      window_size=112, fullatt_block_indexes=[7, 15, 23, 31])
    else:
        text = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                    rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]})
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                      window_size=28, fullatt_block_indexes=[1])
    text.update(rms_norm_eps=1e-6, rope_theta=1e6, hidden_act="silu", use_sliding_window=False,
                tie_word_embeddings=False, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"])
    vision.update(patch_size=14, spatial_merge_size=2, temporal_patch_size=2, hidden_act="silu")
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                            video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                            vision_end_token_id=ids["<|vision_end|>"])


@torch.no_grad()
def init_weights(model, std=0.02, seed=0):
    """Every matrix N(0, std); biases 0; LayerNorm weight 1; Gemma RMSNorm weight 0 (it scales by
    1+w), Qwen RMSNorm weight 1; the buffers a fast construction may leave empty recomputed."""
    dev = next(model.parameters()).device
    g = torch.Generator(device=dev).manual_seed(seed)
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            p.normal_(0.0, std, generator=g)
        else:
            p.zero_()
    for mod in model.modules():
        cls = type(mod).__name__
        if isinstance(mod, nn.LayerNorm) or (cls.endswith("RMSNorm") and "Gemma" not in cls):
            if getattr(mod, "weight", None) is not None:
                mod.weight.fill_(1.0)
            if getattr(mod, "bias", None) is not None:
                mod.bias.zero_()
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    for mod in model.modules():
        if hasattr(mod, "layer_types") and hasattr(mod, "rope_type") and isinstance(mod.rope_type, dict):
            for lt in mod.layer_types:       # Gemma 3: one RoPE per layer type
                fn = mod.compute_default_rope_parameters if mod.rope_type[lt] == "default" else \
                    ROPE_INIT_FUNCTIONS[mod.rope_type[lt]]
                inv, _ = fn(mod.config, layer_type=lt)
                getattr(mod, f"{lt}_inv_freq").copy_(inv.to(dev))
                getattr(mod, f"{lt}_original_inv_freq").copy_(inv.to(dev))
        elif isinstance(getattr(mod, "inv_freq", None), torch.Tensor) and \
                isinstance(getattr(mod, "rope_type", None), str):
            fn = getattr(mod, f"compute_{mod.rope_type}_rope_parameters", None) or ROPE_INIT_FUNCTIONS[mod.rope_type]
            inv, _ = fn(mod.config)
            mod.inv_freq.copy_(inv.to(dev))
            if isinstance(getattr(mod, "original_inv_freq", None), torch.Tensor):
                mod.original_inv_freq.copy_(inv.to(dev))
        pid = getattr(mod, "position_ids", None)
        if isinstance(pid, torch.Tensor):
            pid.copy_(torch.arange(pid.shape[-1], device=dev).expand_as(pid))
    emb = model.model.language_model.embed_tokens
    if hasattr(emb, "embed_scale"):
        emb.embed_scale.fill_(model.config.get_text_config().hidden_size ** 0.5)


def build(kind: str, size: str, dev, dtype):
    """(adapter class, model, processor) in memory: no checkpoint, no download."""
    from transformers import GenerationConfig

    from transformers.utils import is_torchvision_available

    from tests.tiny_vlms import gemma_tokenizer, qwen_tokenizer

    tv = is_torchvision_available()        # what AutoProcessor (and so the adapter) would pick

    if kind == "medgemma":
        from transformers import Gemma3ForConditionalGeneration, Gemma3Processor
        if tv:
            from transformers.models.gemma3.image_processing_gemma3 import Gemma3ImageProcessor as ImageProcessor
        else:
            from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil as ImageProcessor

        tok = gemma_tokenizer()
        cfg = gemma_config(size, tok)
        px = cfg.vision_config.image_size
        processor = Gemma3Processor(image_processor=ImageProcessor(
            size={"height": px, "width": px}, image_mean=[0.5] * 3, image_std=[0.5] * 3, do_pan_and_scan=False),
            tokenizer=tok, chat_template=tok.chat_template, image_seq_length=cfg.mm_tokens_per_image)
        cls, model_cls = MedGemma, Gemma3ForConditionalGeneration
    else:
        from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
        if tv:
            from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor as ImageProcessor
        else:
            from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
                Qwen2VLImageProcessorPil as ImageProcessor)

        tok = qwen_tokenizer()
        cfg = qwen_config(size, tok)
        side = 504 if size == "full" else 84

        class ImageOnlyProcessor(Qwen2_5_VLProcessor):
            def check_argument_for_proper_class(self, argument_name, argument):
                if argument_name == "video_processor" and argument is None:
                    return None
                return super().check_argument_for_proper_class(argument_name, argument)

        processor = ImageOnlyProcessor(image_processor=ImageProcessor(
            min_pixels=side * side, max_pixels=side * side, patch_size=14, merge_size=2, temporal_patch_size=2),
            tokenizer=tok, video_processor=None, chat_template=tok.chat_template)
        cls, model_cls = Lingshu, Qwen2_5_VLForConditionalGeneration
    with torch.device(dev):
        model = model_cls._from_config(cfg, dtype=dtype, attn_implementation="sdpa").eval()
    init_weights(model)
    text = cfg.get_text_config()
    eos = text.eos_token_id if isinstance(text.eos_token_id, list) else [text.eos_token_id]
    model.generation_config = GenerationConfig(bos_token_id=text.bos_token_id, pad_token_id=text.pad_token_id,
                                               eos_token_id=eos, do_sample=False)
    return cls, model, processor


# -- inputs ---------------------------------------------------------------------------------------

def synthetic_inputs(recipe: str, n_volumes: int, n_slices: int, side: int, seed: int = 0) -> list[ModelInput]:
    """Model inputs held in memory (no files): random uint8 RGB slices, different per volume."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n_slices, side, side, 3), dtype=np.uint8)
    out = []
    for v in range(n_volumes):
        arr = base ^ np.uint8((37 * v) % 256)
        mi = ModelInput(f"synthetic-{v}", recipe, "1", Path(f"/synthetic/{v}.npz"), arr.shape, "uint8", "")
        object.__setattr__(mi, "_arrays", {"slices": arr})          # what ModelInput.load caches
        out.append(mi)
    return out


def upstream_lengths(n: int, upstream: Path | None) -> list[int]:
    """n answer lengths in new tokens following the upstream predictions' word counts."""
    words = UPSTREAM_WORDS_CONST
    files = sorted((upstream / "benchmarking/reports/predictions").glob("*_predictions_full.jsonl")) \
        if upstream and upstream.is_dir() else []
    if files:
        counts = sorted(len(re.findall(r"\b\w+\b", json.loads(line).get("prediction") or ""))
                        for f in files for line in f.open())
        words = [counts[min(len(counts) - 1, int(len(counts) * p / 20) - 1)] for p in range(1, 21)]
    return [max(1, round(1.3 * words[(7 * i + 3) % 20])) for i in range(n)]


# -- (a) the upstream loop --------------------------------------------------------------------------

def upstream_loop(adapter, mi: ModelInput, questions, lengths, dev):
    """One generate() per question, the processor's full prompt (pixels included) every time."""
    model, processor = adapter.model, adapter.processor
    images = adapter.images(mi)
    prepared = []
    for q in questions:
        text = adapter.prompts_for(len(images), [q])[0]
        full = processor(text=[text], images=[images], return_tensors="pt",
                         add_special_tokens=bos_adds_special(processor, text))
        prepared.append({k: (v.to(dev, model.dtype) if v.is_floating_point() else v.to(dev))
                         for k, v in full.items() if isinstance(v, torch.Tensor)})
    out = []
    for full, n in zip(prepared, lengths):
        sync(dev)
        t = time.perf_counter()
        with torch.inference_mode():
            gen = model.generate(**full, do_sample=False, max_new_tokens=n, min_new_tokens=n,
                                 return_dict_in_generate=True, output_logits=True)
        sync(dev)
        seconds = time.perf_counter() - t
        tokens = gen.sequences[0, full["input_ids"].shape[1]:].tolist()
        gaps = [float(x) for x in (lambda top: top[:, 0] - top[:, 1])(
            torch.stack([lg[0].float() for lg in gen.logits]).topk(2, dim=-1).values)]
        out.append({"seconds": seconds, "tokens": tokens, "top2_gap": gaps,
                    "prompt_tokens": int(full["input_ids"].shape[1])})
        del gen
    return out


# -- (u) an upstream loop that shares no code with the product path -----------------------------------
# As benchmarking/inference/medgemma/run_custom_eval.py and .../medevalkit/run_custom_eval.py (Lingshu)
# of github.com/Mashrafi27/CT-SpatialVQA write it: the harness's own messages (PIL slices between
# "SLICE i" labels), the processor's chat template, one plain generate() per question. Nothing of the
# adapter is called, so (b)/(u) cannot move with our own (a); (u) against (a) also checks that the
# adapter's harness variant reproduces the harness's prompt (their tokens should agree).
HARNESS_INSTRUCTION = ("You are an instructor teaching medical students. You are analyzing a contiguous block of "
                       "CT slices. Please review the slices provided below carefully.")
HARNESS_SUFFIX = ("\n\nBased on the visual evidence in the slices provided above, answer the question below. "
                  "Provide concise reasoning and conclude with a final answer.")


def harness_messages(slices: np.ndarray, question: str) -> list[dict]:
    from PIL import Image

    content = [{"type": "text", "text": HARNESS_INSTRUCTION}]
    for i, rgb in enumerate(slices, 1):
        content.append({"type": "image", "image": Image.fromarray(rgb)})
        content.append({"type": "text", "text": f"SLICE {i}"})
    content.append({"type": "text", "text": f"{HARNESS_SUFFIX}\n\nQuestion: {question}"})
    return [{"role": "user", "content": content}]


def harness_inputs(kind: str, processor, messages: list[dict]):
    if kind == "medgemma":            # medgemma/run_custom_eval.py
        return processor.apply_chat_template(messages, add_generation_prompt=True, continue_final_message=False,
                                             return_tensors="pt", tokenize=True, return_dict=True)
    # medevalkit/run_custom_eval.py: the template as text, the images through the processor
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    images = [c["image"] for c in messages[0]["content"] if c["type"] == "image"]
    return processor(text=[text], images=images, padding=True, return_tensors="pt")


def independent_loop(kind: str, model, processor, mi: ModelInput, questions, lengths, dev) -> list[dict]:
    """One plain generate() per question on the harness's prompt; `seconds` is the GPU work (the
    processor's output is made before the clock starts, as for (a)), `cpu_s` the processor's time."""
    slices = mi.load()["slices"]
    out = []
    for q, n in zip(questions, lengths):
        t = time.perf_counter()
        inputs = harness_inputs(kind, processor, harness_messages(slices, q.question))
        inputs = {k: (v.to(dev, model.dtype) if v.is_floating_point() else v.to(dev))
                  for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        cpu_s = time.perf_counter() - t
        sync(dev)
        t = time.perf_counter()
        with torch.inference_mode():
            gen = model.generate(**inputs, do_sample=False, max_new_tokens=n, min_new_tokens=n)
        sync(dev)
        out.append({"seconds": time.perf_counter() - t, "cpu_s": cpu_s,
                    "tokens": gen[0, inputs["input_ids"].shape[1]:].tolist(),
                    "prompt_tokens": int(inputs["input_ids"].shape[1])})
        del gen
    return out


# -- (b) the product path -----------------------------------------------------------------------------

class VisionClock:
    """Seconds spent in the vision tower (forward hooks with a device sync)."""

    def __init__(self, model, dev):
        inner = model.model
        self.module = inner.vision_tower if hasattr(inner, "vision_tower") else inner.visual
        self.dev, self.seconds, self._t = dev, 0.0, 0.0
        self.handles = [self.module.register_forward_pre_hook(self._pre), self.module.register_forward_hook(self._post)]

    def _pre(self, *_):
        sync(self.dev)
        self._t = time.perf_counter()

    def _post(self, *_):
        sync(self.dev)
        self.seconds += time.perf_counter() - self._t

    def close(self):
        for h in self.handles:
            h.remove()


def product_path(adapter, items, caps, dev) -> dict:
    """What `ctsvqa infer` runs for these work items: the adapter's own `answer_many`. Structured so
    a multi-GPU variant can hand each GPU's adapter its share of `items`."""
    timing = Timing(events=[])
    clock = VisionClock(adapter.model, dev)
    reset_peak(dev)
    sync(dev)
    t = time.perf_counter()
    answers = adapter.answer_many(items, max_new=caps, timing=timing)
    sync(dev)
    seconds = time.perf_counter() - t
    clock.close()
    n = sum(len(qs) for _, qs in items)
    bad = [a.reason for per in answers for a in per if a.status != "ok"]
    if bad:
        raise RuntimeError(f"(b) failed: {bad[0]}")
    return {"seconds": seconds, "qa": n, "qa_s": n / seconds, "peak_gib": peak_gib(dev), "vision_s": clock.seconds,
            "prefix_s": timing.prefix, "suffix_s": timing.suffix, "decode_s": timing.decode, "steps": timing.steps,
            "wait_s": timing.wait, "timeline": timeline(timing.events, t),
            "cuda_graph": timing.graph, "graph_error": getattr(adapter.engine(), "graph_failed", None),
            "tokens": adapter.last_decoded, "new_tokens": sum(a.meta["new_tokens"] for per in answers for a in per)}


def timeline(events: list, t0: float) -> dict:
    """Where the engine waited for the CPU side, from `Timing.events`: per volume when it was queued,
    prepared (a producer thread) and loaded, and which waits were long and why."""
    per: dict = {}
    busy = 0.0
    for what, key, start, end in events:
        if key is not None:
            per.setdefault(key, {})[what] = (round(start - t0, 3), round(end - t0, 3))
        if what in ("load", "suffix", "decode"):
            busy += end - start
    waits = []
    for key, ev in sorted(per.items()):
        if "wait" in ev and ev["wait"][1] - ev["wait"][0] > 0.02:
            w, prep, q = ev["wait"], ev.get("prepare", (None, None)), ev.get("queued", (None, None))
            waits.append({"volume": key, "wait_s": round(w[1] - w[0], 3), "wait_from": w[0],
                          "queued_at": q[0], "prepare_from": prep[0], "prepare_to": prep[1],
                          "prepare_s": None if prep[0] is None else round(prep[1] - prep[0], 3)})
    prep = sorted(ev["prepare"][1] - ev["prepare"][0] for ev in per.values() if "prepare" in ev)
    end = max((e[3] for e in events), default=t0) - t0
    return {"long_waits": waits, "prepare_s_median": round(float(np.median(prep)), 3) if prep else None,
            "prepare_s_max": round(prep[-1], 3) if prep else None,
            "engine_busy_s": round(busy, 3), "host_other_s": round(end - busy - sum(
                e[3] - e[2] for e in events if e[0] == "wait"), 3)}


def encode_probe(adapter, mi, qs, dev) -> None:
    """One volume's CPU-side preparation (slices -> processor -> pinned or GPU tensors), alone in one
    thread, with the image processor on the CPU and on the GPU: what the producer threads must keep
    up with."""
    saved = adapter.settings.options.get("image_device")
    for where in ("cpu", "gpu"):
        adapter.settings.options["image_device"] = where
        try:
            adapter.prepare_job(mi, qs)
            sync(dev)
            t = time.perf_counter()
            adapter.prepare_job(mi, qs)
            sync(dev)
            log(f"[{adapter.name}] one volume's preparation, image processor on the {where}: "
                f"{time.perf_counter() - t:.3f}s (one thread)")
        except Exception as exc:  # noqa: BLE001  (a probe)
            log(f"[{adapter.name}] preparation with image_device={where} failed: {type(exc).__name__}: {exc}")
    if saved is None:
        adapter.settings.options.pop("image_device", None)
    else:
        adapter.settings.options["image_device"] = saved


def agreement(a_runs, b_tokens) -> dict:
    same = total = 0
    flips = []
    for q, run in enumerate(a_runs):
        a, b = run["tokens"], b_tokens[q].tokens
        n = max(len(a), len(b))
        same += sum(x == y for x, y in zip(a, b))
        total += n
        first = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), None)
        if first is not None:
            flips.append({"question": q, "step": first, "a_top2_gap": round(run["top2_gap"][first], 4)})
    return {"same": same, "total": total, "share": same / max(total, 1), "first_differences": flips}


def option_value(text: str):
    """As `ctsvqa infer --option` reads a value: JSON where it parses, else the text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


# -- main ----------------------------------------------------------------------------------------------

def run_model(kind: str, args, dev, dtype, rows: list[dict]) -> None:
    t = time.perf_counter()
    cls, model, processor = build(kind, args.size, dev, dtype)
    full = args.size == "full"
    n_slices = (85 if kind == "medgemma" else 32) if full else (85 if kind == "medgemma" else 32)
    side = (896 if kind == "medgemma" else 504) if full else 56
    log(f"[{kind}] built {sum(p.numel() for p in model.parameters()) / 1e9:.3f} B params in "
        f"{time.perf_counter() - t:.1f}s")
    options = {"variant": "upstream-harness", "max_new_tokens": args.new_tokens, "min_new_tokens": 10 ** 4}
    if args.encode_workers:
        options["encode_workers"] = args.encode_workers
    if args.prefill_attention:
        options["prefill_attention"] = args.prefill_attention
    if args.compile_vision is not None:
        options["compile_vision"] = args.compile_vision
    if args.volumes_per_batch:
        options["volumes_per_batch"] = args.volumes_per_batch
    adapter = cls(AdapterSettings(device=str(dev), dtype="bfloat16" if dtype == torch.bfloat16 else "float32",
                                  options=options))
    adapter.model, adapter.processor = model, processor
    qs = [Question(f"q{i}", text) for i, text in enumerate(QUESTIONS[:args.questions])]
    inputs = synthetic_inputs(adapter.recipe, args.volumes + 2, n_slices, side)
    warm, timed = inputs[:2], inputs[2:]
    for label, lengths in (("48", [args.new_tokens] * len(qs)),
                           ("upstream", upstream_lengths(len(qs), Path(args.upstream) if args.upstream else None))):
        if label == "upstream" and not args.upstream_row:
            continue
        # (a): the harness's loop, SDPA everywhere, before the product settings touch the model
        if label == "48":
            adapter.model.set_attn_implementation("sdpa")
        reset_peak(dev)
        a_q = min(args.a_questions, len(qs)) if label == "48" else len(qs)   # every length of the row
        upstream_loop(adapter, timed[0], qs[:1], lengths[:1], dev)              # warm-up
        a_runs = upstream_loop(adapter, timed[0], qs[:a_q], lengths[:a_q], dev)
        a_peak = peak_gib(dev)
        a_s = [r["seconds"] for r in a_runs]
        a_per_q = float(np.median(a_s)) if label == "48" else float(np.mean(a_s))
        log(f"[{kind} {label}] (a) per question {[round(x, 3) for x in a_s]} s (median {a_per_q:.3f}); "
            f"prompt {a_runs[0]['prompt_tokens']} tokens; peak {a_peak:.1f} GiB")
        # (u): the harness's own loop, the same weights and slices, before anything of (b) touches the model
        u_q = a_q
        independent_loop(kind, adapter.model, adapter.processor, timed[0], qs[:1], lengths[:1], dev)   # warm-up
        u_runs = independent_loop(kind, adapter.model, adapter.processor, timed[0], qs[:u_q], lengths[:u_q], dev)
        u_s = [r["seconds"] for r in u_runs]
        u_per_q = float(np.median(u_s)) if label == "48" else float(np.mean(u_s))
        u_vs_a = sum(x == y for ru, ra in zip(u_runs, a_runs) for x, y in zip(ru["tokens"], ra["tokens"]))
        u_total = sum(max(len(ru["tokens"]), len(ra["tokens"])) for ru, ra in zip(u_runs, a_runs))
        log(f"[{kind} {label}] (u) per question {[round(x, 3) for x in u_s]} s (median {u_per_q:.3f}); processor "
            f"{float(np.median([r['cpu_s'] for r in u_runs])):.2f} s on the CPU per question; prompt "
            f"{u_runs[0]['prompt_tokens']} tokens ((a): {a_runs[0]['prompt_tokens']}); tokens agree with (a) "
            f"{u_vs_a}/{u_total}")
        # the split of (a): vision alone, and generate(max_new_tokens=1) = vision + prefill
        clock = VisionClock(adapter.model, dev)
        upstream_loop(adapter, timed[0], qs[:1], [1], dev)
        clock.close()
        a_prefill = upstream_loop(adapter, timed[0], qs[:1], [1], dev)[0]["seconds"]
        # (b)
        adapter.prepare_model()
        if label == "48" and dev.type == "cuda":
            encode_probe(adapter, timed[0], qs, dev)
        caps = [lengths[:len(qs)] for _ in timed]
        t = time.perf_counter()
        try:
            product_path(adapter, [(mi, qs) for mi in warm], [lengths] * len(warm), dev)   # compile, capture
        except Exception as exc:  # noqa: BLE001  (a failing flex prefill must not lose the row)
            log(f"[{kind} {label}] (b) warm-up FAILED with prefill {adapter.generation()['prefill_attention']}: "
                f"{type(exc).__name__}: {str(exc)[:600]}; again with sdpa")
            adapter.settings.options["prefill_attention"] = "sdpa"
            adapter.model.set_attn_implementation("sdpa")
            adapter.prepare_model()
            product_path(adapter, [(mi, qs) for mi in warm], [lengths] * len(warm), dev)
        log(f"[{kind} {label}] (b) warm-up (compiles, graph capture) {time.perf_counter() - t:.1f}s")
        for variant in [""] + list(args.b_variant):
            extra = {k: option_value(v) for k, v in (kv.split("=", 1) for kv in variant.split(",") if kv)}
            saved = dict(adapter.settings.options)
            adapter.settings.options.update(extra)
            adapter.prepare_model()
            if extra:                                   # a compile or capture the variant needs
                product_path(adapter, [(mi, qs) for mi in warm], [lengths] * len(warm), dev)
            b = product_path(adapter, [(mi, qs) for mi in timed], caps, dev)
            b_settings = adapter.generation()
            adapter.settings.options.clear()
            adapter.settings.options.update(saved)
            adapter.prepare_model()
            agree = agreement(a_runs, b["tokens"][0])
            vols = len(timed)
            name = label + (f" [{variant}]" if variant else "")
            row = {
                "model": kind, "answers": name, "new_tokens_mean": float(np.mean(lengths)),
                "a_s_per_qa": a_per_q, "a_qa_s": 1 / a_per_q, "a_peak_gib": a_peak,
                "a_vision_s": clock.seconds, "a_prefill_s": a_prefill,
                "a_decode_ms_step": (a_per_q - a_prefill) / max(np.mean(lengths[:a_q]) - 1, 1) * 1e3,
                "b_volumes": vols, "b_qa": b["qa"], "b_seconds": b["seconds"], "b_qa_s": b["qa_s"],
                "b_peak_gib": b["peak_gib"], "b_vision_s_per_vol": b["vision_s"] / vols,
                "b_prefix_s_per_vol": b["prefix_s"] / vols, "b_suffix_s": b["suffix_s"], "b_decode_s": b["decode_s"],
                "b_wait_s": b["wait_s"],
                "b_steps": b["steps"], "b_decode_ms_step": b["decode_s"] / max(b["steps"], 1) * 1e3,
                "b_cuda_graph": b["cuda_graph"], "b_graph_error": b["graph_error"],
                "ratio": b["qa_s"] * a_per_q, "a_hours": BENCHMARK_QA * a_per_q / 3600,
                "u_s_per_qa": u_per_q, "u_qa_s": 1 / u_per_q, "ratio_u": b["qa_s"] * u_per_q,
                "u_prompt_tokens": u_runs[0]["prompt_tokens"], "a_prompt_tokens": a_runs[0]["prompt_tokens"],
                "u_agrees_with_a": [u_vs_a, u_total],
                "b_hours": BENCHMARK_QA / b["qa_s"] / 3600, "agreement": agree,
                "settings": b_settings,
            }
            rows.append(row)
            log(f"[{kind} {name}] (b) {b['qa']} QA over {vols} volumes in {b['seconds']:.2f}s = {b['qa_s']:.3f} "
                f"QA/s; vision {row['b_vision_s_per_vol']:.3f} s/vol, vision+prefix {row['b_prefix_s_per_vol']:.3f} "
                f"s/vol, suffix {b['suffix_s']:.2f}s, decode {b['decode_s']:.2f}s ({row['b_decode_ms_step']:.1f} "
                f"ms/step, graph {b['cuda_graph']}), waiting for the CPU {b['wait_s']:.2f}s, the rest "
                f"{b['seconds'] - b['prefix_s'] - b['suffix_s'] - b['decode_s'] - b['wait_s']:.2f}s; peak "
                f"{b['peak_gib']:.1f} GiB; (b)/(a) {row['ratio']:.1f}x, (b)/(u) {row['ratio_u']:.1f}x; tokens agree {agree['same']}/{agree['total']} "
                f"{agree['first_differences']}")
            log(f"[{kind} {name}] (b) timeline: {json.dumps(b['timeline'])}")
            row["b_timeline"] = b["timeline"]
        adapter.model.set_attn_implementation("sdpa")    # (a) of the next row runs as the harness does
    adapter.close()
    del model
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def table(rows: list[dict]) -> str:
    head = ("| model | answers (mean new tokens) | (u) QA/s | (a) QA/s | (b) QA/s | (b)/(u) | (b)/(a) | 9,077 QA: (a) h | (b) h | "
            "peak GiB (a) / (b) | (a) split: vision / +prefill / decode ms/step | (b) split per volume: vision / "
            "+prefix, suffix s, decode s (ms/step), waiting for the CPU s | tokens agree |")
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        ag = r["agreement"]
        lines.append(
            f"| {r['model']} | {r['answers']} ({r['new_tokens_mean']:.1f}) | {r['u_qa_s']:.3f} | {r['a_qa_s']:.3f} | "
            f"{r['b_qa_s']:.3f} | **{r['ratio_u']:.1f}x** | {r['ratio']:.1f}x | {r['a_hours']:.2f} | {r['b_hours']:.2f} | {r['a_peak_gib']:.1f} / "
            f"{r['b_peak_gib']:.1f} | {r['a_vision_s']:.2f} / {r['a_prefill_s']:.2f} / {r['a_decode_ms_step']:.1f} | "
            f"{r['b_vision_s_per_vol']:.2f} / {r['b_prefix_s_per_vol']:.2f}, {r['b_suffix_s']:.2f}, "
            f"{r['b_decode_s']:.2f} ({r['b_decode_ms_step']:.1f}), {r['b_wait_s']:.2f} | {ag['same']}/{ag['total']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=["tiny", "full"], default="full")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", default="medgemma", help="comma-separated: medgemma,lingshu")
    ap.add_argument("--volumes", type=int, default=16, help="volumes in the timed (b) call")
    ap.add_argument("--questions", type=int, default=6, help="questions per volume")
    ap.add_argument("--a-questions", type=int, default=3, help="timed (a) generate calls (after one warm-up)")
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--upstream-row", action="store_true", help="also a row at the upstream answer lengths")
    ap.add_argument("--upstream", default="../shared/upstream/CT-SpatialVQA")
    ap.add_argument("--encode-workers", type=int, default=None, help="the adapter's producer threads (default: its own)")
    ap.add_argument("--volumes-per-batch", type=int, default=None)
    ap.add_argument("--prefill-attention", default=None, help="override the adapter's default (flex on CUDA)")
    ap.add_argument("--compile-vision", type=lambda s: s.lower() in ("1", "true", "yes"), default=None)
    ap.add_argument("--b-variant", action="append", default=[],
                    help="also run (b) with these adapter options (k=v,k=v), on the same (a); repeatable")
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    args = ap.parse_args()
    dev = torch.device(args.device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    import transformers

    log(f"torch {torch.__version__} transformers {transformers.__version__} device {dev} "
        f"{torch.cuda.get_device_name(dev) if dev.type == 'cuda' else ''} dtype {dtype} size {args.size}")
    torch.set_grad_enabled(False)
    rows: list[dict] = []
    for kind in args.models.split(","):
        try:
            run_model(kind, args, dev, dtype, rows)
        except Exception as exc:  # noqa: BLE001  (one model failing must not lose the other's row)
            import traceback

            log(f"[{kind}] FAILED: {type(exc).__name__}: {exc}\n{traceback.format_exc()[-3000:]}")
    print()
    print(table(rows))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"gpu_inference_{args.size}.json").write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
