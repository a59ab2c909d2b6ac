"""Triton kernels of the unfused ops (``na*d_qk`` / ``na*d_av`` and their gradients).

Driven by the neighbour tables of ``utils.windows`` (every dimensionality, dilation and causal
flag alike): tensors are contiguous ``[B*heads, N, X]``; a program owns ``BLOCK_N`` rows of one
(batch, head) and walks its ``M`` table slots ``BLOCK_M`` at a time, gathering whole rows.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _pair_dot_kernel(
    A, B, OUT, RPB, KEY, VALID, BIAS,
    N, M, H, NBIAS,
    D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_RPB: tl.constexpr, FILL: tl.constexpr,
):  # fmt: skip
    """OUT[bh, n, m] = <A[bh, n], B[bh, KEY[n, m]]> (+ RPB[h, BIAS[n, m]]) on valid slots,
    FILL elsewhere: the qk logits, and the attention-weight gradient of av."""
    bh = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    dd = tl.arange(0, BLOCK_D)
    base = bh.to(tl.int64) * N * D
    a = tl.load(
        A + base + rows[:, None] * D + dd[None, :],
        mask=row_ok[:, None] & (dd[None, :] < D),
        other=0.0,
    ).to(tl.float32)
    for m0 in range(0, M, BLOCK_M):
        cols = m0 + tl.arange(0, BLOCK_M)
        ok = row_ok[:, None] & (cols[None, :] < M)
        slot = rows[:, None] * M + cols[None, :]
        key = tl.load(KEY + slot, mask=ok, other=0)
        valid = tl.load(VALID + slot, mask=ok, other=0) != 0
        b = tl.load(
            B + base + key[:, :, None] * D + dd[None, None, :],
            mask=(ok & valid)[:, :, None] & (dd[None, None, :] < D),
            other=0.0,
        ).to(tl.float32)
        out = tl.sum(a[:, None, :] * b, 2)
        if HAS_RPB:
            bias = tl.load(BIAS + slot, mask=ok, other=0)
            rpb_h = RPB + (bh % H) * NBIAS
            out += tl.load(rpb_h + bias, mask=ok & valid, other=0.0).to(tl.float32)
        out = tl.where(valid, out, FILL)
        tl.store(OUT + bh.to(tl.int64) * N * M + slot, out.to(OUT.dtype.element_ty), mask=ok)


@triton.jit
def _weighted_gather_kernel(
    W, ROWS, OUT, WIDX, RIDX, VALID,
    N, M, W_ROW,
    D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """OUT[bh, n] = sum_m VALID[n, m] * W[bh, WIDX[n, m]] * ROWS[bh, RIDX[n, m]] (fp32 sums).

    With the neighbour tables (WIDX = n*K + m, RIDX = key) this is av and dq; with the inverse
    tables (the queries whose windows hold key n) it is dk and dv, without atomics."""
    bh = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    dd = tl.arange(0, BLOCK_D)
    base = bh.to(tl.int64) * N * D
    acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        cols = m0 + tl.arange(0, BLOCK_M)
        ok = row_ok[:, None] & (cols[None, :] < M)
        slot = rows[:, None] * M + cols[None, :]
        valid = ok & (tl.load(VALID + slot, mask=ok, other=0) != 0)
        widx = tl.load(WIDX + slot, mask=valid, other=0)
        ridx = tl.load(RIDX + slot, mask=valid, other=0)
        w = tl.load(W + bh.to(tl.int64) * W_ROW + widx, mask=valid, other=0.0).to(tl.float32)
        r = tl.load(
            ROWS + base + ridx[:, :, None] * D + dd[None, None, :],
            mask=valid[:, :, None] & (dd[None, None, :] < D),
            other=0.0,
        ).to(tl.float32)
        acc += tl.sum(w[:, :, None] * r, 1)
    tl.store(
        OUT + base + rows[:, None] * D + dd[None, :],
        acc.to(OUT.dtype.element_ty),
        mask=row_ok[:, None] & (dd[None, :] < D),
    )
