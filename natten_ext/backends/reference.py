"""Reference backend: plain PyTorch on any device, every dtype, autograd for q, k, v and rpb.

Attention weights are materialised as ``[B, heads, N, K]`` (N tokens, K window size) but keys and
values are gathered a few window slots at a time, so memory grows with N*K, never N^2 and never
N*K*D beyond a fixed chunk budget. Half-precision inputs are computed in float32 (softmax included).
The unfused ``qk`` / ``av`` functions here back both the heads-first API and the fused reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..utils.windows import window_table

NAME = "reference"

# Elements of one gathered [B, heads, N, chunk, D] block.
_CHUNK_ELEMENTS = 1 << 24


def is_available() -> bool:
    return True


def unsupported_reason(query, key, value, rpb, kernel_size, dilation, is_causal) -> str | None:
    return None


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _chunks(tokens: int, window: int, rows: int) -> list[slice]:
    """Slices over window slots so that ``rows * tokens * chunk`` stays under the budget."""
    size = max(1, min(window, _CHUNK_ELEMENTS // max(1, rows * tokens)))
    return [slice(s, min(s + size, window)) for s in range(0, window, size)]


def _qk_forward(q, k, rpb, key_idx, valid, bias_idx):
    b, h, n, d = q.shape
    window = key_idx.shape[1]
    attn = q.new_empty(b, h, n, window)
    for cols in _chunks(n, window, b * h * d):
        attn[..., cols] = torch.einsum("bhnd,bhncd->bhnc", q, k[:, :, key_idx[:, cols]])
    if rpb is not None:
        attn += rpb.reshape(h, -1)[:, bias_idx].to(attn.dtype)
    return attn.masked_fill_(~valid, float("-inf"))


def _qk_backward(grad, q, k, rpb, key_idx, valid, bias_idx, need=(True, True, True)):
    """Gradients of ``_qk_forward`` w.r.t. q, k and rpb (None where not needed)."""
    grad = grad.masked_fill(~valid, 0)
    b, h, n, d = q.shape
    window = key_idx.shape[1]
    dq = torch.zeros_like(q) if need[0] else None
    dk = torch.zeros_like(k) if need[1] else None
    for cols in _chunks(n, window, b * h * d):
        idx = key_idx[:, cols]
        g = grad[..., cols]
        if dq is not None:
            dq += torch.einsum("bhnc,bhncd->bhnd", g, k[:, :, idx])
        if dk is not None:
            contrib = g.unsqueeze(-1) * q.unsqueeze(-2)  # [B, h, N, c, D]
            dk.index_add_(2, idx.reshape(-1), contrib.reshape(b, h, -1, d))
    drpb = None
    if rpb is not None and need[2]:
        flat = torch.zeros(h, rpb[0].numel(), dtype=grad.dtype, device=grad.device)
        flat.index_add_(1, bias_idx.reshape(-1), grad.sum(0).reshape(h, -1))
        drpb = flat.reshape(rpb.shape).to(rpb.dtype)
    return dq, dk, drpb


def _av_forward(attn, v, key_idx, valid):
    b, h, n, d = v.shape
    window = key_idx.shape[1]
    attn = attn.masked_fill(~valid, 0)
    out = torch.zeros_like(v)
    for cols in _chunks(n, window, b * h * d):
        out += torch.einsum("bhnc,bhncd->bhnd", attn[..., cols], v[:, :, key_idx[:, cols]])
    return out


def _av_backward(grad, attn, v, key_idx, valid, need=(True, True)):
    """Gradients of ``_av_forward`` w.r.t. attn and v (None where not needed)."""
    attn = attn.masked_fill(~valid, 0)
    b, h, n, d = v.shape
    window = key_idx.shape[1]
    dattn = attn.new_empty(attn.shape) if need[0] else None
    dv = torch.zeros_like(v) if need[1] else None
    for cols in _chunks(n, window, b * h * d):
        idx = key_idx[:, cols]
        if dattn is not None:
            dattn[..., cols] = torch.einsum("bhnd,bhncd->bhnc", grad, v[:, :, idx])
        if dv is not None:
            contrib = attn[..., cols].unsqueeze(-1) * grad.unsqueeze(-2)
            dv.index_add_(2, idx.reshape(-1), contrib.reshape(b, h, -1, d))
    if dattn is not None:
        dattn.masked_fill_(~valid, 0)
    return dattn, dv


class _QK(torch.autograd.Function):
    """attn[b, h, n, j] = <q[n], k[key[n, j]]> + rpb[h, bias[n, j]]; -inf on invalid slots."""

    @staticmethod
    def forward(ctx, q, k, rpb, key_idx, valid, bias_idx):
        ctx.save_for_backward(q, k, rpb, key_idx, valid, bias_idx)
        return _qk_forward(q, k, rpb, key_idx, valid, bias_idx)

    @staticmethod
    def backward(ctx, grad):
        dq, dk, drpb = _qk_backward(grad, *ctx.saved_tensors, need=ctx.needs_input_grad[:3])
        return dq, dk, drpb, None, None, None


class _AV(torch.autograd.Function):
    """out[b, h, n] = sum_j attn[n, j] * v[key[n, j]] over valid slots."""

    @staticmethod
    def forward(ctx, attn, v, key_idx, valid):
        ctx.save_for_backward(attn, v, key_idx, valid)
        return _av_forward(attn, v, key_idx, valid)

    @staticmethod
    def backward(ctx, grad):
        dattn, dv = _av_backward(grad, *ctx.saved_tensors, need=ctx.needs_input_grad[:2])
        return dattn, dv, None, None


def qk(
    query: torch.Tensor,
    key: torch.Tensor,
    rpb: torch.Tensor | None,
    kernel_size: Sequence[int],
    dilation: Sequence[int],
    is_causal: Sequence[bool],
) -> torch.Tensor:
    """Heads-first ``[B, h, *spatial, D]`` -> weights ``[B, h, *spatial, K]`` (unscaled logits)."""
    b, h, *spatial, d = query.shape
    key_idx, valid, bias_idx = window_table(spatial, kernel_size, dilation, is_causal, query.device)
    ct = _compute_dtype(query.dtype)
    attn = _QK.apply(
        query.reshape(b, h, -1, d).to(ct),
        key.reshape(b, h, -1, d).to(ct),
        rpb,
        key_idx,
        valid,
        bias_idx,
    )
    return attn.to(query.dtype).reshape(b, h, *spatial, key_idx.shape[1])


def av(
    attn: torch.Tensor,
    value: torch.Tensor,
    kernel_size: Sequence[int],
    dilation: Sequence[int],
    is_causal: Sequence[bool],
) -> torch.Tensor:
    """Weights ``[B, h, *spatial, K]`` applied to values ``[B, h, *spatial, D]``."""
    b, h, *spatial, d = value.shape
    key_idx, valid, _ = window_table(spatial, kernel_size, dilation, is_causal, value.device)
    ct = _compute_dtype(value.dtype)
    out = _AV.apply(
        attn.reshape(b, h, -1, key_idx.shape[1]).to(ct),
        value.reshape(b, h, -1, d).to(ct),
        key_idx,
        valid,
    )
    return out.to(value.dtype).reshape(b, h, *spatial, d)


def _heads_first(t: torch.Tensor, ct: torch.dtype) -> torch.Tensor:
    """``[B, *spatial, h, D]`` -> ``[B, h, N, D]`` in the compute dtype."""
    return t.flatten(1, -3).transpose(1, 2).to(ct)


def _heads_last(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``[B, h, N, X]`` -> ``[B, *spatial, h, X]`` with the spatial shape of ``like``."""
    return t.transpose(1, 2).reshape(*like.shape[:-1], t.shape[-1])


