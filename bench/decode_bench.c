/* bench/decode_bench.c — decode throughput: ponder's KV-cache decode at a
 * batch size, against a naive generator that reruns the full forward over the
 * whole sequence for every new token (what generation costs without a cache).
 *
 *   decode_bench [tiny|gpt2|llama768] BATCH NEW_TOKENS [PROMPT_LEN] [threads]
 *                [naive] [groupG] [cold]
 * prints one JSON line; with `naive` it also times the no-cache generator;
 * with groupG (G dividing BATCH) the rows are BATCH/G groups of G samples
 * of one prompt each, as a rollout generates them: each group's prompt is
 * prefilled once into a slot of its own that its rows read
 * (model_kv_share_prefix), instead of every row holding a copy. The timed
 * decode runs on a cache that an untimed pass of the same decode wrote
 * before (its slots reset and prefilled again), as the trainer's reused
 * cache is from its second step on; `cold` times the first pass instead,
 * which pays the first touch of every cache page the prefills did not
 * write. PONDER_BENCH_PRECISION=bf16 decodes with bf16 products. */
#include <omp.h>    /* omp_set_num_threads */
#include <stdio.h>  /* printf */
#include <stdlib.h> /* atoi, malloc */
#include <string.h> /* strcmp, strncmp */

#include "bench/bench_util.h" /* bench_now */
#include "model/cpu/blas.h"   /* blas_set_threads */
#include "model/model.h"      /* Model, KV cache */
#include "util/omp_env.h"      /* omp_env_use_short_spin */
#include "util/rng.h"         /* Rng */

static int32_t argmax(const float *x, int64_t n) {
    int32_t b = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[b]) b = (int32_t)i;
    return b;
}

/* Empties the cache's slots, then prefills each of the B rows' slots (or,
 * in groups of G > 0, each group's prompt slot, which its rows share);
 * tok gets each row's first token. */
static int kv_fill(Model *m, ModelKVCache *kv, int64_t B, int64_t P, int64_t G,
                   const int32_t *prompt, float *logits, int32_t *tok, PonderError *err) {
    const int64_t V = model_config(m)->vocab_size, groups = G > 0 ? B / G : 0;
    for (int64_t slot = 0; slot < B + groups; slot++) model_kv_reset(kv, slot);
    for (int64_t g = 0; g < groups; g++)
        if (model_prefill(m, kv, B + g, prompt, P, logits, err)) return -1;
    for (int64_t b = 0; b < B; b++) {
        if (groups && !model_kv_share_prefix(kv, b, B + b / G))
            return ponder_error(err, PONDER_ERR_CONFIG, "this backend cannot share prompts");
        if (!groups && model_prefill(m, kv, b, prompt, P, logits, err)) return -1;
        tok[b] = argmax(logits, V);
    }
    return 0;
}

/* NEW greedy decode steps of all B rows at once; returns the seconds. */
static double kv_decode_steps(Model *m, ModelKVCache *kv, int64_t B, int64_t NEW, float *logits,
                              int32_t *tok, PonderError *err) {
    const int64_t V = model_config(m)->vocab_size;
    int64_t *slots = malloc((size_t)B * sizeof(int64_t));
    for (int64_t b = 0; b < B; b++) slots[b] = b;
    double t0 = bench_now();
    for (int64_t s = 0; s < NEW; s++) {
        if (model_decode(m, kv, slots, tok, B, logits, err)) return free(slots), -1;
        for (int64_t b = 0; b < B; b++) tok[b] = argmax(logits + b * V, V);
    }
    double dt = bench_now() - t0;
    free(slots);
    return dt;
}

/* KV cache: the rows' prompts prefilled, then NEW tokens decoded for all
 * rows at once; unless cold, after an untimed pass of the same. */
static double kv_decode_seconds(Model *m, int64_t B, int64_t P, int64_t NEW, int64_t G, int cold,
                                const int32_t *prompt, PonderError *err) {
    const int64_t V = model_config(m)->vocab_size, groups = G > 0 ? B / G : 0;
    ModelKVCache *kv = NULL;
    if (model_kv_create(&kv, m, B + groups, P + NEW + 1, err)) return -1;
    float *logits = malloc((size_t)(B * V) * sizeof(float));
    int32_t *tok = malloc((size_t)B * sizeof(int32_t));
    double dt = -1;
    for (int pass = cold ? 1 : 0; pass < 2; pass++) {
        if (kv_fill(m, kv, B, P, G, prompt, logits, tok, err)) break;
        dt = kv_decode_steps(m, kv, B, NEW, logits, tok, err);
        if (dt < 0) break;
    }
    free(logits), free(tok);
    model_kv_free(kv);
    return dt;
}

