/* tests/test_model.c — whole-model checks: gradients against central finite
 * differences (both architectures, tied and untied, scalar head, padding and
 * left padding), KV-cache logits against the full forward, and an overfit run.
 * Per-op checks live in tests/test_ops.c; PyTorch parity in test_reference.c. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "model/ops.h"
#include "trainer/optim.h"
#include "util/rng.h"

static ModelConfig small_config(ModelArch arch, bool tied, bool scalar, int64_t kv_heads) {
    ModelConfig c = model_config_default();
    c.arch = arch;
    c.vocab_size = 13;
    c.d_model = 16;
    c.n_layer = 2;
    c.n_head = 4;
    c.n_kv_head = arch == MODEL_ARCH_GPT2 ? 4 : kv_heads;
    c.d_ff = arch == MODEL_ARCH_GPT2 ? 32 : 24;
    c.max_seq_len = 16;
    c.tie_embeddings = tied;
    c.qkv_bias = arch == MODEL_ARCH_LLAMA && !tied;
    c.scalar_head = scalar;
    c.init_std = 0.3f;
    return c;
}

typedef struct Case {
    int64_t B, T;
    int32_t *tokens, *targets, *start;
    float *mask, *a, *b, *c; /* per-token loss coefficients */
    float temperature;
} Case;

/* Random tokens; sequence b has length T - b (right padding), and with
 * left_pad the second sequence starts at position 2 instead. */
static Case make_case(int64_t B, int64_t T, int64_t V, uint64_t seed, int left_pad) {
    Case k = {.B = B, .T = T};
    size_t N = (size_t)(B * T);
    k.tokens = calloc(N, sizeof(int32_t));
    k.targets = calloc(N, sizeof(int32_t));
    k.mask = calloc(N, sizeof(float));
    k.a = calloc(N, sizeof(float));
    k.b = calloc(N, sizeof(float));
    k.c = calloc(N, sizeof(float));
    k.start = left_pad ? calloc((size_t)B, sizeof(int32_t)) : NULL;
    Rng r = rng_from_seed(seed);
    for (int64_t b = 0; b < B; b++) {
        int64_t s = (left_pad && b == 1) ? 2 : 0, len = left_pad ? T : T - b;
        if (k.start) k.start[b] = (int32_t)s;
        for (int64_t t = 0; t < T; t++) {
            size_t i = (size_t)(b * T + t);
            k.tokens[i] = (int32_t)rng_below(&r, (uint64_t)V);
            k.targets[i] = (int32_t)rng_below(&r, (uint64_t)V);
            k.mask[i] = (t >= s && t < len) ? 1.0f : 0.0f;
            k.a[i] = (float)rng_normal(&r);
            k.b[i] = 0.3f * (float)rng_normal(&r);
            k.c[i] = (float)rng_normal(&r);
        }
    }
    return k;
}

static void free_case(Case *k) {
    free(k->tokens), free(k->targets), free(k->mask), free(k->a), free(k->b), free(k->c);
    free(k->start);
}

static ModelBatch batch_of(const Case *k) {
    ModelBatch b = {k->B, k->T, k->tokens, k->targets, k->mask, k->start, k->temperature};
    return b;
}

/* loss = sum mask * (a logp + b entropy + c value), accumulated in double. */
static double loss_of(Model *m, const Case *k) {
    size_t N = (size_t)(k->B * k->T);
    float *lp = calloc(N, sizeof(float)), *ent = calloc(N, sizeof(float)),
          *val = calloc(N, sizeof(float));
    ModelBatch b = batch_of(k);
    PonderError err = {0};
    int rc = model_forward(m, &b, lp, ent, val, &err);
    cr_assert_eq(rc, 0, "forward failed: %s", err.msg);
    double L = 0.0;
    for (size_t i = 0; i < N; i++)
        L += (double)k->mask[i] * ((double)k->a[i] * lp[i] + (double)k->b[i] * ent[i] +
                                   (double)k->c[i] * val[i]);
    free(lp), free(ent), free(val);
    return L;
}

