"""One volume, many questions: encode the image prefix once, decode all questions as one batch.

Every question about a volume shares its prompt up to the question: chat-template start,
instruction, and all slices with their labels. Here that shared prefix runs through the vision
tower and the language model once (batch 1, transformers' own forward, so Gemma 3's bidirectional
image attention comes from `token_type_ids` and Qwen2.5-VL's M-RoPE from its own `get_rope_index`).
Its KV cache (a transformers `DynamicCache`) is then repeated along the batch dimension and each
question's suffix (question + end of turn + generation prompt) is prefilled and greedily decoded in
one batch.

Suffixes differ in length, so they are left-padded *between* the prefix and the suffix. Every cache
slot carries the index it would have in the unpadded single-question sequence (-1 for a pad); the
attention masks (causal, and Gemma's sliding window) and the position ids are computed from that
index, not from the slot, and passed to the model as the per-layer-type mask dict transformers
accepts. So each row attends to exactly the tokens, at exactly the positions, that plain
`model.generate` on the full single-question prompt would — the tests check the greedy tokens are
identical on tiny models in float32. The cache keeps every layer at full length (a
sliding-window layer would drop slots by count, which pads would skew); that costs memory
(MedGemma 4B at 22.5k prefix tokens: ~3 GB of bf16 KV per question in the batch).

The exact prompt ids are the processor's: the images are processed once (`processor(...)` on the
first question's text), and every question's text is expanded with the same image replacement
strings (`get_text_with_replacements`) and tokenized with the processor's tokenizer; the first
question's ids are checked against the processor's own.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from adapters.models.base import AdapterError, AdapterSettings, Answer, ModelAdapter, ModelInput, Question, Requirement
from adapters.models.prompts import SlicePrompt

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
    full: dict[str, torch.Tensor] = field(default_factory=dict)   # the first question's full processor output

    @property
    def prefix_len(self) -> int:
        return int(self.prefix["input_ids"].shape[1])


@dataclass
class Decoded:
    tokens: list[int]             # generated ids, EOS included when it stopped there
    stopped: str                  # 'eos' | 'max_new_tokens'


@dataclass(frozen=True)
class GreedySettings:
    max_new_tokens: int
    min_new_tokens: int = 0
    repetition_penalty: float = 1.0
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int = 0


def bos_adds_special(processor, text: str) -> bool:
    """What `processor.apply_chat_template(tokenize=True)` does: no extra special tokens when the
    rendered template already starts with BOS."""
    bos = getattr(processor.tokenizer, "bos_token", None)
    return not (bos is not None and text.startswith(bos))


def encode(processor, texts: Sequence[str], images: list, *, add_special_tokens: bool) -> Encoded:
    """Processor outputs for the prompts `texts` (one per question, all with the same images)."""
    first = processor(text=[texts[0]], images=[images], return_tensors="pt", add_special_tokens=add_special_tokens,
                      return_text_replacement_offsets=True)
    offsets = first.pop("text_replacement_offsets")[0]
    replacements = [o["replacement"] for o in offsets if o["type"] == "image"]
    ids: list[list[int]] = []
    for text in texts:
        expanded, _ = processor.get_text_with_replacements([text], replacements)
        ids.append(list(processor.tokenizer(expanded[0], add_special_tokens=add_special_tokens)["input_ids"]))
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
    full = {k: v for k, v in first.items() if isinstance(v, torch.Tensor)}
    return Encoded(prefix=prefix, suffixes=suffixes, full=full)


# -- model families --------------------------------------------------------------------------------

class Family:
    """How one architecture runs its prefix and places positions."""

    def prefix_forward(self, model, prefix: dict[str, torch.Tensor], cache) -> Any:
        raise NotImplementedError

    def position_ids(self, state: Any, real: torch.Tensor) -> torch.Tensor:
        """Position ids for text tokens at unpadded indices `real` (B, S)."""
        raise NotImplementedError


class Gemma3Family(Family):
    def prefix_forward(self, model, prefix, cache):
        model(**prefix, cache=cache, use_cache=True, logits_to_keep=1)
        return None

    def position_ids(self, state, real):
        return real


class Qwen25VLFamily(Family):
    def prefix_forward(self, model, prefix, cache):
        # Our own M-RoPE positions (the model's get_rope_index), so no rope_deltas state is read
        # from or left on the model between volumes.
        positions, deltas = model.model.get_rope_index(
            prefix["input_ids"], mm_token_type_ids=prefix["mm_token_type_ids"],
            image_grid_thw=prefix.get("image_grid_thw"), attention_mask=prefix.get("attention_mask"))
        model(**prefix, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1)
        return deltas.reshape(1, 1)          # text token at unpadded index r sits at r + delta

    def position_ids(self, delta, real):
        pos = real + delta.to(real.device)
        return pos.unsqueeze(0).expand(3, -1, -1)


FAMILIES = {"gemma3": Gemma3Family(), "qwen2_5_vl": Qwen25VLFamily()}


# -- masks -----------------------------------------------------------------------------------------

def _masks(model, real: torch.Tensor, q_start: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Per-layer-type masks (B, 1, Q, K) for queries at slots q_start.. over all slots, from each
    slot's unpadded index `real` (B, K; -1 = pad). A pad query sees only itself (no empty rows)."""
    text_config = model.config.get_text_config()
    q_real = real[:, q_start:].unsqueeze(-1)                  # (B, Q, 1)
    k_real = real.unsqueeze(1)                                # (B, 1, K)
    k_slots = torch.arange(real.shape[1], device=real.device)
    q_slots = torch.arange(q_start, real.shape[1], device=real.device).unsqueeze(-1)
    own = (k_slots.unsqueeze(0) == q_slots).unsqueeze(0)      # (1, Q, K)
    causal = (k_real >= 0) & (q_real >= 0) & (k_real <= q_real)
    out = {}
    for layer_type in set(text_config.layer_types):
        allowed = causal
        if layer_type == "sliding_attention" and text_config.sliding_window is not None:
            allowed = allowed & (k_real > q_real - text_config.sliding_window)
        allowed = (allowed | own).unsqueeze(1)
        if model.config._attn_implementation == "eager":
            allowed = torch.zeros(allowed.shape, dtype=dtype, device=real.device).masked_fill(
                ~allowed, torch.finfo(dtype).min)
        out[layer_type] = allowed
    return out


