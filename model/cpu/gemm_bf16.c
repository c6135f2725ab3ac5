/* model/cpu/gemm_bf16.c — bf16 x bf16 -> fp32 matrix products with VDPBF16PS.
 *
 * Register tile: GEMM_BF16_MR rows of C by GEMM_BF16_NR columns (24 zmm
 * accumulators). Each step over a pair of k broadcasts one 32-bit word
 * (two bf16 of op(A)) per row and multiplies it into three vectors of packed
 * B. There is no k blocking: a B panel over the whole K (K/2 x 192 bytes)
 * stays in L2 while one thread walks the row tiles down it, and C is written
 * once per tile. Each element of C is summed by one thread in k order, so the
 * result does not depend on the thread count.
 *
 * The file is compiled for baseline x86-64; only the functions with the
 * BF16_TARGET attribute use AVX-512, and they are reached only after
 * gemm_bf16_supported() said yes. */
#include "model/cpu/gemm_bf16.h"
#include "util/bf16.h"            /* bf16_from_float, bf16_to_float */

#include <cpuid.h>       /* __get_cpuid_count */
#include <immintrin.h>
#include <omp.h>           /* omp_get_num_threads, omp_get_thread_num */
#include <pthread.h>       /* pthread_once */
#include <stdlib.h>        /* posix_memalign, free, getenv */
#include <string.h>        /* memcpy, strcmp */
#include <sys/syscall.h>   /* SYS_arch_prctl */
#include <unistd.h>        /* syscall */

#define MR 8
#define NRV 3 /* vectors of 16 floats per panel */
#define NR GEMM_BF16_NR
#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define BF16_INLINE static inline __attribute__((always_inline)) BF16_TARGET

int gemm_bf16_supported(void) {
    const char *off = getenv("PONDER_CPU_BF16");
    if (off && strcmp(off, "0") == 0) return 0;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
}

/* AMX needs the CPU's tile instructions and the kernel's permission to use
 * their 8 KB of register state (Linux >= 5.16 asks each process to request
 * it). Both are facts of the machine, asked once per process. */
static int amx_usable;
static pthread_once_t amx_once = PTHREAD_ONCE_INIT;

static void amx_probe(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return;
    const int tile = (d >> 24) & 1, bf16 = (d >> 22) & 1;
    /* ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA */
    amx_usable = tile && bf16 && syscall(SYS_arch_prctl, 0x1023, 18) == 0;
}

int gemm_bf16_amx(void) {
    const char *off = getenv("PONDER_CPU_AMX");
    if (off && strcmp(off, "0") == 0) return 0;
    if (!gemm_bf16_supported()) return 0;
    pthread_once(&amx_once, amx_probe);
    return amx_usable;
}

float gemm_bf16_round(float x) { return bf16_to_float(bf16_from_float(x)); }

static int operand_reserve(GemmBf16Operand *op, size_t words) {
    if (words <= op->cap) return 0;
    /* 64-byte aligned so that panel rows and packed A rows load as whole
     * cache lines */
    void *p = NULL;
    if (posix_memalign(&p, 64, words * sizeof(uint32_t)) != 0) return -1;
    free(op->words);
    op->words = p;
    op->cap = words;
    return 0;
}

void gemm_bf16_operand_free(GemmBf16Operand *op) {
    free(op->words);
    *op = (GemmBf16Operand){0};
}

void gemm_bf16_free(GemmBf16 *g) {
    gemm_bf16_operand_free(&g->a);
    gemm_bf16_operand_free(&g->b);
}

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

static inline __mmask16 mask_first(int64_t n) {
    if (n <= 0) return 0;
    if (n >= 16) return 0xffff;
    return (__mmask16)((1u << n) - 1u);
}

/* Two rows of 16 floats (k even, k odd) -> 16 words: both rounded in one
 * conversion (lo's 16 bf16 then hi's), then one word permute interleaves
 * them (was two conversions, two widenings, a shift and an or). */
BF16_INLINE __m512i pair_words(__m512 lo, __m512 hi) {
    const __m512i interleave =
        _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                         21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    return _mm512_permutexvar_epi16(interleave, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
}

/* 32 consecutive floats of one row (k even first) -> 16 words. */
BF16_INLINE __m512i run_words(const float *p, int64_t n_floats) {
    __m512 lo = _mm512_maskz_loadu_ps(mask_first(n_floats), p);
    __m512 hi = _mm512_maskz_loadu_ps(mask_first(n_floats - 16), p + 16);
    return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
}

/* In-place transpose of a 16 x 16 matrix of 32-bit words held in 16 zmm. */
BF16_INLINE void transpose16(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {
        r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    /* r[4g+c] now holds, in each 128-bit lane L, column c + 4L of rows
     * 4g..4g+3 (lane L of the original rows). Gather the lanes. */
    for (int c = 0; c < 4; c++) {
        __m512i a = _mm512_shuffle_i32x4(r[c], r[4 + c], 0x88);  /* lanes 0,2 of g0 | 0,2 of g1 */
        __m512i b = _mm512_shuffle_i32x4(r[c], r[4 + c], 0xdd);  /* lanes 1,3 */
        __m512i d = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0x88);
        __m512i e = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0xdd);
        t[c] = _mm512_shuffle_i32x4(a, d, 0x88);      /* lane 0 of g0..g3 */
        t[8 + c] = _mm512_shuffle_i32x4(a, d, 0xdd);  /* lane 2 */
        t[4 + c] = _mm512_shuffle_i32x4(b, e, 0x88);  /* lane 1 */
        t[12 + c] = _mm512_shuffle_i32x4(b, e, 0xdd); /* lane 3 */
    }
    for (int i = 0; i < 16; i++) r[i] = t[i];
}

/* ---------------------------------------------------------------- A --- */

