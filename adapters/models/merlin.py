"""Merlin (StanfordMIMI, PyPI `merlin-vlm==0.0.7`, MIT): the report generator
`merlin.models.radiology_report_generation.Clip3DForTextGeneration` (I3D ResNet-152 -> Linear(2048,
4096) -> RadLLaMA-7b with LoRA), run through the package's own code in the family environment.

Weights, `--checkpoint DIR`:
    DIR/resnet_gpt2_best_stanford_report_generation_average_mtl.pt   hub stanfordmimi/Merlin; what
        merlin-vlm 0.0.7 loads for Merlin(RadiologyReport=True)            (official)
    DIR/resnet_gpt2_best_stanford_report_generation_average.pt       what 0.0.6 loaded for
        RadiologyReport=True (the harness); 0.0.7's RadiologyReportStage1_Stage2=True   (upstream-harness)
    DIR/RadLLaMA-7b/   hub StanfordAIMI/RadLLaMA-7b: config, tokenizer files and its remote tokenizer
        code (tokenization_chexagent.py); its weights are optional, the .pt above holds every weight
(or `--checkpoint FILE.pt` with option `radllama=DIR`; option `task=report_generation|
report_generation_stage1_stage2` picks the other file).

Construction, offline (what `Merlin(RadiologyReport=True)` does, without its downloads):
`Clip3DForTextGeneration()` is built with three names patched inside its module —
`torchvision.models.resnet152(pretrained=True)` builds the ResNet without ImageNet weights (the
checkpoint overwrites them), `AutoTokenizer`/`AutoModelForCausalLM.from_pretrained(
"StanfordAIMI/RadLLaMA-7b", cache_dir="./checkpoints")` read the local RadLLaMA folder (the model
from its config when the folder has no weights) — then the .pt is loaded with strict
`load_state_dict`, as `Merlin._load_model` does after its `hf_hub_download`. The package's prints go
to stderr.

Input: the recipe's (1, X, Y, Z) as [1, 1, X, Y, Z]; the encoder permutes it to (Z, X, Y) itself.
The image is encoded once per volume (`encode_image` + `adapter`, exactly what
`Clip3DForTextGeneration.generate` does first); each question is then one
`decode_text.generate(features, [prompt], **kwargs)` call: Merlin's tokenizer pads a batch and its
generate passes no attention mask, so batched prompts of different lengths would change answers.

- official: prompt "<question>###\\n" (the report prompts' "<instruction>###\\n" convention;
  Merlin has no published VQA prompt), greedy, num_beams=1, repetition_penalty=1.2,
  max_new_tokens=128, stop on token 48134 ("###") and keep the text before "###", as
  documentation/report_generation_demo.py does; bf16 on a GPU.
- upstream-harness: CT-SpatialVQA run_custom_eval.py — its prompt, greedy, max_new_tokens=64, no
  stop criterion, the text stripped (so "###..." continuations stay in the answer), the 0.0.6
  checkpoint, float32 (the harness never cast the model), recipe `merlin-upstream-harness` whose
  (Z, Y, X) array reaches the encoder axis-scrambled, as the harness fed it (still 490 image tokens:
  the I3D map is 14x5x7 instead of 10x7x7, measured with merlin-vlm 0.0.7 on CPU).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, Sequence

from adapters.models.base import AdapterError, AdapterSettings, Answer, ModelInput, Question, Requirement
from adapters.models.base import VariantAdapter, release_gpu_memory
from adapters.models.offline_patch import has_weights, patched, prints_to_stderr
from adapters.models.prompts.text_prompt import MERLIN_CTSVQA_HARNESS, MERLIN_REPORT_STYLE

PACKAGE = "merlin-vlm"
PACKAGE_VERSION = "0.0.7"
HUB_ID = "stanfordmimi/Merlin"
RADLLAMA_ID = "StanfordAIMI/RadLLaMA-7b"
CHECKPOINTS = {                       # merlin/models/load.py MODEL_CONFIGS in 0.0.7
    "report_generation": "resnet_gpt2_best_stanford_report_generation_average_mtl.pt",
    "report_generation_stage1_stage2": "resnet_gpt2_best_stanford_report_generation_average.pt",
}
RADLLAMA_DIR = "RadLLaMA-7b"
STOP_TOKEN = 48134                    # '###' in RadLLaMA's vocabulary (report_generation_demo.py)
RADLLAMA_METADATA = ("config.json", "generation_config.json", "tokenizer_config.json", "special_tokens_map.json",
                     "tokenizer.model", "tokenizer.json", "tokenization_chexagent.py")


class Merlin(VariantAdapter):
    name = "merlin"
    version = "1"
    OPTIONS = ("variant", "task", "max_new_tokens", "repetition_penalty", "stop_token_id", "radllama")
    default_recipe = "merlin"
    environment = "merlin"
    description = "Merlin report generator (merlin-vlm Clip3DForTextGeneration: I3D ResNet-152 + RadLLaMA-7b LoRA)"
    packages = (PACKAGE, "peft", "torchvision", "monai")

    def __init__(self, settings: AdapterSettings | None = None) -> None:
        super().__init__(settings)
        if self.task not in CHECKPOINTS:
            raise AdapterError(f"{self.name}: option task must be one of {tuple(CHECKPOINTS)}, not {self.task!r}")
        self.model = None
        self._load_info: dict[str, Any] = {}

    # -- configuration --------------------------------------------------------------------------
    @property
    def task(self) -> str:
        default = "report_generation_stage1_stage2" if self.harness else "report_generation"
        return str(self.settings.options.get("task", default))

    @property
    def dtype_name(self) -> str:
        if self.settings.dtype:
            return self.settings.dtype
        return "bfloat16" if self.settings.device.startswith("cuda") and not self.harness else "float32"

    def _option(self, key: str, default):
        return self.settings.options.get(key, default)

    def generation(self) -> dict[str, Any]:
        prompt = MERLIN_CTSVQA_HARNESS if self.harness else MERLIN_REPORT_STYLE
        if self.harness:
            kwargs: dict[str, Any] = {"max_new_tokens": int(self._option("max_new_tokens", 64)), "do_sample": False}
            stop, answer = None, "the decoded text, stripped"
        else:
            kwargs = {"do_sample": False, "num_beams": 1,
                      "repetition_penalty": float(self._option("repetition_penalty", 1.2)),
                      "max_new_tokens": int(self._option("max_new_tokens", 128))}
            stop, answer = int(self._option("stop_token_id", STOP_TOKEN)), "the decoded text before '###', stripped"
        return {
            "prompt": prompt.as_dict(),
            "call": "encode_image + adapter once per volume; decode_text.generate(features, [prompt], **generate_kwargs) "
                    "per question (tokenizer BOS dropped, image tokens first, skip_special_tokens decode)",
            "decoding": "greedy",
            "generate_kwargs": kwargs,
            "stop_token_id": stop,
            "answer": answer,
            "checkpoint_file": CHECKPOINTS[self.task],
            "image": "[1, 1, X, Y, Z] from the recipe's (1, X, Y, Z) array, as stored",
            "dtype": self.dtype_name,
        }

    # -- what is needed -------------------------------------------------------------------------
    def _paths(self) -> tuple[Path | None, Path | None]:
        return self.paths(self.settings, self.task)

    @staticmethod
    def paths(settings: AdapterSettings, task: str) -> tuple[Path | None, Path | None]:
        """(the report-generation .pt, the RadLLaMA folder) the settings point at."""
        if not settings.checkpoint:
            return None, None
        ckpt = Path(settings.checkpoint).expanduser()
        weights = ckpt if ckpt.suffix == ".pt" else ckpt / CHECKPOINTS[task]
        radllama = settings.options.get("radllama")
        folder = Path(str(radllama)).expanduser() if radllama else (ckpt.parent if ckpt.suffix == ".pt" else ckpt) / RADLLAMA_DIR
        return weights, folder

    @classmethod
    def _hint(cls, task: str) -> str:
        return (f"download {CHECKPOINTS[task]} from {HUB_ID} into a folder DIR (`hf download {HUB_ID} "
                f"{CHECKPOINTS[task]} --local-dir DIR`) and pass --checkpoint DIR")

    @staticmethod
    def _radllama_hint() -> str:
        return (f"download the config and tokenizer files of {RADLLAMA_ID} into DIR/{RADLLAMA_DIR} "
                f"(`hf download {RADLLAMA_ID} --include '*.json' '*.py' '*.model' --local-dir "
                f"DIR/{RADLLAMA_DIR}`; its weights are not needed: the Merlin checkpoint holds them) or pass "
                f"--option radllama=FOLDER")

    @classmethod
    def requirements(cls, settings: AdapterSettings) -> list[Requirement]:
        task = str(settings.options.get("task", "report_generation_stage1_stage2"
                                        if settings.options.get("variant") == "upstream-harness" else "report_generation"))
        if task not in CHECKPOINTS:
            return [Requirement("weights", False, f"option task must be one of {tuple(CHECKPOINTS)}")]
        weights, radllama = cls.paths(settings, task)
        where = f"--checkpoint {settings.checkpoint}" if settings.checkpoint else "no --checkpoint given"
        ok = weights is not None and weights.is_file()
        reqs = [Requirement("weights", ok, str(weights) if ok else f"{where}: no {CHECKPOINTS[task]}; {cls._hint(task)}")]
        ok = radllama is not None and (radllama / "config.json").is_file() and (radllama / "tokenizer_config.json").is_file()
        reqs.append(Requirement("RadLLaMA config and tokenizer", ok, str(radllama) if ok else
                                f"{radllama or where}: no config.json and tokenizer_config.json; {cls._radllama_hint()}"))
        return reqs

    def checkpoint_identity(self) -> dict[str, Any] | None:
        """The .pt's name and size and the RadLLaMA folder's config and tokenizer bytes."""
        weights, radllama = self._paths()
        if weights is None:
            return None
        digest = hashlib.sha256()
        if weights.is_file():
            digest.update(f"{weights.name}:{weights.stat().st_size}\0".encode())
        for name in RADLLAMA_METADATA:
            f = radllama / name
            if f.is_file():
                digest.update(name.encode() + b"\0" + f.read_bytes() + b"\0")
        return {"name": weights.name, "sha256": digest.hexdigest()}

    # -- loading ----------------------------------------------------------------------------------
    def load(self) -> None:
        missing = [r for r in self.requirements(self.settings) if not r.found]
        if missing:
            raise AdapterError(f"{self.name}: " + "; ".join(f"{r.what} missing ({r.detail})" for r in missing))
        try:
            from importlib import metadata

            import merlin.models.radiology_report_generation as rrg
            version = metadata.version(PACKAGE)
        except Exception as exc:
            raise AdapterError(f"{self.name}: cannot import {PACKAGE} ({type(exc).__name__}: {exc}); run it in the "
                               f"Merlin environment (`ctsvqa env create merlin`) or pip install "
                               f"{PACKAGE}=={PACKAGE_VERSION} torchvision") from exc
        import torch

        weights, radllama = self._paths()
        dtype = getattr(torch, self.dtype_name)
        try:
            with prints_to_stderr(), torch.device(self.settings.device), \
                    patched(rrg, torchvision=_torchvision_without_downloads(),
                            AutoTokenizer=_LocalRadLLaMA(radllama, "tokenizer"),
                            AutoModelForCausalLM=_LocalRadLLaMA(radllama, "model")):
                model = rrg.Clip3DForTextGeneration()
        except Exception as exc:
            raise AdapterError(f"{self.name}: cannot build Clip3DForTextGeneration with RadLLaMA from {radllama} "
                               f"({type(exc).__name__}: {exc}); {self._radllama_hint()}") from exc
        try:
            try:
                state = torch.load(str(weights), map_location="cpu", mmap=True)
            except RuntimeError:                   # an old (non-zip) torch.save file cannot be mmapped
                state = torch.load(str(weights), map_location="cpu")
            model.load_state_dict(state)
        except Exception as exc:
            raise AdapterError(f"{self.name}: cannot load {weights} into Clip3DForTextGeneration "
                               f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]}); {self._hint(self.task)}") from exc
        del state
        self.model = model.to(device=self.settings.device, dtype=dtype).eval()
        tokenizer = self.model.decode_text.tokenizer
        self._load_info = {"merlin_vlm": version, "checkpoint_file": weights.name,
                           "radllama_weights": "from the folder" if has_weights(radllama) else "config only",
                           "stop_token": None if self.harness else tokenizer.convert_ids_to_tokens(
                               self.generation()["stop_token_id"])}
        if version != PACKAGE_VERSION:
            self._load_info["warning"] = f"{PACKAGE} {version} installed; the adapter follows {PACKAGE_VERSION}"

    def close(self) -> None:
        self.model = None
        release_gpu_memory()

    def provenance(self) -> dict[str, Any]:
        return {**super().provenance(), "load": dict(self._load_info)}

    # -- answering --------------------------------------------------------------------------------
    def image(self, model_input: ModelInput):
        """The recipe's (1, X, Y, Z) (or the harness's (1, Z, Y, X)) as [1, 1, ...], unpermuted."""
        import torch

        arr = model_input.load().get("arr")
        if arr is None or arr.ndim != 4 or arr.shape[0] != 1:
            raise AdapterError(f"{self.name}: {model_input.path} is not a recipe '{self.recipe}' input: expected "
                               f"'arr' (1, X, Y, Z), got {None if arr is None else arr.shape}")
        return torch.from_numpy(arr)[None].to(device=self.settings.device, dtype=getattr(torch, self.dtype_name))

    def generate_kwargs(self) -> dict[str, Any]:
        gen = self.generation()
        kwargs = dict(gen["generate_kwargs"])
        if gen["stop_token_id"] is not None:
            kwargs["stopping_criteria"] = _stop_on(gen["stop_token_id"])
        return kwargs

    def answer(self, model_input: ModelInput | None, questions: Sequence[Question]) -> list[Answer]:
        if self.model is None:
            raise AdapterError(f"{self.name}: load() first")
        if model_input is None:
            raise AdapterError(f"{self.name}: needs the volume's '{self.recipe}' input")
        import torch

        prompt = MERLIN_CTSVQA_HARNESS if self.harness else MERLIN_REPORT_STYLE
        kwargs = self.generate_kwargs()
        t0 = time.perf_counter()
        with torch.no_grad(), prints_to_stderr():
            features = self.model.adapter(self.model.encode_image(self.image(model_input)))
        encode_seconds = time.perf_counter() - t0
        answers = []
        for q in questions:
            t1 = time.perf_counter()
            try:
                with prints_to_stderr():
                    [raw] = self.model.decode_text.generate(features, [prompt.format(question=q.question)], **kwargs)
            except Exception as exc:  # noqa: BLE001  (one question's failure is stored as that question's)
                answers.append(Answer(q.qid, None, status="error", reason=f"{type(exc).__name__}: {exc}"))
                continue
            text = raw.strip() if self.harness else raw.split("###")[0].strip()
            answers.append(Answer(q.qid, text, meta={
                "raw": raw, "image_tokens": int(features.shape[1]), "encode_seconds": round(encode_seconds, 4),
                "seconds": round(time.perf_counter() - t1, 4)}))
        return answers


def _torchvision_without_downloads():
    """A `torchvision` for radiology_report_generation whose resnet152(pretrained=True) downloads
    nothing (Merlin's checkpoint replaces every ImageNet weight)."""
    import types

    import torchvision

    def resnet152(pretrained: bool = False, **kwargs: Any):
        return torchvision.models.resnet152(weights=None, **kwargs)

    return types.SimpleNamespace(models=types.SimpleNamespace(resnet152=resnet152))


class _LocalRadLLaMA:
    """Stands in for AutoTokenizer / AutoModelForCausalLM in radiology_report_generation: the hub id
    becomes the local RadLLaMA folder (no cache_dir, no network)."""

    def __init__(self, folder: Path, what: str) -> None:
        self.folder, self.what = folder, what

    def from_pretrained(self, name: str, *args: Any, cache_dir: Any = None, **kwargs: Any):
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        if name != RADLLAMA_ID:
            raise AdapterError(f"merlin: the package asked for {name!r}; this adapter provides only {RADLLAMA_ID}")
        path = str(self.folder)
        if self.what == "tokenizer":
            return AutoTokenizer.from_pretrained(path, *args, local_files_only=True, **kwargs)
        if has_weights(self.folder):
            return AutoModelForCausalLM.from_pretrained(path, *args, local_files_only=True, **kwargs)
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path, local_files_only=True))


def _stop_on(token_id: int):
    """report_generation_demo.py's EosListStoppingCriteria([48134]), per row."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopOnToken(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return input_ids[:, -1] == token_id

    return StoppingCriteriaList([StopOnToken()])