/* No cache: every new token reruns the forward over the whole sequence. */
static double naive_decode_seconds(Model *m, int64_t B, int64_t P, int64_t NEW,
                                   const int32_t *prompt, PonderError *err) {
    const int64_t V = model_config(m)->vocab_size, T = P + NEW;
    int32_t *seq = malloc((size_t)(B * T) * sizeof(int32_t));
    float *logits = malloc((size_t)(B * T * V) * sizeof(float));
    int32_t *packed = malloc((size_t)(B * T) * sizeof(int32_t));
    for (int64_t b = 0; b < B; b++) memcpy(seq + b * T, prompt, (size_t)P * sizeof(int32_t));
    double t0 = bench_now();
    for (int64_t len = P; len < T; len++) {
        for (int64_t b = 0; b < B; b++) memcpy(packed + b * len, seq + b * T, (size_t)len * sizeof(int32_t));
        ModelBatch mb = {B, len, packed, packed, NULL, NULL, 1.0f};
        if (model_forward_logits(m, &mb, logits, err)) return -1;
        for (int64_t b = 0; b < B; b++) seq[b * T + len] = argmax(logits + (b * len + len - 1) * V, V);
    }
    double dt = bench_now() - t0;
    free(seq), free(logits), free(packed);
    return dt;
}

int main(int argc, char **argv) {
    omp_env_use_short_spin(argv);
    const char *shape = argc > 1 ? argv[1] : "tiny";
    int64_t B = argc > 2 ? atoi(argv[2]) : 1, NEW = argc > 3 ? atoi(argv[3]) : 64;
    int64_t P = argc > 4 ? atoi(argv[4]) : 16;
    int threads = argc > 5 ? atoi(argv[5]) : 2;
    int naive = 0, cold = 0;
    int64_t G = 0;
    for (int i = 6; i < argc; i++) {
        if (strcmp(argv[i], "naive") == 0) naive = 1;
        else if (strcmp(argv[i], "cold") == 0) cold = 1;
        else if (strncmp(argv[i], "group", 5) == 0) G = atoi(argv[i] + 5);
        else return fprintf(stderr, "decode_bench: unknown option '%s' (naive, groupG, cold)\n", argv[i]), 2;
    }
    if (G < 0 || (G > 0 && B % G != 0))
        return fprintf(stderr, "decode_bench: groupG needs G > 0 dividing BATCH (%lld)\n",
                       (long long)B),
               2;
    PonderError err = {0};
    if (blas_load(NULL, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
    omp_set_num_threads(threads);
    blas_set_threads(threads);
    ModelConfig cfg = bench_shape_config(shape);
    Model *m = NULL;
    if (bench_model_create(&m, &cfg, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
    model_init_weights(m, 1);
    int32_t *prompt = malloc((size_t)P * sizeof(int32_t));
    Rng r = rng_from_seed(2);
    for (int64_t i = 0; i < P; i++) prompt[i] = (int32_t)rng_below(&r, (uint64_t)cfg.vocab_size);
    model_weights_frozen(m, 1); /* as rollout_generate does */
    double kv_s = kv_decode_seconds(m, B, P, NEW, G, cold, prompt, &err);
    model_weights_frozen(m, 0);
    if (kv_s < 0) return fprintf(stderr, "%s\n", err.msg), 1;
    double naive_s = naive ? naive_decode_seconds(m, B, P, NEW, prompt, &err) : 0.0;
    if (naive_s < 0) return fprintf(stderr, "%s\n", err.msg), 1;
    double weight_gb = (double)model_num_params(m) * 4.0 / 1e9;
    printf("{\"bench\":\"decode\",\"shape\":\"%s\",\"batch\":%lld,\"group\":%lld,\"cold\":%d,\"prompt\":%lld,"
           "\"new_tokens\":%lld,\"threads\":%d,\"precision\":\"%s\",\"kv_tokens_per_s\":%.1f,\"naive_tokens_per_s\":%.1f,"
           "\"weights_gb\":%.3f,\"kv_weight_read_gb_per_s\":%.2f}\n",
           shape, (long long)B, (long long)G, cold, (long long)P, (long long)NEW, threads,
           bench_precision(),
           (double)(B * NEW) / kv_s, naive ? (double)(B * NEW) / naive_s : 0.0, weight_gb,
           weight_gb * (double)NEW / kv_s);
    free(prompt);
    model_free(m);
    return 0;
}