/* op(A) = A [M,K] row-major: each row's k pairs are already adjacent. */
BF16_TARGET static void pack_a_row(uint32_t *row, int64_t K, int64_t pairs, const float *src) {
    for (int64_t p0 = 0; p0 < pairs; p0 += 16)
        _mm512_mask_storeu_epi32(row + p0, mask_first(pairs - p0), run_words(src + 2 * p0, K - 2 * p0));
}

BF16_TARGET static void pack_a_rows(uint32_t *dst, int64_t M, int64_t K, int64_t pairs,
                                    const float *A, int64_t lda) {
#pragma omp for schedule(static) nowait
    for (int64_t i = 0; i < M; i++) pack_a_row(dst + i * pairs, K, pairs, A + i * lda);
}

/* op(A) = A^T with A [K,M]: rows 2p and 2p + 1 of A give pair p of 16
 * consecutive rows of op(A) at once, stored pair-major (dst[p * M + i]);
 * the row-major form took a 16 x 16 transpose per block, which made this
 * the slowest packing (2.5x pack_a_rows per value). */
BF16_TARGET static void pack_a_cols(uint32_t *dst, int64_t M, int64_t K, int64_t pairs,
                                    const float *A, int64_t lda) {
    const int64_t ib = (M + 15) / 16;
    /* row blocks outermost: a thread packs a contiguous share of op(A)'s
     * rows, the share multiply gives it */
#pragma omp for schedule(static) nowait
    for (int64_t blk = 0; blk < pairs * ib; blk++) {
        const int64_t i0 = (blk / pairs) * 16, p = blk % pairs;
        const __mmask16 mi = mask_first(M - i0);
        __m512 lo = _mm512_maskz_loadu_ps(mi, A + 2 * p * lda + i0);
        __m512 hi = 2 * p + 1 < K ? _mm512_maskz_loadu_ps(mi, A + (2 * p + 1) * lda + i0)
                                  : _mm512_setzero_ps();
        _mm512_mask_storeu_epi32(dst + p * M + i0, mi, pair_words(lo, hi));
    }
}

/* A [M,K] row-major into both of its packed forms at once: `rows` as
 * pack_a_rows writes it (for A B) and `cols`, pair-major over M, as
 * pack_a_cols writes op(A) = A^T (for A^T B'). Rows 2p and 2p + 1 are read
 * once for both, with the same conversions, so the words are the same. A
 * thread takes a contiguous share of the row pairs, close to the share of
 * rows the product A B gives it. */
BF16_TARGET static void pack_a_both(uint32_t *rows, uint32_t *cols, int64_t M, int64_t K,
                                    const float *A, int64_t lda, const GemmBf16RowSource *src,
                                    float *buf) {
    const int64_t kp = (K + 1) / 2, mp = (M + 1) / 2;
#pragma omp for schedule(static) nowait
    for (int64_t p = 0; p < mp; p++) {
        const int has1 = 2 * p + 1 < M;
        const float *r0 = A + 2 * p * lda, *r1 = r0 + lda;
        if (src) { /* rows 2p and 2p + 1 formed here, K floats apart in buf */
            src->fill(src->ctx, 2 * p, buf);
            if (has1) src->fill(src->ctx, 2 * p + 1, buf + K);
            r0 = buf, r1 = buf + K;
        }
        uint32_t *w0 = rows + 2 * p * kp, *w1 = w0 + kp, *wc = cols + p * K;
        for (int64_t c0 = 0; c0 < K; c0 += 32) {
            const __mmask16 m0 = mask_first(K - c0), m1 = mask_first(K - c0 - 16);
            const __m512 a0 = _mm512_maskz_loadu_ps(m0, r0 + c0);
            const __m512 a1 = _mm512_maskz_loadu_ps(m1, r0 + c0 + 16);
            const __m512 b0 = has1 ? _mm512_maskz_loadu_ps(m0, r1 + c0) : _mm512_setzero_ps();
            const __m512 b1 = has1 ? _mm512_maskz_loadu_ps(m1, r1 + c0 + 16) : _mm512_setzero_ps();
            const __mmask16 mw = mask_first(kp - c0 / 2);
            _mm512_mask_storeu_epi32(w0 + c0 / 2, mw, (__m512i)_mm512_cvtne2ps_pbh(a1, a0));
            if (has1)
                _mm512_mask_storeu_epi32(w1 + c0 / 2, mw, (__m512i)_mm512_cvtne2ps_pbh(b1, b0));
            _mm512_mask_storeu_epi32(wc + c0, m0, pair_words(a0, b0));
            if (m1) _mm512_mask_storeu_epi32(wc + c0 + 16, m1, pair_words(a1, b1));
        }
    }
}

/* ---------------------------------------------------------------- B --- */

/* op(B) = B [K,N] row-major: rows 2p and 2p+1 give a panel row directly. */
BF16_TARGET static void pack_b_rows(uint32_t *dst, int64_t K, int64_t N, int64_t pairs,
                                    const float *B, int64_t ldb) {
    const int64_t panels = (N + NR - 1) / NR, pblk = 64, nb = (pairs + pblk - 1) / pblk;
#pragma omp for schedule(static) nowait
    for (int64_t blk = 0; blk < panels * nb; blk++) {
        const int64_t jp = blk / nb, pe = min64(pairs, (blk % nb) * pblk + pblk);
        uint32_t *panel = dst + jp * pairs * NR;
        for (int64_t p = (blk % nb) * pblk; p < pe; p++)
            for (int v = 0; v < NRV; v++) {
                const int64_t j = jp * NR + v * 16;
                const __mmask16 m = mask_first(N - j);
                __m512 lo = _mm512_maskz_loadu_ps(m, B + 2 * p * ldb + j);
                __m512 hi = 2 * p + 1 < K ? _mm512_maskz_loadu_ps(m, B + (2 * p + 1) * ldb + j)
                                          : _mm512_setzero_ps();
                _mm512_storeu_si512(panel + p * NR + v * 16, pair_words(lo, hi));
            }
    }
}

/* op(B) = B^T with B [N,K]: each of B's rows is one panel column, so 16 rows
 * are converted and transposed together. */
