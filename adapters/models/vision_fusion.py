"""The vision tower's MLP with its GELU fused into the first GEMM (MedGemma's SigLIP: 27 layers over
85 x 4,096 patches per volume, the largest part of its GPU time).

Compiled, the tower ran the first linear as a cuBLAS GEMM, then a copy and a GELU kernel over its
3 GB output (per 85-slice volume and layer). One cuBLASLt call with the GELU in its epilogue writes
it once: on one H200 the compiled tower went from 1.170 to 1.087 s per volume, its copies from 0.077
s to none (bench/gpu_prefill_levers.py). It computes the same tanh GELU (5e-6 from
`gelu(approximate="tanh")` in float32 there); in bf16 the features move as much as compiling does,
so the adapter records it in its generation settings.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


@torch.library.custom_op("ctsvqa::linear_gelu_tanh", mutates_args=())
def linear_gelu_tanh(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """gelu_tanh(x @ weight.T + bias); on CUDA one cuBLASLt GEMM with the GELU in its epilogue.
    A custom op so torch.compile keeps it whole instead of splitting it into a GEMM and a kernel."""
    flat = x.reshape(-1, x.shape[-1])
    if x.is_cuda:
        out = torch._addmm_activation(bias, flat, weight.t(), use_gelu=True)   # tanh GELU on CUDA
    else:                                                                       # (the CPU kernel's is erf)
        out = F.gelu(F.linear(flat, weight, bias), approximate="tanh")
    return out.view(*x.shape[:-1], weight.shape[0])


@linear_gelu_tanh.register_fake
def _(x, weight, bias):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def _is_gelu_tanh(act) -> bool:
    from transformers import activations

    kinds = tuple(k for k in (getattr(activations, n, None) for n in ("GELUTanh", "PytorchGELUTanh")) if k)
    return isinstance(act, kinds) or (
        isinstance(act, nn.GELU) and act.approximate == "tanh")


_FUSED = "_ctsvqa_fused_gelu"          # marks the MLPs whose forward this module set


def fuse_gelu(tower: nn.Module) -> int:
    """Give every fc1 -> tanh GELU -> fc2 MLP the fused first half (those fused already stay as they
    are; a forward set by someone else is left alone); returns how many are fused."""
    for module in tower.modules():
        fc1, fc2 = getattr(module, "fc1", None), getattr(module, "fc2", None)
        if "forward" in module.__dict__ or not (
                isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear) and fc1.bias is not None
                and _is_gelu_tanh(getattr(module, "activation_fn", None))):
            continue

        def forward(hidden_states, _m=module):
            return _m.fc2(linear_gelu_tanh(hidden_states, _m.fc1.weight, _m.fc1.bias))

        module.__dict__["forward"] = forward
        module.__dict__[_FUSED] = True
    return fused(tower)


def fused(tower: nn.Module) -> int:
    return sum(1 for m in tower.modules() if m.__dict__.get(_FUSED))


def unfuse(tower: nn.Module) -> None:
    """Back to the model's own MLP forwards."""
    for module in tower.modules():
        if module.__dict__.pop(_FUSED, False):
            module.__dict__.pop("forward", None)
