"""NeighborhoodAttention modules: parameters, padding for small inputs, dropout path, compile."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from na_oracle import oracle_attention, rel_err

import natten_ext
from natten_ext import NeighborhoodAttention1D, NeighborhoodAttention2D, NeighborhoodAttention3D

MODULES = {1: NeighborhoodAttention1D, 2: NeighborhoodAttention2D, 3: NeighborhoodAttention3D}


def test_state_dict_keys_and_shapes():
    m = NeighborhoodAttention2D(64, 4, 7, dilation=2)
    sd = m.state_dict()
    assert set(sd) == {"qkv.weight", "qkv.bias", "rpb", "proj.weight", "proj.bias"}
    assert sd["rpb"].shape == (4, 13, 13)
    assert sd["qkv.weight"].shape == (192, 64)
    assert 0 < sd["rpb"].std() < 0.03 and sd["rpb"].abs().max() <= 2.0
    m1 = NeighborhoodAttention1D(32, 2, 5)
    assert m1.rpb.shape == (2, 9)
    m3 = NeighborhoodAttention3D(32, 2, (3, 5, 7))
    assert m3.rpb.shape == (2, 5, 9, 13)


def test_legacy_bias_keyword_and_no_rpb():
    m = NeighborhoodAttention2D(32, 2, 3, bias=False)
    assert m.rpb is None and "rpb" not in m.state_dict()
    m = NeighborhoodAttention2D(32, 2, 3, rel_pos_bias=False, qkv_bias=False)
    assert m.qkv.bias is None
    m = NeighborhoodAttention2D(32, 2, (4, 2), is_causal=(True, False), rel_pos_bias=False)
    assert m(torch.randn(1, 9, 7, 32)).shape == (1, 9, 7, 32)


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_module_matches_oracle(ndim):
    torch.manual_seed(0)
    ks = {1: 5, 2: 3, 3: 3}[ndim]
    dil = {1: 2, 2: (2, 1), 3: 1}[ndim]
    spatial = {1: (13,), 2: (7, 5), 3: (4, 3, 5)}[ndim]
    m = MODULES[ndim](16, 2, ks, dilation=dil).double()
    x = torch.randn(2, *spatial, 16, dtype=torch.float64)
    q, k, v = m.qkv(x).unflatten(-1, (3, 2, 8)).unbind(-3)
    ks_t = (ks,) * ndim
    dil_t = dil if isinstance(dil, tuple) else (dil,) * ndim
    ref = m.proj(oracle_attention(q, k, v, ks_t, dil_t, (False,) * ndim, rpb=m.rpb).flatten(-2))
    assert rel_err(m(x), ref) < 1e-12


@pytest.mark.parametrize("spatial", [(5, 9), (3, 3), (12, 4), (1, 1)])
def test_padding_equals_explicit_pad_attend_crop(spatial):
    torch.manual_seed(1)
    m = NeighborhoodAttention2D(16, 2, 3, dilation=(2, 3)).double()  # needs 6 x 9
    x = torch.randn(2, *spatial, 16, dtype=torch.float64)
    out = m(x)
    assert out.shape == x.shape
    h, w = spatial
    padded = F.pad(x, (0, 0, 0, max(0, 9 - w), 0, max(0, 6 - h)))
    q, k, v = m.qkv(padded).unflatten(-1, (3, 2, 8)).unbind(-3)
    attended = natten_ext.na2d(q, k, v, 3, (2, 3), rpb=m.rpb)
    ref = m.proj(attended[:, :h, :w].flatten(-2))
    assert rel_err(out, ref) < 1e-12


def test_attention_dropout_path_matches_fused_when_disabled():
    torch.manual_seed(2)
    m = NeighborhoodAttention2D(16, 2, 3, attn_drop=0.5)
    x = torch.randn(1, 6, 6, 16)
    m.eval()
    fused = m(x)
    m.attn_drop.p = 0.0  # unfused path with an identity dropout
    m.train()
    assert torch.allclose(m(x), fused, atol=1e-6)
    m.attn_drop.p = 0.5
    torch.manual_seed(3)
    dropped = m(x)
    assert not torch.allclose(dropped, fused)
    dropped.sum().backward()
    assert m.rpb.grad is not None


def test_module_bad_arguments():
    with pytest.raises(ValueError, match="num_heads"):
        NeighborhoodAttention2D(30, 4, 3)
    with pytest.raises(ValueError, match="kernel_size"):
        NeighborhoodAttention2D(32, 4, 1)
    with pytest.raises(NotImplementedError, match="odd"):
        NeighborhoodAttention2D(32, 4, 4)
    with pytest.raises(NotImplementedError, match="causal"):
        NeighborhoodAttention1D(32, 4, 3, is_causal=True)
    with pytest.raises(ValueError, match="attn_drop"):
        NeighborhoodAttention1D(32, 4, 3, attn_drop=1.5)
    with pytest.raises(ValueError, match="channels-last"):
        NeighborhoodAttention2D(32, 4, 3)(torch.randn(1, 32, 8, 8))


def test_torch_compile_fullgraph():
    torch.manual_seed(4)
    m = NeighborhoodAttention2D(32, 2, 3, dilation=2)
    x = torch.randn(2, 8, 9, 32, requires_grad=True)
    eager = m(x)
    eager.sum().backward()
    grads = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.sum().backward()
    assert torch.allclose(out, eager, atol=1e-6)
    for g, p in zip(grads, m.parameters()):
        assert torch.allclose(p.grad, g, atol=1e-5)


def test_torch_compile_inductor_forward_and_backward():
    torch.manual_seed(5)
    m = NeighborhoodAttention2D(16, 2, 3, dilation=(1, 2))
    x = torch.randn(2, 6, 7, 16, requires_grad=True)
    eager = m(x)
    eager.square().sum().backward()
    grads = [x.grad.clone()] + [p.grad.clone() for p in m.parameters()]
    x.grad = None
    m.zero_grad()
    compiled = torch.compile(m, fullgraph=True)  # inductor checks the op's output strides
    out = compiled(x)
    out.square().sum().backward()
    assert torch.allclose(out, eager, atol=1e-5)
    for g, t in zip(grads, [x, *m.parameters()]):
        assert torch.allclose(t.grad, g, atol=1e-4)
