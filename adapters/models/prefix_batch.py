"""One volume, many questions (and many volumes at once): encode each image prefix once, decode
every question over it.

Every question about a volume shares its prompt up to the question: chat-template start,
instruction, and all slices with their labels. That shared prefix runs through the vision tower and
the language model once per volume (transformers' own forward, so Gemma 3's bidirectional image
attention comes from `token_type_ids` and Qwen2.5-VL's M-RoPE from its own `get_rope_index`); the
questions' suffixes (question + end of turn + generation prompt) are then prefilled and greedily
decoded as rows of a batch that spans several volumes, attending to one copy of each volume's prefix
KV (shared_prefix.py: the engine, its attention, slots and CUDA graph). The tests check the greedy
tokens equal plain `model.generate` on each full single-question prompt, on tiny models in float32.

The exact prompt ids are the processor's: the images are processed once (`processor(...)` on the
first question's text), and every question's text is expanded with the same image replacement
strings (`get_text_with_replacements`) and tokenized with the processor's tokenizer; the first
question's ids are checked against the processor's own.
"""

from __future__ import annotations

import dataclasses
import io
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from adapters.models.base import AdapterError, AdapterSettings, Answer, ModelInput, Question, Requirement
from adapters.models.base import VariantAdapter, check_choice
from adapters.models.prompts import SlicePrompt
from adapters.models.shared_prefix import (  # noqa: F401  (Decoded, GreedySettings: part of this module's API)
    Decoded, EngineSettings, GreedySettings, Job, SharedPrefixEngine, Timing, compile_prefill,
)
from adapters.models.vision_fusion import fuse_gelu, fused, unfuse

# Processor outputs with one entry per token (sliced to the prefix); everything else (pixels,
# grids) belongs to the images and goes to the prefix forward whole.
PER_TOKEN = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")

# Generation-config fields that would change greedy tokens and that this decoder does not apply.
UNSUPPORTED_GENERATION = ("no_repeat_ngram_size", "bad_words_ids", "suppress_tokens", "begin_suppress_tokens",
                          "forced_bos_token_id", "forced_eos_token_id", "sequence_bias",
                          "exponential_decay_length_penalty", "encoder_repetition_penalty",
                          "encoder_no_repeat_ngram_size")


@dataclass
class Encoded:
    """A volume's prompts: the shared prefix (processor outputs, batch 1) and each question's suffix ids."""
    prefix: dict[str, torch.Tensor]
    suffixes: list[list[int]]
    ready: Any = None             # a CUDA event the prefix tensors are ready after (made on another stream)

    @property
    def prefix_len(self) -> int:
        return int(self.prefix["input_ids"].shape[1])


def bos_adds_special(processor, text: str) -> bool:
    """What `processor.apply_chat_template(tokenize=True)` does: no extra special tokens when the
    rendered template already starts with BOS."""
    bos = getattr(processor.tokenizer, "bos_token", None)
    return not (bos is not None and text.startswith(bos))


def encode(processor, texts: Sequence[str], images: list, *, add_special_tokens: bool,
           image_kwargs: dict | None = None) -> Encoded:
    """Processor outputs for the prompts `texts` (one per question, all with the same images).
    `image_kwargs` go to the image processor (`device`: where a torchvision processor normalizes)."""
    first = processor(text=[texts[0]], images=[images], return_tensors="pt", add_special_tokens=add_special_tokens,
                      return_text_replacement_offsets=True, **(image_kwargs or {}))
    offsets = first.pop("text_replacement_offsets")[0]
    replacements = [o["replacement"] for o in offsets if o["type"] == "image"]
    ids = question_ids(processor, texts, replacements, add_special_tokens, first["input_ids"][0].tolist())
    if ids[0] != first["input_ids"][0].tolist():
        raise RuntimeError("prompt tokenization differs from the processor's own; the prefix cannot be shared")
    n = min(len(x) for x in ids)
    common = 0
    while common < n - 1 and all(x[common] == ids[0][common] for x in ids):
        common += 1
    suffixes = [x[common:] for x in ids]
    mm = processor.create_mm_token_type_ids(suffixes)
    if any(any(t != 0 for t in row) for row in mm):
        raise RuntimeError("a question's own tokens include image tokens; the image prefix cannot be shared")
    prefix = {k: (v[:, :common] if k in PER_TOKEN else v) for k, v in first.items() if isinstance(v, torch.Tensor)}
    return Encoded(prefix=prefix, suffixes=suffixes)


