"""Triton kernels of the fused backend for 2-D neighborhood attention on small dilation groups.

When a tile's whole key box fits one block (dilation groups up to 8x8 positions with kernel
size up to 8, as at 7x7 maps and at every dilated level of DiNAT), a program owns one
``T0 x T1`` tile of positions in one dilation group (group coordinates, as in
``_triton_kernels``), one head, and a run of batch elements ``[b_start, b_end)``. Its keys form
one ``[RB * RP]`` block: ``RB`` rows of pitch ``RP`` (a power of two). Before the batch loop the
program builds, once, the block's additive bias-and-mask tile in registers: the relative
positional bias (in log2 units) where a key lies in the query's window and ``-inf`` elsewhere
(float16 for 16-bit inputs, float32 otherwise). Every batch element then costs two matrix
products and a softmax, with no per-pair index arithmetic or table lookup: the window logic and
the bias gather are paid once per program.

The dK/dV kernel is the converse (a key tile against the box of queries whose windows can hold
its keys). The dQ kernel reduces each element's bias gradient to the table's bins with a one-hot
matrix product and stores the program's sums to its own slice of a workspace: deterministic,
no atomics.

Loads take no masks: positions outside a group are clamped to its last row or column (their
pairs are ``-inf`` in the bias tile), and element offsets are formed from a row vector that
depends on the batch element, so that no ``[rows, head_dim]`` address or mask tensor is hoisted
out of the batch loop. The host sends only calls whose element offsets fit in 32 bits.

Pairs outside a window get ``-inf`` added, which is exact for finite inputs. A non-finite key or
value would then spread (``inf + -inf`` and ``0 * inf`` are NaN): the forward checks each batch
element's results and, where any is not finite, computes that element again with the exact
per-pair handling of ``_triton_kernels`` (a non-finite value row poisons only the queries whose
windows hold it).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._triton_kernels import _decode_axis, _query_range, _win_mask, _win_mask_t, _window


@triton.jit
def _load_rows(base, off, dd, d_on, FULL_D: tl.constexpr):
    """``[len(off), BLOCK_D]`` at ``base + off[r] + dd``. ``dd`` is clamped into the head dim
    (see ``_head_cols``), and the repeated columns past it are zeroed by ``d_on`` (1.0 inside)."""
    x = tl.load(base + (off[:, None] + dd[None, :]))
    if not FULL_D:
        x = (x.to(tl.float32) * d_on[None, :]).to(x.dtype)
    return x


@triton.jit
def _head_cols(HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """Columns to store (``dd``, valid where ``d_ok``), columns to load (``dd`` clamped into
    the head dim) and ``d_on`` (1.0 inside the head dim)."""
    dd = tl.arange(0, BLOCK_D)
    d_ok = dd < HEAD_DIM
    dl = dd
    if HEAD_DIM < BLOCK_D:
        dl = tl.minimum(dd, HEAD_DIM - 1)
    return dd, d_ok, dl, d_ok.to(tl.float32)


@triton.jit
def _store_rows(base, off, dd, x, row_ok, d_ok):
    """Store ``x`` [len(off), BLOCK_D] at ``base + off[r] + dd`` where ``row_ok`` and ``d_ok``."""
    tl.store(base + (off[:, None] + dd[None, :]), x, mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _program(n_tiles, H, B, nb, L0, L1, DIL0, DIL1, T0: tl.constexpr, T1: tl.constexpr):
    """Decode the flat program id (tiles fastest, then heads, then batch runs)."""
    idx = tl.program_id(0) % n_tiles
    rest = tl.program_id(0) // n_tiles
    h = rest % H
    b_start = (rest // H) * nb
    idx, g1, s1, lg1 = _decode_axis(idx, L1, DIL1, T1)
    idx, g0, s0, lg0 = _decode_axis(idx, L0, DIL0, T0)
    return h, b_start, tl.minimum(b_start + nb, B), g0, s0, lg0, g1, s1, lg1


@triton.jit
def _tile(s0, s1, lg0, lg1, T0: tl.constexpr, T1: tl.constexpr):
    """Group coordinates and validity of a tile's ``T0 * T1`` positions (row-major)."""
    m = tl.arange(0, T0 * T1)
    c0 = s0 + m // T1
    c1 = s1 + m % T1
    return c0, c1, (c0 < lg0) & (c1 < lg1)


