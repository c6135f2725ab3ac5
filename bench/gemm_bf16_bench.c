/* bench/gemm_bf16_bench.c — ponder's bf16 GEMM (model/cpu/gemm_bf16.h)
 * against the loaded BLAS's sgemm on the products ponder's models run,
 * interleaved in one process: for each shape, sgemm, then gemm_bf16 with
 * both operands packed on every call (what an op does), then the multiply
 * alone on operands packed once. Shapes: GPT-2 124M at B*T = 256 (forward,
 * d(input), d(weight)), the tiny GRPO update at 7168 tokens and in a
 * 1024-token micro-batch, a batch-64 decode step of the tiny model, and a
 * 1024 x 4096 x 1024 reference. Each round first measures the limits: the
 * rate of VDPBF16PS on registers alone, on every thread at once, and, where
 * the CPU has AMX, of TDPBF16PS on tiles alone; each shape then reports its
 * packed multiply as a share of the limit of the kernel that ran it. With
 * AMX the packed multiply is also timed on the VDPBF16PS kernel
 * (PONDER_CPU_AMX=0 for those calls), in the same round.
 *
 *   gemm_bf16_bench [rounds] [threads]
 * prints one JSON line per shape and round. */
#include <immintrin.h> /* _mm512_dpbf16_ps */
#include <omp.h>    /* omp_set_num_threads */
#include <stdio.h>  /* printf */
#include <stdlib.h> /* atoi, setenv, unsetenv */
#include <string.h> /* memset */

#include "bench/bench_util.h" /* bench_now, bench_alloc_floats, bench_fill_uniform */
#include "model/cpu/blas.h"   /* blas_sgemm */
#include "model/cpu/gemm_bf16.h"

typedef struct Shape {
    const char *name;
    int64_t M, N, K;
    int ta, tb;
} Shape;

static const Shape SHAPES[] = {
    {"gpt2 qkv forward", 256, 2304, 768, 0, 1},
    {"gpt2 fc forward", 256, 3072, 768, 0, 1},
    {"gpt2 proj d(input)", 256, 3072, 768, 0, 0},
    {"gpt2 fc d(weight)", 3072, 768, 256, 1, 0},
    {"tiny qkv forward, 7168 tokens", 7168, 384, 128, 0, 1},
    {"tiny proj d(weight), 7168 tokens", 128, 352, 7168, 1, 0},
    {"tiny qkv decode, batch 64", 64, 384, 128, 0, 1},
    /* a 1024-token RL micro-batch: N = 128 (two whole panels and 32
     * columns) is most of the tiny model's products */
    {"tiny attn-out forward, 1024 tokens", 1024, 128, 128, 0, 1},
    {"tiny qkv d(input), 1024 tokens", 1024, 128, 384, 0, 0},
    {"tiny qkv d(weight), 1024 tokens", 384, 128, 1024, 1, 0},
    {"square 1024x4096x1024", 1024, 4096, 1024, 0, 1},
};

/* The limit the products are measured against: VDPBF16PS on zmm registers
 * alone, 24 independent chains per thread (the kernel's 8 x 3 tile), no
 * loads, on `threads` threads at once. GFLOP/s over all threads. */
__attribute__((target("avx512f,avx512bw,avx512bf16"))) static double register_peak_gflops(
    int threads) {
    const int64_t iters = 40000000; /* about 0.25 s */
    double t0 = bench_now(), sink = 0.0;
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    {
        __m512 acc[24];
        for (int j = 0; j < 24; j++) acc[j] = _mm512_setzero_ps();
        __m512bh a = (__m512bh)_mm512_set1_epi32(0x3f803f80); /* bf16 pairs (1, 1) */
        for (int64_t i = 0; i < iters; i++) {
#pragma GCC unroll 24
            for (int j = 0; j < 24; j++) acc[j] = _mm512_dpbf16_ps(acc[j], a, a);
            __asm__ volatile("" : "+v"(a)); /* one new operand per round, no folding */
        }
        for (int j = 0; j < 24; j++) sink += _mm512_reduce_add_ps(acc[j]);
    }
    const double t = bench_now() - t0;
    if (sink == 0.5) printf("#"); /* keeps the sums */
    return (double)threads * (double)iters * 24.0 * 64.0 / t / 1e9;
}

/* The AMX limit: TDPBF16PS into 4 independent 16 x 16 sums per thread from
 * tiles already loaded, on `threads` threads at once. GFLOP/s over all
 * threads. Needs gemm_bf16_amx() to have said yes (the kernel's permission). */
