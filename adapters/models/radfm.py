"""RadFM (chaoyi-wu/RadFM: LLaMA-13B + 3D ViT + perceiver), through its own `MultiLLaMAForCausalLM`.

Code: a checkout of https://github.com/chaoyi-wu/RadFM (commit 9efba84, the harness pinned 8d798c5)
given as `--code-dir`; the import root is `Quick_demo/` (`from Model.RadFM.multimodality_model import
MultiLLaMAForCausalLM`). Weights: `--checkpoint DIR` holding `pytorch_model.bin` (hub `chaoyi-wu/RadFM`:
unzip `pytorch_model.zip` + `RadFM.z01`) and `Language_files/` (the LLaMA config and tokenizer; taken
from the checkout's `Quick_demo/Language_files/` when the checkpoint has none, or option
`language_files=DIR`).

Construction, offline:
- `MyEmbedding` downloads `xmcmic/Med-KEBERT` (tokenizer and model); they serve only the training
  loss on `key_words_query`, so the two names in `Model.RadFM.my_embedding_layer` are patched to
  return nothing, and the checkpoint's `embedding_layer.bert_model.*` weights are skipped.
- `LlamaForCausalLM.from_pretrained(Language_files)` fails upstream when that folder has only the
  config (chaoyi-wu/RadFM issue 43); every LLaMA weight is in `pytorch_model.bin`, so the name in
  `Model.RadFM.multimodality_model` is patched to build the LLaMA from its config when the folder has
  no weights (and to load them, as upstream, when it has).
- Built on the target device and dtype, then `pytorch_model.bin` is loaded; a missing key or an
  unexpected one (other than the rotary `inv_freq` buffers old transformers saved) is an error,
  never a silent partial load (the harness loaded with strict=False).

Prompt (`Quick_demo/test.py:get_tokenizer`, identical in the harness): `LlamaTokenizer` plus the
special tokens `<image>`, `</image>`, `<image0>`…`<image3199>`, pad/bos/eos = 0/1/2; the text is
`"<image>" + "<image0>…<image31>" + "</image>" + question`, tokenized with max_length 2048.
`vision_x` is the recipe's (3, H, W, D) as [1, 1, 3, H, W, D] (one scan).

Generation is hard-coded in `MultiLLaMAForCausalLM.generate(lang_x, vision_x)`: greedy (top_k=50
without do_sample), max_new_tokens=200, and it takes no other argument. It stops on the LLaMA's
generation config EOS, which `Language_files/config.json` sets to 1 (`<s>`), while the tokenizer's
EOS is 2 (`</s>`): upstream, a finished answer's `</s>` does not stop generation, and the
continuation after it is decoded into the answer (skip_special_tokens drops only the `</s>`).
- official: the generation config's EOS is set to the tokenizer's (2) before `generate`, so an
  answer ends at its `</s>`; the tokens before it are the same greedy tokens upstream produces.
- upstream-harness: the config's EOS untouched (as the harness ran), the ids cut to its
  --max-new-tokens 256 (a no-op) and decoded whole; recipe `radfm-upstream-harness`; float16 default.
RadFM's generate passes no attention mask, so padded batches would change answers: every question
is its own `generate` call; the volume is converted and moved to the device once per call.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, Sequence

from adapters.models.base import AdapterError, AdapterSettings, Answer, ModelInput, Question, Requirement
from adapters.models.base import (VariantAdapter, computed_once, dtype_kwarg, leading_generate_tokens,
                                  release_gpu_memory, torch_load_kwargs)
from adapters.models.offline_patch import add_import_root, drop_import_root, has_weights, patched
from adapters.models.prompts.text_prompt import RADFM_IMAGE_FIRST

REPO = "https://github.com/chaoyi-wu/RadFM"
COMMIT = "9efba84cced9ffdcbce00d6005f255414ffa8c36"
HUB_ID = "chaoyi-wu/RadFM"
MODULE = Path("Model") / "RadFM" / "multimodality_model.py"
IMAGE_TOKENS = 32               # perceiver latents per scan
MAX_IMAGES = 100                # get_tokenizer(max_img_size=100): 3,200 <imageN> tokens in the vocabulary
TOKENIZER_IDS = {"pad": 0, "bos": 1, "eos": 2}
LANGUAGE_METADATA = ("config.json", "generation_config.json", "tokenizer_config.json", "special_tokens_map.json",
                     "tokenizer.model", "tokenizer.json")
SKIPPED_PREFIX = "embedding_layer.bert_model."     # Med-KEBERT: training only, not built
TOLERATED_SUFFIX = "rotary_emb.inv_freq"           # saved by transformers 4.28, a computed buffer since


def image_tokens(n: int = IMAGE_TOKENS) -> str:
    return "".join(f"<image{i}>" for i in range(n))


def special_tokens() -> list[str]:
    return ["<image>", "</image>", *(f"<image{i}>" for i in range(MAX_IMAGES * IMAGE_TOKENS))]


def import_root(code_dir: str | None) -> Path | None:
    """The checkout's `Quick_demo/` (or the folder itself when it is that one), if it holds the code."""
    if not code_dir:
        return None
    root = Path(code_dir).expanduser()
    for candidate in (root / "Quick_demo", root):
        if (candidate / MODULE).is_file():
            return candidate
    return None


