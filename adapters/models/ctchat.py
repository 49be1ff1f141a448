"""CT-CHAT (Llama 3.1 8B LLaVA fork) with CT-CLIP's CTViT encoder, through the repositories' own code.

Code (`--code-dir DIR`): DIR/CT-CHAT (ibrahimethemhamamci/CT-CHAT@33c9b97) and DIR/CT-CLIP
(ibrahimethemhamamci/CT-CLIP@a2a155c); or options `ctchat_code=PATH`, `ctclip_code=PATH`. Import roots
DIR/CT-CHAT and DIR/CT-CLIP/transformer_maskgit.
Weights (`--checkpoint CKPT`): CKPT/model (the CT-CHAT Llama 3.1 8B folder from the gated HF dataset
ibrahimhamamci/CT-RATE: a LoRA folder with non_lora_trainables.bin, or merged weights), CKPT/base
(meta-llama/Meta-Llama-3.1-8B-Instruct, needed when model/ is a LoRA) and CKPT/ct_clip.pt (the CT-CLIP
checkpoint of the same dataset, CT-CLIP_v2.pt).

Loading goes through CT-CHAT's own `llava.model.builder.load_pretrained_model` (its LoRA merge adds
`<pad>` and four task tokens; we do not re-implement that), on every device, with two shims:
`llava.model.multimodal_encoder.ct_clip` (absent upstream, never used) is stubbed in sys.modules, and
`transformers.trainer.ALL_LAYERNORM_LAYERS` (gone from transformers 5) is put back from
`transformers.pytorch_utils` when missing. The builder loads float16; other dtypes are cast after.

The image path per volume (once per `answer` call): the recipe's (1, 240, 480, 480) array ->
`CTViT(...)(video[1, 1, 240, 480, 480], return_encoded_tokens=True)` -> [1, 24, 24, 24, 512], run in
float32 -> cast to the LLM's dtype -> `model.generate(ids, images=emb, image_sizes=[emb.size], ...)`
per question. CTViT's forward hard-codes `torch.device('cuda')`; the name `torch` inside its module
is replaced by a proxy whose `device('cuda')` is the adapter's device, so it runs on CPU or any GPU.
The CT-CLIP state dict's `visual_transformer.*` keys are loaded strictly (the harness's
`strict=False` could load part of it silently).

The image must reach the model: each prompt must carry exactly one IMAGE_TOKEN_INDEX (-200) and the
LLM's input embeddings must be 256 per image longer than the text; otherwise the question fails
with that reason and no text is stored. The upstream harness forgot `<image>` and so answered from
text alone; its variant here keeps its recipe, wording, token cap and decoding but carries the image.
"""

from __future__ import annotations

import hashlib
import sys
import time
import types
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from adapters.models.base import (AdapterError, AdapterSettings, Answer, ModelInput, Question,
                                  Requirement, checkpoint_fingerprint, code_fingerprint)
from adapters.models.base import VariantAdapter, leading_generate_tokens, release_gpu_memory
from adapters.models.code_roots import ImportRoots, stub_module
from adapters.models.prompts.llava import CTCHAT_HARNESS, CTCHAT_OFFICIAL

CTCHAT_REPO = "https://github.com/ibrahimethemhamamci/CT-CHAT @ 33c9b973bf1babb3b79b5ffd8ae45948e758a3f2"
CTCLIP_REPO = "https://github.com/ibrahimethemhamamci/CT-CLIP @ a2a155c601987820433c01db69b64d701d3d229d"
WEIGHTS_HINT = ("the CT-CHAT Llama 3.1 8B folder from the gated Hugging Face dataset ibrahimhamamci/CT-RATE (accept "
                "its terms) to CKPT/model (a LoRA folder also needs meta-llama/Meta-Llama-3.1-8B-Instruct in CKPT/base) "
                "and pass --checkpoint CKPT")
CLIP_HINT = "CT-CLIP_v2.pt from the same dataset (ibrahimhamamci/CT-RATE) to CKPT/ct_clip.pt"

# encode_script.py's CTViT, as CT-CHAT was trained on it; CKPT/ctvit.json (the same keys) overrides it
CTVIT_KWARGS = dict(dim=512, codebook_size=8192, image_size=480, patch_size=20, temporal_patch_size=10,
                    spatial_depth=4, temporal_depth=4, dim_head=32, heads=8)
CTVIT_CONFIG = "ctvit.json"
INPUT_SHAPE = (1, 240, 480, 480)  # the recipe's (C, D, H, W)
TOKENS_PER_IMAGE = 256            # the attentional pooler's queries
IMAGE_TOKEN_INDEX = -200


