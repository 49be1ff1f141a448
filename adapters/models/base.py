"""The model-adapter protocol: what the runner (tasks/inference.py) needs of any model, ours or a
third party's. No DuckDB, no Prefect here.

Life of an adapter in one run:
  1. constructed with the user's settings (`AdapterSettings`); cheap, loads nothing;
  2. `identity()` — everything that can change an answer; the run id is a hash of it (plus the
     ablation and dataset), so it must be computable before `load()` and must not contain paths that
     differ between machines when the content is the same (hash the checkpoint's config/index files);
  3. `load()` once; `prepare(dataset)` once with every question of the dataset (baselines use the
     other volumes' references; models ignore it);
  4. `answer(model_input, questions)` per volume, with at most `batch_size` questions of that volume;
     returns exactly one `Answer` per question, in any order, matched by qid. Raising fails every
     question of the call (stored as `error` with the message); an `Answer(status="error")` fails one;
     Optional: `answer_many([(model_input, questions), ...])` -> one answer list per volume, and
     `volumes_per_call`; the runner then hands it that many volumes at once (models that decode
     several volumes together) and reads no input itself (the adapter reads them, a few ahead); if
     the call raises, each volume is asked again through `answer`;
  5. `provenance()` — identity plus what helps to reproduce (package versions, device, dtype).
"""

from __future__ import annotations

import copy
import hashlib
import json
import platform
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np


class AdapterError(RuntimeError):
    """A model cannot be used as configured (missing checkpoint, bad option). The message says what to do."""


@dataclass(frozen=True)
class Question:
    qid: str
    question: str


@dataclass(frozen=True)
class DatasetQuestion:
    """A question with its reference answer and categories, for adapters that learn from the data set
    (the offline baselines). Models must never see the reference of the question they answer."""
    qid: str
    volume: str
    question: str
    answer: str
    categories: tuple[str, ...] = ()


@dataclass
class Answer:
    qid: str
    text: str | None
    status: str = "ok"                     # 'ok' | 'error'
    reason: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)   # tokens, seconds, ... (stored in provenance)

    def __post_init__(self) -> None:
        if self.status not in ("ok", "error"):
            raise ValueError(f"answer status must be 'ok' or 'error', not {self.status!r}")
        if (self.status == "ok") != (self.text is not None):
            raise ValueError(f"answer {self.qid}: status 'ok' needs a text and 'error' must have none")


@dataclass(frozen=True)
class ModelInput:
    """One volume's input for one recipe: a file written by the preprocess tasks."""
    volume: str                            # the volume whose pixels these are (differs from the question's
    #                                        volume only under the shuffle ablation)
    recipe: str
    version: str
    path: Path
    shape: tuple[int, ...]
    dtype: str
    patient_left: str                      # e.g. 'axis 3, high index'

    def load(self) -> dict[str, np.ndarray]:
        """Arrays by name: 'arr' for .npy recipes, the npz's own keys ('slices', 'indices', ...) otherwise.
        Read once: the runner loads a volume's input before the adapter's first batch, and later
        batches of the same volume get the same arrays (treat them as read-only)."""
        cached = self.__dict__.get("_arrays")
        if cached is not None:
            return cached
        if self.path.suffix == ".npz":
            with np.load(self.path) as z:
                arrays = {k: z[k] for k in z.files}
        else:
            arrays = {"arr": np.load(self.path)}
        object.__setattr__(self, "_arrays", arrays)      # frozen dataclass: a cache, not a field
        return arrays

    def release(self) -> None:
        """Drop the cached arrays (the runner calls it once the volume is answered: a run keeps every
        volume's ModelInput, and 1,601 cached inputs would not fit in memory)."""
        self.__dict__.pop("_arrays", None)


@dataclass(frozen=True)
class AdapterSettings:
    checkpoint: str | None = None          # directory or hub id
    device: str = "cpu"                    # 'cpu' | 'cuda' | 'cuda:N'
    dtype: str | None = None               # 'float32' | 'bfloat16' | 'float16'; None: the adapter's default
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)   # adapter-specific (e.g. {'variant': 'upstream-harness'})
    code_dir: str | None = None            # a checkout of the model's own repository (remote-code models)


@dataclass(frozen=True)
class Requirement:
    """One thing an adapter needs, for `ctsvqa models`."""
    what: str                              # 'weights', 'code', 'package transformers>=5'
    found: bool
    detail: str                            # where it was looked for, or what to download and where to put it