__attribute__((target("amx-tile,amx-bf16"))) static double amx_peak_gflops(int threads) {
    const int64_t iters = 2000000; /* about 0.2 s */
    double t0 = bench_now();
#pragma omp parallel num_threads(threads)
    {
        struct {
            uint8_t palette, start_row, reserved[14];
            uint16_t colsb[16];
            uint8_t rows[16];
        } cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.palette = 1;
        for (int t = 0; t < 8; t++) cfg.colsb[t] = 64, cfg.rows[t] = 16;
        __asm__ volatile("ldtilecfg %0" : : "m"(cfg)); /* all 64 bytes read (see gemm_bf16.c) */
        static const uint32_t ones[256] __attribute__((aligned(64))) = {0};
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        _tile_loadd(4, ones, 64);
        _tile_loadd(5, ones, 64);
        _tile_loadd(6, ones, 64);
        _tile_loadd(7, ones, 64);
        for (int64_t i = 0; i < iters; i++) {
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
        _tile_release();
    }
    const double t = bench_now() - t0;
    return (double)threads * (double)iters * 4.0 * (16.0 * 16.0 * 32.0 * 2.0) / t / 1e9;
}

/* Seconds per call: repeated until ~0.2 s have passed. */
static double time_calls(int which, const Shape *s, const float *A, const float *B, float *C,
                         GemmBf16 *g) {
    const int64_t lda = s->ta ? s->M : s->K, ldb = s->tb ? s->K : s->N;
    int calls = 0;
    if (which == 3) setenv("PONDER_CPU_AMX", "0", 1); /* the VDPBF16PS kernel */
    double t0 = bench_now(), t;
    do {
        if (which == 0)
            blas_sgemm(s->ta, s->tb, s->M, s->N, s->K, 1.0f, A, lda, B, ldb, 0.0f, C, s->N);
        else if (which == 1)
            gemm_bf16(g, s->ta, s->tb, s->M, s->N, s->K, 1.0f, A, lda, B, ldb, 0.0f, C, s->N);
        else /* 2, and 3 on the VDPBF16PS kernel: the same packed operands */
            gemm_bf16_packed(&g->a, &g->b, 1.0f, 0.0f, C, s->N);
        calls++;
        t = bench_now() - t0;
    } while (t < 0.2);
    if (which == 3) unsetenv("PONDER_CPU_AMX");
    return t / calls;
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 2, threads = argc > 2 ? atoi(argv[2]) : 2;
    PonderError err = {0};
    if (blas_load(NULL, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
    if (!gemm_bf16_supported()) return fprintf(stderr, "this CPU has no AVX512-BF16\n"), 1;
    omp_set_num_threads(threads);
    blas_set_threads(threads);
    const int amx = gemm_bf16_amx();
    for (int r = 0; r < rounds; r++) {
        const double reg_peak = register_peak_gflops(threads);
        printf("{\"bench\":\"bf16_register_peak\",\"round\":%d,\"threads\":%d,"
               "\"gflops\":%.1f,\"gflops_per_thread\":%.1f}\n",
               r, threads, reg_peak, reg_peak / threads);
        const double peak = amx ? amx_peak_gflops(threads) : reg_peak;
        if (amx)
            printf("{\"bench\":\"bf16_amx_peak\",\"round\":%d,\"threads\":%d,"
                   "\"gflops\":%.1f,\"gflops_per_thread\":%.1f}\n",
                   r, threads, peak, peak / threads);
        for (size_t i = 0; i < sizeof SHAPES / sizeof SHAPES[0]; i++) {
            const Shape *s = &SHAPES[i];
            float *A = bench_alloc_floats(s->M * s->K), *B = bench_alloc_floats(s->K * s->N);
            float *C = bench_alloc_floats(s->M * s->N);
            bench_fill_uniform(A, s->M * s->K, 1);
            bench_fill_uniform(B, s->K * s->N, 2);
            GemmBf16 g = {0};
            const int64_t lda = s->ta ? s->M : s->K, ldb = s->tb ? s->K : s->N;
            if (gemm_bf16(&g, s->ta, s->tb, s->M, s->N, s->K, 1.0f, A, lda, B, ldb, 0.0f, C, s->N))
                return fprintf(stderr, "out of memory\n"), 1;
            double sec[4] = {0};
            for (int w = 0; w < (amx ? 4 : 3); w++) sec[w] = time_calls(w, s, A, B, C, &g);
            const double gf = 2.0 * (double)s->M * (double)s->N * (double)s->K / 1e9;
            printf("{\"bench\":\"gemm_bf16\",\"round\":%d,\"shape\":\"%s\",\"M\":%lld,\"N\":%lld,"
                   "\"K\":%lld,\"trans_a\":%d,\"trans_b\":%d,\"threads\":%d,"
                   "\"sgemm_gflops\":%.1f,\"bf16_gflops\":%.1f,\"bf16_packed_gflops\":%.1f,"
                   "\"bf16_over_sgemm\":%.2f,\"kernel\":\"%s\",\"bf16_packed_of_peak\":%.2f,"
                   "\"vdpbf16ps_packed_gflops\":%.1f}\n",
                   r, s->name, (long long)s->M, (long long)s->N, (long long)s->K, s->ta, s->tb,
                   threads, gf / sec[0], gf / sec[1], gf / sec[2], sec[0] / sec[1],
                   amx ? "amx" : "vdpbf16ps", gf / sec[2] / peak,
                   gf / (amx ? sec[3] : sec[2]));
            gemm_bf16_free(&g);
            free(A), free(B), free(C);
        }
    }
    return 0;
}