/* Finite differences against the backward on case k (freed here). */
static void check_gradients_case(ModelConfig cfg, Case k) {
    Model *m = NULL;
    PonderError err = {0};
    cr_assert_eq(model_create(&m, &cfg, &err), 0, "%s", err.msg);
    model_init_weights(m, 7);
    loss_of(m, &k);
    model_zero_grad(m);
    cr_assert_eq(model_backward(m, k.a, k.b, k.c, &err), 0, "%s", err.msg);
    size_t n = model_num_params(m), count;
    float *analytic = malloc(n * sizeof(float));
    memcpy(analytic, model_grads(m), n * sizeof(float));
    const ModelTensor *ts = model_tensors(m, &count);
    float *p = model_params(m);
    const float h = 1e-2f;
    Rng pick = rng_from_seed(3);
    for (size_t ti = 0; ti < count; ti++) {
        const ModelTensor *t = &ts[ti];
        double max_err = 0.0, max_ref = 0.0;
        size_t probes = t->numel < 24 ? t->numel : 24;
        for (size_t j = 0; j < probes; j++) {
            size_t idx = t->offset + (t->numel <= 24 ? j : rng_below(&pick, t->numel));
            float saved = p[idx];
            p[idx] = saved + h;
            double lp = loss_of(m, &k);
            p[idx] = saved - h;
            double lm = loss_of(m, &k);
            p[idx] = saved;
            double fd = (lp - lm) / (2.0 * h);
            double e = fabs(fd - (double)analytic[idx]);
            if (e > max_err) max_err = e;
            if (fabs(fd) > max_ref) max_ref = fabs(fd);
        }
        double rel = max_err / (max_ref > 1e-3 ? max_ref : 1e-3);
        cr_expect(rel < 2e-2, "%s: max |fd - analytic| = %.3g (rel %.3g)", t->name, max_err, rel);
    }
    free(analytic);
    free_case(&k);
    model_free(m);
}

static void check_gradients_at(ModelConfig cfg, int left_pad, float temperature) {
    Case k = make_case(2, 6, cfg.vocab_size, 11, left_pad);
    k.temperature = temperature;
    check_gradients_case(cfg, k);
}

static void check_gradients(ModelConfig cfg, int left_pad) { check_gradients_at(cfg, left_pad, 0.0f); }

/* logp and entropy of softmax(logits / T), as the RL learner needs */
Test(model_grad, llama_temperature) {
    check_gradients_at(small_config(MODEL_ARCH_LLAMA, false, true, 2), 0, 0.7f);
}

Test(model_grad, llama_tied) { check_gradients(small_config(MODEL_ARCH_LLAMA, true, false, 4), 0); }
Test(model_grad, llama_untied_gqa_bias_scalar) {
    check_gradients(small_config(MODEL_ARCH_LLAMA, false, true, 2), 0);
}
Test(model_grad, llama_left_padding) {
    check_gradients(small_config(MODEL_ARCH_LLAMA, true, false, 2), 1);
}
Test(model_grad, gpt2_tied) { check_gradients(small_config(MODEL_ARCH_GPT2, true, false, 4), 0); }
Test(model_grad, gpt2_untied_scalar) {
    check_gradients(small_config(MODEL_ARCH_GPT2, false, true, 4), 0);
}
Test(model_grad, gpt2_left_padding) {
    check_gradients(small_config(MODEL_ARCH_GPT2, false, false, 4), 1);
}

/* ----------------------------------------------------- shared prefixes --- */

/* Six rows of 8 whose prefixes overlap as a GRPO batch's do (V >= 13):
 *   row 0  prompt 1 2 3 4, completion 5 6 7 8
 *   row 1  the same prompt and first completion token, then others, right-padded:
 *          shares positions 0-3 with row 0 (its target at 4 differs)
 *   row 2  the same prompt, another first completion token: the target at
 *          position 3 differs, so it shares positions 0-2
 *   row 3  row 0 again: shares all 8
 *   rows 4, 5  left-padded (start 2), one prompt, the same first completion
 *          token: row 5 shares positions 0-5 with row 4 (none with rows 0-3,
 *          which start at 0)
 * Targets at mask-0 positions differ between rows everywhere: they are not
 * read, so they must not stop the sharing. Of 48 positions 21 are shared, and
 * 4 more can never matter (row 1's two after its last masked-in position, row
 * 4's two masked-out ones before its start; row 5's come with its prefix):
 * 23 are computed. */