def question_ids(processor, texts: Sequence[str], replacements: list, add_special_tokens: bool,
                 first_ids: list[int]) -> list[list[int]]:
    """Each prompt's token ids, its images' tokens expanded. The prompts share a long head (the
    instruction and ~22k image tokens) and differ in a short tail. Tokenizers split their added
    tokens out before anything else, so the text after the head's last added token tokenizes on its
    own: only the tails are tokenized here (a volume's CPU time is what keeps the GPU fed), and the
    first prompt's ids, the processor's own, check that split. Where they disagree every prompt is
    tokenized whole."""
    tok = processor.tokenizer
    expanded = [processor.get_text_with_replacements([t], replacements)[0][0] for t in texts]
    head = os.path.commonprefix(expanded)
    cut = max((head.rfind(t) + len(t) for t in tok.get_added_vocab() if t and head.rfind(t) >= 0), default=0)
    if cut > 0:
        tails = [list(tok(e[cut:], add_special_tokens=False)["input_ids"]) for e in expanded]
        n = len(first_ids) - len(tails[0])
        if n > 0 and first_ids[n:] == tails[0]:
            return [first_ids[:n] + t for t in tails]
    return [list(tok(e, add_special_tokens=add_special_tokens)["input_ids"]) for e in expanded]


# -- model families --------------------------------------------------------------------------------

