"""Brute-force oracle for neighborhood attention, written from the spec (na_operator.md §1-3, §7).

It enumerates every (query, key) pair, builds the explicit boolean mask and the RPB index for the
whole grid, and runs plain masked softmax attention in float64. Independent of natten_ext's code.
"""

from __future__ import annotations

import itertools
import math

import torch


def axis_neighbors(length: int, k: int, d: int, causal: bool) -> list[dict[int, int]]:
    """For each query i: {key position: rpb index} on one axis."""
    result = []
    for i in range(length):
        g, ip = i % d, i // d
        group_len = math.ceil((length - g) / d)
        if causal:
            ys = range(max(ip - k + 1, 0), ip + 1)
        else:
            y0 = min(max(ip - k // 2, 0), group_len - k)
            ys = range(y0, y0 + k)
        result.append({g + d * y: (k - 1) + (y - ip) for y in ys})
    return result


def mask_and_bias_index(spatial, kernel_size, dilation, is_causal):
    """Boolean mask [N, N] and per-axis rpb indices [N, N, ndim] (row-major token order)."""
    per_axis = [
        axis_neighbors(L, k, d, c) for L, k, d, c in zip(spatial, kernel_size, dilation, is_causal)
    ]
    coords = list(itertools.product(*(range(L) for L in spatial)))
    n = len(coords)
    mask = torch.zeros(n, n, dtype=torch.bool)
    index = torch.zeros(n, n, len(spatial), dtype=torch.long)
    for a, qc in enumerate(coords):
        for b, kc in enumerate(coords):
            ok = all(kc[ax] in per_axis[ax][qc[ax]] for ax in range(len(spatial)))
            if ok:
                mask[a, b] = True
                for ax in range(len(spatial)):
                    index[a, b, ax] = per_axis[ax][qc[ax]][kc[ax]]
    return mask, index


def oracle_attention(q, k, v, kernel_size, dilation, is_causal, rpb=None, scale=None):
    """Heads-last ``[B, *spatial, heads, D]`` in, same out; float64 math, differentiable."""
    spatial = tuple(q.shape[1:-2])
    heads, dim = q.shape[-2], q.shape[-1]
    scale = dim**-0.5 if scale is None else scale
    mask, index = mask_and_bias_index(spatial, kernel_size, dilation, is_causal)
    b = q.shape[0]
    qf, kf, vf = (t.double().reshape(b, -1, heads, dim).transpose(1, 2) for t in (q, k, v))
    logits = scale * qf @ kf.transpose(-1, -2)  # [B, h, N, N]
    if rpb is not None:
        bias = rpb.double()[(slice(None), *index.unbind(-1))]  # [h, N, N]
        logits = logits + bias
    logits = logits.masked_fill(~mask, float("-inf"))
    out = torch.softmax(logits, dim=-1) @ vf
    return out.transpose(1, 2).reshape(q.shape).to(torch.float64)


def oracle_weights(q, k, kernel_size, dilation, is_causal, rpb=None):
    """Unfused-API weights ``[B, h, *spatial, K]`` (no scale; -inf on invalid slots)."""
    spatial = tuple(q.shape[2:-1])
    per_axis = [
        axis_neighbors(L, kk, d, c)
        for L, kk, d, c in zip(spatial, kernel_size, dilation, is_causal)
    ]
    ndim = len(spatial)
    out = torch.full((*q.shape[:-1], math.prod(kernel_size)), float("-inf"), dtype=torch.float64)
    for qc in itertools.product(*(range(L) for L in spatial)):
        # Slot j of an axis is the j-th window position: causal windows are sorted, start-aligned.
        slots = []
        for ax in range(ndim):
            keys = sorted(per_axis[ax][qc[ax]])
            slots.append(keys)
        for combo in itertools.product(*(range(kk) for kk in kernel_size)):
            if any(combo[ax] >= len(slots[ax]) for ax in range(ndim)):
                continue
            kc = tuple(slots[ax][combo[ax]] for ax in range(ndim))
            flat = 0
            for ax in range(ndim):
                flat = flat * kernel_size[ax] + combo[ax]
            val = (
                q[(slice(None), slice(None), *qc)].double()
                * k[(slice(None), slice(None), *kc)].double()
            ).sum(-1)
            if rpb is not None:
                idx = tuple(per_axis[ax][qc[ax]][kc[ax]] for ax in range(ndim))
                val = val + rpb.double()[(slice(None), *idx)]
            out[(slice(None), slice(None), *qc, flat)] = val
    return out


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.double(), ref.double()
    denom = ref.norm().item()
    return (x - ref).norm().item() / max(denom, 1e-30)
