"""MAC counting of neighborhood attention with fvcore and torch.utils.flop_counter (spec §6)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from natten_ext import NeighborhoodAttention1D, NeighborhoodAttention2D
from natten_ext.flops import get_flops, na_macs


def expected_module_macs(b, spatial, dim, heads, window, rpb=True):
    n = 1
    for s in spatial:
        n *= s
    linear = b * n * dim * 3 * dim + b * n * dim * dim
    attention = 2 * b * n * dim * window + (b * heads * n * window if rpb else 0)
    return linear + attention


def test_na_macs_formula():
    # B*h*N*D*K twice plus B*h*N*K for the bias: B=2, N=56*56, h=2, D=32, K=49.
    assert (
        na_macs((2, 56, 56, 2, 32), (7, 7), True) == 2 * 2 * 2 * 3136 * 32 * 49 + 2 * 2 * 3136 * 49
    )
    assert na_macs((1, 100, 4, 16), (9,), False) == 2 * 1 * 4 * 100 * 16 * 9


@pytest.mark.parametrize("rpb", [True, False])
def test_fvcore_counts_module(rpb):
    pytest.importorskip("fvcore")
    m = NeighborhoodAttention2D(64, 2, 7, dilation=2, rel_pos_bias=rpb)
    x = torch.randn(2, 14, 16, 64)
    assert get_flops(m, x) == expected_module_macs(2, (14, 16), 64, 2, 49, rpb)


def test_fvcore_counts_padded_module():
    pytest.importorskip("fvcore")
    # 5 < 7*2: the module pads to 14 tokens, attends, then crops before the projection.
    m = NeighborhoodAttention1D(32, 2, 7, dilation=2)
    x = torch.randn(1, 5, 32)
    qkv = 14 * 32 * 96
    proj = 5 * 32 * 32
    attention = na_macs((1, 14, 2, 16), (7,), True)
    assert get_flops(m, x) == qkv + proj + attention


def test_torch_flop_counter_forward_and_backward():
    m = NeighborhoodAttention2D(64, 2, 7)
    x = torch.randn(2, 14, 14, 64, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        out = m(x)
    linear_flops = 2 * (2 * 196 * 64 * 192 + 2 * 196 * 64 * 64)
    na = 2 * na_macs((2, 14, 14, 2, 32), (7, 7), True)
    assert counter.get_total_flops() == linear_flops + na
    with FlopCounterMode(display=False) as counter:
        out.sum().backward()
    na_bwd = 4 * na_macs((2, 14, 14, 2, 32), (7, 7), False)
    counts = counter.get_flop_counts()["Global"]
    assert counts[torch.ops.natten_ext.na_backward] == na_bwd
