"""The unfused ops (``na*d_qk`` / ``na*d_av``, NATTEN's heads-first API) on CUDA through Triton.

Same contract as ``reference.qk`` / ``reference.av`` (weights ``[B, h, *spatial, K]`` with -inf
on invalid causal slots; half precision read and written as is, summed in float32), with
gradients for q, k, rpb and attn, v. The kernels gather rows by the neighbour tables of
``utils.windows``; key/value gradients use the inverse tables (for each key, the queries whose
windows hold it), so nothing is accumulated with atomics and the results are deterministic.
"""

from __future__ import annotations

import functools
import math

import torch

from ..utils.windows import window_table
from . import triton_fused

try:
    import triton

    from . import _triton_unfused_kernels as _k
except ImportError:  # pragma: no cover - exercised only where triton is missing
    triton = None
    _k = None

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_BLOCK_N = 16


def can_serve(*tensors: torch.Tensor) -> bool:
    """Whether these heads-first tensors can run here (CUDA, or Triton's CPU interpreter)."""
    if _k is None or not triton_fused.is_available():
        return False
    t = tensors[0]
    on_device = t.device.type == "cuda" or (triton_fused._interpreting() and t.device.type == "cpu")
    return on_device and all(x.dtype in _DTYPES for x in tensors)


@functools.lru_cache(maxsize=64)
def _inverse_tables_cpu(spatial, kernel_size, dilation, is_causal):
    """For each key: the flat (query, slot) weight index, the query, and a valid flag, padded to
    the largest number of windows a key belongs to."""
    key_idx, valid, _ = window_table(spatial, kernel_size, dilation, is_causal)
    n, k = key_idx.shape
    pair_n, pair_j = torch.nonzero(valid, as_tuple=True)
    keys = key_idx[pair_n, pair_j]
    order = torch.argsort(keys, stable=True)
    keys = keys[order]
    counts = torch.bincount(keys, minlength=n)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(keys)) - starts[keys]
    m = int(counts.max())
    w_idx = torch.zeros(n, m, dtype=torch.int32)
    r_idx = torch.zeros(n, m, dtype=torch.int32)
    inv_valid = torch.zeros(n, m, dtype=torch.int8)
    w_idx[keys, rank] = (pair_n * k + pair_j)[order].to(torch.int32)
    r_idx[keys, rank] = pair_n[order].to(torch.int32)
    inv_valid[keys, rank] = 1
    return w_idx, r_idx, inv_valid


_device_tables: dict[tuple, tuple] = {}


def _tables(spatial, kernel_size, dilation, is_causal, device):
    """int32 neighbour tables (key, valid, bias, flat weight index) and inverse tables."""
    args = (tuple(spatial), tuple(kernel_size), tuple(dilation), tuple(bool(c) for c in is_causal))
    cache_key = (*args, str(device))
    hit = _device_tables.get(cache_key)
    if hit is None:
        key_idx, valid, bias_idx = window_table(*args)
        n, k = key_idx.shape
        w_self = (torch.arange(n)[:, None] * k + torch.arange(k)[None, :]).to(torch.int32)
        fwd = (key_idx.to(torch.int32), valid.to(torch.int8), bias_idx.to(torch.int32), w_self)
        hit = tuple(t.to(device) for t in (*fwd, *_inverse_tables_cpu(*args)))
        if len(_device_tables) > 64:
            _device_tables.clear()
        _device_tables[cache_key] = hit
    return hit


