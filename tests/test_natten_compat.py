"""natten_ext.compat: the NATTEN 0.14-0.17 API against the float64 oracle, its modules against
natten_ext's, and installing it as ``natten`` (import system, metadata, ``python -m``)."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import io
import os
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
from na_oracle import mask_and_bias_index, oracle_attention, oracle_weights, rel_err

import natten_ext
import natten_ext.compat as compat
from natten_ext.compat import context
from natten_ext.compat import functional as F
from natten_ext.compat import modules as M

REPO = Path(__file__).resolve().parents[1]
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2}
DTYPES = list(TOL)


def _leaves(spatial, heads, dim, dtype, rpb_kernel=None, seed=0, tokens=0):
    """Heads-last q, k, v [B, *spatial, heads, dim], optional rpb and extra k/v, as leaves."""
    gen = torch.Generator().manual_seed(seed)
    shape = (2, *spatial, heads, dim)
    out = [torch.randn(shape, generator=gen) for _ in range(3)]
    out.append(
        None
        if rpb_kernel is None
        else torch.randn(heads, *(2 * k - 1 for k in rpb_kernel), generator=gen)
    )
    out += [torch.randn(2, heads, tokens, dim, generator=gen) for _ in range(2)] if tokens else []
    return [None if t is None else t.to(dtype).requires_grad_(True) for t in out]


def _hf(t):  # heads-last [B, *spatial, h, D] -> heads-first [B, h, *spatial, D]
    n = t.dim() - 3
    return t.permute(0, n + 1, *range(1, n + 1), n + 2)


def _hl(t):  # heads-first -> heads-last
    n = t.dim() - 3
    return t.permute(0, *range(2, n + 2), 1, n + 2)


def _check(got, want, leaves, dtype):
    """Output and every leaf gradient of ``got`` against the float64 ``want``."""
    tol = TOL[dtype]
    assert got.dtype == dtype
    assert rel_err(got, want) < tol
    live = [t for t in leaves if t is not None]
    grad = torch.randn(got.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    ours = torch.autograd.grad(got, live, grad.to(dtype))
    ref = torch.autograd.grad(want, live, grad, retain_graph=True)
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert rel_err(a, b) < tol, f"gradient of leaf {i}"


def _oracle(q, k, v, ks, dil, causal=None, rpb=None, scale=None):
    causal = causal or (False,) * len(ks)
    return oracle_attention(q, k, v, ks, dil, causal, rpb, scale)


def _unfused(qk, av, q, k, v):
    """softmax(qk(q * scale, k)) @ v through heads-first ops, back to heads-last."""
    attn = qk(_hf(q) * q.shape[-1] ** -0.5, _hf(k))
    return _hl(av(attn.softmax(dim=-1), _hf(v)))


# ----------------------------------------------------------------- 0.14 names: both call forms


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ndim,spatial,k,d", [(1, (11,), 3, 3), (2, (9, 10), 3, 2)])
def test_natten_014_names_match_oracle(dtype, ndim, spatial, k, d):
    qkrpb = {1: F.natten1dqkrpb, 2: F.natten2dqkrpb}[ndim]
    qk = {1: F.natten1dqk, 2: F.natten2dqk}[ndim]
    av = {1: F.natten1dav, 2: F.natten2dav}[ndim]
    ks, dil = (k,) * ndim, (d,) * ndim
    q, key, v, rpb = _leaves(spatial, 2, 8, dtype, ks)
    want = _oracle(q, key, v, ks, dil, rpb=rpb)
    # 0.14.5+ positional order (query, key, rpb, kernel_size, dilation), as the HF port calls it.
    got = _unfused(lambda a, b: qkrpb(a, b, rpb, k, d), lambda a, b: av(a, b, k, d), q, key, v)
    _check(got, want, [q, key, v, rpb], dtype)
    # 0.14.0-0.14.4: (query, key, rpb, dilation) and (attn, value, dilation), kernel read off.
    got = _unfused(lambda a, b: qkrpb(a, b, rpb, d), lambda a, b: av(a, b, d), q, key, v)
    _check(got, want, [q, key, v, rpb], dtype)
    got = _unfused(
        lambda a, b: qkrpb(a, b, rpb, dilation=d), lambda a, b: av(a, b, dilation=d), q, key, v
    )
    _check(got, want, [q, key, v, rpb], dtype)
    # no bias (0.14.6+), and qkrpb with rpb=None
    want = _oracle(q, key, v, ks, dil)
    _check(
        _unfused(lambda a, b: qk(a, b, k, d), lambda a, b: av(a, b, k, d), q, key, v),
        want,
        [q, key, v],
        dtype,
    )
    got = _unfused(lambda a, b: qkrpb(a, b, None, k, d), lambda a, b: av(a, b, k, d), q, key, v)
    _check(got, want, [q, key, v], dtype)


def test_qk_weights_equal_oracle_weights_with_rpb():
    q, k, _, rpb = _leaves((9, 10), 2, 8, torch.float64, (5, 5))
    q, k = _hf(q), _hf(k)
    want = oracle_weights(q, k, (5, 5), (1, 2), (False, False), rpb)
    assert rel_err(F.natten2dqkrpb(q, k, rpb, 5, (1, 2)), want) < 1e-12
    assert rel_err(F.na2d_qk_with_bias(q, k, rpb, 5, (1, 2)), want) < 1e-12
    assert rel_err(F.na2d_qk(q, k, 5, (1, 2), None, False, rpb), want) < 1e-12


@pytest.mark.parametrize("dtype", DTYPES)
def test_natten3d_names_and_both_na3d_forms_match_oracle(dtype):
    # 0.15's 3-D order: kernel_size_d, kernel_size, dilation_d, dilation (the D axis first).
    kd, k, dd, d = 3, 5, 2, 1
    ks, dil = (kd, k, k), (dd, d, d)
    q, key, v, rpb = _leaves((6, 5, 5), 2, 4, dtype, ks)
    want = _oracle(q, key, v, ks, dil, rpb=rpb)
    forms = [
        (
            lambda a, b: F.natten3dqkrpb(a, b, rpb, kd, k, dd, d),
            lambda a, b: F.natten3dav(a, b, kd, k, dd, d),
        ),
        (
            lambda a, b: F.na3d_qk_with_bias(a, b, rpb, kd, k, dd, d),
            lambda a, b: F.na3d_av(a, b, kd, k, dd, d),
        ),
        (lambda a, b: F.na3d_qk(a, b, ks, dil, rpb=rpb), lambda a, b: F.na3d_av(a, b, ks, dil)),
        (
            lambda a, b: F.na3d_qk(a, b, ks, dil, None, False, rpb),
            lambda a, b: F.na3d_av(a, b, ks, dil, None, False),
        ),
    ]
    for qk, av in forms:
        _check(_unfused(qk, av, q, key, v), want, [q, key, v, rpb], dtype)
    want = _oracle(q, key, v, ks, dil)
    forms = [
        (
            lambda a, b: F.natten3dqk(a, b, kd, k, dd, d),
            lambda a, b: F.natten3dav(a, b, kd, k, dd, d),
        ),
        (lambda a, b: F.na3d_qk(a, b, kd, k, dd, d), lambda a, b: F.na3d_av(a, b, kd, k, dd, d)),
        (
            lambda a, b: F.na3d_qk(
                a, b, kernel_size_d=kd, kernel_size=k, dilation_d=dd, dilation=d
            ),
            lambda a, b: F.na3d_av(a, b, kd, k, dilation_d=dd, dilation=d),
        ),
    ]
    for qk, av in forms:
        _check(_unfused(qk, av, q, key, v), want, [q, key, v], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ndim", [1, 2])
def test_na_qk_av_015_and_017_forms_match_oracle(dtype, ndim):
    qk = {1: F.na1d_qk, 2: F.na2d_qk}[ndim]
    qkb = {1: F.na1d_qk_with_bias, 2: F.na2d_qk_with_bias}[ndim]
    av = {1: F.na1d_av, 2: F.na2d_av}[ndim]
    spatial = (12,) * ndim
    ks, dil = (3,) * ndim, (3,) * ndim
    q, key, v, rpb = _leaves(spatial, 2, 8, dtype, ks)
    want = _oracle(q, key, v, ks, dil, rpb=rpb)
    _check(
        _unfused(lambda a, b: qkb(a, b, rpb, 3, 3), lambda a, b: av(a, b, 3, 3), q, key, v),
        want,
        [q, key, v, rpb],
        dtype,
    )
    _check(
        _unfused(lambda a, b: qk(a, b, 3, 3, rpb=rpb), lambda a, b: av(a, b, 3, 3), q, key, v),
        want,
        [q, key, v, rpb],
        dtype,
    )
    # 0.17 positional order: (q, k, kernel_size, dilation, additional_keys, is_causal, rpb)
    causal = (True,) + (False,) * (ndim - 1)
    ks = (4,) + (3,) * (ndim - 1)
    want = _oracle(q, key, v, ks, dil, causal)
    got = _unfused(
        lambda a, b: qk(a, b, ks, dil, None, causal),
        lambda a, b: av(a, b, ks, dil, None, causal),
        q,
        key,
        v,
    )
    _check(got, want, [q, key, v], dtype)


def _oracle_with_extra(q, k, v, ak, av, ks, dil, rpb=None):
    """Brute force: neighborhood keys plus T global tokens, one softmax over both (float64)."""
    spatial = tuple(q.shape[1:-2])
    mask, index = mask_and_bias_index(spatial, ks, dil, (False,) * len(ks))
    b, heads, dim = q.shape[0], q.shape[-2], q.shape[-1]
    qf, kf, vf = (t.double().reshape(b, -1, heads, dim).transpose(1, 2) for t in (q, k, v))
    logits = dim**-0.5 * qf @ kf.transpose(-1, -2)
    if rpb is not None:
        logits = logits + rpb.double()[(slice(None), *index.unbind(-1))]
    logits = logits.masked_fill(~mask, float("-inf"))
    extra = dim**-0.5 * qf @ ak.double().transpose(-1, -2)
    p = torch.cat([logits, extra], dim=-1).softmax(dim=-1)
    out = p @ torch.cat([vf, av.double()], dim=2)
    return out.transpose(1, 2).reshape(q.shape)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_additional_keys_and_values_match_oracle(dtype, ndim):
    spatial = {1: (10,), 2: (7, 8), 3: (4, 5, 4)}[ndim]
    ks, dil = (3,) * ndim, (1,) * ndim
    q, k, v, rpb, ak, avals = _leaves(spatial, 2, 8, dtype, ks, tokens=3)
    want = _oracle_with_extra(q, k, v, ak, avals, ks, dil, rpb)
    qk = {1: F.na1d_qk, 2: F.na2d_qk, 3: F.na3d_qk}[ndim]
    av = {1: F.na1d_av, 2: F.na2d_av, 3: F.na3d_av}[ndim]
    fused = {1: F.na1d, 2: F.na2d, 3: F.na3d}[ndim]
    # positional additional_keys (0.15) and keyword (0.17); the weights gain 3 columns
    got = _unfused(
        lambda a, b: qk(a, b, ks, dil, ak, rpb=rpb), lambda a, b: av(a, b, ks, dil, avals), q, k, v
    )
    _check(got, want, [q, k, v, rpb, ak, avals], dtype)
    got = fused(q, k, v, ks, dil, rpb=rpb, additional_keys=ak, additional_values=avals)
    _check(got, want, [q, k, v, rpb, ak, avals], dtype)
    if ndim == 2:
        got = _unfused(
            lambda a, b: F.na2d_qk_with_bias(a, b, rpb, 3, 1, ak),
            lambda a, b: F.na2d_av(a, b, 3, 1, additional_values=avals),
            q,
            k,
            v,
        )
        _check(got, want, [q, k, v, rpb, ak, avals], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_fused_017_positional_order_matches_oracle(dtype, ndim):
    fused = {1: F.na1d, 2: F.na2d, 3: F.na3d}[ndim]
    spatial = {1: (13,), 2: (8, 9), 3: (6, 5, 5)}[ndim]
    ks, dil = (3,) * ndim, (2,) + (1,) * (ndim - 1)
    q, k, v, rpb = _leaves(spatial, 2, 8, dtype, ks)
    # (query, key, value, kernel_size, dilation, is_causal, rpb, scale)
    got = fused(q, k, v, ks, dil, False, rpb, 0.3)
    _check(got, _oracle(q, k, v, ks, dil, rpb=rpb, scale=0.3), [q, k, v, rpb], dtype)
    causal = (False,) * (ndim - 1) + (True,)
    got = fused(q, k, v, ks, dil, causal)  # scale None (and 0, as in 0.17) -> head_dim ** -0.5
    _check(got, _oracle(q, k, v, ks, dil, causal), [q, k, v], dtype)
    got = fused(q, k, v, ks, dil, causal, None, 0)
    _check(got, _oracle(q, k, v, ks, dil, causal), [q, k, v], dtype)


def test_functional_argument_errors():
    q = torch.randn(1, 2, 9, 9, 8)
    rpb = torch.randn(2, 5, 5)
    with pytest.raises(TypeError, match=r"natten2dqkrpb.*dilation"):
        F.natten2dqkrpb(q, q, rpb)
    with pytest.raises(ValueError, match="read off rpb"):
        F.natten2dqkrpb(q, q, None, 2)
    with pytest.raises(ValueError, match="not kernel_size"):
        F.natten2dav(torch.randn(1, 2, 9, 9, 8), q, 1)
    with pytest.raises(ValueError, match="additional_keys"):
        F.na2d_qk(q, q, 3, 1, torch.randn(1, 3, 4, 8))
    with pytest.raises(ValueError, match="additional_values"):
        F.na2d_av(torch.randn(1, 2, 9, 9, 12), q, 3, 1, torch.randn(1, 2, 4, 8))
    with pytest.raises(ValueError, match="both"):
        F.na2d(_hl(q), _hl(q), _hl(q), 3, additional_keys=torch.randn(1, 2, 3, 8))
    with pytest.raises(NotImplementedError, match="xformers"):
        F.na2d(_hl(q), _hl(q), _hl(q), 3, xformers_kwargs={"op": 1})
    with pytest.raises(TypeError, match="na3d_qk"):
        F.na3d_qk(torch.randn(1, 1, 4, 4, 4, 2), torch.randn(1, 1, 4, 4, 4, 2), 3, 3, 1)
    with pytest.raises(TypeError, match="rpb"):
        F.na3d_qk(q, q, 3, 3, 1, 1, rpb=rpb)
    with pytest.raises(ValueError, match="kernel_size \\* dilation"):
        F.natten2dqkrpb(q, q, rpb, 3, 4)  # natten_ext's own checks still apply


# -------------------------------------------------------------------------------- modules

FAMILY_OF = {"0.14.4": "0.14", "0.15.1": "0.15", "0.17.5": "0.17"}
NE = {
    1: natten_ext.NeighborhoodAttention1D,
    2: natten_ext.NeighborhoodAttention2D,
    3: natten_ext.NeighborhoodAttention3D,
}


def _module(family: str, ndim: int, dim: int, heads: int, k: int, d: int, **kw):
    cls = M.FAMILIES[family][f"NeighborhoodAttention{ndim}D"]
    if cls.__qualname__.endswith("_v014"):
        return cls(dim, k, heads, dilation=d, **kw)
    return cls(dim, heads, k, dilation=d, **kw)


@pytest.mark.parametrize("family", ["0.14", "0.15", "0.17"])
@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_module_keys_and_outputs_equal_natten_ext(family, ndim):
    torch.manual_seed(0)
    extra = {"rel_pos_bias": True} if family == "0.17" else {}
    ours = _module(family, ndim, 16, 2, 3, 2, **extra).double()
    ref = NE[ndim](16, 2, 3, 2).double()
    assert (
        list(ours.state_dict())
        == list(ref.state_dict())
        == [
            "rpb",
            "qkv.weight",
            "qkv.bias",
            "proj.weight",
            "proj.bias",
        ]
    )
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in ref.state_dict().items()
    }
    ref.load_state_dict(ours.state_dict())
    assert type(ours).__name__ == f"NeighborhoodAttention{ndim}D"
    # one axis shorter than kernel_size * dilation = 6: padded before qkv, cropped after proj
    spatial = {1: (9,), 2: (7, 4), 3: (6, 7, 5)}[ndim]
    x = torch.randn(2, *spatial, 16, dtype=torch.float64, requires_grad=True)
    got, want = ours(x), ref(x)
    assert rel_err(got, want) < 1e-12
    grad = torch.randn_like(got)
    g_ours = torch.autograd.grad(got, [x, *ours.parameters()], grad)
    g_ref = torch.autograd.grad(want, [x, *ref.parameters()], grad)
    for a, b in zip(g_ours, g_ref):
        assert rel_err(a, b) < 1e-12
    # the unfused path (NATTEN's modules without fused NA) computes the same function
    context.use_fused_na(False)
    try:
        assert not context.is_fused_na_enabled()
        assert rel_err(ours(x), want) < 1e-12
    finally:
        context.use_fused_na(True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_module_dtypes_against_oracle(dtype):
    torch.manual_seed(1)
    m = M.NeighborhoodAttention2D_v015(16, 2, 3, 2)
    x = torch.randn(2, 8, 9, 16)
    m64 = m.double()
    qkv = m64.qkv(x.double()).unflatten(-1, (3, 2, 8))
    want = oracle_attention(*qkv.unbind(-3), (3, 3), (2, 2), (False, False), m64.rpb)
    want = m64.proj(want.flatten(-2))
    m = m64.to(dtype)
    for fused in (True, False):
        context.use_fused_na(fused)
        try:
            got = m(x.to(dtype))
        finally:
            context.use_fused_na(True)
        assert got.dtype == dtype
        assert rel_err(got, want) < TOL[dtype]


def test_module_argument_orders_of_each_release():
    # 0.14.0-0.14.4: (dim, kernel_size, num_heads, qkv_bias, qk_scale, attn_drop, proj_drop,
    # dilation), always with RPB
    m = M.NeighborhoodAttention2D_v014(64, 7, 2, False, None, 0.0, 0.0, 3)
    assert (m.kernel_size, m.num_heads, m.dilation, m.window_size) == (7, 2, 3, 21)
    assert m.qkv.bias is None and m.rpb.shape == (2, 13, 13)
    # 0.14.5-0.15: (dim, num_heads, kernel_size, dilation, bias, qkv_bias, ...)
    m = M.NeighborhoodAttention2D_v015(64, 2, 7, 2, False, False)
    assert (m.num_heads, m.kernel_size, m.dilation) == (2, 7, 2)
    assert m.rpb is None and m.qkv.bias is None
    m = M.NeighborhoodAttention1D_v015(64, 4, 5, None)  # dilation None -> 1
    assert m.dilation == 1 and m.rpb.shape == (4, 9)
    # 0.15 3-D: (dim, num_heads, kernel_size, kernel_size_d, dilation, dilation_d, bias, ...)
    m = M.NeighborhoodAttention3D_v015(32, 2, 3, 5, 1, 2)
    assert (m.kernel_size, m.kernel_size_d, m.dilation, m.dilation_d) == (3, 5, 1, 2)
    assert m.rpb.shape == (2, 9, 5, 5) and m.window_size_d == 10
    m = M.NeighborhoodAttention3D_v015(32, 2, 3)
    assert (m.kernel_size_d, m.dilation_d) == (3, 1)
    # 0.17: (dim, num_heads, kernel_size, dilation, is_causal, rel_pos_bias, qkv_bias, ...)
    m = M.NeighborhoodAttention2D_v017(64, 2, 7, 2, (False, True))
    assert m.kernel_size == (7, 7) and m.dilation == (2, 2) and m.is_causal == (False, True)
    assert m.rpb is None  # 0.17's default: no RPB
    m = M.NeighborhoodAttention2D_v017(64, 2, (5, 7), 1, False, True, False, 0.5, 0.0, 0.0, True)
    assert m.rpb.shape == (2, 9, 13) and m.qkv.bias is None and m.scale == 0.5
    assert m.use_experimental_ops is True
    # qk_scale falls back to head_dim ** -0.5 when falsy, in every release
    for m in (
        M.NeighborhoodAttention2D_v014(64, 7, 2, qk_scale=0),
        M.NeighborhoodAttention2D_v015(64, 2, 7, qk_scale=0),
        M.NeighborhoodAttention2D_v017(64, 2, 7, qk_scale=0),
    ):
        assert m.scale == 32**-0.5


def test_bias_and_rel_pos_bias_spellings():
    V014, V015, V017 = (M.FAMILIES[f]["NeighborhoodAttention2D"] for f in ("0.14", "0.15", "0.17"))
    assert V015(32, 2, 3).rpb is not None  # 0.14.5-0.15 default: bias=True
    assert V015(32, 2, 3, bias=False).rpb is None
    assert V015(32, 2, 3, rel_pos_bias=False).rpb is None
    assert V015(32, 2, 3, rel_pos_bias=True).rpb is not None
    assert V017(32, 2, 3).rpb is None  # 0.17 default: rel_pos_bias=False
    assert V017(32, 2, 3, rel_pos_bias=True).rpb is not None
    assert V017(32, 2, 3, bias=True).rpb is not None
    assert V014(32, 3, 2).rpb is not None and V014(32, 3, 2, bias=False).rpb is None
    with pytest.raises(ValueError, match="bias=False contradicts rel_pos_bias=True"):
        V015(32, 2, 3, bias=False, rel_pos_bias=True)
    with pytest.raises(ValueError, match="rel_pos_bias=True contradicts bias=False"):
        V017(32, 2, 3, rel_pos_bias=True, bias=False)
    with pytest.raises(NotImplementedError, match="odd kernel"):
        V017(32, 2, 4, rel_pos_bias=True)
    with pytest.raises(NotImplementedError, match="causal"):
        V017(32, 2, 3, is_causal=True, bias=True)
    assert V017(32, 2, 4).rpb is None  # even kernels work without RPB


def test_module_argument_errors():
    V015 = M.NeighborhoodAttention2D_v015
    with pytest.raises(ValueError, match="num_heads must divide dim=30"):
        V015(30, 4, 3)
    with pytest.raises(ValueError, match="kernel_size must be an int >= 2"):
        V015(32, 2, (3, 3))
    with pytest.raises(ValueError, match="dilation must be an int >= 1"):
        V015(32, 2, 3, 0.5)
    with pytest.raises(ValueError, match="attn_drop must be in"):
        V015(32, 2, 3, attn_drop=1.0)
    with pytest.raises(ValueError, match="str dilation"):
        M.NeighborhoodAttention1D_v014(32, 3, 2, dilation="auto")
    with pytest.raises(ValueError, match="expects channels-last input"):
        V015(32, 2, 3)(torch.randn(1, 32, 8, 8))


def test_014_str_dilation_is_chosen_per_input():
    torch.manual_seed(2)
    m = M.NeighborhoodAttention2D_v014(16, 7, 2, dilation="adaptive").double()
    assert m.dilation is None and m.window_size is None
    for size, d in (((22, 29), 3), ((9, 30), 1)):  # max(min(H, W) // 7, 1)
        ref = natten_ext.NeighborhoodAttention2D(16, 2, 7, d).double()
        ref.load_state_dict(m.state_dict())
        x = torch.randn(1, *size, 16, dtype=torch.float64)
        assert rel_err(m(x), ref(x)) < 1e-12


def test_attention_dropout_applies_in_training():
    torch.manual_seed(3)
    m = M.NeighborhoodAttention2D_v015(16, 2, 3, attn_drop=0.5)
    x = torch.randn(1, 6, 6, 16)
    evaluated = m.eval()(x)
    m.train()
    assert not torch.allclose(m(x), evaluated)
    m.eval()
    ref = natten_ext.NeighborhoodAttention2D(16, 2, 3).eval()
    ref.load_state_dict(m.state_dict())
    assert torch.allclose(m(x), ref(x), atol=1e-6)


def test_module_pickles_by_its_own_class():
    m = M.NeighborhoodAttention2D_v015(16, 2, 3)
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert type(loaded) is M.NeighborhoodAttention2D_v015
    x = torch.randn(1, 5, 5, 16)
    assert torch.equal(loaded(x), m(x))


def test_context_queries_and_switches():
    assert context.has_gemm() is False and context.has_fp64_gemm() is False
    assert context.has_cuda() == torch.cuda.is_available()
    if not torch.cuda.is_available():
        assert not (context.has_half() or context.has_bfloat() or context.has_fna())
    for switch in (
        context.use_tiled_na,
        context.use_gemm_na,
        context.use_tf32_in_gemm_na,
        context.use_kv_parallelism_in_fused_na,
    ):
        switch(True)
    context.use_autotuner(True, True, warmup_steps_forward=3)
    assert not (
        context.is_tiled_na_enabled()
        or context.is_gemm_na_enabled()
        or context.is_autotuner_enabled()
    )
    assert context.enable_tiled_na() is False and context.disable_tf32() is False
    assert context.is_fused_na_enabled()
    context.use_fna(False)
    assert not context.is_fna_enabled()
    context.use_fused_na(True, kv_parallel=True)
    assert context.is_fused_na_enabled()


def test_unfused_switch_routes_modules_through_qk_av(monkeypatch):
    calls = []
    original = M._QK[2]
    monkeypatch.setitem(M._QK, 2, lambda *a, **k: calls.append(1) or original(*a, **k))
    m = M.NeighborhoodAttention2D_v015(16, 2, 3)
    x = torch.randn(1, 5, 5, 16)
    fused = m(x)
    assert calls == []
    context.use_fused_na(False)
    try:
        unfused = m(x)
    finally:
        context.use_fused_na(True)
    assert calls == [1] and torch.allclose(fused, unfused, atol=1e-6)


def test_flops_handles_count_like_natten_ext():
    pytest.importorskip("fvcore")
    from natten_ext.compat import flops

    m = M.NeighborhoodAttention2D_v015(32, 2, 7, 2)
    ref = natten_ext.NeighborhoodAttention2D(32, 2, 7, 2)
    x = torch.randn(1, 14, 14, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = flops.get_flops(m.eval(), (x,), disable_warnings=True)
        want = natten_ext.flops.get_flops(ref, x)
    attention = 2 * 2 * 14 * 14 * 16 * 49 + 2 * 14 * 14 * 49  # QK + AV + RPB (spec §6)
    assert got == want and got > attention


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_ops_modules_and_queries(dtype):
    assert context.has_cuda() and context.has_half()
    assert context.has_bfloat() == (torch.cuda.get_device_capability()[0] >= 8)
    assert context.has_fna() == ("triton" in natten_ext.available_backends())
    tol = {torch.float32: 1e-4, torch.bfloat16: 2e-2}[dtype]  # (TF32 may serve float32)
    cpu = _leaves((14, 15), 2, 32, torch.float64, (7, 7))
    q, k, v, rpb = (t.detach().to("cuda", dtype).requires_grad_(True) for t in cpu)
    want = _oracle(*(t.cpu() for t in (q, k, v)), (7, 7), (2, 2), rpb=rpb.cpu())
    live = [q, k, v, rpb]
    grad = torch.randn(want.shape, dtype=torch.float64)
    ref = torch.autograd.grad(want, live, grad, retain_graph=True)
    for got in (
        F.na2d(q, k, v, 7, 2, False, rpb),  # fused (Triton where available)
        _unfused(lambda a, b: F.natten2dqkrpb(a, b, rpb, 7, 2),
                 lambda a, b: F.natten2dav(a, b, 7, 2), q, k, v),
    ):  # fmt: skip
        assert got.device.type == "cuda" and got.dtype == dtype
        assert rel_err(got.cpu(), want) < tol
        ours = torch.autograd.grad(got, live, grad.to("cuda", dtype))
        for a, b in zip(ours, ref):  # the oracle's gradients flow back to the CUDA leaves
            assert rel_err(a.cpu(), b.cpu()) < tol
    torch.manual_seed(0)
    m = M.NeighborhoodAttention2D_v015(64, 2, 7, 2).to("cuda", dtype)
    ne = natten_ext.NeighborhoodAttention2D(64, 2, 7, 2).to("cuda", dtype)
    ne.load_state_dict(m.state_dict())
    x = torch.randn(2, 10, 17, 64, device="cuda", dtype=dtype)  # H < 14: padded
    fused = m(x)
    assert torch.equal(fused, ne(x))
    context.use_fused_na(False)
    try:
        assert rel_err(m(x), fused) < tol
    finally:
        context.use_fused_na(True)


# ------------------------------------------------------------------------------ installing


@pytest.fixture
def clean_natten():
    """Uninstalls the drop-in and restores every natten* entry of sys.modules afterwards."""
    saved = {n: m for n, m in sys.modules.items() if n == "natten" or n.startswith("natten.")}
    yield
    compat.uninstall()
    for name in [n for n in sys.modules if n == "natten" or n.startswith("natten.")]:
        del sys.modules[name]
    sys.modules.update(saved)


def test_install_registers_natten_and_its_metadata(clean_natten):
    natten = compat.install()
    assert compat.installed_version() == compat.DEFAULT_VERSION == "0.15.1"
    assert compat.install() is natten  # idempotent
    import natten as imported
    from natten import NeighborhoodAttention, NeighborhoodAttention2D
    from natten.functional import has_cuda, na2d_qk_with_bias, natten2dav, natten2dqkrpb
    from natten.natten2d import NeighborhoodAttention2D as from_file

    assert imported is natten and natten.__natten_ext__ == natten_ext.__version__
    assert NeighborhoodAttention2D is NeighborhoodAttention is from_file
    assert NeighborhoodAttention2D is M.NeighborhoodAttention2D_v015
    assert natten2dqkrpb is F.natten2dqkrpb and natten2dav is F.natten2dav
    assert na2d_qk_with_bias is F.na2d_qk_with_bias and has_cuda is context.has_cuda
    assert hasattr(natten, "context") and natten.flops.add_natten_handle
    assert importlib.metadata.version("natten") == "0.15.1"
    assert importlib.metadata.distribution("natten").read_text("top_level.txt") == "natten\n"
    spec = importlib.util.find_spec("natten")
    assert spec is not None and spec.name == "natten"
    assert importlib.util.find_spec("natten.functional") is not None
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("natten.libnatten")  # never a real natten's submodule
    del sys.modules["natten"], sys.modules["natten.functional"]  # a purge: the finder answers
    assert importlib.import_module("natten.functional").natten2dav is F.natten2dav
    with pytest.raises(RuntimeError, match="uninstall"):
        compat.install("0.17.5")
    compat.uninstall()
    compat.uninstall()  # no-op
    assert compat.installed_version() is None
    assert sys.modules.get("natten") is not natten


@pytest.mark.parametrize(
    "version,cls",
    [
        ("0.14.4", "NeighborhoodAttention2D_v014"),
        ("0.14.6", "NeighborhoodAttention2D_v015"),
        ("0.17.0", "NeighborhoodAttention2D_v017"),
    ],
)
def test_install_picks_the_release_signatures(clean_natten, version, cls):
    natten = compat.install(version)
    assert natten.__version__ == version == importlib.metadata.version("natten")
    assert natten.NeighborhoodAttention2D is getattr(M, cls)


@pytest.mark.parametrize("version", ["0.16.0", "0.13.0", "0.18.0", "0.15", "1.0.0", 15])
def test_install_rejects_unknown_releases(version):
    with pytest.raises(ValueError, match="version must be"):
        compat.install(version)
    assert compat.installed_version() is None


def test_real_natten_is_set_aside_and_restored(clean_natten):
    fake = types.ModuleType("natten")
    fake_sub = types.ModuleType("natten.functional")
    for name in [n for n in sys.modules if n == "natten" or n.startswith("natten.")]:
        del sys.modules[name]
    sys.modules["natten"], sys.modules["natten.functional"] = fake, fake_sub
    natten = compat.install()
    assert sys.modules["natten"] is natten and sys.modules["natten.functional"] is natten.functional
    compat.uninstall()
    assert sys.modules["natten"] is fake and sys.modules["natten.functional"] is fake_sub
    assert "natten.context" not in sys.modules


def test_real_natten_keeps_natten_ext_backend(clean_natten):
    real = importlib.util.find_spec("natten")
    if real is None or "natten_ext" in (real.origin or ""):
        pytest.skip("no real natten installed")
    compat.install()
    backend = natten_ext.backends.get("natten")
    assert backend is not None and backend.natten is not sys.modules["natten"]


def test_install_warns_when_transformers_already_decided(clean_natten, monkeypatch):
    fake = types.ModuleType("transformers.utils.import_utils")
    fake._natten_available = False
    monkeypatch.setitem(sys.modules, "transformers.utils.import_utils", fake)
    with pytest.warns(RuntimeWarning, match="before importing transformers"):
        compat.install()


def _run(args, cwd, timeout=240):
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


OLD_SCRIPT = """
import sys
import torch
import natten
from helper import VALUE  # the script's folder is on sys.path
from natten import NeighborhoodAttention2D
m = NeighborhoodAttention2D(dim=16, kernel_size=3, num_heads=2)
y = m(torch.randn(1, 4, 5, 16))
print(natten.__version__, sys.argv[1:], VALUE, tuple(y.shape), m.rpb is not None)
print("timm" in sys.modules or "classification" in sys.modules)  # natten_ext imports neither
"""


def _write_scripts(folder: Path) -> None:
    (folder / "helper.py").write_text("VALUE = 7\n")
    (folder / "old.py").write_text(OLD_SCRIPT)
    (folder / "oldmod.py").write_text("import natten, sys\nprint(natten.__version__, sys.argv)\n")


def test_python_m_runner(tmp_path):
    _write_scripts(tmp_path)
    res = _run(["-m", "natten_ext.compat", "old.py", "--flag", "x"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["0.15.1 ['--flag', 'x'] 7 (1, 4, 5, 16) True", "False"]


def test_runner_options(clean_natten, tmp_path, monkeypatch, capsys):
    from natten_ext.compat.__main__ import main

    _write_scripts(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.chdir(tmp_path)
    main(["--natten-version", "0.17.5", str(tmp_path / "old.py")])
    assert capsys.readouterr().out.startswith("0.17.5 [] 7 (1, 4, 5, 16) False")
    compat.uninstall()
    sys.modules.pop("helper", None)
    monkeypatch.syspath_prepend(str(tmp_path))
    main(["--natten-version=0.14.4", "-m", "oldmod", "-q"])
    assert capsys.readouterr().out.strip() == f"0.14.4 [{str(tmp_path / 'oldmod.py')!r}, '-q']"
    main(["-h"])
    assert "usage: python -m natten_ext.compat" in capsys.readouterr().out
    for bad, message in (([], "give a script"), (["--bogus", "x.py"], "unknown or incomplete")):
        with pytest.raises(SystemExit, match=message):
            main(bad)


# ------------------------------------------------------- an original authors'-style model file

OLD_MODEL = '''
"""A small NAT written against the old NATTEN API, as the original model files were."""
import torch
from torch import nn
import natten
from natten import NeighborhoodAttention2D as NeighborhoodAttention
from natten.flops import add_natten_handle  # noqa: F401  (the original repos import it)

# NATTEN >= 0.17 renamed the RPB switch; old model files pick the spelling like this.
RPB = {"rel_pos_bias": True} if hasattr(natten, "context") else {"bias": True}


class Block(nn.Module):
    def __init__(self, dim, heads, kernel, dilation, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = NeighborhoodAttention(dim, kernel_size=kernel, dilation=dilation,
                                          num_heads=heads, qkv_bias=True, qk_scale=None, **RPB)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential()
        self.mlp.fc1 = nn.Linear(dim, int(dim * mlp_ratio))
        self.mlp.act = nn.GELU()
        self.mlp.fc2 = nn.Linear(int(dim * mlp_ratio), dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Down(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.reduction = nn.Conv2d(dim, 2 * dim, 3, 2, 1, bias=False)
        self.norm = nn.LayerNorm(2 * dim)

    def forward(self, x):
        return self.norm(self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class Level(nn.Module):
    def __init__(self, dim, heads, kernel, dilations, mlp_ratio, last):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads, kernel, d, mlp_ratio) for d in dilations)
        self.downsample = None if last else Down(dim)

    def forward(self, x):
        for blk in self.blocks:
            x = blk(x)
        return x if self.downsample is None else self.downsample(x)


class Stem(nn.Module):
    def __init__(self, dim):
        super().__init__()
        half = dim // 2
        self.proj = nn.Sequential(nn.Conv2d(3, half, 3, 2, 1), nn.Conv2d(half, dim, 3, 2, 1))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class TinyNAT(nn.Module):
    def __init__(self, dim=32, heads=(1, 2), kernel=3, dilations=((1, 4), (1, 2)), classes=5):
        super().__init__()
        self.patch_embed = Stem(dim)
        n = len(heads)
        self.levels = nn.ModuleList(
            Level(dim * 2**i, heads[i], kernel, dilations[i], 3.0, i == n - 1) for i in range(n)
        )
        self.norm = nn.LayerNorm(dim * 2 ** (n - 1))
        self.head = nn.Linear(dim * 2 ** (n - 1), classes)

    def forward(self, x):
        x = self.patch_embed(x)
        for level in self.levels:
            x = level(x)
        return self.head(self.norm(x).flatten(1, 2).mean(1))
'''


@pytest.mark.parametrize("version", ["0.14.6", "0.17.5"])
def test_original_style_model_file_runs_on_the_drop_in(clean_natten, tmp_path, version):
    from classification.nat import NAT

    (tmp_path / "old_nat.py").write_text(OLD_MODEL)
    compat.install(version)
    sys.path.insert(0, str(tmp_path))
    try:
        old_nat = importlib.import_module("old_nat")
        torch.manual_seed(0)
        old = old_nat.TinyNAT().eval()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("old_nat", None)
    ours = NAT(
        depths=(2, 2),
        num_heads=(1, 2),
        embed_dim=32,
        kernel_size=3,
        dilations=[[1, 4], [1, 2]],
        num_classes=5,
        drop_path_rate=0.0,
    ).eval()
    ours.load_state_dict(old.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 48, requires_grad=True)
    a, b = old(x), ours(x)
    assert rel_err(a, b) < 1e-5
    ga = torch.autograd.grad(a.sum(), [x, *old.parameters()])
    gb = torch.autograd.grad(b.sum(), [x, *ours.parameters()])
    for u, w in zip(ga, gb):
        assert rel_err(u, w) < 1e-4


# ---------------------------------------------------------- Hugging Face DiNAT / NAT (<= 4.53)


def _transformers_with_dinat() -> bool:
    """transformers 4.26-4.53 is installed (read from its metadata: importing it would already
    fix its view of natten for the whole process)."""
    try:
        version = importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        return False
    return (4, 26) <= tuple(int(p) for p in version.split(".")[:2]) <= (4, 53)


needs_transformers = pytest.mark.skipif(
    not _transformers_with_dinat(),
    reason="needs transformers 4.26-4.53 (DiNAT/NAT on natten): pip install -e .[compat-test]",
)


@pytest.fixture
def hf_on_drop_in(clean_natten):
    """transformers with natten = the drop-in (transformers is imported only after install)."""
    compat.install()
    transformers = importlib.import_module("transformers")
    from transformers.utils import is_natten_available

    assert is_natten_available()
    return transformers


def _jitter(model: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere (HF zero-initialises rpb, which would hide RPB mistakes)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))


@needs_transformers
@pytest.mark.parametrize("family", ["dinat", "nat"])
def test_hf_model_on_drop_in_matches_timm_model(hf_on_drop_in, family):
    import timm

    from classification.checkpoint import hf_to_original

    tf = hf_on_drop_in
    if family == "dinat":
        config = tf.DinatConfig(num_labels=10)  # DinatConfig's defaults are DiNAT-Mini's
        hf = tf.DinatForImageClassification(config)
    else:
        config = tf.NatConfig(num_labels=10)  # NAT-Mini's
        hf = tf.NatForImageClassification(config)
    expected = dict(
        embed_dim=64,
        depths=[3, 4, 6, 5],
        num_heads=[2, 4, 8, 16],
        kernel_size=7,
        mlp_ratio=3.0,
        layer_scale_init_value=0.0,
    )
    assert {k: getattr(config, k) for k in expected} == expected
    if family == "dinat":
        assert config.dilations == [[1, 8, 1], [1, 4, 1, 4], [1, 2, 1, 2, 1, 2], [1, 1, 1, 1, 1]]
    _jitter(hf, 0)
    hf.eval()
    ours = timm.create_model(f"{family}_mini", num_classes=10).eval()
    ours.load_state_dict(hf_to_original(hf.state_dict()), strict=True)
    # DiNAT-Mini at 224 (maps 56/28/14/7 = kernel * dilation); NAT at 112 (its last map, 4x4, is
    # padded to the kernel)
    size = 224 if family == "dinat" else 112
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = hf(pixel_values=x).logits
        b = ours(x)
    assert rel_err(a, b) < 1e-5


@needs_transformers
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_hf_dinat_gradients_on_drop_in_match(hf_on_drop_in, dtype):
    from classification.checkpoint import hf_to_original
    from classification.nat import NAT

    tf = hf_on_drop_in
    config = tf.DinatConfig(
        embed_dim=32,
        depths=[2, 2],
        num_heads=[1, 2],
        kernel_size=3,
        dilations=[[1, 4], [1, 2]],
        mlp_ratio=2.0,
        drop_path_rate=0.0,
        layer_scale_init_value=0.5,
        num_labels=5,
    )
    hf = tf.DinatForImageClassification(config).to(dtype)
    _jitter(hf, 2)
    hf.eval()
    ours = (
        NAT(
            depths=(2, 2),
            num_heads=(1, 2),
            embed_dim=32,
            mlp_ratio=2.0,
            kernel_size=3,
            dilations=[[1, 4], [1, 2]],
            layer_scale=0.5,
            num_classes=5,
            drop_path_rate=0.0,
        )
        .to(dtype)
        .eval()
    )
    ours.load_state_dict(hf_to_original(hf.state_dict()), strict=True)
    # 40x56: the second level's 5x7 map is smaller than kernel*dilation = 6 (padded)
    x = torch.randn(2, 3, 40, 56, dtype=dtype, generator=torch.Generator().manual_seed(3))
    a = hf(pixel_values=x).logits
    b = ours(x)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert rel_err(a, b) < tol
    a.square().sum().backward()
    b.square().sum().backward()
    hf_grads = hf_to_original({n: p.grad for n, p in hf.named_parameters()})
    for name, p in ours.named_parameters():
        assert rel_err(p.grad, hf_grads[name]) < 100 * tol, name


HIDE_REAL_NATTEN = """
import importlib.machinery, importlib.metadata, sys