class Family:
    """How one architecture runs its prefix and places positions."""

    def prefix_forward(self, model, prefix: dict[str, torch.Tensor], cache) -> int:
        """The prefix through the whole model (vision tower included) into `cache`; returns the
        offset of a text token's position id from its sequence index."""
        raise NotImplementedError

    def position_ids(self, offset: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Position ids for text tokens at sequence indices `real` (B, S); `offset` (B, 1) per row."""
        raise NotImplementedError


class Gemma3Family(Family):
    def prefix_forward(self, model, prefix, cache):
        model(**prefix, cache=cache, use_cache=True, logits_to_keep=1)
        return 0

    def position_ids(self, offset, real):
        return real


class Qwen25VLFamily(Family):
    def prefix_forward(self, model, prefix, cache):
        # Our own M-RoPE positions (the model's get_rope_index), so no rope_deltas state is read
        # from or left on the model between volumes.
        positions, deltas = model.model.get_rope_index(
            prefix["input_ids"], mm_token_type_ids=prefix["mm_token_type_ids"],
            image_grid_thw=prefix.get("image_grid_thw"), attention_mask=prefix.get("attention_mask"))
        model(**prefix, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1)
        return int(deltas.reshape(-1)[0])     # text token at sequence index r sits at r + delta

    def position_ids(self, offset, real):
        pos = real + offset
        return pos.unsqueeze(0).expand(3, -1, -1)


FAMILIES = {"gemma3": Gemma3Family(), "qwen2_5_vl": Qwen25VLFamily()}


# -- decoding --------------------------------------------------------------------------------------

def check_generation_config(generation_config) -> None:
    set_ = [name for name in UNSUPPORTED_GENERATION if getattr(generation_config, name, None) not in (None, 0, 1.0, [])]
    if set_:
        raise ValueError(f"the checkpoint's generation_config sets {set_}, which the prefix-shared decoder does "
                         f"not apply; remove them or extend adapters/models/prefix_batch.py")



def generate(model, family: Family, encoded: Encoded, settings: GreedySettings,
             engine: EngineSettings | None = None) -> tuple[list[Decoded], dict]:
    """Greedy answers for every suffix of one volume's `encoded`, sharing its prefix (the engine of
    shared_prefix.py with one job). Returns the answers and timings."""
    engine = engine or EngineSettings(slots=1, rows=max(1, len(encoded.suffixes)))
    runner = SharedPrefixEngine(model, family, engine)
    timing = Timing()
    job = Job(0, encoded, [settings.max_new_tokens] * len(encoded.suffixes))
    decoded = runner.run([job], settings, timing)[0]
    return decoded, {**timing.as_dict(), "prefix_tokens": encoded.prefix_len, "batch": len(encoded.suffixes)}


# -- the adapter both slice-stack models share ------------------------------------------------------

WEIGHT_GLOBS = ("*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin")
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def _image_backend() -> str:
    """The backend AutoProcessor picks: torchvision when installed, else PIL (their resizes differ)."""
    from transformers.utils import is_torchvision_available

    return "torchvision" if is_torchvision_available() else "pil"


class SliceChatAdapter(VariantAdapter):
    """A transformers image-text-to-text model reading a recipe's RGB slice stack through its chat
    template: `prompt` per variant, greedy decoding, prefix-shared batches (this module)."""

    family: str                                   # key of FAMILIES
    cuda_prefill_attention: str | None = None     # the text model's prefill attention on CUDA (None: as loaded)
    cuda_compile_vision: bool = False             # torch.compile the vision tower on CUDA (measured to pay)
    cuda_compile_prefill: bool = False            # torch.compile the text layers for the prefix prefill on CUDA
    cuda_fuse_vision_gelu: bool = False           # the vision MLPs' GELU in their first GEMM on CUDA (vision_fusion)
    cuda_image_device: str = "cpu"                # where the image processor normalizes on CUDA (torchvision)
    model_class: str                              # transformers class name
    hub_id: str
    download_note: str = ""
    prompts: dict[str, SlicePrompt]               # variant -> prompt
    max_new_tokens: dict[str, int]                # variant -> default
    min_new_tokens: dict[str, int] = {"official": 0, "upstream-harness": 0}
    image_encoding: dict[str, str] = {"official": "none", "upstream-harness": "none"}
    packages = ("pillow", "tokenizers", "safetensors")
    OPTIONS = ("variant", "max_new_tokens", "min_new_tokens", "repetition_penalty", "attn_implementation",
               "prefill_attention", "compile_prefill", "compile_vision", "cuda_graph", "fuse_vision_gelu",
               "image_backend", "image_device", "image_encoding", "encode_workers", "rows_per_volume", "split_k",
               "volumes_per_batch", "volumes_per_call")

    def __init__(self, settings: AdapterSettings | None = None) -> None:
        super().__init__(settings)
        self.model = None
        self.processor = None

    # -- configuration --------------------------------------------------------------------------
    @property
    def device(self) -> str:
        return self.settings.device

    @property
    def dtype_name(self) -> str:
        return self.settings.dtype or ("bfloat16" if self.device.startswith("cuda") else "float32")

    def _option(self, key: str, default):
        return self.settings.options.get(key, default)

    def generation(self) -> dict[str, Any]:
        o = self._option
        return {
            "prompt": self.prompts[self.variant].as_dict(),
            "chat_template": "the checkpoint's (hashed in checkpoint identity)",
            "decoding": "greedy",
            "max_new_tokens": int(o("max_new_tokens", self.max_new_tokens[self.variant])),
            "min_new_tokens": int(o("min_new_tokens", self.min_new_tokens[self.variant])),
            "repetition_penalty": o("repetition_penalty", "checkpoint generation_config"),
            "image_encoding": o("image_encoding", self.image_encoding[self.variant]),
            "image_backend": o("image_backend", _image_backend()),
            "image_device": self.image_device(),
            "attn_implementation": o("attn_implementation", "sdpa"),
            "prefill_attention": self.prefill_attention(),
            "compile_vision": bool(o("compile_vision", self.cuda_compile_vision and self.device.startswith("cuda"))),
            "compile_prefill": bool(o("compile_prefill", self.cuda_compile_prefill and self.device.startswith("cuda"))),
            "fuse_vision_gelu": bool(o("fuse_vision_gelu", self.cuda_fuse_vision_gelu and self.device.startswith("cuda"))),
            "dtype": self.dtype_name,
            "batching": {"engine": "shared-prefix-kv-v2", **self.engine_settings().__dict__},
        }

    def image_device(self) -> str:
        """Where the image processor resizes and normalizes: 'cpu', or 'gpu' (the model's device;
        torchvision backend only). On one H200 host a MedGemma volume's preparation took 0.66 s of
        CPU with the processor on the host and 0.17 s with it on the GPU (bench/gpu_inference.py)."""
        backend = str(self._option("image_backend", _image_backend()))
        default = self.cuda_image_device if self.device.startswith("cuda") and backend == "torchvision" else "cpu"
        where = str(self._option("image_device", default))
        check_choice(self.name, "image_device", where, ("cpu", "gpu"))
        if where == "gpu" and (not self.device.startswith("cuda") or backend != "torchvision"):
            raise AdapterError(f"{self.name}: image_device=gpu needs --device cuda and the torchvision image "
                               f"backend (install torchvision); pass --option image_device=cpu")
        return where

    def prefill_attention(self) -> str:
        """The language model's attention in the prefix prefill (the vision tower keeps
        `attn_implementation`): on a GPU, Gemma's image-heavy prefix with its sliding windows
        runs block-sparse under flex_attention (about 1.6x faster there; compiled on first use)."""
        default = self.cuda_prefill_attention if self.device.startswith("cuda") else None
        return str(self._option("prefill_attention", default or self._option("attn_implementation", "sdpa")))

    def engine_settings(self) -> EngineSettings:
        """Layout of the shared-prefix engine (shared_prefix.py). Exact in float32; on a GPU the
        batch shapes can move bf16 rounding, so they are part of the identity."""
        cuda = self.device.startswith("cuda")
        o = self._option
        return EngineSettings(slots=int(o("volumes_per_batch", 16 if cuda else 2)),
                              rows=int(o("rows_per_volume", 6)),
                              split_k=int(o("split_k", 1024 if cuda else 0)),
                              cuda_graph=bool(o("cuda_graph", cuda)))

    @property
    def volumes_per_call(self) -> int:
        """How many volumes the runner hands to `answer_many` at once (slots refill within a call)."""
        return int(self._option("volumes_per_call", 4 * self.engine_settings().slots))

    @classmethod
    def requirements(cls, settings: AdapterSettings) -> list[Requirement]:
        reqs = []
        ckpt = settings.checkpoint
        path = Path(ckpt).expanduser() if ckpt else None
        where = f"--checkpoint {ckpt}" if ckpt else "no --checkpoint given"
        if path is None or not path.is_dir():
            reqs.append(Requirement("weights", False, f"{where}: {cls._download_hint()}"))
        else:
            def has(patterns):
                return any(any(path.glob(p)) for p in patterns)
            for what, patterns in (("config", ("config.json",)), ("weights", WEIGHT_GLOBS),
                                   ("processor", PROCESSOR_FILES), ("tokenizer", TOKENIZER_FILES)):
                ok = has(patterns)
                reqs.append(Requirement(what, ok, f"{path}: " + ("found" if ok else
                                        f"no {' or '.join(patterns)}; {cls._download_hint()}")))
        try:
            import PIL  # noqa: F401
            reqs.append(Requirement("package pillow", True, "image processors"))
        except ImportError:
            reqs.append(Requirement("package pillow", False, "pip install pillow (the image processors need it)"))
        return reqs

    @classmethod
    def _download_hint(cls) -> str:
        return (f"download {cls.hub_id}{cls.download_note} with `hf download {cls.hub_id} "
                f"--local-dir DIR` and pass --checkpoint DIR")

    # -- loading ----------------------------------------------------------------------------------
    def load(self) -> None:
        missing = [r for r in self.requirements(self.settings) if not r.found]
        if missing:
            raise AdapterError(f"{self.name}: " + "; ".join(f"{r.what} missing ({r.detail})" for r in missing))
        import transformers

        path = str(Path(self.settings.checkpoint).expanduser())
        gen = self.generation()
        try:
            cls = getattr(transformers, self.model_class)
            kwargs: dict[str, Any] = {"dtype": getattr(torch, self.dtype_name),
                                      "attn_implementation": gen["attn_implementation"]}
            # No device_map: that path needs accelerate, which is not a dependency.
            model = cls.from_pretrained(path, **kwargs).eval()
            self.processor = self._load_processor(path, gen["image_backend"])
        except Exception as exc:
            raise AdapterError(f"{self.name}: cannot load {self.model_class} and its processor from {path} "
                               f"({type(exc).__name__}: {exc}); {self._download_hint()}") from exc
        try:
            self.model = model.to(self.device)
        except Exception as exc:
            raise AdapterError(f"{self.name}: cannot put the model on device {self.device!r} "
                               f"({type(exc).__name__}: {exc}); pass --device cpu or a GPU that is there") from exc
        if self.model.config.model_type != self.family:
            raise AdapterError(f"{self.name}: {path} holds a {self.model.config.model_type!r} model, not "
                               f"{self.family!r}; {self._download_hint()}")
        self.prepare_model()
        try:
            check_generation_config(self.model.generation_config)
        except ValueError as exc:
            raise AdapterError(f"{self.name}: {path}: {exc}") from exc

    def prepare_model(self) -> None:
        """Settings applied to a loaded model (benchmarks call it on a model built in memory)."""
        gen = self.generation()
        text = gen["prefill_attention"]
        if text != self.model.config.get_text_config()._attn_implementation:
            try:
                self.model.set_attn_implementation({"text_config": text})
            except Exception as exc:
                raise AdapterError(f"{self.name}: cannot use {text!r} for the prefill ({type(exc).__name__}: {exc}); "
                                   f"pass --option prefill_attention=sdpa") from exc
        inner = self.model.model
        name = "vision_tower" if hasattr(inner, "vision_tower") else "visual"
        tower = getattr(inner, name)
        before = fused(tower)
        if not gen["fuse_vision_gelu"]:
            unfuse(tower)
        elif not fuse_gelu(tower):
            raise AdapterError(f"{self.name}: fuse_vision_gelu: the vision tower has no fc1 -> tanh GELU -> fc2 MLP; "
                               f"pass --option fuse_vision_gelu=false")
        if fused(tower) != before and getattr(inner, "_ctsvqa_compiled", False):
            torch._dynamo.reset()       # the compiled tower must not keep the other MLP (recompiles on next use)
        if gen["compile_vision"] and not getattr(inner, "_ctsvqa_compiled", False):
            setattr(inner, name, torch.compile(tower))
            inner._ctsvqa_compiled = True
        compile_prefill(inner.language_model, gen["compile_prefill"])

    def _load_processor(self, path: str, backend: str):
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(path, backend=backend)

    def close(self) -> None:
        self._engine = None
        self.model = None
        self.processor = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- answering --------------------------------------------------------------------------------
    def greedy_settings(self) -> GreedySettings:
        gen = self.generation()
        gc = self.model.generation_config
        eos = gc.eos_token_id if gc.eos_token_id is not None else self.processor.tokenizer.eos_token_id
        eos = tuple(eos) if isinstance(eos, (list, tuple)) else ((eos,) if eos is not None else ())
        pad = gc.pad_token_id if gc.pad_token_id is not None else (eos[0] if eos else 0)
        penalty = gen["repetition_penalty"]
        if not isinstance(penalty, (int, float)):
            penalty = gc.repetition_penalty if gc.repetition_penalty is not None else 1.0
        return GreedySettings(max_new_tokens=gen["max_new_tokens"], min_new_tokens=gen["min_new_tokens"],
                              repetition_penalty=float(penalty), eos_token_ids=eos, pad_token_id=int(pad))

    def slices(self, model_input: ModelInput) -> np.ndarray:
        """The recipe's slices, uint8 (N, H, W, 3)."""
        slices = model_input.load().get("slices")
        if slices is None or slices.ndim != 4 or slices.shape[-1] != 3 or slices.dtype != np.uint8:
            raise AdapterError(f"{self.name}: {model_input.path} is not a recipe '{self.recipe}' input: expected "
                               f"'slices' uint8 (N, H, W, 3), got {None if slices is None else (slices.shape, slices.dtype)}")
        return slices

    def images(self, model_input: ModelInput) -> list:
        """The recipe's slices as the PIL images the published scripts hand to the processor."""
        from PIL import Image

        slices = self.slices(model_input)
        encoding = self.generation()["image_encoding"]
        out = []
        for s in slices:
            img = Image.fromarray(s)
            if encoding == "jpeg":            # the notebook sends base64 JPEG (PIL's default quality)
                buf = io.BytesIO()
                img.save(buf, format="jpeg")
                buf.seek(0)
                img = Image.open(buf).convert("RGB")
            out.append(img)
        return out

    def prompts_for(self, n_images: int, questions: Sequence[Question]) -> list[str]:
        prompt = self.prompts[self.variant]
        return [self.processor.apply_chat_template(prompt.messages(n_images, q.question), add_generation_prompt=True,
                                                   tokenize=False) for q in questions]

    def encode(self, model_input: ModelInput, questions: Sequence[Question]) -> Encoded:
        images = self.images(model_input)
        texts = self.prompts_for(len(images), questions)
        return encode(self.processor, texts, images, add_special_tokens=bos_adds_special(self.processor, texts[0]))

    def prepare_job(self, model_input: ModelInput, questions: Sequence[Question]) -> Encoded:
        """`encode`, laid out for the engine on a GPU (a producer thread calls it a few volumes
        ahead): the prefix's float tensors in the model's dtype; host tensors pinned, so the engine's
        copy does not block (a volume's float32 slices are 0.8 GB: ~95 ms from pageable memory, ~7 ms
        as pinned bf16 on one H200, bench/gpu_prefill_levers.py). Float32 rounds to bf16 the same on
        either side. With image_device=gpu the slices go to the GPU once, as uint8, and the processor
        resizes and normalizes them there, on a stream of its own; `ready` marks when that is done."""
        if not self.device.startswith("cuda"):
            return self.encode(model_input, questions)
        dtype = getattr(torch, self.dtype_name)
        if self.image_device() == "gpu":
            if self.generation()["image_encoding"] == "none":          # the PIL images would hold these pixels
                stack = self.slices(model_input)
            else:
                stack = np.stack([np.asarray(im) for im in self.images(model_input)])
            texts = self.prompts_for(len(stack), questions)
            stream = self._image_stream()
            with torch.cuda.stream(stream):
                stack = torch.from_numpy(np.ascontiguousarray(stack)).pin_memory()
                on_gpu = stack.to(self.device, non_blocking=True).permute(0, 3, 1, 2)      # (N, 3, H, W)
                encoded = encode(self.processor, texts, list(on_gpu),
                                 add_special_tokens=bos_adds_special(self.processor, texts[0]),
                                 image_kwargs={"device": self.device})
                prefix = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in encoded.prefix.items()}
                ready = torch.cuda.Event()
                ready.record(stream)
            prefix = {k: (v.pin_memory() if v.device.type == "cpu" else v) for k, v in prefix.items()}
            return dataclasses.replace(encoded, prefix=prefix, ready=ready)
        encoded = self.encode(model_input, questions)
        prefix = {k: (v.to(dtype) if v.is_floating_point() else v).pin_memory() for k, v in encoded.prefix.items()}
        return dataclasses.replace(encoded, prefix=prefix)

    def _image_stream(self):
        if getattr(self, "_stream", None) is None:
            self._stream = torch.cuda.Stream(torch.device(self.device))
        return self._stream

    def answer(self, model_input: ModelInput | None, questions: Sequence[Question]) -> list[Answer]:
        if model_input is None:
            raise AdapterError(f"{self.name}: needs the volume's '{self.recipe}' input")
        answers = self.answer_many([(model_input, questions)])[0]
        failed = [a for a in answers if a.status == "error"]
        if failed and len(failed) == len(answers):
            raise AdapterError(failed[0].reason)
        return answers

    def engine(self) -> SharedPrefixEngine:
        """The engine, kept between calls (its stores grow to fit; its captured graph is reused)."""
        settings = self.engine_settings()
        current = getattr(self, "_engine", None)
        if current is None or current.settings != settings or current.model is not self.model:
            current = self._engine = SharedPrefixEngine(self.model, FAMILIES[self.family], settings)
        return current

    def jobs(self, items: Iterable[tuple[ModelInput, Sequence[Question]]],
             max_new: Sequence[Sequence[int]] | None = None, workers: int | None = None,
             timing: Timing | None = None) -> Iterator[Job]:
        """Each item's Job, encoded (images -> processor -> ids) in worker threads a few volumes ahead
        of the engine; an item that cannot be encoded becomes a Job with its error. `items` is read
        lazily, as the engine asks for more."""
        settings = self.greedy_settings()
        # Two threads keep one GPU fed (a MedGemma volume: ~0.2 s to prepare, ~1.5 s on one H200). More
        # slow the volume the GPU waits for: with 8, one took 5.3 s to prepare while seven others ran
        # (the engine waited 2.4 s per 24 volumes, against 0.4 s with 2; bench/gpu_inference.py).
        workers = workers or int(self._option("encode_workers", 2))
        ahead = max(workers, 2)
        source = enumerate(items)

        def one(i: int, mi: ModelInput, qs: Sequence[Question], queued: float) -> Job:
            limits = list(max_new[i]) if max_new is not None else [settings.max_new_tokens] * len(qs)
            t = time.perf_counter()
            if timing is not None:
                timing.event("queued", i, queued, t)
            try:
                return Job(i, self.prepare_job(mi, qs), limits)
            except Exception as exc:  # noqa: BLE001  (one unreadable volume fails only its own questions)
                return Job(i, None, limits, error=f"cannot encode {getattr(mi, 'path', mi)}: "
                                                  f"{type(exc).__name__}: {exc}")
            finally:
                if timing is not None:
                    timing.event("prepare", i, t)

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="encode") as pool:
            futures: deque = deque()

            def submit(up_to: int) -> None:
                while len(futures) < up_to:
                    nxt = next(source, None)
                    if nxt is None:
                        return
                    i, (mi, qs) = nxt
                    futures.append(pool.submit(one, i, mi, qs, time.perf_counter()))

            # The first volume starts alone: the GPU waits for it, and with others beside it, it would
            # share the CPU (and the GIL) with them; the rest fill in once it is handed over.
            submit(1)
            while futures:
                job = futures.popleft().result()
                submit(ahead)
                yield job

    def answer_stream(self, items: Iterable[tuple[ModelInput, Sequence[Question]]],
                      max_new: Sequence[Sequence[int]] | None = None, timing: Timing | None = None,
                      decoded: dict | None = None) -> Iterator[tuple[int, list[Answer]]]:
        """Answers volume by volume as the engine finishes them, in that order: (the volume's index
        in `items`, its answers). `items` may be lazy; volumes are prepared a few ahead of the GPU
        and the engine's slots refill from them as others finish, so a whole run is one long batch
        while each volume can be stored as soon as it is done (the runner does). `decoded`, when
        given, receives each volume's token ids (benchmarks)."""
        if self.model is None:
            raise AdapterError(f"{self.name}: load() first")
        t0 = time.perf_counter()
        timing = timing if timing is not None else Timing()
        greedy = self.greedy_settings()
        questions: dict[int, Sequence[Question]] = {}
        errors: dict[int, str] = {}
        suffix_lens: dict[int, list[int]] = {}
        prefix_lens: dict[int, int] = {}

        def recorded() -> Iterator[tuple[ModelInput, Sequence[Question]]]:
            for i, (mi, qs) in enumerate(items):
                questions[i] = qs
                yield mi, qs

        def checked(jobs: Iterator[Job]) -> Iterator[Job]:
            for job in jobs:
                if job.error is not None:
                    errors[job.key] = job.error
                else:
                    suffix_lens[job.key] = [len(s) for s in job.encoded.suffixes]
                    prefix_lens[job.key] = job.encoded.prefix_len
                yield job

        tok = self.processor.tokenizer
        answered = 0
        for i, _job, done in self.engine().stream(checked(self.jobs(recorded(), max_new, timing=timing)), greedy, timing):
            qs = questions.pop(i)
            if decoded is not None:
                decoded[i] = done
            if i in errors or done is None:
                reason = errors.get(i, "the engine returned no answer for this volume")
                yield i, [Answer(q.qid, None, status="error", reason=reason) for q in qs]
                continue
            answered += len(qs)
            seconds = time.perf_counter() - t0
            n_prefix, n_suffixes = prefix_lens.pop(i), suffix_lens.pop(i)
            yield i, [Answer(q.qid, tok.decode(d.tokens, skip_special_tokens=True).strip(), meta={
                "new_tokens": len(d.tokens), "stopped": d.stopped, "suffix_tokens": n_suffix,
                "prefix_tokens": n_prefix, "seconds": round(seconds / max(answered, 1), 4),
                **timing.as_dict()}) for q, d, n_suffix in zip(qs, done, n_suffixes)]

    def answer_many(self, items: Sequence[tuple[ModelInput, Sequence[Question]]],
                    max_new: Sequence[Sequence[int]] | None = None, timing: Timing | None = None) -> list[list[Answer]]:
        """Answers for several volumes' questions, decoded together, in the order of `items`.
        `max_new` (per item, per question) overrides the token cap (benchmarks)."""
        items = list(items)
        t0 = time.perf_counter()
        timing = timing if timing is not None else Timing()
        decoded: dict[int, Any] = {}
        out: list[list[Answer] | None] = [None] * len(items)
        for i, answers in self.answer_stream(items, max_new, timing, decoded):
            out[i] = answers
        self.last_decoded = [decoded.get(i) for i in range(len(items))]   # token ids, for benchmarks
        seconds = time.perf_counter() - t0
        n_questions = sum(len(qs) for _, qs in items)
        for answers in out:
            for a in answers or []:
                if a.meta:
                    a.meta.update({"seconds": round(seconds / max(n_questions, 1), 4), "call_seconds": round(seconds, 4),
                                   "batch": n_questions, "volumes": len(items), **timing.as_dict()})
        return out
