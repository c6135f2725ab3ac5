/* tests/fake_device.h — a checked stand-in for a GPU backend, for machines
 * without one. It is the CPU backend with `device` set: memory from its alloc
 * lives in a tracked arena, and every op first checks that each pointer it is
 * given lies inside an arena allocation (and that upload/download move data
 * between the arena and ordinary host memory). So the model's device code
 * path — staging the batch, host mirrors of the weights, the packed decode
 * step, kv_write and scale, the RL update's device path (the loss ops run
 * algos' own loops, algos/loss_core.h) — runs and is checked on any machine:
 * a host pointer handed to a "device" op aborts with the op's name. It also
 * counts transfers (and their bytes), so tests can assert what crosses to
 * the host.
 *
 * Used by tests/test_cuda.c to run the parity suite against this table where
 * there is no GPU. Header-only; not thread-safe (the model calls ops from one
 * thread). */
#ifndef PONDER_TESTS_FAKE_DEVICE_H
#define PONDER_TESTS_FAKE_DEVICE_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "algos/advantage_token.h" /* the advantages' reference loops */
#include "algos/loss_core.h"       /* the losses' reference loops */
#include "model/ops.h"
#include "trainer/rl_device.h" /* OpsPolicyLoss <-> AlgoPolicyConfig (header-only part) */

#define FAKE_MAX_ALLOCS 8192

static struct {
    char *ptr[FAKE_MAX_ALLOCS];
    size_t size[FAKE_MAX_ALLOCS];
    int n;
    long long ops, uploads, downloads, graph_captures, graph_launches;
    /* Transfer accounting for the RL update's tests: bytes moved, downloads
     * larger than FAKE_SMALL_DOWNLOAD (per-token arrays, not a loss's sums),
     * calls of the ops only the RL update's device path makes (the loss ops,
     * masked_max_abs_diff, copy_2d), and how many big downloads came after
     * the first of those since the counters were last cleared. */
    long long upload_bytes, download_bytes, big_downloads, rl_ops, big_downloads_after_rl_op;
} g_fake;

/* A loss op's sums are at most 12 doubles; anything above 256 bytes is an array. */
#define FAKE_SMALL_DOWNLOAD 256

static int fake_find(const void *p) {
    const char *c = p;
    for (int i = 0; i < g_fake.n; i++)
        if (c >= g_fake.ptr[i] && c < g_fake.ptr[i] + g_fake.size[i]) return i;
    return -1;
}

static void fake_need(const void *p, const char *op, const char *arg) {
    if (p && fake_find(p) < 0) {
        fprintf(stderr, "fake device: %s: argument %s (%p) is not device memory\n", op, arg, p);
        abort();
    }
}

static void fake_need_host(const void *p, const char *op, const char *arg) {
    if (p && fake_find(p) >= 0) {
        fprintf(stderr, "fake device: %s: argument %s (%p) is device memory, not host\n", op,
                arg, p);
        abort();
    }
}

#define NEED(p) fake_need((p), __func__, #p)

static void *fake_alloc(size_t bytes) {
    if (g_fake.n >= FAKE_MAX_ALLOCS) return NULL;
    char *p = calloc(1, bytes ? bytes : 1);
    if (!p) return NULL;
    g_fake.ptr[g_fake.n] = p;
    g_fake.size[g_fake.n] = bytes ? bytes : 1;
    g_fake.n++;
    return p;
}

static void fake_free(void *p) {
    if (!p) return;
    int i = fake_find(p);
    if (i < 0 || g_fake.ptr[i] != p) {
        fprintf(stderr, "fake device: free of %p, not an allocation\n", p);
        abort();
    }
    free(p);
    g_fake.n--;
    g_fake.ptr[i] = g_fake.ptr[g_fake.n];
    g_fake.size[i] = g_fake.size[g_fake.n];
}