static Case shared_prefix_case(void) {
    static const int32_t tok[6][8] = {{1, 2, 3, 4, 5, 6, 7, 8},  {1, 2, 3, 4, 5, 9, 9, 0},
                                      {1, 2, 3, 4, 7, 7, 7, 7},  {1, 2, 3, 4, 5, 6, 7, 8},
                                      {0, 0, 10, 11, 12, 5, 6, 7}, {0, 0, 10, 11, 12, 5, 8, 8}};
    static const int32_t tgt[6][8] = {{0, 1, 2, 5, 6, 7, 8, 9},  {3, 4, 5, 5, 9, 9, 0, 0},
                                      {6, 7, 8, 7, 7, 7, 7, 1},  {0, 1, 2, 5, 6, 7, 8, 9},
                                      {1, 2, 3, 4, 5, 6, 7, 8},  {9, 9, 9, 9, 9, 6, 8, 8}};
    static const float msk[6][8] = {{0, 0, 0, 1, 1, 1, 1, 1}, {0, 0, 0, 1, 1, 1, 0, 0},
                                    {0, 0, 0, 1, 1, 1, 1, 1}, {0, 0, 0, 1, 1, 1, 1, 1},
                                    {0, 0, 0, 0, 0, 1, 1, 1}, {0, 0, 0, 0, 0, 1, 1, 1}};
    Case k = make_case(6, 8, 13, 23, 1); /* random loss coefficients */
    for (int64_t b = 0; b < 6; b++) {
        k.start[b] = b >= 4 ? 2 : 0;
        for (int64_t t = 0; t < 8; t++) {
            k.tokens[b * 8 + t] = tok[b][t];
            k.targets[b * 8 + t] = tgt[b][t];
            k.mask[b * 8 + t] = msk[b][t];
        }
    }
    return k;
}

Test(model_grad, llama_shared_prefixes) {
    Case k = shared_prefix_case();
    k.temperature = 0.7f;
    check_gradients_case(small_config(MODEL_ARCH_LLAMA, false, true, 2), k);
}
Test(model_grad, gpt2_shared_prefixes) {
    check_gradients_case(small_config(MODEL_ARCH_GPT2, false, true, 4), shared_prefix_case());
}

static Model *seeded_model(ModelConfig cfg, uint64_t seed) {
    Model *m = NULL;
    PonderError err = {0};
    cr_assert_eq(model_create(&m, &cfg, &err), 0, "%s", err.msg);
    model_init_weights(m, seed);
    return m;
}

static double max_abs_diff(const float *x, const float *y, size_t n) {
    double d = 0.0;
    for (size_t i = 0; i < n; i++) d = fmax(d, fabs((double)x[i] - (double)y[i]));
    return d;
}

/* One forward and backward of case k: outputs and gradients into out. */
static void run_case(Model *m, const Case *k, float *lp, float *ent, float *val, float *grads) {
    PonderError err = {0};
    ModelBatch b = batch_of(k);
    cr_assert_eq(model_forward(m, &b, lp, ent, val, &err), 0, "%s", err.msg);
    model_zero_grad(m);
    cr_assert_eq(model_backward(m, k->a, k->b, k->c, &err), 0, "%s", err.msg);
    memcpy(grads, model_grads(m), model_num_params(m) * sizeof(float));
}

/* Shared rows give what every row computed in full gives: the same outputs
 * (each op's rows do not depend on the others) and the same gradients up to
 * the order of their sums. */
static void check_sharing_matches_full(ModelConfig cfg) {
    Model *m = seeded_model(cfg, 5);
    Case k = shared_prefix_case();
    k.temperature = 0.7f;
    const size_t N = 48, P = model_num_params(m);
    float *out[2][3], *g[2];
    for (int s = 0; s < 2; s++) {
        for (int j = 0; j < 3; j++) out[s][j] = calloc(N, sizeof(float));
        g[s] = calloc(P, sizeof(float));
        model_share_prefixes(m, s == 0);
        run_case(m, &k, out[s][0], out[s][1], out[s][2], g[s]);
        cr_assert_eq(model_last_rows(m), s == 0 ? 23 : 48, "%s: rows computed %lld",
                     s == 0 ? "shared" : "full", (long long)model_last_rows(m));
    }
    for (int j = 0; j < 3; j++)
        cr_expect(max_abs_diff(out[0][j], out[1][j], N) <= 1e-6,
                  "output %d differs by %.3g", j, max_abs_diff(out[0][j], out[1][j], N));
    double scale = 0.0;
    for (size_t i = 0; i < P; i++) scale = fmax(scale, fabs((double)g[1][i]));
    const double d = max_abs_diff(g[0], g[1], P);
    cr_expect(scale > 1e-3 && d <= 1e-5 * scale, "gradients differ by %.3g (largest %.3g)", d,
              scale);
    for (int s = 0; s < 2; s++) {
        for (int j = 0; j < 3; j++) free(out[s][j]);
        free(g[s]);
    }
    free_case(&k);
    model_free(m);
}

