/* bench/attention_bench.c — the CPU backend's training attention
 * (ModelOps.attention_forward and attention_backward_set) on one layer's
 * causal self-attention: B sequences of T tokens, NH heads of hd, no
 * padding. Reports the median time of each and its rate in model FLOPs
 * (causal: T (T + 1) / 2 query-key pairs per head; the forward's two
 * products, the backward's four).
 *
 *   attention_bench [B] [T] [NH] [hd] [reps] [threads]
 * prints one JSON line. Defaults: 16 64 4 32 200 2, a 1024-token RL
 * micro-batch of the tiny model. */
#include <omp.h>    /* omp_set_num_threads */
#include <stdio.h>  /* printf */
#include <stdlib.h> /* atoi */

#include "bench/bench_util.h" /* bench_now, bench_stats, bench_fill_uniform */
#include "model/ops.h"        /* ops_cpu */

static int64_t arg(int argc, char **argv, int i, int64_t dflt) {
    return argc > i ? atoll(argv[i]) : dflt;
}

int main(int argc, char **argv) {
    const int64_t B = arg(argc, argv, 1, 16), T = arg(argc, argv, 2, 64);
    const int64_t NH = arg(argc, argv, 3, 4), hd = arg(argc, argv, 4, 32);
    const int reps = (int)arg(argc, argv, 5, 200), threads = (int)arg(argc, argv, 6, 2);
    if (B < 1 || T < 1 || NH < 1 || hd < 1 || reps < 1 || threads < 1) {
        fprintf(stderr, "usage: attention_bench [B] [T] [NH] [hd] [reps] [threads] (all >= 1)\n");
        return 2;
    }
    omp_set_num_threads(threads);
    const ModelOps *o = ops_cpu();
    const int64_t C = NH * hd, stride = 3 * C, N = B * T;
    float *qkv = bench_alloc_floats(N * stride), *dqkv = bench_alloc_floats(N * stride);
    float *out = bench_alloc_floats(N * C), *dout = bench_alloc_floats(N * C);
    float *att = bench_alloc_floats(B * NH * T * T);
    bench_fill_uniform(qkv, N * stride, 1);
    bench_fill_uniform(dout, N * C, 2);
    const OpsHeads q = {qkv, stride}, k = {qkv + C, stride}, v = {qkv + 2 * C, stride};
    const OpsHeads dq = {dqkv, stride}, dk = {dqkv + C, stride}, dv = {dqkv + 2 * C, stride};
    double *tf = malloc((size_t)reps * sizeof(double)), *tb = malloc((size_t)reps * sizeof(double));
    if (!tf || !tb) abort();
    for (int r = -3; r < reps; r++) { /* three warm-up rounds */
        double t0 = bench_now();
        o->attention_forward(out, att, q, k, v, NULL, B, T, NH, NH, hd);
        double t1 = bench_now();
        o->attention_backward_set(dq, dk, dv, dout, att, q, k, v, NULL, B, T, NH, NH, hd);
        double t2 = bench_now();
        if (r >= 0) tf[r] = t1 - t0, tb[r] = t2 - t1;
    }
    const BenchStats f = bench_stats(tf, reps), b = bench_stats(tb, reps);
    const double pairs = (double)B * (double)NH * (double)T * (double)(T + 1) / 2.0 * (double)hd;
    printf("{\"bench\":\"attention\",\"B\":%lld,\"T\":%lld,\"NH\":%lld,\"hd\":%lld,\"threads\":%d,"
           "\"forward_ms\":%.4f,\"forward_gflops\":%.1f,\"backward_ms\":%.4f,"
           "\"backward_gflops\":%.1f}\n",
           (long long)B, (long long)T, (long long)NH, (long long)hd, threads, f.median * 1e3,
           4.0 * pairs / f.median / 1e9, b.median * 1e3, 8.0 * pairs / b.median / 1e9);
    free(tf), free(tb), free(qkv), free(dqkv), free(out), free(dout), free(att);
    return 0;
}