BF16_TARGET static void pack_b_cols(uint32_t *dst, int64_t K, int64_t N, int64_t pairs,
                                    const float *B, int64_t ldb) {
    const int64_t panels = (N + NR - 1) / NR, pb = (pairs + 15) / 16;
#pragma omp for schedule(static) nowait
    for (int64_t blk = 0; blk < panels * NRV * pb; blk++) {
        const int64_t g = blk / pb, p0 = (blk % pb) * 16;
        const int64_t jp = g / NRV, v = g % NRV, j0 = jp * NR + v * 16;
        __m512i r[16];
        for (int t = 0; t < 16; t++)
            r[t] = j0 + t < N ? run_words(B + (j0 + t) * ldb + 2 * p0, K - 2 * p0)
                              : _mm512_setzero_si512();
        transpose16(r);
        uint32_t *panel = dst + jp * pairs * NR;
        for (int q = 0; q < 16 && p0 + q < pairs; q++)
            _mm512_storeu_si512(panel + (p0 + q) * NR + v * 16, r[q]);
    }
}

/* Packing and multiplying share one parallel region where they run
 * together: each region's start and end cost thread wake-ups and barriers,
 * which at the tiny model's sizes were a visible share of a step. The
 * bodies use orphaned `omp for ... nowait`, so they also run alone (one
 * thread) outside any region; callers put the barriers in. */
static void pack_a_any(GemmBf16Operand *pa, int trans_a, int64_t K, const float *A,
                       int64_t lda) {
    pa->pair_major = trans_a;
    if (trans_a)
        pack_a_cols(pa->words, pa->rows, K, pa->pairs, A, lda);
    else
        pack_a_rows(pa->words, pa->rows, K, pa->pairs, A, lda);
}

static void pack_b_any(const GemmBf16Operand *pb, int trans_b, int64_t K, const float *B,
                       int64_t ldb) {
    if (trans_b)
        pack_b_cols(pb->words, K, pb->rows, pb->pairs, B, ldb);
    else
        pack_b_rows(pb->words, K, pb->rows, pb->pairs, B, ldb);
}

static int reserve_a(GemmBf16Operand *pa, int64_t M, int64_t K) {
    const int64_t pairs = (K + 1) / 2;
    if (operand_reserve(pa, (size_t)(M * pairs))) return -1;
    pa->rows = M;
    pa->pairs = pairs;
    return 0;
}

static int reserve_b(GemmBf16Operand *pb, int64_t K, int64_t N) {
    const int64_t pairs = (K + 1) / 2, panels = (N + NR - 1) / NR;
    if (operand_reserve(pb, (size_t)(panels * NR * pairs))) return -1;
    pb->rows = N;
    pb->pairs = pairs;
    return 0;
}

#define PACK_PAR_MIN ((int64_t)1 << 16)     /* values packed */
#define MULTIPLY_PAR_MIN ((int64_t)1 << 15) /* M * N * pairs */

int gemm_bf16_pack_a(GemmBf16Operand *pa, int trans_a, int64_t M, int64_t K, const float *A,
                     int64_t lda) {
    if (reserve_a(pa, M, K)) return -1;
#pragma omp parallel if (M * K > PACK_PAR_MIN)
    pack_a_any(pa, trans_a, K, A, lda);
    return 0;
}

int gemm_bf16_pack_b(GemmBf16Operand *pb, int trans_b, int64_t K, int64_t N, const float *B,
                     int64_t ldb) {
    if (reserve_b(pb, K, N)) return -1;
#pragma omp parallel if (N * K > PACK_PAR_MIN)
    pack_b_any(pb, trans_b, K, B, ldb);
    return 0;
}

/* ----------------------------------------------------------- multiply --- */

/* C tile [mr, up to NR] = alpha * sum_p a_r[p] . panel[p] + beta * C, with
 * a_r[p] at a[r * pairs + p] (row-major A) or a[p * lda + r] (pair-major).
 * Only the first nv vectors of the panel are multiplied: a last panel of
 * 32 or fewer columns (N = 128 is two panels and 32 columns, as most of
 * the tiny model's products are) skips the third vector's work. */
BF16_INLINE void tile(int mr, int pm, int nv, int64_t lda, int64_t pairs, const uint32_t *a,
                      const uint32_t *panel, float *c, int64_t ldc, int64_t ncols, float alpha,
                      float beta) {
    /* the loops over r and v must unroll fully, or acc lives on the stack */
    __m512 acc[MR][NRV];
    __m512bh b[NRV];
#pragma GCC unroll 8
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 3
        for (int v = 0; v < nv; v++) acc[r][v] = _mm512_setzero_ps();
    for (int64_t p = 0; p < pairs; p++) {
        const uint32_t *bp = panel + p * NR;
#pragma GCC unroll 3
        for (int v = 0; v < nv; v++) b[v] = (__m512bh)_mm512_load_si512(bp + 16 * v);
#pragma GCC unroll 8
        for (int r = 0; r < mr; r++) {
            const uint32_t w = pm ? a[p * lda + r] : a[r * pairs + p];
            __m512bh ar = (__m512bh)_mm512_set1_epi32((int)w);
#pragma GCC unroll 3
            for (int v = 0; v < nv; v++) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], ar, b[v]);
        }
    }
    const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
#pragma GCC unroll 3
    for (int v = 0; v < nv; v++) {
        const __mmask16 m = mask_first(ncols - 16 * v);
        if (!m) break;
#pragma GCC unroll 8
        for (int r = 0; r < mr; r++) {
            float *cp = c + r * ldc + 16 * v;
            __m512 out = _mm512_mul_ps(va, acc[r][v]);
            if (beta != 0.0f) out = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m, cp), out);
            _mm512_mask_storeu_ps(cp, m, out);
        }
    }
}

/* Whole tiles (mr == MR) take the narrower forms; the few edge tiles of
 * fewer rows multiply all three vectors. */