# -- decoding --------------------------------------------------------------------------------------

def check_generation_config(generation_config) -> None:
    set_ = [name for name in UNSUPPORTED_GENERATION if getattr(generation_config, name, None) not in (None, 0, 1.0, [])]
    if set_:
        raise ValueError(f"the checkpoint's generation_config sets {set_}, which the prefix-shared decoder does "
                         f"not apply; remove them or extend adapters/models/prefix_batch.py")


def _penalize(scores: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """transformers' RepetitionPenaltyLogitsProcessor, on the ids each row has seen."""
    score = torch.gather(scores, 1, seen)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return scores.scatter(1, seen, score)


@torch.inference_mode()
def generate(model, family: Family, encoded: Encoded, settings: GreedySettings) -> tuple[list[Decoded], dict]:
    """Greedy answers for every suffix of `encoded`, sharing the prefix. Returns the answers and timings."""
    from transformers import DynamicCache

    device = model.device
    dtype = model.dtype
    t0 = time.perf_counter()
    prefix = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in encoded.prefix.items()}
    cache = DynamicCache()
    state = family.prefix_forward(model, prefix, cache)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t_prefix = time.perf_counter() - t0

    batch = len(encoded.suffixes)
    L = encoded.prefix_len
    S = max(len(s) for s in encoded.suffixes)
    cache.batch_repeat_interleave(batch)
    suffix = torch.full((batch, S), settings.pad_token_id, dtype=torch.long, device=device)
    real = torch.full((batch, L + S), -1, dtype=torch.long, device=device)
    real[:, :L] = torch.arange(L, device=device)
    for i, ids in enumerate(encoded.suffixes):
        suffix[i, S - len(ids):] = torch.tensor(ids, device=device)
        real[i, L + S - len(ids):] = torch.arange(L, L + len(ids), device=device)
    # every id each row has seen (pads replaced by one of the row's own ids: a set, for the penalty)
    prefix_ids = prefix["input_ids"].expand(batch, -1)
    seen = torch.cat([prefix_ids, torch.where(real[:, L:] >= 0, suffix, prefix_ids[:, :1])], dim=1)

    eos = torch.tensor(settings.eos_token_ids or [-1], device=device)
    lengths = real.max(dim=1).values + 1                     # unpadded length of each row
    q_pos = family.position_ids(state, real[:, L:].clamp(min=0))
    out = model(input_ids=suffix, attention_mask=_masks(model, real, L, dtype), position_ids=q_pos,
                cache=cache, use_cache=True, logits_to_keep=1)
    logits = out.logits[:, -1, :]

    tokens: list[list[int]] = [[] for _ in range(batch)]
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    stopped = ["max_new_tokens"] * batch
    for step in range(settings.max_new_tokens):
        scores = logits.float()
        if settings.repetition_penalty != 1.0:
            scores = _penalize(scores, seen, settings.repetition_penalty)
        if step < settings.min_new_tokens and settings.eos_token_ids:
            scores[:, eos] = -float("inf")
        nxt = scores.argmax(dim=-1)
        nxt = torch.where(done, torch.full_like(nxt, settings.pad_token_id), nxt)
        for i, (t, finished) in enumerate(zip(nxt.tolist(), done.tolist())):   # one device sync per step
            if not finished:
                tokens[i].append(t)
        hit = torch.isin(nxt, eos) & ~done
        for i in torch.nonzero(hit).flatten().tolist():
            stopped[i] = "eos"
        done = done | hit
        if bool(done.all()) or step == settings.max_new_tokens - 1:
            break
        seen = torch.cat([seen, nxt.unsqueeze(1)], dim=1)
        real = torch.cat([real, lengths.unsqueeze(1)], dim=1)
        q_pos = family.position_ids(state, lengths.unsqueeze(1))
        out = model(input_ids=nxt.unsqueeze(1), attention_mask=_masks(model, real, real.shape[1] - 1, dtype),
                    position_ids=q_pos, cache=cache, use_cache=True)
        logits = out.logits[:, -1, :]
        lengths = lengths + 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    timing = {"prefix_seconds": round(t_prefix, 4), "decode_seconds": round(time.perf_counter() - t0 - t_prefix, 4),
              "prefix_tokens": L, "batch": batch}
    return [Decoded(t, s) for t, s in zip(tokens, stopped)], timing