static void fake_zero(void *p, size_t bytes) {
    NEED(p);
    memset(p, 0, bytes);
}
static void fake_copy(void *dst, const void *src, size_t bytes) {
    NEED(dst), NEED(src);
    memcpy(dst, src, bytes);
}
static void fake_upload(void *dst, const void *src, size_t bytes) {
    NEED(dst);
    fake_need_host(src, __func__, "src");
    g_fake.uploads++;
    g_fake.upload_bytes += (long long)bytes;
    memcpy(dst, src, bytes);
}
static void fake_download(void *dst, const void *src, size_t bytes) {
    NEED(src);
    fake_need_host(dst, __func__, "dst");
    g_fake.downloads++;
    g_fake.download_bytes += (long long)bytes;
    if (bytes > FAKE_SMALL_DOWNLOAD) {
        g_fake.big_downloads++;
        if (g_fake.rl_ops > 0) g_fake.big_downloads_after_rl_op++;
    }
    memcpy(dst, src, bytes);
}

#define CPU (ops_cpu())

static void fake_matmul_forward(float *out, const float *inp, const float *w, const float *bias,
                                int64_t N, int64_t C, int64_t OC) {
    NEED(out), NEED(inp), NEED(w), NEED(bias);
    g_fake.ops++;
    CPU->matmul_forward(out, inp, w, bias, N, C, OC);
}
static void fake_matmul_backward(float *dinp, float *dw, float *dbias, const float *dout,
                                 const float *inp, const float *w, int64_t N, int64_t C,
                                 int64_t OC) {
    NEED(dinp), NEED(dw), NEED(dbias), NEED(dout), NEED(inp), NEED(w);
    g_fake.ops++;
    CPU->matmul_backward(dinp, dw, dbias, dout, inp, w, N, C, OC);
}
static void fake_embedding_forward(float *out, const int32_t *tokens, const int32_t *pos,
                                   const float *wte, const float *wpe, int64_t N, int64_t C) {
    NEED(out), NEED(tokens), NEED(pos), NEED(wte), NEED(wpe);
    g_fake.ops++;
    CPU->embedding_forward(out, tokens, pos, wte, wpe, N, C);
}
static void fake_embedding_backward(float *dwte, float *dwpe, const float *dout,
                                    const int32_t *tokens, const int32_t *pos, int64_t N,
                                    int64_t C) {
    NEED(dwte), NEED(dwpe), NEED(dout), NEED(tokens), NEED(pos);
    g_fake.ops++;
    CPU->embedding_backward(dwte, dwpe, dout, tokens, pos, N, C);
}
static void fake_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *w,
                                 int64_t N, int64_t C, float eps) {
    NEED(out), NEED(rstd), NEED(inp), NEED(w);
    g_fake.ops++;
    CPU->rmsnorm_forward(out, rstd, inp, w, N, C, eps);
}
static void fake_rmsnorm_backward(float *dinp, float *dw, const float *dout, const float *inp,
                                  const float *w, const float *rstd, int64_t N, int64_t C) {
    NEED(dinp), NEED(dw), NEED(dout), NEED(inp), NEED(w), NEED(rstd);
    g_fake.ops++;
    CPU->rmsnorm_backward(dinp, dw, dout, inp, w, rstd, N, C);
}
static void fake_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                                   const float *w, const float *b, int64_t N, int64_t C,
                                   float eps) {
    NEED(out), NEED(mean), NEED(rstd), NEED(inp), NEED(w), NEED(b);
    g_fake.ops++;
    CPU->layernorm_forward(out, mean, rstd, inp, w, b, N, C, eps);
}
static void fake_layernorm_backward(float *dinp, float *dw, float *db, const float *dout,
                                    const float *inp, const float *w, const float *mean,
                                    const float *rstd, int64_t N, int64_t C) {
    NEED(dinp), NEED(dw), NEED(db), NEED(dout), NEED(inp), NEED(w), NEED(mean), NEED(rstd);
    g_fake.ops++;
    CPU->layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd, N, C);
}
static void fake_rope(OpsHeads x, const int32_t *pos, const float *cos_sin, int64_t N, int64_t H,
                      int64_t hd, int inverse) {
    NEED(x.base), NEED(pos), NEED(cos_sin);
    g_fake.ops++;
    CPU->rope(x, pos, cos_sin, N, H, hd, inverse);
}
static void fake_attention_forward(float *out, float *att, OpsHeads q, OpsHeads k, OpsHeads v,
                                   const int32_t *start, int64_t B, int64_t T, int64_t NH,
                                   int64_t KV, int64_t hd) {
    NEED(out), NEED(att), NEED(q.base), NEED(k.base), NEED(v.base), NEED(start);
    g_fake.ops++;
    CPU->attention_forward(out, att, q, k, v, start, B, T, NH, KV, hd);
}
static void fake_attention_backward(OpsHeads dq, OpsHeads dk, OpsHeads dv, const float *dout,
                                    const float *att, OpsHeads q, OpsHeads k, OpsHeads v,
                                    const int32_t *start, int64_t B, int64_t T, int64_t NH,
                                    int64_t KV, int64_t hd) {
    NEED(dq.base), NEED(dk.base), NEED(dv.base), NEED(dout), NEED(att), NEED(q.base);
    NEED(k.base), NEED(v.base), NEED(start);
    g_fake.ops++;
    CPU->attention_backward(dq, dk, dv, dout, att, q, k, v, start, B, T, NH, KV, hd);
}
static void fake_attention_cached(float *out, OpsHeads q, float *const *k_cache,
                                  float *const *v_cache, const int64_t *len, int64_t N,
                                  int64_t NH, int64_t KV, int64_t hd, int64_t max_len) {
    NEED(out), NEED(q.base), NEED(k_cache), NEED(v_cache), NEED(len);
    for (int64_t i = 0; i < N; i++) NEED(k_cache[i]), NEED(v_cache[i]);
    g_fake.ops++;
    CPU->attention_cached(out, q, k_cache, v_cache, len, N, NH, KV, hd, max_len);
}
static void fake_kv_write(float *const *k_cache, float *const *v_cache, OpsHeads k, OpsHeads v,
                          const int32_t *pos, int64_t N, int64_t KV, int64_t hd, int64_t max_len) {
    NEED(k_cache), NEED(v_cache), NEED(k.base), NEED(v.base), NEED(pos);
    g_fake.ops++;
    for (int64_t i = 0; i < N; i++) {
        NEED(k_cache[i]), NEED(v_cache[i]);
        for (int64_t h = 0; h < KV; h++) {
            size_t at = (size_t)((h * max_len + pos[i]) * hd);
            memcpy(k_cache[i] + at, k.base + i * k.row_stride + h * hd, (size_t)hd * sizeof(float));
            memcpy(v_cache[i] + at, v.base + i * v.row_stride + h * hd, (size_t)hd * sizeof(float));
        }
    }
}
/* The fused op as its definition: kv_write then attention_cached with
 * len = pos + 1; aborts when two rows share a cache (the op's precondition). */
