/* model/cpu/ops_cpu.c — the CPU backend: BLAS for matmuls, OpenMP for the rest.
 *
 * Every parallel loop splits work so that each output element is written by
 * exactly one thread and reductions run in a fixed order: results do not depend
 * on the thread count or on timing (ponder's runs are bit-reproducible on CPU).
 * Hot per-row kernels are compiled for AVX-512, AVX2 and baseline x86-64 and
 * chosen at run time (PONDER_HOT), so the binary runs on any x86-64 CPU. */
#include "model/ops.h"

#include <math.h>   /* sqrtf, tanhf, logf, expf */
#include <omp.h>    /* omp_get_thread_num */
#include <pthread.h> /* pthread_key_create (bf16 scratch) */
#include <stdio.h>  /* fprintf (out of memory for bf16 operands) */
#include <stdlib.h> /* calloc, free, malloc */
#include <string.h> /* memset, memcpy */
#include <sys/mman.h> /* madvise */
#include <unistd.h>   /* sysconf (L2 size) */

#include "model/cpu/blas.h"    /* blas_sgemm */
#include "model/cpu/gemm_bf16.h" /* gemm_bf16 (the cpu-bf16 table) */
#include "model/cpu/kernels.h" /* PONDER_HOT, exp_fast */
#include "util/bf16.h"           /* bf16_to_float */

/* Loops over less work than this (elements, or multiply-adds for attention)
 * run on the calling thread: waking the team costs more than it saves, and on
 * a shared machine a wake-up can wait for a whole scheduler quantum. */
#define PAR_MIN_WORK ((int64_t)1 << 16)

/* Row-wise forward elementwise ops (norms, activations, RoPE, residual adds)
 * split over threads from this many elements: a decode step of 64 rows runs
 * each at a few thousand elements, and serially they left the other thread
 * waiting for ~15% of a batch-64 bf16 decode (perf). Each row's values do not
 * depend on the split, so the bits are the same either way. */
#define ROW_PAR_MIN ((int64_t)1 << 12)

/* Reductions keep LANES independent partial sums that are combined in a fixed
 * order at the end: GCC vectorises them without -ffast-math (which it would
 * not do for a single running float sum), and the result does not depend on
 * the thread count. */
#define LANES 16

/* Pairwise, in a fixed order: each level is one vector add, where a running
 * sum would be LANES dependent scalar adds (without -ffast-math the compiler
 * must keep that order), which made a 32-wide dot product cost ~4x its
 * multiply-adds in the decode attention. */
static inline float combine_lanes(const float *acc) {
    float t[LANES];
    for (int k = 0; k < LANES; k++) t[k] = acc[k];
    for (int w = LANES / 2; w > 0; w /= 2)
        for (int k = 0; k < w; k++) t[k] += t[k + w];
    return t[0];
}

/* ------------------------------------------------------------- vectors --- */
/* GCC vector types for the few loops the auto-vectoriser leaves scalar (lane
 * sums, exp inside softmax, register-resident accumulators). */
#pragma GCC diagnostic ignored "-Wpsabi" /* V16 never crosses a call: every helper is always_inline */
typedef float V16 __attribute__((vector_size(64)));

static inline __attribute__((always_inline)) V16 v16_load(const float *p) {
    V16 v;
    memcpy(&v, p, sizeof v);
    return v;
}

typedef int32_t V16i __attribute__((vector_size(64)));
typedef uint16_t V16h __attribute__((vector_size(32)));
typedef uint32_t V16u __attribute__((vector_size(64)));

/* The bf16 KV cache's order within one head's hd values (cpu_kv_store_bf16
 * writes it, the cached attention reads it): in each whole block of 32,
 * 32-bit word i holds value i in its upper half and value 16 + i in its
 * lower half, so one 64-byte load widens to both 16-value halves with one
 * mask and one shift. In plain order GCC widened 16 values with six
 * instructions (16-bit lanes go through 128-bit pieces), and that was most of
 * a batch-64 bf16 decode's attention. Values past the last whole block keep
 * their places. */
static inline int64_t bf16_cache_index(int64_t c, int64_t hd) {
    const int64_t block = c & ~(int64_t)31, r = c - block;
    if (block + 32 > hd) return c;
    return block + (r < 16 ? 2 * r + 1 : 2 * (r - 16));
}

/* Values 16 c .. 16 c + 15 of the hd values at p (fp32, or a bf16 cache's
 * whole blocks): the attention kernels take both kinds of cache through
 * this, with bf16 and c compile-time constants after inlining (two chunks
 * of one block load the same 64 bytes, and GCC loads them once). */
static inline __attribute__((always_inline)) V16 v16_load_any(const void *p, int64_t row,
                                                              int64_t c, int bf16) {
    if (!bf16) return v16_load((const float *)p + row + 16 * c);
    V16u w;
    memcpy(&w, (const uint16_t *)p + row + 32 * (c / 2), sizeof w);
    return (V16)(c % 2 ? w << 16 : w & 0xffff0000u);
}

/* exp_fast (kernels.h) on 16 lanes: the same clamp, range reduction and
 * polynomial; n is rounded to nearest by the 1.5 * 2^23 trick instead of
 * floor(t + 0.5) (they differ only at exact halves, where both keep
 * |r| <= ln2/2). */
static inline __attribute__((always_inline)) V16 v16_exp(V16 x) {
    V16i lo = x < -87.0f, hi = x > 88.0f;
    x = (V16)(((V16i)x & ~lo) | ((V16i)((V16){0} - 87.0f) & lo));
    x = (V16)(((V16i)x & ~hi) | ((V16i)((V16){0} + 88.0f) & hi));
    const float magic = 12582912.0f;
    V16 n = (x * 1.44269504088896341f + magic) - magic;
    V16 r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    V16 p = (V16){0} + 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    V16i bits = (__builtin_convertvector(n, V16i) + 127) << 23;
    return p * (V16)bits;
}

