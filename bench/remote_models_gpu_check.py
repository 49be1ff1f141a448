"""Run on a GPU machine: the RadFM adapter (against the local fake of its repository) and the Merlin
adapter (the REAL merlin-vlm report generator, tiny RadLLaMA) on CUDA in float32 and bfloat16,
with inputs of the recipes' full sizes. Checks the device/dtype paths the CPU tests cannot: building
on the device, the dtype that reaches the model, Merlin's I3D encoder on a full 224x224x160 volume
(490 image tokens) and on the harness's (Z, Y, X) volume, and that the adapter's once-per-volume
image encoding gives the same text as Merlin's own one-call `generate`. Prints a table.

    python bench/remote_models_gpu_check.py [OUT_DIR]     (Merlin rows need merlin-vlm importable)
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.models.base import AdapterSettings, ModelInput, Question  # noqa: E402

QUESTIONS = [Question("v::0", "Is the lesion in the left or the right lung?"),
             Question("v::1", "Which lobe contains the nodule?"),
             Question("v::2", "Where is the largest lymph node?")]


def model_input(folder: Path, name: str, shape: tuple[int, ...]) -> ModelInput:
    arr = np.random.default_rng(0).random(shape, dtype=np.float32)
    np.save(folder / f"{name}.npy", arr)
    return ModelInput("v", name, "1", folder / f"{name}.npy", shape, "float32", "")


def radfm_rows(work: Path) -> list[dict]:
    from adapters.models.radfm import RadFM
    from tests.radfm_checkpoint import FAKE, build_checkpoint

    ckpt = build_checkpoint(work / "radfm")
    rows = []
    for dtype in ("float32", "bfloat16"):
        for recipe, shape in (("radfm", (3, 256, 256, 64)), ("radfm-upstream-harness", (3, 512, 512, 128))):
            record = work / f"radfm-{dtype}-{recipe}.jsonl"
            os.environ["CTSVQA_FAKE_RECORD"] = str(record)
            variant = "upstream-harness" if recipe.endswith("harness") else "official"
            adapter = RadFM(AdapterSettings(checkpoint=str(ckpt), code_dir=str(FAKE), device="cuda", dtype=dtype,
                                            options={"variant": variant}))
            t0 = time.perf_counter()
            adapter.load()
            load_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            answers = adapter.answer(model_input(work, recipe, shape), QUESTIONS)
            answer_s = time.perf_counter() - t0
            adapter.close()
            calls = [json.loads(line) for line in record.read_text().splitlines()]
            rows.append({"model": "radfm (fake code)", "variant": variant, "dtype": dtype, "input": shape,
                         "reached": f"{calls[0]['vision_dtype']} {calls[0]['vision_device']} {calls[0]['vision_shape']}",
                         "lang_dtype": calls[0]["lang_dtype"], "image_tokens": 32, "ok": sum(a.status == "ok" for a in answers),
                         "load_s": round(load_s, 2), "per_question_s": round(answer_s / len(QUESTIONS), 3),
                         "same_as_direct": "-"})
    return rows


def merlin_rows(work: Path) -> list[dict]:
    from adapters.models.merlin import Merlin
    from adapters.models.offline_patch import prints_to_stderr
    from tests.merlin_real import build_checkpoint, radllama_tokenizer_id

    ckpt = work / "merlin"
    ckpt.mkdir()
    build_checkpoint(ckpt)
    stop = radllama_tokenizer_id(ckpt / "RadLLaMA-7b", "###")
    rows = []
    for dtype in ("float32", "bfloat16"):
        for recipe, shape in (("merlin", (1, 224, 224, 160)), ("merlin-upstream-harness", (1, 160, 224, 224))):
            variant = "upstream-harness" if recipe.endswith("harness") else "official"
            options = {"variant": variant, **({} if variant == "upstream-harness" else {"stop_token_id": stop})}
            adapter = Merlin(AdapterSettings(checkpoint=str(ckpt), device="cuda", dtype=dtype, options=options))
            t0 = time.perf_counter()
            adapter.load()
            load_s = time.perf_counter() - t0
            mi = model_input(work, recipe, shape)
            t0 = time.perf_counter()
            answers = adapter.answer(mi, QUESTIONS)
            answer_s = time.perf_counter() - t0
            prompt = (adapter.generation()["prompt"]["template"]).format(question=QUESTIONS[0].question)
            with prints_to_stderr(), torch.no_grad():
                [direct] = adapter.model.generate(adapter.image(mi), [prompt], **adapter.generate_kwargs())
            param = next(adapter.model.parameters())
            rows.append({"model": "merlin (merlin-vlm)", "variant": variant, "dtype": dtype, "input": shape,
                         "reached": f"{param.dtype} {param.device}", "lang_dtype": str(adapter.model.decode_text.text_decoder.dtype),
                         "image_tokens": answers[0].meta.get("image_tokens"), "ok": sum(a.status == "ok" for a in answers),
                         "load_s": round(load_s, 2), "per_question_s": round(answer_s / len(QUESTIONS), 3),
                         "encode_s": answers[0].meta.get("encode_seconds"),
                         "same_as_direct": direct == answers[0].meta.get("raw")})
            adapter.close()
    return rows


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    work = Path(tempfile.mkdtemp())
    rows = radfm_rows(work)
    try:
        import merlin  # noqa: F401
    except ImportError as exc:
        print(f"merlin rows skipped: {exc}")
    else:
        rows += merlin_rows(work)
    cols = ["model", "variant", "dtype", "input", "reached", "lang_dtype", "image_tokens", "ok", "load_s",
            "per_question_s", "encode_s", "same_as_direct"]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r.get(c, "-")) for c in cols))
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    if out:
        (out / "remote_models_gpu_check.json").write_text(json.dumps(rows, default=str, indent=1))


if __name__ == "__main__":
    main()