Test(model_share, llama_matches_every_row_in_full) {
    check_sharing_matches_full(small_config(MODEL_ARCH_LLAMA, false, true, 2));
}
Test(model_share, gpt2_matches_every_row_in_full) {
    check_sharing_matches_full(small_config(MODEL_ARCH_GPT2, true, false, 4));
}

/* The backend-resident API on a host backend, with rows shared: the same
 * [B,T] outputs and gradients as the host API. */
Test(model_share, backend_api_matches_host_api) {
    ModelConfig cfg = small_config(MODEL_ARCH_LLAMA, false, true, 2);
    Model *m = seeded_model(cfg, 5);
    PonderError err = {0};
    Case k = shared_prefix_case();
    const size_t N = 48, P = model_num_params(m);
    float *lp = calloc(N, sizeof(float)), *ent = calloc(N, sizeof(float)),
          *val = calloc(N, sizeof(float)), *g = calloc(P, sizeof(float)),
          *dval = calloc(N, sizeof(float));
    run_case(m, &k, lp, ent, val, g);
    for (size_t i = 0; i < N; i++) dval[i] = k.c[i] * k.mask[i]; /* 0 at mask-0, as required */
    ModelBatch b = batch_of(&k);
    ModelOutputs out;
    cr_assert_eq(model_forward_backend(m, &b, 1, &out, &err), 0, "%s", err.msg);
    cr_expect_eq(model_last_rows(m), 23);
    for (size_t i = 0; i < N; i++) {
        if (k.mask[i] == 0.0f) continue; /* values are not zeroed there on this API */
        cr_expect(out.logp[i] == lp[i] && out.entropy[i] == ent[i] && out.values[i] == val[i],
                  "position %zu", i);
    }
    model_zero_grad(m);
    cr_assert_eq(model_backward_backend(m, k.a, k.b, dval, &err), 0, "%s", err.msg);
    cr_expect(memcmp(model_grads(m), g, P * sizeof(float)) == 0,
              "backend-API gradients differ from the host API's");
    free(lp), free(ent), free(val), free(g), free(dval);
    free_case(&k);
    model_free(m);
}

/* Rows with nothing in common compute every position up to their last
 * masked-in one; a batch of one row too. */
Test(model_share, distinct_rows_compute_their_live_positions) {
    ModelConfig cfg = small_config(MODEL_ARCH_LLAMA, true, false, 4);
    Model *m = seeded_model(cfg, 5);
    PonderError err = {0};
    Case k = make_case(3, 6, cfg.vocab_size, 11, 0); /* row b masked in for 6 - b positions */
    for (int64_t b = 0; b < 3; b++) k.tokens[b * 6] = (int32_t)b; /* first tokens differ */
    float *lp = calloc(18, sizeof(float));
    ModelBatch b = batch_of(&k);
    cr_assert_eq(model_forward(m, &b, lp, NULL, NULL, &err), 0, "%s", err.msg);
    cr_expect_eq(model_last_rows(m), 15);
    for (int64_t i = 0; i < 18; i++)
        if (k.mask[i] == 0.0f) cr_expect(lp[i] == 0.0f, "position %lld not zeroed", (long long)i);
    b.mask = NULL; /* every position counts */
    cr_assert_eq(model_forward(m, &b, lp, NULL, NULL, &err), 0, "%s", err.msg);
    cr_expect_eq(model_last_rows(m), 18);
    float none[18] = {0}; /* nothing counts: computed in full, all outputs 0 */
    b.mask = none;
    cr_assert_eq(model_forward(m, &b, lp, NULL, NULL, &err), 0, "%s", err.msg);
    cr_expect_eq(model_last_rows(m), 18);
    for (int64_t i = 0; i < 18; i++) cr_expect(lp[i] == 0.0f);
    b.B = 1;
    cr_assert_eq(model_forward(m, &b, lp, NULL, NULL, &err), 0, "%s", err.msg);
    cr_expect_eq(model_last_rows(m), 6);
    free(lp);
    free_case(&k);
    model_free(m);
}

