"""Run on a GPU machine: the native adapters' prefix-shared batched decoding on CUDA, against plain
per-question `model.generate` on the same tiny random-weight checkpoints (tests/tiny_vlms.py), in
float32 and bfloat16, with synthetic slices shaped like each recipe's input. Prints a table: the
share of questions whose greedy tokens agree, and the time of each path. (CPU is covered by
tests/test_native_models.py; this checks the device and dtype paths CI cannot.)"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.models import prefix_batch  # noqa: E402
from adapters.models.base import AdapterSettings, ModelInput, Question  # noqa: E402
from adapters.models.lingshu import Lingshu  # noqa: E402
from adapters.models.medgemma import MedGemma  # noqa: E402
from tests.tiny_vlms import build_tiny_lingshu, build_tiny_medgemma  # noqa: E402

QUESTIONS = ["Which side is the nodule on?", "Is the heart anterior or posterior to the spine?",
             "Left?", "What is the largest diameter of the mass?",
             "Considering every slice from the apices to the diaphragm, where is the effusion and how thick is it?",
             "Which lung has three lobes?"]


def reference(adapter, images, question: Question, settings: prefix_batch.GreedySettings) -> list[int]:
    """Plain transformers on the full single-question prompt: the processor, then `model.generate`."""
    text = adapter.prompts_for(len(images), [question])[0]
    full = adapter.processor(text=[text], images=[images], return_tensors="pt",
                             add_special_tokens=prefix_batch.bos_adds_special(adapter.processor, text))
    full = {k: v.to(adapter.model.device) if hasattr(v, "to") else v for k, v in full.items()}
    with torch.inference_mode():
        out = adapter.model.generate(**full, do_sample=False, max_new_tokens=settings.max_new_tokens,
                                     min_new_tokens=settings.min_new_tokens, eos_token_id=list(settings.eos_token_ids),
                                     repetition_penalty=settings.repetition_penalty)
    return out[0, full["input_ids"].shape[1]:].tolist()


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device {device} ({torch.cuda.get_device_name() if device == 'cuda' else 'no GPU'}), torch {torch.__version__}")
    root = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    print(f"{'model':<10} {'dtype':<9} {'questions':>9} {'tokens agree':>13} {'batched s':>10} {'per-question s':>15}")
    for name, cls, builder, n_slices in (("medgemma", MedGemma, build_tiny_medgemma, 85),
                                         ("lingshu", Lingshu, build_tiny_lingshu, 32)):
        ckpt = builder(root / name)
        npz = root / f"{name}.npz"
        np.savez(npz, slices=rng.integers(0, 256, (n_slices, 96, 96, 3), dtype=np.uint8),
                 indices=np.arange(n_slices))
        mi = ModelInput("synthetic.nii.gz", name, "1", npz, (n_slices, 96, 96, 3), "uint8", "")
        qs = [Question(f"q{i}", q) for i, q in enumerate(QUESTIONS)]
        for dtype in ("float32", "bfloat16"):
            adapter = cls(AdapterSettings(checkpoint=str(ckpt), device=device, dtype=dtype))
            adapter.load()
            settings = prefix_batch.GreedySettings(**{**adapter.greedy_settings().__dict__, "max_new_tokens": 16})
            encoded = adapter.encode(mi, qs)
            family = prefix_batch.FAMILIES[adapter.family]
            torch.cuda.synchronize() if device == "cuda" else None
            t0 = time.perf_counter()
            decoded, _ = prefix_batch.generate(adapter.model, family, encoded, settings)
            torch.cuda.synchronize() if device == "cuda" else None
            batched = time.perf_counter() - t0
            images = adapter.images(mi)
            t0 = time.perf_counter()
            refs = [reference(adapter, images, q, settings) for q in qs]
            per_q = time.perf_counter() - t0
            agree = sum(d.tokens == r for d, r in zip(decoded, refs))
            tok = sum(sum(a == b for a, b in zip(d.tokens, r)) for d, r in zip(decoded, refs))
            n_tok = sum(max(len(d.tokens), len(r)) for d, r in zip(decoded, refs))
            print(f"{name:<10} {dtype:<9} {len(qs):>9} {agree:>4}/{len(qs)} q, {tok}/{n_tok} tok {batched:>8.2f} "
                  f"{per_q:>15.2f}")
            answers = adapter.answer(mi, qs)
            assert all(a.status == "ok" for a in answers), [a.reason for a in answers]
            adapter.close()


if __name__ == "__main__":
    main()
