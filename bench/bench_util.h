/* bench/bench_util.h — helpers shared by the benchmarks: a monotonic clock,
 * median and spread of repeated timings, and the sgemm ceiling measured in the
 * same run (STYLE.md "Performance habits": compare against the GEMM ceiling of
 * this run, not a datasheet). Header-only: every benchmark is one .c file. */
#ifndef PONDER_BENCH_BENCH_UTIL_H
#define PONDER_BENCH_BENCH_UTIL_H

#include <stdint.h> /* int64_t */
#include <stdio.h>  /* fprintf */
#include <stdlib.h> /* malloc, free, qsort, abort */
#include <string.h> /* memcpy */
#include <time.h>   /* clock_gettime */

#include "model/cpu/blas.h" /* blas_sgemm */
#include "model/model.h"    /* ModelConfig */
#include "model/ops.h"      /* ops_cpu_bf16 */
#include "model/cpu/gemm_bf16.h" /* gemm_bf16 (the bf16 ceiling) */

/* The benchmark shapes: "gpt2" (GPT-2 124M), "llama768" (GPT-2's width and
 * depth with llama blocks and a 32000 vocabulary), anything else the tiny
 * config (configs/tiny.yaml's model with a 64-token vocabulary). */
static inline ModelConfig bench_shape_config(const char *shape) {
    ModelConfig c = model_config_default();
    if (strcmp(shape, "gpt2") == 0) {
        c.arch = MODEL_ARCH_GPT2;
        c.vocab_size = 50257, c.d_model = 768, c.n_layer = 12, c.n_head = 12, c.n_kv_head = 12;
        c.d_ff = 3072, c.max_seq_len = 1024;
    } else if (strcmp(shape, "llama768") == 0) {
        c.vocab_size = 32000, c.d_model = 768, c.n_layer = 12, c.n_head = 12, c.n_kv_head = 12;
        c.d_ff = 2048, c.max_seq_len = 1024;
    } else {
        c.vocab_size = 64, c.d_model = 128, c.n_layer = 4, c.n_head = 4, c.n_kv_head = 4;
        c.d_ff = 352, c.max_seq_len = 512;
    }
    return c;
}

/* The CPU benchmarks' backend: PONDER_BENCH_PRECISION=bf16 in the
 * environment picks the cpu-bf16 table (model.precision: bf16), anything
 * else fp32. The name goes into each benchmark's JSON line. */
static inline const char *bench_precision(void) {
    const char *p = getenv("PONDER_BENCH_PRECISION");
    return p && strcmp(p, "bf16") == 0 ? "bf16" : "fp32";
}

static inline int bench_model_create(Model **m, const ModelConfig *cfg, PonderError *err) {
    if (strcmp(bench_precision(), "bf16") != 0) return model_create(m, cfg, err);
    const ModelOps *ops = ops_cpu_bf16();
    if (!ops) {
        fprintf(stderr, "PONDER_BENCH_PRECISION=bf16: this CPU has no AVX512-BF16\n");
        return 1;
    }
    return model_create_on(m, cfg, ops, err);
}

static inline double bench_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static inline int bench_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median, minimum and maximum of n samples (n >= 1); v is not modified. */
typedef struct BenchStats {
    double median, min, max;
    int n;
} BenchStats;

static inline BenchStats bench_stats(const double *v, int n) {
    BenchStats s = {0, 0, 0, n};
    if (n <= 0) return s;
    double *t = malloc((size_t)n * sizeof *t);
    if (!t) abort();
    memcpy(t, v, (size_t)n * sizeof *t);
    qsort(t, (size_t)n, sizeof *t, bench_cmp_double);
    s.median = n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
    s.min = t[0];
    s.max = t[n - 1];
    free(t);
    return s;
}

/* Fills x[0..n) with uniform values in [-1, 1) from a xorshift seed. */
static inline void bench_fill_uniform(float *x, int64_t n, uint64_t seed) {
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (int64_t i = 0; i < n; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        x[i] = (float)((double)(s >> 40) / (double)(1ull << 24) * 2.0 - 1.0);
    }
}

static inline float *bench_alloc_floats(int64_t n) {
    void *p = NULL;
    if (posix_memalign(&p, 64, (size_t)n * sizeof(float)) != 0) {
        fprintf(stderr, "bench: out of memory allocating %lld floats\n", (long long)n);
        abort();
    }
    return p;
}