/* ----------------------------------------------------------- KV cache ---- */

static void check_kv_cache(ModelConfig cfg) {
    Model *m = seeded_model(cfg, 5);
    PonderError err = {0};
    const int64_t B = 3, T = 10, V = cfg.vocab_size;
    Case k = make_case(B, T, V, 9, 0);
    float *full = malloc((size_t)(B * T * V) * sizeof(float));
    ModelBatch b = batch_of(&k);
    cr_assert_eq(model_forward_logits(m, &b, full, &err), 0, "%s", err.msg);

    ModelKVCache *kv = NULL;
    cr_assert_eq(model_kv_create(&kv, m, B, T, &err), 0, "%s", err.msg);
    float *logits = malloc((size_t)(B * V) * sizeof(float));
    const int64_t P = 4; /* prefill P tokens per sequence, then decode the rest together */
    double max_diff = 0.0;
    for (int64_t s = 0; s < B; s++) {
        cr_assert_eq(model_prefill(m, kv, s, k.tokens + s * T, P, logits, &err), 0, "%s",
                     err.msg);
        for (int64_t v = 0; v < V; v++)
            max_diff = fmax(max_diff, fabs(logits[v] - full[(s * T + P - 1) * V + v]));
    }
    int64_t slots[3] = {0, 1, 2};
    int32_t toks[3];
    for (int64_t t = P; t < T; t++) {
        for (int64_t s = 0; s < B; s++) toks[s] = k.tokens[s * T + t];
        cr_assert_eq(model_decode(m, kv, slots, toks, B, logits, &err), 0, "%s", err.msg);
        for (int64_t s = 0; s < B; s++)
            for (int64_t v = 0; v < V; v++)
                max_diff = fmax(max_diff, fabs(logits[s * V + v] - full[(s * T + t) * V + v]));
    }
    cr_log_info("KV cache vs full forward: max |diff| = %.3g", max_diff);
    cr_expect(max_diff <= 1e-4, "KV-cache logits differ from full forward by %.3g", max_diff);
    /* a full slot is an error, not an overflow */
    int rc = model_decode(m, kv, slots, toks, 1, logits, &err);
    cr_expect_neq(rc, 0);
    cr_expect(strstr(err.msg, "full") != NULL, "message: %s", err.msg);
    /* copying a slot shares the prefix: decoding from the copy matches */
    model_kv_reset(kv, 1);
    cr_assert_eq(model_prefill(m, kv, 1, k.tokens, P, logits, &err), 0, "%s", err.msg);
    model_kv_reset(kv, 2);
    model_kv_copy_slot(kv, 2, 1);
    int64_t two[2] = {1, 2};
    int32_t same[2] = {k.tokens[P], k.tokens[P]};
    cr_assert_eq(model_decode(m, kv, two, same, 2, logits, &err), 0, "%s", err.msg);
    double copy_diff = 0.0;
    for (int64_t v = 0; v < V; v++) {
        copy_diff = fmax(copy_diff, fabs(logits[v] - logits[V + v]));
        copy_diff = fmax(copy_diff, fabs(logits[v] - full[P * V + v]));
    }
    cr_expect(copy_diff <= 1e-4, "copied slot diverges by %.3g", copy_diff);
    free(logits);
    free(full);
    model_kv_free(kv);
    free_case(&k);
    model_free(m);
}

Test(model_kv, llama_gqa) {
    ModelConfig c = small_config(MODEL_ARCH_LLAMA, false, false, 2);
    c.init_std = 0.1f;
    check_kv_cache(c);
}
Test(model_kv, gpt2) {
    ModelConfig c = small_config(MODEL_ARCH_GPT2, true, false, 4);
    c.init_std = 0.1f;
    check_kv_cache(c);
}

/* A slot that reads its prompt from another (model_kv_share_prefix)
 * decodes with the bits of a slot holding a copy of it: next to a copy, and
 * next to a copy taken from the sharing slot (copy_slot then copies the
 * prefix too); after its source grows (appends leave the shared positions
 * alone); and after a prefill into it (which first copies the prefix in). */
