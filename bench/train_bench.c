/* bench/train_bench.c — ponder's training step: forward + backward + AdamW.
 *
 * Reports tokens/s and achieved GFLOP/s (model FLOPs: every matmul, the LM
 * head and causal attention, forward x3 for forward+backward; the LM-head
 * recompute in backward is not counted), next to the sgemm ceiling measured in
 * the same run. Shapes: `tiny` (llama, d_model 128, 4 layers) and `gpt2`
 * (124M: vocab 50257, d_model 768, 12 layers, 12 heads, tied).
 *
 *   train_bench [tiny|gpt2] B T [steps] [threads]
 * prints one JSON line. PONDER_BENCH_PRECISION=bf16 trains with bf16
 * products and also measures the bf16 GEMM ceiling (gemm_bf16, packing
 * included) and the step's share of it. */
#include <omp.h>    /* omp_set_num_threads */
#include <stdio.h>  /* printf */
#include <stdlib.h> /* atoi */
#include <string.h> /* strcmp */

#include "bench/bench_util.h" /* bench_now, bench_stats, bench_sgemm_ceiling_gflops */
#include "model/cpu/blas.h"   /* blas_set_threads, blas_info */
#include "model/model.h"      /* Model */
#include "trainer/optim.h"    /* Optimizer */
#include "util/omp_env.h"      /* omp_env_use_short_spin */
#include "util/rng.h"         /* Rng */

/* FLOPs of one forward+backward per token (x3 of forward). */
static double flops_per_token(const Model *m, int64_t T) {
    const ModelConfig *c = model_config(m);
    size_t count;
    const ModelTensor *ts = model_tensors(m, &count);
    double matmul = 0.0;
    for (size_t i = 0; i < count; i++)
        if (ts[i].kind == MODEL_TENSOR_WEIGHT) matmul += (double)ts[i].numel;
    if (c->tie_embeddings) matmul += (double)(c->vocab_size * c->d_model); /* LM head */
    double attn = 2.0 * 2.0 * (double)c->d_model * (double)(T + 1) / 2.0 * (double)c->n_layer;
    return 3.0 * (2.0 * matmul + attn);
}

int main(int argc, char **argv) {
    omp_env_use_short_spin(argv);
    const char *shape = argc > 1 ? argv[1] : "tiny";
    int64_t B = argc > 2 ? atoi(argv[2]) : 4, T = argc > 3 ? atoi(argv[3]) : 64;
    int steps = argc > 4 ? atoi(argv[4]) : 5, threads = argc > 5 ? atoi(argv[5]) : 2;
    omp_set_num_threads(threads);
    PonderError err = {0};
    if (blas_load(NULL, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    blas_set_threads(threads);
    ModelConfig cfg = bench_shape_config(shape);
    Model *m = NULL;
    if (bench_model_create(&m, &cfg, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    model_init_weights(m, 1);
    OptimSettings s = optim_settings_default();
    Optimizer opt;
    if (optim_create(&opt, m, &s, &err)) return 1;
    int64_t N = B * T;
    int32_t *tok = malloc((size_t)N * sizeof(int32_t)), *tgt = malloc((size_t)N * sizeof(int32_t));
    float *mask = malloc((size_t)N * sizeof(float)), *lp = malloc((size_t)N * sizeof(float));
    float *dl = malloc((size_t)N * sizeof(float));
    Rng r = rng_from_seed(1);
    for (int64_t i = 0; i < N; i++) {
        tok[i] = (int32_t)rng_below(&r, (uint64_t)cfg.vocab_size);
        tgt[i] = (int32_t)rng_below(&r, (uint64_t)cfg.vocab_size);
        mask[i] = 1.0f;
        dl[i] = -1.0f / (float)N;
    }
    ModelBatch batch = {B, T, tok, tgt, mask, NULL, 1.0f};
    double *times = malloc((size_t)(steps + 1) * sizeof(double));
    for (int it = -1; it < steps; it++) { /* it = -1: warm-up (allocations) */
        double t0 = bench_now();
        if (model_forward(m, &batch, lp, NULL, NULL, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
        model_zero_grad(m);
        if (model_backward(m, dl, NULL, NULL, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
        if (optim_step(&opt, m, NULL, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
        if (it >= 0) times[it] = bench_now() - t0;
    }
    BenchStats st = bench_stats(times, steps);
    double ceiling = bench_sgemm_ceiling_gflops(1024, 1024, 1024, 5);
    double bf16_ceiling = strcmp(bench_precision(), "bf16") == 0
                              ? bench_bf16_ceiling_gflops(1024, 1024, 1024, 9) : 0.0;
    double fpt = flops_per_token(m, T);
    double tps = (double)N / st.median;
    const BlasInfo *bi = blas_info();
    printf("{\"bench\":\"train\",\"shape\":\"%s\",\"B\":%lld,\"T\":%lld,\"threads\":%d,"
           "\"params\":%zu,\"step_s_median\":%.4f,\"step_s_min\":%.4f,\"step_s_max\":%.4f,"
           "\"tokens_per_s\":%.1f,\"gflops\":%.1f,\"sgemm_ceiling_gflops\":%.1f,"
           "\"ceiling_share\":%.3f,\"precision\":\"%s\",\"bf16_ceiling_gflops\":%.1f,"
           "\"bf16_ceiling_share\":%.3f,\"blas\":\"%s\",\"blas_core\":\"%s\"}\n",
           shape, (long long)B, (long long)T, threads, model_num_params(m), st.median, st.min,
           st.max, tps, tps * fpt / 1e9, ceiling, tps * fpt / 1e9 / ceiling, bench_precision(), bf16_ceiling,
           bf16_ceiling > 0 ? tps * fpt / 1e9 / bf16_ceiling : 0.0, bi->library,
           bi->core);
    free(times), free(tok), free(tgt), free(mask), free(lp), free(dl);
    optim_free(&opt);
    model_free(m);
    return 0;
}