static inline __attribute__((always_inline)) float v16_sum(V16 v) {
    V16 a = v + __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
    a = a + __builtin_shufflevector(a, a, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11);
    a = a + __builtin_shufflevector(a, a, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
    a = a + __builtin_shufflevector(a, a, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
    return a[0];
}

/* Lane t = v16_sum(d[t]) for 16 vectors, with the same pairwise tree (lane i
 * plus lane i + 8, then + 4, + 2, + 1), so each result has v16_sum's bits.
 * Each level adds two vectors' halves at once: 15 additions and 31 shuffles
 * instead of 64 of each. */
static inline __attribute__((always_inline)) V16 v16_sum16(const V16 *d) {
    V16 e[8], f[4], g[2];
    for (int m = 0; m < 8; m++) /* e[m]: key 2m in lanes 0-7, 2m+1 in 8-15 */
        e[m] = __builtin_shufflevector(d[2 * m], d[2 * m + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18,
                                       19, 20, 21, 22, 23) +
               __builtin_shufflevector(d[2 * m], d[2 * m + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25,
                                       26, 27, 28, 29, 30, 31);
    for (int k = 0; k < 4; k++)
        f[k] = __builtin_shufflevector(e[2 * k], e[2 * k + 1], 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10,
                                       11, 24, 25, 26, 27) +
               __builtin_shufflevector(e[2 * k], e[2 * k + 1], 4, 5, 6, 7, 20, 21, 22, 23, 12, 13,
                                       14, 15, 28, 29, 30, 31);
    for (int p = 0; p < 2; p++)
        g[p] = __builtin_shufflevector(f[2 * p], f[2 * p + 1], 0, 1, 16, 17, 4, 5, 20, 21, 8, 9,
                                       24, 25, 12, 13, 28, 29) +
               __builtin_shufflevector(f[2 * p], f[2 * p + 1], 2, 3, 18, 19, 6, 7, 22, 23, 10, 11,
                                       26, 27, 14, 15, 30, 31);
    V16 h = __builtin_shufflevector(g[0], g[1], 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28,
                                    14, 30) +
            __builtin_shufflevector(g[0], g[1], 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29,
                                    15, 31);
    /* h holds the keys in bit-reversed order */
    return __builtin_shufflevector(h, h, 0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15);
}

/* dst[0..n) = v's first n < 16 lanes, in copies of fixed size: GCC turned the
 * plain loop into a call to memcpy, after which the caller reloaded its
 * vector constants (a call may clobber every vector register); the decode
 * attention's partial key blocks made one such call per row and head. */
static inline __attribute__((always_inline)) void v16_store_first(float *dst, V16 v, int64_t n) {
    float lanes[16];
    memcpy(lanes, &v, sizeof v);
    int64_t t = 0;
    if (n & 8) memcpy(dst + t, lanes + t, 8 * sizeof(float)), t += 8;
    if (n & 4) memcpy(dst + t, lanes + t, 4 * sizeof(float)), t += 4;
    if (n & 2) memcpy(dst + t, lanes + t, 2 * sizeof(float)), t += 2;
    if (n & 1) dst[t] = lanes[t];
}


/* ------------------------------------------------------------- memory ---- */

/* Large buffers (weights, gradients, optimizer moments, the KV cache) go on
 * 2 MiB-aligned memory the kernel may back with huge pages: batched decode
 * walks dozens of per-slot KV regions per step, and with 4 KiB pages nearly
 * every region started with a TLB miss. */
#define CPU_HUGE_MIN ((size_t)4 << 20)
#define CPU_HUGE_ALIGN ((size_t)2 << 20)
static void *cpu_alloc(size_t bytes) {
    if (bytes < CPU_HUGE_MIN) return calloc(1, bytes ? bytes : 1);
    void *p = NULL;
    if (posix_memalign(&p, CPU_HUGE_ALIGN, bytes)) return NULL;
    /* Zero without touching: MADV_DONTNEED turns the whole pages into
     * zero-fill-on-demand ones, so a KV cache sized for max_seq_len costs
     * memory only where it is written (as calloc did); the partial last page
     * may hold another allocation's bytes, so it is cleared by hand. */
    const size_t page = 4096, whole = bytes / page * page;
    if (madvise(p, whole, MADV_DONTNEED) != 0) memset(p, 0, whole);
    memset((char *)p + whole, 0, bytes - whole);
#ifdef MADV_HUGEPAGE
    madvise(p, bytes, MADV_HUGEPAGE); /* advice only: failure leaves 4 KiB pages */
#endif
    return p;
}
static void cpu_free(void *p) { free(p); }
/* The backward zeroes each layer's activation gradients before accumulating
 * into them (~200 MB per GRPO benchmark step); one thread's memset left the
 * other waiting for ~2% of a step (perf). Split in cache-line-aligned parts. */
#define ZERO_PAR_MIN_BYTES ((size_t)1 << 18)
static void cpu_zero(void *p, size_t bytes) {
    if (bytes < ZERO_PAR_MIN_BYTES) {
        memset(p, 0, bytes);
        return;
    }
#pragma omp parallel
    {
        const size_t parts = (size_t)omp_get_num_threads(), t = (size_t)omp_get_thread_num();
        const size_t share = (bytes / parts + 63) & ~(size_t)63;
        const size_t lo = t * share < bytes ? t * share : bytes;
        const size_t hi = lo + share < bytes ? lo + share : bytes;
        memset((char *)p + lo, 0, hi - lo);
    }
}
static void cpu_copy(void *dst, const void *src, size_t bytes) { memcpy(dst, src, bytes); }

/* ------------------------------------------------------------- linear ---- */

/* Outputs [o0, o1) of out[n, o] = inp[n, :] . w[o, :] (+ bias[o]) for n < N
 * <= GEMV_MAX_N, streaming each weight row once for all N inputs. Each
 * input's sum is its own (the same bits whatever N is). */
#define GEMV_MAX_N 8
/* Up to this many rows the linear layer runs as GEMV_MAX_N-row passes over
 * the weights instead of sgemm, which first copies (packs) the whole weight
 * matrix. Measured at the GPT-2 124M shape: 8 sequences decode 1.2x faster
 * in one pass than through sgemm; 16 in two passes 0.88x, so sgemm keeps
 * those. */
#define GEMV_ROWS_MAX 8
/* A matrix-vector product is worth two threads from far less work than a
 * general loop: each thread streams its own rows (measured on the tiny
 * model's decode). */
#define GEMV_PAR_MIN_WORK 16384
/* N is a compile-time constant at each call (gemv_rows), so the
 * accumulators live in registers. */
static inline __attribute__((always_inline)) void gemv_rows_n(float *out, const float *inp,
                                                              const float *w, const float *bias,
                                                              const int64_t N, int64_t C, int64_t OC,
                                                              int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; o++) {
        const float *wr = w + o * C;
        V16 a[GEMV_MAX_N], b[GEMV_MAX_N]; /* two chains per input: even and odd chunks */
        for (int64_t n = 0; n < N; n++) a[n] = (V16){0}, b[n] = (V16){0};
        int64_t c = 0;
        for (; c + 32 <= C; c += 32) {
            V16 w0 = v16_load(wr + c), w1 = v16_load(wr + c + 16);
            for (int64_t n = 0; n < N; n++) {
                a[n] += w0 * v16_load(inp + n * C + c);
                b[n] += w1 * v16_load(inp + n * C + c + 16);
            }
        }
        for (int64_t n = 0; n < N; n++) {
            float sum = v16_sum(a[n] + b[n]);
            for (int64_t k = c; k < C; k++) sum += wr[k] * inp[n * C + k];
            out[n * OC + o] = bias ? sum + bias[o] : sum;
        }
    }
}

PONDER_HOT static void gemv_rows(float *out, const float *inp, const float *w, const float *bias,
                                 int64_t N, int64_t C, int64_t OC, int64_t o0, int64_t o1) {
    switch (N) {
    case 1: gemv_rows_n(out, inp, w, bias, 1, C, OC, o0, o1); break;
    case 2: gemv_rows_n(out, inp, w, bias, 2, C, OC, o0, o1); break;
    case 3: gemv_rows_n(out, inp, w, bias, 3, C, OC, o0, o1); break;
    case 4: gemv_rows_n(out, inp, w, bias, 4, C, OC, o0, o1); break;
    case 5: gemv_rows_n(out, inp, w, bias, 5, C, OC, o0, o1); break;
    case 6: gemv_rows_n(out, inp, w, bias, 6, C, OC, o0, o1); break;
    case 7: gemv_rows_n(out, inp, w, bias, 7, C, OC, o0, o1); break;
    default: gemv_rows_n(out, inp, w, bias, 8, C, OC, o0, o1); break;
    }
}

static void cpu_matmul_forward(float *out, const float *inp, const float *w, const float *bias,
                               int64_t N, int64_t C, int64_t OC) {
    // out[N,OC], inp[N,C], w[OC,C], bias[OC]
    if (N <= GEMV_ROWS_MAX) {
        /* decoding a few sequences: a matrix-vector product is bound by
         * reading the weights, which sgemm would first copy (pack) */
        const int64_t block = 64, nb = (OC + block - 1) / block;
#pragma omp parallel for if (N * OC * C > GEMV_PAR_MIN_WORK) schedule(static)
        for (int64_t b = 0; b < nb; b++)
            for (int64_t n0 = 0; n0 < N; n0 += GEMV_MAX_N)
                gemv_rows(out + n0 * OC, inp + n0 * C, w, bias,
                          N - n0 < GEMV_MAX_N ? N - n0 : GEMV_MAX_N, C, OC, b * block,
                          b * block + block < OC ? b * block + block : OC);
        return;
    }
    float beta = 0.0f;
    if (bias) {
#pragma omp parallel for if (N * OC > PAR_MIN_WORK) schedule(static)
        for (int64_t n = 0; n < N; n++) memcpy(out + n * OC, bias, (size_t)OC * sizeof(float));
        beta = 1.0f;
    }
    blas_sgemm(0, 1, N, OC, C, 1.0f, inp, C, w, C, beta, out, OC);
}

PONDER_HOT static void column_sums_range(float *dbias, const float *dout, int64_t N, int64_t OC,
                                         int64_t o0, int64_t o1) {
    for (int64_t n = 0; n < N; n++) {
        const float *row = dout + n * OC;
        for (int64_t o = o0; o < o1; o++) dbias[o] += row[o];
    }
}

/* dst[j] += sum_n src[n, j] for j < cols, parallel over column ranges so the
 * sum over n runs in row order whatever the thread count. */
static void accumulate_column_sums(float *dst, const float *src, int64_t N, int64_t cols) {
    const int64_t block = 256;
    int64_t nblocks = (cols + block - 1) / block;
#pragma omp parallel for if (N * cols > PAR_MIN_WORK) schedule(static)
    for (int64_t b = 0; b < nblocks; b++) {
        int64_t o0 = b * block, o1 = o0 + block < cols ? o0 + block : cols;
        column_sums_range(dst, src, N, cols, o0, o1);
    }
}

/* dinp[N,C] = dout[N,OC] w[OC,C] + beta dinp;  dw[OC,C] += dout^T inp;
 * dbias[OC] += colsum(dout). beta 0 (matmul_backward_set) gives the bits of
 * beta 1 on a zeroed dinp: sgemm zeroes C, then adds the products as it does
 * onto any C. */
static void cpu_matmul_backward_beta(float *dinp, float *dw, float *dbias, const float *dout,
                                     const float *inp, const float *w, int64_t N, int64_t C,
                                     int64_t OC, float beta) {
    if (dinp) blas_sgemm(0, 0, N, C, OC, 1.0f, dout, OC, w, C, beta, dinp, C);
    if (dw) blas_sgemm(1, 0, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dw, C);
    if (dbias) accumulate_column_sums(dbias, dout, N, OC);
}

static void cpu_matmul_backward(float *dinp, float *dw, float *dbias, const float *dout,
                                const float *inp, const float *w, int64_t N, int64_t C,
                                int64_t OC) {
    cpu_matmul_backward_beta(dinp, dw, dbias, dout, inp, w, N, C, OC, 1.0f);
}

static void cpu_matmul_backward_set(float *dinp, float *dw, float *dbias, const float *dout,
                                    const float *inp, const float *w, int64_t N, int64_t C,
                                    int64_t OC) {
    cpu_matmul_backward_beta(dinp, dw, dbias, dout, inp, w, N, C, OC, 0.0f);
}

/* ----------------------------------------------- bf16 products ---- */
/* The cpu-bf16 table (ops_cpu_bf16): the linear layers' and the LM head's
 * products take bf16 operands (gemm_bf16.h), everything else is the fp32
 * table's. */

/* Packed operands, kept between calls by each calling thread: packing into
 * fresh memory on every call spent ~5% of a GPT-2 step in page faults (the
 * LM head's weight alone is 77 MB packed). Grow-only; freed when the thread
 * exits (pthread key destructor) or at process exit. */
/* A weight packed as the B operand of x w^T or of dy w, kept while weights
 * are frozen (ModelOps.weights_frozen): a rollout's decode steps, or the
 * micro-batches of one optimizer step. `fresh` says it was packed in the
 * current frozen window. Buffers stay allocated into the next window so that
 * repacking the same model's weights does not fault pages in again. */
typedef struct PackedWeight {
    const float *w;
    int64_t out, in;
    int trans; /* 1: the B of x w^T (forward); 0: the B of dy w (input gradient) */
    int fresh;
    GemmBf16Operand op;
} PackedWeight;

/* Packed operands of one kind of product (a role and the layer's two
 * widths). Products of one kind split their rows between threads the same
 * way, so a cache line of these buffers is written by the same core every
 * time. With one buffer for every product a line changed core from one
 * product to the next, and when the host put the two cores on different L3
 * caches the packing waited on those lines: pack_a_both took 5-7x its
 * usual time (bench/RESULTS.md, tenth session). */
#define BF16_SLOTS 16
typedef struct Bf16Slot {
    int64_t key;
    GemmBf16 g;
} Bf16Slot;

typedef struct Bf16Scratch {
    GemmBf16 g;                 /* products of no kind below (a lone d(input) or d(weight)) */
    Bf16Slot slots[BF16_SLOTS]; /* products by kind (bf16_slot) */
    int n_slots;
    GemmBf16Operand lm_w_t, lm_w; /* the LM head weight, both layouts */
    int frozen;                   /* inside weights_frozen(1) .. (0) */
    PackedWeight *weights;
    int64_t n_weights, cap_weights;
    float *fused;         /* bf16_linear_fused: normed rows, then a branch output */
    int64_t fused_cap;    /* floats */
    int64_t l2_bytes;     /* one core's L2 (decode_threads), read once: cpuid traps in a VM */
} Bf16Scratch;

static pthread_key_t bf16_scratch_key;
static pthread_once_t bf16_scratch_once = PTHREAD_ONCE_INIT;

static void bf16_scratch_free(void *p) {
    Bf16Scratch *s = p;
    gemm_bf16_free(&s->g);
    for (int i = 0; i < s->n_slots; i++) gemm_bf16_free(&s->slots[i].g);
    gemm_bf16_operand_free(&s->lm_w_t);
    gemm_bf16_operand_free(&s->lm_w);
    for (int64_t i = 0; i < s->n_weights; i++) gemm_bf16_operand_free(&s->weights[i].op);
    free(s->weights);
    free(s->fused);
    free(s);
}

static void bf16_scratch_key_create(void) { pthread_key_create(&bf16_scratch_key, bf16_scratch_free); }

/* The ops return nothing, as sgemm does; running out of memory for a packed
 * copy ends the process with the size, like a failed BLAS load. */
static void bf16_out_of_memory(const char *what, int64_t elements) {
    fprintf(stderr, "ponder: out of memory packing %s (%lld values) into bf16\n", what,
            (long long)elements);
    abort();
}

static Bf16Scratch *bf16_scratch(void) {
    pthread_once(&bf16_scratch_once, bf16_scratch_key_create);
    Bf16Scratch *s = pthread_getspecific(bf16_scratch_key);
    if (s) return s;
    s = calloc(1, sizeof *s);
    if (!s || pthread_setspecific(bf16_scratch_key, s)) bf16_out_of_memory("the scratch table", 1);
    const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
    s->l2_bytes = l2 > 0 ? (int64_t)l2 : (int64_t)1 << 20;
    return s;
}

/* The packed operands kept for products of one kind: role (0 forward, 1 and
 * 2 a linear backward's two pairs) and the layer's widths. More kinds than
 * slots share the last one, as do widths past 2^24 whose keys collide: a
 * shared slot costs speed, never correctness. */
static GemmBf16 *bf16_slot(Bf16Scratch *s, int64_t role, int64_t in, int64_t out) {
    const int64_t key = (role << 48) | (in << 24) | out;
    for (int i = 0; i < s->n_slots; i++)
        if (s->slots[i].key == key) return &s->slots[i].g;
    if (s->n_slots == BF16_SLOTS) return &s->slots[BF16_SLOTS - 1].g;
    s->slots[s->n_slots].key = key;
    return &s->slots[s->n_slots++].g;
}

static void bf16_product(GemmBf16 *g, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                         const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                         float *C, int64_t ldc) {
    if (gemm_bf16(g, trans_a, trans_b, M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc))
        bf16_out_of_memory("a matmul operand", M * K + K * N);
}

/* Opening a window marks every kept weight stale; closing one drops the
 * weights that window did not use, so the table holds at most one window's
 * weights (those of models since freed included only until then). */
static void bf16_weights_frozen(int on) {
    Bf16Scratch *s = bf16_scratch();
    s->frozen = on;
    if (on) {
        for (int64_t i = 0; i < s->n_weights; i++) s->weights[i].fresh = 0;
        return;
    }
    for (int64_t i = 0; i < s->n_weights;)
        if (s->weights[i].fresh) {
            i++;
        } else {
            gemm_bf16_operand_free(&s->weights[i].op);
            s->weights[i] = s->weights[--s->n_weights];
        }
}

/* w [out, in] packed as the B operand of x w^T (trans 1) or of dy w
 * (trans 0), from this frozen window's copy when there is one. */
static const GemmBf16Operand *frozen_weight(Bf16Scratch *s, const float *w, int64_t out, int64_t in,
                                            int trans) {
    PackedWeight *pw = NULL;
    for (int64_t i = 0; i < s->n_weights && !pw; i++)
        if (s->weights[i].w == w && s->weights[i].out == out && s->weights[i].in == in &&
            s->weights[i].trans == trans)
            pw = &s->weights[i];
    if (!pw) {
        if (s->n_weights == s->cap_weights) {
            int64_t cap = s->cap_weights ? 2 * s->cap_weights : 16;
            PackedWeight *grown = realloc(s->weights, (size_t)cap * sizeof *grown);
            if (!grown) bf16_out_of_memory("the frozen weight table", cap);
            s->weights = grown, s->cap_weights = cap;
        }
        pw = &s->weights[s->n_weights++];
        *pw = (PackedWeight){.w = w, .out = out, .in = in, .trans = trans};
    }
    if (!pw->fresh) {
        const int rc = trans ? gemm_bf16_pack_b(&pw->op, 1, in, out, w, in)
                             : gemm_bf16_pack_b(&pw->op, 0, out, in, w, in);
        if (rc) bf16_out_of_memory("a frozen weight", out * in);
        pw->fresh = 1;
    }
    return &pw->op;
}

/* y[N,OC] = a w^T + beta * y, after `pro` inside the same region. */
static void bf16_product_after(Bf16Scratch *s, const GemmBf16Prologue *pro, float *y,
                               const float *a, const float *w, int64_t N, int64_t C, int64_t OC,
                               float beta) {
    int rc;
    GemmBf16 *g = bf16_slot(s, 0, C, OC);
    if (s->frozen)
        rc = gemm_bf16_with_b_after(pro, &g->a, 0, N, C, a, C, frozen_weight(s, w, OC, C, 1), 1.0f,
                                    beta, y, OC);
    else
        rc = gemm_bf16_after(pro, g, 0, 1, N, OC, C, 1.0f, a, C, w, C, beta, y, OC);
    if (rc) bf16_out_of_memory("matmul rows", N * C);
}

/* out = inp w^T (+ bias), after `pro` (NULL: none) inside the product's
 * parallel region. No matrix-vector path: a few decoded rows also round to
 * bf16, so sampling sees the same products whatever the batch. */
static void bf16_matmul_forward_after(Bf16Scratch *s, const GemmBf16Prologue *pro, float *out,
                                      const float *inp, const float *w, const float *bias,
                                      int64_t N, int64_t C, int64_t OC) {
    float beta = 0.0f;
    if (bias) {
#pragma omp parallel for if (N * OC > PAR_MIN_WORK) schedule(static)
        for (int64_t n = 0; n < N; n++) memcpy(out + n * OC, bias, (size_t)OC * sizeof(float));
        beta = 1.0f;
    }
    bf16_product_after(s, pro, out, inp, w, N, C, OC, beta);
}

static void bf16_matmul_forward(float *out, const float *inp, const float *w, const float *bias,
                                int64_t N, int64_t C, int64_t OC) {
    bf16_matmul_forward_after(bf16_scratch(), NULL, out, inp, w, bias, N, C, OC);
}

/* As cpu_matmul_backward_beta with bf16 products. beta 0 gives the bits of
 * beta 1 on a zeroed dinp: the tile's sum starts at +0, so it is never -0,
 * and sum + 0 is the sum. */
static void bf16_matmul_backward_beta(float *dinp, float *dw, float *dbias, const float *dout,
                                      const float *inp, const float *w, int64_t N, int64_t C,
                                      int64_t OC, float beta) {
    Bf16Scratch *s = bf16_scratch();
    GemmBf16 *g = &s->g;
    if (dinp && dw) { /* both products in one region, dout read once */
        GemmBf16 *g1 = bf16_slot(s, 1, C, OC), *g2 = bf16_slot(s, 2, C, OC);
        if (gemm_bf16_linear_backward(&g1->a, &g2->a, &g1->b, &g2->b,
                                      s->frozen ? frozen_weight(s, w, OC, C, 0) : NULL, N, C, OC,
                                      dout, inp, w, beta, dinp, dw))
            bf16_out_of_memory("matmul operands", N * (OC + C));
    } else if (dinp && s->frozen) {
        if (gemm_bf16_with_b_after(NULL, &g->a, 0, N, OC, dout, OC, frozen_weight(s, w, OC, C, 0),
                                   1.0f, beta, dinp, C))
            bf16_out_of_memory("matmul rows", N * OC);
    } else if (dinp) {
        bf16_product(g, 0, 0, N, C, OC, dout, OC, w, C, beta, dinp, C);
    }
    if (dw && !dinp) bf16_product(g, 1, 0, OC, C, N, dout, OC, inp, C, 1.0f, dw, C);
    if (dbias) accumulate_column_sums(dbias, dout, N, OC);
}

PONDER_HOT static void swiglu_backward_row(float *dgu, const float *dout, const float *gu,
                                           int64_t F, int acc);

/* d(gate_up) row by row for bf16_swiglu_matmul_backward_set: the rows
 * swiglu_backward_set writes. */
typedef struct SwigluRows {
    const float *dout, *gate_up;
    int64_t F;
} SwigluRows;

static void swiglu_fill_row(void *ctx, int64_t row, float *dst) {
    const SwigluRows *r = ctx;
    swiglu_backward_row(dst, r->dout + row * r->F, r->gate_up + row * 2 * r->F, r->F, 0);
}

static void bf16_swiglu_matmul_backward_set(float *dinp, float *dw, const float *dout,
                                            const float *gate_up, const float *inp,
                                            const float *w, int64_t N, int64_t C, int64_t F) {
    Bf16Scratch *s = bf16_scratch();
    SwigluRows rows = {dout, gate_up, F};
    const GemmBf16RowSource src = {swiglu_fill_row, &rows};
    GemmBf16 *g1 = bf16_slot(s, 1, C, 2 * F), *g2 = bf16_slot(s, 2, C, 2 * F);
    if (gemm_bf16_linear_backward_from(&g1->a, &g2->a, &g1->b, &g2->b,
                                       s->frozen ? frozen_weight(s, w, 2 * F, C, 0) : NULL, N, C,
                                       2 * F, &src, inp, w, 0.0f, dinp, dw))
        bf16_out_of_memory("matmul operands", N * (2 * F + C));
}

static void bf16_matmul_backward(float *dinp, float *dw, float *dbias, const float *dout,
                                 const float *inp, const float *w, int64_t N, int64_t C,
                                 int64_t OC) {
    bf16_matmul_backward_beta(dinp, dw, dbias, dout, inp, w, N, C, OC, 1.0f);
}

static void bf16_matmul_backward_set(float *dinp, float *dw, float *dbias, const float *dout,
                                     const float *inp, const float *w, int64_t N, int64_t C,
                                     int64_t OC) {
    bf16_matmul_backward_beta(dinp, dw, dbias, dout, inp, w, N, C, OC, 0.0f);
}

/* --------------------------------------------------------- embeddings ---- */

static void cpu_embedding_forward(float *out, const int32_t *tokens, const int32_t *pos,
                                  const float *wte, const float *wpe, int64_t N, int64_t C) {
#pragma omp parallel for if (N * C > ROW_PAR_MIN) schedule(static)
    for (int64_t n = 0; n < N; n++) {
        float *o = out + n * C;
        const float *e = wte + (int64_t)tokens[n] * C;
        if (wpe) {
            const float *p = wpe + (int64_t)pos[n] * C;
            for (int64_t c = 0; c < C; c++) o[c] = e[c] + p[c];
        } else {
            memcpy(o, e, (size_t)C * sizeof(float));
        }
    }
}

static void cpu_embedding_backward(float *dwte, float *dwpe, const float *dout,
                                   const int32_t *tokens, const int32_t *pos, int64_t N,
                                   int64_t C) {
    /* Serial over rows: the same token may appear many times and the sum must
     * run in row order. Cheap next to any matmul. */
    for (int64_t n = 0; n < N; n++) {
        const float *d = dout + n * C;
        float *e = dwte + (int64_t)tokens[n] * C;
        for (int64_t c = 0; c < C; c++) e[c] += d[c];
        if (dwpe) {
            float *p = dwpe + (int64_t)pos[n] * C;
            for (int64_t c = 0; c < C; c++) p[c] += d[c];
        }
    }
}

/* -------------------------------------------------------------- norms ---- */

/* An unfused product: the empty asm keeps GCC from contracting it into an
 * FMA with the add that follows. */
static inline __attribute__((always_inline)) float product_rounded(float p) {
    __asm__("" : "+x"(p));
    return p;
}

/* RMSNorm's row sums run over a row in order, each product rounded before
 * it is added: the bits of the in-order vector reduction GCC made of the
 * one-row loops (vmulps, then one vaddss after another) wherever C is a
 * multiple of 8, and now on every CPU and for every C (that loop's scalar
 * tail had fused FMAs on FMA CPUs only). One row's sum was a chain of
 * dependent adds; NORM_ROWS rows at once are as many independent chains. */
#define NORM_ROWS 16

/* Sixteen rows' sums in the lanes of one vector: 16 x 16 blocks are
 * transposed so that lane r of column c holds row r's value, and each lane
 * adds its row's rounded products in increasing c, the same order and
 * rounding as the scalar chains. Contraction is off here so that the vector
 * product is rounded before the add, as product_rounded makes it. */
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
static inline __attribute__((always_inline)) void v16_transpose16(V16 *r) {
    V16 t[16], u[16];
    for (int i = 0; i < 8; i++) { /* 32-bit interleave within 128-bit lanes */
        t[2 * i] = __builtin_shufflevector(r[2 * i], r[2 * i + 1], 0, 16, 1, 17, 4, 20, 5, 21, 8,
                                           24, 9, 25, 12, 28, 13, 29);
        t[2 * i + 1] = __builtin_shufflevector(r[2 * i], r[2 * i + 1], 2, 18, 3, 19, 6, 22, 7, 23,
                                               10, 26, 11, 27, 14, 30, 15, 31);
    }
    for (int g = 0; g < 4; g++) { /* u[4g + c], lane L: column c + 4L of rows 4g..4g+3 */
        for (int h = 0; h < 2; h++) {
            const V16 a = t[4 * g + h], b = t[4 * g + h + 2];
            u[4 * g + 2 * h] = __builtin_shufflevector(a, b, 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24,
                                                       25, 12, 13, 28, 29);
            u[4 * g + 2 * h + 1] = __builtin_shufflevector(a, b, 2, 3, 18, 19, 6, 7, 22, 23, 10,
                                                           11, 26, 27, 14, 15, 30, 31);
        }
    }
    for (int c = 0; c < 4; c++) { /* gather lane L of u[c], u[4+c], u[8+c], u[12+c] */
        const V16 p = __builtin_shufflevector(u[c], u[4 + c], 0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6,
                                              7, 20, 21, 22, 23);
        const V16 q = __builtin_shufflevector(u[c], u[4 + c], 8, 9, 10, 11, 24, 25, 26, 27, 12, 13,
                                              14, 15, 28, 29, 30, 31);
        const V16 p2 = __builtin_shufflevector(u[8 + c], u[12 + c], 0, 1, 2, 3, 16, 17, 18, 19, 4,
                                               5, 6, 7, 20, 21, 22, 23);
        const V16 q2 = __builtin_shufflevector(u[8 + c], u[12 + c], 8, 9, 10, 11, 24, 25, 26, 27,
                                               12, 13, 14, 15, 28, 29, 30, 31);
        r[c] = __builtin_shufflevector(p, p2, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
        r[c + 4] = __builtin_shufflevector(p, p2, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28,
                                           29, 30, 31);
        r[c + 8] = __builtin_shufflevector(q, q2, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22,
                                           23);
        r[c + 12] = __builtin_shufflevector(q, q2, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28,
                                            29, 30, 31);
    }
}

/* ss[r] = sum over c of x[r][c]^2 for 16 rows of C (a multiple of 16). */
PONDER_HOT static void sum_squares_16_rows(float *ss, const float *x, int64_t C) {
    V16 acc = {0};
    for (int64_t c0 = 0; c0 < C; c0 += 16) {
        V16 r[16];
        for (int t = 0; t < 16; t++) r[t] = v16_load(x + t * C + c0);
        v16_transpose16(r);
        for (int c = 0; c < 16; c++) acc = acc + r[c] * r[c];
    }
    memcpy(ss, &acc, sizeof acc);
}

/* dot[r] = sum over c of dout[r][c] w[c] x[r][c] rs[r] (the products in that
 * order) for 16 rows of C (a multiple of 16). */
PONDER_HOT static void rms_dots_16_rows(float *dot, const float *dout, const float *w,
                                        const float *x, const float *rs, int64_t C) {
    V16 acc = {0}, rv;
    memcpy(&rv, rs, sizeof rv);
    for (int64_t c0 = 0; c0 < C; c0 += 16) {
        const V16 wc = v16_load(w + c0);
        V16 p[16]; /* dout w x along each row, then transposed; times rs per lane */
        for (int t = 0; t < 16; t++) p[t] = v16_load(dout + t * C + c0) * wc * v16_load(x + t * C + c0);
        v16_transpose16(p);
        for (int c = 0; c < 16; c++) acc = acc + p[c] * rv;
    }
    memcpy(dot, &acc, sizeof acc);
}
#pragma GCC pop_options

PONDER_HOT static void rmsnorm_rows(float *out, float *rstd, const float *x, const float *w,
                                    int64_t R, int64_t C, float eps) {
    float ss[NORM_ROWS] = {0};
    if (R == 16 && C % 16 == 0)
        sum_squares_16_rows(ss, x, C);
    else
        for (int64_t c = 0; c < C; c++)
            for (int64_t r = 0; r < R; r++) ss[r] += product_rounded(x[r * C + c] * x[r * C + c]);
    for (int64_t r = 0; r < R; r++) {
        const float rs = 1.0f / sqrtf(ss[r] / (float)C + eps);
        const float *xr = x + r * C;
        float *o = out + r * C;
        for (int64_t c = 0; c < C; c++) o[c] = xr[c] * rs * w[c];
        rstd[r] = rs;
    }
}

/* N rows in blocks of NORM_ROWS, shared among the threads of an enclosing
 * parallel region (orphaned omp for, ending in its barrier), or all on the
 * calling thread outside one. */
static void rmsnorm_blocks(float *out, float *rstd, const float *inp, const float *w, int64_t N,
                           int64_t C, float eps) {
    const int64_t blocks = (N + NORM_ROWS - 1) / NORM_ROWS;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; b++) {
        const int64_t n = b * NORM_ROWS, R = N - n < NORM_ROWS ? N - n : NORM_ROWS;
        rmsnorm_rows(out + n * C, rstd + n, inp + n * C, w, R, C, eps);
    }
}

static void cpu_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *w,
                                int64_t N, int64_t C, float eps) {
#pragma omp parallel if (N * C > ROW_PAR_MIN)
    rmsnorm_blocks(out, rstd, inp, w, N, C, eps);
}

/* xhat = x r ; y = xhat w ; dx = r (g - xhat mean(g xhat)) with g = dout w */
PONDER_HOT static void rmsnorm_backward_rows(float *dinp, const float *dout, const float *x,
                                             const float *w, const float *r, int64_t R,
                                             int64_t C) {
    float dot[NORM_ROWS] = {0};
    if (R == 16 && C % 16 == 0)
        rms_dots_16_rows(dot, dout, w, x, r, C);
    else
        for (int64_t c = 0; c < C; c++)
            for (int64_t i = 0; i < R; i++)
                dot[i] += product_rounded(dout[i * C + c] * w[c] * x[i * C + c] * r[i]);
    for (int64_t i = 0; i < R; i++) {
        const float d = dot[i] / (float)C, ri = r[i];
        const float *g = dout + i * C, *xi = x + i * C;
        float *di = dinp + i * C;
        for (int64_t c = 0; c < C; c++) di[c] += ri * (g[c] * w[c] - xi[c] * ri * d);
    }
}

PONDER_HOT static void rmsnorm_dw_range(float *dw, const float *dout, const float *inp,
                                        const float *rstd, int64_t N, int64_t C, int64_t c0,
                                        int64_t c1) {
    for (int64_t n = 0; n < N; n++) {
        const float *d = dout + n * C, *x = inp + n * C;
        float r = rstd[n];
        for (int64_t c = c0; c < c1; c++) dw[c] += d[c] * x[c] * r;
    }
}

static int64_t column_blocks(int64_t C, int64_t block) { return (C + block - 1) / block; }

static void cpu_rmsnorm_backward(float *dinp, float *dw, const float *dout, const float *inp,
                                 const float *w, const float *rstd, int64_t N, int64_t C) {
    const int64_t blocks = (N + NORM_ROWS - 1) / NORM_ROWS;
#pragma omp parallel for if (N * C > PAR_MIN_WORK) schedule(static)
    for (int64_t b = 0; b < blocks; b++) {
        const int64_t n = b * NORM_ROWS, R = N - n < NORM_ROWS ? N - n : NORM_ROWS;
        rmsnorm_backward_rows(dinp + n * C, dout + n * C, inp + n * C, w, rstd + n, R, C);
    }
    const int64_t block = 64;
#pragma omp parallel for if (N * C > PAR_MIN_WORK) schedule(static)
    for (int64_t b = 0; b < column_blocks(C, block); b++) {
        int64_t c1 = (b + 1) * block < C ? (b + 1) * block : C;
        rmsnorm_dw_range(dw, dout, inp, rstd, N, C, b * block, c1);
    }
}

PONDER_HOT static void layernorm_row(float *out, float *mean, float *rstd, const float *x,
                                     const float *w, const float *b, int64_t C, float eps) {
    float m = 0.0f;
    for (int64_t c = 0; c < C; c++) m += x[c];
    m /= (float)C;
    float var = 0.0f;
    for (int64_t c = 0; c < C; c++) var += (x[c] - m) * (x[c] - m);
    var /= (float)C;
    float r = 1.0f / sqrtf(var + eps);
    for (int64_t c = 0; c < C; c++) out[c] = (x[c] - m) * r * w[c] + b[c];
    *mean = m;
    *rstd = r;
}

static void cpu_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                                  const float *w, const float *b, int64_t N, int64_t C,
                                  float eps) {
#pragma omp parallel for if (N * C > ROW_PAR_MIN) schedule(static)
    for (int64_t n = 0; n < N; n++)
        layernorm_row(out + n * C, mean + n, rstd + n, inp + n * C, w, b, C, eps);
}

PONDER_HOT static void layernorm_backward_row(float *dinp, const float *dout, const float *x,
                                              const float *w, float m, float r, int64_t C) {
    float dnorm_mean = 0.0f, dnorm_norm_mean = 0.0f;
    for (int64_t c = 0; c < C; c++) {
        float xhat = (x[c] - m) * r, g = dout[c] * w[c];
        dnorm_mean += g;
        dnorm_norm_mean += g * xhat;
    }
    dnorm_mean /= (float)C;
    dnorm_norm_mean /= (float)C;
    for (int64_t c = 0; c < C; c++) {
        float xhat = (x[c] - m) * r, g = dout[c] * w[c];
        dinp[c] += r * (g - dnorm_mean - xhat * dnorm_norm_mean);
    }
}

PONDER_HOT static void layernorm_dwdb_range(float *dw, float *db, const float *dout,
                                            const float *inp, const float *mean,
                                            const float *rstd, int64_t N, int64_t C, int64_t c0,
                                            int64_t c1) {
    for (int64_t n = 0; n < N; n++) {
        const float *d = dout + n * C, *x = inp + n * C;
        float m = mean[n], r = rstd[n];
        for (int64_t c = c0; c < c1; c++) {
            dw[c] += d[c] * (x[c] - m) * r;
            db[c] += d[c];
        }
    }
}

static void cpu_layernorm_backward(float *dinp, float *dw, float *db, const float *dout,
                                   const float *inp, const float *w, const float *mean,
                                   const float *rstd, int64_t N, int64_t C) {
#pragma omp parallel for if (N * C > PAR_MIN_WORK) schedule(static)
    for (int64_t n = 0; n < N; n++)
        layernorm_backward_row(dinp + n * C, dout + n * C, inp + n * C, w, mean[n], rstd[n], C);
    const int64_t block = 64;
#pragma omp parallel for if (N * C > PAR_MIN_WORK) schedule(static)
    for (int64_t b = 0; b < column_blocks(C, block); b++) {
        int64_t c1 = (b + 1) * block < C ? (b + 1) * block : C;
        layernorm_dwdb_range(dw, db, dout, inp, mean, rstd, N, C, b * block, c1);
    }
}

/* --------------------------------------------------------------- RoPE ---- */

/* One position's H heads. The (cos, sin) pairs are split into two arrays
 * first (in chunks of ROPE_CHUNK pairs) so the rotation loop reads
 * unit-stride and vectorises; multiversioned because the baseline build ran
 * it scalar (3% of a tiny-model step). Contraction stays off: x1 c - x2 s
 * rounds both products, as the scalar baseline code did, so every clone gives
 * the bits that training runs and checkpoints were made with (an FMA moved a
 * 500-step SFT run from 37.4% to 48.6% held-out accuracy, a different point
 * on a steep curve). */
#define ROPE_CHUNK 256
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
PONDER_HOT static void rope_position(float *x, const float *cs, int64_t H, int64_t hd, float sign) {
    const int64_t half = hd / 2;
    float c[ROPE_CHUNK], s[ROPE_CHUNK];
    for (int64_t i0 = 0; i0 < half; i0 += ROPE_CHUNK) {
        const int64_t n = half - i0 < ROPE_CHUNK ? half - i0 : ROPE_CHUNK;
        for (int64_t i = 0; i < n; i++) c[i] = cs[2 * (i0 + i)], s[i] = sign * cs[2 * (i0 + i) + 1];
        for (int64_t h = 0; h < H; h++) {
            float *v = x + h * hd + i0;
            for (int64_t i = 0; i < n; i++) {
                float x1 = v[i], x2 = v[i + half];
                v[i] = x1 * c[i] - x2 * s[i];
                v[i + half] = x2 * c[i] + x1 * s[i];
            }
        }
    }
}
#pragma GCC pop_options

static void cpu_rope(OpsHeads x, const int32_t *pos, const float *cos_sin, int64_t N, int64_t H,
                     int64_t hd, int inverse) {
    const int64_t half = hd / 2;
    const float sign = inverse ? -1.0f : 1.0f;
#pragma omp parallel for if (N * H * hd > ROW_PAR_MIN) schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float *cs = cos_sin + (int64_t)pos[n] * half * 2;
        rope_position(x.base + n * x.row_stride, cs, H, hd, sign);
    }
}