static void check_shared_prefix(const ModelConfig *c, const ModelOps *ops, const char *what) {
    Model *m = NULL;
    PonderError err = {0};
    cr_assert_eq(model_create_on(&m, c, ops, &err), 0, "%s", err.msg);
    model_init_weights(m, 7);
    cr_assert(model_kv_shares_prefixes(m), "%s: the CPU tables read shared prefixes", what);
    enum { T = 12, P = 5 };
    const int64_t V = c->vocab_size;
    int32_t tok[T];
    Rng r = rng_from_seed(17);
    for (int i = 0; i < T; i++) tok[i] = (int32_t)rng_below(&r, (uint64_t)V);
    ModelKVCache *kv = NULL;
    cr_assert_eq(model_kv_create(&kv, m, 4, T + 2, &err), 0, "%s", err.msg);
    float *lg = malloc((size_t)(3 * V) * sizeof(float));
    cr_assert_eq(model_prefill(m, kv, 0, tok, P, lg, &err), 0, "%s", err.msg);
    model_kv_copy_slot(kv, 1, 0);
    cr_assert_eq(model_kv_share_prefix(kv, 2, 0), 1, "%s", what);
    cr_expect_eq(model_kv_length(kv, 2), P);
    cr_expect_eq(model_kv_share_prefix(kv, 3, 2), 0, "%s: a slot with a prefix became a source", what);
    cr_expect_eq(model_kv_share_prefix(kv, 2, 2), 0);
    model_kv_copy_slot(kv, 3, 2);
    const int64_t rows[3] = {1, 2, 3}, src = 0;
    int diffs = 0;
    for (int64_t t = P; t <= T; t++) {
        if (t == T) /* the source grows; what slot 2 reads stays */
            cr_assert_eq(model_decode(m, kv, &src, &tok[1], 1, lg, &err), 0, "%s", err.msg);
        const int32_t same[3] = {tok[t % T], tok[t % T], tok[t % T]};
        cr_assert_eq(model_decode(m, kv, rows, same, 3, lg, &err), 0, "%s", err.msg);
        diffs += memcmp(lg, lg + V, (size_t)V * sizeof(float)) != 0;
        diffs += memcmp(lg, lg + 2 * V, (size_t)V * sizeof(float)) != 0;
    }
    cr_expect_eq(diffs, 0, "%s: a shared prefix decoded otherwise than a copy (%d steps)", what,
                 diffs);
    model_kv_reset(kv, 1), model_kv_reset(kv, 2);
    model_kv_copy_slot(kv, 1, 0);
    cr_assert_eq(model_kv_share_prefix(kv, 2, 0), 1);
    cr_assert_eq(model_prefill(m, kv, 1, tok + 2, 3, lg, &err), 0, "%s", err.msg);
    cr_assert_eq(model_prefill(m, kv, 2, tok + 2, 3, lg + V, &err), 0, "%s", err.msg);
    cr_expect_eq(memcmp(lg, lg + V, (size_t)V * sizeof(float)), 0, "%s: prefill after a prefix", what);
    const int32_t next[2] = {tok[7], tok[7]};
    cr_assert_eq(model_decode(m, kv, rows, next, 2, lg, &err), 0, "%s", err.msg);
    cr_expect_eq(memcmp(lg, lg + V, (size_t)V * sizeof(float)), 0, "%s: decode after that prefill",
                 what);
    free(lg);
    model_kv_free(kv);
    model_free(m);
}

Test(model_kv, shared_prefix_decodes_as_a_copy) {
    /* head size 4 (the generic kernel) and 32 (the register form); GQA */
    ModelConfig llama = small_config(MODEL_ARCH_LLAMA, false, false, 2);
    ModelConfig gpt2 = small_config(MODEL_ARCH_GPT2, true, false, 4);
    ModelConfig wide = small_config(MODEL_ARCH_LLAMA, true, false, 2);
    wide.d_model = 128, wide.d_ff = 64;
    check_shared_prefix(&llama, ops_cpu(), "llama hd 4");
    check_shared_prefix(&gpt2, ops_cpu(), "gpt2 hd 4");
    check_shared_prefix(&wide, ops_cpu(), "llama hd 32");
    if (ops_cpu_bf16()) {
        check_shared_prefix(&llama, ops_cpu_bf16(), "llama hd 4 bf16");
        check_shared_prefix(&wide, ops_cpu_bf16(), "llama hd 32 bf16");
    }
}

