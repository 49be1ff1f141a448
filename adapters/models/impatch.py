"""The `<im_patch>` models (M3D-LaMed, Med3DVLM) through their own repositories' code.

Both wrap a native transformers LLM (Phi-3, Qwen2.5) in a class from their repository whose
`generate(images, inputs, **kw)` encodes the volume into 256 tokens and splices them over
embedding positions 1..256 of `inputs` = ids of `"<im_patch>" * 256 + question` (models-code.md
§1, §2), then calls transformers' `generate(inputs_embeds=...)`, so it returns only the new ids.

Why one `generate` per question: the models' `generate` pops `attention_mask` and never passes it on,
so a padded batch of questions would attend to its pads; and the splice is positional (1..256),
so left padding would move the image off its placeholders. Instead the volume is encoded once per
call: the model's own `encode_images` is wrapped for the duration of the call so that, for this
call's image tensor, its first result is reused (the features are a deterministic function of the
image; a test checks the answers equal uncached `generate`).

Layout, asserted for every prompt before `generate`:
- `bos="ensure-one"` (M3D official): exactly one BOS, then the 256 `<im_patch>`, then the question;
  BOS is prepended when the checkpoint's tokenizer adds none (the code's documented layout).
- `bos="tokenizer"` (M3D upstream-harness, Med3DVLM): the tokenizer's ids as they come, as the demo,
  the training code and the harness did. Qwen2.5 adds no BOS, so position 0 is an `<im_patch>` whose
  embedding stays, and the splice drops the first question token (meta `overwritten`), as in training.

Sampling (the harness variants) is seeded per question (`question_seed`), so an answer does not
depend on the order or grouping of questions. The module imports only stdlib/numpy: torch,
transformers and the model's code are imported in `load()` (which may run in the family's own
environment, see `environment`).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import platform
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from adapters.models.base import AdapterError, AdapterSettings, Answer, ModelInput, Question, Requirement
from adapters.models.base import VariantAdapter, computed_once, dtype_kwarg, leading_generate_tokens
from adapters.models.prompts.impatch import ImPatchPrompt

WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


class LayoutError(ValueError):
    """A prompt whose ids do not have the layout the splice needs."""


def question_seed(seed: int, qid: str) -> int:
    """The torch seed for one question's `generate`: a function of the run's seed and the question id."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{qid}".encode()).digest()[:8], "big") >> 1


def splice_layout(ids: list[int], *, image_token_id: int, n_image_tokens: int, bos_token_id: int | None,
                  policy: str) -> tuple[list[int], str]:
    """The ids to hand to `generate` and how BOS came about ('tokenizer' | 'prepended' | 'absent').
    Raises LayoutError unless the image placeholders sit exactly where the splice puts the image."""
    ids = list(ids)
    if bos_token_id is not None and ids[:1] == [bos_token_id]:
        bos = "tokenizer"
    elif policy == "ensure-one":
        if bos_token_id is None:
            raise LayoutError("the tokenizer has no BOS token, so the image placeholders cannot start at position 1")
        ids, bos = [bos_token_id] + ids, "prepended"
    else:
        bos = "absent"
    start = 0 if bos == "absent" else 1
    head = ids[start:start + n_image_tokens]
    if head != [image_token_id] * n_image_tokens:
        got = sum(1 for t in head if t == image_token_id)
        raise LayoutError(f"expected {n_image_tokens} image placeholder ids (id {image_token_id}) at positions "
                          f"{start}..{start + n_image_tokens - 1}, found {got} there (prompt starts {ids[:4]})")
    if image_token_id in ids[start + n_image_tokens:]:
        raise LayoutError("an image placeholder id occurs after the image block (in the question text)")
    return ids, bos


def check_generate_compat(model) -> None:
    """Refuse model code whose `forward` cannot take what this transformers' `generate` passes it:
    the KV cache under the base class's name (transformers >= 5.24 calls it `cache`; code that only
    knows `past_key_values` would fail, or, with **kwargs, silently decode without its cache), and
    every argument the base class's `prepare_inputs_for_generation` always passes (Phi-3 in
    transformers 5 passes `logits_to_keep=0`)."""
    base = next((c for c in type(model).__mro__ if c.__module__.startswith("transformers.models.")), None)
    if base is None:
        return
    own = inspect.signature(type(model).forward).parameters
    base_forward = inspect.signature(base.forward).parameters
    cache_name = "cache" if "cache" in base_forward else "past_key_values"
    problems = []
    if cache_name not in own:
        problems.append(f"its forward() has no `{cache_name}` parameter, the name this transformers passes the "
                        f"KV cache under")
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in own.values()):
        always = [name for name, p in inspect.signature(base.prepare_inputs_for_generation).parameters.items()
                  if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and name not in ("self", "input_ids")
                  and p.default is not inspect.Parameter.empty and p.default is not None and name not in own]
        if always:
            problems.append(f"its forward() does not accept {', '.join(always)}, which "
                            f"{base.__name__}.prepare_inputs_for_generation always passes")
    if problems:
        import transformers

        raise AdapterError(f"{type(model).__name__} ({type(model).__module__}) does not fit transformers "
                           f"{transformers.__version__}: " + "; ".join(problems))