/* ---------------------------------------------------------- attention ---- */

/* dot_hd, axpy_hd and softmax_inplace are inlined into the per-head kernels,
 * which are compiled per CPU (PONDER_HOT): an ifunc call per (i, j) pair would
 * cost more than the 64 multiply-adds it does. */
static inline float dot_hd(const float *a, const float *b, int64_t hd) {
    float acc[LANES] = {0};
    int64_t d = 0;
    for (; d + LANES <= hd; d += LANES)
        for (int k = 0; k < LANES; k++) acc[k] += a[d + k] * b[d + k];
    float s = combine_lanes(acc);
    for (; d < hd; d++) s += a[d] * b[d];
    return s;
}

static inline void axpy_hd(float *y, float a, const float *x, int64_t hd) {
    for (int64_t d = 0; d < hd; d++) y[d] += a * x[d];
}

/* Softmax of row[0..n) in place; returns nothing, row sums to 1. */
static inline void softmax_inplace(float *row, int64_t n) {
    float mx = row[0];
    for (int64_t j = 1; j < n; j++) mx = row[j] > mx ? row[j] : mx;
    float sum = 0.0f;
    for (int64_t j = 0; j < n; j++) {
        row[j] = exp_fast(row[j] - mx);
        sum += row[j];
    }
    float inv = 1.0f / sum;
    for (int64_t j = 0; j < n; j++) row[j] *= inv;
}

/* out[j] = v16_sum(x . y_j) for j < n, y_j rows ys values apart (fp32 or
 * bf16), x in HD / 16 registers: whole 16-row blocks through v16_sum16, the
 * rest one at a time, every value with v16_sum's bits. */
static inline __attribute__((always_inline)) void dots_hd(float *out, const V16 *x, const void *y,
                                                          int64_t ys, int64_t n, const int64_t HD,
                                                          const int bf16) {
    const int64_t es = bf16 ? 2 : 4; /* bytes per value */
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
        V16 d[16];
        /* the next block's keys (one line each in a bf16 cache at head size
         * 32, two in fp32): a row's keys are a short stream in another
         * slot's memory, and on the Intel host the batch-64 decode ran
         * 17-25% faster with this and the values' prefetch (bench/RESULTS.md,
         * "Twelfth session") */
        if (j + 32 <= n)
            for (int t = 0; t < 16; t++)
                for (int64_t b = 0; b < HD * es; b += 64)
                    __builtin_prefetch((const char *)y + (j + 16 + t) * ys * es + b, 0, 3);
        for (int t = 0; t < 16; t++) {
            d[t] = x[0] * v16_load_any(y, (j + t) * ys, 0, bf16);
            for (int64_t c = 1; c < HD / 16; c++) d[t] += x[c] * v16_load_any(y, (j + t) * ys, c, bf16);
        }
        V16 r = v16_sum16(d);
        memcpy(out + j, &r, sizeof r);
    }
    /* A tail of 6 or more keys as one partial block (zero vectors for the
     * missing keys; lane t of v16_sum16 has v16_sum's bits), fewer one at a
     * time: the block's fixed 46 operations against about 8 per key. */
    if (n - j >= 6) {
        const int64_t rem = n - j;
        V16 d[16];
        for (int t = 0; t < 16; t++) {
            d[t] = (V16){0};
            if (t >= rem) continue;
            d[t] = x[0] * v16_load_any(y, (j + t) * ys, 0, bf16);
            for (int64_t c = 1; c < HD / 16; c++) d[t] += x[c] * v16_load_any(y, (j + t) * ys, c, bf16);
        }
        V16 r = v16_sum16(d);
        v16_store_first(out + j, r, rem);
        return;
    }
    for (; j < n; j++) {
        V16 d = x[0] * v16_load_any(y, j * ys, 0, bf16);
        for (int64_t c = 1; c < HD / 16; c++) d += x[c] * v16_load_any(y, j * ys, c, bf16);
        out[j] = v16_sum(d);
    }
}

/* row[0..L) = exp(q k_j * scale - max_j): one query row's unnormalised
 * attention weights over L keys (rows ks values apart), keys j < P from kp,
 * the others from kc (both indexed by position; P = 0: all from kc). Each
 * key's dot has the same bits from either (dots_hd), so a prefix read from
 * elsewhere changes nothing. */
