/* bench/decode_bench.c — decode throughput: ponder's KV-cache decode at a
 * batch size, against a naive generator that reruns the full forward over the
 * whole sequence for every new token (what generation costs without a cache).
 *
 *   decode_bench [tiny|gpt2|llama768] BATCH NEW_TOKENS [PROMPT_LEN] [threads]
 *                [naive] [groupG] [kvK] [cold] [floor]
 * prints one JSON line; with `naive` it also times the no-cache generator;
 * with groupG (G dividing BATCH) the rows are BATCH/G groups of G samples
 * of one prompt each, as a rollout generates them: each group's prompt is
 * prefilled once into a slot of its own that its rows read
 * (model_kv_share_prefix), instead of every row holding a copy. The timed
 * decode runs on a cache that an untimed pass of the same decode wrote
 * before (its slots reset and prefilled again), as the trainer's reused
 * cache is from its second step on; `cold` times the first pass instead,
 * which pays the first touch of every cache page the prefills did not
 * write. `floor` also times the decode's memory floor (floor_seconds) in the
 * same process. kvK gives the shape K key/value heads (grouped-query
 * attention; K divides the query heads): a cache of K/n_head the bytes with
 * the same attention arithmetic per query head (and a narrower QKV product). PONDER_BENCH_PRECISION=bf16
 * decodes with bf16 products. */
#include <omp.h>    /* omp_set_num_threads */
#include <stdio.h>  /* printf */
#include <stdlib.h> /* atoi, malloc */
#include <string.h> /* strcmp, strncmp */

#include "bench/bench_util.h" /* bench_now */
#include "model/cpu/blas.h"   /* blas_set_threads */
#include "model/cpu/kernels.h" /* PONDER_HOT */
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

/* Bytes a decode step (0-based step s) cannot avoid reading: every row's
 * cached keys and values of all layers (a group's prompt once, not once per
 * sample) and the weights once. The rows' activations are left out. */
static int64_t floor_step_bytes(const ModelConfig *c, int64_t params, int64_t B, int64_t P, int64_t G,
                                int64_t s, int64_t es) {
    const int64_t position = 2 * c->n_kv_head * (c->d_model / c->n_head) * es * c->n_layer;
    const int64_t cached = G > 0 ? B * (s + 1) + (B / G) * P : B * (P + s + 1);
    return cached * position + params * es;
}

/* The sum of lines 64-byte vectors from v, in four chains; cloned per
 * instruction set so that a load is a whole line where the CPU allows it
 * (built for the baseline, 16-byte loads capped the L2 read rate at a
 * quarter of it). */
typedef uint32_t FloorVec __attribute__((vector_size(64)));

PONDER_HOT static uint32_t floor_read(const FloorVec *v, int64_t lines) {
    FloorVec a = {0}, b = {0}, d = {0}, e = {0};
    for (int64_t i = 0; i + 4 <= lines; i += 4) a += v[i], b += v[i + 1], d += v[i + 2], e += v[i + 3];
    a += b + d + e;
    uint32_t sum = 0;
    for (int k = 0; k < 16; k++) sum += a[k];
    return sum;
}

/* The decode's memory floor: the seconds the same threads take to read
 * floor_step_bytes for each of the NEW steps, each thread its share from a
 * buffer of its own that every step reads again from its start, as the
 * decode reads the same caches again (so a share that fits the L2 is read
 * from there, a larger one streams from L3, as the caches do). Best of 5. */
static double floor_seconds(const ModelConfig *c, int64_t params, int64_t B, int64_t P, int64_t NEW,
                            int64_t G, int threads) {
    const int64_t es = strcmp(bench_precision(), "bf16") == 0 ? 2 : 4, T = threads;
    const int64_t per = (floor_step_bytes(c, params, B, P, G, NEW - 1, es) / T + 511) / 256 * 256;
    char *buf = aligned_alloc(64, (size_t)(per * T));
    if (!buf) return -1;
    memset(buf, 1, (size_t)(per * T));
    double best = -1;
    uint32_t sum = 0;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = bench_now();
#pragma omp parallel num_threads(threads) reduction(+ : sum)
        {
            const FloorVec *v = (const FloorVec *)(buf + per * omp_get_thread_num());
            for (int64_t s = 0; s < NEW; s++)
                sum += floor_read(v, floor_step_bytes(c, params, B, P, G, s, es) / T / 64);
        }
        double dt = bench_now() - t0;
        best = best < 0 || dt < best ? dt : best;
    }
    free(buf);
    __asm__ volatile("" : : "g"(sum)); /* the sums are used: the loads stay */
    return best;
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
    int naive = 0, cold = 0, want_floor = 0;
    int64_t G = 0, KV = 0;
    for (int i = 6; i < argc; i++) {
        if (strcmp(argv[i], "naive") == 0) naive = 1;
        else if (strcmp(argv[i], "cold") == 0) cold = 1;
        else if (strcmp(argv[i], "floor") == 0) want_floor = 1;
        else if (strncmp(argv[i], "group", 5) == 0) G = atoi(argv[i] + 5);
        else if (strncmp(argv[i], "kv", 2) == 0) KV = atoi(argv[i] + 2);
        else return fprintf(stderr, "decode_bench: unknown option '%s' (naive, groupG, kvK, cold, floor)\n", argv[i]), 2;
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
    if (KV != 0 && (KV < 0 || cfg.n_head % KV != 0))
        return fprintf(stderr, "decode_bench: kvK needs K > 0 dividing the shape's %lld heads\n",
                       (long long)cfg.n_head),
               2;
    if (KV) cfg.n_kv_head = KV;
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
    const int64_t params = (int64_t)model_num_params(m);
    double floor_s = want_floor ? floor_seconds(&cfg, params, B, P, NEW, G, threads) : 0.0;
    if (floor_s < 0) return fprintf(stderr, "decode_bench: out of memory for the floor's buffer\n"), 1;
    double weight_gb = (double)model_num_params(m) * 4.0 / 1e9;
    printf("{\"bench\":\"decode\",\"shape\":\"%s\",\"kv_heads\":%lld,\"batch\":%lld,\"group\":%lld,\"cold\":%d,\"prompt\":%lld,"
           "\"new_tokens\":%lld,\"threads\":%d,\"precision\":\"%s\",\"kv_tokens_per_s\":%.1f,\"naive_tokens_per_s\":%.1f,"
           "\"floor_tokens_per_s\":%.1f,\"weights_gb\":%.3f,\"kv_weight_read_gb_per_s\":%.2f}\n",
           shape, (long long)cfg.n_kv_head, (long long)B, (long long)G, cold, (long long)P, (long long)NEW, threads,
           bench_precision(),
           (double)(B * NEW) / kv_s, naive ? (double)(B * NEW) / naive_s : 0.0,
           want_floor ? (double)(B * NEW) / floor_s : 0.0, weight_gb,
           weight_gb * (double)NEW / kv_s);
    free(prompt);
    model_free(m);
    return 0;
}
