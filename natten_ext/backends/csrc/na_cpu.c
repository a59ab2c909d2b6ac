/* Neighborhood attention on the CPU: forward and backward, one query (or key) row at a time.
 *
 * Dimension-agnostic: a call's window is given as tables built once per configuration in
 * Python (natten_ext/backends/cpu.py): nbr[i * KV + s], the flat key token of slot s of query
 * token i (-1 for a causal slot outside the window), and bins[i * KV + s], its flat rpb bin.
 * The key-value gradients are gathers over the inverse table (for each key, the (query, slot)
 * pairs that reach it), so every output row is written by one thread in a fixed order: results
 * are deterministic and do not depend on the thread count.
 *
 * Tensors are addressed through (batch, token, head) element strides, the last axis contiguous;
 * each entry point serves the rows [r0, r1) of its flattened (batch, head, token) range, so a
 * caller splits a call across threads by ranges. Compiled twice: for float (AVX2/FMA vector
 * code where the compiler targets it, head_dim a multiple of 8) and for double (plain C).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

/* An entry point's rows [rows0, rows1) in ``threads`` contiguous ranges [r0, r1), one per
 * thread. With OpenMP the threads are those of the process's OpenMP runtime: inside PyTorch,
 * which loads its libgomp.so.1 first, the same warm team that runs its own operators (no second
 * pool competing for the cores). The ranges depend only on the thread count, and every row is
 * computed the same way in any range, so results do not depend on it. */
#ifdef _OPENMP
#include <omp.h>
#define NA_PRAGMA(text) _Pragma(#text) /* the arguments substituted before the stringising */
#define NA_PARALLEL(rows0, rows1, threads, body)                                               \
    NA_PRAGMA(omp parallel num_threads(threads)) {                                             \
        const int64_t nt_ = omp_get_num_threads(), t_ = omp_get_thread_num();                  \
        const int64_t n_ = (rows1) - (rows0);                                                  \
        const int64_t r0 = (rows0) + n_ * t_ / nt_, r1 = (rows0) + n_ * (t_ + 1) / nt_;         \
        if (r0 < r1) { body; }                                                                 \
    }
#else
#define NA_PARALLEL(rows0, rows1, threads, body)                                               \
    {                                                                                          \
        (void)(threads);                                                                       \
        const int64_t r0 = (rows0), r1 = (rows1);                                              \
        body;                                                                                  \
    }
#endif

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define NA_HAVE_AVX2 1
static inline float hsum8(__m256 v) {
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    return _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)));
}
#else
#define NA_HAVE_AVX2 0
#endif

/* expf to about 1 ulp, in a form the compiler vectorises: 2^n * p(r), |r| <= ln2 / 2, p the
 * degree-7 Taylor polynomial. NaN stays NaN, below -87.3 (and -inf) is 0. */
static inline float exp_f32(float x) {
    float xc = x < -87.3f ? -87.3f : (x > 88.0f ? 88.0f : x);
    float n = __builtin_floorf(xc * 1.44269504088896341f + 0.5f);
    float r = xc - n * 0.693145751953125f;
    r = r - n * 1.42860682030941723e-6f;
    float p = 1.98412698e-4f;
    p = p * r + 1.38888889e-3f;
    p = p * r + 8.33333333e-3f;
    p = p * r + 4.16666667e-2f;
    p = p * r + 1.66666667e-1f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    float y = x < -87.3f ? 0.0f : p * two_n;
    return x != x ? x : y;
}

/* A row of an entry point's (batch, head, position) range, advanced without divisions. */
typedef struct {
    int64_t pos, bh, h, b;
} na_row;

static inline na_row na_row_at(int64_t r, int64_t N, int64_t H) {
    na_row it = {r % N, r / N, (r / N) % H, (r / N) / H};
    return it;
}

static inline void na_row_next(na_row *it, int64_t N, int64_t H) {
    if (++it->pos < N) return;
    it->pos = 0; /* next (batch, head) */
    it->bh++;
    if (++it->h == H) it->h = 0, it->b++;
}

#if NA_HAVE_AVX2
/* exp_f32 on eight lanes (the same polynomial and special cases). */
static inline __m256 exp8_f32(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.3f);
    __m256 xc = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(88.0f));
    __m256 n = _mm256_floor_ps(
        _mm256_fmadd_ps(xc, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), xc);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860682030941723e-6f), r);
    __m256 p = _mm256_set1_ps(1.98412698e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.38888889e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.33333333e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.16666667e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.66666667e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
                                  23);
    __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LT_OQ));
    return _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}
#endif

#define REAL float
#define FN(name) name##_f32
#define EXP exp_f32
#define LOG logf
#define NA_VEC NA_HAVE_AVX2
#include "na_cpu_body.h"
#undef REAL
#undef FN
#undef EXP
#undef LOG
#undef NA_VEC

#define REAL double
#define FN(name) name##_f64
#define EXP exp
#define LOG log
#define NA_VEC 0
#include "na_cpu_body.h"
#undef REAL
#undef FN
#undef EXP
#undef LOG
#undef NA_VEC

/* The ABI version the Python side checks before it uses a built library. */
int64_t na_cpu_abi_version(void) { return 4; }

/* 1 where the entry points run their ``threads`` argument's OpenMP threads, 0 where the caller
 * splits the rows itself. */
int64_t na_cpu_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}
