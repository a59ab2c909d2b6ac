"""``classification.layers.linear.FastLinear``: oneDNN's matmul for float32 CPU inference, against
``F.linear`` in float64 (the oracle), and ``nn.Linear`` itself everywhere else."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from classification.layers import linear as fast_linear  # noqa: E402
from classification.layers.linear import FastLinear, onednn_linear_applies  # noqa: E402

needs_onednn = pytest.mark.skipif(
    not fast_linear._ONEDNN, reason="oneDNN's linear is not used on this machine"
)
ONEDNN_OP = "mkldnn::_linear_pointwise"


def _ops(fn) -> set[str]:
    """The names of the operators ``fn()`` runs."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _layer(inp: int, out: int, bias: bool = True, seed: int = 0) -> FastLinear:
    torch.manual_seed(seed)
    return FastLinear(inp, out, bias=bias)


@needs_onednn
@pytest.mark.parametrize("shape", [(200, 64), (2, 9, 11, 64), (1, 56, 56, 64), (3, 5, 1536)])
@pytest.mark.parametrize("bias", [True, False])
def test_onednn_path_matches_float64_linear(shape, bias):
    layer = _layer(shape[-1], 512, bias=bias, seed=len(shape))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)))
    with torch.inference_mode():
        assert onednn_linear_applies(x, layer.weight, layer.bias)
        ops = _ops(lambda: layer(x))
        got = layer(x)
    assert ONEDNN_OP in ops and "aten::addmm" not in ops
    b64 = None if layer.bias is None else layer.bias.double()
    want = F.linear(x.double(), layer.weight.double(), b64)
    assert got.shape == want.shape and got.dtype == torch.float32
    assert _rel(got, want) < 1e-6


@needs_onednn
def test_onednn_path_takes_strided_inputs_and_no_grad():
    layer = _layer(32, 128)
    x = torch.randn(4, 20, 24, 32)[:, 1:15, ::2]  # not contiguous
    with torch.no_grad():
        assert ONEDNN_OP in _ops(lambda: layer(x))
        got = layer(x)
    assert _rel(got, F.linear(x.double(), layer.weight.double(), layer.bias.double())) < 1e-6


def test_state_dict_and_type_are_those_of_nn_linear():
    layer = _layer(8, 4)
    plain = torch.nn.Linear(8, 4)
    assert isinstance(layer, torch.nn.Linear)
    assert list(layer.state_dict()) == list(plain.state_dict()) == ["weight", "bias"]
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(3, 8)
    with torch.inference_mode():
        assert _rel(layer(x), plain(x)) < 1e-6


def test_training_and_other_dtypes_are_exactly_nn_linear():
    layer = _layer(16, 12)
    x = torch.randn(4, 5, 16, requires_grad=True)
    assert not onednn_linear_applies(x, layer.weight, layer.bias)
    ops = _ops(lambda: layer(x))
    assert ONEDNN_OP not in ops
    y = layer(x)
    assert torch.equal(y, F.linear(x, layer.weight, layer.bias))
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, layer.weight, layer.bias], g)
    want = torch.autograd.grad(
        F.linear(x, layer.weight, layer.bias), [x, layer.weight, layer.bias], g
    )
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    double = _layer(16, 12).double()
    xd = torch.randn(3, 16, dtype=torch.float64)
    with torch.inference_mode():
        assert not onednn_linear_applies(xd, double.weight, double.bias)
        assert torch.equal(double(xd), F.linear(xd, double.weight, double.bias))
        assert not onednn_linear_applies(torch.randn(16), layer.weight, layer.bias)  # 1-D
        assert not onednn_linear_applies(torch.randn(0, 16), layer.weight, layer.bias)
        small = torch.randn(64, 16)  # 64 x 16 x 12 multiply-adds: PyTorch's GEMM is faster
        assert not onednn_linear_applies(small, layer.weight, layer.bias)
        assert ONEDNN_OP not in _ops(lambda: layer(small))
        big = _layer(256, 512)
        x = torch.randn(64, 256)
        assert onednn_linear_applies(x, big.weight, big.bias) == fast_linear._ONEDNN
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not onednn_linear_applies(x, big.weight, big.bias)
        with torch.backends.mkldnn.flags(enabled=False):
            assert not onednn_linear_applies(x, big.weight, big.bias)


def test_script_trace_and_fx_record_aten_linear():
    layer = _layer(16, 8).eval()
    x = torch.randn(2, 16)
    with torch.no_grad():
        want = F.linear(x, layer.weight, layer.bias)
        scripted = torch.jit.script(layer)
        assert _rel(scripted(x), want) < 1e-6
        traced = torch.jit.trace(layer, x)
    assert "aten::linear" in str(traced.graph) and "mkldnn" not in str(traced.graph)
    gm = torch.fx.symbolic_trace(layer)
    assert any(n.target is F.linear for n in gm.graph.nodes)
    with torch.no_grad():
        assert _rel(gm(x), want) < 1e-6


def test_environment_switch_turns_the_onednn_path_off():
    code = (
        "import torch\n"
        "from classification.layers import linear as fast_linear\n"
        "layer = fast_linear.FastLinear(256, 512)\n"
        "with torch.inference_mode():\n"
        "    print(fast_linear._ONEDNN,"
        " fast_linear.onednn_linear_applies(torch.randn(64, 256), layer.weight, layer.bias))\n"
    )
    env = {**os.environ, "NATTEN_EXT_CPU_LINEAR": "0"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["False", "False"]


@needs_onednn
def test_zoo_models_run_their_linears_on_onednn_and_agree_with_aten(monkeypatch):
    import timm

    import classification  # noqa: F401

    torch.manual_seed(0)
    model = timm.create_model("nat_mini", num_classes=10).eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fast = model(x)
        monkeypatch.setattr(fast_linear, "_ONEDNN", False)
        assert ONEDNN_OP not in _ops(lambda: model(x))
        plain = model(x)
    calls = {e.key: e.count for e in prof.key_averages()}
    blocks = sum(len(level.blocks) for level in model.levels)
    # qkv, proj, fc1 and fc2 of every block; the head's 2 x 512 x 10 product stays on aten
    assert calls[ONEDNN_OP] == 4 * blocks and calls["aten::addmm"] == 1
    assert _rel(fast, plain) < 1e-5