static inline __attribute__((always_inline)) void attention_exps_hd(float *row, const float *qi,
                                                                    const void *kp, int64_t P,
                                                                    const void *kc, int64_t ks,
                                                                    int64_t L, const int64_t HD,
                                                                    float scale, const int bf16) {
    V16 q[8];
    for (int64_t c = 0; c < HD / 16; c++) q[c] = v16_load(qi + 16 * c);
    const int64_t es = bf16 ? 2 : 4; /* bytes per value */
    if (P > 0) {
        /* dots_hd prefetches only within its keys: the first block after
         * the prefix is fetched while the prefix's are summed (without it a
         * batch-64 decode reading each row's prompt from another block ran
         * 7% slower than over copies) */
        for (int64_t t = P; t < L && t < P + 16; t++)
            for (int64_t b = 0; b < HD * es; b += 64)
                __builtin_prefetch((const char *)kc + t * ks * es + b, 0, 3);
        dots_hd(row, q, kp, ks, P, HD, bf16);
    }
    dots_hd(row + P, q, (const char *)kc + P * ks * es, ks, L - P, HD, bf16);
    float mx = -INFINITY;
    int64_t j = 0;
    if (L >= 16) {
        V16 vmx = (V16){0} - INFINITY;
        for (; j + 16 <= L; j += 16) {
            V16 sc = v16_load(row + j) * scale;
            memcpy(row + j, &sc, sizeof sc);
            const V16i up = sc > vmx;
            vmx = (V16)(((V16i)sc & up) | ((V16i)vmx & ~up));
        }
        for (int t = 0; t < 16; t++) mx = vmx[t] > mx ? vmx[t] : mx;
    }
    for (; j < L; j++) {
        row[j] *= scale;
        mx = row[j] > mx ? row[j] : mx;
    }
    j = 0;
    for (; j + 16 <= L; j += 16) {
        V16 e = v16_exp(v16_load(row + j) - mx);
        memcpy(row + j, &e, sizeof e);
    }
    for (; j < L; j++) row[j] = exp_fast(row[j] - mx);
}

/* o = (sum_j row[j] v_j) / sum_j row[j] over L values (rows vs apart);
 * `normalise` also divides row by the sum. */
static inline __attribute__((always_inline)) void attention_values_hd(float *o, float *row,
                                                                      const void *vc, int64_t vs,
                                                                      int64_t L, const int64_t HD,
                                                                      int normalise, const int bf16) {
    V16 acc[8];
    for (int64_t c = 0; c < HD / 16; c++) acc[c] = (V16){0};
    float sum = 0.0f;
    for (int64_t j = 0; j < L; j++) {
        sum += row[j];
        for (int64_t c = 0; c < HD / 16; c++) acc[c] += row[j] * v16_load_any(vc, j * vs, c, bf16);
    }
    const float inv = L > 0 ? 1.0f / sum : 0.0f;
    for (int64_t c = 0; c < HD / 16; c++) {
        V16 r = acc[c] * inv;
        memcpy(o + 16 * c, &r, sizeof r);
    }
    if (normalise)
        for (int64_t j = 0; j < L; j++) row[j] *= inv;
}

/* Lanes t < n of x (all when n >= 16); the others `fill`. */
static inline __attribute__((always_inline)) V16 v16_first(V16 x, int64_t n, float fill) {
    if (n >= 16) return x;
    const V16i lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    const V16i keep = lane < (int32_t)n;
    return (V16)(((V16i)x & keep) | ((V16i)((V16){0} + fill) & ~keep));
}

/* The first min(n, 16) floats at p, zeros after: reads nothing past p + n. */
static inline __attribute__((always_inline)) V16 v16_load_n(const float *p, int64_t n) {
    if (n >= 16) return v16_load(p);
    V16 x = (V16){0};
    memcpy(&x, p, (size_t)n * sizeof(float));
    return x;
}

/* ------------------------------------------- blocked causal attention --- */
/* The training attention of head sizes that are multiples of 16, as small
 * register-tiled products (the O(T^2) work as GEMMs, no horizontal sums):
 * S = Q K^T (K transposed into a scratch panel), the softmax along rows,
 * O = P V; backward dP = dO V^T, dS = P (dP - rowsum(dP P)) scale,
 * dQ = dS K, dK = dS^T Q, dV = P^T dO. Each output element is one chain of
 * fused multiply-adds in increasing p, whatever the blocking or thread
 * count. (The row-at-a-time forms, whose dots ended in lane sums, ran at
 * 30-50 GFLOP/s on 2 cores at T = 64, hd 32.) */
#define ATT_KB 32 /* keys per score tile: two vectors */

/* C[R rows, 16 NV] (+)= scale * sum_{p0 <= p < p1} A[r, p] B[p, :]: A[r, p]
 * at a[r * lda + p], or a[p * lda + r] when AT (A read transposed); B's row
 * p at b + p * ldb. */
static inline __attribute__((always_inline)) void att_tile(const int R, const int NV, const int AT,
                                                           const float *a, int64_t lda,
                                                           const float *b, int64_t ldb, int64_t p0,
                                                           int64_t p1, float *c, int64_t ldc,
                                                           float scale, int add) {
    V16 acc[8][4];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) acc[r][v] = (V16){0};
    for (int64_t p = p0; p < p1; p++) {
        V16 bv[4];
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) bv[v] = v16_load(b + p * ldb + 16 * v);
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            const float x = AT ? a[p * lda + r] : a[r * lda + p];
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) acc[r][v] += x * bv[v];
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            V16 out = acc[r][v] * scale;
            if (add) out += v16_load(c + r * ldc + 16 * v);
            memcpy(c + r * ldc + 16 * v, &out, sizeof out);
        }
}

/* att_tile for mr (1..8 with NV <= 2, 1..4 with NV 3 or 4) rows; att_product
 * never passes more than RMAX, so the RMAX 4 forms have no 5..8-row tiles. */
#define ATT_ROWS(NV, AT, RMAX)                                                                     \
    static inline __attribute__((always_inline)) void att_rows_##NV##_##AT(                       \
        int mr, const float *a, int64_t lda, const float *b, int64_t ldb, int64_t p0, int64_t p1,  \
        float *c, int64_t ldc, float scale, int add) {                                             \
        switch (mr) {                                                                              \
        case 1: att_tile(1, NV, AT, a, lda, b, ldb, p0, p1, c, ldc, scale, add); break;            \
        case 2: att_tile(2, NV, AT, a, lda, b, ldb, p0, p1, c, ldc, scale, add); break;            \
        case 3: att_tile(3, NV, AT, a, lda, b, ldb, p0, p1, c, ldc, scale, add); break;            \
        case 4: att_tile(4, NV, AT, a, lda, b, ldb, p0, p1, c, ldc, scale, add); break;            \
        case 5: if (RMAX > 4) att_tile(5, NV, AT, a, lda, b, ldb, p0, p1, c, ldc, scale, add); break; \
        case 6: if (RMAX > 4) att_tile(6, NV, AT, a, lda, b, ldb, p0, p1, c, ldc, scale, add); break; \
        case 7: if (RMAX > 4) att_tile(7, NV, AT, a, lda, b, ldb, p0, p1, c, ldc, scale, add); break; \
        default: if (RMAX > 4) att_tile(8, NV, AT, a, lda, b, ldb, p0, p1, c, ldc, scale, add); break; \
        }                                                                                          \
    }
ATT_ROWS(1, 0, 8)
ATT_ROWS(2, 0, 8)
ATT_ROWS(3, 0, 4)
ATT_ROWS(4, 0, 4)
ATT_ROWS(1, 1, 8)
ATT_ROWS(2, 1, 8)
ATT_ROWS(3, 1, 4)
ATT_ROWS(4, 1, 4)
#undef ATT_ROWS

/* C[m, hd] (+)= A B over causal ranges: rows of block [r0, r0 + mr) sum p
 * over [0, r0 + mr) (lower, the rows' own keys) or over [r0, n) (upper:
 * keys summing over the queries at or after them); A as for att_tile.
 * Columns go in chunks of up to 4 vectors (8 rows a block at <= 2). */
