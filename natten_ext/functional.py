"""Functional front door: fused heads-last ops, unfused heads-first ops and NATTEN 0.14 aliases."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import backends, dispatch
from .backends import reference
from .dispatch import select_backend
from .ops import neighborhood_attention
from .utils import checks
from .utils.checks import BoolOrTuple, IntOrTuple

# --------------------------------------------------------------------------- fused (heads-last)


# Validated calls, by signature: a repeated call (same shapes, dtypes, devices, window arguments
# and forced backend) skips the checks and the backend choice. Bounded; cleared when full.
_PLANS: dict[tuple, tuple] = {}
_MAX_PLANS = 4096


def _typed(value: object) -> tuple:
    """``value`` with its type(s): ``True`` and ``1`` must not share a plan (bool is no int)."""
    if type(value) is tuple:
        return (value, tuple(type(v) for v in value))
    return (value, type(value))


def _signature(ndim, query, key, value, kernel_size, dilation, is_causal, rpb, scale):
    forced = dispatch.forced_backend()
    if forced == "natten":  # its support depends on grad mode: always check
        return None
    try:
        sig = (
            ndim, query.shape, key.shape, value.shape, query.dtype, key.dtype, value.dtype,
            query.device, key.device, value.device, query.stride(-1), key.stride(-1),
            value.stride(-1), _typed(kernel_size), _typed(dilation), _typed(is_causal),
            None if rpb is None else (type(rpb), rpb.shape, rpb.dtype, rpb.device),
            _typed(scale), forced,
        )  # fmt: skip
        hash(sig)
    except (AttributeError, TypeError):  # not tensors, lists as arguments: the full path
        return None
    if type(query) is not torch.Tensor:
        return None  # tensor subclasses (fake, functional) go the full way
    return sig


def _fused(
    ndim: int,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    kernel_size: IntOrTuple,
    dilation: IntOrTuple,
    is_causal: BoolOrTuple,
    rpb: Tensor | None,
    scale: float | None,
) -> Tensor:
    sig = None
    if not torch.compiler.is_compiling():
        sig = _signature(ndim, query, key, value, kernel_size, dilation, is_causal, rpb, scale)
        plan = _PLANS.get(sig) if sig is not None else None
        if plan is not None:
            return neighborhood_attention(query, key, value, rpb, *plan)
    spatial = checks.check_fused_inputs(query, key, value, ndim)
    ks, dil, causal = checks.check_window_args(kernel_size, dilation, is_causal, ndim)
    checks.check_spatial_extent(spatial, ks, dil)
    checks.check_rpb(rpb, query.shape[-2], ks, causal, query)
    scale = checks.check_scale(scale, query.shape[-1])
    backend = select_backend(query, key, value, rpb, ks, dil, causal)
    plan = (ks, dil, causal, scale, backend)
    if sig is not None:
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.clear()
        _PLANS[sig] = plan
    return neighborhood_attention(query, key, value, rpb, *plan)


def na1d(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    kernel_size: IntOrTuple,
    dilation: IntOrTuple = 1,
    is_causal: BoolOrTuple = False,
    rpb: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """1-D neighborhood attention on ``[B, L, heads, D]``; returns ``[B, L, heads, D]``."""
    return _fused(1, query, key, value, kernel_size, dilation, is_causal, rpb, scale)


def na2d(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    kernel_size: IntOrTuple,
    dilation: IntOrTuple = 1,
    is_causal: BoolOrTuple = False,
    rpb: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """2-D neighborhood attention on ``[B, H, W, heads, D]``; returns the same shape."""
    return _fused(2, query, key, value, kernel_size, dilation, is_causal, rpb, scale)


def na3d(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    kernel_size: IntOrTuple,
    dilation: IntOrTuple = 1,
    is_causal: BoolOrTuple = False,
    rpb: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """3-D neighborhood attention on ``[B, D, H, W, heads, head_dim]``; returns the same shape."""
    return _fused(3, query, key, value, kernel_size, dilation, is_causal, rpb, scale)


# ------------------------------------------------------------------------ unfused (heads-first)


def _unfused_module(*tensors: Tensor):
    """Triton kernels where they can run (CUDA, half/single precision), else the reference.

    A forced backend applies: ``reference`` always takes the reference; ``triton`` raises where
    the kernels cannot serve; the others (fused-only backends) fall back to the reference."""
    forced = dispatch.forced_backend()
    fast = backends.unfused_triton() if forced in (None, "triton") else None
    if fast is not None and fast.can_serve(*tensors):
        return fast
    if forced == "triton":
        raise RuntimeError(
            "backend 'triton' was forced but cannot serve this unfused call: it needs CUDA "
            f"tensors of float16, bfloat16 or float32, got {tensors[0].dtype} on "
            f"{tensors[0].device}"
        )
    return reference


def _qk(ndim, query, key, kernel_size, dilation, is_causal, rpb) -> Tensor:
    checks.check_same_tensors(("query", "key"), (query, key))
    checks.check_heads_first("query", query, ndim, "head_dim")
    checks.check_heads_first("key", key, ndim, "head_dim")
    if query.shape != key.shape:
        raise ValueError(
            f"query and key must have the same shape, got {tuple(query.shape)} and "
            f"{tuple(key.shape)}"
        )
    ks, dil, causal = checks.check_window_args(kernel_size, dilation, is_causal, ndim)
    checks.check_spatial_extent(query.shape[2:-1], ks, dil)
    checks.check_rpb(rpb, query.shape[1], ks, causal, query)
    return _unfused_module(query, key).qk(query, key, rpb, ks, dil, causal)


def _av(ndim, attn, value, kernel_size, dilation, is_causal) -> Tensor:
    checks.check_same_tensors(("attn", "value"), (attn, value))
    checks.check_heads_first("attn", attn, ndim, "window")
    checks.check_heads_first("value", value, ndim, "head_dim")
    ks, dil, causal = checks.check_window_args(kernel_size, dilation, is_causal, ndim)
    window = math.prod(ks)
    expected = (*value.shape[:-1], window)
    if tuple(attn.shape) != expected:
        raise ValueError(
            f"attn must have shape [batch, heads, *spatial, prod(kernel_size)] = {expected} to "
            f"match value {tuple(value.shape)}, got {tuple(attn.shape)}"
        )
    checks.check_spatial_extent(value.shape[2:-1], ks, dil)
    return _unfused_module(attn, value).av(attn, value, ks, dil, causal)


def na1d_qk(query, key, kernel_size, dilation=1, is_causal=False, rpb=None) -> Tensor:
    """Weights ``[B, heads, L, k]`` from ``[B, heads, L, D]`` (scale q beforehand)."""
    return _qk(1, query, key, kernel_size, dilation, is_causal, rpb)


def na2d_qk(query, key, kernel_size, dilation=1, is_causal=False, rpb=None) -> Tensor:
    """Weights ``[B, heads, H, W, kh*kw]`` from ``[B, heads, H, W, D]`` (scale q beforehand)."""
    return _qk(2, query, key, kernel_size, dilation, is_causal, rpb)


def na3d_qk(query, key, kernel_size, dilation=1, is_causal=False, rpb=None) -> Tensor:
    """Weights ``[B, heads, D, H, W, kd*kh*kw]`` from ``[B, heads, D, H, W, head_dim]``."""
    return _qk(3, query, key, kernel_size, dilation, is_causal, rpb)


def na1d_av(attn, value, kernel_size, dilation=1, is_causal=False) -> Tensor:
    """Apply weights ``[B, heads, L, k]`` to values ``[B, heads, L, D]``."""
    return _av(1, attn, value, kernel_size, dilation, is_causal)


def na2d_av(attn, value, kernel_size, dilation=1, is_causal=False) -> Tensor:
    """Apply weights ``[B, heads, H, W, kh*kw]`` to values ``[B, heads, H, W, D]``."""
    return _av(2, attn, value, kernel_size, dilation, is_causal)


def na3d_av(attn, value, kernel_size, dilation=1, is_causal=False) -> Tensor:
    """Apply weights ``[B, heads, D, H, W, kd*kh*kw]`` to values ``[B, heads, D, H, W, D]``."""
    return _av(3, attn, value, kernel_size, dilation, is_causal)


# ------------------------------------------------------- NATTEN 0.14 names and argument orders


def natten1dqkrpb(query, key, rpb, kernel_size, dilation) -> Tensor:
    return na1d_qk(query, key, kernel_size, dilation, rpb=rpb)


def natten2dqkrpb(query, key, rpb, kernel_size, dilation) -> Tensor:
    return na2d_qk(query, key, kernel_size, dilation, rpb=rpb)


def natten1dqk(query, key, kernel_size, dilation) -> Tensor:
    return na1d_qk(query, key, kernel_size, dilation)


def natten2dqk(query, key, kernel_size, dilation) -> Tensor:
    return na2d_qk(query, key, kernel_size, dilation)


def natten1dav(attn, value, kernel_size, dilation) -> Tensor:
    return na1d_av(attn, value, kernel_size, dilation)


def natten2dav(attn, value, kernel_size, dilation) -> Tensor:
    return na2d_av(attn, value, kernel_size, dilation)
