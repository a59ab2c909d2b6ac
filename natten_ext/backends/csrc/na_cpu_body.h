/* One precision of the kernels (included by na_cpu.c with REAL, FN, EXP, LOG and NA_VEC
 * defined; NA_VEC: float with AVX2/FMA intrinsics).
 *
 * Each entry point dispatches on head_dim: the common sizes get copies of the row functions
 * with the size a constant (loops unrolled, row accumulators in registers). */
#define INLINE static inline __attribute__((always_inline))

/* <a, b> over n elements. */
INLINE REAL FN(dot)(const REAL *restrict a, const REAL *restrict b, int64_t n) {
#if NA_VEC
    if ((n & 7) == 0) {
        __m256 x = _mm256_setzero_ps(), y = _mm256_setzero_ps();
        int64_t d = 0;
        for (; d + 16 <= n; d += 16) {
            x = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), _mm256_loadu_ps(b + d), x);
            y = _mm256_fmadd_ps(_mm256_loadu_ps(a + d + 8), _mm256_loadu_ps(b + d + 8), y);
        }
        if (d < n) x = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), _mm256_loadu_ps(b + d), x);
        return hsum8(_mm256_add_ps(x, y));
    }
#endif
    REAL acc = 0;
    for (int64_t d = 0; d < n; d++) acc += a[d] * b[d];
    return acc;
}

#if NA_VEC
/* acc[0:nc] += w * row[0:8 nc] */
INLINE void FN(fma_row)(__m256 *acc, REAL w, const REAL *row, int64_t nc) {
    __m256 p = _mm256_set1_ps(w);
    for (int64_t c = 0; c < nc; c++)
        acc[c] = _mm256_fmadd_ps(p, _mm256_loadu_ps(row + 8 * c), acc[c]);
}
#endif

/* out[0:n] = f * sum_t w[t] * base[idx[t] * stride + 0:n], slots with idx[t] < 0 skipped. */
INLINE void FN(wsum)(REAL *restrict out, const REAL *restrict w, const int32_t *restrict idx,
                     const REAL *restrict base, int64_t stride, int64_t T, int64_t n, REAL f) {
#if NA_VEC
    if ((n & 7) == 0 && n <= 64) {
        enum { MAXC = 8 };
        const int64_t nc = n / 8;
        __m256 a[MAXC], b[MAXC]; /* two accumulator sets (even, odd slots): half the chain */
        for (int64_t c = 0; c < nc; c++) a[c] = b[c] = _mm256_setzero_ps();
        int64_t t = 0;
        for (; t + 2 <= T; t += 2) {
            if (idx[t] >= 0) FN(fma_row)(a, w[t], base + idx[t] * stride, nc);
            if (idx[t + 1] >= 0) FN(fma_row)(b, w[t + 1], base + idx[t + 1] * stride, nc);
        }
        if (t < T && idx[t] >= 0) FN(fma_row)(a, w[t], base + idx[t] * stride, nc);
        __m256 fv = _mm256_set1_ps(f);
        for (int64_t c = 0; c < nc; c++)
            _mm256_storeu_ps(out + 8 * c, _mm256_mul_ps(_mm256_add_ps(a[c], b[c]), fv));
        return;
    }
#endif
    for (int64_t d = 0; d < n; d++) out[d] = 0;
    for (int64_t t = 0; t < T; t++) {
        if (idx[t] < 0) continue;
        const REAL *row = base + idx[t] * stride;
        for (int64_t d = 0; d < n; d++) out[d] += w[t] * row[d];
    }
    for (int64_t d = 0; d < n; d++) out[d] *= f;
}

/* Unnormalised probabilities exp(logit - max) of query row ``qs`` (already scaled) over its
 * window (0 on invalid slots) into ``s``; returns their sum, and the max through ``mx``. A NaN
 * logit is no maximum but makes the sum NaN, as in the reference. */
INLINE REAL FN(softmax_row)(REAL *restrict s, REAL *mx, const REAL *restrict qs,
                            const REAL *restrict kb, const REAL *restrict rpb_h,
                            const int32_t *restrict nbr, const int32_t *restrict bins,
                            int64_t KV, int64_t D, int64_t k_n) {
    REAL m = -INFINITY;
    for (int64_t t = 0; t < KV; t++) {
        int32_t j = nbr[t];
        REAL x = -INFINITY;
        if (j >= 0) {
            x = FN(dot)(qs, kb + j * k_n, D);
            if (rpb_h) x += rpb_h[bins[t]];
        }
        s[t] = x;
        m = x > m ? x : m;
    }
    REAL total = 0;
    int64_t t = 0;
#if NA_VEC
    __m256 mv = _mm256_set1_ps(m), sum = _mm256_setzero_ps();
    for (; t + 8 <= KV; t += 8) {
        __m256 e = exp8_f32(_mm256_sub_ps(_mm256_loadu_ps(s + t), mv));
        _mm256_storeu_ps(s + t, e);
        sum = _mm256_add_ps(sum, e);
    }
    total = hsum8(sum);
#endif
    for (; t < KV; t++) { /* -inf (invalid) -> 0 */
        s[t] = EXP(s[t] - m);
        total += s[t];
    }
    *mx = m;
    return total;
}