class _Hide(importlib.machinery.PathFinder):
    # A machine without natten: its modules and its distribution cannot be found.
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name == "natten" or name.startswith("natten."):
            return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)

    @classmethod
    def find_distributions(cls, context=importlib.metadata.DistributionFinder.Context()):
        for dist in importlib.machinery.PathFinder.find_distributions(context):
            if dist.metadata["Name"].lower() != "natten":
                yield dist

sys.meta_path[sys.meta_path.index(importlib.machinery.PathFinder)] = _Hide
import importlib.util
assert importlib.util.find_spec("natten") is None
try:
    importlib.metadata.version("natten")
    raise SystemExit("natten still visible")
except importlib.metadata.PackageNotFoundError:
    pass
"""

WITHOUT_NATTEN = (
    HIDE_REAL_NATTEN
    + """
import torch
import natten_ext.compat
natten_ext.compat.install()
from transformers import DinatConfig, DinatForImageClassification
from transformers.utils import is_natten_available
from classification.checkpoint import hf_to_original
from classification.nat import NAT
assert is_natten_available()
config = DinatConfig(embed_dim=16, depths=[1, 1], num_heads=[1, 1], kernel_size=3,
                     dilations=[[2], [1]], mlp_ratio=2.0, num_labels=3)
hf = DinatForImageClassification(config).eval()
with torch.no_grad():
    for p in hf.parameters():
        p.add_(0.05 * torch.randn_like(p))
ours = NAT(depths=(1, 1), num_heads=(1, 1), embed_dim=16, mlp_ratio=2.0, kernel_size=3,
           dilations=[[2], [1]], num_classes=3, drop_path_rate=0.0).eval()
ours.load_state_dict(hf_to_original(hf.state_dict()))
x = torch.randn(1, 3, 32, 32)
with torch.no_grad():
    err = (hf(pixel_values=x).logits - ours(x)).abs().max().item()
assert err < 1e-5, err
import natten
print("ok", natten.__version__, "natten_ext" in natten.__spec__.origin)
"""
)


@needs_transformers
def test_hf_dinat_on_a_machine_without_natten(tmp_path):
    res = _run(["-c", WITHOUT_NATTEN], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == "ok 0.15.1 True"