static void fake_attention_cached_write(float *out, OpsHeads q, OpsHeads k, OpsHeads v,
                                        float *const *k_cache, float *const *v_cache,
                                        const int32_t *pos, int64_t N, int64_t NH, int64_t KV,
                                        int64_t hd, int64_t max_len) {
    NEED(out), NEED(q.base), NEED(k_cache), NEED(v_cache), NEED(pos);
    for (int64_t i = 0; i < N; i++)
        for (int64_t j = 0; j < i; j++)
            if (k_cache[i] == k_cache[j] || v_cache[i] == v_cache[j]) {
                fprintf(stderr, "fake device: attention_cached_write: rows %lld and %lld share a cache\n",
                        (long long)j, (long long)i);
                abort();
            }
    fake_kv_write(k_cache, v_cache, k, v, pos, N, KV, hd, max_len);
    int64_t *len = malloc((size_t)(N > 0 ? N : 1) * sizeof(int64_t));
    if (!len) abort();
    for (int64_t i = 0; i < N; i++) len[i] = (int64_t)pos[i] + 1;
    ops_cpu()->attention_cached(out, q, k_cache, v_cache, len, N, NH, KV, hd, max_len);
    free(len);
}
static void fake_swiglu_forward(float *out, const float *gate_up, int64_t N, int64_t F) {
    NEED(out), NEED(gate_up);
    g_fake.ops++;
    CPU->swiglu_forward(out, gate_up, N, F);
}
static void fake_swiglu_backward(float *dgate_up, const float *dout, const float *gate_up,
                                 int64_t N, int64_t F) {
    NEED(dgate_up), NEED(dout), NEED(gate_up);
    g_fake.ops++;
    CPU->swiglu_backward(dgate_up, dout, gate_up, N, F);
}
static void fake_gelu_forward(float *out, const float *inp, int64_t n) {
    NEED(out), NEED(inp);
    g_fake.ops++;
    CPU->gelu_forward(out, inp, n);
}
static void fake_gelu_backward(float *dinp, const float *inp, const float *dout, int64_t n) {
    NEED(dinp), NEED(inp), NEED(dout);
    g_fake.ops++;
    CPU->gelu_backward(dinp, inp, dout, n);
}
static void fake_add(float *out, const float *a, const float *b, int64_t n) {
    NEED(out), NEED(a), NEED(b);
    g_fake.ops++;
    CPU->add(out, a, b, n);
}
static void fake_accumulate(float *acc, const float *a, int64_t n) {
    NEED(acc), NEED(a);
    g_fake.ops++;
    CPU->accumulate(acc, a, n);
}
static void fake_scale(float *out, const float *inp, float s, int64_t n) {
    NEED(out), NEED(inp);
    g_fake.ops++;
    for (int64_t i = 0; i < n; i++) out[i] = inp[i] * s;
}
/* The fused linear sublayer as its definition: the CPU ops one by one, on
 * host temporaries. */