#define TILE_CASES(PM)                                                                             \
    switch (mr) {                                                                                  \
    case 1: tile(1, PM, NRV, lda, pairs, a, panel, c, ldc, ncols, alpha, beta); break;             \
    case 2: tile(2, PM, NRV, lda, pairs, a, panel, c, ldc, ncols, alpha, beta); break;             \
    case 3: tile(3, PM, NRV, lda, pairs, a, panel, c, ldc, ncols, alpha, beta); break;             \
    case 4: tile(4, PM, NRV, lda, pairs, a, panel, c, ldc, ncols, alpha, beta); break;             \
    case 5: tile(5, PM, NRV, lda, pairs, a, panel, c, ldc, ncols, alpha, beta); break;             \
    case 6: tile(6, PM, NRV, lda, pairs, a, panel, c, ldc, ncols, alpha, beta); break;             \
    case 7: tile(7, PM, NRV, lda, pairs, a, panel, c, ldc, ncols, alpha, beta); break;             \
    default:                                                                                       \
        if (ncols <= 16)                                                                           \
            tile(MR, PM, 1, lda, pairs, a, panel, c, ldc, ncols, alpha, beta);                     \
        else if (ncols <= 32)                                                                      \
            tile(MR, PM, 2, lda, pairs, a, panel, c, ldc, ncols, alpha, beta);                     \
        else                                                                                       \
            tile(MR, PM, NRV, lda, pairs, a, panel, c, ldc, ncols, alpha, beta);                   \
        break;                                                                                     \
    }
BF16_TARGET static void tile_any(int mr, int pm, int64_t lda, int64_t pairs, const uint32_t *a,
                                 const uint32_t *panel, float *c, int64_t ldc, int64_t ncols,
                                 float alpha, float beta) {
    if (pm)
        TILE_CASES(1)
    else
        TILE_CASES(0)
}
#undef TILE_CASES

/* Inside or outside a parallel region (orphaned omp for). With enough row
 * tiles each thread takes a contiguous share of them and walks every panel
 * over it: the packings split A's rows the same way, so a thread multiplies
 * the rows it packed, from its own L2. (Splitting by panel made both
 * threads read all of A, half of it from the other core: 2048-row products
 * with N = 96 ran at 0.6 of N = 48's rate.) Few row tiles (decode) split
 * the (panel, row tile) pairs instead. */
BF16_TARGET static void multiply_avx512(const GemmBf16Operand *pa, const GemmBf16Operand *pb,
                                        float alpha, float beta, float *C, int64_t ldc,
                                        int64_t nt, int64_t me) {
    const int64_t M = pa->rows, N = pb->rows, pairs = pa->pairs;
    const int64_t mt = (M + MR - 1) / MR, panels = (N + NR - 1) / NR;
#define TILE_AT(jp, it)                                                                            \
    tile_any((int)min64(MR, M - (it) * MR), pa->pair_major, M, pairs,                              \
             pa->words + (pa->pair_major ? (it) * MR : (it) * MR * pairs),                         \
             pb->words + (jp) * pairs * NR, C + (it) * MR * ldc + (jp) * NR, ldc,                  \
             N - (jp) * NR, alpha, beta)
    if (mt >= 4 * nt) {
        const int64_t t0 = mt * me / nt, t1 = mt * (me + 1) / nt;
        for (int64_t jp = 0; jp < panels; jp++)
            for (int64_t it = t0; it < t1; it++) TILE_AT(jp, it);
        return;
    }
    /* panel-major order: a thread's consecutive tiles share one B panel */
    const int64_t tiles = mt * panels;
    for (int64_t t = tiles * me / nt; t < tiles * (me + 1) / nt; t++) TILE_AT(t / mt, t % mt);
#undef TILE_AT
}

/* ---------------------------------------------------------------- AMX --- */

/* With AMX (Sapphire Rapids and later) a TDPBF16PS multiplies a 16-row,
 * 32-value tile of op(A) by a 32-value, 16-column tile of op(B) into 16 x 16
 * fp32 sums: 16 times the work of a VDPBF16PS for the same issue slot. The
 * packed forms already are tile layouts: packed A rows are A tiles (16 rows,
 * 16 pairs, stride `pairs` words) and a B panel's rows are B tiles (16 pairs,
 * 16 columns, stride NR words), so the products read them in place. A block
 * of 16 rows by one panel keeps its three 16 x 16 sums in tiles 0-2, the A
 * tile in 3 and the panel's three B tiles in 4-6. Every element of C is
 * still summed by one thread over the whole k range in a fixed order, so
 * the bits do not depend on the thread count; nor on M: a block of fewer
 * than 16 rows runs on shorter tiles, and a row's sums are the same
 * whatever rows share its block (decoding one row or 64 gives each row the
 * same logits). */
#define AMX_TARGET                                                                                 \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,amx-tile,amx-bf16")))
#define AMX_ROWS 16
#define AMX_PAIRS 16 /* pairs of k per tile step (64 bytes of a tile row) */

typedef struct AmxTileConfig {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} AmxTileConfig;

/* Tiles 0-3 (sums, A) get `rows` rows: a block of fewer than 16 rows (a
 * decode step's few rows, the last block of a product) reads its A tile in
 * place instead of from a zero-padded copy. (TDPBF16PS takes as long for
 * one row as for 16: bench/RESULTS.md, "Twelfth session".) */
AMX_TARGET static void amx_configure(int64_t rows) {
    AmxTileConfig cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 7; t++) cfg.colsb[t] = 64, cfg.rows[t] = t < 4 ? (uint8_t)rows : AMX_ROWS;
    /* not _tile_loadconfig: GCC 12's form names only the first 8 bytes as
     * read, so the stores to the rest may be dropped (a bench that used it
     * loaded a garbage configuration and faulted) */
    __asm__ volatile("ldtilecfg %0" : : "m"(cfg));
}

/* AmxScratch.rows after amx_configure_pair(16, rows1): apart from 1..16 */
#define AMX_PAIR_CONFIG(rows1) (AMX_ROWS + (rows1))