# -- the adapter both slice-stack models share ------------------------------------------------------

WEIGHT_GLOBS = ("*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin")
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def _image_backend() -> str:
    """The backend AutoProcessor picks: torchvision when installed, else PIL (their resizes differ)."""
    from transformers.utils import is_torchvision_available

    return "torchvision" if is_torchvision_available() else "pil"


class SliceChatAdapter(ModelAdapter):
    """A transformers image-text-to-text model reading a recipe's RGB slice stack through its chat
    template: `prompt` per variant, greedy decoding, prefix-shared batches (this module)."""

    family: str                                   # key of FAMILIES
    model_class: str                              # transformers class name
    hub_id: str
    download_note: str = ""
    prompts: dict[str, SlicePrompt]               # variant -> prompt
    max_new_tokens: dict[str, int]                # variant -> default
    min_new_tokens: dict[str, int] = {"official": 0, "upstream-harness": 0}
    image_encoding: dict[str, str] = {"official": "none", "upstream-harness": "none"}
    packages = ("pillow", "tokenizers", "safetensors")
    VARIANTS = ("official", "upstream-harness")

    def __init__(self, settings: AdapterSettings | None = None) -> None:
        super().__init__(settings)
        if self.variant not in self.VARIANTS:
            raise AdapterError(f"{self.name}: option variant must be one of {self.VARIANTS}, not {self.variant!r}")
        self.model = None
        self.processor = None

    # -- configuration --------------------------------------------------------------------------
    @property
    def variant(self) -> str:
        return str(self.settings.options.get("variant", "official"))

    @property
    def recipe(self) -> str:
        return self.default_recipe + ("-upstream-harness" if self.variant == "upstream-harness" else "")

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
            "attn_implementation": o("attn_implementation", "sdpa"),
            "dtype": self.dtype_name,
            "batching": "prefix-shared-v1",
        }

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
        return (f"download {cls.hub_id}{cls.download_note} with `huggingface-cli download {cls.hub_id} "
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
        try:
            check_generation_config(self.model.generation_config)
        except ValueError as exc:
            raise AdapterError(f"{self.name}: {path}: {exc}") from exc

    def _load_processor(self, path: str, backend: str):
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(path, backend=backend)

    def close(self) -> None:
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

    def images(self, model_input: ModelInput) -> list:
        """The recipe's slices as the PIL images the published scripts hand to the processor."""
        from PIL import Image

        arrays = model_input.load()
        slices = arrays.get("slices")
        if slices is None or slices.ndim != 4 or slices.shape[-1] != 3 or slices.dtype != np.uint8:
            raise AdapterError(f"{self.name}: {model_input.path} is not a recipe '{self.recipe}' input: expected "
                               f"'slices' uint8 (N, H, W, 3), got {None if slices is None else (slices.shape, slices.dtype)}")
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

    def answer(self, model_input: ModelInput | None, questions: Sequence[Question]) -> list[Answer]:
        if self.model is None:
            raise AdapterError(f"{self.name}: load() first")
        if model_input is None:
            raise AdapterError(f"{self.name}: needs the volume's '{self.recipe}' input")
        if not questions:
            return []
        t0 = time.perf_counter()
        encoded = self.encode(model_input, questions)
        decoded, timing = generate(self.model, FAMILIES[self.family], encoded, self.greedy_settings())
        seconds = time.perf_counter() - t0
        answers = []
        for q, d, suffix in zip(questions, decoded, encoded.suffixes):
            text = self.processor.tokenizer.decode(d.tokens, skip_special_tokens=True).strip()
            answers.append(Answer(q.qid, text, meta={
                "new_tokens": len(d.tokens), "stopped": d.stopped, "suffix_tokens": len(suffix),
                "seconds": round(seconds / len(questions), 4), "call_seconds": round(seconds, 4), **timing}))
        return answers
