"""GPU: the zoo on the fused backend matches the reference backend (fp32 tight, bf16 loose)."""

from __future__ import annotations

import pytest
import timm
import torch

import classification  # noqa: F401  (registers the models)
import natten_ext

pytestmark = pytest.mark.gpu

CASES = [
    ("nat_small", (224, 224)),  # layer scale
    ("dinat_mini", (224, 224)),
    ("dinat_mini", (160, 192)),  # maps smaller than k*d: padded inside the modules
    ("dinat_s_tiny", (224, 224)),
    ("dinat_isotropic_small", (224, 224)),
    ("dinat_large_384", (384, 384)),
]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name).cuda().eval()


def _run(model, x, backend: str, dtype: torch.dtype | None = None):
    autocast = torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None)
    with natten_ext.use_backend(backend), torch.no_grad(), autocast:
        return model(x)


@pytest.mark.parametrize("name, size", CASES)
def test_fused_equals_reference_fp32(name, size):
    if "triton" not in natten_ext.available_backends():
        pytest.skip("the fused (triton) backend is not available")
    model = _model(name)
    x = torch.randn(2, 3, *size, device="cuda")
    ref = _run(model, x, "reference")
    out = _run(model, x, "triton")
    assert rel_err(out, ref) < 1e-4
    assert torch.equal(out.argmax(-1), ref.argmax(-1))


@pytest.mark.parametrize("name, size", CASES)
def test_fused_bf16_within_tolerance(name, size):
    if "triton" not in natten_ext.available_backends():
        pytest.skip("the fused (triton) backend is not available")
    model = _model(name)
    x = torch.randn(2, 3, *size, device="cuda")
    ref32 = _run(model, x, "reference")
    ref16 = _run(model, x, "reference", torch.bfloat16)
    out16 = _run(model, x, "triton", torch.bfloat16)
    assert rel_err(out16, ref16) < 2e-2
    assert rel_err(out16, ref32) < 5e-2


@pytest.mark.parametrize("name", ["dinat_mini", "dinat_s_tiny"])
def test_fused_gradients_match_reference(name):
    if "triton" not in natten_ext.available_backends():
        pytest.skip("the fused (triton) backend is not available")
    model = _model(name).train()
    x = torch.randn(2, 3, 224, 224, device="cuda")

    def grads(backend: str) -> dict[str, torch.Tensor]:
        model.zero_grad()
        torch.manual_seed(1)  # same drop-path draws
        with natten_ext.use_backend(backend):
            model(x).square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    ref, out = grads("reference"), grads("triton")
    for n in ref:
        assert rel_err(out[n], ref[n]) < 1e-3, n