static inline __attribute__((always_inline)) void att_product(int upper, int at, int64_t m, int64_t n,
                                                              int64_t hd, const float *a,
                                                              int64_t lda, const float *b,
                                                              int64_t ldb, float *c, int64_t ldc,
                                                              int add) {
    for (int64_t c0 = 0; c0 < hd; c0 += 64) {
        const int nv = (int)((hd - c0) / 16 < 4 ? (hd - c0) / 16 : 4), rb = nv <= 2 ? 8 : 4;
        for (int64_t r0 = 0; r0 < m; r0 += rb) {
            const int mr = (int)(m - r0 < rb ? m - r0 : rb);
            const int64_t p0 = upper ? r0 : 0, p1 = upper ? n : r0 + mr;
            const float *ar = at ? a + r0 : a + r0 * lda;
            float *cr = c + r0 * ldc + c0;
            const float *bc = b + c0;
#define ATT_CALL(NV)                                                                               \
    (at ? att_rows_##NV##_1(mr, ar, lda, bc, ldb, p0, p1, cr, ldc, 1.0f, add)                     \
        : att_rows_##NV##_0(mr, ar, lda, bc, ldb, p0, p1, cr, ldc, 1.0f, add))
            switch (nv) {
            case 1: ATT_CALL(1); break;
            case 2: ATT_CALL(2); break;
            case 3: ATT_CALL(3); break;
            default: ATT_CALL(4); break;
            }
#undef ATT_CALL
        }
    }
}

/* S[i, j] = scale * x_i . y_j for i < m and the key tiles j < i + 1 of
 * row block i's (keys ATT_KB at a time; columns past a row's own keys hold
 * values the caller ignores). x rows xs apart; yt is y transposed, hd rows
 * of ldy >= m rounded up to ATT_KB, zero past m. S rows ldy apart. */
static inline __attribute__((always_inline)) void att_scores(int64_t m, int64_t hd, const float *x,
                                                             int64_t xs, const float *yt,
                                                             int64_t ldy, float scale, float *S) {
    for (int64_t r0 = 0; r0 < m; r0 += 8) {
        const int mr = (int)(m - r0 < 8 ? m - r0 : 8);
        const int64_t keys = r0 + mr;
        for (int64_t j0 = 0; j0 < keys; j0 += ATT_KB) {
            if (keys - j0 <= 16)
                att_rows_1_0(mr, x + r0 * xs, xs, yt + j0, ldy, 0, hd, S + r0 * ldy + j0, ldy,
                             scale, 0);
            else
                att_rows_2_0(mr, x + r0 * xs, xs, yt + j0, ldy, 0, hd, S + r0 * ldy + j0, ldy,
                             scale, 0);
        }
    }
}

/* yt[c, j] = y[j, c] for j < m, zeros for m <= j < ldy (hd and ldy
 * multiples of 16), in 16 x 16 blocks through registers. */
static inline __attribute__((always_inline)) void att_transpose(float *yt, int64_t ldy,
                                                                const float *y, int64_t ys,
                                                                int64_t m, int64_t hd) {
    for (int64_t j0 = 0; j0 < ldy; j0 += 16)
        for (int64_t c0 = 0; c0 < hd; c0 += 16) {
            V16 r[16];
            for (int t = 0; t < 16; t++)
                r[t] = j0 + t < m ? v16_load(y + (j0 + t) * ys + c0) : (V16){0};
            v16_transpose16(r);
            for (int t = 0; t < 16; t++) memcpy(yt + (c0 + t) * ldy + j0, &r[t], sizeof r[t]);
        }
}

static inline int64_t att_padded(int64_t m) { return (m + ATT_KB - 1) / ATT_KB * ATT_KB; }

/* One head's forward rows [s, T) (m = T - s of them) with hd % 16 == 0:
 * probabilities into att (its row i zero outside [s, i]), output rows.
 * scratch: hd * ldy + m * ldy floats. */
PONDER_HOT static void attention_head_forward_blocked(float *out, int64_t os, float *att,
                                                      const float *q, int64_t qs, const float *k,
                                                      int64_t ks, const float *v, int64_t vs,
                                                      int64_t s, int64_t T, int64_t hd,
                                                      float *scratch) {
    const int64_t m = T - s, ldy = att_padded(m);
    const float scale = 1.0f / sqrtf((float)hd);
    float *kt = scratch, *S = scratch + hd * ldy;
    att_transpose(kt, ldy, k + s * ks, ks, m, hd);
    att_scores(m, hd, q + s * qs, qs, kt, ldy, scale, S);
    /* rows with no padding before them (s 0, most rows) skip T empty calls */
    for (int64_t i = 0; s > 0 && i < T; i++)
        memset(att + i * T, 0, (size_t)(i < s ? T : s) * sizeof(float));
    for (int64_t i = 0; i < s; i++) memset(out + i * os, 0, (size_t)hd * sizeof(float));
    for (int64_t i = 0; i < m; i++) {
        float *srow = S + i * ldy, *arow = att + (s + i) * T + s;
        const int64_t n = i + 1; /* the row's keys; S rows are whole 16-blocks */
        V16 vmx = (V16){0} - INFINITY;
        for (int64_t j = 0; j < n; j += 16) {
            const V16 x = v16_first(v16_load(srow + j), n - j, -INFINITY);
            const V16i up = x > vmx;
            vmx = (V16)(((V16i)x & up) | ((V16i)vmx & ~up));
        }
        float mx = vmx[0];
        for (int t = 1; t < 16; t++) mx = vmx[t] > mx ? vmx[t] : mx;
        V16 vsum = (V16){0};
        for (int64_t j = 0; j < n; j += 16) {
            const V16 e = v16_first(v16_exp(v16_load(srow + j) - mx), n - j, 0.0f);
            vsum += e;
            memcpy(srow + j, &e, sizeof e);
        }
        const float inv = 1.0f / v16_sum(vsum);
        int64_t j = 0;
        for (; j < n; j++) arow[j] = srow[j] * inv;
        for (; j < m; j++) arow[j] = 0.0f;
    }
    att_product(0, 0, m, m, hd, att + s * T + s, T, v + s * vs, vs, out + s * os, os, 0);
}

/* One head's backward over rows [s, T): dq (+)= dS K; dk (+)= dS^T Q and
 * dv (+)= P^T dO (set_* writes instead of adding). scratch as for the
 * forward: hd * ldy + m * ldy floats. */
PONDER_HOT static void attention_head_backward_blocked(
    float *dq, float *dk, float *dv, const float *dout, int64_t dos, const float *att,
    const float *q, const float *k, const float *v, int64_t qs, int64_t kvs, int64_t dqs,
    int64_t dkvs, int64_t s, int64_t T, int64_t hd, float *scratch, int set_q, int set_kv) {
    const int64_t m = T - s, ldy = att_padded(m);
    const float scale = 1.0f / sqrtf((float)hd);
    float *vt = scratch, *D = scratch + hd * ldy;
    att_transpose(vt, ldy, v + s * kvs, kvs, m, hd);
    att_scores(m, hd, dout + s * dos, dos, vt, ldy, 1.0f, D); /* dP */
    for (int64_t i = 0; i < m; i++) {
        float *drow = D + i * ldy;
        const float *arow = att + (s + i) * T + s;
        const int64_t n = i + 1;
        /* att is zero past the row's keys up to its end (m), and dP is
         * computed for whole 16-blocks of them */
        V16 acc = (V16){0};
        int64_t j = 0;
        for (; j < n && j + 16 <= m; j += 16) acc += v16_load(drow + j) * v16_load(arow + j);
        if (j < n) acc += v16_load(drow + j) * v16_load_n(arow + j, m - j);
        const float dsum = v16_sum(acc);
        for (j = 0; j < n; j++) drow[j] = arow[j] * (drow[j] - dsum) * scale;
        for (; j < ldy; j++) drow[j] = 0.0f;
    }
    att_product(0, 0, m, m, hd, D, ldy, k + s * kvs, kvs, dq + s * dqs, dqs, !set_q);
    att_product(1, 1, m, m, hd, D, ldy, q + s * qs, qs, dk + s * dkvs, dkvs, !set_kv);
    att_product(1, 1, m, m, hd, att + s * T + s, T, dout + s * dos, dos, dv + s * dkvs, dkvs,
                !set_kv);
}

/* Attention at head sizes that are not multiples of 16: one query row at a
 * time, scalar dots. */
static void attention_head_forward_generic(float *out, int64_t out_stride, float *att,
                                           const float *q, int64_t qs, const float *k, int64_t ks,
                                           const float *v, int64_t vs, int64_t s, int64_t T,
                                           int64_t hd) {
    const float scale = 1.0f / sqrtf((float)hd);
    for (int64_t i = 0; i < T; i++) {
        float *arow = att + i * T, *o = out + i * out_stride;
        memset(arow, 0, (size_t)T * sizeof(float));
        memset(o, 0, (size_t)hd * sizeof(float));
        if (i < s) continue; // padding before the sequence starts: no output
        const float *qi = q + i * qs;
        for (int64_t j = s; j <= i; j++) arow[j] = dot_hd(qi, k + j * ks, hd) * scale;
        softmax_inplace(arow + s, i - s + 1);
        for (int64_t j = s; j <= i; j++) axpy_hd(o, arow[j], v + j * vs, hd);
    }
}

/* Adds onto dq, dk and dv (the caller zeroes what is to be set); drow: T
 * floats of scratch. */
static void attention_head_backward_generic(float *dq, float *dk, float *dv, const float *dout,
                                            int64_t dout_stride, const float *att, const float *q,
                                            const float *k, const float *v, int64_t stride_q,
                                            int64_t stride_kv, int64_t dstride_q,
                                            int64_t dstride_kv, float *drow, int64_t s, int64_t T,
                                            int64_t hd) {
    const float scale = 1.0f / sqrtf((float)hd);
    for (int64_t i = s; i < T; i++) {
        const float *arow = att + i * T, *go = dout + i * dout_stride;
        float dsum = 0.0f;
        for (int64_t j = s; j <= i; j++) {
            drow[j] = dot_hd(go, v + j * stride_kv, hd); // d(att_ij)
            dsum += drow[j] * arow[j];
            axpy_hd(dv + j * dstride_kv, arow[j], go, hd);
        }
        float *dqi = dq + i * dstride_q;
        const float *qi = q + i * stride_q;
        for (int64_t j = s; j <= i; j++) {
            float dpre = arow[j] * (drow[j] - dsum) * scale;
            axpy_hd(dqi, dpre, k + j * stride_kv, hd);
            axpy_hd(dk + j * dstride_kv, dpre, qi, hd);
        }
    }
}

/* Scratch of the attention kernels; the ops return nothing, so running out
 * of memory ends the process with the size. */
static float *attention_scratch(int64_t floats) {
    float *p = malloc((size_t)floats * sizeof(float));
    if (!p) {
        fprintf(stderr, "ponder: out of memory for attention scratch (%lld floats)\n",
                (long long)floats);
        abort();
    }
    return p;
}

/* Weight of one row of attention: its query positions times the keys each
 * sees (training, from the row's start; +1 so that empty rows still count)
 * or its cached length (decode). */
static int64_t attention_row_weight(const int32_t *start, const int64_t *len, int64_t T,
                                    int64_t b) {
    if (len) return len[b] + 1;
    const int64_t live = T - (start ? start[b] : 0);
    return live * (live + 1) / 2 + 1;
}

/* First item at or after which the running weight reaches `target`: items
 * are rows x per, item b * per + j weighing row b's weight. */
static int64_t attention_cut(const int32_t *start, const int64_t *len, int64_t T, int64_t rows,
                             int64_t per, int64_t target) {
    int64_t cum = 0;
    for (int64_t b = 0; b < rows; b++) {
        const int64_t w = attention_row_weight(start, len, T, b);
        if (cum + per * w > target) {
            const int64_t j = (target - cum + w - 1) / w;
            return b * per + j;
        }
        cum += per * w;
    }
    return rows * per;
}

/* The calling thread's items of a parallel attention loop: one contiguous
 * run of rows x per items, cut at equal shares of the weight. The
 * projections, norms and KV-cache writes split rows into contiguous shares
 * too, so a thread mostly reads the q, k, v, cache and attention rows that it
 * wrote itself. With dynamic scheduling half of them came from the other
 * core, and when the machine placed the two cores on different L3 caches
 * (load-to-use over 300 ns, not 55) steps ran 1.5x slower. Every item is
 * still computed by one thread, so the bits do not depend on the split. */
static void attention_share(const int32_t *start, const int64_t *len, int64_t T, int64_t rows,
                            int64_t per, int64_t *lo, int64_t *hi) {
    const int64_t nt = omp_get_num_threads(), me = omp_get_thread_num();
    int64_t total = 0;
    for (int64_t b = 0; b < rows; b++) total += per * attention_row_weight(start, len, T, b);
    *lo = me == 0 ? 0 : attention_cut(start, len, T, rows, per, total / nt * me + total % nt * me / nt);
    *hi = me == nt - 1 ? rows * per
                       : attention_cut(start, len, T, rows, per,
                                       total / nt * (me + 1) + total % nt * (me + 1) / nt);
}

static void cpu_attention_forward(float *out, float *att, OpsHeads q, OpsHeads k, OpsHeads v,
                                  const int32_t *start, int64_t B, int64_t T, int64_t NH,
                                  int64_t KV, int64_t hd) {
    const int64_t group = NH / KV, C = NH * hd, ldy = att_padded(T);
    const int blocked = hd % 16 == 0;
#pragma omp parallel if (B * NH * T * T * hd > PAR_MIN_WORK)
    {
        float *scratch = blocked ? attention_scratch((hd + T) * ldy) : NULL;
        int64_t lo, hi;
        attention_share(start, NULL, T, B, NH, &lo, &hi);
        for (int64_t bh = lo; bh < hi; bh++) {
            int64_t b = bh / NH, h = bh % NH, kvh = h / group;
            int64_t s = start ? start[b] : 0;
            float *o = out + b * T * C + h * hd, *a = att + bh * T * T;
            const float *qb = q.base + b * T * q.row_stride + h * hd;
            const float *kb = k.base + b * T * k.row_stride + kvh * hd;
            const float *vb = v.base + b * T * v.row_stride + kvh * hd;
            if (blocked)
                attention_head_forward_blocked(o, C, a, qb, q.row_stride, kb, k.row_stride, vb,
                                               v.row_stride, s, T, hd, scratch);
            else
                attention_head_forward_generic(o, C, a, qb, q.row_stride, kb, k.row_stride, vb,
                                               v.row_stride, s, T, hd);
        }
        free(scratch);
    }
}

/* set: dq, dk and dv written (rows before a sequence's start as zeros);
 * else added onto. Parallel over (batch, kv head): the heads of a group
 * share dk and dv and run in order on one thread. */
static void attention_backward_any(OpsHeads dq, OpsHeads dk, OpsHeads dv, const float *dout,
                                   const float *att, OpsHeads q, OpsHeads k, OpsHeads v,
                                   const int32_t *start, int64_t B, int64_t T, int64_t NH,
                                   int64_t KV, int64_t hd, int set) {
    const int64_t group = NH / KV, C = NH * hd, ldy = att_padded(T);
    const int blocked = hd % 16 == 0;
#pragma omp parallel if (B * NH * T * T * hd > PAR_MIN_WORK)
    {
        float *scratch = attention_scratch(blocked ? (hd + T) * ldy : T);
        int64_t lo, hi;
        attention_share(start, NULL, T, B, KV, &lo, &hi);
        for (int64_t bk = lo; bk < hi; bk++) {
            int64_t b = bk / KV, kvh = bk % KV, s = start ? start[b] : 0;
            const int64_t kofs = b * T * k.row_stride + kvh * hd;
            float *dkb = dk.base + b * T * dk.row_stride + kvh * hd;
            float *dvb = dv.base + b * T * dv.row_stride + kvh * hd;
            const int64_t zero_kv = !set ? 0 : blocked ? s : T;
            for (int64_t i = 0; i < zero_kv; i++) {
                memset(dkb + i * dk.row_stride, 0, (size_t)hd * sizeof(float));
                memset(dvb + i * dv.row_stride, 0, (size_t)hd * sizeof(float));
            }
            for (int64_t h = kvh * group; h < (kvh + 1) * group; h++) {
                float *dqb = dq.base + b * T * dq.row_stride + h * hd;
                for (int64_t i = 0; i < (!set ? 0 : blocked ? s : T); i++)
                    memset(dqb + i * dq.row_stride, 0, (size_t)hd * sizeof(float));
                const float *db = dout + b * T * C + h * hd, *ab = att + (b * NH + h) * T * T;
                const float *qb = q.base + b * T * q.row_stride + h * hd;
                const float *vb = v.base + b * T * v.row_stride + kvh * hd;
                if (blocked)
                    attention_head_backward_blocked(
                        dqb, dkb, dvb, db, C, ab, qb, k.base + kofs, vb, q.row_stride,
                        k.row_stride, dq.row_stride, dk.row_stride, s, T, hd, scratch, set,
                        set && h == kvh * group);
                else
                    attention_head_backward_generic(dqb, dkb, dvb, db, C, ab, qb, k.base + kofs,
                                                    vb, q.row_stride, k.row_stride,
                                                    dq.row_stride, dk.row_stride, scratch, s, T,
                                                    hd);
            }
        }
        free(scratch);
    }
}


static void cpu_attention_backward(OpsHeads dq, OpsHeads dk, OpsHeads dv, const float *dout,
                                   const float *att, OpsHeads q, OpsHeads k, OpsHeads v,
                                   const int32_t *start, int64_t B, int64_t T, int64_t NH,
                                   int64_t KV, int64_t hd) {
    attention_backward_any(dq, dk, dv, dout, att, q, k, v, start, B, T, NH, KV, hd, 0);
}

static void cpu_attention_backward_set(OpsHeads dq, OpsHeads dk, OpsHeads dv, const float *dout,
                                       const float *att, OpsHeads q, OpsHeads k, OpsHeads v,
                                       const int32_t *start, int64_t B, int64_t T, int64_t NH,
                                       int64_t KV, int64_t hd) {
    attention_backward_any(dq, dk, dv, dout, att, q, k, v, start, B, T, NH, KV, hd, 1);
}

/* One query row against L cached keys of one head: the generic form
 * (positions j < P from kp and vp). */
static inline void attention_cached_row_any(float *o, float *row, const float *qi, const float *kp,
                                            const float *vp, int64_t P, const float *kc,
                                            const float *vc, int64_t L, int64_t hd, float scale) {
    for (int64_t j = 0; j < L; j++) row[j] = dot_hd(qi, (j < P ? kp : kc) + j * hd, hd) * scale;
    memset(o, 0, (size_t)hd * sizeof(float));
    if (L == 0) return;
    softmax_inplace(row, L);
    for (int64_t j = 0; j < L; j++) axpy_hd(o, row[j], (j < P ? vp : vc) + j * hd, hd);
}

/* attention_cached_row_any over a bf16 cache (values in bf16_cache_index's
 * order). */
static void attention_cached_row_bf16_any(float *o, float *row, const float *qi,
                                          const uint16_t *kp, const uint16_t *vp, int64_t P,
                                          const uint16_t *kc, const uint16_t *vc, int64_t L,
                                          int64_t hd, float scale) {
    for (int64_t j = 0; j < L; j++) {
        const uint16_t *kj = (j < P ? kp : kc) + j * hd;
        float d = 0.0f;
        for (int64_t c = 0; c < hd; c++) d += qi[c] * bf16_to_float(kj[bf16_cache_index(c, hd)]);
        row[j] = d * scale;
    }
    memset(o, 0, (size_t)hd * sizeof(float));
    if (L == 0) return;
    softmax_inplace(row, L);
    for (int64_t j = 0; j < L; j++) {
        const uint16_t *vj = (j < P ? vp : vc) + j * hd;
        for (int64_t c = 0; c < hd; c++)
            o[c] += row[j] * bf16_to_float(vj[bf16_cache_index(c, hd)]);
    }
}

/* attention_values_hd for NV heads of one decode row over the same L
 * cached values (v[h] head h's, rows HD apart, indexed by position; values
 * j < P from vp[h] instead; r[h] its unnormalised weights; outputs at
 * o + h * HD). Each head's sums keep their order (so their bits, wherever
 * the values come from); the shared loop gives NV times the independent add
 * chains, which one head's pass waited on (FMA latency). NV * HD <= 256. */
static inline __attribute__((always_inline)) void attention_values_heads_hd(
    float *o, float *const *r, const void *const *vp, int64_t P, const void *const *v, int64_t L,
    const int64_t HD, const int NV, const int bf16) {
    /* the loops over h and c must unroll fully, or a[][] lives on the stack */
    V16 a[4][8];
#pragma GCC unroll 4
    for (int h = 0; h < NV; h++)
#pragma GCC unroll 8
        for (int64_t c = 0; c < HD / 16; c++) a[h][c] = (V16){0};
    /* the weight sums as separate scalars, each pinned to a register by an
     * empty asm: as an array GCC kept them two to a general register, or
     * packed in one vector on the stack, a wait on every key (the bits are
     * the same either way) */
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
    const int64_t es = bf16 ? 2 : 4; /* bytes per value */
    for (int seg = P > 0 ? 0 : 1; seg < 2; seg++) { /* the prefix, then the rest */
        const void *const *vs = seg ? v : vp;
        const int64_t end = seg ? L : P;
        for (int64_t j = seg ? P : 0; j < end; j++) {
            if (j + 16 < L) { /* 16 keys ahead, as dots_hd, across the prefix's end */
                const void *const *ahead = j + 16 < P ? vp : v;
                for (int h = 0; h < NV; h++)
                    for (int64_t b = 0; b < HD * es; b += 64)
                        __builtin_prefetch((const char *)ahead[h] + (j + 16) * HD * es + b, 0, 3);
            }
            s0 += r[0][j];
            __asm__("" : "+x"(s0));
            if (NV > 1) {
                s1 += r[1][j];
                __asm__("" : "+x"(s1));
            }
            if (NV > 2) {
                s2 += r[2][j];
                __asm__("" : "+x"(s2));
            }
            if (NV > 3) {
                s3 += r[3][j];
                __asm__("" : "+x"(s3));
            }
#pragma GCC unroll 4
            for (int h = 0; h < NV; h++)
#pragma GCC unroll 8
                for (int64_t c = 0; c < HD / 16; c++)
                    a[h][c] += r[h][j] * v16_load_any(vs[h], j * HD, c, bf16);
        }
    }
    const float sum[4] = {s0, s1, s2, s3};
#pragma GCC unroll 4
    for (int h = 0; h < NV; h++) {
        const float inv = L > 0 ? 1.0f / sum[h] : 0.0f;
        for (int64_t c = 0; c < HD / 16; c++) {
            V16 x = a[h][c] * inv;
            memcpy(o + h * HD + 16 * c, &x, sizeof x);
        }
    }
}

/* NV consecutive heads of one decode row (q their queries, k[h] and v[h]
 * their caches, fp32 or bf16, positions j < P from kp[h] and vp[h]
 * instead, r[h] L floats of scratch each): exponentials
 * per head, then one value pass for all. The decode forms take a
 * compile-time HD and GCC vector types so that queries and outputs stay in
 * registers (plain loops sent the lane sums and the accumulation through
 * memory, and a 128-wide model's attention cost more than its products);
 * lane sums are pairwise in a fixed order, so results do not depend on the
 * CPU. */
static inline __attribute__((always_inline)) void attention_cached_heads_hd(
    float *o, float *const *r, const float *q, const void *const *kp, const void *const *vp,
    int64_t P, const void *const *k, const void *const *v, int64_t L, const int64_t HD,
    const int NV, float scale, const int bf16) {
    for (int h = 0; h < NV; h++)
        attention_exps_hd(r[h], q + h * HD, kp[h], P, k[h], HD, L, HD, scale, bf16);
    attention_values_heads_hd(o, r, vp, P, v, L, HD, NV, bf16);
}

#define CACHED_HEADS(HD, NV)                                                                       \
    do {                                                                                           \
        if (bf16)                                                                                  \
            attention_cached_heads_hd(o, r, q, kp, vp, P, k, v, L, HD, NV, scale, 1);              \
        else                                                                                       \
            attention_cached_heads_hd(o, r, q, kp, vp, P, k, v, L, HD, NV, scale, 0);              \
    } while (0)
#define CACHED_HEADS_NV(HD)                                                                        \
    do {                                                                                           \
        switch (nv) {                                                                              \
        case 1: CACHED_HEADS(HD, 1); break;                                                        \
        case 2: CACHED_HEADS(HD, 2); break;                                                        \
        case 3: CACHED_HEADS(HD, 3); break;                                                        \
        default: CACHED_HEADS(HD, 4); break;                                                       \
        }                                                                                          \
    } while (0)
/* attention_cached_heads_hd for hd 32 or 64 (nv 1 to 4) and 128 (nv 1 or 2). */
PONDER_HOT static void attention_cached_heads(float *o, float *const *r, const float *q,
                                              const void *const *kp, const void *const *vp,
                                              int64_t P, const void *const *k,
                                              const void *const *v, int64_t L, int64_t hd, int nv,
                                              float scale, int bf16) {
    switch (hd) {
    case 32: CACHED_HEADS_NV(32); break;
    case 64: CACHED_HEADS_NV(64); break;
    default:
        if (nv == 1)
            CACHED_HEADS(128, 1);
        else
            CACHED_HEADS(128, 2);
        break;
    }
}
#undef CACHED_HEADS_NV
#undef CACHED_HEADS

/* One (row, head) item of attention_cached_any at a head size without a
 * register form. */
static void attention_cached_one(float *o, float *row, const float *qi, const void *kp,
                                 const void *vp, int64_t P, const void *kc, const void *vc,
                                 int64_t L, int64_t hd, float scale, int bf16) {
    if (bf16)
        attention_cached_row_bf16_any(o, row, qi, kp, vp, P, kc, vc, L, hd, scale);
    else
        attention_cached_row_any(o, row, qi, kp, vp, P, kc, vc, L, hd, scale);
}

PONDER_HOT static void cpu_kv_store_bf16(uint16_t *dst, const float *src, int64_t hd);

/* What attention_decode does before a row attends: RoPE on the row's q and
 * k heads (cos_sin NULL: none), then its k and v heads stored at position
 * len - 1 of its caches, which hold bf16 when bf16 is set. */
typedef struct DecodeStore {
    OpsHeads k, v;
    const float *cos_sin;
    void *const *k_cache, *const *v_cache;
    int bf16;
} DecodeStore;

static void decode_store_row(const DecodeStore *st, OpsHeads q, int64_t n, int64_t pos, int64_t NH,
                             int64_t KV, int64_t hd, int64_t max_len) {
    float *qr = q.base + n * q.row_stride, *kr = st->k.base + n * st->k.row_stride;
    const float *vr = st->v.base + n * st->v.row_stride;
    if (st->cos_sin) {
        /* per head as cpu_rope, so the same bits whatever heads go together */
        const float *cs = st->cos_sin + pos * hd;
        rope_position(qr, cs, NH, hd, 1.0f);
        rope_position(kr, cs, KV, hd, 1.0f);
    }
    for (int64_t h = 0; h < KV; h++) {
        const int64_t at = (h * max_len + pos) * hd;
        if (st->bf16) {
            cpu_kv_store_bf16((uint16_t *)st->k_cache[n] + at, kr + h * hd, hd);
            cpu_kv_store_bf16((uint16_t *)st->v_cache[n] + at, vr + h * hd, hd);
        } else {
            memcpy((float *)st->k_cache[n] + at, kr + h * hd, (size_t)hd * sizeof(float));
            memcpy((float *)st->v_cache[n] + at, vr + h * hd, (size_t)hd * sizeof(float));
        }
    }
}

/* A cached attention's threads from 128 positions of 4 heads of 32: with
 * its heads split between threads, a batch-1 fp32 decode over 508
 * positions ran 8.4-9.8k against 7.1-8.3k tokens/s at 2 threads, and at
 * 16-144 positions this threshold was level where a quarter of it lost up
 * to 28% in bf16 (bench/RESULTS.md, "Thirteenth session"). */
#define CACHED_PAR_MIN_WORK (PAR_MIN_WORK / 4)

/* Cached attention over fp32 caches (kf, vf) or bf16 ones (kh, vh; the
 * others NULL): parallel over (row, group of heads), rows of different
 * lengths. At head sizes 32 and 64 a group is up to 4 consecutive heads,
 * at 128 up to 2 (fewer when there are fewer rows than threads), sharing
 * one value pass (attention_cached_heads); other sizes go one head at a
 * time. With st (a decode step: every row its own caches) each row is
 * rotated and stored first, in the same region: by the item that attends
 * for it when one item holds all of a row's heads (its stores then overlap
 * other rows' reads), else in a loop over rows before them. With pre, a
 * row's first pre->len[n] positions are read from the prefix's blocks. */
/* Heads per work item of attention_cached_any: up to 4 at head sizes 32
 * and 64, 2 at 128, 1 at others; fewer when there are fewer rows than
 * threads (batch-1 decode), so each thread takes some (a head's sums keep
 * their order, so the bits do not change). */
static int64_t cached_heads_per_item(int64_t N, int64_t NH, int64_t hd, int64_t threads) {
    const int fixed = hd == 32 || hd == 64 || hd == 128;
    int64_t per = !fixed ? 1 : hd == 128 ? 2 : 4;
    while (per > 1 && N * ((NH + per - 1) / per) < threads) per /= 2;
    return per;
}

/* Items lo..hi of attention_cached_any (item it: row it / groups, its
 * (it % groups)-th group of `per` heads) by the calling thread; with st
 * and more than one group per row, the rows' stores are done already. */
static void attention_cached_items(float *out, OpsHeads q, float *const *kf, float *const *vf,
                                   const uint16_t *const *kh, const uint16_t *const *vh,
                                   const int64_t *len, int64_t NH, int64_t KV, int64_t hd,
                                   int64_t max_len, const DecodeStore *st, const OpsPrefix *pre,
                                   int64_t per, int64_t lo, int64_t hi) {
    const int64_t group = NH / KV;
    const float scale = 1.0f / sqrtf((float)hd);
    const int bf16 = kh != NULL, fixed = hd == 32 || hd == 64 || hd == 128;
    const int64_t groups = (NH + per - 1) / per;
    const size_t es = bf16 ? sizeof(uint16_t) : sizeof(float);
    float *scratch = malloc((size_t)(4 * max_len) * sizeof(float));
    float *r[4] = {scratch, scratch + max_len, scratch + 2 * max_len, scratch + 3 * max_len};
    for (int64_t it = lo; it < hi; it++) {
        const int64_t n = it / groups, h = per * (it % groups);
        if (st && groups == 1) decode_store_row(st, q, n, len[n] - 1, NH, KV, hd, max_len);
        const int nv = (int)(NH - h < per ? NH - h : per);
        const char *kc = bf16 ? (const char *)kh[n] : (const char *)kf[n];
        const char *vc = bf16 ? (const char *)vh[n] : (const char *)vf[n];
        const int64_t P = pre ? pre->len[n] : 0;
        const char *kpc = P ? (const char *)pre->k[n] : NULL;
        const char *vpc = P ? (const char *)pre->v[n] : NULL;
        const void *k[4], *v[4], *kp[4] = {NULL}, *vp[4] = {NULL};
        for (int g = 0; g < nv; g++) {
            const size_t at = (size_t)((h + g) / group * max_len * hd) * es;
            k[g] = kc + at, v[g] = vc + at;
            if (P) kp[g] = kpc + at, vp[g] = vpc + at;
        }
        float *o = out + n * NH * hd + h * hd;
        const float *qi = q.base + n * q.row_stride + h * hd;
        if (fixed)
            attention_cached_heads(o, r, qi, kp, vp, P, k, v, len[n], hd, nv, scale, bf16);
        else
            attention_cached_one(o, r[0], qi, kp[0], vp[0], P, k[0], v[0], len[n], hd, scale,
                                 bf16);
    }
    free(scratch);
}

/* attention_cached_any's work, run by every thread of a region (or by one
 * thread alone), `per` heads per item; the caller's barrier ends it. */
static void attention_cached_in_region(float *out, OpsHeads q, float *const *kf,
                                       float *const *vf, const uint16_t *const *kh,
                                       const uint16_t *const *vh, const int64_t *len, int64_t N,
                                       int64_t NH, int64_t KV, int64_t hd, int64_t max_len,
                                       const DecodeStore *st, const OpsPrefix *pre, int64_t per) {
    const int64_t groups = (NH + per - 1) / per;
    if (st && groups > 1) {
#pragma omp for schedule(static)
        for (int64_t n = 0; n < N; n++) decode_store_row(st, q, n, len[n] - 1, NH, KV, hd, max_len);
    }
    int64_t lo, hi;
    attention_share(NULL, len, 0, N, groups, &lo, &hi);
    attention_cached_items(out, q, kf, vf, kh, vh, len, NH, KV, hd, max_len, st, pre, per, lo, hi);
}

static void attention_cached_any(float *out, OpsHeads q, float *const *kf, float *const *vf,
                                 const uint16_t *const *kh, const uint16_t *const *vh,
                                 const int64_t *len, int64_t N, int64_t NH, int64_t KV,
                                 int64_t hd, int64_t max_len, const DecodeStore *st,
                                 const OpsPrefix *pre) {
    const int64_t per = cached_heads_per_item(N, NH, hd, omp_get_max_threads());
    int64_t work = 0;
    for (int64_t n = 0; n < N; n++) work += len[n] * NH * hd;
#pragma omp parallel if (work > CACHED_PAR_MIN_WORK)
    attention_cached_in_region(out, q, kf, vf, kh, vh, len, N, NH, KV, hd, max_len, st, pre, per);
}

static void cpu_attention_cached(float *out, OpsHeads q, float *const *k_cache,
                                 float *const *v_cache, const int64_t *len, int64_t N,
                                 int64_t NH, int64_t KV, int64_t hd, int64_t max_len) {
    attention_cached_any(out, q, k_cache, v_cache, NULL, NULL, len, N, NH, KV, hd, max_len, NULL,
                         NULL);
}

static void cpu_attention_decode(float *out, OpsHeads q, OpsHeads k, OpsHeads v,
                                 const float *cos_sin, float *const *k_cache,
                                 float *const *v_cache, const int64_t *len, int64_t N, int64_t NH,
                                 int64_t KV, int64_t hd, int64_t max_len, const OpsPrefix *prefix) {
    const DecodeStore st = {k, v, cos_sin, (void *const *)k_cache, (void *const *)v_cache, 0};
    attention_cached_any(out, q, k_cache, v_cache, NULL, NULL, len, N, NH, KV, hd, max_len, &st,
                         prefix);
}

/* bf16_from_float (util/bf16.h) on 16 lanes, each result in the upper half
 * of its 32-bit lane. */
static inline __attribute__((always_inline)) V16u v16_round_bf16(const float *p) {
    V16u u;
    memcpy(&u, p, sizeof u);
    const V16u zero = (V16u)((u & 0x7f800000u) == 0), nan = (V16u)((u & 0x7fffffffu) > 0x7f800000u);
    const V16u rounded = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    return (zero & (u & 0x80000000u)) | (nan & ((u | 0x00400000u) & 0xffff0000u)) |
           (~zero & ~nan & rounded);
}

/* hd values into a bf16 cache in bf16_cache_index's order. */
PONDER_HOT static void cpu_kv_store_bf16(uint16_t *dst, const float *src, int64_t hd) {
    int64_t c = 0;
    for (; c + 32 <= hd; c += 32) {
        const V16u w = v16_round_bf16(src + c) | (v16_round_bf16(src + c + 16) >> 16);
        memcpy(dst + c, &w, sizeof w);
    }
    for (; c < hd; c++) dst[c] = bf16_from_float(src[c]);
}

static void cpu_attention_cached_bf16(float *out, OpsHeads q, const uint16_t *const *k_cache,
                                      const uint16_t *const *v_cache, const int64_t *len,
                                      int64_t N, int64_t NH, int64_t KV, int64_t hd,
                                      int64_t max_len) {
    attention_cached_any(out, q, NULL, NULL, k_cache, v_cache, len, N, NH, KV, hd, max_len, NULL,
                         NULL);
}

static void cpu_attention_decode_bf16(float *out, OpsHeads q, OpsHeads k, OpsHeads v,
                                      const float *cos_sin, uint16_t *const *k_cache,
                                      uint16_t *const *v_cache, const int64_t *len, int64_t N,
                                      int64_t NH, int64_t KV, int64_t hd, int64_t max_len,
                                      const OpsPrefix *prefix) {
    const DecodeStore st = {k, v, cos_sin, (void *const *)k_cache, (void *const *)v_cache, 1};
    attention_cached_any(out, q, NULL, NULL, (const uint16_t *const *)k_cache,
                         (const uint16_t *const *)v_cache, len, N, NH, KV, hd, max_len, &st,
                         prefix);
}

/* -------------------------------------------------------- activations ---- */

PONDER_HOT static void swiglu_row(float *out, const float *gu, int64_t F) {
    const float *g = gu, *u = gu + F;
    for (int64_t f = 0; f < F; f++) out[f] = g[f] / (1.0f + exp_fast(-g[f])) * u[f];
}

static void cpu_swiglu_forward(float *out, const float *gate_up, int64_t N, int64_t F) {
#pragma omp parallel for if (N * F > ROW_PAR_MIN) schedule(static)
    for (int64_t n = 0; n < N; n++) swiglu_row(out + n * F, gate_up + n * 2 * F, F);
}

/* acc: add onto dgu (the op); else write 0 + the terms, the bits of adding
 * onto zeros (0 + x is +0 where x is -0). */
static inline __attribute__((always_inline)) void swiglu_backward_row_as(
    float *dgu, const float *dout, const float *gu, int64_t F, const int acc) {
    const float *g = gu, *u = gu + F;
    for (int64_t f = 0; f < F; f++) {
        float sig = 1.0f / (1.0f + exp_fast(-g[f]));
        float silu = g[f] * sig;
        dgu[f] = (acc ? dgu[f] : 0.0f) + dout[f] * u[f] * sig * (1.0f + g[f] * (1.0f - sig));
        dgu[F + f] = (acc ? dgu[F + f] : 0.0f) + dout[f] * silu;
    }
}

PONDER_HOT static void swiglu_backward_row(float *dgu, const float *dout, const float *gu,
                                           int64_t F, int acc) {
    if (acc)
        swiglu_backward_row_as(dgu, dout, gu, F, 1);
    else
        swiglu_backward_row_as(dgu, dout, gu, F, 0);
}

static void swiglu_backward_any(float *dgate_up, const float *dout, const float *gate_up,
                                int64_t N, int64_t F, int acc) {
#pragma omp parallel for if (N * F > PAR_MIN_WORK) schedule(static)
    for (int64_t n = 0; n < N; n++)
        swiglu_backward_row(dgate_up + n * 2 * F, dout + n * F, gate_up + n * 2 * F, F, acc);
}

static void cpu_swiglu_backward(float *dgate_up, const float *dout, const float *gate_up,
                                int64_t N, int64_t F) {
    swiglu_backward_any(dgate_up, dout, gate_up, N, F, 1);
}

static void cpu_swiglu_backward_set(float *dgate_up, const float *dout, const float *gate_up,
                                    int64_t N, int64_t F) {
    swiglu_backward_any(dgate_up, dout, gate_up, N, F, 0);
}

#define GELU_SCALE 0.7978845608028654f /* sqrt(2/pi) */

PONDER_HOT static void gelu_block(float *out, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float u = GELU_SCALE * (x[i] + 0.044715f * x[i] * x[i] * x[i]);
        out[i] = 0.5f * x[i] * (1.0f + tanh_fast(u));
    }
}