static void fake_linear_fused(float *out, const float *inp, const float *resid, const float *w,
                              const float *bias, const float *norm_w, const float *norm_b,
                              int64_t N, int64_t C, int64_t OC, int norm, float eps, int act) {
    NEED(out), NEED(inp), NEED(resid), NEED(w), NEED(bias), NEED(norm_w), NEED(norm_b);
    g_fake.ops++;
    const ModelOps *c = ops_cpu();
    float *h = NULL, *y = malloc((size_t)(N * OC > 0 ? N * OC : 1) * sizeof(float));
    float *stats = malloc((size_t)(2 * N > 0 ? 2 * N : 1) * sizeof(float));
    if (!y || !stats) abort();
    if (norm != OPS_NORM_NONE) {
        h = malloc((size_t)(N * C > 0 ? N * C : 1) * sizeof(float));
        if (!h) abort();
        if (norm == OPS_NORM_RMS) c->rmsnorm_forward(h, stats, inp, norm_w, N, C, eps);
        else c->layernorm_forward(h, stats, stats + N, inp, norm_w, norm_b, N, C, eps);
    }
    c->matmul_forward(y, h ? h : inp, w, bias, N, C, OC);
    if (act == OPS_ACT_GELU) c->gelu_forward(y, y, N * OC);
    if (resid) c->add(out, resid, y, N * OC);
    else memcpy(out, y, (size_t)(N * OC) * sizeof(float));
    free(h), free(y), free(stats);
}
static void fake_lm_head_forward(float *logp, float *entropy, float *lse, const float *h,
                                 const float *w, const int32_t *targets, const float *mask,
                                 int64_t N, int64_t C, int64_t V) {
    NEED(logp), NEED(entropy), NEED(lse), NEED(h), NEED(w), NEED(targets), NEED(mask);
    g_fake.ops++;
    CPU->lm_head_forward(logp, entropy, lse, h, w, targets, mask, N, C, V);
}
static void fake_lm_head_backward(float *dh, float *dw, const float *dlogp, const float *dentropy,
                                  const float *h, const float *w, const int32_t *targets,
                                  const float *lse, const float *mask, int64_t N, int64_t C,
                                  int64_t V) {
    NEED(dh), NEED(dw), NEED(dlogp), NEED(dentropy), NEED(h), NEED(w), NEED(targets);
    NEED(lse), NEED(mask);
    g_fake.ops++;
    CPU->lm_head_backward(dh, dw, dlogp, dentropy, h, w, targets, lse, mask, N, C, V);
}
static double fake_sum_squares(const float *x, int64_t n) {
    NEED(x);
    g_fake.ops++;
    return CPU->sum_squares(x, n);
}
static void fake_adamw(float *param, const float *grad, float *m, float *v, int64_t n, float lr,
                       float beta1, float beta2, float eps, float weight_decay, float grad_scale,
                       int64_t t) {
    NEED(param), NEED(grad), NEED(m), NEED(v);
    g_fake.ops++;
    CPU->adamw(param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, grad_scale, t);
}