INLINE void FN(fwd_rows)(const REAL *q, const REAL *k, const REAL *v, const REAL *rpb,
                         const int32_t *nbr, const int32_t *bins, const int32_t *order, REAL *out,
                         float *lse, int64_t H,
                         int64_t N, int64_t KV, int64_t D, int64_t NB, const int64_t *st,
                         REAL scale, int64_t r0, int64_t r1) {
    REAL s[KV], qs[D];
    na_row it = na_row_at(r0, N, H);
    for (int64_t row = r0; row < r1; row++, na_row_next(&it, N, H)) {
        const int64_t h = it.h, b = it.b, i = order[it.pos];
        const REAL *qr = q + b * st[0] + i * st[1] + h * st[2];
        for (int64_t d = 0; d < D; d++) qs[d] = qr[d] * scale;
        const int32_t *nb = nbr + i * KV;
        REAL m;
        REAL total = FN(softmax_row)(s, &m, qs, k + b * st[3] + h * st[5],
                                     rpb ? rpb + h * NB : 0, nb, bins + i * KV, KV, D, st[4]);
        FN(wsum)(out + b * st[9] + i * st[10] + h * st[11], s, nb, v + b * st[6] + h * st[8],
                 st[7], KV, D, 1 / total);
        if (lse) lse[b * st[12] + i * st[13] + h * st[14]] = (float)(m + LOG(total));
    }
}

INLINE void FN(bwd_q_rows)(const REAL *q, const REAL *k, const REAL *v, const REAL *rpb,
                           const int32_t *nbr, const int32_t *bins, const int32_t *order,
                           const REAL *dout, REAL *dq,
                           REAL *P, REAL *dS, int64_t H, int64_t N, int64_t KV, int64_t D,
                           int64_t NB, const int64_t *st, REAL scale, int64_t r0, int64_t r1) {
    REAL s[KV], qs[D];
    na_row it = na_row_at(r0, N, H);
    for (int64_t row = r0; row < r1; row++, na_row_next(&it, N, H)) {
        const int64_t bh = it.bh, h = it.h, b = it.b, pos = it.pos;
        const int64_t i = order[pos], r = bh * N + i;
        const REAL *qr = q + b * st[0] + i * st[1] + h * st[2];
        const REAL *kb = k + b * st[3] + h * st[5];
        const REAL *vb = v + b * st[6] + h * st[8];
        const REAL *g = dout + b * st[9] + i * st[10] + h * st[11];
        for (int64_t d = 0; d < D; d++) qs[d] = qr[d] * scale;
        const int32_t *nb = nbr + i * KV;
        REAL m;
        REAL total = FN(softmax_row)(s, &m, qs, kb, rpb ? rpb + h * NB : 0, nb, bins + i * KV,
                                     KV, D, st[4]);
        REAL *pr = P + r * KV, *dr = dS + r * KV;
        REAL delta = 0, inv = 1 / total;
        for (int64_t t = 0; t < KV; t++) {
            REAL p = s[t] * inv;
            REAL dp = nb[t] < 0 ? (REAL)0 : FN(dot)(g, vb + nb[t] * st[7], D);
            pr[t] = p;
            dr[t] = dp;
            delta += p * dp;
        }
        for (int64_t t = 0; t < KV; t++) dr[t] = pr[t] * (dr[t] - delta);
        FN(wsum)(dq + b * st[12] + i * st[13] + h * st[14], dr, nb, kb, st[4], KV, D, scale);
    }
}