PONDER_HOT static void gelu_backward_block(float *dinp, const float *x, const float *dout,
                                           int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float xi = x[i], u = GELU_SCALE * (xi + 0.044715f * xi * xi * xi);
        float t = tanh_fast(u), sech2 = 1.0f - t * t;
        float local = 0.5f * (1.0f + t) + 0.5f * xi * sech2 * GELU_SCALE *
                                               (1.0f + 3.0f * 0.044715f * xi * xi);
        dinp[i] += local * dout[i];
    }
}

#define ELEMENTWISE_BLOCK 4096

static void cpu_gelu_forward(float *out, const float *inp, int64_t n) {
    int64_t nb = (n + ELEMENTWISE_BLOCK - 1) / ELEMENTWISE_BLOCK;
#pragma omp parallel for if (n > ROW_PAR_MIN) schedule(static)
    for (int64_t b = 0; b < nb; b++) {
        int64_t i0 = b * ELEMENTWISE_BLOCK, len = n - i0 < ELEMENTWISE_BLOCK ? n - i0 : ELEMENTWISE_BLOCK;
        gelu_block(out + i0, inp + i0, len);
    }
}

static void cpu_gelu_backward(float *dinp, const float *inp, const float *dout, int64_t n) {
    int64_t nb = (n + ELEMENTWISE_BLOCK - 1) / ELEMENTWISE_BLOCK;
#pragma omp parallel for if (n > PAR_MIN_WORK) schedule(static)
    for (int64_t b = 0; b < nb; b++) {
        int64_t i0 = b * ELEMENTWISE_BLOCK, len = n - i0 < ELEMENTWISE_BLOCK ? n - i0 : ELEMENTWISE_BLOCK;
        gelu_backward_block(dinp + i0, inp + i0, dout + i0, len);
    }
}

