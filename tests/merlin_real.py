"""Runs the Merlin adapter on the REAL merlin-vlm package, inside the Merlin environment (called by
tests/test_model_merlin.py with that environment's python; needs only merlin-vlm's own stack, numpy
and this repository on PYTHONPATH).

Real: merlin-vlm's Clip3DForTextGeneration (the I3D ResNet-152 built from torchvision's resnet152 and
inflated by Merlin's code, the Adapter, TextDecoder with PEFT LoRA r=512, its tokenization, BOS drop,
image-token prefix and generate), transformers' LlamaForCausalLM and tokenizer, torch.load and strict
load_state_dict. Tiny: the RadLLaMA stand-in (hidden 4096, one layer; tests/tiny_llama.py) and the
checkpoint (this script saves the freshly built model's state dict under the hub file name).

    python tests/merlin_real.py WORKDIR INPUT.npy OUT.json
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from adapters.models.base import AdapterSettings, ModelInput, Question
from adapters.models.merlin import CHECKPOINTS, Merlin, _LocalRadLLaMA, _torchvision_without_downloads
from adapters.models.offline_patch import patched, prints_to_stderr
from tests.tiny_llama import radllama_folder

QUESTIONS = [Question("v.nii.gz::0", "Is the lesion in the left or the right lung?"),
             Question("v.nii.gz::1", "Which lobe contains the nodule?")]


def build_checkpoint(ckpt: Path) -> None:
    import merlin.models.radiology_report_generation as rrg

    radllama = radllama_folder(ckpt / "RadLLaMA-7b")
    torch.manual_seed(0)
    with prints_to_stderr(), patched(rrg, torchvision=_torchvision_without_downloads(),
                                     AutoTokenizer=_LocalRadLLaMA(radllama, "tokenizer"),
                                     AutoModelForCausalLM=_LocalRadLLaMA(radllama, "model")):
        model = rrg.Clip3DForTextGeneration()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():               # weights unlike a fresh build, so the load visibly matters
        for name, p in model.named_parameters():
            if "decode_text" in name or "adapter" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    torch.save(model.state_dict(), ckpt / CHECKPOINTS["report_generation"])
    # the 0.0.6 checkpoint name, for the harness variant: same weights, same structure
    os.link(ckpt / CHECKPOINTS["report_generation"], ckpt / CHECKPOINTS["report_generation_stage1_stage2"])


def observe(model) -> dict:
    """Hooks on the real modules: what reaches the image encoder, the tokenizer and HF generate."""
    seen: dict = {"encoder": [], "prompts": [], "generate": []}

    def on_encode(module, args):
        image = args[0]
        grey = image[0, 0].float()
        bright = (grey >= grey.max() - 0.05 * (grey.max() - grey.min())).float()
        seen["encoder"].append({"shape": list(image.shape), "dtype": str(image.dtype), "min": float(image.min()),
                                "max": float(image.max()), "bright_axis0": bright.sum(dim=(1, 2)).tolist()})
    model.encode_image.register_forward_pre_hook(on_encode)

    tokenizer = model.decode_text.tokenizer
    real_call = type(tokenizer).__call__

    class Recording(type(tokenizer)):
        def __call__(self, text, *args, **kwargs):
            seen["prompts"].append(text)
            return real_call(self, text, *args, **kwargs)
    tokenizer.__class__ = Recording

    decoder = model.decode_text.text_decoder
    real_generate = decoder.generate

    def generate(*args, **kwargs):
        out = real_generate(*args, **kwargs)
        seen["generate"].append({
            "kwargs": {k: (v if isinstance(v, (int, float, bool, str, type(None))) else type(v).__name__)
                       for k, v in kwargs.items() if k != "inputs_embeds"},
            "inputs_embeds": list(kwargs["inputs_embeds"].shape), "output": out.tolist()})
        return out
    decoder.generate = generate
    return seen


def run(settings: AdapterSettings, model_input: ModelInput) -> dict:
    adapter = Merlin(settings)
    t0 = time.perf_counter()
    adapter.load()
    load_seconds = time.perf_counter() - t0
    seen = observe(adapter.model)
    answers = adapter.answer(model_input, QUESTIONS)
    result = {"answers": [a.__dict__ for a in answers], "seen": seen, "load_seconds": load_seconds,
              "provenance": adapter.provenance(), "generation": adapter.generation()}
    # the same question through the package's own one-call API gives the same text
    image = adapter.image(model_input)
    [prompt] = seen["prompts"][0]
    with prints_to_stderr():
        [direct] = adapter.model.generate(image, [prompt], **adapter.generate_kwargs())
    result["direct"] = direct
    tokenizer = adapter.model.decode_text.tokenizer
    result["prompt_ids"] = tokenizer(prompt)["input_ids"]
    result["decoded_outputs"] = [tokenizer.decode(g["output"][0], skip_special_tokens=True) for g in seen["generate"]]
    adapter.close()
    return result


def main() -> None:
    work, npy, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    torch.set_num_threads(1)
    ckpt = work / "ckpt"
    ckpt.mkdir(parents=True, exist_ok=True)
    build_checkpoint(ckpt)
    arr = np.load(npy)
    results = {}
    for variant, recipe in (("official", "merlin"), ("upstream-harness", "merlin-upstream-harness")):
        model_input = ModelInput("v.nii.gz", recipe, "1", npy, arr.shape, str(arr.dtype), "axis 1, low index")
        tiny_stop = radllama_tokenizer_id(ckpt / "RadLLaMA-7b", "###")
        options = {"variant": variant, **({} if variant == "upstream-harness" else {"stop_token_id": tiny_stop})}
        results[variant] = run(AdapterSettings(checkpoint=str(ckpt), options=options), model_input)
    results["stop_token_id"] = tiny_stop
    out.write_text(json.dumps(results, default=str))


def radllama_tokenizer_id(folder: Path, token: str) -> int:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder)).convert_tokens_to_ids(token)


if __name__ == "__main__":
    main()