def _prepare(query, key, value, rpb, kernel_size, dilation, is_causal, scale):
    ct = _compute_dtype(query.dtype)
    spatial = query.shape[1:-2]
    tables = window_table(spatial, kernel_size, dilation, is_causal, query.device)
    q = _heads_first(query, ct) * scale
    k = _heads_first(key, ct)
    v = _heads_first(value, ct)
    return q, k, v, (None if rpb is None else rpb.to(ct)), tables


# Maps of at most this many windows' worth of tokens (N <= factor * K) attend densely through
# masked matrix products: N^2 <= factor * N*K, so memory stays O(N*K) while small maps (every map
# of a low-resolution input, the deep levels of any model) run at BLAS speed.
_DENSE_FACTOR = 8


def _use_dense(tokens: int, window: int) -> bool:
    return tokens <= _DENSE_FACTOR * window


def _dense_bias(bias, tables, tokens: int, dtype) -> tuple:
    """``[N, N]`` neighbour mask, the additive ``[h, N, N]`` RPB on neighbour pairs (None without
    RPB), the (row, key) coordinates of the valid pairs and their RPB bins.

    Logits are masked with ``masked_fill``, not by adding -inf: a non-finite key then stays out of
    the rows whose windows do not hold it (NaN + -inf would be NaN).
    """
    key_idx, valid, bias_idx = tables
    rows = torch.arange(tokens, device=key_idx.device)[:, None].expand_as(key_idx)
    pairs = (rows[valid], key_idx[valid])
    mask = torch.zeros(tokens, tokens, dtype=torch.bool, device=key_idx.device)
    mask[pairs[0], pairs[1]] = True
    full = None
    if bias is not None:
        full = torch.zeros(bias.shape[0], tokens, tokens, dtype=dtype, device=key_idx.device)
        full[:, pairs[0], pairs[1]] = bias.reshape(bias.shape[0], -1)[:, bias_idx[valid]]
    return full, mask, pairs, bias_idx[valid]