static void cpu_add(float *out, const float *a, const float *b, int64_t n) {
#pragma omp parallel for if (n > ROW_PAR_MIN) schedule(static)
    for (int64_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

static void cpu_accumulate(float *acc, const float *a, int64_t n) {
#pragma omp parallel for if (n > ROW_PAR_MIN) schedule(static)
    for (int64_t i = 0; i < n; i++) acc[i] += a[i];
}

/* One destination row per iteration, its sources added in list order: the
 * result does not depend on the thread split. */
static void cpu_rows_gather(float *dst, const float *src, const int32_t *idx,
                            const int32_t *offsets, int64_t n, int64_t width) {
#pragma omp parallel for if (n * width > ROW_PAR_MIN) schedule(static)
    for (int64_t r = 0; r < n; r++) {
        float *d = dst + r * width;
        const int64_t j0 = offsets ? offsets[r] : r, j1 = offsets ? offsets[r + 1] : r + 1;
        if (j1 <= j0 || idx[j0] < 0) {
            memset(d, 0, (size_t)width * sizeof(float));
            continue;
        }
        memcpy(d, src + (int64_t)idx[j0] * width, (size_t)width * sizeof(float));
        for (int64_t j = j0 + 1; j < j1; j++) {
            const float *s = src + (int64_t)idx[j] * width;
            for (int64_t c = 0; c < width; c++) d[c] += s[c];
        }
    }
}

/* ------------------------------------------------------------ LM head ---- */

/* Rows per chunk so that a chunk's logits stay near 64 MB whatever V is: at 41
 * rows (8 MB for GPT-2's vocabulary) OpenBLAS ran the head's GEMMs at ~115
 * instead of ~190 GFLOP/s (bench/RESULTS.md). */
static int64_t lm_head_chunk_rows(int64_t V) {
    int64_t r = (int64_t)(16 * 1024 * 1024) / V;
    return r < 8 ? 8 : (r > 1024 ? 1024 : r);
}

/* Indices of rows with mask != 0; padding never reaches the vocabulary GEMM. */
static int64_t active_rows(int64_t *idx, const float *mask, int64_t N) {
    int64_t a = 0;
    for (int64_t n = 0; n < N; n++)
        if (!mask || mask[n] != 0.0f) idx[a++] = n;
    return a;
}

static void gather_rows(float *dst, const float *src, const int64_t *idx, int64_t R, int64_t C) {
    for (int64_t r = 0; r < R; r++) memcpy(dst + r * C, src + idx[r] * C, (size_t)C * sizeof(float));
}

PONDER_HOT static float max_of(const float *z, int64_t V) {
    float acc[LANES];
    for (int k = 0; k < LANES; k++) acc[k] = z[0];
    int64_t j = 0;
    for (; j + LANES <= V; j += LANES)
        for (int k = 0; k < LANES; k++) acc[k] = z[j + k] > acc[k] ? z[j + k] : acc[k];
    float mx = acc[0];
    for (int k = 1; k < LANES; k++) mx = acc[k] > mx ? acc[k] : mx;
    for (; j < V; j++) mx = z[j] > mx ? z[j] : mx;
    return mx;
}

/* The LM head's three products, in fp32 (sgemm) or with bf16 operands. In
 * bf16 the weight is packed once per op call, in both layouts the head uses
 * (w^T for the logits, w for d(h)), instead of once per chunk. */
typedef struct LmProducts {
    Bf16Scratch *bf16; /* NULL: fp32 */
} LmProducts;

/* In bf16, packs w^T when the logits are to be computed and w when d(h)
 * is. */
static LmProducts lm_products(int bf16, const float *w, int64_t C, int64_t V, int logits, int dh) {
    LmProducts p = {bf16 ? bf16_scratch() : NULL};
    if (!p.bf16) return p;
    if ((logits && gemm_bf16_pack_b(&p.bf16->lm_w_t, 1, C, V, w, C)) ||
        (dh && gemm_bf16_pack_b(&p.bf16->lm_w, 0, V, C, w, C)))
        bf16_out_of_memory("the LM head weight", V * C);
    return p;
}

/* z[rows,V] = logits of the gathered rows idx[0..rows) of h; hc is scratch [rows,C]. */
static void chunk_logits(LmProducts *lp, float *z, float *hc, const float *h, const float *w,
                         const int64_t *idx, int64_t rows, int64_t C, int64_t V) {
    gather_rows(hc, h, idx, rows, C);
    if (!lp->bf16) {
        blas_sgemm(0, 1, rows, V, C, 1.0f, hc, C, w, C, 0.0f, z, V);
        return;
    }
    if (gemm_bf16_with_b(&lp->bf16->g.a, 0, rows, C, hc, C, &lp->bf16->lm_w_t, 1.0f, 0.0f, z, V))
        bf16_out_of_memory("LM head rows", rows * C);
}

/* dhc[rows,C] = dz w; dw[V,C] += dz^T hc. */
static void chunk_backward_products(LmProducts *lp, float *dhc, float *dw, const float *z,
                                    const float *hc, const float *w, int64_t rows, int64_t C,
                                    int64_t V) {
    if (!lp->bf16) {
        blas_sgemm(0, 0, rows, C, V, 1.0f, z, V, w, C, 0.0f, dhc, C);
        blas_sgemm(1, 0, V, C, rows, 1.0f, z, V, hc, C, 1.0f, dw, C);
        return;
    }
    GemmBf16 *g = &lp->bf16->g;
    if (gemm_bf16_with_b(&g->a, 0, rows, V, z, V, &lp->bf16->lm_w, 1.0f, 0.0f, dhc, C))
        bf16_out_of_memory("LM head d(logits)", rows * V);
    bf16_product(g, 1, 0, V, C, rows, z, V, hc, C, 1.0f, dw, C);
}

/* log-sum-exp of z[0..V) and the entropy of softmax(z). Sums are taken of
 * shifted logits (z - max) so that sum_j p_j (z_j - max) does not cancel. */
PONDER_HOT static void lse_and_entropy(const float *z, int64_t V, float *lse_out,
                                       float *entropy_out) {
    float mx = max_of(z, V);
    float se[LANES] = {0}, sz[LANES] = {0};
    int64_t j = 0;
    for (; j + LANES <= V; j += LANES)
        for (int k = 0; k < LANES; k++) {
            float d = z[j + k] - mx, e = exp_fast(d);
            se[k] += e;
            sz[k] += e * d;
        }
    float sum = combine_lanes(se), sum_pz = combine_lanes(sz);
    for (; j < V; j++) {
        float d = z[j] - mx, e = exp_fast(d);
        sum += e;
        sum_pz += e * d;
    }
    float log_sum = logf(sum);
    *lse_out = mx + log_sum;
    *entropy_out = log_sum - sum_pz / sum; /* H = lse - E[z] in shifted units */
}

/* keep: NULL, or [A, V] that receives the logits of the active rows (they
 * are computed there instead of in a per-chunk buffer). */
static void lm_head_forward(int bf16, float *keep, float *logp, float *entropy, float *lse,
                            const float *h, const float *w, const int32_t *targets,
                            const float *mask, int64_t N, int64_t C, int64_t V) {
    memset(logp, 0, (size_t)N * sizeof(float));
    memset(lse, 0, (size_t)N * sizeof(float));
    if (entropy) memset(entropy, 0, (size_t)N * sizeof(float));
    const int64_t R = lm_head_chunk_rows(V);
    int64_t *idx = malloc((size_t)N * sizeof(int64_t));
    float *hc = malloc((size_t)(R * C) * sizeof(float));
    float *zbuf = keep ? NULL : malloc((size_t)(R * V) * sizeof(float));
    int64_t A = active_rows(idx, mask, N);
    LmProducts lp = lm_products(A && bf16, w, C, V, 1, 0);
    for (int64_t r0 = 0; r0 < A; r0 += R) {
        int64_t rows = A - r0 < R ? A - r0 : R;
        float *z = keep ? keep + r0 * V : zbuf;
        chunk_logits(&lp, z, hc, h, w, idx + r0, rows, C, V);
#pragma omp parallel for if (rows * V > PAR_MIN_WORK) schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            int64_t n = idx[r0 + r];
            float l, H;
            lse_and_entropy(z + r * V, V, &l, &H);
            lse[n] = l;
            logp[n] = z[r * V + targets[n]] - l;
            if (entropy) entropy[n] = H;
        }
    }
    free(zbuf);
    free(hc);
    free(idx);
}

/* z: logits in, d(logits) out. dz_j = dlogp (onehot_j - p_j) - dent p_j (log p_j + H),
 * with H the row's entropy. */
PONDER_HOT static void dlogits_row(float *z, int64_t V, float lse, float dlogp, float dent,
                                   int32_t target) {
    float H = 0.0f;
    if (dent != 0.0f) { /* H = -sum p log p, in lanes as in lse_and_entropy */
        float acc[LANES] = {0};
        int64_t j = 0;
        for (; j + LANES <= V; j += LANES)
            for (int k = 0; k < LANES; k++) {
                float lp = z[j + k] - lse;
                acc[k] -= exp_fast(lp) * lp;
            }
        H = combine_lanes(acc);
        for (; j < V; j++) H -= exp_fast(z[j] - lse) * (z[j] - lse);
    }
    for (int64_t j = 0; j < V; j++) {
        float lp = z[j] - lse, p = exp_fast(lp);
        z[j] = -dlogp * p - dent * p * (lp + H);
    }
    z[target] += dlogp;
}

/* kept: NULL, or the forward's logits of the active rows ([A, V], from
 * lm_head_forward's keep), used instead of recomputing them. */
static void lm_head_backward(int bf16, float *kept, float *dh, float *dw, const float *dlogp,
                             const float *dentropy, const float *h, const float *w,
                             const int32_t *targets, const float *lse, const float *mask,
                             int64_t N, int64_t C, int64_t V) {
    const int64_t R = lm_head_chunk_rows(V);
    int64_t *idx = malloc((size_t)N * sizeof(int64_t));
    float *hc = malloc((size_t)(R * C) * sizeof(float));
    float *dhc = malloc((size_t)(R * C) * sizeof(float));
    float *zbuf = kept ? NULL : malloc((size_t)(R * V) * sizeof(float));
    int64_t A = active_rows(idx, mask, N);
    LmProducts lp = lm_products(A && bf16, w, C, V, !kept, 1);
    for (int64_t r0 = 0; r0 < A; r0 += R) {
        int64_t rows = A - r0 < R ? A - r0 : R;
        float *z = kept ? kept + r0 * V : zbuf;
        if (kept)
            gather_rows(hc, h, idx + r0, rows, C); /* the d(w) product needs the rows */
        else
            chunk_logits(&lp, z, hc, h, w, idx + r0, rows, C, V);
#pragma omp parallel for if (rows * V > PAR_MIN_WORK) schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            int64_t n = idx[r0 + r];
            dlogits_row(z + r * V, V, lse[n], dlogp ? dlogp[n] : 0.0f,
                        dentropy ? dentropy[n] : 0.0f, targets[n]);
        }
        chunk_backward_products(&lp, dhc, dw, z, hc, w, rows, C, V);
        for (int64_t r = 0; r < rows; r++) {
            float *d = dh + idx[r0 + r] * C;
            for (int64_t c = 0; c < C; c++) d[c] += dhc[r * C + c];
        }
    }
    free(zbuf);
    free(dhc);
    free(hc);
    free(idx);
}

/* The LM head's four table entries for one precision (bf16 = 0 or 1): the
 * plain pair and the keep / kept pair (ops.h), all on the functions above. */
#define LM_HEAD_OPS(prefix, bf16)                                                                  \
    static void prefix##_lm_head_forward(float *logp, float *entropy, float *lse, const float *h,  \
                                         const float *w, const int32_t *targets, const float *mask, \
                                         int64_t N, int64_t C, int64_t V) {                        \
        lm_head_forward(bf16, NULL, logp, entropy, lse, h, w, targets, mask, N, C, V);             \
    }                                                                                              \
    static void prefix##_lm_head_backward(float *dh, float *dw, const float *dlogp,                \
                                          const float *dentropy, const float *h, const float *w,   \
                                          const int32_t *targets, const float *lse,                \
                                          const float *mask, int64_t N, int64_t C, int64_t V) {    \
        lm_head_backward(bf16, NULL, dh, dw, dlogp, dentropy, h, w, targets, lse, mask, N, C, V);  \
    }                                                                                              \
    static void prefix##_lm_head_forward_keep(float *logp, float *entropy, float *lse,             \
                                              float *logits, const float *h, const float *w,       \
                                              const int32_t *targets, const float *mask,           \
                                              int64_t N, int64_t C, int64_t V) {                   \
        lm_head_forward(bf16, logits, logp, entropy, lse, h, w, targets, mask, N, C, V);           \
    }                                                                                              \
    static void prefix##_lm_head_backward_kept(float *dh, float *dw, float *logits,                \
                                               const float *dlogp, const float *dentropy,          \
                                               const float *h, const float *w,                     \
                                               const int32_t *targets, const float *lse,           \
                                               const float *mask, int64_t N, int64_t C, int64_t V) { \
        lm_head_backward(bf16, logits, dh, dw, dlogp, dentropy, h, w, targets, lse, mask, N, C, V); \
    }

LM_HEAD_OPS(cpu, 0)
LM_HEAD_OPS(bf16, 1)
#undef LM_HEAD_OPS

/* ---------------------------------------------------------- optimizer ---- */

PONDER_HOT static double sum_squares_block(const float *x, int64_t n) {
    /* float lanes within a block (vectorised); blocks are summed in double */
    float acc[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int k = 0; k < LANES; k++) acc[k] += x[i + k] * x[i + k];
    float s = combine_lanes(acc);
    for (; i < n; i++) s += x[i] * x[i];
    return (double)s;
}

static double cpu_sum_squares(const float *x, int64_t n) {
    int64_t nb = (n + ELEMENTWISE_BLOCK - 1) / ELEMENTWISE_BLOCK;
    double *part = malloc((size_t)(nb ? nb : 1) * sizeof(double));
#pragma omp parallel for if (n > PAR_MIN_WORK) schedule(static)
    for (int64_t b = 0; b < nb; b++) {
        int64_t i0 = b * ELEMENTWISE_BLOCK, len = n - i0 < ELEMENTWISE_BLOCK ? n - i0 : ELEMENTWISE_BLOCK;
        part[b] = sum_squares_block(x + i0, len);
    }
    double total = 0.0;
    for (int64_t b = 0; b < nb; b++) total += part[b];
    free(part);
    return total;
}

/* One division per element (the bias corrections are multiplications by
 * their reciprocals, computed once): three divides per element made the
 * update compute-bound on top of its memory traffic. */
PONDER_HOT static void adamw_block(float *p, const float *g, float *m, float *v, int64_t n,
                                   float lr, float b1, float b2, float eps, float wd,
                                   float grad_scale, float inv_bc1, float inv_bc2) {
    for (int64_t i = 0; i < n; i++) {
        float gi = g[i] * grad_scale;
        m[i] = b1 * m[i] + (1.0f - b1) * gi;
        v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
        float mhat = m[i] * inv_bc1, vhat = v[i] * inv_bc2;
        p[i] -= lr * (mhat / (sqrtf(vhat) + eps) + wd * p[i]);
    }
}

static void cpu_adamw(float *param, const float *grad, float *m, float *v, int64_t n, float lr,
                      float beta1, float beta2, float eps, float weight_decay, float grad_scale,
                      int64_t t) {
    float inv_bc1 = 1.0f / (1.0f - powf(beta1, (float)t)), inv_bc2 = 1.0f / (1.0f - powf(beta2, (float)t));
    int64_t nb = (n + ELEMENTWISE_BLOCK - 1) / ELEMENTWISE_BLOCK;
#pragma omp parallel for if (n > PAR_MIN_WORK) schedule(static)
    for (int64_t b = 0; b < nb; b++) {
        int64_t i0 = b * ELEMENTWISE_BLOCK, len = n - i0 < ELEMENTWISE_BLOCK ? n - i0 : ELEMENTWISE_BLOCK;
        adamw_block(param + i0, grad + i0, m + i0, v + i0, len, lr, beta1, beta2, eps,
                    weight_decay, grad_scale, inv_bc1, inv_bc2);
    }
}

/* ------------------------------------------------------------- table ----- */

/* Every entry but the products, shared by the fp32 and bf16 tables. */
/* ------------------------------------------- fused linear (cpu-bf16) ---- */

/* The decode step's linear sublayers in fewer parallel regions: an RMSNorm
 * runs inside the product's region (GemmBf16Prologue), and a residual with no
 * bias or activation is added by the product itself (beta = 1), where the
 * separate ops take a region for the norm and another for the add. The bits
 * are the separate ops': the same norm code, and with alpha = 1 the product's
 * epilogue rounds resid + sum once, as the separate add did. Other forms
 * (LayerNorm, bias, GELU) run the separate ops. */
typedef struct RmsPrologue {
    float *out, *rstd;
    const float *x, *w;
    int64_t N, C;
    float eps;
} RmsPrologue;

static void rms_rows_in_region(void *ctx) {
    const RmsPrologue *t = ctx;
    rmsnorm_blocks(t->out, t->rstd, t->x, t->w, t->N, t->C, t->eps);
}

static float *fused_scratch(Bf16Scratch *s, int64_t n) {
    if (n > s->fused_cap) {
        float *grown = realloc(s->fused, (size_t)n * sizeof(float));
        if (!grown) bf16_out_of_memory("a fused linear layer's rows", n);
        s->fused = grown, s->fused_cap = n;
    }
    return s->fused;
}

static void bf16_linear_fused(float *out, const float *inp, const float *resid, const float *w,
                              const float *bias, const float *norm_w, const float *norm_b,
                              int64_t N, int64_t C, int64_t OC, int norm, float eps, int act) {
    Bf16Scratch *s = bf16_scratch();
    const int add_in_product = resid && !bias && act == OPS_ACT_NONE;
    /* scratch: normed rows [N,C] and their rstd/mean [2N], then the branch
     * output [N,OC] when the residual is added separately */
    float *h = fused_scratch(s, N * C + 2 * N + (resid && !add_in_product ? N * OC : 0));
    float *rstd = h + N * C, *mean = rstd + N, *ybuf = mean + N;
    RmsPrologue rp = {h, rstd, inp, norm_w, N, C, eps};
    GemmBf16Prologue pro = {rms_rows_in_region, &rp};
    const float *a = norm == OPS_NORM_NONE ? inp : h;
    if (norm == OPS_NORM_LAYER) cpu_layernorm_forward(h, mean, rstd, inp, norm_w, norm_b, N, C, eps);
    if (add_in_product) {
        if (resid != out) memcpy(out, resid, (size_t)(N * OC) * sizeof(float));
        bf16_product_after(s, norm == OPS_NORM_RMS ? &pro : NULL, out, a, w, N, C, OC, 1.0f);
        return;
    }
    float *y = resid ? ybuf : out;
    bf16_matmul_forward_after(s, norm == OPS_NORM_RMS ? &pro : NULL, y, a, w, bias, N, C, OC);
    if (act == OPS_ACT_GELU) cpu_gelu_forward(y, y, N * OC);
    if (resid == out) cpu_accumulate(out, y, N * OC);
    else if (resid) cpu_add(out, resid, y, N * OC);
}

