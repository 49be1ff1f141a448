#!/usr/bin/env python3
"""Where MedGemma's per-volume prefill goes on one GPU, and what each lever gives, in one run.

The product path (bench/gpu_inference.py (b)) is prefill-bound: per volume the vision tower on 85
slices of 896 px and the 22.5k-token language-model prefill. This script times, on the full-size
random-weight model and one harness-shaped volume:

- the pixels' host-to-device copy: float32 pageable (the processor's output) vs bf16 pinned;
- the vision tower: eager per SDPA backend, compiled (the product), compiled with each backend,
  compiled with FP8 linears (rowwise scales, torch._scaled_mm), each with its relative error
  against eager bf16;
- the whole prefix forward (vision + language model, flex prefill): as the product runs it, with
  the language model's layers compiled, and with FP8 language-model linears;
- a kernel profile of the product's prefix forward, summed by kernel class, with the copies by
  the op that made them (their shapes);
- one volume's CPU-side preparation in a producer thread, alone and while the main thread runs
  prefix forwards (is the producer starved of the GIL?).

Every time is the median of --repeats runs after a warm-up, measured with a device sync. The table
of its one H200 run is in the README ("Benchmarks"); the FP8 vision row failed there on a module
path (since fixed, not run again).

    python bench/gpu_prefill_levers.py --size tiny --device cpu     # this machine: the code paths
    python bench/gpu_prefill_levers.py                              # one H200
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.models.base import AdapterSettings, Question  # noqa: E402
from bench.common import median_s  # noqa: E402
from adapters.models.vision_fusion import fuse_gelu  # noqa: E402
from bench.gpu_inference import QUESTIONS, build, log, sync, synthetic_inputs  # noqa: E402

RESULTS: dict = {"vision": [], "prefix": [], "h2d": {}, "profile": {}}


def timed(fn, dev, repeats: int) -> tuple[float, object]:
    """Median seconds of `repeats` calls after a warm-up (compiles), each ended by a device sync."""
    def synced():
        out = fn()
        sync(dev)
        return out

    synced()
    return median_s(synced, repeats)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


class FP8Linear(nn.Module):
    """y = x W^T + b with W and x in float8_e4m3fn, scaled per output channel and per token."""

    def __init__(self, lin: nn.Linear):
        super().__init__()
        w = lin.weight.detach().float()
        sw = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 448.0
        self.register_buffer("w8", (w / sw).to(torch.float8_e4m3fn))      # (out, in)
        self.register_buffer("sw", sw.t().contiguous())                    # (1, out)
        self.bias = lin.bias
        self.out_features = lin.out_features

    def forward(self, x):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        sx = x2.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / 448.0
        x8 = (x2.float() / sx).to(torch.float8_e4m3fn)
        y = torch._scaled_mm(x8, self.w8.t(), scale_a=sx, scale_b=self.sw, bias=self.bias, out_dtype=x.dtype)
        return y.reshape(*shape[:-1], self.out_features)


def to_fp8(module: nn.Module, skip=("lm_head", "embed")) -> int:
    n = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear) and not any(s in name for s in skip) \
                and child.in_features % 16 == 0 and child.out_features % 16 == 0:
            setattr(module, name, FP8Linear(child))
            n += 1
        else:
            n += to_fp8(child, skip)
    return n


KERNEL_CLASSES = [
    ("attention", r"flash|fmha|cudnn|attention|flex|triton_tem"),
    ("gemm", r"gemm|cutlass|xmma|nvjet|sm90_|_mm_|matmul|scaled_mm"),
    ("fused (inductor)", r"^triton_"),
    ("copy", r"copy|memcpy|memset|cat|index"),
]


def profile(fn, dev) -> dict:
    from torch.profiler import ProfilerActivity, profile as prof

    sync(dev)
    t = time.perf_counter()
    with prof(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as p:
        fn()
        sync(dev)
    wall = time.perf_counter() - t
    # which copies the kernels' "copy" class comes from (inside an extern op they are aten calls)
    copies = sorted(((e.key, str(e.input_shapes)[:160], round(e.device_time_total / 1e6, 4), e.count)
                     for e in p.key_averages(group_by_input_shape=True)
                     if e.key in ("aten::copy_", "aten::contiguous", "aten::clone", "aten::_to_copy")
                     and e.device_time_total > 0), key=lambda c: -c[2])[:8]
    kernels: dict[str, float] = {}
    for e in p.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            kernels[e.name] = kernels.get(e.name, 0.0) + e.device_time_total / 1e6
    classes: dict[str, float] = {}
    for name, s in kernels.items():
        label = next((c for c, pat in KERNEL_CLASSES if re.search(pat, name, re.I)), "other elementwise")
        classes[label] = classes.get(label, 0.0) + s
    top = sorted(kernels.items(), key=lambda kv: -kv[1])[:25]
    return {"wall_s_profiled": wall, "kernel_s": sum(kernels.values()), "classes": classes,
            "top": [(n[:110], round(s, 4)) for n, s in top], "copies_by_op": copies}


def producer_probe(adapter, mi, qs, prefill, dev, n: int = 3) -> dict:
    """One volume's preparation (`prepare_job`, what the engine's producer threads run) in a thread
    of its own: alone, and while this thread runs prefix forwards back to back with a sync after
    each, as the engine does. A large gap means the producer is starved of the GIL by the thread
    that launches the GPU work (the engine waited 3 to 5 s per 24-32 volumes for volumes whose
    preparation takes 0.17 s alone)."""
    import threading

    def prepare_n() -> list[float]:
        out = []
        for _ in range(n):
            t = time.perf_counter()
            enc = adapter.prepare_job(mi, qs)
            if getattr(enc, "ready", None) is not None:
                enc.ready.synchronize()
            out.append(time.perf_counter() - t)
        return out

    alone = prepare_n()
    busy: dict = {}
    thread = threading.Thread(target=lambda: busy.setdefault("s", prepare_n()))
    thread.start()
    forwards = 0
    while thread.is_alive():
        prefill()
        sync(dev)
        forwards += 1
    thread.join()
    return {"alone_s": statistics.median(alone), "while_prefilling_s": statistics.median(busy["s"]),
            "prefix_forwards_meanwhile": forwards}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=["tiny", "full"], default="full")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip", default="",
                    help="comma-separated sections to skip: vision (all of it), vision-variants (the SDPA "
                         "backends, eager and compiled), fusion, prefix, producer, llm-compile, fp8")
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    torch.set_grad_enabled(False)
    torch._dynamo.config.cache_size_limit = 256
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save():
        (out / f"gpu_prefill_levers_{args.size}.json").write_text(json.dumps(RESULTS, indent=1, default=str))

    import transformers
    from transformers import DynamicCache

    log(f"torch {torch.__version__} transformers {transformers.__version__} {dev} "
        f"{torch.cuda.get_device_name(dev) if cuda else ''}")
    cls, model, processor = build("medgemma", args.size, dev, dtype)
    adapter = cls(AdapterSettings(device=str(dev), dtype="bfloat16" if cuda else "float32",
                                  options={"variant": "upstream-harness"}))
    adapter.model, adapter.processor = model, processor
    side = 896 if args.size == "full" else 56
    mi = synthetic_inputs(adapter.recipe, 1, 85, side)[0]
    qs = [Question(f"q{i}", t) for i, t in enumerate(QUESTIONS)]
    t = time.perf_counter()
    enc = adapter.encode(mi, qs)
    log(f"encode (processor, CPU, one thread) {time.perf_counter() - t:.2f}s; prefix {enc.prefix_len} tokens")
    px_cpu = enc.prefix["pixel_values"]

    # -- host to device ---------------------------------------------------------------------------
    s_fp32, _ = timed(lambda: px_cpu.to(dev, dtype), dev, args.repeats)
    t = time.perf_counter()
    px_pinned = px_cpu.to(dtype).pin_memory() if cuda else px_cpu.to(dtype)
    s_prep = time.perf_counter() - t
    s_pin, _ = timed(lambda: px_pinned.to(dev, non_blocking=True), dev, args.repeats)
    RESULTS["h2d"] = {"float32_pageable_s": s_fp32, "bf16_pinned_s": s_pin, "cpu_convert_and_pin_s": s_prep,
                      "bytes_float32": px_cpu.numel() * 4}
    log(f"H2D pixels: float32 pageable {s_fp32 * 1e3:.0f} ms; bf16 pinned {s_pin * 1e3:.0f} ms "
        f"(convert + pin on the CPU {s_prep * 1e3:.0f} ms)")
    save()

    prefix = {k: (v.to(dev, dtype) if v.is_floating_point() else v.to(dev)) for k, v in enc.prefix.items()}
    px = prefix["pixel_values"]
    inner = model.model
    vt = inner.vision_tower
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {"auto": None}
    if cuda:
        backends.update(cudnn=SDPBackend.CUDNN_ATTENTION, flash=SDPBackend.FLASH_ATTENTION)

    def run_vt(module, backend=None):
        def fn():
            if backend is None:
                return module(pixel_values=px).last_hidden_state
            with sdpa_kernel(backend):
                return module(pixel_values=px).last_hidden_state
        return fn

    # -- vision ---------------------------------------------------------------------------------------
    ref = None
    if "vision" not in skip:
        rows = []
        for name, be in ({} if "vision-variants" in skip else backends).items():
            try:
                s, o = timed(run_vt(vt, be), dev, args.repeats)
                if ref is None:
                    ref = o.float()
                rows.append({"variant": f"eager, sdpa {name}", "s": s, "rel_err": rel(o, ref)})
            except Exception as exc:  # noqa: BLE001
                rows.append({"variant": f"eager, sdpa {name}", "error": f"{type(exc).__name__}: {exc}"[:300]})
            log(rows[-1])
        for name, be in ({} if "vision-variants" in skip else backends).items():
            torch._dynamo.reset()
            try:
                t = time.perf_counter()
                compiled = torch.compile(vt)
                s, o = timed(run_vt(compiled, be), dev, args.repeats)
                rows.append({"variant": f"compiled, sdpa {name}", "s": s, "rel_err": rel(o, ref),
                             "first_call_s": time.perf_counter() - t - s * args.repeats})
            except Exception as exc:  # noqa: BLE001
                rows.append({"variant": f"compiled, sdpa {name}", "error": f"{type(exc).__name__}: {exc}"[:300]})
            log(rows[-1])
        if cuda and "fp8" not in skip and "vision-variants" not in skip:
            torch._dynamo.reset()
            try:
                vt8 = copy.deepcopy(vt)
                encoder = next(m for name, m in vt8.named_modules() if name.endswith("encoder"))
                n = to_fp8(encoder)
                compiled = torch.compile(vt8)
                s, o = timed(run_vt(compiled), dev, args.repeats)
                rows.append({"variant": f"compiled, FP8 linears ({n})", "s": s, "rel_err": rel(o, ref)})
                del vt8, compiled
            except Exception as exc:  # noqa: BLE001
                rows.append({"variant": "compiled, FP8 linears", "error": f"{type(exc).__name__}: {exc}"[:300]})
            log(rows[-1])
        torch._dynamo.reset()
        compiled = torch.compile(vt)
        s, o = timed(run_vt(compiled), dev, args.repeats)
        base = o.float()
        rows.append({"variant": "compiled", "s": s, "rel_err": rel(o, ref) if ref is not None else 0.0})
        log(rows[-1])
        RESULTS["profile"]["vision_compiled"] = profile(run_vt(compiled), dev)
        log("vision profile", json.dumps(RESULTS["profile"]["vision_compiled"], indent=1))
        save()
        if "fusion" not in skip:
            if cuda:        # which GELU cuBLASLt's epilogue computes (the fused op relies on tanh)
                a, w, b = (torch.randn(256, 512, device=dev), torch.randn(384, 512, device=dev), torch.randn(384, device=dev))
                fused = torch._addmm_activation(b, a, w.t(), use_gelu=True)
                lin = torch.nn.functional.linear(a, w, b)
                RESULTS["gelu_epilogue"] = {
                    "vs_tanh": (fused - torch.nn.functional.gelu(lin, approximate="tanh")).abs().max().item(),
                    "vs_erf": (fused - torch.nn.functional.gelu(lin)).abs().max().item()}
                log("cuBLASLt GELU epilogue, max abs difference:", RESULTS["gelu_epilogue"])
            for label in ("+ fused GELU (the product)",):
                torch._dynamo.reset()
                try:
                    vtx = copy.deepcopy(vt)
                    n = fuse_gelu(vtx)
                    compiled_x = torch.compile(vtx)
                    s, o = timed(run_vt(compiled_x), dev, args.repeats)
                    prof = profile(run_vt(compiled_x), dev)
                    rows.append({"variant": f"compiled {label} ({n} MLPs)", "s": s, "rel_err": rel(o, base),
                                 "classes": prof["classes"], "copies_by_op": prof["copies_by_op"]})
                    del vtx, compiled_x
                except Exception as exc:  # noqa: BLE001
                    rows.append({"variant": f"compiled {label}", "error": f"{type(exc).__name__}: {exc}"[:300]})
                log(rows[-1])
                save()
        RESULTS["vision"] = rows
        save()

    # -- the prefix forward ------------------------------------------------------------------------
    if "prefix" in skip:
        return
    torch._dynamo.reset()
    adapter.settings.options["prefill_attention"] = "flex_attention" if cuda else "sdpa"
    adapter.settings.options["compile_vision"] = cuda
    adapter.prepare_model()                    # what the product does: flex prefill, compiled vision tower
    text_config = model.config.get_text_config()

    def prefix_forward():
        cache = DynamicCache(config=text_config)
        model(**prefix, cache=cache, use_cache=True, logits_to_keep=1)
        return cache

    def last_keys(cache):
        return cache.layers[-1].keys

    rows = []
    t = time.perf_counter()
    s0, c0 = timed(prefix_forward, dev, args.repeats)
    ref_k = last_keys(c0).float()
    rows.append({"variant": "product (compiled vision, flex prefill)", "s": s0, "first_s": time.perf_counter() - t})
    log(rows[-1])
    RESULTS["profile"]["prefix_product"] = profile(prefix_forward, dev)
    log("prefix profile", json.dumps(RESULTS["profile"]["prefix_product"], indent=1))
    save()
    if "producer" not in skip:
        RESULTS["producer"] = {}
        for where in (("cpu", "gpu") if cuda else ("cpu",)):
            adapter.settings.options["image_device"] = where
            RESULTS["producer"][where] = producer_probe(adapter, mi, qs, prefix_forward, dev)
            log(f"producer, image processor on the {where}: {RESULTS['producer'][where]}")
        adapter.settings.options.pop("image_device")
        save()
    lm = inner.language_model
    if "llm-compile" not in skip:
        originals = {}
        try:
            for i, layer in enumerate(lm.layers):
                originals[i] = (layer.mlp, layer.input_layernorm, layer.post_attention_layernorm,
                                layer.pre_feedforward_layernorm, layer.post_feedforward_layernorm)
                layer.mlp = torch.compile(layer.mlp)
                for nm in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                           "post_feedforward_layernorm"):
                    setattr(layer, nm, torch.compile(getattr(layer, nm)))
            s, c = timed(prefix_forward, dev, args.repeats)
            rows.append({"variant": "+ compiled MLP and norms", "s": s, "last_keys_rel_err": rel(last_keys(c), ref_k)})
        except Exception as exc:  # noqa: BLE001
            rows.append({"variant": "+ compiled MLP and norms", "error": f"{type(exc).__name__}: {exc}"[:300]})
        finally:
            for i, mods in originals.items():
                layer = lm.layers[i]
                (layer.mlp, layer.input_layernorm, layer.post_attention_layernorm, layer.pre_feedforward_layernorm,
                 layer.post_feedforward_layernorm) = mods
        log(rows[-1])
        forwards = {}
        try:
            for i, layer in enumerate(lm.layers):
                forwards[i] = layer.forward
                layer.forward = torch.compile(layer.forward)
            s, c = timed(prefix_forward, dev, args.repeats)
            rows.append({"variant": "+ compiled decoder layers", "s": s, "last_keys_rel_err": rel(last_keys(c), ref_k)})
        except Exception as exc:  # noqa: BLE001
            rows.append({"variant": "+ compiled decoder layers", "error": f"{type(exc).__name__}: {exc}"[:300]})
        log(rows[-1])
        RESULTS["prefix"] = rows
        save()
        if cuda and "fp8" not in skip:
            try:
                n = to_fp8(lm)
                s, c = timed(prefix_forward, dev, args.repeats)
                rows.append({"variant": f"+ compiled decoder layers, FP8 LM linears ({n})", "s": s,
                             "last_keys_rel_err": rel(last_keys(c), ref_k)})
            except Exception as exc:  # noqa: BLE001
                rows.append({"variant": "+ FP8 LM linears", "error": f"{type(exc).__name__}: {exc}"[:300]})
            log(rows[-1])
        for i, f in forwards.items():
            lm.layers[i].forward = f
    RESULTS["prefix"] = rows
    save()
    print()
    print("| part | variant | s | rel. error | x product |")
    print("|---|---|---|---|---|")
    vis = {r["variant"]: r for r in RESULTS["vision"]}
    base_v = vis.get("compiled", {}).get("s")
    for r in RESULTS["vision"]:
        print(f"| vision | {r['variant']} | {r.get('s', float('nan')):.3f} | {r.get('rel_err', float('nan')):.1e} | "
              f"{(base_v or float('nan')) / r.get('s', float('nan')):.2f} |" if "s" in r else
              f"| vision | {r['variant']} | error: {r['error'][:80]} | | |")
    for r in rows:
        print(f"| prefix | {r['variant']} | {r['s']:.3f} | {r.get('last_keys_rel_err', 0):.1e} | {s0 / r['s']:.2f} |"
              if "s" in r else f"| prefix | {r['variant']} | error: {r['error'][:80]} | | |")
    h = RESULTS["h2d"]
    print(f"| pixels H2D | float32 pageable / bf16 pinned | {h['float32_pageable_s']:.3f} / {h['bf16_pinned_s']:.3f} | | "
          f"{h['float32_pageable_s'] / max(h['bf16_pinned_s'], 1e-9):.1f} |")


if __name__ == "__main__":
    main()