class _OfflineMedKEBERT:
    """Stands in for AutoTokenizer/AutoModel in my_embedding_layer: Med-KEBERT is only used with
    key_words_query (training), so nothing is downloaded or built."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.calls: list[str] = []

    def from_pretrained(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.calls.append(name)
        return None


class _LlamaFromLanguageFiles:
    """Stands in for LlamaForCausalLM in multimodality_model: loads the folder's weights when it has
    some, else builds the LLaMA from its config (pytorch_model.bin brings every weight)."""

    def __init__(self, dtype) -> None:
        self.dtype = dtype
        self.built_from: str | None = None

    def from_pretrained(self, path: str, *args: Any, **kwargs: Any):
        from transformers import LlamaConfig, LlamaForCausalLM

        if has_weights(Path(path)):
            self.built_from = "weights"
            return LlamaForCausalLM.from_pretrained(path, *args, local_files_only=True, **dtype_kwarg(self.dtype),
                                                    **kwargs)
        self.built_from = "config"
        return LlamaForCausalLM._from_config(LlamaConfig.from_pretrained(path), **dtype_kwarg(self.dtype))


class RadFM(VariantAdapter):
    name = "radfm"
    version = "1"
    OPTIONS = ("variant", "stop", "language_files")
    default_recipe = "radfm"
    environment = "radfm"
    description = "RadFM (LLaMA-13B + 3D ViT/perceiver) through its own MultiLLaMAForCausalLM (--code-dir: RadFM checkout)"
    packages = ("einops", "einops-exts", "torchvision", "sentencepiece")
    STOPS = ("tokenizer-eos", "config-eos")
    # a question is a 200-token greedy decode of LLaMA-13B: minutes on a CPU
    WORKER_SECONDS = (900.0, 600.0)

    def __init__(self, settings: AdapterSettings | None = None) -> None:
        super().__init__(settings)
        if self.stop not in self.STOPS:
            raise AdapterError(f"{self.name}: option stop must be one of {self.STOPS}, not {self.stop!r}")
        self.model = None
        self.tokenizer = None
        self._root_entry: str | None = None
        self._load_info: dict[str, Any] = {}

    # -- configuration --------------------------------------------------------------------------
    @property
    def stop(self) -> str:
        return str(self.settings.options.get("stop", "config-eos" if self.harness else "tokenizer-eos"))

    @property
    def dtype_name(self) -> str:
        if self.settings.dtype:
            return self.settings.dtype
        if not self.settings.device.startswith("cuda"):
            return "float32"
        return "float16" if self.harness else "bfloat16"

    def generation(self) -> dict[str, Any]:
        return {
            "prompt": RADFM_IMAGE_FIRST.as_dict(),
            "image_tokens": IMAGE_TOKENS,
            "tokenizer": f"LlamaTokenizer(Language_files) + <image>, </image>, <image0>..<image{MAX_IMAGES * IMAGE_TOKENS - 1}>"
                         f" (Quick_demo/test.py get_tokenizer); pad/bos/eos = 0/1/2; <s> first; max_length 2048, truncation",
            "call": "MultiLLaMAForCausalLM.generate(lang_x, vision_x) -> lang_model.generate(inputs_embeds, "
                    "max_new_tokens=200, top_k=50); no generation arguments can be passed",
            "decoding": "greedy",
            "max_new_tokens": 200,
            "stop": {"tokenizer-eos": "generation config eos_token_id set to the tokenizer's </s> (2)",
                     "config-eos": "the LLaMA generation config's eos_token_id as loaded (Language_files: 1, <s>)"}[self.stop],
            "truncate_new_tokens": 256 if self.harness else None,
            "decode": "batch_decode(skip_special_tokens=True)" + ("" if self.harness else ", stripped"),
            "vision_x": "[1, 1, 3, H, W, D] from the recipe's (3, H, W, D)",
            "batching": "one question per generate call (no attention mask upstream)",
            "dtype": self.dtype_name,
        }

    # -- what is needed -------------------------------------------------------------------------
    @classmethod
    def _code_hint(cls) -> str:
        return (f"clone {REPO} (commit {COMMIT[:7]}; the CT-SpatialVQA harness pinned 8d798c5) and pass "
                f"--code-dir <checkout> (the folder holding Quick_demo/)")

    @classmethod
    def _weights_hint(cls) -> str:
        return (f"download {HUB_ID} (pytorch_model.zip + RadFM.z01), unzip to pytorch_model.bin in a folder DIR "
                f"with the LLaMA tokenizer/config as DIR/Language_files/ (or keep the checkout's "
                f"Quick_demo/Language_files/), and pass --checkpoint DIR")

    @staticmethod
    def _language_files(settings: AdapterSettings) -> Path | None:
        candidates = []
        if settings.options.get("language_files"):
            candidates.append(Path(str(settings.options["language_files"])).expanduser())
        else:
            if settings.checkpoint:
                candidates.append(Path(settings.checkpoint).expanduser() / "Language_files")
            root = import_root(settings.code_dir)
            if root is not None:
                candidates.append(root / "Language_files")
        for c in candidates:
            if (c / "config.json").is_file() and any((c / f).is_file() for f in ("tokenizer.model", "tokenizer.json")):
                return c
        return None

    @classmethod
    def requirements(cls, settings: AdapterSettings) -> list[Requirement]:
        root = import_root(settings.code_dir)
        where = f"--code-dir {settings.code_dir}" if settings.code_dir else "no --code-dir given"
        reqs = [Requirement("code", root is not None,
                            f"{root / MODULE}" if root is not None else f"{where}: no Quick_demo/{MODULE}; {cls._code_hint()}")]
        ckpt = Path(settings.checkpoint).expanduser() if settings.checkpoint else None
        bin_ = ckpt / "pytorch_model.bin" if ckpt else None
        ok = bin_ is not None and bin_.is_file()
        where = f"--checkpoint {settings.checkpoint}" if settings.checkpoint else "no --checkpoint given"
        reqs.append(Requirement("weights", ok, str(bin_) if ok else f"{where}: no pytorch_model.bin; {cls._weights_hint()}"))
        lang = cls._language_files(settings)
        reqs.append(Requirement("language files", lang is not None, str(lang) if lang else
                                f"no Language_files/ with config.json and tokenizer.model (looked in the checkpoint, "
                                f"the checkout's Quick_demo/ and option language_files); {cls._weights_hint()}"))
        return reqs

    def checkpoint_identity(self) -> dict[str, Any] | None:
        """pytorch_model.bin's size and the Language_files' config and tokenizer bytes."""
        if self.settings.checkpoint is None:
            return None
        ckpt = Path(self.settings.checkpoint).expanduser()
        digest = hashlib.sha256()
        bin_ = ckpt / "pytorch_model.bin"
        if bin_.is_file():
            digest.update(f"pytorch_model.bin:{bin_.stat().st_size}\0".encode())
        lang = self._language_files(self.settings)
        if lang is not None:
            for name in LANGUAGE_METADATA:
                f = lang / name
                if f.is_file():
                    digest.update(name.encode() + b"\0" + f.read_bytes() + b"\0")
        return {"name": ckpt.name, "sha256": digest.hexdigest()}

    # -- loading ----------------------------------------------------------------------------------
    def load(self) -> None:
        missing = [r for r in self.requirements(self.settings) if not r.found]
        if missing:
            raise AdapterError(f"{self.name}: " + "; ".join(f"{r.what} missing ({r.detail})" for r in missing))
        import torch

        dtype = getattr(torch, self.dtype_name)
        root = import_root(self.settings.code_dir)
        lang = self._language_files(self.settings)
        self._root_entry = add_import_root(root)
        try:
            self._build(torch, lang, dtype)
        except BaseException:
            self.close()                          # a failed load leaves no import root or modules behind
            raise

    def _build(self, torch, lang: Path, dtype) -> None:
        import importlib

        root = self._root_entry
        try:
            embedding = importlib.import_module("Model.RadFM.my_embedding_layer")
            multimodal = importlib.import_module("Model.RadFM.multimodality_model")
        except Exception as exc:
            raise AdapterError(f"{self.name}: cannot import RadFM's code from {root} ({type(exc).__name__}: {exc}); "
                               f"{self._code_hint()}") from exc
        lang_model = _LlamaFromLanguageFiles(dtype)
        try:
            with patched(embedding, AutoTokenizer=_OfflineMedKEBERT("AutoTokenizer"),
                         AutoModel=_OfflineMedKEBERT("AutoModel")), \
                    patched(multimodal, LlamaForCausalLM=lang_model), \
                    torch.device(self.settings.device), _default_dtype(torch, dtype):
                model = multimodal.MultiLLaMAForCausalLM(lang_model_path=str(lang))
        except Exception as exc:
            raise AdapterError(f"{self.name}: cannot build MultiLLaMAForCausalLM from {lang} on "
                               f"{self.settings.device} ({type(exc).__name__}: {exc})") from exc
        self._load_state(model, Path(self.settings.checkpoint).expanduser() / "pytorch_model.bin", torch)
        self.model = model.to(device=self.settings.device, dtype=dtype).eval()
        self._lead = leading_generate_tokens(self.model.lang_model)   # RadFM returns lang_model.generate(...)
        self.tokenizer = self._tokenizer(lang)
        self._check_vocabulary()
        gc = self.model.lang_model.generation_config
        self._load_info.update({"lang_model_built_from": lang_model.built_from, "language_files": str(lang),
                                "config_eos_token_id": gc.eos_token_id, "tokenizer_eos_token_id": TOKENIZER_IDS["eos"]})
        if self.stop == "tokenizer-eos":
            gc.eos_token_id = TOKENIZER_IDS["eos"]

    def _load_state(self, model, path: Path, torch) -> None:
        mmap = torch_load_kwargs()
        try:
            try:
                state = torch.load(str(path), map_location="cpu", weights_only=True, **mmap)
            except RuntimeError:
                if not mmap:
                    raise
                # an old (non-zip) torch.save file cannot be mmapped
                state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise AdapterError(f"{self.name}: cannot read {path} ({type(exc).__name__}: {exc}); "
                               f"{self._weights_hint()}") from exc
        skipped = [k for k in state if k.startswith(SKIPPED_PREFIX)]
        for k in skipped:
            del state[k]
        result = model.load_state_dict(state, strict=False)
        unexpected = [k for k in result.unexpected_keys if not k.endswith(TOLERATED_SUFFIX)]
        if result.missing_keys or unexpected:
            raise AdapterError(
                f"{self.name}: {path} does not fit RadFM's model: {len(result.missing_keys)} missing "
                f"(e.g. {result.missing_keys[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}); "
                f"is it RadFM's pytorch_model.bin, and the checkout's code at {COMMIT[:7]}?")
        self._load_info.update({"skipped_keys": len(skipped), "tolerated_keys": len(result.unexpected_keys)})

    def _tokenizer(self, lang: Path):
        from transformers import LlamaTokenizer

        try:
            tok = LlamaTokenizer.from_pretrained(str(lang))
        except Exception as exc:
            raise AdapterError(f"{self.name}: cannot load the LLaMA tokenizer from {lang} "
                               f"({type(exc).__name__}: {exc}); {self._weights_hint()}") from exc
        tok.add_special_tokens({"additional_special_tokens": special_tokens()})
        tok.pad_token_id, tok.bos_token_id, tok.eos_token_id = (TOKENIZER_IDS[k] for k in ("pad", "bos", "eos"))
        return tok

    def _check_vocabulary(self) -> None:
        """<image> must be the first row after the LLaMA's vocabulary: MyEmbedding appends the two
        figure tokens and then the perceiver outputs to the embedding table in that order."""
        rows = int(self.model.embedding_layer.weight.shape[0])
        got = [self.tokenizer.convert_tokens_to_ids(t) for t in ("<image>", "</image>", "<image0>")]
        if got != [rows, rows + 1, rows + 2]:
            raise AdapterError(f"{self.name}: the tokenizer puts <image>, </image>, <image0> at {got}, but the "
                               f"model's vocabulary has {rows} rows (expected {[rows, rows + 1, rows + 2]}); "
                               f"Language_files does not belong to this checkpoint")

    def close(self) -> None:
        self.model = None
        self.tokenizer = None
        if self._root_entry:
            drop_import_root(self._root_entry, ("Model",))
            self._root_entry = None
        release_gpu_memory()

    def provenance(self) -> dict[str, Any]:
        return {**super().provenance(), "load": dict(self._load_info), "code_repository": f"{REPO}@{COMMIT}"}

    # -- answering --------------------------------------------------------------------------------
    def vision_x(self, model_input: ModelInput):
        """The recipe's (3, H, W, D) as RadFM's [B=1, S=1, 3, H, W, D], on the model's device and dtype."""
        import torch

        arr = model_input.load().get("arr")
        if arr is None or arr.ndim != 4 or arr.shape[0] != 3:
            raise AdapterError(f"{self.name}: {model_input.path} is not a recipe '{self.recipe}' input: expected "
                               f"'arr' (3, H, W, D), got {None if arr is None else arr.shape}")
        return torch.from_numpy(arr)[None, None].to(device=self.settings.device, dtype=getattr(torch, self.dtype_name))

    def prompt(self, question: str) -> str:
        return RADFM_IMAGE_FIRST.format(image_tokens=image_tokens(), question=question)

    def lang_x(self, question: str):
        """The prompt's ids as test.py makes them. transformers 4.28's LlamaTokenizer (RadFM's pin) puts
        <s> first; a transformers 5 tokenizer built from a config without add_bos_token does not, so it
        is put there when missing."""
        import torch

        ids = self.tokenizer(self.prompt(question), max_length=2048, truncation=True)["input_ids"]
        if not ids or ids[0] != TOKENIZER_IDS["bos"]:
            ids = [TOKENIZER_IDS["bos"], *ids][:2048]
        return torch.tensor([ids], device=self.settings.device)

    def answer(self, model_input: ModelInput | None, questions: Sequence[Question]) -> list[Answer]:
        if self.model is None:
            raise AdapterError(f"{self.name}: load() first")
        if model_input is None:
            raise AdapterError(f"{self.name}: needs the volume's '{self.recipe}' input")
        vision_x = self.vision_x(model_input)
        eos = TOKENIZER_IDS["eos"]
        stops = self.model.lang_model.generation_config.eos_token_id
        stops = set(stops) if isinstance(stops, (list, tuple)) else {stops}
        answers = []
        with vision_encoded_once(self.model.embedding_layer.vision_encoder, vision_x) as encoded:
            for q in questions:
                answers.append(self._answer_one(q, vision_x, stops, eos))
        for a in answers:
            a.meta.update(image_encodes=encoded["encodes"], batch=len(questions))
        return answers

    def _answer_one(self, q: Question, vision_x, stops: set, eos: int) -> Answer:
        import torch

        t0 = time.perf_counter()
        try:
            lang_x = self.lang_x(q.question)
            with torch.inference_mode():
                out = self.model.generate(lang_x, vision_x)
            ids = out[0].tolist()[self._lead:]
            if self.harness:
                ids = ids[:256]
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
        except Exception as exc:  # noqa: BLE001  (one question's failure is stored as that question's)
            return Answer(q.qid, None, status="error", reason=f"{type(exc).__name__}: {exc}")
        rows = int(self.model.embedding_layer.weight.shape[0])
        return Answer(q.qid, text if self.harness else text.strip(), meta={
            "new_tokens": len(ids), "prompt_tokens": int(lang_x.shape[1]),
            # prompt positions that index the perceiver's outputs (past the vocabulary, <image>, </image>)
            "image_tokens": int((lang_x >= rows + 2).sum()),
            "stopped": "eos" if ids and ids[-1] in stops else "max_new_tokens",
            "after_tokenizer_eos": len(ids) - ids.index(eos) - 1 if eos in ids else 0,
            "seconds": round(time.perf_counter() - t0, 4)})


def vision_encoded_once(encoder, vision_x):
    """While active, RadFM's 3D ViT runs once for this call's `vision_x`: MyEmbedding hands it a view of
    the same storage (rearranged) for every question. Other inputs go through."""
    key = (vision_x.data_ptr(), vision_x.numel())
    return computed_once(encoder, "forward", lambda x: (x.data_ptr(), x.numel()) == key)


class _default_dtype:
    """torch's default dtype for the duration (RadFM's own modules create parameters with randn)."""

    def __init__(self, torch, dtype) -> None:
        self.torch, self.dtype = torch, dtype

    def __enter__(self):
        self.before = self.torch.get_default_dtype()
        self.torch.set_default_dtype(self.dtype)

    def __exit__(self, *exc):
        self.torch.set_default_dtype(self.before)