/* Times row-major C[M,N] (+)= op(A)[M,K] op(B)[K,N] with the given transposes:
 * one warm-up call, then `reps` timed repetitions, each long enough (a batch of
 * calls lasting >= ~min_rep_s) for the clock to be meaningful. Writes the
 * GFLOP/s of every repetition into gflops[0..reps) and returns their stats.
 * beta = 1 when `accumulate` (as for weight gradients), else 0. */
static inline BenchStats bench_sgemm_gflops_ex(int trans_a, int trans_b, int64_t M, int64_t N,
                                               int64_t K, int accumulate, int reps,
                                               double min_rep_s, double *gflops) {
    float *A = bench_alloc_floats(M * K), *B = bench_alloc_floats(K * N);
    float *C = bench_alloc_floats(M * N);
    bench_fill_uniform(A, M * K, 1);
    bench_fill_uniform(B, K * N, 2);
    bench_fill_uniform(C, M * N, 3);
    int64_t lda = trans_a ? M : K, ldb = trans_b ? K : N;
    float beta = accumulate ? 1.0f : 0.0f;
    /* Tiny alpha keeps accumulated values bounded over many calls. */
    float alpha = accumulate ? 1e-3f : 1.0f;
    double t0 = bench_now();
    blas_sgemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, N);
    double first = bench_now() - t0;
    int calls = 1;
    if (first < min_rep_s) calls = (int)(min_rep_s / (first > 1e-6 ? first : 1e-6)) + 1;
    double flop = 2.0 * (double)M * (double)N * (double)K * calls;
    double *own = gflops ? NULL : malloc((size_t)reps * sizeof *own);
    double *g = gflops ? gflops : own;
    for (int r = 0; r < reps; r++) {
        t0 = bench_now();
        for (int c = 0; c < calls; c++)
            blas_sgemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, N);
        g[r] = flop / (bench_now() - t0) / 1e9;
    }
    BenchStats s = bench_stats(g, reps);
    free(own);
    free(A);
    free(B);
    free(C);
    return s;
}

/* The sgemm ceiling of this run: median GFLOP/s of `reps` repetitions of a
 * plain (no transpose) M x N x K sgemm through ponder's BLAS, with whatever
 * library and thread count are loaded now. bench_sgemm_ceiling_gflops(2048,
 * 2048, 2048, 5) is the "large square" reference of bench/sgemm_ceiling. */
static inline double bench_sgemm_ceiling_gflops(int64_t M, int64_t N, int64_t K, int reps) {
    return bench_sgemm_gflops_ex(0, 0, M, N, K, 0, reps < 1 ? 1 : reps, 0.05, NULL).median;
}

/* The bf16 GEMM ceiling of this run (0 when the CPU has no AVX512-BF16):
 * median GFLOP/s of a square M x N x K product through gemm_bf16, packing
 * of both fp32 operands included, as OpenBLAS's own packing is in the sgemm
 * ceiling. */
static inline double bench_bf16_ceiling_gflops(int64_t M, int64_t N, int64_t K, int reps) {
    if (!gemm_bf16_supported()) return 0.0;
    float *A = bench_alloc_floats(M * K), *B = bench_alloc_floats(K * N);
    float *C = bench_alloc_floats(M * N);
    bench_fill_uniform(A, M * K, 1);
    bench_fill_uniform(B, K * N, 2);
    GemmBf16 g = {0};
    if (gemm_bf16(&g, 0, 0, M, N, K, 1.0f, A, K, B, N, 0.0f, C, N)) abort(); /* warm-up */
    double *v = malloc((size_t)(reps < 1 ? 1 : reps) * sizeof *v);
    for (int r = 0; r < reps; r++) {
        double t0 = bench_now();
        gemm_bf16(&g, 0, 0, M, N, K, 1.0f, A, K, B, N, 0.0f, C, N);
        v[r] = 2.0 * (double)M * (double)N * (double)K / (bench_now() - t0) / 1e9;
    }
    double med = bench_stats(v, reps < 1 ? 1 : reps).median;
    gemm_bf16_free(&g);
    free(v), free(A), free(B), free(C);
    return med;
}

#endif