def _dense_logits(q, k, full, mask):
    logits = q @ k.transpose(-1, -2)
    if full is not None:
        logits = logits + full
    return logits.masked_fill_(~mask, float("-inf"))


def forward(query, key, value, rpb, kernel_size, dilation, is_causal, scale):
    """Fused-API forward: ``(out [B, *sp, h, D] in query's dtype, lse [B, *sp, h] float32)``."""
    q, k, v, bias, tables = _prepare(
        query, key, value, rpb, kernel_size, dilation, is_causal, scale
    )
    key_idx, valid, bias_idx = tables
    tokens, window = key_idx.shape
    # a masked product would spread a non-finite value to every row: such calls gather
    if _use_dense(tokens, window) and bool(torch.isfinite(v).all()):
        full, mask, _, _ = _dense_bias(bias, tables, tokens, q.dtype)
        logits = _dense_logits(q, k, full, mask)
        lse = torch.logsumexp(logits, dim=-1)
        out = torch.exp(logits - lse.unsqueeze(-1)) @ v
    else:
        logits = _qk_forward(q, k, bias, key_idx, valid, bias_idx)
        lse = torch.logsumexp(logits, dim=-1)
        out = _av_forward(torch.exp(logits - lse.unsqueeze(-1)), v, key_idx, valid)
    out = _heads_last(out, query).to(query.dtype).contiguous()
    return out, _heads_last(lse.unsqueeze(-1), query)[..., 0].float().contiguous()


def backward(grad_out, query, key, value, rpb, out, lse, kernel_size, dilation, is_causal, scale):
    """Exact gradients; recomputes the attention weights (memory O(N*K))."""
    q, k, v, bias, tables = _prepare(
        query, key, value, rpb, kernel_size, dilation, is_causal, scale
    )
    key_idx, valid, bias_idx = tables
    tokens, window = key_idx.shape
    d_out = _heads_first(grad_out, q.dtype)
    if _use_dense(tokens, window) and bool(torch.isfinite(v).all() and torch.isfinite(k).all()):
        full, mask, pairs, bins = _dense_bias(bias, tables, tokens, q.dtype)
        logits = _dense_logits(q, k, full, mask)
        probs = torch.exp(logits - torch.logsumexp(logits, dim=-1, keepdim=True))
        d_probs = d_out @ v.transpose(-1, -2)
        d_logits = probs * (d_probs - (d_probs * probs).sum(-1, keepdim=True))
        dq, dk, dv = d_logits @ k, d_logits.transpose(-1, -2) @ q, probs.transpose(-1, -2) @ d_out
        drpb = None
        if bias is not None:
            per_pair = d_logits[:, :, pairs[0], pairs[1]].sum(0)  # [h, valid pairs]
            flat = torch.zeros(bias.shape[0], bias[0].numel(), dtype=q.dtype, device=q.device)
            drpb = flat.index_add_(1, bins, per_pair).reshape(bias.shape)
    else:
        logits = _qk_forward(q, k, bias, key_idx, valid, bias_idx)
        probs = torch.exp(logits - torch.logsumexp(logits, dim=-1, keepdim=True))
        d_probs, dv = _av_backward(d_out, probs, v, key_idx, valid)
        d_logits = probs * (d_probs - (d_probs * probs).sum(-1, keepdim=True))
        dq, dk, drpb = _qk_backward(d_logits, q, k, bias, key_idx, valid, bias_idx)
    # Contiguous, as the op's fake implementation promises (inductor checks the strides).
    dq = _heads_last(dq * scale, query).to(query.dtype).contiguous()
    dk = _heads_last(dk, key).to(key.dtype).contiguous()
    dv = _heads_last(dv, value).to(value.dtype).contiguous()
    return dq, dk, dv, (None if drpb is None else drpb.to(rpb.dtype).contiguous())