def stub_ct_clip(ctchat_root: Path) -> bool:
    """Put `llava.model.multimodal_encoder.ct_clip` in sys.modules unless the checkout has it."""
    if (ctchat_root / "llava" / "model" / "multimodal_encoder" / "ct_clip.py").is_file():
        return False

    class CLIPVisionTower:      # never constructed: build_vision_tower's call is commented out upstream
        def __init__(self, *args, **kwargs):
            raise RuntimeError("CT-CHAT's vision tower stub: CTViT runs outside the LLaVA model")

    # the leaf only: its parents are the checkout's own packages, imported when llava.model is
    stub_module("llava.model.multimodal_encoder.ct_clip", parents=False, CLIPVisionTower=CLIPVisionTower)
    return True


_SHIMMED: list[bool] = []         # whether this process put ALL_LAYERNORM_LAYERS back (it stays)


def shim_all_layernorm_layers() -> bool:
    """True when transformers.trainer.ALL_LAYERNORM_LAYERS is ours (transformers 5 dropped it)."""
    import transformers.trainer as trainer

    if not hasattr(trainer, "ALL_LAYERNORM_LAYERS"):
        from transformers.pytorch_utils import ALL_LAYERNORM_LAYERS

        trainer.ALL_LAYERNORM_LAYERS = ALL_LAYERNORM_LAYERS
        _SHIMMED.append(True)
    return bool(_SHIMMED)


def ctvit_kwargs(ckpt: Path | None) -> dict[str, Any]:
    """CTViT's constructor arguments: CKPT/ctvit.json where the checkpoint gives one (its keys replace
    encode_script.py's), else encode_script.py's."""
    import json

    path = ckpt / CTVIT_CONFIG if ckpt else None
    if path is None or not path.is_file():
        return dict(CTVIT_KWARGS)
    try:
        given = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise AdapterError(f"ctchat: {path} is not readable JSON ({exc}); fix or remove it") from exc
    if not isinstance(given, dict) or set(given) - set(CTVIT_KWARGS) or not all(isinstance(v, int) for v in given.values()):
        raise AdapterError(f"ctchat: {path} must be an object of integers with keys among {sorted(CTVIT_KWARGS)}")
    return {**CTVIT_KWARGS, **given}