/* Two row blocks at once (amx_pair_panel): sums 0-1 (block 0, rows0)
 * and 2-3 (block 1, rows1), A tiles 4 (rows0) and 5 (rows1), B tiles 6-7. */
AMX_TARGET static void amx_configure_pair(int64_t rows0, int64_t rows1) {
    AmxTileConfig cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    const uint8_t rows[8] = {(uint8_t)rows0, (uint8_t)rows0, (uint8_t)rows1, (uint8_t)rows1,
                             (uint8_t)rows0, (uint8_t)rows1, AMX_ROWS, AMX_ROWS};
    for (int t = 0; t < 8; t++) cfg.colsb[t] = 64, cfg.rows[t] = rows[t];
    /* not _tile_loadconfig: GCC 12's form names only the first 8 bytes as
     * read, so the stores to the rest may be dropped (a bench that used it
     * loaded a garbage configuration and faulted) */
    __asm__ volatile("ldtilecfg %0" : : "m"(cfg));
}

/* Per-thread scratch of one product: a copied A block (16 rows of kp pairs)
 * and the last, partial k step of one panel, zero past `pairs`. */
typedef struct AmxScratch {
    uint32_t *a;      /* 16 * kp words, or NULL when A is read in place */
    int64_t a_block;  /* the row block held in a, -1 for none */
    int64_t rows;     /* the configuration loaded: rows (amx_configure), AMX_PAIR_CONFIG
                         (amx_configure_pair), 0: none */
    uint32_t btail[AMX_PAIRS * NR] __attribute__((aligned(64)));
    float c[2 * AMX_ROWS * NR] __attribute__((aligned(64)));
} AmxScratch;

/* Packed A rows are A tiles as they are when row-major with whole k steps;
 * otherwise each block is copied (amx_a_block). */
static int amx_a_in_place(const GemmBf16Operand *pa) {
    return !pa->pair_major && pa->pairs % AMX_PAIRS == 0;
}

/* Rows i0..i0+15 (or to M) of op(A) as tile rows: in place when
 * amx_a_in_place; otherwise copied into
 * s->a, zero past M and past pairs, and transposed from the pair-major form.
 * *ld gets the row stride in words. */
AMX_TARGET static const uint32_t *amx_a_block(const GemmBf16Operand *pa, int64_t i0, int64_t kp,
                                              AmxScratch *s, int64_t *ld) {
    const int64_t M = pa->rows, pairs = pa->pairs, mr = min64(AMX_ROWS, M - i0);
    if (amx_a_in_place(pa)) {
        *ld = pairs;
        return pa->words + i0 * pairs;
    }
    *ld = kp;
    if (s->a_block == i0) return s->a;
    s->a_block = i0;
    if (!pa->pair_major) {
        for (int64_t r = 0; r < AMX_ROWS; r++) {
            uint32_t *dst = s->a + r * kp;
            const int64_t n = r < mr ? pairs : 0;
            if (n) memcpy(dst, pa->words + (i0 + r) * pairs, (size_t)n * sizeof(uint32_t));
            memset(dst + n, 0, (size_t)(kp - n) * sizeof(uint32_t));
        }
        return s->a;
    }
    const __mmask16 mi = mask_first(mr);
    for (int64_t p0 = 0; p0 < kp; p0 += AMX_PAIRS) {
        __m512i t[16];
        for (int q = 0; q < 16; q++)
            t[q] = p0 + q < pairs ? _mm512_maskz_loadu_epi32(mi, pa->words + (p0 + q) * M + i0)
                                  : _mm512_setzero_si512();
        transpose16(t); /* t[r] = row i0 + r's pairs p0..p0+15 */
        for (int r = 0; r < AMX_ROWS; r++) _mm512_store_si512(s->a + r * kp + p0, t[r]);
    }
    return s->a;
}

/* The panel's pairs past the last whole k step, zero-filled to 16 (the
 * rows after them belong to the next panel, and 0 x NaN would be NaN). */
static void amx_b_tail(const uint32_t *panel, int64_t pairs, uint32_t *btail) {
    const int64_t full = pairs / AMX_PAIRS * AMX_PAIRS, rem = pairs - full;
    memcpy(btail, panel + full * NR, (size_t)(rem * NR) * sizeof(uint32_t));
    memset(btail + rem * NR, 0, (size_t)((AMX_PAIRS - rem) * NR) * sizeof(uint32_t));
}

/* One 16-row block times one panel's first nv column tiles, stored to c
 * with a row stride of ldc floats. */
static inline __attribute__((always_inline)) AMX_TARGET void
amx_block(int nv, const uint32_t *a, int64_t lda, const uint32_t *panel, int64_t pairs,
          const uint32_t *btail, float *c, int64_t ldc) {
    const int64_t full = pairs / AMX_PAIRS, steps = (pairs + AMX_PAIRS - 1) / AMX_PAIRS;
    _tile_zero(0);
    if (nv > 1) _tile_zero(1);
    if (nv > 2) _tile_zero(2);
    for (int64_t q = 0; q < steps; q++) {
        const uint32_t *b = q < full ? panel + q * AMX_PAIRS * NR : btail;
        _tile_loadd(3, a + q * AMX_PAIRS, lda * 4);
        _tile_loadd(4, b, NR * 4);
        _tile_dpbf16ps(0, 3, 4);
        if (nv > 1) {
            _tile_loadd(5, b + 16, NR * 4);
            _tile_dpbf16ps(1, 3, 5);
        }
        if (nv > 2) {
            _tile_loadd(6, b + 32, NR * 4);
            _tile_dpbf16ps(2, 3, 6);
        }
    }
    _tile_stored(0, c, ldc * 4);
    if (nv > 1) _tile_stored(1, c + 16, ldc * 4);
    if (nv > 2) _tile_stored(2, c + 32, ldc * 4);
}

