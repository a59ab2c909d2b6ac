"""The Triton LayerNorm (``classification.layers.norm``) against float64 ``F.layer_norm``.

On a CPU-only machine the kernels run under Triton's interpreter in a subprocess
(``TRITON_INTERPRET`` must be set before triton is imported); ``FastLayerNorm`` itself must be
exactly ``nn.LayerNorm`` there, scriptable and FX-traceable. GPU tests (marked ``gpu``) run the
real kernels in every dtype and under autocast.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from interpreter import run_under_interpreter

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from classification.layers.norm import FastLayerNorm  # noqa: E402

TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def check_case(
    shape: tuple[int, ...],
    dtype: torch.dtype,
    device: str,
    seed: int,
    out_dtype: torch.dtype | None = None,
    affine: bool = True,
    param_dtype: torch.dtype | None = None,
    eps: float = 1e-5,
) -> dict[str, float]:
    """Relative errors of y, dx, dweight, dbias of ``fast_layer_norm`` vs float64 reference."""
    from classification.layers.norm import fast_layer_norm

    gen = torch.Generator().manual_seed(seed)
    n = shape[-1]
    x = (torch.randn(shape, generator=gen) * 2 + 0.5).to(dtype)
    dy = torch.randn(shape, generator=gen)
    weight = bias = None
    if affine:
        weight = (1 + 0.5 * torch.randn(n, generator=gen)).to(param_dtype or dtype)
        bias = (0.3 * torch.randn(n, generator=gen)).to(param_dtype or dtype)
    out_dtype = out_dtype or dtype
    dy = dy.to(out_dtype)

    leaves = [t.to(device).requires_grad_() for t in (x, weight, bias) if t is not None]
    xd, wd, bd = [*leaves, None, None][:3]
    y = fast_layer_norm(xd, (n,), wd, bd, eps, out_dtype=out_dtype)
    assert y.dtype == out_dtype and y.shape == x.shape and y.device.type == device
    grads = torch.autograd.grad(y, leaves, dy.to(device))
    assert grads[0].dtype == dtype
    if affine:
        assert grads[1].dtype == weight.dtype and grads[2].dtype == bias.dtype

    ref_leaves = [t.double().requires_grad_() for t in (x, weight, bias) if t is not None]
    xr, wr, br = [*ref_leaves, None, None][:3]
    yr = F.layer_norm(xr, (n,), wr, br, eps)
    ref_grads = torch.autograd.grad(yr, ref_leaves, dy.double())
    errors = {"y": _rel(y, yr)}
    for name, g, gr in zip(("dx", "dweight", "dbias"), grads, ref_grads):
        errors[name] = _rel(g, gr)
    return errors


# ---------------------------------------------------------------------------------------------
# CPU: the kernels under Triton's interpreter (small cases, in a subprocess).
# ---------------------------------------------------------------------------------------------
INTERPRETER_CASES = [
    # (shape, dtype, out_dtype, affine); N = 40 is no power of two, rows not a multiple of ROWS
    ((3, 5, 7, 40), torch.float32, None, True),
    ((2, 9, 64), torch.float32, None, True),
    ((3, 5, 7, 40), torch.float32, None, False),
    ((2, 9, 64), torch.bfloat16, None, True),
    ((3, 5, 7, 40), torch.bfloat16, None, False),
    ((2, 9, 64), torch.float32, torch.bfloat16, True),
    ((5, 3, 200), torch.float16, None, True),
    ((7, 33), torch.float32, None, True),  # 7 rows < ROWS; many programs loop in backward
    ((1100, 16), torch.float32, None, True),
]


def _interpreter_main() -> None:
    failures = []
    for i, (shape, dtype, out_dtype, affine) in enumerate(INTERPRETER_CASES):
        errors = check_case(shape, dtype, "cpu", seed=i, out_dtype=out_dtype, affine=affine)
        tol = max(TOLERANCE[dtype], TOLERANCE[out_dtype or dtype])
        print(shape, dtype, out_dtype, affine, {n: f"{e:.2e}" for n, e in errors.items()})
        if not max(errors.values()) < tol:
            failures.append((shape, dtype, out_dtype, affine, errors))
    # bf16 input with fp32 parameters (mixed dtypes, as under autocast)
    errors = check_case((4, 6, 48), torch.bfloat16, "cpu", seed=50, param_dtype=torch.float32)
    print("bf16 x / fp32 params", errors)
    if not max(errors.values()) < TOLERANCE[torch.bfloat16]:
        failures.append(("bf16 x / fp32 params", errors))
    if failures:
        raise SystemExit(f"FAILED: {failures}")
    print("INTERPRETER OK", flush=True)


def test_kernels_under_triton_interpreter():
    run_under_interpreter(__file__, timeout=600)


# ---------------------------------------------------------------------------------------------
# CPU: FastLayerNorm is nn.LayerNorm, scriptable and traceable.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("affine", [True, False])
def test_cpu_equals_nn_layernorm(affine):
    torch.manual_seed(0)
    ref = torch.nn.LayerNorm(40, eps=1e-6, elementwise_affine=affine)
    fast = FastLayerNorm(40, eps=1e-6, elementwise_affine=affine)
    assert list(fast.state_dict()) == list(ref.state_dict())
    if affine:
        with torch.no_grad():
            ref.weight.normal_()
            ref.bias.normal_()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(3, 5, 40, requires_grad=True)
    y, yr = fast(x), ref(x)
    assert torch.equal(y, yr)
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    (gxr,) = torch.autograd.grad(yr, x, g)
    assert torch.equal(gx, gxr)
    xb = x.detach().bfloat16()
    assert torch.equal(fast(xb), ref(xb))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(fast(x), ref(x))


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = FastLayerNorm(32)
        self.fc = torch.nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x))


def test_torchscript_and_fx():
    torch.manual_seed(0)
    model = _Block().eval()
    x = torch.randn(2, 7, 32)
    expected = model(x)
    scripted = torch.jit.script(model)
    assert torch.equal(scripted(x), expected)
    scripted_norm = torch.jit.script(FastLayerNorm(32))
    assert torch.equal(scripted_norm(x), torch.nn.LayerNorm(32)(x))
    traced = torch.fx.symbolic_trace(model)
    assert torch.equal(traced(x), expected)
    assert any(n.target is F.layer_norm for n in traced.graph.nodes)
    jit_traced = torch.jit.trace(model, (x,))
    assert torch.equal(jit_traced(x), expected)


# ---------------------------------------------------------------------------------------------
# GPU: the real kernels in every dtype, under autocast, and the module's dispatch.
# ---------------------------------------------------------------------------------------------
GPU_SHAPES = [(2, 56, 56, 64), (4, 28, 28, 128), (3, 14, 14, 320), (37, 512), (9, 7, 1000)]
GPU_SHAPES += [(5, 2048), (3, 4096), (11, 16), (1, 24), (8, 768)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=str)
def test_kernels_gpu(shape, dtype):
    errors = check_case(shape, dtype, "cuda", seed=sum(shape))
    assert max(errors.values()) < TOLERANCE[dtype], errors


@pytest.mark.gpu
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", [(2, 56, 56, 64), (6, 7, 7, 768), (13, 96)], ids=str)
def test_kernels_gpu_half_out_and_no_affine(shape, out_dtype):
    errors = check_case(shape, torch.float32, "cuda", seed=1, out_dtype=out_dtype)
    assert max(errors.values()) < TOLERANCE[out_dtype], errors
    errors = check_case(shape, torch.bfloat16, "cuda", seed=2, param_dtype=torch.float32)
    assert max(errors.values()) < TOLERANCE[torch.bfloat16], errors
    errors = check_case(shape, torch.float16, "cuda", seed=3, affine=False)
    assert max(errors.values()) < TOLERANCE[torch.float16], errors


def _module_pair(n: int) -> tuple[torch.nn.LayerNorm, FastLayerNorm]:
    ref = torch.nn.LayerNorm(n).cuda()
    with torch.no_grad():
        ref.weight.normal_(1.0, 0.3)
        ref.bias.normal_(0.0, 0.3)
    fast = FastLayerNorm(n).cuda()
    fast.load_state_dict(ref.state_dict())
    return ref, fast


@pytest.mark.gpu
@pytest.mark.parametrize("n", [64, 96, 512])
def test_module_gpu_autocast(n):
    torch.manual_seed(n)
    ref, fast = _module_pair(n)
    x = torch.randn(4, 14, 14, n, device="cuda")
    xr = x.double().requires_grad_()
    yr = F.layer_norm(xr, (n,), ref.weight.double(), ref.bias.double(), ref.eps)
    x.requires_grad_()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = fast(x)
        y_torch = ref(x)
    assert y.dtype == torch.bfloat16 and y_torch.dtype == torch.float32
    assert _rel(y, yr) < 1e-2 and _rel(y, y_torch) < 1e-2
    g = torch.randn_like(y)
    gx, gw, gb = torch.autograd.grad(y, (x, fast.weight, fast.bias), g)
    gxr, gwr, gbr = torch.autograd.grad(yr, (xr, ref.weight, ref.bias), g.double())
    assert gx.dtype == torch.float32 and gw.dtype == torch.float32
    assert _rel(gx, gxr) < 1e-2 and _rel(gw, gwr) < 1e-2 and _rel(gb, gbr) < 1e-2
    # 16-bit inputs without autocast: output in x's dtype
    xb = x.detach().bfloat16()
    assert fast(xb).dtype == torch.bfloat16
    yb = F.layer_norm(xb.double(), (n,), ref.weight.double(), ref.bias.double(), ref.eps)
    assert _rel(fast(xb), yb) < 1e-2


@pytest.mark.gpu
def test_module_gpu_fp32_and_disabled_use_pytorch(monkeypatch):
    torch.manual_seed(0)
    ref, fast = _module_pair(64)
    x = torch.randn(2, 9, 9, 64, device="cuda", requires_grad=True)
    y, yr = fast(x), ref(x)
    assert torch.equal(y, yr)
    g = torch.randn_like(y)
    assert torch.equal(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(yr, x, g)[0])
    monkeypatch.setenv("NATTEN_EXT_FAST_LN", "0")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert fast(x).dtype == torch.float32  # PyTorch's autocast policy: fp32 output
        assert torch.equal(fast(x), ref(x))
    wide = FastLayerNorm(8192).cuda()
    monkeypatch.delenv("NATTEN_EXT_FAST_LN")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert wide(torch.randn(3, 8192, device="cuda")).dtype == torch.float32  # N > 4096


@pytest.mark.gpu
def test_module_gpu_compile_falls_back():
    torch.manual_seed(0)
    ref, fast = _module_pair(64)
    x = torch.randn(2, 9, 9, 64, device="cuda")
    compiled = torch.compile(fast)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = compiled(x)
    assert y.dtype == torch.float32  # traced as aten layer_norm, autocast policy applies
    assert _rel(y, ref(x)) < 1e-2


if __name__ == "__main__" and "--interpret" in sys.argv:
    _interpreter_main()
