"""Tiled backend: plain PyTorch batched matrix products over query tiles, any device and dtype.

Queries are cut into tiles of a few positions per axis, inside one dilation group (sizes near 8
per axis in 2-D, 64 in 1-D, 4 in 3-D, chosen per axis to waste the fewest (query, key) pairs; a
whole group when it is short). A tile's windows together cover a box
of at most ``tile + kernel - 1`` keys per axis, so one tile is one small dense attention problem:
``[queries, box]`` scores from a matrix product, the window mask and the RPB applied from cached
tables, softmax, and a second product with the box's values. Memory stays O(N*K): each query sees
its box (about 4x its window in 2-D) instead of every key. Gradients are exact and recompute the
scores (flash-style); key/value gradients are summed back over overlapping boxes with
``index_add``. Half-precision inputs are computed in float32.

It is the automatic choice wherever the triton kernels cannot run (CPU above all). A key or value
row that is not finite must reach only the outputs whose windows contain it (a masked product
would spread it over the whole tile: 0 * NaN and NaN + -inf are NaN), so such calls take the
reference backend's per-window gathers instead.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch

from . import reference

NAME = "tiled"

_TILE = {1: 64, 2: 8, 3: 4}  # query positions per axis and tile (group coordinates)
# Scores materialised at once (B * heads * tiles * queries * box): on CPU a chunk's scores and
# gathered keys/values stay in cache (measured: 3-6x faster at NAT-Tiny's first level than one
# pass over all tiles); on GPUs, large chunks keep the launches few.
_CHUNK_ELEMENTS = {"cpu": 1 << 16}
_CHUNK_ELEMENTS_DEFAULT = 1 << 24


def is_available() -> bool:
    return True


def unsupported_reason(query, key, value, rpb, kernel_size, dilation, is_causal) -> str | None:
    return None


def _tile_size(length: int, k: int, d: int, base: int) -> int:
    """Queries per tile along one axis: the size near ``base`` that evaluates the fewest
    (query slot, box key) pairs, counting the padding of the last tile of each group."""
    lgs = [-(-(length - g) // d) for g in range(d)]
    if max(lgs) <= base + base // 2:  # short groups: one tile each (exact attention when L == k)
        return max(lgs)
    best, best_cost = base, None
    for t in range(max(2, base // 2), base + base // 2 + 1):
        cost = sum(-(-lg // t) * t * min(t + k - 1, lg) for lg in lgs) * (1 + 4 / t)
        if best_cost is None or cost < best_cost:
            best, best_cost = t, cost
    return best


def _axis_tiles(length: int, k: int, d: int, causal: bool, tile: int):
    """Per-axis tiles: (query positions [n, T], query valid [n, T], box positions [n, Tb],
    mask [n, T, Tb], rpb index [n, T, Tb]), positions in the original (dilated) axis.

    Padding slots repeat the tile's last query / box position; padded queries are invalid (their
    rows are real duplicates, so every row has a finite softmax) and padded keys are masked.
    """
    t_q = _tile_size(length, k, d, tile)
    t_b = min(t_q + k - 1, max(-(-(length - g) // d) for g in range(d)))  # <= group length
    qpos, qvalid, bpos, masks, bias = [], [], [], [], []
    for g in range(d):
        lg = -(-(length - g) // d)
        for s in range(0, lg, t_q):
            i = torch.arange(s, min(s + t_q, lg))
            if causal:
                lo = (i - k + 1).clamp(min=0)
                hi = i + 1
            else:
                lo = torch.minimum((i - k // 2).clamp(min=0), torch.tensor(lg - k))
                hi = lo + k
            box = torch.arange(int(lo[0]), int(hi[-1]))
            n_q, n_b = len(i), len(box)
            i_pad = torch.cat([i, i[-1:].expand(t_q - n_q)])
            lo_pad = torch.cat([lo, lo[-1:].expand(t_q - n_q)])
            hi_pad = torch.cat([hi, hi[-1:].expand(t_q - n_q)])
            box_pad = torch.cat([box, box[-1:].expand(t_b - n_b)])
            inside = (box_pad[None, :] >= lo_pad[:, None]) & (box_pad[None, :] < hi_pad[:, None])
            inside[:, n_b:] = False
            qpos.append(g + d * i_pad)
            qvalid.append(torch.arange(t_q) < n_q)
            bpos.append(g + d * box_pad)
            masks.append(inside)
            bias.append(((k - 1) + box_pad[None, :] - i_pad[:, None]).clamp(0, 2 * k - 2))
    return (torch.stack(qpos), torch.stack(qvalid), torch.stack(bpos), torch.stack(masks),
            torch.stack(bias))  # fmt: skip


class TilePlan(NamedTuple):
    """The tables of one (spatial shape, kernel, dilation, causal) configuration."""

    qidx: torch.Tensor  # [tiles, Q] token of each query slot
    qvalid: torch.Tensor  # [tiles, Q] real query (padding slots duplicate one)
    kidx: torch.Tensor  # [tiles, Kb] token of each box key
    mask: torch.Tensor  # [tiles, Q, Kb] key inside the query's window
    bias: torch.Tensor  # [tiles, Q, Kb] flat rpb bin (clamped where masked)
    out_index: torch.Tensor  # [N] the slot each token's output is read from
    bias_gather: torch.Tensor  # [tiles, Q*Kb] rpb bin, or the appended -inf bin where masked
    derived: dict  # tables computed per dtype on first use (see _bias_source)


@functools.lru_cache(maxsize=128)
def _plan_cpu(spatial, kernel_size, dilation, is_causal) -> tuple[torch.Tensor, ...]:
    ndim = len(spatial)
    axes = [
        _axis_tiles(spatial[a], kernel_size[a], dilation[a], is_causal[a], _TILE[ndim])
        for a in range(ndim)
    ]
    qidx = qvalid = kidx = mask = bias = None
    for a, (qp, qv, bp, m, b) in enumerate(axes):
        if a == 0:
            qidx, qvalid, kidx, mask, bias = qp, qv, bp, m, b
            continue
        n0, n1 = qidx.shape[0], qp.shape[0]
        # tiles: outer product of the axis tiles; within a tile, row-major positions
        qidx = (qidx[:, None, :, None] * spatial[a] + qp[None, :, None, :]).reshape(n0 * n1, -1)
        qvalid = (qvalid[:, None, :, None] & qv[None, :, None, :]).reshape(n0 * n1, -1)
        kidx = (kidx[:, None, :, None] * spatial[a] + bp[None, :, None, :]).reshape(n0 * n1, -1)
        tq0, tb0 = mask.shape[1:]
        tq1, tb1 = m.shape[1:]
        mask = (mask[:, None, :, None, :, None] & m[None, :, None, :, None, :]).reshape(
            n0 * n1, tq0 * tq1, tb0 * tb1
        )
        width = 2 * kernel_size[a] - 1
        bias = (bias[:, None, :, None, :, None] * width + b[None, :, None, :, None, :]).reshape(
            n0 * n1, tq0 * tq1, tb0 * tb1
        )
    n = math.prod(spatial)
    # each token is the valid query of exactly one slot: where its output is read back from
    flat_q = qidx.reshape(-1)
    slots = torch.nonzero(qvalid.reshape(-1)).squeeze(1)
    out_index = torch.empty(n, dtype=torch.long)
    out_index[flat_q[slots]] = slots
    # the rpb index of every (query, box key) pair, pointing past the table (to a -inf entry
    # appended per call) where the key is outside the query's window
    nbias = math.prod(2 * k - 1 for k in kernel_size)
    bias_gather = bias.masked_fill(~mask, nbias).reshape(mask.shape[0], -1)
    return qidx, qvalid, kidx, mask, bias, out_index, bias_gather


_device_plans: dict[tuple, TilePlan] = {}


def _plan(spatial, kernel_size, dilation, is_causal, device: torch.device) -> TilePlan:
    key = (tuple(spatial), tuple(kernel_size), tuple(dilation), tuple(is_causal), str(device))
    plan = _device_plans.get(key)
    if plan is None:
        plan = TilePlan(*(t.to(device) for t in _plan_cpu(*key[:4])), derived={})
        if len(_device_plans) > 128:
            _device_plans.clear()
        _device_plans[key] = plan
    return plan


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _heads_first(t: torch.Tensor, ct: torch.dtype) -> torch.Tensor:
    """``[B, *spatial, h, D]`` -> contiguous ``[B, h, N, D]`` in the compute dtype (row gathers
    from a contiguous tensor are copies of whole rows; from a strided view, element by element)."""
    return t.flatten(1, -3).transpose(1, 2).to(ct).contiguous()


def _chunks(n_tiles: int, per_tile: int, device: torch.device) -> list[slice]:
    budget = _CHUNK_ELEMENTS.get(device.type, _CHUNK_ELEMENTS_DEFAULT)
    size = max(1, min(n_tiles, budget // max(1, per_tile)))
    return [slice(s, min(s + size, n_tiles)) for s in range(0, n_tiles, size)]


def _gather(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``t[:, :, index]`` for a contiguous ``[B, h, N, X]`` tensor and an index of any shape.

    Gathered along the middle axis of a 3-D view: on CPU that is about 10x faster than
    ``index_select`` on the 4-D tensor's third axis (or advanced indexing)."""
    b, h, n, x = t.shape
    out = t.reshape(b * h, n, x).index_select(1, index.reshape(-1))
    return out.view(b, h, *index.shape, x)