/* C rows [mr, ncols] = alpha * sums + beta * C, as the register tile ends. */
BF16_TARGET static void amx_store(const float *sums, int64_t mr, int64_t ncols, float alpha,
                                  float beta, float *c, int64_t ldc) {
    const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    for (int v = 0; v < NRV; v++) {
        const __mmask16 m = mask_first(ncols - 16 * v);
        if (!m) break;
        for (int64_t r = 0; r < mr; r++) {
            float *cp = c + r * ldc + 16 * v;
            __m512 out = _mm512_mul_ps(va, _mm512_load_ps(sums + r * NR + 16 * v));
            if (beta != 0.0f) out = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m, cp), out);
            _mm512_mask_storeu_ps(cp, m, out);
        }
    }
}

AMX_TARGET static void amx_block_panel(const GemmBf16Operand *pa, const GemmBf16Operand *pb,
                                       int64_t i0, int64_t jp, int64_t kp, AmxScratch *s,
                                       float alpha, float beta, float *C, int64_t ldc) {
    const int64_t pairs = pa->pairs, ncols = pb->rows - jp * NR;
    const uint32_t *panel = pb->words + jp * pairs * NR;
    const int64_t mr = min64(AMX_ROWS, pa->rows - i0);
    if (!amx_a_in_place(pa) && !s->a) { /* no scratch: this block on the VDPBF16PS tiles */
        for (int64_t i = i0; i < min64(i0 + AMX_ROWS, pa->rows); i += MR)
            tile_any((int)min64(MR, pa->rows - i), pa->pair_major, pa->rows, pairs,
                     pa->words + (pa->pair_major ? i : i * pairs), panel, C + i * ldc + jp * NR,
                     ldc, ncols, alpha, beta);
        return;
    }
    if (s->rows != mr) amx_configure(mr), s->rows = mr;
    int64_t lda;
    const uint32_t *a = amx_a_block(pa, i0, kp, s, &lda);
    if (pairs % AMX_PAIRS) amx_b_tail(panel, pairs, s->btail);
    const int nv = ncols <= 16 ? 1 : ncols <= 32 ? 2 : 3;
    /* C = the sums (alpha 1, beta 0, whole column tiles): the tiles are
     * stored straight into C, the same bits as the pass through s->c */
    const int direct = alpha == 1.0f && beta == 0.0f && ncols >= 16 * nv;
    float *out = direct ? C + i0 * ldc + jp * NR : s->c;
    const int64_t ldo = direct ? ldc : NR;
    if (nv == 1)
        amx_block(1, a, lda, panel, pairs, s->btail, out, ldo);
    else if (nv == 2)
        amx_block(2, a, lda, panel, pairs, s->btail, out, ldo);
    else
        amx_block(3, a, lda, panel, pairs, s->btail, out, ldo);
    if (!direct) amx_store(s->c, mr, ncols, alpha, beta, C + i0 * ldc + jp * NR, ldc);
}

/* Two row blocks (A in place: rows a0 and a1, lda words apart; whole k
 * steps only, as amx_a_in_place promises) times column tiles j0 and j0 + 1
 * of a panel (two = 0: j0 alone), into c0 and c1 (the blocks' first rows,
 * row stride ldc). Per k step two A and two B
 * tiles feed four sums, so each B tile load serves both row blocks (the
 * one-block kernel loads a B tile per product, from L2 once the panels
 * outgrow L1). Each sum runs the same k steps as amx_block's, so the bits
 * are the same. */
static inline __attribute__((always_inline)) AMX_TARGET void
amx_pair(int two, const uint32_t *a0, const uint32_t *a1, int64_t lda, const uint32_t *b,
         int64_t pairs, float *c0, float *c1, int64_t ldc) {
    const int64_t steps = pairs / AMX_PAIRS;
    _tile_zero(0);
    _tile_zero(2);
    if (two) {
        _tile_zero(1);
        _tile_zero(3);
    }
    for (int64_t q = 0; q < steps; q++) {
        const uint32_t *bq = b + q * AMX_PAIRS * NR;
        _tile_loadd(4, a0 + q * AMX_PAIRS, lda * 4);
        _tile_loadd(6, bq, NR * 4);
        _tile_loadd(5, a1 + q * AMX_PAIRS, lda * 4);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(2, 5, 6);
        if (two) {
            _tile_loadd(7, bq + 16, NR * 4);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(3, 5, 7);
        }
    }
    _tile_stored(0, c0, ldc * 4);
    _tile_stored(2, c1, ldc * 4);
    if (two) {
        _tile_stored(1, c0 + 16, ldc * 4);
        _tile_stored(3, c1 + 16, ldc * 4);
    }
}

/* Row blocks i0 and i0 + 16 (A in place) times panel jp: column tiles 0-1
 * in one pass over k, tile 2 in a second. */
AMX_TARGET static void amx_pair_panel(const GemmBf16Operand *pa, const GemmBf16Operand *pb,
                                      int64_t i0, int64_t jp, AmxScratch *s, float alpha,
                                      float beta, float *C, int64_t ldc) {
    const int64_t pairs = pa->pairs, ncols = pb->rows - jp * NR;
    const uint32_t *panel = pb->words + jp * pairs * NR;
    const int64_t mr0 = AMX_ROWS, mr1 = min64(AMX_ROWS, pa->rows - i0 - AMX_ROWS);
    if (s->rows != AMX_PAIR_CONFIG(mr1)) {
        amx_configure_pair(mr0, mr1);
        s->rows = AMX_PAIR_CONFIG(mr1);
    }
    const int nv = ncols <= 16 ? 1 : ncols <= 32 ? 2 : 3;
    const int direct = alpha == 1.0f && beta == 0.0f && ncols >= 16 * nv;
    float *out = direct ? C + i0 * ldc + jp * NR : s->c;
    const int64_t ldo = direct ? ldc : NR;
    const uint32_t *a0 = pa->words + i0 * pairs, *a1 = a0 + AMX_ROWS * pairs;
    float *o1 = out + AMX_ROWS * ldo;
    if (nv == 1) {
        amx_pair(0, a0, a1, pairs, panel, pairs, out, o1, ldo);
    } else {
        amx_pair(1, a0, a1, pairs, panel, pairs, out, o1, ldo);
        if (nv == 3) /* the third tile's B: words 32..47 of each pair row */
            amx_pair(0, a0, a1, pairs, panel + 32, pairs, out + 32, o1 + 32, ldo);
    }
    if (!direct) amx_store(s->c, AMX_ROWS + mr1, ncols, alpha, beta, C + i0 * ldc + jp * NR, ldc);
}