@contextmanager
def image_encoded_once(model, image):
    """While active, the model's `encode_images(image)` for this very tensor runs once; other inputs
    go through unchanged. Yields a dict counting the real encodes (None: the model has no
    `encode_images`, so every `generate` encodes)."""
    if getattr(model, "encode_images", None) is None:
        yield {"encodes": None}
        return
    with computed_once(model, "encode_images", lambda images: images is image) as state:
        yield state


def _from_dir(module, root: Path) -> bool:
    """Whether an imported module (or namespace package) lives under `root`."""
    spec = getattr(module, "__spec__", None)
    places = [getattr(module, "__file__", None)] + list(getattr(spec, "submodule_search_locations", None) or [])
    return any(p and Path(p).resolve().is_relative_to(root) for p in places)


def drop_package(top: str, keep_from: Path | None = None) -> None:
    """Forget the imported modules of package `top` (all of them, unless every one comes from
    `keep_from`), so that the next import reads the checkout asked for."""
    names = [name for name in sys.modules if name == top or name.startswith(top + ".")]
    if keep_from is not None and all(_from_dir(sys.modules[name], keep_from) for name in names):
        return
    for name in names:
        del sys.modules[name]


class ImPatchAdapter(VariantAdapter):
    """One family of `<im_patch>` model; subclasses set the class attributes."""

    hub_id: str
    repo_url: str
    repo_commit: str
    code_module: str                    # module with the model class, under the import root
    code_class: str
    model_type: str                     # config.json's model_type
    python_min: tuple[int, int] = (3, 9)
    image_shape: tuple[int, ...]        # the recipe array's shape; the model gets it with a batch axis
    prompts: dict[str, ImPatchPrompt]
    bos: dict[str, str]                 # variant -> 'ensure-one' | 'tokenizer'
    decoding: dict[str, dict[str, Any]]  # variant -> generate kwargs (max_new_tokens may be overridden)
    gpu_dtype: dict[str, str]           # variant -> dtype on a GPU (CPU: float32)
    sources: dict[str, str]             # variant -> where its settings come from
    packages = ("tokenizers", "safetensors")
    OPTIONS = ("variant", "max_new_tokens")

    def __init__(self, settings: AdapterSettings | None = None) -> None:
        super().__init__(settings)
        self.model = None
        self.tokenizer = None
        self._sys_path: str | None = None

    # -- configuration ------------------------------------------------------------------------------
    @property
    def dtype_name(self) -> str:
        return self.settings.dtype or (self.gpu_dtype[self.variant] if self.settings.device.startswith("cuda")
                                       else "float32")

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self.decoding[self.variant])
        if "max_new_tokens" in self.settings.options:
            kwargs["max_new_tokens"] = int(self.settings.options["max_new_tokens"])
        return kwargs

    def generation(self) -> dict[str, Any]:
        kwargs = self.generate_kwargs()
        return {
            "prompt": self.prompts[self.variant].as_dict(),
            "bos": self.bos[self.variant],
            "splice": "model code: embeddings 1..256 replaced by the image's 256 tokens",
            "generate_kwargs": kwargs,
            "decoding": "sampling" if kwargs.get("do_sample") else "greedy",
            "seeding": "torch.manual_seed(question_seed(seed, qid)) before each question's generate",
            "tokenizer": "the checkpoint's (hashed in checkpoint identity), use_fast=False, add_special_tokens=True",
            "decode": "skip_special_tokens=True, stripped",
            "dtype": self.dtype_name,
            "batching": "per-question-generate-v1 (image encoded once per call)",
            "source": self.sources[self.variant],
        }

    # -- what is needed --------------------------------------------------------------------------------
    @classmethod
    def _code_hint(cls) -> str:
        return (f"clone {cls.repo_url} at commit {cls.repo_commit} (`git clone {cls.repo_url} DIR && git -C DIR "
                f"checkout {cls.repo_commit}`) and pass --code-dir DIR")

    @classmethod
    def _weights_hint(cls) -> str:
        return (f"download {cls.hub_id} with `hf download {cls.hub_id} --local-dir DIR` and pass "
                f"--checkpoint DIR")

    @classmethod
    def requirements(cls, settings: AdapterSettings) -> list[Requirement]:
        reqs = []
        code_file = cls.code_module.replace(".", "/") + ".py"
        code = Path(settings.code_dir).expanduser() if settings.code_dir else None
        if code is None:
            reqs.append(Requirement("code", False, f"no --code-dir given: {cls._code_hint()}"))
        elif not (code / code_file).is_file():
            reqs.append(Requirement("code", False, f"--code-dir {code}: no {code_file}; {cls._code_hint()}"))
        else:
            reqs.append(Requirement("code", True, f"{code}: found {code_file}"))
        ckpt = Path(settings.checkpoint).expanduser() if settings.checkpoint else None
        where = f"--checkpoint {settings.checkpoint}" if ckpt else "no --checkpoint given"
        if ckpt is None or not ckpt.is_dir():
            reqs.append(Requirement("weights", False, f"{where}: {cls._weights_hint()}"))
            return reqs
        for what, patterns in (("config", ("config.json",)), ("weights", WEIGHT_GLOBS), ("tokenizer", TOKENIZER_FILES)):
            ok = any(any(ckpt.glob(p)) for p in patterns)
            reqs.append(Requirement(what, ok, f"{ckpt}: " + ("found" if ok else
                                    f"no {' or '.join(patterns)}; {cls._weights_hint()}")))
        return reqs

    # -- loading ------------------------------------------------------------------------------------
    def _import_code(self):
        """The model class from --code-dir, never from another checkout: modules of the same top-level
        package imported from elsewhere are dropped, and other sys.path entries holding that package
        are set aside while importing (Med3DVLM's top package is the generic name `src`)."""
        code = Path(self.settings.code_dir).expanduser().resolve()
        top = self.code_module.split(".")[0]
        drop_package(top, keep_from=code)
        saved = list(sys.path)
        sys.path[:] = [str(code)] + [p for p in saved if not (Path(p or ".") / top).is_dir()
                                     or Path(p or ".").resolve() == code]
        importlib.invalidate_caches()
        try:
            module = importlib.import_module(self.code_module)
        except SyntaxError as exc:
            drop_package(top)                   # no half-imported packages left behind
            need = ".".join(map(str, self.python_min))
            raise AdapterError(f"{self.name}: {exc.filename}:{exc.lineno}: {exc.msg}; this code needs Python >= {need} "
                               f"(this is {platform.python_version()}): run it in the {self.environment!r} "
                               f"environment") from exc
        except ImportError as exc:
            drop_package(top)
            raise AdapterError(f"{self.name}: cannot import {self.code_module} from --code-dir {code} "
                               f"({type(exc).__name__}: {exc}); install the {self.environment!r} environment's "
                               f"packages, or {self._code_hint()}") from exc
        finally:
            if str(code) not in saved:
                self._sys_path = str(code)      # lazy imports inside the model's code still find it
            sys.path[:] = ([str(code)] if str(code) not in saved else []) + saved
        cls = getattr(module, self.code_class, None)
        if cls is None:
            raise AdapterError(f"{self.name}: {self.code_module} in --code-dir {code} has no {self.code_class}; "
                               f"{self._code_hint()}")
        return cls

    def load(self) -> None:
        missing = [r for r in self.requirements(self.settings) if not r.found]
        if missing:
            raise AdapterError(f"{self.name}: " + "; ".join(f"{r.what} missing ({r.detail})" for r in missing))
        ckpt = Path(self.settings.checkpoint).expanduser()
        try:
            model_type = json.loads((ckpt / "config.json").read_text()).get("model_type")
        except (OSError, ValueError) as exc:
            raise AdapterError(f"{self.name}: {ckpt / 'config.json'} is unreadable ({exc}); {self._weights_hint()}")
        if model_type != self.model_type:
            raise AdapterError(f"{self.name}: {ckpt} holds a {model_type!r} model, not {self.model_type!r}; "
                               f"{self._weights_hint()}")
        cls = self._import_code()
        import torch
        from transformers import AutoTokenizer

        try:
            model = cls.from_pretrained(str(ckpt), local_files_only=True,
                                        **dtype_kwarg(getattr(torch, self.dtype_name))).eval()
            # the slow tokenizer, as the README/demo and the harness load it (transformers 5 ignores this
            # and always builds the fast one; under 4.x M3D's slow Llama tokenizer needs sentencepiece)
            tokenizer = AutoTokenizer.from_pretrained(str(ckpt), local_files_only=True, use_fast=False)
        except Exception as exc:
            raise AdapterError(f"{self.name}: cannot load {self.code_class} and its tokenizer from {ckpt} "
                               f"({type(exc).__name__}: {exc}); {self._weights_hint()}") from exc
        check_generate_compat(model)
        image_token = self.prompts[self.variant].image_token
        if image_token not in tokenizer.get_vocab():
            raise AdapterError(f"{self.name}: the tokenizer in {ckpt} has no {image_token!r} token; "
                               f"{self._weights_hint()}")
        try:
            self.model = model.to(self.settings.device)
            self._lead = leading_generate_tokens(model)   # its generate returns super().generate(inputs_embeds=...)
        except Exception as exc:
            raise AdapterError(f"{self.name}: cannot put the model on device {self.settings.device!r} "
                               f"({type(exc).__name__}: {exc}); pass --device cpu or a GPU that is there") from exc
        self.tokenizer = tokenizer

    def close(self) -> None:
        self.model = None
        self.tokenizer = None
        if self._sys_path is not None and self._sys_path in sys.path:
            sys.path.remove(self._sys_path)
        self._sys_path = None
        if "torch" in sys.modules:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    # -- answering ----------------------------------------------------------------------------------
    def image(self, model_input: ModelInput):
        """The recipe's array as the model's `images`: float [1, *image_shape] in [0, 1], model dtype."""
        import torch

        arr = model_input.load().get("arr")
        if arr is None or tuple(arr.shape) != self.image_shape or arr.dtype != np.float32:
            got = None if arr is None else (tuple(arr.shape), str(arr.dtype))
            raise AdapterError(f"{self.name}: {model_input.path} is not a recipe '{self.recipe}' input: expected "
                               f"'arr' float32 {self.image_shape}, got {got}")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise AdapterError(f"{self.name}: {model_input.path}: values span [{lo:.3g}, {hi:.3g}], the model takes "
                               f"[0, 1]; rebuild the '{self.recipe}' input (ctsvqa preprocess)")
        return torch.tensor(arr).unsqueeze(0).to(device=self.settings.device, dtype=self.model.dtype)

    def prompt_ids(self, question: str) -> tuple[list[int], str]:
        prompt = self.prompts[self.variant]
        ids = self.tokenizer(prompt.text(question))["input_ids"]
        return splice_layout(ids, image_token_id=self.tokenizer.convert_tokens_to_ids(prompt.image_token),
                             n_image_tokens=prompt.n_image_tokens, bos_token_id=self.tokenizer.bos_token_id,
                             policy=self.bos[self.variant])

    def decode(self, new: list[int]) -> str:
        """The answer's text; ids the tokenizer does not have (the checkpoint's embedding table is padded
        past its vocabulary, as Phi-3's 32064 rows for 32011 tokens) fail this question, by name."""
        outside = sorted({i for i in new if not 0 <= i < len(self.tokenizer)})
        if outside:
            raise AdapterError(f"the model generated id(s) {outside[:5]} outside its tokenizer's {len(self.tokenizer)} "
                               f"tokens (embedding rows {self.model.get_input_embeddings().weight.shape[0]}); no "
                               f"text can be decoded from them")
        return self.tokenizer.decode(new, skip_special_tokens=True).strip()

    def answer(self, model_input: ModelInput | None, questions: Sequence[Question]) -> list[Answer]:
        if self.model is None:
            raise AdapterError(f"{self.name}: load() first")
        if model_input is None:
            raise AdapterError(f"{self.name}: needs the volume's '{self.recipe}' input")
        import torch

        kwargs = self.generate_kwargs()
        eos = self.model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, (list, tuple)) else ([] if eos is None else [eos]))
        n_image = self.prompts[self.variant].n_image_tokens
        answers = []
        t_call = time.perf_counter()
        with torch.no_grad():
            image = self.image(model_input)
            with image_encoded_once(self.model, image) as encoded:
                for q in questions:
                    t0 = time.perf_counter()
                    try:
                        ids, bos = self.prompt_ids(q.question)
                    except LayoutError as exc:
                        answers.append(Answer(q.qid, None, status="error", reason=f"prompt layout: {exc}"))
                        continue
                    seed = question_seed(self.settings.seed, q.qid)
                    torch.manual_seed(seed)
                    try:
                        out = self.model.generate(image, torch.tensor([ids], device=image.device), **kwargs)
                        new = out[0].tolist()[self._lead:]
                        text = self.decode(new)
                    except Exception as exc:  # noqa: BLE001  (one question's failure, stored with its reason)
                        answers.append(Answer(q.qid, None, status="error", reason=f"{type(exc).__name__}: {exc}"))
                        continue
                    meta = {"new_tokens": len(new), "stopped": "eos" if new and new[-1] in eos else "max_new_tokens",
                            "prompt_tokens": len(ids), "bos": bos, "seed": seed,
                            "seconds": round(time.perf_counter() - t0, 4)}
                    if bos == "absent":
                        meta["overwritten"] = self.tokenizer.decode(ids[n_image:n_image + 1])
                    answers.append(Answer(q.qid, text, meta=meta))
        call_seconds = round(time.perf_counter() - t_call, 4)
        for a in answers:
            a.meta.update(call_seconds=call_seconds, image_encodes=encoded["encodes"], batch=len(questions))
        return answers