@triton.jit
def _box(a0, a1, e0, e1, lg0, lg1, RB: tl.constexpr, RP: tl.constexpr):
    """The block of a box starting at (a0, a1) with extents (e0, e1): group coordinates and
    their validity."""
    n = tl.arange(0, RB * RP)
    r = n // RP
    c = n % RP
    c0 = a0 + r
    c1 = a1 + c
    return c0, c1, (r < e0) & (c < e1) & (c0 < lg0) & (c1 < lg1)


@triton.jit
def _pos_off(c0, c1, lg0, lg1, g0, g1, DIL0, DIL1, s0, s1):
    """Element offsets (strides s0, s1) of group coordinates, clamped into the group."""
    p0 = g0 + DIL0 * tl.minimum(c0, lg0 - 1)
    p1 = g1 + DIL1 * tl.minimum(c1, lg1 - 1)
    return p0 * s0 + p1 * s1


@triton.jit
def _bias_mask(
    qc0, qc1, q_ok, kc0, kc1, k_ok, lo0, hi0, lo1, hi1, RPB_h,
    K0: tl.constexpr, K1: tl.constexpr, C0: tl.constexpr, C1: tl.constexpr,
    HAS_RPB: tl.constexpr, QUERY_ROWS: tl.constexpr, BM_DTYPE: tl.constexpr,
):  # fmt: skip
    """Additive tile: rpb * log2(e) inside each query's window, -inf outside, in BM_DTYPE.

    QUERY_ROWS: rows are queries ([M, N], windows of the rows); else rows are keys ([N, M],
    windows of the columns)."""
    if QUERY_ROWS:
        mask = q_ok[:, None] & k_ok[None, :]
        mask = mask & _win_mask(kc0, lo0, hi0, K0, C0) & _win_mask(kc1, lo1, hi1, K1, C1)
        d0 = kc0[None, :] - qc0[:, None]
        d1 = kc1[None, :] - qc1[:, None]
    else:
        mask = k_ok[:, None] & q_ok[None, :]
        mask = mask & _win_mask_t(kc0, lo0, hi0, K0, C0) & _win_mask_t(kc1, lo1, hi1, K1, C1)
        d0 = kc0[:, None] - qc0[None, :]
        d1 = kc1[:, None] - qc1[None, :]
    if HAS_RPB:
        pidx = (d0 + (K0 - 1)) * (2 * K1 - 1) + d1 + (K1 - 1)
        bias = tl.load(RPB_h + pidx, mask=mask, other=0.0).to(tl.float32) * 1.4426950408889634
    else:
        bias = tl.zeros(mask.shape, dtype=tl.float32)
    return tl.where(mask, bias, float("-inf")).to(BM_DTYPE)


@triton.jit
def _fwd_element(q, k, v, bm, qk_scale, DOT_PREC: tl.constexpr, SAFE: tl.constexpr):
    """One batch element: (acc, max, sum) of the tile's queries over the key block.

    SAFE: the exact per-pair handling of non-finite keys and values; otherwise the additive
    tile alone (exact for finite inputs)."""
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale + bm.to(tl.float32)
    if SAFE:
        inside = bm != float("-inf")
        v_nf = (v.to(tl.float32) * 0.0) != 0.0
        v_bad = tl.max(v_nf.to(tl.int32), 1) > 0
        v = tl.where(v_nf, tl.zeros_like(v), v)
        s = tl.where(inside, tl.where(v_bad[None, :], float("nan"), s), float("-inf"))
    m = tl.maximum(tl.max(s, 1), -1.0e30)  # rows with no key (padding) keep a finite max
    p = tl.exp2(s - m[:, None])
    return tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC), m, tl.sum(p, 1)


