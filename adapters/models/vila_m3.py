"""VILA-M3 (MONAI/Llama3-VILA-M3-8B: VILA 1.5 `llava_llama`, SigLIP 384 + mlp_downsample + Llama 3 8B)
through NVlabs/VILA's own code, asked the way the M3 demo's `M3Generator` asks it. Image only: the
VISTA3D expert overlay (and its second VILA turn) is not included.

Code (`--code-dir DIR`): DIR/VILA (NVlabs/VILA@355fda9, the gitlink of VLM-Radiology-Agent-Framework
@a88424c) and DIR/scaling_on_scales (bfshi/scaling_on_scales@9c008a3, `s2wrapper`, imported by VILA at
module level); both are import roots. DIR/VLM-Radiology-Agent-Framework is not needed: its
`M3Generator` imports gradio and the experts, so its generation call is reproduced here instead
(conv_templates['llama_3'], the slice through `process_images`, `tokenizer_image_token`,
`KeywordsStoppingCriteria` on the separator, `min_new_tokens=2`, `pad_token_id=eos`).
Weights (`--checkpoint CKPT`): the MONAI/Llama3-VILA-M3-8B folder (config.json, llm/, vision_tower/,
mm_projector/).

Construction: VILA's `load_pretrained_model` pins SigLIP to `device_map='cuda'`, so it cannot run on a
CPU. On every device we do what its merged-checkpoint branch does — AutoConfig, `resume_path`,
`prepare_config_for_eval` (its device_map choice ignored), `LlavaLlamaModel(config)` (which reads
llm/, vision_tower/, mm_projector/ itself), the tokenizer's image tokens and embedding resize — and
then move the model to the device and dtype. Under transformers 5, three import-time names are put
back (`transformers.modeling_utils.no_init_weights`, `transformers.utils.import_utils.is_torch_fx_available`,
`transformers.utils.is_tf_available`), and `flash_attn`, `deepspeed` and `datasets`, imported at
module level but unused on this path, are stubbed when not installed; each is recorded in provenance.

official (recipe `vila-m3`): one middle axial slice, W400/L50, via JPEG as the demo saves it; user
turn "<image>This is a CT image.\\n{question}" (the demo's model cards left out: no expert here);
greedy, max_new_tokens 1024. upstream-harness (recipe `vila-m3-upstream-harness`, voxel-order slice):
user turn "<image> {question}", sampling temperature 0.2, top_p 0.9 (seeded per question), 256 tokens,
the harness's token-suffix stop instead of KeywordsStoppingCriteria.
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from adapters.models.base import (AdapterError, AdapterSettings, Answer, ModelInput, Question,
                                  Requirement, checkpoint_fingerprint, code_fingerprint)
from adapters.models.base import VariantAdapter, leading_generate_tokens
from adapters.models.code_roots import ImportRoots, importable, stub_module
from adapters.models.prompts.llava import VILA_M3_HARNESS, VILA_M3_OFFICIAL

VILA_REPO = ("https://github.com/NVlabs/VILA", "355fda9114c966cf46af3057e9b977064af08751")
S2_REPO = ("https://github.com/bfshi/scaling_on_scales", "9c008a37540e761f53574b488979db6e49a64312")
HUB_ID = "MONAI/Llama3-VILA-M3-8B"
IMAGE_TOKEN_INDEX = -200
TOKENS_PER_IMAGE = 196            # SigLIP 384/14 -> 27x27, padded to 28x28, 2x2 merged
# imported at module level by VILA's code (intern/flash_attention.py, modeling_mixtral_long_context.py,
# train/sequence_parallel/globals.py, visualize_features.py) but never called for inference: module ->
# the names VILA takes from it. A stub's functions raise if ever called.
UNUSED_MODULES = {
    "flash_attn": ("flash_attn_func", "flash_attn_varlen_func"),
    "flash_attn.flash_attn_interface": ("flash_attn_unpadded_qkvpacked_func", "flash_attn_varlen_qkvpacked_func",
                                        "_flash_attn_forward", "_flash_attn_backward"),
    "flash_attn.bert_padding": ("pad_input", "unpad_input", "index_first_axis"),
    "deepspeed": (),
    "deepspeed.comm": (),
    "datasets": ("load_dataset", "load_dataset_builder"),
    "datasets.distributed": ("split_dataset_by_node",),
}


_SHIMMED: list[str] = []          # transformers names put back in this process (they stay: module attributes)


def shim_transformers() -> list[str]:
    """Put back the three names VILA imports that transformers 5 no longer has; returns every one
    in effect in this process."""
    import transformers.modeling_utils as modeling_utils
    import transformers.utils as utils
    import transformers.utils.import_utils as import_utils

    if not hasattr(modeling_utils, "no_init_weights"):
        from transformers.initialization import no_init_weights

        modeling_utils.no_init_weights = no_init_weights
        _SHIMMED.append("transformers.modeling_utils.no_init_weights from transformers.initialization")
    if not hasattr(import_utils, "is_torch_fx_available"):
        import_utils.is_torch_fx_available = lambda: False       # only decides whether to torch.fx.wrap
        _SHIMMED.append("transformers.utils.import_utils.is_torch_fx_available -> False")
    if not hasattr(utils, "is_tf_available"):
        utils.is_tf_available = lambda: False
        _SHIMMED.append("transformers.utils.is_tf_available -> False")
    return list(_SHIMMED)


def _unused(module: str, name: str):
    def call(*args, **kwargs):
        raise RuntimeError(f"{module}.{name} is a ctsvqa stub ({module.split('.')[0]} is not installed; "
                           f"VILA-M3 inference does not use it)")

    call.__name__ = name
    return call


def stub_unused_modules() -> list[str]:
    """Stub the packages of UNUSED_MODULES that are not installed (each stub with a __spec__, so that
    transformers' find_spec-based checks see a package that is not there, not an error)."""
    missing = {name.split(".")[0] for name in UNUSED_MODULES
               if getattr(sys.modules.get(name.split(".")[0]), "__ctsvqa_stub__", False)
               or not importable(name.split(".")[0])}
    done = []
    for name, names in UNUSED_MODULES.items():
        if name.split(".")[0] in missing:
            stub_module(name, **{n: _unused(name, n) for n in names})
            done.append(f"{name} stubbed (not installed; unused by VILA-M3 inference)")
    return done


def paths(settings: AdapterSettings) -> dict[str, Path | None]:
    """The checkouts (--code-dir DIR: DIR/VILA, DIR/scaling_on_scales; or the options) and the checkpoint."""
    code = Path(settings.code_dir).expanduser() if settings.code_dir else None
    o = settings.options
    return {"vila": Path(o["vila_code"]).expanduser() if o.get("vila_code") else (code / "VILA" if code else None),
            "s2": (Path(o["s2wrapper_code"]).expanduser() if o.get("s2wrapper_code")
                   else (code / "scaling_on_scales" if code else None)),
            "ckpt": Path(settings.checkpoint).expanduser() if settings.checkpoint else None}


def drop_stubs() -> None:
    """Forget the modules stub_unused_modules put in sys.modules (ours only)."""
    for name in UNUSED_MODULES:
        for mod in (name, name.split(".")[0]):
            if getattr(sys.modules.get(mod), "__ctsvqa_stub__", False):
                del sys.modules[mod]


class _SuffixStop:
    """The harness's stop (its SafeKeywordsStoppingCriteria): the new ids end with the stop string's ids."""

    def __init__(self, keywords, tokenizer, input_ids) -> None:
        import torch

        self.start = input_ids.shape[1]
        self.keywords = [torch.tensor(tokenizer(k, add_special_tokens=False)["input_ids"]) for k in keywords]

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        done = []
        for row in input_ids:
            new = row[self.start:] if row.shape[0] > self.start else row
            done.append(any(new.numel() >= k.numel() and bool((new[-k.numel():] == k.to(new.device)).all())
                            for k in self.keywords))
        return torch.tensor(done, device=input_ids.device)


class VilaM3(VariantAdapter):
    name = "vila-m3"
    version = "1"
    default_recipe = "vila-m3"
    environment = "vila-m3"
    description = "VILA-M3 8B (VILA 1.5 llava_llama, one axial slice; no VISTA3D expert), from NVlabs/VILA (--code-dir)"
    packages = ("pillow", "tokenizers", "safetensors", "accelerate")
    CODE_OPTIONS = ("vila_code", "s2wrapper_code")      # checkout paths: fingerprinted as code, not kept as paths
    OPTIONS = ("variant", "max_new_tokens", "temperature", "top_p") + CODE_OPTIONS

    def __init__(self, settings: AdapterSettings | None = None) -> None:
        super().__init__(settings)
        self.model = self.tokenizer = self.image_processor = None
        self._roots: ImportRoots | None = None
        self._shims: list[str] = []

    # -- configuration --------------------------------------------------------------------------
    @property
    def dtype_name(self) -> str:
        # M3Generator: float16 on the GPU (builder and image tensors)
        return self.settings.dtype or ("float16" if self.settings.device.startswith("cuda") else "float32")

    def generation(self) -> dict[str, Any]:
        o = self.settings.options
        harness = self.variant == "upstream-harness"
        sampling = {"decoding": "sample", "temperature": float(o.get("temperature", 0.2)),
                    "top_p": float(o.get("top_p", 0.9)), "seed": f"torch.manual_seed({self.settings.seed}) per question"}
        return {
            "prompt": (VILA_M3_HARNESS if harness else VILA_M3_OFFICIAL).as_dict(),
            "conv_template": "llama_3 (the checkout's llava.conversation; in the code identity); assistant turn ''",
            "images": "one slice per question: PIL JPEG (default quality) -> llava.mm_utils.process_images",
            "image_token": "<image> -> IMAGE_TOKEN_INDEX -200, asserted to reach the model (196 embeddings each)",
            **(sampling if harness else {"decoding": "greedy (do_sample=False; M3Generator's temperature 0)"}),
            "max_new_tokens": int(o.get("max_new_tokens", 256 if harness else 1024)),
            "min_new_tokens": 2,
            "num_beams": 1,
            "pad_token_id": "tokenizer.eos_token_id",
            "stopping": ("token-suffix stop on the separator (harness SafeKeywordsStoppingCriteria)" if harness
                         else "llava.mm_utils.KeywordsStoppingCriteria on the separator"),
            "decode": "batch_decode skip_special_tokens=True, strip, trailing separator removed",
            "expert": "none (VISTA3D overlay and its second turn not included)",
            "dtype": self.dtype_name,
            "loader": "LlavaLlamaModel(config) as load_pretrained_model's merged branch, then .to(device, dtype)",
        }

    def _paths(self) -> dict[str, Path | None]:
        return paths(self.settings)

    def code_identity(self) -> dict[str, Any] | None:
        p = self._paths()
        if p["vila"] is None and p["s2"] is None:
            return None
        return {k: code_fingerprint(str(p[k])) if p[k] else None for k in ("vila", "s2")}

    def checkpoint_identity(self) -> dict[str, Any] | None:
        ckpt = self._paths()["ckpt"]
        if ckpt is None:
            return None
        return {"top": checkpoint_fingerprint(str(ckpt)),
                **{sub: checkpoint_fingerprint(str(ckpt / sub)) for sub in ("llm", "vision_tower", "mm_projector")}}

    @classmethod
    def requirements(cls, settings: AdapterSettings) -> list[Requirement]:
        p = paths(settings)
        reqs = []
        for key, folder, marker, (url, commit) in (("vila", "VILA", "llava/model/builder.py", VILA_REPO),
                                                   ("s2", "scaling_on_scales", "s2wrapper/__init__.py", S2_REPO)):
            root = p[key]
            ok = root is not None and (root / marker).is_file()
            todo = f"git clone {url}, check out {commit} into DIR/{folder} and pass --code-dir DIR"
            reqs.append(Requirement(f"code {folder}", ok, f"{root}: found" if ok else
                                    (f"{root}: no {marker}; {todo}" if root else f"no --code-dir given; {todo}")))
        ckpt = p["ckpt"]
        hint = f"download {HUB_ID} with `hf download {HUB_ID} --local-dir DIR` and pass --checkpoint DIR"
        for what, rel in (("config", "config.json"), ("llm", "llm/config.json"), ("tokenizer", "llm/tokenizer_config.json"),
                          ("vision_tower", "vision_tower/config.json"), ("mm_projector", "mm_projector/config.json")):
            ok = ckpt is not None and (ckpt / rel).is_file()
            reqs.append(Requirement(f"weights {what}", ok, f"{ckpt / rel}: found" if ok else
                                    (f"{ckpt / rel}: missing; {hint}" if ckpt else f"no --checkpoint given; {hint}")))
        return reqs

    # -- loading ----------------------------------------------------------------------------------
    def load(self) -> None:
        missing = [r for r in self.requirements(self.settings) if not r.found]
        if missing:
            raise AdapterError(f"{self.name}: " + "; ".join(f"{r.what} missing ({r.detail})" for r in missing))
        import torch

        p = self._paths()
        self._roots = ImportRoots([p["vila"], p["s2"]], ("llava", "s2wrapper"))
        self._roots.enter()
        try:
            self._shims = shim_transformers() + stub_unused_modules()
            import llava  # noqa: F401  (runs llava.entry: the builder chain, as upstream)
            from llava.constants import IMAGE_TOKEN_INDEX as index
            from llava.conversation import SeparatorStyle, conv_templates
            from llava.mm_utils import KeywordsStoppingCriteria, process_images, tokenizer_image_token
            from llava.model import LlavaLlamaModel
            from llava.model.builder import prepare_config_for_eval
            from transformers import AutoConfig
        except Exception as exc:
            self.close()
            raise AdapterError(f"{self.name}: cannot import VILA from {p['vila']} ({type(exc).__name__}: {exc}); "
                               f"check out {VILA_REPO[0]} @ {VILA_REPO[1]} and install the 'vila-m3' environment") from exc
        if index != IMAGE_TOKEN_INDEX:
            raise AdapterError(f"{self.name}: the checkout's IMAGE_TOKEN_INDEX is {index}, not {IMAGE_TOKEN_INDEX}")
        self._conv, self._sep_style = conv_templates[VILA_M3_OFFICIAL.conv_template], SeparatorStyle
        self._process_images, self._tokenize, self._keywords = process_images, tokenizer_image_token, KeywordsStoppingCriteria
        dtype = getattr(torch, self.dtype_name)
        ckpt = str(p["ckpt"])
        try:
            config = AutoConfig.from_pretrained(ckpt)
            config.resume_path = ckpt
            prepare_config_for_eval(config, {"torch_dtype": dtype})
            model = LlavaLlamaModel(config=config, low_cpu_mem_usage=True)
            tok = model.tokenizer
            if getattr(model.config, "mm_use_im_patch_token", True):
                tok.add_tokens(["<im_patch>"], special_tokens=True)
            if getattr(model.config, "mm_use_im_start_end", False):
                tok.add_tokens(["<im_start>", "<im_end>"], special_tokens=True)
            model.resize_token_embeddings(len(tok))
            model = model.to(device=self.settings.device, dtype=dtype).eval()
        except Exception as exc:
            self.close()
            raise AdapterError(f"{self.name}: cannot load VILA-M3 from {ckpt} ({type(exc).__name__}: {exc}); "
                               f"download {HUB_ID} there") from exc
        self.model, self.tokenizer = model, tok
        self._lead = leading_generate_tokens(model.llm)        # VILA returns llm.generate(inputs_embeds=...)
        self.image_processor = model.get_vision_tower().image_processor

    def close(self) -> None:
        self.model = self.tokenizer = self.image_processor = None
        if self._roots is not None:
            self._roots.leave()
            self._roots = None
        drop_stubs()

    def provenance(self) -> dict[str, Any]:
        return {**super().provenance(), "shims": list(self._shims)}

    # -- answering --------------------------------------------------------------------------------
    def images(self, model_input: ModelInput):
        """The recipe's slice as the demo hands it to process_images: saved as JPEG, read back as RGB."""
        from PIL import Image

        slices = model_input.load().get("slices")
        if slices is None or slices.ndim != 4 or slices.shape[0] != 1 or slices.shape[-1] != 3 or slices.dtype != np.uint8:
            raise AdapterError(f"{self.name}: {model_input.path} is not a recipe '{self.recipe}' input: expected "
                               f"'slices' uint8 (1, H, W, 3), got {None if slices is None else (slices.shape, slices.dtype)}")
        out = []
        for s in slices:
            buf = io.BytesIO()
            Image.fromarray(s).save(buf, format="jpeg")
            buf.seek(0)
            out.append(Image.open(buf).convert("RGB"))
        return out

    def prompt(self, question: str):
        turn = VILA_M3_HARNESS if self.variant == "upstream-harness" else VILA_M3_OFFICIAL
        conv = self._conv.copy()
        conv.append_message(conv.roles[0], turn.text(question))
        conv.append_message(conv.roles[1], "" if conv.sep_style == self._sep_style.LLAMA_3 else None)
        stop = conv.sep if conv.sep_style != self._sep_style.TWO else conv.sep2
        return conv.get_prompt(), stop

    def answer(self, model_input: ModelInput | None, questions: Sequence[Question]) -> list[Answer]:
        if self.model is None:
            raise AdapterError(f"{self.name}: load() first")
        if model_input is None:
            raise AdapterError(f"{self.name}: needs the volume's '{self.recipe}' input")
        if not questions:
            return []
        import torch

        images = self.images(model_input)
        pixels = self._process_images(images, self.image_processor, self.model.config).to(
            self.model.device, dtype=self.model.dtype)
        gen = self.generation()
        harness = self.variant == "upstream-harness"
        answers = []
        for q in questions:
            t0 = time.perf_counter()
            prompt, stop = self.prompt(q.question)
            ids = self._tokenize(prompt, self.tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt").unsqueeze(0).to(
                self.model.device)
            n_image = int((ids == IMAGE_TOKEN_INDEX).sum())
            if n_image != len(images):
                answers.append(Answer(q.qid, None, status="error", reason=(
                    f"the image did not reach the model: the prompt carries {n_image} image tokens "
                    f"(IMAGE_TOKEN_INDEX {IMAGE_TOKEN_INDEX}) for {len(images)} image(s)")))
                continue
            stopping = (_SuffixStop if harness else self._keywords)([stop], self.tokenizer, ids)
            kwargs: dict[str, Any] = dict(do_sample=harness, num_beams=1, max_new_tokens=gen["max_new_tokens"],
                                          use_cache=True, stopping_criteria=[stopping],
                                          pad_token_id=self.tokenizer.eos_token_id, min_new_tokens=2)
            if harness:
                kwargs.update(temperature=gen["temperature"], top_p=gen["top_p"])
                torch.manual_seed(self.settings.seed)
            seen: list[int] = []
            llm = self.model.get_llm() if hasattr(self.model, "get_llm") else self.model.llm
            hook = llm.register_forward_pre_hook(
                lambda _m, args, kw: seen.append(int(kw["inputs_embeds"].shape[1]))
                if kw.get("inputs_embeds") is not None else None, with_kwargs=True)
            try:
                out = self.model.generate(ids, images=[pixels], **kwargs)
            except Exception as exc:  # noqa: BLE001
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
            out = out[:, self._lead:]
            text = self.tokenizer.batch_decode(out, skip_special_tokens=True)[0].strip()
            if text.endswith(stop):
                text = text[: -len(stop)]
            answers.append(Answer(q.qid, text.strip(), meta={
                "new_tokens": int(out.shape[1]), "prompt_tokens": int(ids.shape[1]), "input_embeddings": seen[0],
                "seconds": round(time.perf_counter() - t0, 4)}))
        return answers