/* ------------------------------------------------------------- errors ---- */

Test(model_errors, bad_config_and_batch) {
    PonderError err = {0};
    Model *m = NULL;
    ModelConfig c = small_config(MODEL_ARCH_LLAMA, true, false, 4);
    c.n_kv_head = 3;
    cr_expect_neq(model_create(&m, &c, &err), 0);
    cr_expect(strstr(err.msg, "n_kv_head") != NULL, "%s", err.msg);
    c = small_config(MODEL_ARCH_LLAMA, true, false, 4);
    cr_assert_eq(model_create(&m, &c, &err), 0);
    int32_t tok[2] = {1, 99}, tgt[2] = {1, 2};
    float mask[2] = {1, 1}, lp[2];
    ModelBatch b = {1, 2, tok, tgt, mask, NULL, 0.0f};
    cr_expect_neq(model_forward(m, &b, lp, NULL, NULL, &err), 0);
    cr_expect(strstr(err.msg, "token 99 at [0,1]") != NULL, "%s", err.msg);
    cr_expect_neq(model_backward(m, lp, NULL, NULL, &err), 0, "backward without forward");
    model_free(m);
}

/* ------------------------------------------------------------ overfit ---- */

Test(model_overfit, llama_drives_loss_below_005) {
    ModelConfig c = small_config(MODEL_ARCH_LLAMA, true, false, 2);
    c.d_model = 32;
    c.d_ff = 64;
    c.init_std = 0.05f;
    Model *m = NULL;
    PonderError err = {0};
    cr_assert_eq(model_create(&m, &c, &err), 0);
    model_init_weights(m, 1);
    Case k = make_case(4, 12, c.vocab_size, 2, 0);
    OptimSettings s = optim_settings_default();
    s.lr = 1e-2f;
    s.schedule = LR_CONSTANT;
    s.weight_decay = 0.0f;
    Optimizer opt;
    cr_assert_eq(optim_create(&opt, m, &s, &err), 0);
    size_t N = 48;
    float lp[48], dl[48];
    double loss = 0.0;
    for (int it = 0; it < 300; it++) {
        ModelBatch b = batch_of(&k);
        cr_assert_eq(model_forward(m, &b, lp, NULL, NULL, &err), 0, "%s", err.msg);
        double msum = 0.0;
        loss = 0.0;
        for (size_t i = 0; i < N; i++) msum += k.mask[i];
        for (size_t i = 0; i < N; i++) {
            loss -= k.mask[i] * lp[i] / msum;
            dl[i] = (float)(-k.mask[i] / msum);
        }
        model_zero_grad(m);
        cr_assert_eq(model_backward(m, dl, NULL, NULL, &err), 0);
        cr_assert_eq(optim_step(&opt, m, NULL, &err), 0, "%s", err.msg);
    }
    cr_log_info("overfit loss after 300 steps: %.4f", loss);
    cr_expect(loss < 0.05, "loss %.4f is not below 0.05", loss);
    optim_free(&opt);
    free_case(&k);
    model_free(m);
}

/* Regression: a batch with more sequences but fewer tokens than the previous
 * one must not reuse per-sequence buffers sized for the smaller B (found by
 * test_rl under ASan: SFT batches, then RL mini-batches). */
Test(model_errors, more_sequences_fewer_tokens_after_a_larger_batch) {
    ModelConfig c = small_config(MODEL_ARCH_LLAMA, true, false, 2);
    Model *m = NULL;
    PonderError err = {0};
    cr_assert_eq(model_create(&m, &c, &err), 0);
    model_init_weights(m, 1);
    Case big = make_case(2, 8, c.vocab_size, 1, 1), small = make_case(4, 3, c.vocab_size, 2, 1);
    float lp[32];
    ModelBatch b1 = batch_of(&big), b2 = batch_of(&small);
    cr_assert_eq(model_forward(m, &b1, lp, NULL, NULL, &err), 0, "%s", err.msg);
    cr_assert_eq(model_forward(m, &b2, lp, NULL, NULL, &err), 0, "%s", err.msg);
    for (int i = 0; i < 12; i++) cr_expect(lp[i] == lp[i], "NaN log-prob at %d", i);
    free_case(&big), free_case(&small);
    model_free(m);
}