def _block_m(m: int, block_d: int) -> int:
    return max(2, min(triton_fused._pow2(m), 8192 // (_BLOCK_N * block_d)))


def _pair_dot(a, b, tables, rpb, heads, fill, out_dtype):
    """[BH, N, D] x [BH, N, D] -> [BH, N, K] pair products over the neighbour table."""
    key, valid, bias, _ = tables[:4]
    bh, n, d = a.shape
    k = key.shape[1]
    out = torch.empty(bh, n, k, dtype=out_dtype, device=a.device)
    block_d = triton_fused._pow2(d)
    rpb_arg = a if rpb is None else rpb.reshape(heads, -1).contiguous()
    grid = (triton.cdiv(n, _BLOCK_N), bh)
    _k._pair_dot_kernel[grid](
        a, b, out, rpb_arg, key, valid, bias, n, k, heads,
        0 if rpb is None else rpb_arg.shape[1],
        D=d, BLOCK_N=_BLOCK_N, BLOCK_M=_block_m(k, block_d), BLOCK_D=block_d,
        HAS_RPB=rpb is not None, FILL=fill,
    )  # fmt: skip
    return out


def _weighted_gather(w, rows, w_idx, r_idx, valid, out_dtype):
    """OUT[bh, n] = sum_m valid * w[bh, w_idx[n, m]] * rows[bh, r_idx[n, m]]."""
    bh, n, d = rows.shape
    m = w_idx.shape[1]
    out = torch.empty(bh, n, d, dtype=out_dtype, device=rows.device)
    block_d = triton_fused._pow2(d)
    grid = (triton.cdiv(n, _BLOCK_N), bh)
    _k._weighted_gather_kernel[grid](
        w, rows, out, w_idx, r_idx, valid, n, m, w[0].numel(),
        D=d, BLOCK_N=_BLOCK_N, BLOCK_M=_block_m(m, block_d), BLOCK_D=block_d,
    )  # fmt: skip
    return out


def _flat(t: torch.Tensor) -> torch.Tensor:
    """Heads-first ``[B, h, *spatial, X]`` -> contiguous ``[B*h, N, X]``."""
    return t.reshape(t.shape[0] * t.shape[1], -1, t.shape[-1]).contiguous()


class _QK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, rpb, tables, heads):
        ctx.save_for_backward(q, k, rpb)
        ctx.tables, ctx.heads = tables, heads
        return _pair_dot(q, k, tables, rpb, heads, float("-inf"), q.dtype)

    @staticmethod
    def backward(ctx, grad):
        q, k, rpb = ctx.saved_tensors
        key, valid, bias, w_self, inv_w, inv_r, inv_valid = ctx.tables
        grad = grad.contiguous()
        dq = dk = drpb = None
        if ctx.needs_input_grad[0]:
            dq = _weighted_gather(grad, k, w_self, key, valid, q.dtype)
        if ctx.needs_input_grad[1]:
            dk = _weighted_gather(grad, q, inv_w, inv_r, inv_valid, k.dtype)
        if rpb is not None and ctx.needs_input_grad[2]:
            g = grad.float().masked_fill(valid == 0, 0)
            g = g.reshape(-1, ctx.heads, *g.shape[1:]).sum(0)  # [h, N, K]
            flat = torch.zeros(ctx.heads, rpb[0].numel(), dtype=torch.float32, device=g.device)
            flat.index_add_(1, bias.reshape(-1).long(), g.reshape(ctx.heads, -1))
            drpb = flat.reshape(rpb.shape).to(rpb.dtype)
        return dq, dk, drpb, None, None


class _AV(torch.autograd.Function):
    @staticmethod
    def forward(ctx, attn, v, tables):
        ctx.save_for_backward(attn, v)
        ctx.tables = tables
        key, valid, _, w_self = tables[:4]
        return _weighted_gather(attn, v, w_self, key, valid, v.dtype)

    @staticmethod
    def backward(ctx, grad):
        attn, v = ctx.saved_tensors
        inv_w, inv_r, inv_valid = ctx.tables[4:]
        grad = grad.contiguous()
        dattn = dv = None
        if ctx.needs_input_grad[0]:
            dattn = _pair_dot(grad, v, ctx.tables, None, 1, 0.0, attn.dtype)
        if ctx.needs_input_grad[1]:
            dv = _weighted_gather(attn, grad, inv_w, inv_r, inv_valid, v.dtype)
        return dattn, dv, None


def qk(query, key, rpb, kernel_size, dilation, is_causal) -> torch.Tensor:
    """Heads-first ``[B, h, *spatial, D]`` -> weights ``[B, h, *spatial, K]`` (unscaled logits)."""
    b, h, *spatial, _ = query.shape
    tables = _tables(spatial, kernel_size, dilation, is_causal, query.device)
    out = _QK.apply(_flat(query), _flat(key), rpb, tables, h)
    return out.reshape(b, h, *spatial, math.prod(kernel_size))


def av(attn, value, kernel_size, dilation, is_causal) -> torch.Tensor:
    """Weights ``[B, h, *spatial, K]`` applied to values ``[B, h, *spatial, D]``."""
    b, h, *spatial, d = value.shape
    tables = _tables(spatial, kernel_size, dilation, is_causal, value.device)
    out = _AV.apply(_flat(attn), _flat(value), tables)
    return out.reshape(b, h, *spatial, d)