typedef struct SwigluPrologue {
    float *out;
    const float *gate_up;
    int64_t N, F;
} SwigluPrologue;

static void swiglu_rows_in_region(void *ctx) {
    const SwigluPrologue *t = ctx;
#pragma omp for schedule(static)
    for (int64_t n = 0; n < t->N; n++)
        swiglu_row(t->out + n * t->F, t->gate_up + n * 2 * t->F, t->F);
}

/* The SwiGLU of a llama block's MLP inside its down projection's region
 * (one region fewer per layer and decode step): the same swiglu_row, and
 * the residual added by the product as linear_fused adds it. */
static void bf16_linear_swiglu(float *out, const float *gate_up, const float *resid,
                               const float *w, int64_t N, int64_t F, int64_t OC) {
    Bf16Scratch *s = bf16_scratch();
    float *h = fused_scratch(s, N * F);
    SwigluPrologue sp = {h, gate_up, N, F};
    GemmBf16Prologue pro = {swiglu_rows_in_region, &sp};
    if (resid && resid != out) memcpy(out, resid, (size_t)(N * OC) * sizeof(float));
    bf16_product_after(s, &pro, out, h, w, N, F, OC, resid ? 1.0f : 0.0f);
}

/* A decode block's four products: weights (QKV, O, gate/up, down) and the
 * widths of their inputs and outputs. */
static void block_products(const OpsDecodeBlock *b, const float *ws[4], int64_t in[4],
                           int64_t out[4]) {
    const int64_t QKV = (b->NH + 2 * b->KV) * b->hd, AD = b->NH * b->hd;
    ws[0] = b->qkv_w, ws[1] = b->o_w, ws[2] = b->fc_w, ws[3] = b->proj_w;
    in[0] = b->C, in[1] = AD, in[2] = b->C, in[3] = b->F;
    out[0] = QKV, out[1] = b->C, out[2] = 2 * b->F, out[3] = b->C;
}

/* The blocks' frozen weights packed (w[4 l + i]) and room for each product's
 * A (N rows; a[i], shared by the blocks, whose widths must agree), before a
 * region: packing a weight may grow the table, which moves the others, so
 * every weight is packed first and then looked up. Returns 0 where the
 * products cannot have an A of their own each (widths that differ between
 * blocks, or kinds past the slots, which share one). */
static int bf16_block_weights(Bf16Scratch *s, const OpsDecodeBlock *b, int64_t n_blocks,
                              int64_t N, const GemmBf16Operand **w, GemmBf16Operand *a[4]) {
    const float *ws[4];
    int64_t in[4], out[4], in0[4], out0[4];
    block_products(&b[0], ws, in0, out0);
    for (int64_t l = 0; l < n_blocks; l++) {
        block_products(&b[l], ws, in, out);
        if (memcmp(in, in0, sizeof in) != 0 || memcmp(out, out0, sizeof out) != 0) return 0;
        for (int i = 0; i < 4; i++) frozen_weight(s, ws[i], out[i], in[i], 1);
    }
    for (int64_t l = 0; l < n_blocks; l++) {
        block_products(&b[l], ws, in, out);
        for (int i = 0; i < 4; i++) w[4 * l + i] = frozen_weight(s, ws[i], out[i], in[i], 1);
    }
    for (int i = 0; i < 4; i++) {
        a[i] = &bf16_slot(s, 0, in0[i], out0[i])->a;
        for (int j = 0; j < i; j++)
            if (a[j] == a[i]) return 0;
    }
    for (int i = 0; i < 4; i++)
        if (gemm_bf16_reserve_a(a[i], N, in0[i])) bf16_out_of_memory("matmul rows", N * in0[i]);
    return 1;
}

/* rmsnorm_rows over rows r0..r1 in blocks of NORM_ROWS, by the calling
 * thread (a row's bits do not depend on its block). */
static void rmsnorm_row_range(float *out, float *rstd, const float *inp, const float *w,
                              int64_t r0, int64_t r1, int64_t C, float eps) {
    for (int64_t n = r0; n < r1; n += NORM_ROWS) {
        const int64_t R = r1 - n < NORM_ROWS ? r1 - n : NORM_ROWS;
        rmsnorm_rows(out + n * C, rstd + n, inp + n * C, w, R, C, eps);
    }
}

/* What every thread of a decode block needs: the block, its packed weights
 * and A operands, scratch (h [N,C], rstd [N], act [N,F]), the cache store
 * and heads per attention item. */
typedef struct DecodeBlockRun {
    const OpsDecodeBlock *b;
    const GemmBf16Operand *const *w;
    GemmBf16Operand *const *a;
    float *h, *rstd, *act;
    const DecodeStore *st;
    int64_t per;
} DecodeBlockRun;

/* Rows r0..r1 of a decode block through all of its phases on the calling
 * thread, with no barrier: each phase reads only these rows' outputs of the
 * one before (and the frozen weights, the rows' own caches and the shared
 * prefixes, which nothing writes during the step). The ops' code, so the
 * ops' bits. */
static void decode_block_rows(float *x, int64_t r0, int64_t r1, const DecodeBlockRun *run) {
    const OpsDecodeBlock *b = run->b;
    const GemmBf16Operand *const *w = run->w;
    GemmBf16Operand *const *a = run->a;
    const int64_t C = b->C, F = b->F, QKV = (b->NH + 2 * b->KV) * b->hd, AD = b->NH * b->hd;
    const int64_t groups = (b->NH + run->per - 1) / run->per;
    const OpsHeads q = {b->qkv, QKV};
    rmsnorm_row_range(run->h, run->rstd, x, b->ln1_w, r0, r1, C, b->eps);
    if (b->qkv_b)
        for (int64_t n = r0; n < r1; n++)
            memcpy(b->qkv + n * QKV, b->qkv_b, (size_t)QKV * sizeof(float));
    gemm_bf16_rows_with_b(a[0], r0, r1, C, run->h, C, w[0], 1.0f, b->qkv_b ? 1.0f : 0.0f, b->qkv,
                          QKV);
    if (groups > 1)
        for (int64_t n = r0; n < r1; n++)
            decode_store_row(run->st, q, n, b->len[n] - 1, b->NH, b->KV, b->hd, b->max_len);
    attention_cached_items(b->atty, q, NULL, NULL, (const uint16_t *const *)b->k_cache,
                           (const uint16_t *const *)b->v_cache, b->len, b->NH, b->KV, b->hd,
                           b->max_len, run->st, b->prefix, run->per, r0 * groups, r1 * groups);
    gemm_bf16_rows_with_b(a[1], r0, r1, AD, b->atty, AD, w[1], 1.0f, 1.0f, x, C);
    rmsnorm_row_range(run->h, run->rstd, x, b->ln2_w, r0, r1, C, b->eps);
    gemm_bf16_rows_with_b(a[2], r0, r1, C, run->h, C, w[2], 1.0f, 0.0f, b->fc, 2 * F);
    for (int64_t n = r0; n < r1; n++) swiglu_row(run->act + n * F, b->fc + n * 2 * F, F);
    gemm_bf16_rows_with_b(a[3], r0, r1, F, run->act, F, w[3], 1.0f, 1.0f, x, C);
}

/* The cache store of a decode block's attention (RoPE, then k and v into
 * the rows' bf16 caches). */
static DecodeStore block_store(const OpsDecodeBlock *b) {
    const int64_t QKV = (b->NH + 2 * b->KV) * b->hd, AD = b->NH * b->hd;
    const OpsHeads k = {b->qkv + AD, QKV}, v = {b->qkv + AD + b->KV * b->hd, QKV};
    return (DecodeStore){k, v, b->cos_sin, (void *const *)b->k_cache, (void *const *)b->v_cache, 1};
}

/* One decode block's phases, by every thread of a region, each phase the
 * code of the op it stands for, shared between the threads and ended by a
 * barrier (the products' own, an `omp for`'s, or an explicit one after the
 * attention). */
static void decode_block_phases(float *x, int64_t N, const DecodeBlockRun *run) {
    const OpsDecodeBlock *b = run->b;
    const GemmBf16Operand *const *w = run->w;
    GemmBf16Operand *const *a = run->a;
    const int64_t C = b->C, F = b->F, QKV = (b->NH + 2 * b->KV) * b->hd, AD = b->NH * b->hd;
    const OpsHeads q = {b->qkv, QKV};
    rmsnorm_blocks(run->h, run->rstd, x, b->ln1_w, N, C, b->eps);
    if (b->qkv_b) {
#pragma omp for schedule(static)
        for (int64_t n = 0; n < N; n++) memcpy(b->qkv + n * QKV, b->qkv_b, (size_t)QKV * sizeof(float));
    }
    gemm_bf16_with_b_in_region(a[0], 0, N, C, run->h, C, w[0], 1.0f, b->qkv_b ? 1.0f : 0.0f,
                               b->qkv, QKV);
    attention_cached_in_region(b->atty, q, NULL, NULL, (const uint16_t *const *)b->k_cache,
                               (const uint16_t *const *)b->v_cache, b->len, N, b->NH, b->KV,
                               b->hd, b->max_len, run->st, b->prefix, run->per);
#pragma omp barrier
    gemm_bf16_with_b_in_region(a[1], 0, N, AD, b->atty, AD, w[1], 1.0f, 1.0f, x, C);
    rmsnorm_blocks(run->h, run->rstd, x, b->ln2_w, N, C, b->eps);
    gemm_bf16_with_b_in_region(a[2], 0, N, C, run->h, C, w[2], 1.0f, 0.0f, b->fc, 2 * F);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; n++) swiglu_row(run->act + n * F, b->fc + n * 2 * F, F);
    gemm_bf16_with_b_in_region(a[3], 0, N, F, run->act, F, w[3], 1.0f, 1.0f, x, C);
}

/* Bytes a decode step of the blocks reads: the weights (bf16) and the rows'
 * cached keys and values. */
static int64_t decode_step_bytes(const OpsDecodeBlock *b, int64_t n_blocks, int64_t N) {
    const float *ws[4];
    int64_t in[4], out[4], weights = 0, positions = 0;
    block_products(b, ws, in, out);
    for (int i = 0; i < 4; i++) weights += in[i] * out[i];
    for (int64_t n = 0; n < N; n++) positions += b->len[n];
    return n_blocks * (int64_t)sizeof(uint16_t) * (weights + positions * 2 * b->KV * b->hd);
}

/* Threads for a decode step of N rows. With a row or more per thread, all:
 * each takes rows of its own through every phase (decode_block_rows); on
 * the Intel host (tiny model, 2 threads, bf16) that ran 1.2-1.4x as fast as
 * sharing each phase between barriers from 4 rows to 48 (bench/RESULTS.md,
 * "Fifteenth session") and 1.3-1.5x at 2 and 3 rows ("Seventeenth
 * session"). With fewer rows the threads would share each phase; one thread
 * instead where all the step reads fits one core's L2, so that core keeps
 * it and a second only adds the barriers (batch 1 there: 21-24k tokens/s
 * on one thread against 19-21k on two at 48 and 128 new tokens, level at
 * 256, where the step reads 1.9 MB, two ahead at 480). */
static int64_t decode_threads(const OpsDecodeBlock *b, int64_t n_blocks, int64_t N,
                              int64_t l2_bytes) {
    const int64_t threads = omp_get_max_threads();
    if (N >= threads) return threads;
    return decode_step_bytes(b, n_blocks, N) <= l2_bytes ? 1 : threads;
}

/* ModelOps.decode_block: every block in one parallel region of
 * decode_threads threads. With a row or more per thread each takes an equal
 * share of the rows through every block with no barrier at all (a row's
 * bits do not depend on the rows beside it in a product's block, nor on
 * the threads, so any split gives the same bits); with fewer the threads
 * share each phase of each block (decode_block_phases). */
static int bf16_decode_block(float *x, int64_t N, const OpsDecodeBlock *b, int64_t n_blocks) {
    Bf16Scratch *s = bf16_scratch();
    if (!s->frozen || n_blocks < 1) return 0;
    const GemmBf16Operand **w = malloc((size_t)(4 * n_blocks) * sizeof *w);
    DecodeBlockRun *run = malloc((size_t)n_blocks * sizeof *run);
    DecodeStore *st = malloc((size_t)n_blocks * sizeof *st);
    GemmBf16Operand *a[4];
    if (!w || !run || !st || !bf16_block_weights(s, b, n_blocks, N, w, a)) {
        free(w), free(run), free(st);
        return 0;
    }
    const int64_t C = b->C, F = b->F, threads = decode_threads(b, n_blocks, N, s->l2_bytes);
    float *h = fused_scratch(s, N * C + N + N * F), *rstd = h + N * C, *act = rstd + N;
    const int own_rows = N >= threads;
    const int64_t per = cached_heads_per_item(N, b->NH, b->hd, threads);
    for (int64_t l = 0; l < n_blocks; l++) {
        st[l] = block_store(&b[l]);
        run[l] = (DecodeBlockRun){&b[l], w + 4 * l, a, h, rstd, act, &st[l], per};
    }
#pragma omp parallel num_threads(threads)
    {
        const int64_t nt = omp_get_num_threads(), me = omp_get_thread_num();
        const int64_t r0 = N * me / nt, r1 = N * (me + 1) / nt;
        for (int64_t l = 0; l < n_blocks; l++) {
            if (own_rows)
                decode_block_rows(x, r0, r1, &run[l]);
            else
                decode_block_phases(x, N, &run[l]);
        }
    }
    free(w), free(run), free(st);
    return 1;
}

#define CPU_OPS_COMMON                                                                             \
    .alloc = cpu_alloc, .free = cpu_free, .zero = cpu_zero, .copy = cpu_copy,                      \
    .embedding_forward = cpu_embedding_forward, .embedding_backward = cpu_embedding_backward,      \
    .rmsnorm_forward = cpu_rmsnorm_forward, .rmsnorm_backward = cpu_rmsnorm_backward,              \
    .layernorm_forward = cpu_layernorm_forward, .layernorm_backward = cpu_layernorm_backward,      \
    .rope = cpu_rope, .attention_forward = cpu_attention_forward,                                  \
    .attention_backward = cpu_attention_backward, .attention_cached = cpu_attention_cached,        \
    .attention_decode = cpu_attention_decode,                                                      \
    .attention_backward_set = cpu_attention_backward_set,                                          \
    .swiglu_forward = cpu_swiglu_forward, .swiglu_backward = cpu_swiglu_backward,                  \
    .swiglu_backward_set = cpu_swiglu_backward_set,                                                \
    .gelu_forward = cpu_gelu_forward, .gelu_backward = cpu_gelu_backward, .add = cpu_add,          \
    .accumulate = cpu_accumulate, .rows_gather = cpu_rows_gather,                                  \
    .sum_squares = cpu_sum_squares, .adamw = cpu_adamw

static const ModelOps CPU_OPS = {
    .name = "cpu",
    CPU_OPS_COMMON,
    .matmul_forward = cpu_matmul_forward,
    .matmul_backward = cpu_matmul_backward,
    .matmul_backward_set = cpu_matmul_backward_set,
    .lm_head_forward = cpu_lm_head_forward,
    .lm_head_backward = cpu_lm_head_backward,
    .lm_head_forward_keep = cpu_lm_head_forward_keep,
    .lm_head_backward_kept = cpu_lm_head_backward_kept,
};

static const ModelOps CPU_BF16_OPS = {
    .name = "cpu-bf16",
    CPU_OPS_COMMON,
    .matmul_forward = bf16_matmul_forward,
    .matmul_backward = bf16_matmul_backward,
    .matmul_backward_set = bf16_matmul_backward_set,
    .swiglu_matmul_backward_set = bf16_swiglu_matmul_backward_set,
    .lm_head_forward = bf16_lm_head_forward,
    .lm_head_backward = bf16_lm_head_backward,
    .lm_head_forward_keep = bf16_lm_head_forward_keep,
    .lm_head_backward_kept = bf16_lm_head_backward_kept,
    .weights_frozen = bf16_weights_frozen,
    .attention_cached_bf16 = cpu_attention_cached_bf16,
    .attention_decode_bf16 = cpu_attention_decode_bf16,
    .kv_store_bf16 = cpu_kv_store_bf16,
    .linear_fused = bf16_linear_fused,
    .linear_swiglu = bf16_linear_swiglu, .decode_block = bf16_decode_block,
};

const ModelOps *ops_cpu(void) { return &CPU_OPS; }

const ModelOps *ops_cpu_bf16(void) { return gemm_bf16_supported() ? &CPU_BF16_OPS : NULL; }