class ModelAdapter:
    """Subclass, set the class attributes, implement `load` and `answer`."""

    name: ClassVar[str]                    # registry name, e.g. 'medgemma'
    version: ClassVar[str] = "1"           # bump whenever a change to the adapter can change an answer
    default_recipe: ClassVar[str | None] = None   # a name in adapters/models/recipes.py; None: reads no image
    description: ClassVar[str] = ""
    packages: ClassVar[tuple[str, ...]] = ()      # distributions whose versions go into provenance
    CODE_OPTIONS: ClassVar[tuple[str, ...]] = ()  # options naming checkouts of the model's code: fingerprinted
    #                                               by code_identity(), so their paths stay out of the identity
    # the worker's default wait for one `answer` call: seconds for the call plus seconds per question
    # (--option worker_timeout overrides it); sized to the slowest device the model is run on
    WORKER_SECONDS: ClassVar[tuple[float, float]] = (900.0, 0.0)
    environment: ClassVar[str | None] = None      # family environment (adapters/models/envs/<name>.txt) whose
    #                                               stack the model's code needs; None: runs in ours, in-process
    OPTIONS: ClassVar[tuple[str, ...] | None] = None   # the --option keys it reads: any other is refused
    #                                                    (None: not declared, as a third-party adapter may leave it)

    def __init__(self, settings: AdapterSettings | None = None) -> None:
        self.settings = settings or AdapterSettings()
        if type(self).OPTIONS is not None:
            check_known_options(self.name, self.settings.options, type(self).OPTIONS)

    # -- what the runner asks before loading -------------------------------------------------
    @property
    def recipe(self) -> str | None:
        """The recipe this configuration consumes (an option may pick the `-upstream-harness` one)."""
        return self.default_recipe

    def generation(self) -> dict[str, Any]:
        """Prompt template and generation settings: part of the identity."""
        return {}

    def checkpoint_identity(self) -> dict[str, Any] | None:
        """What identifies the weights without loading them. Default: a hash of the checkpoint
        directory's small metadata files (config, weight index, tokenizer config)."""
        ckpt = self.settings.checkpoint
        if ckpt is None:
            return None
        return checkpoint_fingerprint(ckpt)

    def code_identity(self) -> dict[str, Any] | None:
        """What identifies the model's own code (a checkout given as `code_dir`) without importing it."""
        return code_fingerprint(self.settings.code_dir) if self.settings.code_dir else None

    def identity(self) -> dict[str, Any]:
        """Everything that can change an answer. Computed once per adapter (it hashes the model's code
        checkout and the checkpoint's metadata) and handed out as a copy: the run's plan, its checks and
        its provenance read the same one. A subclass adds to `compute_identity`."""
        memo = self.__dict__.get("_identity_memo")
        if memo is None:
            memo = self.__dict__["_identity_memo"] = self.compute_identity()
        return copy.deepcopy(memo)

    def compute_identity(self) -> dict[str, Any]:
        from adapters.models.recipes import RECIPES

        recipe = self.recipe
        code = self.code_identity()
        return {
            **({"code": code} if code is not None else {}),   # absent, not None: older run ids stay valid
            "adapter": self.name,
            "adapter_version": self.version,
            "checkpoint": self.checkpoint_identity(),
            "recipe": RECIPES[recipe].key if recipe else None,
            "generation": self.generation(),
            "seed": self.settings.seed,
            "options": dict(sorted((k, v) for k, v in self.settings.options.items() if k not in self.CODE_OPTIONS)),
        }

    @classmethod
    def requirements(cls, settings: AdapterSettings) -> list[Requirement]:
        """What this adapter needs and whether it is here; nothing needed by default."""
        return []

    # -- the work --------------------------------------------------------------------------------
    def load(self) -> None:
        """Load weights once. Raise AdapterError with what to download and where to put it."""

    def prepare(self, dataset: Sequence[DatasetQuestion]) -> None:
        """Called once after load with every question of the data set."""

    def answer(self, model_input: ModelInput | None, questions: Sequence[Question]) -> list[Answer]:
        raise NotImplementedError

    def close(self) -> None:
        """Free what load() took (GPU memory)."""

    def provenance(self) -> dict[str, Any]:
        versions = {}
        for dist in ("ctsvqa", "torch", "transformers", "numpy", *self.packages):
            try:
                versions[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                pass
        return {**self.identity(), "device": self.settings.device, "dtype": self.settings.dtype,
                "python": platform.python_version(), "packages": versions}



class VariantAdapter(ModelAdapter):
    """A model run its own way ('official': its recipe, prompt and generation) or as the CT-SpatialVQA
    harness ran it (`--option variant=upstream-harness`: the recipe `<default_recipe>-upstream-harness`
    and the harness's prompt and settings)."""

    VARIANTS: ClassVar[tuple[str, ...]] = ("official", "upstream-harness")
    _lead = 0      # ids the installed generate puts before the new ones (leading_generate_tokens), set at load

    def __init__(self, settings: AdapterSettings | None = None) -> None:
        super().__init__(settings)
        check_choice(self.name, "variant", self.variant, self.VARIANTS)

    @property
    def variant(self) -> str:
        return str(self.settings.options.get("variant", "official"))

    @property
    def harness(self) -> bool:
        return self.variant == "upstream-harness"

    @property
    def recipe(self) -> str:
        return self.default_recipe + ("-upstream-harness" if self.harness else "")


CHECKPOINT_METADATA = ("config.json", "generation_config.json", "model.safetensors.index.json",
                       "pytorch_model.bin.index.json", "preprocessor_config.json", "processor_config.json",
                       "tokenizer_config.json", "chat_template.jinja", "chat_template.json")


def checkpoint_fingerprint(checkpoint: str) -> dict[str, Any]:
    """sha256 over a checkpoint directory's metadata files and its weight files' names and sizes;
    a hub id (not a directory) is identified by its name alone."""
    path = Path(checkpoint).expanduser()
    if not path.is_dir():
        return {"id": checkpoint}
    digest = hashlib.sha256()
    for name in CHECKPOINT_METADATA:
        f = path / name
        if f.is_file():
            digest.update(name.encode() + b"\0" + f.read_bytes() + b"\0")
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")) + sorted(path.glob("*.pt")):
        digest.update(f"{f.name}:{f.stat().st_size}\0".encode())
    return {"name": path.name, "sha256": digest.hexdigest()}


def check_choice(adapter: str, option: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise AdapterError(f"{adapter}: option {option} must be one of {tuple(choices)}, not {value!r}")


def check_known_options(adapter: str, options: dict[str, Any], known: Sequence[str]) -> None:
    """Refuse a misspelt option rather than run (and store) a configuration the user did not mean."""
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise AdapterError(f"{adapter}: unknown option(s) {', '.join(unknown)}; known: "
                           f"{', '.join(known) or 'none (it takes no --option)'}")


def _version(text: str) -> tuple[int, int]:
    major, minor = (int("".join(c for c in x if c.isdigit()) or 0) for x in text.split(".")[:2])
    return major, minor


def dtype_kwarg(dtype) -> dict[str, Any]:
    """`from_pretrained`/`_from_config`'s dtype argument for the installed transformers: `dtype` from
    4.56 on (5 warns on the old name), `torch_dtype` before (4.28's model __init__ rejects `dtype`)."""
    import transformers

    return {"dtype" if _version(transformers.__version__) >= (4, 56) else "torch_dtype": dtype}


def torch_load_kwargs() -> dict[str, Any]:
    """`torch.load(..., mmap=True)` where the installed torch has it (2.1 on; 2.0 raises TypeError)."""
    import torch

    return {"mmap": True} if _version(torch.__version__) >= (2, 1) else {}


def leading_generate_tokens(model) -> int:
    """How many ids `model.generate(inputs_embeds=...)` puts before the new ones with the installed
    transformers: before 4.38 it starts the output from a [batch, 1] column of BOS ids (the remote-code
    models' `generate` returns that output as their answer), later from [batch, 0]. Asked of the
    library's own initialiser, so it follows the version present."""
    import torch

    init = getattr(model, "_maybe_initialize_input_ids_for_generation", None)
    if init is None:
        return 0
    try:
        ids = init(None, 0, {"inputs_embeds": torch.zeros(1, 1, 1)})
    except Exception:  # noqa: BLE001  (a signature we do not know: the current behaviour, no lead)
        return 0
    return int(ids.shape[1]) if ids.ndim == 2 else 0


@contextmanager
def computed_once(owner, name: str, same: Callable[[Any], bool]):
    """While active, `owner.<name>(x)` runs once for the inputs `same(x)` accepts (the volume's image, as
    a model's own code hands it over for every question) and its first result is reused; other calls go
    through. The result must be a deterministic function of that input. Yields a dict counting the real
    calls (`encodes`)."""
    original = getattr(owner, name)
    state: dict[str, Any] = {"encodes": 0, "out": None}

    def call(x, *args, **kwargs):
        if args or kwargs or not same(x):
            return original(x, *args, **kwargs)
        if state["out"] is None:
            state["out"] = original(x)
            state["encodes"] += 1
        return state["out"]

    setattr(owner, name, call)                  # an instance attribute shadows the method
    try:
        yield state
    finally:
        delattr(owner, name)
        state["out"] = None


def release_gpu_memory() -> None:
    """After a model's references are dropped: hand its cached GPU memory back (nothing without CUDA)."""
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def code_fingerprint(code_dir: str) -> dict[str, Any]:
    """sha256 over a code checkout's Python files (relative path and bytes), plus its git HEAD when it
    is a git checkout: the same code on two machines gives the same identity, an edited file another."""
    root = Path(code_dir).expanduser()
    if not root.is_dir():
        return {"path": str(code_dir), "missing": True}
    digest = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        if any(part.startswith(".") or part == "__pycache__" for part in f.relative_to(root).parts):
            continue
        digest.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    found: dict[str, Any] = {"name": root.name, "sha256": digest.hexdigest()}
    head = root / ".git" / "HEAD"
    if head.is_file():
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            target = root / ".git" / ref[5:]
            ref = target.read_text().strip() if target.is_file() else ref
        found["git_head"] = ref
    return found


def identity_hash(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def settings_dict(settings: AdapterSettings) -> dict[str, Any]:
    return asdict(settings)
