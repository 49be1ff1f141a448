"""The vision MLP's fused linear + tanh GELU (adapters/models/vision_fusion.py) on CPU: the same
numbers as the module it replaces, and kept whole by torch.compile (what lets CUDA run it as one
cuBLASLt GEMM with a GELU epilogue)."""

from __future__ import annotations

import copy

import pytest
import torch

from adapters.models.vision_fusion import fuse_gelu, fused, linear_gelu_tanh, unfuse

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def tower(act: str = "gelu_pytorch_tanh"):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    cfg = SiglipVisionConfig(hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=2,
                             image_size=28, patch_size=14, hidden_act=act, vision_use_head=False)
    return SiglipVisionModel(cfg).eval()


def test_fused_tower_gives_the_same_features_and_unfuses():
    model = tower()
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        ref = model(pixel_values=x).last_hidden_state
        fused_model = copy.deepcopy(model)
        assert fuse_gelu(fused_model) == 2 and fused(fused_model) == 2
        forwards = [m.__dict__["forward"] for m in fused_model.modules() if "forward" in m.__dict__]
        assert fuse_gelu(fused_model) == 2                     # again: the fused MLPs stay as they are
        assert [m.__dict__["forward"] for m in fused_model.modules() if "forward" in m.__dict__] == forwards
        torch.testing.assert_close(fused_model(pixel_values=x).last_hidden_state, ref, rtol=1e-5, atol=1e-5)
        unfuse(fused_model)
        assert fused(fused_model) == 0
        assert all("forward" not in m.__dict__ for m in fused_model.modules())


def test_only_tanh_gelu_mlps_are_fused():
    """An erf GELU is a different function: fusing it into the tanh op would change the features."""
    assert fuse_gelu(tower("gelu")) == 0


def test_compile_keeps_the_fused_op_whole():
    from torch._inductor.utils import run_and_get_code

    w, b, x = torch.randn(24, 16), torch.randn(24), torch.randn(3, 5, 16)
    out, code = run_and_get_code(torch.compile(linear_gelu_tanh), x, w, b)
    torch.testing.assert_close(out, torch.nn.functional.gelu(x @ w.T + b, approximate="tanh"))
    assert "linear_gelu_tanh" in "\n".join(code)
