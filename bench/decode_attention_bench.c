/* bench/decode_attention_bench.c — the CPU backend's decode attention
 * (ModelOps.attention_cached_bf16, or attention_cached with `fp32`) alone:
 * N rows, each attending to L positions of its own cache, NH heads of hd
 * (as many kv heads), the cache read once per call. LAYERS sets of caches
 * are read in turn, so the bytes a call finds in cache shrink as LAYERS
 * grows: with 1 the set stays in L2 between calls (when it fits), with 4 a
 * tiny-model decode step's whole cache streams through, as in
 * decode_bench. Reports the median call, ns per (row, head, key) and the
 * cache bytes read per second.
 *
 *   decode_attention_bench [N] [L] [LAYERS] [reps] [threads] [fp32]
 * prints one JSON line. Defaults: 64 80 4 50 2, batch 64 of decode_bench
 * tiny 64 128 16 at its mean context. */
#include <omp.h>    /* omp_set_num_threads */
#include <stdio.h>  /* printf */
#include <stdlib.h> /* atoll, malloc */
#include <string.h> /* strcmp */

#include "bench/bench_util.h" /* bench_now, bench_stats */
#include "model/ops.h"        /* ops_cpu, ops_cpu_bf16 */
#include "util/rng.h"         /* Rng */

enum { NH = 4, HD = 32 };

static int64_t arg(int argc, char **argv, int i, int64_t dflt) {
    return argc > i ? atoll(argv[i]) : dflt;
}

int main(int argc, char **argv) {
    const int64_t N = arg(argc, argv, 1, 64), L = arg(argc, argv, 2, 80);
    const int64_t layers = arg(argc, argv, 3, 4);
    const int reps = (int)arg(argc, argv, 4, 50), threads = (int)arg(argc, argv, 5, 2);
    const int fp32 = argc > 6 && strcmp(argv[6], "fp32") == 0;
    const ModelOps *o = fp32 ? ops_cpu() : ops_cpu_bf16();
    if (N < 1 || L < 1 || layers < 1 || reps < 1 || threads < 1 || !o) {
        fprintf(stderr, "usage: decode_attention_bench [N] [L] [LAYERS] [reps] [threads] [fp32] "
                        "(all >= 1; bf16 needs AVX512-BF16)\n");
        return 2;
    }
    omp_set_num_threads(threads);
    const int64_t block = NH * L * HD, vb = fp32 ? 4 : 2, sets = N * layers;
    Rng r = rng_from_seed(5);
    float *src = malloc((size_t)HD * sizeof(float));
    char *k = malloc((size_t)(sets * block * vb)), *v = malloc((size_t)(sets * block * vb));
    float *q = malloc((size_t)(N * NH * HD) * sizeof(float));
    float *out = malloc((size_t)(N * NH * HD) * sizeof(float));
    void **kp = malloc((size_t)sets * sizeof(void *)), **vp = malloc((size_t)sets * sizeof(void *));
    int64_t *len = malloc((size_t)N * sizeof(int64_t));
    double *t = malloc((size_t)reps * sizeof(double));
    if (!src || !k || !v || !q || !out || !kp || !vp || !len || !t) {
        fprintf(stderr, "decode_attention_bench: out of memory\n");
        return 1;
    }
    for (int64_t i = 0; i < N * NH * HD; i++) q[i] = (float)(rng_uniform(&r) - 0.5);
    for (int64_t at = 0; at < sets * block; at += HD)
        for (int side = 0; side < 2; side++) {
            for (int64_t d = 0; d < HD; d++) src[d] = (float)(rng_uniform(&r) - 0.5);
            char *dst = (side ? v : k) + at * vb;
            if (fp32)
                memcpy(dst, src, (size_t)HD * sizeof(float));
            else
                o->kv_store_bf16((uint16_t *)dst, src, HD);
        }
    for (int64_t s = 0; s < sets; s++) kp[s] = k + s * block * vb, vp[s] = v + s * block * vb;
    for (int64_t n = 0; n < N; n++) len[n] = L;
    const OpsHeads qh = {q, NH * HD};
    for (int i = 0; i < reps + (int)layers; i++) { /* the first pass over the sets is warm-up */
        const int64_t layer = i % layers;
        const double t0 = bench_now();
        if (fp32)
            o->attention_cached(out, qh, (float *const *)kp + layer * N,
                                (float *const *)vp + layer * N, len, N, NH, NH, HD, L);
        else
            o->attention_cached_bf16(out, qh, (const uint16_t *const *)kp + layer * N,
                                     (const uint16_t *const *)vp + layer * N, len, N, NH, NH, HD, L);
        if (i >= layers) t[i - layers] = bench_now() - t0;
    }
    BenchStats st = bench_stats(t, reps);
    const double keys = (double)(N * NH * L), bytes = 2.0 * keys * HD * (double)vb;
    printf("{\"bench\":\"decode_attention\",\"precision\":\"%s\",\"rows\":%lld,\"positions\":%lld,"
           "\"heads\":%d,\"head_dim\":%d,\"layers\":%lld,\"threads\":%d,\"cache_mb\":%.2f,"
           "\"median_us\":%.1f,\"ns_per_key_head\":%.3f,\"cache_gb_per_s\":%.1f}\n",
           fp32 ? "fp32" : "bf16", (long long)N, (long long)L, NH, HD, (long long)layers, threads,
           bytes * (double)layers / 1e6, st.median * 1e6, st.median * 1e9 / keys,
           bytes / st.median / 1e9);
    free(src), free(k), free(v), free(q), free(out), free(kp), free(vp), free(len), free(t);
    return 0;
}
