"""Bad input raises an error that names the argument, the value and what is allowed."""

from __future__ import annotations

import pytest
import torch

import natten_ext


def qkv(shape=(1, 8, 8, 2, 4), dtype=torch.float32):
    return tuple(torch.randn(shape, dtype=dtype) for _ in range(3))


@pytest.mark.parametrize(
    "kwargs,exc,pattern",
    [
        (dict(kernel_size=1), ValueError, r"kernel_size must be >= 2.*got 1"),
        (dict(kernel_size=(3, 3, 3)), ValueError, r"kernel_size must have one entry per spatial"),
        (dict(kernel_size=3.0), ValueError, r"kernel_size must be an int"),
        (dict(kernel_size=3, dilation=0), ValueError, r"dilation must be >= 1.*got 0"),
        (dict(kernel_size=3, dilation=3), ValueError, r"axis 0 has length 8.*3 \* 3 = 9"),
        (dict(kernel_size=(3, 9)), ValueError, r"axis 1 has length 8.*9 \* 1 = 9"),
        (dict(kernel_size=3, is_causal=1), ValueError, r"is_causal must be a bool"),
        (dict(kernel_size=3, scale=-1.0), ValueError, r"scale must be > 0"),
        (
            dict(kernel_size=3, rpb=torch.zeros(2, 3, 3)),
            ValueError,
            r"rpb must have shape.*= \(2, 5, 5\), got \(2, 3, 3\)",
        ),
        (dict(kernel_size=3, rpb=torch.zeros(3, 5, 5)), ValueError, r"rpb must have shape \(heads"),
        (dict(kernel_size=4, rpb=torch.zeros(2, 7, 7)), NotImplementedError, r"odd kernel_size"),
        (
            dict(kernel_size=3, is_causal=(True, False), rpb=torch.zeros(2, 5, 5)),
            NotImplementedError,
            r"causal",
        ),
    ],
)
def test_fused_window_argument_errors(kwargs, exc, pattern):
    q, k, v = qkv()
    with pytest.raises(exc, match=pattern):
        natten_ext.na2d(q, k, v, **kwargs)


def test_fused_tensor_errors():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"query must be 5-D \[batch, height, width, heads"):
        natten_ext.na2d(q[0], k[0], v[0], 3)
    with pytest.raises(ValueError, match="must agree in batch, spatial and heads"):
        natten_ext.na2d(q, k[:, :7], v, 3)
    with pytest.raises(ValueError, match="same head_dim"):
        natten_ext.na2d(q, torch.randn(1, 8, 8, 2, 5), v, 3)
    with pytest.raises(ValueError, match="value must have the same head_dim"):
        natten_ext.na2d(q, k, torch.randn(1, 8, 8, 2, 6), 3)
    with pytest.raises(
        ValueError, match=r"key has dtype torch\.float64 but query has torch\.float32"
    ):
        natten_ext.na2d(q, k.double(), v, 3)
    with pytest.raises(ValueError, match="floating dtype"):
        natten_ext.na2d(q.long(), k.long(), v.long(), 3)
    with pytest.raises(ValueError, match="rpb must be a tensor"):
        natten_ext.na2d(q, k, v, 3, rpb=[[0.0]])
    with pytest.raises(ValueError, match="query must be 4-D"):
        natten_ext.na1d(q, k, v, 3)


def test_unfused_errors():
    q, k, v = (t.movedim(-2, 1) for t in qkv())
    with pytest.raises(ValueError, match="same shape"):
        natten_ext.na2d_qk(q, k[:, :1], 3)
    with pytest.raises(ValueError, match=r"attn must have shape \[batch, heads, \*spatial"):
        natten_ext.na2d_av(torch.randn(1, 2, 8, 8, 8), v, 3)
    with pytest.raises(ValueError, match="axis 0 has length 8"):
        natten_ext.na2d_qk(q, k, 3, 4)


def test_backend_forcing_errors(monkeypatch):
    q, k, v = qkv()
    with pytest.raises(ValueError, match="unknown backend 'cuda-magic'"):
        natten_ext.use_backend("cuda-magic").__enter__()
    monkeypatch.setenv(natten_ext.ENV_VAR, "nope")
    with pytest.raises(ValueError, match="NATTEN_EXT_BACKEND='nope' names no backend"):
        natten_ext.na2d(q, k, v, 3)
    monkeypatch.setenv(natten_ext.ENV_VAR, "reference")
    assert natten_ext.na2d(q, k, v, 3).shape == q.shape
    if not torch.cuda.is_available():
        monkeypatch.delenv(natten_ext.ENV_VAR)
        with (
            pytest.raises(RuntimeError, match="'triton' was forced but"),
            natten_ext.use_backend("triton"),
        ):
            natten_ext.na2d(q, k, v, 3)


def test_auto_selection_on_cpu_is_the_c_kernel_where_it_builds():
    from natten_ext.backends import cpu

    q, k, v = qkv()
    want = "cpu" if cpu.is_available() else "tiled"
    assert natten_ext.select_backend(q, k, v, None, (3, 3), (1, 1), (False, False)) == want
    assert {"tiled", "reference"} <= set(natten_ext.available_backends())