/* B bytes per chunk of panels in multiply_amx: 256 KiB ran GPT-2's forward
 * shapes at 2.0-2.1 TFLOP/s, 1 MiB at 1.8-2.0, one chunk of all panels at
 * 1.3-1.5 (bench/RESULTS.md, "Thirteenth session"). */
#define AMX_B_CHUNK_BYTES ((int64_t)256 << 10)

static inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* As multiply_avx512, in 16-row blocks. A thread that cannot allocate its
 * copy of A multiplies the blocks that need one on the VDPBF16PS tiles
 * (other bits, as exact), with the same division of the work. */
AMX_TARGET static void multiply_amx(const GemmBf16Operand *pa, const GemmBf16Operand *pb,
                                   float alpha, float beta, float *C, int64_t ldc, int64_t nt,
                                   int64_t me) {
    const int64_t M = pa->rows, N = pb->rows, pairs = pa->pairs;
    const int64_t kp = (pairs + AMX_PAIRS - 1) / AMX_PAIRS * AMX_PAIRS;
    const int64_t mb = (M + AMX_ROWS - 1) / AMX_ROWS, panels = (N + NR - 1) / NR;
    AmxScratch s __attribute__((aligned(64)));
    s.a = NULL, s.a_block = -1, s.rows = 0;
    if (!amx_a_in_place(pa) &&
        posix_memalign((void **)&s.a, 64, (size_t)(AMX_ROWS * kp) * sizeof(uint32_t)))
        s.a = NULL;
    if (mb >= 2 * nt) {
        /* a contiguous share of row blocks, each against every panel */
        const int64_t b0 = mb * me / nt, b1 = mb * (me + 1) / nt;
        /* panels in chunks that stay in L2 while every block of the share
         * passes over them, so B streams from L3 once, not once per block
         * pair; where A is copied per block (amx_a_block) that copy would be
         * redone per chunk, so then one chunk */
        const int64_t panel_bytes = pairs * NR * (int64_t)sizeof(uint32_t);
        const int64_t chunk = amx_a_in_place(pa) ? max64(1, AMX_B_CHUNK_BYTES / panel_bytes) : panels;
        for (int64_t j0 = 0; j0 < panels; j0 += chunk) {
            const int64_t j1 = min64(panels, j0 + chunk);
            int64_t b = b0;
            if (amx_a_in_place(pa)) /* two blocks at a time, then an odd last one */
                for (; b + 1 < b1; b += 2)
                    for (int64_t jp = j0; jp < j1; jp++)
                        amx_pair_panel(pa, pb, b * AMX_ROWS, jp, &s, alpha, beta, C, ldc);
            for (; b < b1; b++)
                for (int64_t jp = j0; jp < j1; jp++)
                    amx_block_panel(pa, pb, b * AMX_ROWS, jp, kp, &s, alpha, beta, C, ldc);
        }
    } else {
        const int64_t blocks = mb * panels;
        for (int64_t t = blocks * me / nt; t < blocks * (me + 1) / nt; t++)
            amx_block_panel(pa, pb, (t % mb) * AMX_ROWS, t / mb, kp, &s, alpha, beta, C, ldc);
    }
    if (s.rows) _tile_release();
    free(s.a);
}

/* This thread's share of the product when it is one of nt (me its
 * number); nt = 1: all of it. */
static void multiply_share(const GemmBf16Operand *pa, const GemmBf16Operand *pb, float alpha,
                           float beta, float *C, int64_t ldc, int amx, int64_t nt, int64_t me) {
    if (amx)
        multiply_amx(pa, pb, alpha, beta, C, ldc, nt, me);
    else
        multiply_avx512(pa, pb, alpha, beta, C, ldc, nt, me);
}

/* Inside or outside a parallel region: the calling thread's share of the
 * region's (all of it outside one). */
static void multiply(const GemmBf16Operand *pa, const GemmBf16Operand *pb, float alpha, float beta,
                     float *C, int64_t ldc, int amx) {
    multiply_share(pa, pb, alpha, beta, C, ldc, amx, omp_get_num_threads(), omp_get_thread_num());
}

void gemm_bf16_packed(const GemmBf16Operand *pa, const GemmBf16Operand *pb, float alpha, float beta,
                      float *C, int64_t ldc) {
    if (pa->rows == 0 || pb->rows == 0) return;
    const int amx = gemm_bf16_amx();
#pragma omp parallel if (pa->rows * pb->rows * pa->pairs > MULTIPLY_PAR_MIN)
    multiply(pa, pb, alpha, beta, C, ldc, amx);
}

int gemm_bf16_reserve_a(GemmBf16Operand *pa, int64_t M, int64_t K) { return reserve_a(pa, M, K); }

void gemm_bf16_with_b_in_region(GemmBf16Operand *pa, int trans_a, int64_t M, int64_t K,
                                const float *A, int64_t lda, const GemmBf16Operand *pb,
                                float alpha, float beta, float *C, int64_t ldc) {
    if (M == 0 || pb->rows == 0) return;
    pack_a_any(pa, trans_a, K, A, lda);
#pragma omp barrier
    multiply(pa, pb, alpha, beta, C, ldc, gemm_bf16_amx());
#pragma omp barrier
}