INLINE void FN(bwd_kv_rows)(const REAL *q, const REAL *dout, const REAL *P, const REAL *dS,
                            const int32_t *order, const int32_t *off, const int32_t *ent_q,
                            const int32_t *ent_pair,
                            REAL *dk, REAL *dv, int64_t H, int64_t N, int64_t KV, int64_t D,
                            const int64_t *st, REAL scale, int64_t r0, int64_t r1) {
    enum { CHUNK = 64 };
    REAL wk[CHUNK], wv[CHUNK], ak[D], av[D], part[D];
    na_row it = na_row_at(r0, N, H);
    for (int64_t row = r0; row < r1; row++, na_row_next(&it, N, H)) {
        const int64_t bh = it.bh, h = it.h, b = it.b, pos = it.pos;
        const int64_t j = order[pos];
        const REAL *qb = q + b * st[0] + h * st[2];
        const REAL *gb = dout + b * st[3] + h * st[5];
        const REAL *pb = P + bh * N * KV, *db = dS + bh * N * KV;
        REAL *ok = dk + b * st[6] + j * st[7] + h * st[8];
        REAL *ov = dv + b * st[9] + j * st[10] + h * st[11];
        for (int64_t d = 0; d < D; d++) ak[d] = av[d] = 0;
        for (int64_t e0 = off[j]; e0 < off[j + 1]; e0 += CHUNK) {
            int64_t n_e = off[j + 1] - e0 < CHUNK ? off[j + 1] - e0 : CHUNK;
            for (int64_t e = 0; e < n_e; e++) {
                wk[e] = db[ent_pair[e0 + e]];
                wv[e] = pb[ent_pair[e0 + e]];
            }
            FN(wsum)(part, wk, ent_q + e0, qb, st[1], n_e, D, 1);
            for (int64_t d = 0; d < D; d++) ak[d] += part[d];
            FN(wsum)(part, wv, ent_q + e0, gb, st[4], n_e, D, 1);
            for (int64_t d = 0; d < D; d++) av[d] += part[d];
        }
        for (int64_t d = 0; d < D; d++) {
            ok[d] = ak[d] * scale;
            ov[d] = av[d];
        }
    }
}

/* head_dim dispatch: constant copies for the zoo's sizes, the generic loop otherwise. */
#define NA_DISPATCH_D(call)                                                                 \
    switch (D) {                                                                            \
    case 16: { const int64_t Dc = 16; call; break; }                                        \
    case 32: { const int64_t Dc = 32; call; break; }                                        \
    case 64: { const int64_t Dc = 64; call; break; }                                        \
    default: { const int64_t Dc = D; call; break; }                                         \
    }

/* Rows [rows0, rows1) of (b, h, position), split into ``threads`` contiguous ranges run by
 * OpenMP threads where the library is built with OpenMP (one thread otherwise). Each entry
 * point visits the tokens of a (batch, head) in the order ``order`` (dilation group by group,
 * so that consecutive rows share keys in cache).
 *
 * out, lse of those rows; lse may be NULL (inference). st: element strides
 * (b, n, h) of q, k, v, out, lse. */
void FN(na_fwd)(const REAL *q, const REAL *k, const REAL *v, const REAL *rpb, const int32_t *nbr,
                const int32_t *bins, const int32_t *order, REAL *out, float *lse, int64_t H,
                int64_t N, int64_t KV, int64_t D, int64_t NB, const int64_t *st, double scale,
                int64_t rows0, int64_t rows1, int64_t threads) {
    NA_PARALLEL(rows0, rows1, threads,
                NA_DISPATCH_D(FN(fwd_rows)(q, k, v, rpb, nbr, bins, order, out, lse, H, N, KV, Dc,
                                           NB, st, (REAL)scale, r0, r1)))
}

/* Backward, pass 1, rows [r0, r1) of (b, h, i): dq, and the probabilities P and logit
 * gradients dS of every (query, slot), stored contiguous [B, H, N, KV] for pass 2 and the rpb
 * gradient (0 on invalid slots). st: strides (b, n, h) of q, k, v, dout, dq. */
void FN(na_bwd_q)(const REAL *q, const REAL *k, const REAL *v, const REAL *rpb, const int32_t *nbr,
                  const int32_t *bins, const int32_t *order, const REAL *dout, REAL *dq, REAL *P,
                  REAL *dS, int64_t H, int64_t N, int64_t KV, int64_t D, int64_t NB,
                  const int64_t *st, double scale, int64_t rows0, int64_t rows1,
                  int64_t threads) {
    NA_PARALLEL(rows0, rows1, threads,
                NA_DISPATCH_D(FN(bwd_q_rows)(q, k, v, rpb, nbr, bins, order, dout, dq, P, dS, H, N,
                                             KV, Dc, NB, st, (REAL)scale, r0, r1)))
}

/* Backward, pass 2, rows [r0, r1) of (b, h, j): dk and dv of key j, summed over the pairs
 * e in [off[j], off[j+1]) that reach it (query token ent_q[e], flat pair ent_pair[e] =
 * query * KV + slot), in that order. st: strides (b, n, h) of q, dout, dk, dv. */
void FN(na_bwd_kv)(const REAL *q, const REAL *dout, const REAL *P, const REAL *dS,
                   const int32_t *order, const int32_t *off, const int32_t *ent_q,
                   const int32_t *ent_pair, REAL *dk, REAL *dv, int64_t H, int64_t N, int64_t KV,
                   int64_t D, const int64_t *st, double scale, int64_t rows0, int64_t rows1,
                   int64_t threads) {
    NA_PARALLEL(rows0, rows1, threads,
                NA_DISPATCH_D(FN(bwd_kv_rows)(q, dout, P, dS, order, off, ent_q, ent_pair, dk, dv,
                                              H, N, KV, Dc, st, (REAL)scale, r0, r1)))
}
#undef NA_DISPATCH_D
#undef INLINE