/* The RL loss ops as their definition: algos' loops (algos/loss_core.h, the
 * code algo_policy_loss and algo_value_loss run) on the arena's memory. */
static void fake_policy_loss(float *dlogp, float *dentropy, double *sums, const float *logp,
                             const float *entropy, const float *old_logp, const float *ref_logp,
                             const float *advantages, const float *mask, OpsPolicyLoss cfg,
                             int64_t S, int64_t T) {
    NEED(dlogp), NEED(dentropy), NEED(sums), NEED(logp), NEED(entropy), NEED(old_logp);
    NEED(ref_logp), NEED(advantages), NEED(mask);
    g_fake.ops++;
    g_fake.rl_ops++;
    AlgoBatch b = {S, T, mask};
    AlgoPolicyConfig c = rl_device_algo_policy_cfg(&cfg);
    AlgoPolicyInputs in = {logp, old_logp, ref_logp, advantages, entropy};
    AlgoPolicySums acc;
    algo_core_policy_loss(&b, &c, &in, cfg.denom, &acc, dlogp, dentropy);
    const double v[OPS_POLICY_NSUMS] = {acc.pg,    acc.kl,   acc.ent,   acc.tokens,
                                        acc.low,   acc.high, acc.dual,  acc.ratio,
                                        acc.kl_sum, acc.old_kl, acc.ent_sum};
    memcpy(sums, v, sizeof v);
}
static void fake_value_loss(float *dvalues, double *sums, const float *values,
                            const float *old_values, const float *returns, const float *mask,
                            OpsValueLoss cfg, int64_t S, int64_t T) {
    NEED(dvalues), NEED(sums), NEED(values), NEED(old_values), NEED(returns), NEED(mask);
    g_fake.ops++;
    g_fake.rl_ops++;
    AlgoBatch b = {S, T, mask};
    AlgoValueConfig c = rl_device_algo_value_cfg(&cfg);
    AlgoValueSums acc;
    algo_core_value_loss(&b, &c, values, old_values, returns, cfg.denom, &acc, dvalues);
    const double v[OPS_VALUE_NSUMS] = {acc.loss, acc.clipped, acc.tokens, acc.value_sum};
    memcpy(sums, v, sizeof v);
}
static void fake_masked_max_abs_diff(double *out, const float *a, const float *b,
                                     const float *mask, int64_t n) {
    NEED(out), NEED(a), NEED(b), NEED(mask);
    g_fake.ops++;
    g_fake.rl_ops++;
    double m = 0.0;
    for (int64_t i = 0; i < n; i++) {
        if (mask[i] == 0.0f) continue;
        double d = fabs((double)a[i] - (double)b[i]);
        m = d > m ? d : m;
    }
    *out = m;
}
static void fake_token_advantages(float *adv, float *returns, double *kl_sum,
                                  const double *scores, const float *old_logp,
                                  const float *ref_logp, const float *values, const float *mask,
                                  OpsAdvantage cfg, int64_t S, int64_t T) {
    NEED(adv), NEED(returns), NEED(kl_sum), NEED(scores), NEED(old_logp), NEED(ref_logp);
    NEED(values), NEED(mask);
    g_fake.ops++;
    g_fake.rl_ops++;
    const int use_kl = old_logp && ref_logp;
    double seq_sum = 0.0; /* algo_token_rewards' loop, then algo_gae's or the returns' */
    for (int64_t i = 0; i < S; i++) {
        const int64_t row = i * T;
        int has_tokens;
        double kl_mean = algo_token_rewards_row(
            mask + row, T, scores[i], use_kl ? old_logp + row : NULL,
            use_kl ? ref_logp + row : NULL, use_kl, cfg.kl_estimator, cfg.kl_clamp, cfg.kl_coef,
            returns + row, &has_tokens);
        if (has_tokens) seq_sum += kl_mean;
        if (cfg.kind == OPS_ADV_GAE)
            algo_token_gae_row(mask + row, T, returns + row, values + row, cfg.gamma, cfg.lambda,
                               adv + row, returns + row);
        else
            algo_token_returns_row(mask + row, T, returns + row, cfg.gamma, returns + row);
    }
    *kl_sum = use_kl ? seq_sum : 0.0;
}
static void fake_masked_moments(double *out, const float *x, const float *mask, int64_t n) {
    NEED(out), NEED(x), NEED(mask);
    g_fake.ops++;
    g_fake.rl_ops++;
    double m[3] = {0.0, 0.0, 0.0}; /* algo_moments_tokens' loop */
    for (int64_t k = 0; k < n; k++) {
        if (mask[k] == 0.0f) continue;
        double v = x[k];
        m[0] += 1.0;
        m[1] += v;
        m[2] += v * v;
    }
    memcpy(out, m, sizeof m);
}
static void fake_whiten(float *out, const float *x, const float *mask, double mean, double scale,
                        int64_t n) {
    NEED(out), NEED(x), NEED(mask);
    g_fake.ops++;
    g_fake.rl_ops++;
    for (int64_t k = 0; k < n; k++) out[k] = algo_token_whiten(mask[k], x[k], mean, scale);
}
static void fake_copy_2d(float *dst, int64_t dst_stride, const float *src, int64_t src_stride,
                         int64_t rows, int64_t cols) {
    NEED(dst), NEED(src);
    if (rows > 0) NEED(dst + (rows - 1) * dst_stride + cols - 1), NEED(src + (rows - 1) * src_stride + cols - 1);
    g_fake.ops++;
    g_fake.rl_ops++;
    for (int64_t r = 0; r < rows; r++)
        memcpy(dst + r * dst_stride, src + r * src_stride, (size_t)cols * sizeof(float));
}