def _bias_source(rpb, plan, ct):
    """What the logits add: for RPB, the flat ``[h, bins + 1]`` table with a -inf bin appended
    (gathered per chunk in ``_logits``); without RPB, the cached ``[1, tiles, Q, Kb]`` 0 / -inf
    window mask."""
    mask, derived = plan.mask, plan.derived
    if rpb is None:  # constant per plan and dtype
        table = derived.get(ct)
        if table is None:
            table = torch.zeros(mask.shape, dtype=ct, device=mask.device)
            table = derived[ct] = table.masked_fill_(~mask, float("-inf"))[None]
        return table
    flat = rpb.to(ct).reshape(rpb.shape[0], -1)
    return torch.cat([flat, flat.new_full((flat.shape[0], 1), float("-inf"))], 1)


def _logits(q, k, bias, plan, tiles):
    """Logits ``[B, h, t, Q, Kb]`` of the tiles ``tiles``, with their gathered queries/keys.

    The -inf of the window mask is added: callers make sure keys are finite (NaN + -inf is NaN).
    """
    qt = _gather(q, plan.qidx[tiles])  # [B, h, t, Q, D]
    kt = _gather(k, plan.kidx[tiles])  # [B, h, t, Kb, D]
    s = qt @ kt.transpose(-1, -2)
    if bias.dim() == 2:  # torch.gather with an expanded index: the fastest single-element gather
        idx = plan.bias_gather[tiles].reshape(1, -1).expand(bias.shape[0], -1)
        table = torch.gather(bias, 1, idx).view(bias.shape[0], *plan.mask[tiles].shape)
        return s.add_(table), qt, kt
    return s.add_(bias[:, tiles]), qt, kt


