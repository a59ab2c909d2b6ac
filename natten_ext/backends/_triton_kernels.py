"""Triton kernels of the fused neighborhood-attention backend (see ``triton_fused``).

Every kernel works on three spatial axes; 1-D and 2-D calls are 3-D calls with size-1 leading
axes (kernel 1, dilation 1). Tensors are viewed as ``[B, S0, S1, S2, heads, D]`` with arbitrary
strides except a unit stride along D.

A program owns one tile of ``T0 x T1 x T2`` positions that lie in one dilation group (group
coordinates: position = g + dilation * coordinate), for one (batch, head). The keys a query tile
needs are the union of its windows, a box of ``(T_a + K_a - 1)`` group positions per axis; it is
walked flattened, ``BLOCK_N`` keys at a time, and every (query, key) pair is masked with the
query's own window. The dK/dV kernel does the converse: for a key tile, the box of queries whose
windows can contain one of its keys.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


@triton.jit
def _decode_axis(idx, L, DIL, T: tl.constexpr):
    """Peel (tile, group) of one axis off a flat program index."""
    ntile = tl.cdiv(tl.cdiv(L, DIL), T)
    t = idx % ntile
    idx = idx // ntile
    g = idx % DIL
    idx = idx // DIL
    lg = (L - g + DIL - 1) // DIL
    return idx, g, t * T, lg


@triton.jit
def _window(i, lg, K: tl.constexpr, CAUSAL: tl.constexpr):
    """[lo, hi) of the keys of query coordinate ``i`` (group coordinates) along one axis."""
    if CAUSAL:
        lo = tl.maximum(i - (K - 1), 0)
        hi = i + 1
    else:
        lo = tl.minimum(tl.maximum(i - K // 2, 0), lg - K)
        hi = lo + K
    return lo, hi


@triton.jit
def _query_range(y0, y1, lg, K: tl.constexpr, CAUSAL: tl.constexpr):
    """[lo, hi) of the queries whose windows may hold a key in [y0, y1] (group coordinates)."""
    if CAUSAL:
        lo = y0
        hi = tl.minimum(y1 + K, lg)
    else:
        lo = tl.where(y0 <= K - 1, 0, y0 - K + 1 + K // 2)
        hi = tl.where(y1 >= lg - K, lg, y1 + K // 2 + 1)
    return lo, hi


@triton.jit
def _win_mask(kc, lo, hi, K: tl.constexpr, CAUSAL: tl.constexpr):
    """[rows=queries, cols=keys]: key coordinate ``kc`` inside the window [lo, hi)."""
    if CAUSAL:
        m = (kc[None, :] >= lo[:, None]) & (kc[None, :] < hi[:, None])
    else:  # hi == lo + K: one unsigned compare
        m = (kc[None, :] - lo[:, None]).to(tl.uint32, bitcast=True) < K
    return m


@triton.jit
def _win_mask_t(kc, lo, hi, K: tl.constexpr, CAUSAL: tl.constexpr):
    """[rows=keys, cols=queries]: key coordinate ``kc`` inside the window [lo, hi)."""
    if CAUSAL:
        m = (kc[:, None] >= lo[None, :]) & (kc[:, None] < hi[None, :])
    else:
        m = (kc[:, None] - lo[None, :]).to(tl.uint32, bitcast=True) < K
    return m


@triton.jit
def _bias_query(qc0, qc1, qc2, K1: tl.constexpr, K2: tl.constexpr):
    """Query part F of the flat rpb index: index = G(key) - F(query)."""
    return (qc0 * (2 * K1 - 1) + qc1) * (2 * K2 - 1) + qc2


@triton.jit
def _bias_key(kc0, kc1, kc2, K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr):
    """Key part G of the flat rpb index: p_a = (K_a - 1) + key_a - query_a on every axis."""
    return ((kc0 + K0 - 1) * (2 * K1 - 1) + kc1 + K1 - 1) * (2 * K2 - 1) + kc2 + K2 - 1


@triton.jit
def _rw_table(rpb_h, row0, col0, BU: tl.constexpr, w_cols, K1: tl.constexpr, K2: tl.constexpr):
    """[BU, len(w_cols)] slice rw[u, c] = rpb[row0 + u, col0 + w_cols[c]] (0 outside the table)."""
    p1 = row0 + tl.arange(0, BU)
    p2 = col0 + w_cols
    ok = ((p1 >= 0) & (p1 < 2 * K1 - 1))[:, None] & ((p2 >= 0) & (p2 < 2 * K2 - 1))[None, :]
    rw = tl.load(rpb_h + p1[:, None] * (2 * K2 - 1) + p2[None, :], mask=ok, other=0.0)
    return rw.to(tl.float32) * 1.4426950408889634  # the kernels work in log2 units


@triton.jit
def _bias_block(
    rw, u_rows, BU: tl.constexpr, A: tl.constexpr, R: tl.constexpr, B: tl.constexpr,
    P: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """2-D bias tile out[(a, b), (r, p)] = rw[u_rows[(a, r)], (b, p)] by a one-hot product.

    The bias of a pair depends on (row difference, column difference); rows (a, r) pick a row of
    the program's rpb slice ``rw`` and columns (b, p) were resolved when ``rw`` was loaded, so a
    [A*R, BU] one-hot times ``rw`` gives the tile in (a, r), (b, p) order; a permute finishes it.
    """
    oh = (u_rows[:, None] == tl.arange(0, BU)[None, :]).to(tl.float32)
    x = tl.dot(oh, rw, input_precision=PREC)
    x = tl.permute(tl.reshape(x, (A, R, B, P)), (0, 2, 1, 3))
    return tl.reshape(x, (A * B, R * P))


@triton.jit
def _contig_offset(b64, h, p0, p1, p2, L0, L1, L2, H, HEAD_DIM: tl.constexpr):
    """Element offset of a row in a contiguous [B, L0, L1, L2, H, HEAD_DIM] tensor."""
    return ((((b64 * L0 + p0) * L1 + p1) * L2 + p2) * H + h) * HEAD_DIM


@triton.jit
def _na_fwd_kernel(
    Q, Kt, V, O, LSE, RPB,
    sqb, sq0, sq1, sq2, sqh,
    skb, sk0, sk1, sk2, skh,
    svb, sv0, sv1, sv2, svh,
    sob, so0, so1, so2, soh,
    slb, sl0, sl1, sl2, slh,
    H, n_tiles, L0, L1, L2, DIL0, DIL1, DIL2, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr,
    C0: tl.constexpr, C1: tl.constexpr, C2: tl.constexpr,
    T0: tl.constexpr, T1: tl.constexpr, T2: tl.constexpr,
    BLOCK_N: tl.constexpr, HAS_RPB: tl.constexpr, DOT_PREC: tl.constexpr,
    RP2: tl.constexpr, BIAS_DOT: tl.constexpr, BU: tl.constexpr, BIAS_PREC: tl.constexpr,
):  # fmt: skip
    """Forward for one query tile. Keys walk the region in rows of pitch RP2 (>= R2); with
    BIAS_DOT (2-D rpb, whole rows per block) the bias comes from ``_bias_block``."""
    BLOCK_M: tl.constexpr = T0 * T1 * T2
    R0: tl.constexpr = T0 + K0 - 1
    R1: tl.constexpr = T1 + K1 - 1
    NBLK: tl.constexpr = (R0 * R1 * RP2 + BLOCK_N - 1) // BLOCK_N
    RB: tl.constexpr = BLOCK_N // RP2
    qk_scale = tl.cast(qk_scale, tl.float32)  # inductor passes Python floats as float64
    NBIAS: tl.constexpr = (2 * K0 - 1) * (2 * K1 - 1) * (2 * K2 - 1)

    idx = tl.program_id(0) % n_tiles  # one flat grid: tiles fastest, then batch * heads
    bh = tl.program_id(0) // n_tiles
    b = bh // H
    h = bh % H
    idx, g2, s2, lg2 = _decode_axis(idx, L2, DIL2, T2)
    idx, g1, s1, lg1 = _decode_axis(idx, L1, DIL1, T1)
    idx, g0, s0, lg0 = _decode_axis(idx, L0, DIL0, T0)

    m = tl.arange(0, BLOCK_M)
    qc0 = s0 + m // (T1 * T2)
    qc1 = s1 + (m // T2) % T1
    qc2 = s2 + m % T2
    q_ok = (qc0 < lg0) & (qc1 < lg1) & (qc2 < lg2)
    lo0, hi0 = _window(qc0, lg0, K0, C0)
    lo1, hi1 = _window(qc1, lg1, K1, C1)
    lo2, hi2 = _window(qc2, lg2, K2, C2)
    ks0, _ = _window(s0, lg0, K0, C0)
    ks1, _ = _window(s1, lg1, K1, C1)
    ks2, _ = _window(s2, lg2, K2, C2)
    fq = _bias_query(qc0, qc1, qc2, K1, K2)
    if BIAS_DOT:
        # rows (a1, zr) of a block -> u = z1 - a1 + T1 - 1; columns (a2, z2) -> z2 - a2 + T2 - 1
        cc = tl.arange(0, T2 * RP2)
        rw = _rw_table(
            RPB + h * NBIAS, (K1 - 1) + ks1 - s1 - (T1 - 1), (K2 - 1) + ks2 - s2,
            BU, cc % RP2 - cc // RP2, K1, K2,
        )  # fmt: skip
        rr = tl.arange(0, T1 * RB)
        u_base = rr % RB - rr // RB + (T1 - 1)

    dd = tl.arange(0, BLOCK_D)
    d_ok = dd < HEAD_DIM
    qp0 = g0 + DIL0 * qc0
    qp1 = g1 + DIL1 * qc1
    qp2 = g2 + DIL2 * qc2
    q_off = b.to(tl.int64) * sqb + h * sqh + qp0 * sq0 + qp1 * sq1 + qp2 * sq2
    q = tl.load(Q + q_off[:, None] + dd[None, :], mask=q_ok[:, None] & d_ok[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    k_base = Kt + b.to(tl.int64) * skb + h * skh
    v_base = V + b.to(tl.int64) * svb + h * svh
    for blk in range(NBLK):
        n = blk * BLOCK_N + tl.arange(0, BLOCK_N)
        kc0 = ks0 + n // (R1 * RP2)
        kc1 = ks1 + (n // RP2) % R1
        kc2 = ks2 + n % RP2
        k_ok = (kc0 < lg0) & (kc1 < lg1) & (kc2 < lg2)
        kp0 = g0 + DIL0 * kc0
        kp1 = g1 + DIL1 * kc1
        kp2 = g2 + DIL2 * kc2
        ld_mask = k_ok[:, None] & d_ok[None, :]
        k = tl.load(
            k_base + (kp0 * sk0 + kp1 * sk1 + kp2 * sk2)[:, None] + dd[None, :],
            mask=ld_mask,
            other=0.0,
        )
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
        mask = q_ok[:, None] & k_ok[None, :]
        if K0 > 1 or T0 > 1:  # size-1 padding axes need no test
            mask = mask & _win_mask(kc0, lo0, hi0, K0, C0)
        if K1 > 1 or T1 > 1:
            mask = mask & _win_mask(kc1, lo1, hi1, K1, C1)
        mask = mask & _win_mask(kc2, lo2, hi2, K2, C2)
        if BIAS_DOT:
            s += _bias_block(rw, u_base + blk * RB, BU, T1, RB, T2, RP2, BIAS_PREC)
        elif HAS_RPB:
            pidx = _bias_key(kc0, kc1, kc2, K0, K1, K2)[None, :] - fq[:, None]
            bias = tl.load(RPB + h * NBIAS + pidx, mask=mask, other=0.0).to(tl.float32)
            s += bias * 1.4426950408889634
        v = tl.load(
            v_base + (kp0 * sv0 + kp1 * sv1 + kp2 * sv2)[:, None] + dd[None, :],
            mask=ld_mask,
            other=0.0,
        )
        # A non-finite value row must reach only the queries whose windows hold it (as a
        # per-query gather would): zero it for the product and poison those queries' scores.
        v_nf = (v.to(tl.float32) * 0.0) != 0.0
        v_bad = tl.max(v_nf.to(tl.int32), 1) > 0
        v = tl.where(v_nf, tl.zeros_like(v), v)
        s = tl.where(mask, tl.where(v_bad[None, :], float("nan"), s), float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
        m_i = m_new

    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    out = acc / l_safe[:, None]
    o_off = b.to(tl.int64) * sob + h * soh + qp0 * so0 + qp1 * so1 + qp2 * so2
    tl.store(
        O + o_off[:, None] + dd[None, :],
        out.to(O.dtype.element_ty),
        mask=q_ok[:, None] & d_ok[None, :],
    )
    lse = (m_i + tl.log2(l_safe)) * 0.6931471805599453
    l_off = b.to(tl.int64) * slb + h * slh + qp0 * sl0 + qp1 * sl1 + qp2 * sl2
    tl.store(LSE + l_off, lse, mask=q_ok)


@triton.jit
def _na_bwd_dq_kernel(
    Q, Kt, V, DO, O, LSE, DELTA, DQ, RPB, DRPB,
    sqb, sq0, sq1, sq2, sqh,
    skb, sk0, sk1, sk2, skh,
    svb, sv0, sv1, sv2, svh,
    sgb, sg0, sg1, sg2, sgh,
    sob, so0, so1, so2, soh,
    slb, sl0, sl1, sl2, slh,
    H, n_tiles, L0, L1, L2, DIL0, DIL1, DIL2, qk_scale, scale, n_split,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr,
    C0: tl.constexpr, C1: tl.constexpr, C2: tl.constexpr,
    T0: tl.constexpr, T1: tl.constexpr, T2: tl.constexpr,
    BLOCK_N: tl.constexpr, HAS_RPB: tl.constexpr, DOT_PREC: tl.constexpr,
    DRPB_MODE: tl.constexpr, BLOCK_BIAS: tl.constexpr, RP2: tl.constexpr,
    BU: tl.constexpr, BW: tl.constexpr, BIAS_PREC: tl.constexpr, BIAS_DOT: tl.constexpr,
):  # fmt: skip
    """dQ for one query tile, ``delta = rowsum(dO * O)`` of its queries, and its rpb gradient.

    DRPB_MODE 0: no rpb gradient; 1: atomic adds into DRPB[(b mod n_split), h, :];
    2 (deterministic, any rank): per-bin masked sums, stored to DRPB[program, b, h, :];
    3 (deterministic, 2-D): the bin of a pair is (C1 + z1 - a1, C2 + z2 - a2) (z: region
    coordinates, a: tile coordinates), so the sums over bins are two one-hot matrix products per
    key block; the program's [BU, BW] result is stored to its own slice DRPB[program, b, h, :].
    The key region is walked in rows of pitch RP2 (>= R2) so that a block holds whole rows.
    """
    BLOCK_M: tl.constexpr = T0 * T1 * T2
    R0: tl.constexpr = T0 + K0 - 1
    R1: tl.constexpr = T1 + K1 - 1
    NBLK: tl.constexpr = (R0 * R1 * RP2 + BLOCK_N - 1) // BLOCK_N
    NBIAS: tl.constexpr = (2 * K0 - 1) * (2 * K1 - 1) * (2 * K2 - 1)
    RB: tl.constexpr = BLOCK_N // RP2  # region rows per key block (mode 3)
    qk_scale = tl.cast(qk_scale, tl.float32)  # inductor passes Python floats as float64
    scale = tl.cast(scale, tl.float32)

    pid = tl.program_id(0) % n_tiles  # one flat grid: tiles fastest, then batch * heads
    idx = pid
    bh = tl.program_id(0) // n_tiles
    b = bh // H
    h = bh % H
    idx, g2, s2, lg2 = _decode_axis(idx, L2, DIL2, T2)
    idx, g1, s1, lg1 = _decode_axis(idx, L1, DIL1, T1)
    idx, g0, s0, lg0 = _decode_axis(idx, L0, DIL0, T0)

    m = tl.arange(0, BLOCK_M)
    qc0 = s0 + m // (T1 * T2)
    qc1 = s1 + (m // T2) % T1
    qc2 = s2 + m % T2
    q_ok = (qc0 < lg0) & (qc1 < lg1) & (qc2 < lg2)
    lo0, hi0 = _window(qc0, lg0, K0, C0)
    lo1, hi1 = _window(qc1, lg1, K1, C1)
    lo2, hi2 = _window(qc2, lg2, K2, C2)
    ks0, _ = _window(s0, lg0, K0, C0)
    ks1, _ = _window(s1, lg1, K1, C1)
    ks2, _ = _window(s2, lg2, K2, C2)
    fq = _bias_query(qc0, qc1, qc2, K1, K2)
    if BIAS_DOT:
        # rows (a1, zr) of a block -> u = z1 - a1 + T1 - 1; columns (a2, z2) -> z2 - a2 + T2 - 1
        cc = tl.arange(0, T2 * RP2)
        rw = _rw_table(
            RPB + h * NBIAS, (K1 - 1) + ks1 - s1 - (T1 - 1), (K2 - 1) + ks2 - s2,
            BU, cc % RP2 - cc // RP2, K1, K2,
        )  # fmt: skip
        rr = tl.arange(0, T1 * RB)
        u_base = rr % RB - rr // RB + (T1 - 1)

    dd = tl.arange(0, BLOCK_D)
    d_ok = dd < HEAD_DIM
    qd_mask = q_ok[:, None] & d_ok[None, :]
    qp0 = g0 + DIL0 * qc0
    qp1 = g1 + DIL1 * qc1
    qp2 = g2 + DIL2 * qc2
    b64 = b.to(tl.int64)
    q_off = b64 * sqb + h * sqh + qp0 * sq0 + qp1 * sq1 + qp2 * sq2
    q = tl.load(Q + q_off[:, None] + dd[None, :], mask=qd_mask, other=0.0)
    g_off = b64 * sgb + h * sgh + qp0 * sg0 + qp1 * sg1 + qp2 * sg2
    do = tl.load(DO + g_off[:, None] + dd[None, :], mask=qd_mask, other=0.0)
    l_off = b64 * slb + h * slh + qp0 * sl0 + qp1 * sl1 + qp2 * sl2
    lse2 = tl.load(LSE + l_off, mask=q_ok, other=0.0) * 1.4426950408889634
    o_off = b64 * sob + h * soh + qp0 * so0 + qp1 * so1 + qp2 * so2
    o = tl.load(O + o_off[:, None] + dd[None, :], mask=qd_mask, other=0.0)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    tl.store(DELTA + l_off, delta, mask=q_ok)  # read by the dK/dV kernel, launched next

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    bins = tl.arange(0, BLOCK_BIAS)
    dbias = tl.zeros([BLOCK_BIAS], dtype=tl.float32)
    uu = tl.arange(0, BU)
    if DRPB_MODE == 3:
        # Rows (a1, zr) of the permuted block -> u (per block); columns (a2, z2) -> w (at the end).
        r1 = tl.arange(0, T1 * RB)
        a1 = r1 // RB
        zr = r1 % RB
        ysum = tl.zeros([BU, T2 * RP2], dtype=tl.float32)
    k_base = Kt + b64 * skb + h * skh
    v_base = V + b64 * svb + h * svh
    for blk in range(NBLK):
        n = blk * BLOCK_N + tl.arange(0, BLOCK_N)
        kc0 = ks0 + n // (R1 * RP2)
        kc1 = ks1 + (n // RP2) % R1
        kc2 = ks2 + n % RP2
        k_ok = (kc0 < lg0) & (kc1 < lg1) & (kc2 < lg2)
        kp0 = g0 + DIL0 * kc0
        kp1 = g1 + DIL1 * kc1
        kp2 = g2 + DIL2 * kc2
        ld_mask = k_ok[:, None] & d_ok[None, :]
        k = tl.load(
            k_base + (kp0 * sk0 + kp1 * sk1 + kp2 * sk2)[:, None] + dd[None, :],
            mask=ld_mask,
            other=0.0,
        )
        v = tl.load(
            v_base + (kp0 * sv0 + kp1 * sv1 + kp2 * sv2)[:, None] + dd[None, :],
            mask=ld_mask,
            other=0.0,
        )
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
        mask = q_ok[:, None] & k_ok[None, :]
        if K0 > 1 or T0 > 1:  # size-1 padding axes need no test
            mask = mask & _win_mask(kc0, lo0, hi0, K0, C0)
        if K1 > 1 or T1 > 1:
            mask = mask & _win_mask(kc1, lo1, hi1, K1, C1)
        mask = mask & _win_mask(kc2, lo2, hi2, K2, C2)
        if BIAS_DOT:
            s += _bias_block(rw, u_base + blk * RB, BU, T1, RB, T2, RP2, BIAS_PREC)
        elif HAS_RPB:
            pidx = _bias_key(kc0, kc1, kc2, K0, K1, K2)[None, :] - fq[:, None]
            bias = tl.load(RPB + h * NBIAS + pidx, mask=mask, other=0.0).to(tl.float32)
            s += bias * 1.4426950408889634
        p = tl.where(mask, tl.exp2(s - lse2[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PREC)
        if DRPB_MODE == 1:
            tl.atomic_add(
                DRPB + ((b % n_split) * H + h) * NBIAS + pidx, ds, mask=mask, sem="relaxed"
            )
        if DRPB_MODE == 2:
            key = tl.where(mask, pidx, -1)
            for t in range(NBIAS):
                part = tl.sum(tl.sum(tl.where(key == t, ds, 0.0), 1), 0)
                dbias = tl.where(bins == t, dbias + part, dbias)
        if DRPB_MODE == 3:
            x = tl.reshape(ds, (T1, T2, RB, RP2))
            x = tl.reshape(tl.permute(x, (0, 2, 1, 3)), (T1 * RB, T2 * RP2))
            u_of_r1 = blk * RB + zr - a1 + (T1 - 1)
            oh1 = (uu[:, None] == u_of_r1[None, :]).to(tl.float32)  # [BU, T1*RB]
            ysum += tl.dot(oh1, x, input_precision=BIAS_PREC)  # [BU, T2*RP2]

    tl.store(
        DQ + _contig_offset(b64, h, qp0, qp1, qp2, L0, L1, L2, H, HEAD_DIM)[:, None] + dd[None, :],
        (dq * scale).to(DQ.dtype.element_ty),
        mask=qd_mask,
    )
    if DRPB_MODE == 2:
        part_off = (pid.to(tl.int64) * (tl.num_programs(0) // n_tiles) + bh) * BLOCK_BIAS
        tl.store(DRPB + part_off + bins, dbias)
    if DRPB_MODE == 3:
        r2 = tl.arange(0, T2 * RP2)
        w_of_r2 = (r2 % RP2) - (r2 // RP2) + (T2 - 1)
        oh2 = (w_of_r2[:, None] == tl.arange(0, BW)[None, :]).to(tl.float32)
        dbias2 = tl.dot(ysum, oh2, input_precision=BIAS_PREC)  # [BU, BW]
        c1 = (K1 - 1) + ks1 - s1 - (T1 - 1)
        c2 = (K2 - 1) + ks2 - s2 - (T2 - 1)
        p1 = c1 + uu
        p2 = c2 + tl.arange(0, BW)
        ok = ((p1 >= 0) & (p1 < 2 * K1 - 1))[:, None] & ((p2 >= 0) & (p2 < 2 * K2 - 1))[None, :]
        part_off = (pid.to(tl.int64) * (tl.num_programs(0) // n_tiles) + bh) * NBIAS
        tl.store(DRPB + part_off + p1[:, None] * (2 * K2 - 1) + p2[None, :], dbias2, mask=ok)


@triton.jit
def _na_bwd_dkdv_kernel(
    Q, Kt, V, DO, LSE, DELTA, DK, DV, RPB,
    sqb, sq0, sq1, sq2, sqh,
    skb, sk0, sk1, sk2, skh,
    svb, sv0, sv1, sv2, svh,
    sgb, sg0, sg1, sg2, sgh,
    slb, sl0, sl1, sl2, slh,
    H, n_tiles, L0, L1, L2, DIL0, DIL1, DIL2, qk_scale, scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr,
    C0: tl.constexpr, C1: tl.constexpr, C2: tl.constexpr,
    T0: tl.constexpr, T1: tl.constexpr, T2: tl.constexpr,
    BLOCK_M: tl.constexpr, HAS_RPB: tl.constexpr, DOT_PREC: tl.constexpr,
    BIAS_DOT: tl.constexpr, QP2: tl.constexpr, EQ1: tl.constexpr, BU: tl.constexpr,
    BIAS_PREC: tl.constexpr,
):  # fmt: skip
    """dK and dV for one key tile: walk the box of queries that may attend to it.

    With BIAS_DOT (2-D rpb) the box is walked in whole rows of pitch QP2 (>= its width; EQ1 >=
    its height) so that ``_bias_block`` can build the bias; otherwise flattened, BLOCK_M at a time.
    """
    RQ: tl.constexpr = BLOCK_M // QP2
    BLOCK_N: tl.constexpr = T0 * T1 * T2
    qk_scale = tl.cast(qk_scale, tl.float32)  # inductor passes Python floats as float64
    scale = tl.cast(scale, tl.float32)
    NBIAS: tl.constexpr = (2 * K0 - 1) * (2 * K1 - 1) * (2 * K2 - 1)

    idx = tl.program_id(0) % n_tiles  # one flat grid: tiles fastest, then batch * heads
    bh = tl.program_id(0) // n_tiles
    b = bh // H
    h = bh % H
    idx, g2, s2, lg2 = _decode_axis(idx, L2, DIL2, T2)
    idx, g1, s1, lg1 = _decode_axis(idx, L1, DIL1, T1)
    idx, g0, s0, lg0 = _decode_axis(idx, L0, DIL0, T0)

    n = tl.arange(0, BLOCK_N)
    kc0 = s0 + n // (T1 * T2)
    kc1 = s1 + (n // T2) % T1
    kc2 = s2 + n % T2
    k_ok = (kc0 < lg0) & (kc1 < lg1) & (kc2 < lg2)
    tile_ok = (s0 < lg0) & (s1 < lg1) & (s2 < lg2)
    qa0, qb0 = _query_range(s0, tl.minimum(s0 + T0, lg0) - 1, lg0, K0, C0)
    qa1, qb1 = _query_range(s1, tl.minimum(s1 + T1, lg1) - 1, lg1, K1, C1)
    qa2, qb2 = _query_range(s2, tl.minimum(s2 + T2, lg2) - 1, lg2, K2, C2)
    e1 = qb1 - qa1
    e2 = qb2 - qa2
    nq = tl.where(tile_ok, (qb0 - qa0) * e1 * e2, 0)

    dd = tl.arange(0, BLOCK_D)
    d_ok = dd < HEAD_DIM
    kd_mask = k_ok[:, None] & d_ok[None, :]
    kp0 = g0 + DIL0 * kc0
    kp1 = g1 + DIL1 * kc1
    kp2 = g2 + DIL2 * kc2
    b64 = b.to(tl.int64)
    k = tl.load(
        Kt + (b64 * skb + h * skh + kp0 * sk0 + kp1 * sk1 + kp2 * sk2)[:, None] + dd[None, :],
        mask=kd_mask,
        other=0.0,
    )
    v = tl.load(
        V + (b64 * svb + h * svh + kp0 * sv0 + kp1 * sv1 + kp2 * sv2)[:, None] + dd[None, :],
        mask=kd_mask,
        other=0.0,
    )
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    gk = _bias_key(kc0, kc1, kc2, K0, K1, K2)
    q_base = Q + b64 * sqb + h * sqh
    g_base = DO + b64 * sgb + h * sgh
    l_base = b64 * slb + h * slh
    if BIAS_DOT:
        n_iter = tl.where(tile_ok, tl.cdiv(e1, RQ), 0)
        # rows (b1, qr) -> u = b1 - query row + EQ1 - 1; columns (b2, q2) -> b2 - q2
        cc = tl.arange(0, T2 * QP2)
        rw = _rw_table(
            RPB + h * NBIAS, (K1 - 1) + s1 - qa1 - (EQ1 - 1), (K2 - 1) + s2 - qa2,
            BU, cc // QP2 - cc % QP2, K1, K2,
        )  # fmt: skip
        rr = tl.arange(0, T1 * RQ)
        u_base = rr // RQ - rr % RQ + (EQ1 - 1)
    else:
        n_iter = tl.cdiv(nq, BLOCK_M)
    for it in range(0, n_iter):
        mm = tl.arange(0, BLOCK_M)
        if BIAS_DOT:
            qrow = it * RQ + mm // QP2
            qcol = mm % QP2
            qc0 = qa0 + mm * 0
            qc1 = qa1 + qrow
            qc2 = qa2 + qcol
            q_ok = (qrow < e1) & (qcol < e2)
        else:
            mm = it * BLOCK_M + mm
            qc0 = qa0 + mm // (e1 * e2)
            qc1 = qa1 + (mm // e2) % e1
            qc2 = qa2 + mm % e2
            q_ok = mm < nq
        qp0 = g0 + DIL0 * qc0
        qp1 = g1 + DIL1 * qc1
        qp2 = g2 + DIL2 * qc2
        qd_mask = q_ok[:, None] & d_ok[None, :]
        q = tl.load(
            q_base + (qp0 * sq0 + qp1 * sq1 + qp2 * sq2)[:, None] + dd[None, :],
            mask=qd_mask,
            other=0.0,
        )
        do = tl.load(
            g_base + (qp0 * sg0 + qp1 * sg1 + qp2 * sg2)[:, None] + dd[None, :],
            mask=qd_mask,
            other=0.0,
        )
        l_off = l_base + qp0 * sl0 + qp1 * sl1 + qp2 * sl2
        lse2 = tl.load(LSE + l_off, mask=q_ok, other=0.0) * 1.4426950408889634
        delta = tl.load(DELTA + l_off, mask=q_ok, other=0.0)
        lo0, hi0 = _window(qc0, lg0, K0, C0)
        lo1, hi1 = _window(qc1, lg1, K1, C1)
        lo2, hi2 = _window(qc2, lg2, K2, C2)
        # Transposed tiles: rows are keys, columns are queries.
        mask = k_ok[:, None] & q_ok[None, :]
        if K0 > 1 or T0 > 1:
            mask = mask & _win_mask_t(kc0, lo0, hi0, K0, C0)
        if K1 > 1 or T1 > 1:
            mask = mask & _win_mask_t(kc1, lo1, hi1, K1, C1)
        mask = mask & _win_mask_t(kc2, lo2, hi2, K2, C2)
        st = tl.dot(k, tl.trans(q), input_precision=DOT_PREC) * qk_scale
        if BIAS_DOT:
            st += _bias_block(rw, u_base - it * RQ, BU, T1, RQ, T2, QP2, BIAS_PREC)
        elif HAS_RPB:
            pidx = gk[:, None] - _bias_query(qc0, qc1, qc2, K1, K2)[None, :]
            bias = tl.load(RPB + h * NBIAS + pidx, mask=mask, other=0.0).to(tl.float32)
            st += bias * 1.4426950408889634
        pt = tl.where(mask, tl.exp2(st - lse2[None, :]), 0.0)
        dv += tl.dot(pt.to(do.dtype), do, input_precision=DOT_PREC)
        dpt = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
        dst = pt * (dpt - delta[None, :])
        dk += tl.dot(dst.to(q.dtype), q, input_precision=DOT_PREC)

    o_off = _contig_offset(b64, h, kp0, kp1, kp2, L0, L1, L2, H, HEAD_DIM)
    tl.store(DK + o_off[:, None] + dd[None, :], (dk * scale).to(DK.dtype.element_ty), mask=kd_mask)
    tl.store(DV + o_off[:, None] + dd[None, :], dv.to(DV.dtype.element_ty), mask=kd_mask)