def embedding_shape(kwargs: dict[str, Any]) -> tuple[int, int, int, int]:
    """CTViT's encoded grid for the recipe's input: (frames / temporal patch, H / patch, W / patch, dim)."""
    _, d, h, w = INPUT_SHAPE
    return (d // kwargs["temporal_patch_size"], h // kwargs["patch_size"], w // kwargs["patch_size"], kwargs["dim"])


def redirect_cuda(package: str, torch_module, device: str) -> list[str]:
    """Every imported module of `package` that binds the name `torch` to torch itself gets the proxy,
    so each hard-coded `torch.device('cuda')` in it (CT-CLIP: ctvit.py and attention.py) is `device`."""
    proxy = _TorchOnDevice(torch_module, device)
    done = []
    for name, module in list(sys.modules.items()):
        if (name == package or name.startswith(package + ".")) and getattr(module, "torch", None) is torch_module:
            module.torch = proxy
            done.append(name)
    return sorted(done)


def paths(settings: AdapterSettings) -> dict[str, Path | None]:
    """The two checkouts (--code-dir DIR: DIR/CT-CHAT, DIR/CT-CLIP; or the options) and the checkpoint."""
    o, code = settings.options, settings.code_dir
    base = Path(code).expanduser() if code else None
    ctchat = Path(o["ctchat_code"]).expanduser() if o.get("ctchat_code") else (base / "CT-CHAT" if base else None)
    ctclip = Path(o["ctclip_code"]).expanduser() if o.get("ctclip_code") else (base / "CT-CLIP" if base else None)
    ckpt = Path(settings.checkpoint).expanduser() if settings.checkpoint else None
    return {"ctchat": ctchat, "ctclip": ctclip, "ckpt": ckpt}


class _TorchOnDevice(types.ModuleType):
    """`torch` as seen by CTViT's module: `torch.device('cuda')` is the adapter's device."""

    def __init__(self, torch_module, device) -> None:
        super().__init__("torch")
        self._torch = torch_module
        self._device = torch_module.device(device)

    def device(self, *args, **kwargs):
        if args and args[0] == "cuda" and len(args) == 1 and not kwargs:
            return self._device
        return self._torch.device(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._torch, name)


class CTChat(VariantAdapter):
    name = "ctchat"
    version = "1"
    default_recipe = "ctchat"
    environment = "ctchat"
    description = "CT-CHAT Llama 3.1 8B (LLaVA fork) + CT-CLIP CTViT, from their own checkouts (--code-dir)"
    packages = ("einops", "einops-exts", "vector-quantize-pytorch", "peft", "tokenizers", "safetensors")
    CODE_OPTIONS = ("ctchat_code", "ctclip_code")      # checkout paths: fingerprinted as code, not kept as paths
    OPTIONS = ("variant", "max_new_tokens") + CODE_OPTIONS

    def __init__(self, settings: AdapterSettings | None = None) -> None:
        super().__init__(settings)
        self.model = self.tokenizer = self.ctvit = None
        self._roots: ImportRoots | None = None
        self._shims: list[str] = []

    # -- configuration --------------------------------------------------------------------------
    @property
    def dtype_name(self) -> str:
        # CT-CHAT's builder loads float16 and its scripts run float16 on a GPU; casting those weights
        # to bfloat16 would only lose precision
        return self.settings.dtype or ("float16" if self.settings.device.startswith("cuda") else "float32")

    def generation(self) -> dict[str, Any]:
        o = self.settings.options
        harness = self.variant == "upstream-harness"
        return {
            "prompt": (CTCHAT_HARNESS if harness else CTCHAT_OFFICIAL).as_dict(),
            "conv_template": "llama3 (the checkout's llava.conversation; in the code identity)",
            "image_token": ("<image> -> IMAGE_TOKEN_INDEX -200, one per question, asserted to reach the model"
                            + ("; ADDED by ctsvqa: the harness's prompt had no <image>, so its answers never saw the "
                               "volume; that defect is not reproduced" if harness else "")),
            "decoding": "greedy (do_sample=False; the scripts' temperature 0)",
            "max_new_tokens": int(o.get("max_new_tokens", 128 if harness else 512)),
            "use_cache": True,
            "stopping": "the checkpoint's generation_config eos ids",
            "decode": "keep special tokens (tokenizer.decode(ids))" if harness else "skip_special_tokens=True",
            "encoder": {"class": "transformer_maskgit.CTViT", **ctvit_kwargs(self._paths()["ckpt"]), "dtype": "float32",
                        "state_dict": "ct_clip.pt visual_transformer.* (strict)"},
            "dtype": self.dtype_name,
            "loader": "llava.model.builder.load_pretrained_model",
        }

    def _paths(self) -> dict[str, Path | None]:
        return paths(self.settings)

    def code_identity(self) -> dict[str, Any] | None:
        p = self._paths()
        if p["ctchat"] is None and p["ctclip"] is None:
            return None
        return {k: code_fingerprint(str(p[k])) if p[k] else None for k in ("ctchat", "ctclip")}

    def checkpoint_identity(self) -> dict[str, Any] | None:
        ckpt = self._paths()["ckpt"]
        if ckpt is None:
            return None
        clip, adapter = ckpt / "ct_clip.pt", ckpt / "model" / "adapter_config.json"
        return {"model": checkpoint_fingerprint(str(ckpt / "model")),
                "lora_config_sha256": hashlib.sha256(adapter.read_bytes()).hexdigest() if adapter.is_file() else None,
                "base": checkpoint_fingerprint(str(ckpt / "base")) if (ckpt / "base").is_dir() else None,
                "ct_clip": {"size": clip.stat().st_size} if clip.is_file() else None,
                "ctvit": ctvit_kwargs(ckpt)}

    @classmethod
    def requirements(cls, settings: AdapterSettings) -> list[Requirement]:
        p = paths(settings)
        reqs = []
        for key, folder, marker, repo in (("ctchat", "CT-CHAT", "llava/model/builder.py", CTCHAT_REPO),
                                          ("ctclip", "CT-CLIP", "transformer_maskgit/transformer_maskgit/ctvit.py",
                                           CTCLIP_REPO)):
            root = p[key]
            ok = root is not None and (root / marker).is_file()
            url, commit = repo.split(" @ ")
            todo = f"git clone {url}, check out {commit} into DIR/{folder} and pass --code-dir DIR"
            reqs.append(Requirement(f"code {folder}", ok, f"{root}: found" if ok else
                                    (f"{root}: no {marker}; {todo}" if root else f"no --code-dir given; {todo}")))
        ckpt = p["ckpt"]
        model = ckpt / "model" if ckpt else None
        ok = model is not None and (model / "config.json").is_file()
        reqs.append(Requirement("weights model/", ok, f"{model}: found" if ok else
                                (f"{model}: no config.json; download {WEIGHTS_HINT}" if model
                                 else f"no --checkpoint given; download {WEIGHTS_HINT}")))
        if ok and (model / "adapter_config.json").is_file():
            base = ckpt / "base"
            has = (base / "config.json").is_file()
            reqs.append(Requirement("weights base/", has, f"{base}: found" if has else
                                    f"{base}: model/ is a LoRA folder and needs its base LLM; download "
                                    f"meta-llama/Meta-Llama-3.1-8B-Instruct there"))
        clip = ckpt / "ct_clip.pt" if ckpt else None
        ok = clip is not None and clip.is_file()
        reqs.append(Requirement("weights ct_clip.pt", ok, f"{clip}: found" if ok else
                                (f"{clip}: missing; download {CLIP_HINT}" if clip
                                 else f"no --checkpoint given; download {CLIP_HINT}")))
        return reqs

    # -- loading ----------------------------------------------------------------------------------
    def load(self) -> None:
        missing = [r for r in self.requirements(self.settings) if not r.found]
        if missing:
            raise AdapterError(f"{self.name}: " + "; ".join(f"{r.what} missing ({r.detail})" for r in missing))
        import torch

        p = self._paths()
        device = self.settings.device
        self._shims = []
        self._roots = ImportRoots([p["ctchat"], p["ctclip"] / "transformer_maskgit"], ("llava", "transformer_maskgit"))
        self._roots.enter()
        try:
            if stub_ct_clip(p["ctchat"]):
                self._shims.append("llava.model.multimodal_encoder.ct_clip stubbed (absent upstream)")
            if shim_all_layernorm_layers():
                self._shims.append("transformers.trainer.ALL_LAYERNORM_LAYERS from transformers.pytorch_utils")
            from llava.conversation import conv_templates
            from llava.mm_utils import tokenizer_image_token
            from llava.model.builder import load_pretrained_model
            import transformer_maskgit
        except Exception as exc:
            self.close()
            raise AdapterError(f"{self.name}: cannot import CT-CHAT/CT-CLIP from {p['ctchat'].parent} "
                               f"({type(exc).__name__}: {exc}); check out {CTCHAT_REPO} and {CTCLIP_REPO} and "
                               f"install the 'ctchat' environment's packages") from exc
        self._conv = conv_templates[CTCHAT_OFFICIAL.conv_template]
        self._tokenize = tokenizer_image_token
        model_dir = p["ckpt"] / "model"
        lora = (model_dir / "adapter_config.json").is_file()
        try:
            # the harness's call: a name with 'llava' and 'lora' takes the LoRA-merge branch
            tok, model, _, _ = load_pretrained_model(str(model_dir), str(p["ckpt"] / "base") if lora else None,
                                                     "llava-lora" if lora else "llava", device=device)
            model = model.to(device=device, dtype=getattr(torch, self.dtype_name)).eval()
        except Exception as exc:
            self.close()
            raise AdapterError(f"{self.name}: cannot load CT-CHAT from {model_dir} ({type(exc).__name__}: {exc}); "
                               f"download {WEIGHTS_HINT}") from exc
        self.model, self.tokenizer = model, tok
        self._lead = leading_generate_tokens(model)       # its generate returns super().generate(inputs_embeds=...)
        self.ctvit = self._load_ctvit(transformer_maskgit.CTViT, p["ckpt"] / "ct_clip.pt", device)

    def _load_ctvit(self, cls, path: Path, device: str):
        import torch

        kwargs = ctvit_kwargs(path.parent)
        vit = cls(**kwargs)
        self._embedding_shape = embedding_shape(kwargs)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            self.close()
            raise AdapterError(f"{self.name}: cannot read {path} ({type(exc).__name__}: {exc}); download {CLIP_HINT}") from exc
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        prefix = "visual_transformer."
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        result = vit.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            self.close()
            raise AdapterError(f"{self.name}: {path} does not match CTViT: {len(result.missing_keys)} missing keys "
                               f"(e.g. {result.missing_keys[:3]}), {len(result.unexpected_keys)} unexpected "
                               f"(e.g. {result.unexpected_keys[:3]}); is it CT-CLIP_v2.pt, and is "
                               f"vector-quantize-pytorch the version CT-CLIP pins (1.1.2)?")
        vit = vit.to(device=device, dtype=torch.float32).eval()
        redirected = redirect_cuda(type(vit).__module__.split(".")[0], torch, device)
        if redirected:
            self._shims.append(f"torch.device('cuda') -> {device} in {', '.join(redirected)}")
        return vit

    def close(self) -> None:
        self.model = self.tokenizer = self.ctvit = None
        if self._roots is not None:
            self._roots.leave()
            self._roots = None
        release_gpu_memory()

    def provenance(self) -> dict[str, Any]:
        return {**super().provenance(), "shims": list(self._shims)}

    # -- answering --------------------------------------------------------------------------------
    def encode_volume(self, model_input: ModelInput):
        """The recipe's array through CTViT: [1, 24, 24, 24, 512] in the LLM's dtype."""
        import torch

        arr = model_input.load().get("arr")
        if arr is None or arr.shape != INPUT_SHAPE or arr.dtype != np.float32:
            raise AdapterError(f"{self.name}: {model_input.path} is not a recipe '{self.recipe}' input: expected 'arr' "
                               f"float32 {INPUT_SHAPE}, got {None if arr is None else (arr.shape, arr.dtype)}")
        video = torch.from_numpy(np.ascontiguousarray(arr))[None].to(self.settings.device)   # [1, 1, D, H, W]
        with torch.inference_mode():
            emb = self.ctvit(video, return_encoded_tokens=True)
        if tuple(emb.shape) != (1, *self._embedding_shape):
            raise AdapterError(f"{self.name}: CTViT returned {tuple(emb.shape)}, not {(1, *self._embedding_shape)}")
        return emb.to(self.model.device, self.model.dtype)

    def prompt(self, question: str) -> str:
        turn = CTCHAT_HARNESS if self.variant == "upstream-harness" else CTCHAT_OFFICIAL
        conv = self._conv.copy()
        conv.append_message(conv.roles[0], turn.text(question))
        conv.append_message(conv.roles[1], None)
        return conv.get_prompt()

    def answer(self, model_input: ModelInput | None, questions: Sequence[Question]) -> list[Answer]:
        if self.model is None:
            raise AdapterError(f"{self.name}: load() first")
        if model_input is None:
            raise AdapterError(f"{self.name}: needs the volume's '{self.recipe}' input")
        if not questions:
            return []
        import torch

        t0 = time.perf_counter()
        emb = self.encode_volume(model_input)
        encode_seconds = time.perf_counter() - t0
        gen = self.generation()
        answers = []
        for q in questions:
            t1 = time.perf_counter()
            ids = self._tokenize(self.prompt(q.question), self.tokenizer, IMAGE_TOKEN_INDEX,
                                 return_tensors="pt").unsqueeze(0).to(self.model.device)
            n_image = int((ids == IMAGE_TOKEN_INDEX).sum())
            if n_image != 1:
                answers.append(Answer(q.qid, None, status="error", reason=(
                    f"the image did not reach the model: the prompt carries {n_image} image tokens "
                    f"(IMAGE_TOKEN_INDEX {IMAGE_TOKEN_INDEX}), expected 1; check the checkout's conv template")))
                continue
            seen: list[int] = []
            hook = self.model.get_model().register_forward_pre_hook(
                lambda _m, args, kwargs: seen.append(int(kwargs["inputs_embeds"].shape[1]))
                if kwargs.get("inputs_embeds") is not None else None, with_kwargs=True)
            try:
                with torch.inference_mode():
                    out = self.model.generate(ids, images=emb, image_sizes=[int(emb.numel())], do_sample=False,
                                              num_beams=1, max_new_tokens=gen["max_new_tokens"], use_cache=True)
            except Exception as exc:  # noqa: BLE001  (one question's failure is stored as that question's)
                answers.append(Answer(q.qid, None, status="error", reason=f"generate: {type(exc).__name__}: {exc}"))
                continue
            finally:
                hook.remove()
            expected = ids.shape[1] - n_image + TOKENS_PER_IMAGE * n_image
            if not seen or seen[0] != expected:
                answers.append(Answer(q.qid, None, status="error", reason=(
                    f"the image did not reach the model: the LLM's first input was "
                    f"{seen[0] if seen else 'not seen'} embeddings, expected {expected} "
                    f"({ids.shape[1] - n_image} text + {TOKENS_PER_IMAGE} per image)")))
                continue
            new = out[0].tolist()[self._lead:]
            text = self.tokenizer.decode(new, skip_special_tokens=gen["decode"] == "skip_special_tokens=True").strip()
            answers.append(Answer(q.qid, text, meta={
                "new_tokens": len(new), "prompt_tokens": int(ids.shape[1]), "input_embeddings": seen[0],
                "seconds": round(time.perf_counter() - t1, 4), "encode_seconds": round(encode_seconds, 4)}))
        return answers