@triton.jit
def _na2d_fwd_kernel(
    Q, Kt, V, O, LSE, RPB,
    sqb, sq0, sq1, sqh, skb, sk0, sk1, skh, svb, sv0, sv1, svh, sob, so0, so1, soh,
    B, H, n_tiles, nb, L0, L1, DIL0, DIL1, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, K0: tl.constexpr, K1: tl.constexpr,
    C0: tl.constexpr, C1: tl.constexpr, T0: tl.constexpr, T1: tl.constexpr,
    RB: tl.constexpr, RP: tl.constexpr, HAS_RPB: tl.constexpr, DOT_PREC: tl.constexpr,
    BM_DTYPE: tl.constexpr,
):  # fmt: skip
    """Output and logsumexp (natural log, [B, L0, L1, H] contiguous) of one tile's queries."""
    FULL_D: tl.constexpr = HEAD_DIM == BLOCK_D
    qk_scale = tl.cast(qk_scale, tl.float32)  # inductor passes Python floats as float64
    h, b_start, b_end, g0, s0, lg0, g1, s1, lg1 = _program(n_tiles, H, B, nb, L0, L1, DIL0, DIL1,
                                                             T0, T1)  # fmt: skip
    qc0, qc1, q_ok = _tile(s0, s1, lg0, lg1, T0, T1)
    lo0, hi0 = _window(qc0, lg0, K0, C0)
    lo1, hi1 = _window(qc1, lg1, K1, C1)
    ks0, _ = _window(s0, lg0, K0, C0)
    ks1, _ = _window(s1, lg1, K1, C1)
    kc0, kc1, k_ok = _box(ks0, ks1, T0 + K0 - 1, T1 + K1 - 1, lg0, lg1, RB, RP)
    # The additive bias-and-mask tile: built once, used for every batch element of the run.
    bm = _bias_mask(qc0, qc1, q_ok, kc0, kc1, k_ok, lo0, hi0, lo1, hi1,
                    RPB + h * ((2 * K0 - 1) * (2 * K1 - 1)), K0, K1, C0, C1, HAS_RPB, True,
                    BM_DTYPE)  # fmt: skip

    dd, d_ok, dl, d_on = _head_cols(HEAD_DIM, BLOCK_D)
    q_row = h * sqh + _pos_off(qc0, qc1, lg0, lg1, g0, g1, DIL0, DIL1, sq0, sq1)
    o_row = h * soh + _pos_off(qc0, qc1, lg0, lg1, g0, g1, DIL0, DIL1, so0, so1)
    l_row = _pos_off(qc0, qc1, lg0, lg1, g0, g1, DIL0, DIL1, L1 * H, H) + h
    k_row = h * skh + _pos_off(kc0, kc1, lg0, lg1, g0, g1, DIL0, DIL1, sk0, sk1)
    v_row = h * svh + _pos_off(kc0, kc1, lg0, lg1, g0, g1, DIL0, DIL1, sv0, sv1)
    for i in range(0, b_end - b_start):
        b = b_start + i
        q = _load_rows(Q, b * sqb + q_row, dl, d_on, FULL_D)
        k = _load_rows(Kt, b * skb + k_row, dl, d_on, FULL_D)
        v = _load_rows(V, b * svb + v_row, dl, d_on, FULL_D)
        acc, m, l = _fwd_element(q, k, v, bm, qk_scale, DOT_PREC, False)
        bad = tl.max(((acc * 0.0) != 0.0).to(tl.int32), 1) | ((l * 0.0) != 0.0).to(tl.int32)
        if tl.max(bad, 0) > 0:  # a non-finite input reached this element: compute it exactly
            acc, m, l = _fwd_element(q, k, v, bm, qk_scale, DOT_PREC, True)
        l_safe = tl.where(l > 0.0, l, 1.0)
        row_ok = q_ok & (b < B)  # (b < B always holds: it keeps the mask inside the loop)
        _store_rows(O, b * sob + o_row, dd, (acc / l_safe[:, None]).to(O.dtype.element_ty),
                    row_ok, d_ok)  # fmt: skip
        lse = (m + tl.log2(l_safe)) * 0.6931471805599453
        tl.store(LSE + b * (L0 * L1 * H) + l_row, lse, mask=row_ok)