def _finite(*tensors: torch.Tensor) -> bool:
    """No NaN or infinity in the tensors (a sum is non-finite when any element is; a huge but
    finite sum only sends the call down the exact slow path)."""
    return all(bool(torch.isfinite(t.sum())) for t in tensors)


def _setup(query, key, value, rpb, kernel_size, dilation, is_causal, scale):
    ct = _compute_dtype(query.dtype)
    plan = _plan(tuple(query.shape[1:-2]), kernel_size, dilation, is_causal, query.device)
    q = _heads_first(query, ct) * scale
    k, v = _heads_first(key, ct), _heads_first(value, ct)
    return ct, plan, q, k, v, _bias_source(rpb, plan, ct)


def _attend(query, key, value, rpb, kernel_size, dilation, is_causal, scale, with_lse: bool):
    _, plan, q, k, v, bias = _setup(query, key, value, rpb, kernel_size, dilation, is_causal, scale)
    kidx, out_index = plan.kidx, plan.out_index
    b, h, _, d = q.shape
    n_tiles, t_q, t_b = plan.mask.shape
    out_t = q.new_empty(b, h, n_tiles, t_q, d)
    lse_t = q.new_empty(b, h, n_tiles, t_q) if with_lse else None
    for tiles in _chunks(n_tiles, b * h * t_q * t_b, q.device):
        s, _, _ = _logits(q, k, bias, plan, tiles)
        if with_lse:
            m = s.amax(-1, keepdim=True)
            total = s.sub_(m).exp_().sum(-1, keepdim=True)
            p = s.div_(total)
            lse_t[:, :, tiles] = (m + total.log()).squeeze(-1)
        else:
            p = torch.softmax(s, -1)
        out_t[:, :, tiles] = p @ _gather(v, kidx[tiles])
    out = _gather(out_t.reshape(b, h, -1, d), out_index).transpose(1, 2)
    out = out.reshape(query.shape).to(query.dtype).contiguous()  # as the op's fake promises
    if not with_lse:
        return out
    lse = _gather(lse_t.reshape(b, h, -1, 1), out_index)[..., 0].transpose(1, 2)
    return out, lse.reshape(query.shape[:-1]).float().contiguous()