void gemm_bf16_rows_with_b(GemmBf16Operand *pa, int64_t r0, int64_t r1, int64_t K,
                           const float *A, int64_t lda, const GemmBf16Operand *pb, float alpha,
                           float beta, float *C, int64_t ldc) {
    if (r1 <= r0 || pb->rows == 0) return;
    GemmBf16Operand rows = *pa;
    rows.words = pa->words + r0 * pa->pairs, rows.rows = r1 - r0, rows.pair_major = 0;
    for (int64_t i = 0; i < rows.rows; i++)
        pack_a_row(rows.words + i * rows.pairs, K, rows.pairs, A + (r0 + i) * lda);
    multiply_share(&rows, pb, alpha, beta, C + r0 * ldc, ldc, gemm_bf16_amx(), 1, 0);
}

int gemm_bf16_with_b_after(const GemmBf16Prologue *pro, GemmBf16Operand *pa, int trans_a,
                           int64_t M, int64_t K, const float *A, int64_t lda,
                           const GemmBf16Operand *pb, float alpha, float beta, float *C,
                           int64_t ldc) {
    if (reserve_a(pa, M, K)) return -1;
    if (M == 0 || pb->rows == 0) {
        if (pro) pro->run(pro->ctx);
        return 0;
    }
    const int amx = gemm_bf16_amx();
#pragma omp parallel if (M * pb->rows * pa->pairs > MULTIPLY_PAR_MIN)
    {
        if (pro) pro->run(pro->ctx);
        pack_a_any(pa, trans_a, K, A, lda);
#pragma omp barrier
        multiply(pa, pb, alpha, beta, C, ldc, amx);
    }
    return 0;
}

static int linear_backward_any(GemmBf16Operand *dy_rows, GemmBf16Operand *dy_cols,
                               GemmBf16Operand *w_op, GemmBf16Operand *x_op,
                               const GemmBf16Operand *w_packed, int64_t N, int64_t C, int64_t OC,
                               const float *dy, const GemmBf16RowSource *src, const float *x,
                               const float *w, float beta, float *dx, float *dw) {
    if (reserve_a(dy_rows, N, OC) || reserve_a(dy_cols, OC, N) || reserve_b(x_op, N, C) ||
        (!w_packed && reserve_b(w_op, OC, C)))
        return -1;
    const GemmBf16Operand *wb = w_packed ? w_packed : w_op;
    dy_rows->pair_major = 0, dy_cols->pair_major = 1;
    if (N == 0 || C == 0 || OC == 0) return 0;
    /* two rows of dy per thread when they are formed here */
    float *bufs = src ? malloc((size_t)(omp_get_max_threads() * 2 * OC) * sizeof(float)) : NULL;
    if (src && !bufs) return -1;
    const int amx = gemm_bf16_amx();
#pragma omp parallel if (N * C * dy_rows->pairs > MULTIPLY_PAR_MIN)
    {
        float *buf = bufs ? bufs + omp_get_thread_num() * 2 * OC : NULL;
        pack_a_both(dy_rows->words, dy_cols->words, N, OC, dy, OC, src, buf);
        pack_b_rows(x_op->words, N, C, x_op->pairs, x, C);
        if (!w_packed) pack_b_rows(w_op->words, OC, C, w_op->pairs, w, C);
#pragma omp barrier
        multiply(dy_rows, wb, 1.0f, beta, dx, C, amx);
        multiply(dy_cols, x_op, 1.0f, 1.0f, dw, C, amx);
    }
    free(bufs);
    return 0;
}

int gemm_bf16_linear_backward(GemmBf16Operand *dy_rows, GemmBf16Operand *dy_cols,
                              GemmBf16Operand *w_op, GemmBf16Operand *x_op,
                              const GemmBf16Operand *w_packed, int64_t N, int64_t C, int64_t OC,
                              const float *dy, const float *x, const float *w, float beta,
                              float *dx, float *dw) {
    return linear_backward_any(dy_rows, dy_cols, w_op, x_op, w_packed, N, C, OC, dy, NULL, x, w,
                               beta, dx, dw);
}

int gemm_bf16_linear_backward_from(GemmBf16Operand *dy_rows, GemmBf16Operand *dy_cols,
                                   GemmBf16Operand *w_op, GemmBf16Operand *x_op,
                                   const GemmBf16Operand *w_packed, int64_t N, int64_t C,
                                   int64_t OC, const GemmBf16RowSource *src, const float *x,
                                   const float *w, float beta, float *dx, float *dw) {
    return linear_backward_any(dy_rows, dy_cols, w_op, x_op, w_packed, N, C, OC, NULL, src, x, w,
                               beta, dx, dw);
}

int gemm_bf16_with_b(GemmBf16Operand *pa, int trans_a, int64_t M, int64_t K, const float *A,
                     int64_t lda, const GemmBf16Operand *pb, float alpha, float beta, float *C,
                     int64_t ldc) {
    return gemm_bf16_with_b_after(NULL, pa, trans_a, M, K, A, lda, pb, alpha, beta, C, ldc);
}

int gemm_bf16_after(const GemmBf16Prologue *pro, GemmBf16 *g, int trans_a, int trans_b, int64_t M,
                    int64_t N, int64_t K, float alpha, const float *A, int64_t lda,
                    const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
    if (reserve_a(&g->a, M, K) || reserve_b(&g->b, K, N)) return -1;
    if (M == 0 || N == 0) {
        if (pro) pro->run(pro->ctx);
        return 0;
    }
    const int amx = gemm_bf16_amx();
#pragma omp parallel if (M * N * g->a.pairs > MULTIPLY_PAR_MIN)
    {
        if (pro) pro->run(pro->ctx);
        pack_a_any(&g->a, trans_a, K, A, lda);
        pack_b_any(&g->b, trans_b, K, B, ldb);
#pragma omp barrier
        multiply(&g->a, &g->b, alpha, beta, C, ldc, amx);
    }
    return 0;
}

int gemm_bf16(GemmBf16 *g, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha,
              const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
              int64_t ldc) {
    return gemm_bf16_after(NULL, g, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