@triton.jit
def _na2d_bwd_dq_kernel(
    Q, Kt, V, DO, O, LSE, DELTA, DQ, RPB, DRPB,
    sqb, sq0, sq1, sqh, skb, sk0, sk1, skh, svb, sv0, sv1, svh,
    sgb, sg0, sg1, sgh, sob, so0, so1, soh,
    B, H, n_tiles, nb, L0, L1, DIL0, DIL1, qk_scale, scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, K0: tl.constexpr, K1: tl.constexpr,
    C0: tl.constexpr, C1: tl.constexpr, T0: tl.constexpr, T1: tl.constexpr,
    RB: tl.constexpr, RP: tl.constexpr, HAS_RPB: tl.constexpr, DOT_PREC: tl.constexpr,
    BU: tl.constexpr, BW: tl.constexpr, BIAS_PREC: tl.constexpr, BM_DTYPE: tl.constexpr,
):  # fmt: skip
    """dQ of one tile's queries for each batch element of the run, ``delta = rowsum(dO * O)``
    (read by the dK/dV kernel, launched next), and the run's rpb gradient.

    The bin of a pair is (u, w) with u = r - a0 + T0 - 1 and w = c - a1 + T1 - 1 (a: tile
    coordinates, (r, c): block coordinates), plus the tile's offsets. Permuting dS to rows
    (a0, r) and columns (a1, c) makes the sum over u a one-hot matrix product per element, and
    the sum over w one more at the end; the program's [BU, BW] bin sums go to its own slice
    DRPB[program, :] (summed afterwards)."""
    NBIAS: tl.constexpr = (2 * K0 - 1) * (2 * K1 - 1)
    FULL_D: tl.constexpr = HEAD_DIM == BLOCK_D
    qk_scale = tl.cast(qk_scale, tl.float32)  # inductor passes Python floats as float64
    scale = tl.cast(scale, tl.float32)
    h, b_start, b_end, g0, s0, lg0, g1, s1, lg1 = _program(n_tiles, H, B, nb, L0, L1, DIL0, DIL1,
                                                             T0, T1)  # fmt: skip
    qc0, qc1, q_ok = _tile(s0, s1, lg0, lg1, T0, T1)
    lo0, hi0 = _window(qc0, lg0, K0, C0)
    lo1, hi1 = _window(qc1, lg1, K1, C1)
    ks0, _ = _window(s0, lg0, K0, C0)
    ks1, _ = _window(s1, lg1, K1, C1)
    kc0, kc1, k_ok = _box(ks0, ks1, T0 + K0 - 1, T1 + K1 - 1, lg0, lg1, RB, RP)
    bm = _bias_mask(qc0, qc1, q_ok, kc0, kc1, k_ok, lo0, hi0, lo1, hi1, RPB + h * NBIAS, K0, K1,
                    C0, C1, HAS_RPB, True, BM_DTYPE)  # fmt: skip
    inside = bm != float("-inf")

    dd, d_ok, dl, d_on = _head_cols(HEAD_DIM, BLOCK_D)
    q_row = h * sqh + _pos_off(qc0, qc1, lg0, lg1, g0, g1, DIL0, DIL1, sq0, sq1)
    g_row = h * sgh + _pos_off(qc0, qc1, lg0, lg1, g0, g1, DIL0, DIL1, sg0, sg1)
    o_row = h * soh + _pos_off(qc0, qc1, lg0, lg1, g0, g1, DIL0, DIL1, so0, so1)
    l_row = _pos_off(qc0, qc1, lg0, lg1, g0, g1, DIL0, DIL1, L1 * H, H) + h
    k_row = h * skh + _pos_off(kc0, kc1, lg0, lg1, g0, g1, DIL0, DIL1, sk0, sk1)
    v_row = h * svh + _pos_off(kc0, kc1, lg0, lg1, g0, g1, DIL0, DIL1, sv0, sv1)
    if HAS_RPB:
        rr = tl.arange(0, T0 * RB)
        u_of = rr % RB - rr // RB + (T0 - 1)
        oh_u = (tl.arange(0, BU)[:, None] == u_of[None, :]).to(tl.float32)  # [BU, T0*RB]
    y = tl.zeros([BU, T1 * RP], dtype=tl.float32)  # the run's bias gradient, by row bin
    for i in range(0, b_end - b_start):
        b = b_start + i
        q = _load_rows(Q, b * sqb + q_row, dl, d_on, FULL_D)
        do = _load_rows(DO, b * sgb + g_row, dl, d_on, FULL_D)
        o = _load_rows(O, b * sob + o_row, dl, d_on, FULL_D)
        k = _load_rows(Kt, b * skb + k_row, dl, d_on, FULL_D)
        v = _load_rows(V, b * svb + v_row, dl, d_on, FULL_D)
        l_off = b * (L0 * L1 * H) + l_row
        lse2 = tl.load(LSE + l_off) * 1.4426950408889634
        delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
        row_ok = q_ok & (b < B)  # (b < B always holds: it keeps the mask inside the loop)
        tl.store(DELTA + l_off, delta, mask=row_ok)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale + bm.to(tl.float32)
        p = tl.where(inside, tl.exp2(s - lse2[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, input_precision=DOT_PREC)
        _store_rows(DQ, (b * (L0 * L1 * H) + l_row) * HEAD_DIM, dd,
                    (dq * scale).to(DQ.dtype.element_ty), row_ok, d_ok)  # fmt: skip
        if HAS_RPB:
            x = tl.reshape(tl.permute(tl.reshape(ds, (T0, T1, RB, RP)), (0, 2, 1, 3)),
                           (T0 * RB, T1 * RP))  # fmt: skip
            y += tl.dot(oh_u, x, input_precision=BIAS_PREC)

    if HAS_RPB:
        cc = tl.arange(0, T1 * RP)
        w_of = cc % RP - cc // RP + (T1 - 1)
        oh_w = (w_of[:, None] == tl.arange(0, BW)[None, :]).to(tl.float32)
        z = tl.dot(y, oh_w, input_precision=BIAS_PREC)  # [BU, BW]
        p0 = (K0 - 1) + ks0 - s0 - (T0 - 1) + tl.arange(0, BU)
        p1 = (K1 - 1) + ks1 - s1 - (T1 - 1) + tl.arange(0, BW)
        ok = ((p0 >= 0) & (p0 < 2 * K0 - 1))[:, None] & ((p1 >= 0) & (p1 < 2 * K1 - 1))[None, :]
        part = DRPB + tl.program_id(0).to(tl.int64) * NBIAS
        tl.store(part + p0[:, None] * (2 * K1 - 1) + p1[None, :], z, mask=ok)


@triton.jit
def _na2d_bwd_dkdv_kernel(
    Q, Kt, V, DO, LSE, DELTA, DK, DV, RPB,
    sqb, sq0, sq1, sqh, skb, sk0, sk1, skh, svb, sv0, sv1, svh, sgb, sg0, sg1, sgh,
    B, H, n_tiles, nb, L0, L1, DIL0, DIL1, qk_scale, scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, K0: tl.constexpr, K1: tl.constexpr,
    C0: tl.constexpr, C1: tl.constexpr, T0: tl.constexpr, T1: tl.constexpr,
    RB: tl.constexpr, RP: tl.constexpr, HAS_RPB: tl.constexpr, DOT_PREC: tl.constexpr,
    BM_DTYPE: tl.constexpr,
):  # fmt: skip
    """dK and dV of one key tile for each batch element of the run: the tile against the block
    of queries whose windows can hold its keys (RB rows of pitch RP)."""
    FULL_D: tl.constexpr = HEAD_DIM == BLOCK_D
    qk_scale = tl.cast(qk_scale, tl.float32)  # inductor passes Python floats as float64
    scale = tl.cast(scale, tl.float32)
    h, b_start, b_end, g0, s0, lg0, g1, s1, lg1 = _program(n_tiles, H, B, nb, L0, L1, DIL0, DIL1,
                                                             T0, T1)  # fmt: skip
    kc0, kc1, k_ok = _tile(s0, s1, lg0, lg1, T0, T1)
    qa0, qb0 = _query_range(s0, tl.minimum(s0 + T0, lg0) - 1, lg0, K0, C0)
    qa1, qb1 = _query_range(s1, tl.minimum(s1 + T1, lg1) - 1, lg1, K1, C1)
    qc0, qc1, q_ok = _box(qa0, qa1, qb0 - qa0, qb1 - qa1, lg0, lg1, RB, RP)
    lo0, hi0 = _window(qc0, lg0, K0, C0)
    lo1, hi1 = _window(qc1, lg1, K1, C1)
    bm = _bias_mask(qc0, qc1, q_ok, kc0, kc1, k_ok, lo0, hi0, lo1, hi1,
                    RPB + h * ((2 * K0 - 1) * (2 * K1 - 1)), K0, K1, C0, C1, HAS_RPB, False,
                    BM_DTYPE)  # fmt: skip
    inside = bm != float("-inf")

    dd, d_ok, dl, d_on = _head_cols(HEAD_DIM, BLOCK_D)
    k_row = h * skh + _pos_off(kc0, kc1, lg0, lg1, g0, g1, DIL0, DIL1, sk0, sk1)
    v_row = h * svh + _pos_off(kc0, kc1, lg0, lg1, g0, g1, DIL0, DIL1, sv0, sv1)
    out_row = (_pos_off(kc0, kc1, lg0, lg1, g0, g1, DIL0, DIL1, L1 * H, H) + h) * HEAD_DIM
    q_row = h * sqh + _pos_off(qc0, qc1, lg0, lg1, g0, g1, DIL0, DIL1, sq0, sq1)
    g_row = h * sgh + _pos_off(qc0, qc1, lg0, lg1, g0, g1, DIL0, DIL1, sg0, sg1)
    l_row = _pos_off(qc0, qc1, lg0, lg1, g0, g1, DIL0, DIL1, L1 * H, H) + h
    for i in range(0, b_end - b_start):
        b = b_start + i
        k = _load_rows(Kt, b * skb + k_row, dl, d_on, FULL_D)
        v = _load_rows(V, b * svb + v_row, dl, d_on, FULL_D)
        q = _load_rows(Q, b * sqb + q_row, dl, d_on, FULL_D)
        do = _load_rows(DO, b * sgb + g_row, dl, d_on, FULL_D)
        l_off = b * (L0 * L1 * H) + l_row
        lse2 = tl.load(LSE + l_off) * 1.4426950408889634
        delta = tl.load(DELTA + l_off)
        # Transposed tiles: rows are keys, columns are queries.
        st = tl.dot(k, tl.trans(q), input_precision=DOT_PREC) * qk_scale + bm.to(tl.float32)
        pt = tl.where(inside, tl.exp2(st - lse2[None, :]), 0.0)
        dv = tl.dot(pt.to(do.dtype), do, input_precision=DOT_PREC)
        dpt = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
        dk = tl.dot((pt * (dpt - delta[None, :])).to(q.dtype), q, input_precision=DOT_PREC)
        row_ok = k_ok & (b < B)  # (b < B always holds: it keeps the mask inside the loop)
        o_off = b * (L0 * L1 * H * HEAD_DIM) + out_row
        _store_rows(DK, o_off, dd, (dk * scale).to(DK.dtype.element_ty), row_ok, d_ok)
        _store_rows(DV, o_off, dd, dv.to(DV.dtype.element_ty), row_ok, d_ok)