/* Graphs as the GPU has them: capture records the step without running it,
 * each launch runs it again from the same ctx (a replay re-issues the same
 * ops with the same arguments; what varies must be read from the arena). */
typedef struct FakeGraph {
    void (*body)(void *);
    void *ctx;
} FakeGraph;

static void *fake_graph_capture(void (*body)(void *), void *ctx) {
    FakeGraph *g = malloc(sizeof *g);
    if (!g) return NULL;
    g->body = body, g->ctx = ctx;
    g_fake.graph_captures++;
    return g;
}
static void fake_graph_launch(void *graph) {
    FakeGraph *g = graph;
    g_fake.graph_launches++;
    g->body(g->ctx);
}
static void fake_graph_free(void *graph) { free(graph); }

#undef NEED
#undef CPU

static const ModelOps FAKE_DEVICE_OPS = {
    .name = "fake-device",
    .alloc = fake_alloc,
    .free = fake_free,
    .zero = fake_zero,
    .copy = fake_copy,
    .device = 1,
    .upload = fake_upload,
    .download = fake_download,
    .matmul_forward = fake_matmul_forward,
    .matmul_backward = fake_matmul_backward,
    .embedding_forward = fake_embedding_forward,
    .embedding_backward = fake_embedding_backward,
    .rmsnorm_forward = fake_rmsnorm_forward,
    .rmsnorm_backward = fake_rmsnorm_backward,
    .layernorm_forward = fake_layernorm_forward,
    .layernorm_backward = fake_layernorm_backward,
    .rope = fake_rope,
    .attention_forward = fake_attention_forward,
    .attention_backward = fake_attention_backward,
    .attention_cached = fake_attention_cached,
    .kv_write = fake_kv_write,
    .attention_cached_write = fake_attention_cached_write,
    .swiglu_forward = fake_swiglu_forward,
    .swiglu_backward = fake_swiglu_backward,
    .gelu_forward = fake_gelu_forward,
    .gelu_backward = fake_gelu_backward,
    .add = fake_add,
    .accumulate = fake_accumulate,
    .scale = fake_scale,
    .linear_fused = fake_linear_fused,
    .lm_head_forward = fake_lm_head_forward,
    .lm_head_backward = fake_lm_head_backward,
    .graph_capture = fake_graph_capture,
    .graph_launch = fake_graph_launch,
    .graph_free = fake_graph_free,
    .policy_loss = fake_policy_loss,
    .value_loss = fake_value_loss,
    .masked_max_abs_diff = fake_masked_max_abs_diff,
    .token_advantages = fake_token_advantages,
    .masked_moments = fake_masked_moments,
    .whiten = fake_whiten,
    .copy_2d = fake_copy_2d,
    .sum_squares = fake_sum_squares,
    .adamw = fake_adamw,
};

#endif