def forward(query, key, value, rpb, kernel_size, dilation, is_causal, scale):
    """Fused-API forward: ``(out [B, *sp, h, D] in query's dtype, lse [B, *sp, h] float32)``."""
    if not _finite(key, value):
        return reference.forward(query, key, value, rpb, kernel_size, dilation, is_causal, scale)
    return _attend(query, key, value, rpb, kernel_size, dilation, is_causal, scale, True)


def inference(query, key, value, rpb, kernel_size, dilation, is_causal, scale):
    """Forward without the logsumexp (no gradient will be asked for)."""
    if not _finite(key, value):
        out, _ = reference.forward(query, key, value, rpb, kernel_size, dilation, is_causal, scale)
        return out
    return _attend(query, key, value, rpb, kernel_size, dilation, is_causal, scale, False)


def backward(grad_out, query, key, value, rpb, out, lse, kernel_size, dilation, is_causal, scale):
    """Exact gradients ``(dq, dk, dv, drpb)``; recomputes the tiles' probabilities."""
    if not _finite(key, value):
        return reference.backward(
            grad_out, query, key, value, rpb, out, lse, kernel_size, dilation, is_causal, scale
        )
    ct, plan, q, k, v, bias = _setup(
        query, key, value, rpb, kernel_size, dilation, is_causal, scale
    )
    qidx, kidx, out_index = plan.qidx, plan.kidx, plan.out_index
    d_out = _heads_first(grad_out, ct)
    b, h, _, d = q.shape
    n_tiles, t_q, t_b = plan.mask.shape
    valid = plan.qvalid.to(ct)
    dq_t = q.new_empty(b, h, n_tiles, t_q, d)
    dk = torch.zeros_like(k)
    dv = torch.zeros_like(v)
    d_bias = None if rpb is None else torch.zeros(h, n_tiles, t_q, t_b, dtype=ct, device=q.device)
    for tiles in _chunks(n_tiles, b * h * t_q * t_b, q.device):
        s, qt, kt = _logits(q, k, bias, plan, tiles)
        p = torch.softmax(s, -1)
        # padded query slots duplicate real queries: their output gradient must count once
        g = _gather(d_out, qidx[tiles]) * valid[tiles, :, None]
        vt = _gather(v, kidx[tiles])
        dp = g @ vt.transpose(-1, -2)
        ds = dp.sub_((dp * p).sum(-1, keepdim=True)).mul_(p)
        dq_t[:, :, tiles] = ds @ kt
        keys = kidx[tiles].reshape(-1)
        dk.view(b * h, -1, d).index_add_(1, keys, (ds.transpose(-1, -2) @ qt).view(b * h, -1, d))
        dv.view(b * h, -1, d).index_add_(1, keys, (p.transpose(-1, -2) @ g).view(b * h, -1, d))
        if d_bias is not None:
            d_bias[:, tiles] = ds.sum(0)
    dq = _gather(dq_t.reshape(b, h, -1, d), out_index) * scale
    drpb = None
    if d_bias is not None:
        flat = torch.zeros(h, rpb[0].numel(), dtype=ct, device=q.device)
        flat.index_add_(1, plan.bias.reshape(-1), d_bias.reshape(h, -1))
        drpb = flat.reshape(rpb.shape).to(rpb.dtype)

    def heads_last(t, like):
        return t.transpose(1, 2).reshape(like.shape).to(like.dtype).contiguous()

    return heads_last(dq, query), heads_last(dk, key), heads_last(dv, value), drpb
