import pytest
import torch

from flux_ui.core.policies import resolve_profile
from flux_ui.models.speed import Float8RowwiseLinear, quantize_fp8


def test_cpu_runs_plain_diffusers():
    assert resolve_profile("auto", "cpu") == "off"
    assert resolve_profile("off", "cpu") == "off"


def test_gpu_profiles_on_cpu_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="speed: profile 'fp8' needs a CUDA GPU; use 'off'"):
        resolve_profile("fp8", "cpu")
    with pytest.raises(ValueError, match="choose one of: auto, off, compile, fp8"):
        resolve_profile("turbo", "cuda")


def test_float8_linear_is_close_to_bf16():
    torch.manual_seed(0)
    linear = torch.nn.Linear(1024, 2048).to(torch.bfloat16)
    x = torch.randn(3, 40, 1024, dtype=torch.bfloat16)
    ref = linear(x).float()
    out = Float8RowwiseLinear.from_linear(linear)(x)
    assert out.shape == ref.shape and out.dtype == torch.bfloat16
    err = float((out.float() - ref).norm() / ref.norm())
    assert 0 < err < 0.06  # e4m3 keeps 3 mantissa bits: a few percent per product, never exact


def test_quantize_replaces_only_large_linear_layers():
    model = torch.nn.Sequential(torch.nn.Linear(1024, 1024), torch.nn.Linear(1024, 64), torch.nn.GELU())
    assert quantize_fp8(model) == 1
    assert isinstance(model[0], Float8RowwiseLinear) and isinstance(model[1], torch.nn.Linear)
    assert model[0].weight_fp8.dtype == torch.float8_e4m3fn
