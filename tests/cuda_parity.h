/* tests/cuda_parity.h — the CUDA parity suite: every op of the CUDA backend,
 * forward and backward, against the CPU backend on fresh random inputs, then
 * whole-model training steps (forward, backward, AdamW) and KV-cache decoding.
 *
 * Header-only (static functions) so that two programs share it:
 * tests/test_cuda.c (Criterion; every test skips on machines without a GPU)
 * and bench/gpu_bench.c (a standalone runner for GPU machines that have no
 * Criterion: `gpu_bench --parity`). Each check prints one line:
 *     ok   <what>  rel <error> (tol <tol>)
 * where rel = max|gpu - cpu| / max|cpu| over the compared values.
 *
 * Inputs are drawn from a seed printed at the start; PONDER_PARITY_SEED=<n>
 * replays a run. */
#ifndef PONDER_TESTS_CUDA_PARITY_H
#define PONDER_TESTS_CUDA_PARITY_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "algos/advantage_token.h" /* the advantages' row loops: the reference of their ops */
#include "algos/loss_core.h"     /* the losses' host loops: the reference of the loss ops */
#include "model/model.h"
#include "model/ops.h"
#include "trainer/optim.h"
#include "trainer/rl_device.h"     /* AlgoPolicyConfig -> OpsPolicyLoss (header-only part) */
#include "util/rng.h"
#ifdef PONDER_HAVE_CUDA
#include "model/cuda/cuda_backend.h" /* cuda_set_bf16 */
#endif

#define PARITY_FN static __attribute__((unused))
#define PARITY_TOL 1e-5      /* every op, fp32 */
#define PARITY_STEP_TOL 1e-4 /* whole-model gradients and updated weights, per tensor */
#define PARITY_BF16_TOL 1e-2 /* the same checks with bf16 products (fp32 accumulation) */
#define PARITY_MAX_ALLOCS 4096

typedef struct Parity {
    const ModelOps *cpu, *gpu;
    Rng rng;
    uint64_t seed;
    int checks, failed;
    double worst; /* largest err/tol seen */
    /* while a case reruns others in another precision (parity_bf16): no
     * tolerance below tol_floor, and every check's name starts with tag */
    double tol_floor;
    const char *tag;
    char failures[4096];
    void *host[PARITY_MAX_ALLOCS], *dev[PARITY_MAX_ALLOCS];
    int n_host, n_dev;
} Parity;

PARITY_FN uint64_t parity_seed(void) {
    const char *s = getenv("PONDER_PARITY_SEED");
    if (s && *s) return strtoull(s, NULL, 10);
    return (uint64_t)time(NULL);
}

PARITY_FN void parity_init(Parity *p, const ModelOps *gpu, uint64_t seed) {
    memset(p, 0, sizeof *p);
    p->cpu = ops_cpu();
    p->gpu = gpu;
    p->seed = seed;
    p->rng = rng_from_seed(seed);
}

/* Frees every buffer the checks made. */
PARITY_FN void parity_release(Parity *p) {
    for (int i = 0; i < p->n_host; i++) free(p->host[i]);
    for (int i = 0; i < p->n_dev; i++) p->gpu->free(p->dev[i]);
    p->n_host = p->n_dev = 0;
}

PARITY_FN void *parity_track_host(Parity *p, void *x) {
    if (!x || p->n_host >= PARITY_MAX_ALLOCS) {
        fprintf(stderr, "parity: out of host memory or allocation slots\n");
        abort();
    }
    p->host[p->n_host++] = x;
    return x;
}

PARITY_FN void *hbuf(Parity *p, size_t bytes) {
    return parity_track_host(p, calloc(1, bytes ? bytes : 1));
}

PARITY_FN void *dbuf(Parity *p, size_t bytes) {
    void *x = p->gpu->alloc(bytes);
    if (!x || p->n_dev >= PARITY_MAX_ALLOCS) {
        fprintf(stderr, "parity: out of device memory or allocation slots (%zu bytes)\n", bytes);
        abort();
    }
    p->dev[p->n_dev++] = x;
    return x;
}

/* A device copy of host memory. */
PARITY_FN void *up(Parity *p, const void *host, size_t bytes) {
    if (!host) return NULL;
    void *d = dbuf(p, bytes);
    p->gpu->upload(d, host, bytes);
    return d;
}

/* A host copy of host memory. */
PARITY_FN void *dup_host(Parity *p, const void *src, size_t bytes) {
    if (!src) return NULL;
    void *h = hbuf(p, bytes);
    memcpy(h, src, bytes);
    return h;
}

PARITY_FN float *rnd(Parity *p, int64_t n, double scale) {
    float *x = hbuf(p, (size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) x[i] = (float)(scale * rng_normal(&p->rng));
    return x;
}

PARITY_FN int32_t *rnd_ids(Parity *p, int64_t n, int64_t below) {
    int32_t *x = hbuf(p, (size_t)n * sizeof(int32_t));
    for (int64_t i = 0; i < n; i++) x[i] = (int32_t)rng_below(&p->rng, (uint64_t)below);
    return x;
}

/* Records one result: prints its line and remembers a failure. */
PARITY_FN int parity_record(Parity *p, const char *what_in, double rel, double tol, double ref_max) {
    char what[200];
    snprintf(what, sizeof what, "%s%s", p->tag ? p->tag : "", what_in);
    if (tol < p->tol_floor) tol = p->tol_floor;
    if (isnan(rel)) rel = INFINITY;
    int ok = rel <= tol;
    p->checks++;
    double ratio = tol > 0.0 ? rel / tol : (rel > 0.0 ? INFINITY : 0.0);
    if (ratio > p->worst) p->worst = ratio;
    printf("  %-4s %-60s rel %.3e (tol %.0e, max|cpu| %.2e)\n", ok ? "ok" : "FAIL", what, rel,
           tol, ref_max);
    fflush(stdout);
    if (!ok) {
        p->failed++;
        size_t len = strlen(p->failures);
        snprintf(p->failures + len, sizeof p->failures - len, "%s%s (rel %.3e > %.0e)",
                 len ? "; " : "", what, rel, tol);
    }
    return ok;
}

/* max|got - want| / max|want| (a NaN in got counts as infinite). */
PARITY_FN double parity_rel(const float *got, const float *want, int64_t n, double *ref_max) {
    double md = 0.0, mw = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)want[i]);
        if (isnan(d)) d = INFINITY;
        if (d > md) md = d;
        if (fabs((double)want[i]) > mw) mw = fabs((double)want[i]);
    }
    if (ref_max) *ref_max = mw;
    return mw > 0.0 ? md / mw : md;
}

/* Records one comparison of `got` (host) against `want` (host, the CPU's). */
PARITY_FN int parity_compare_host(Parity *p, const char *what, const float *got,
                                  const float *want, int64_t n, double tol) {
    double mw;
    double rel = parity_rel(got, want, n, &mw);
    return parity_record(p, what, rel, tol, mw);
}

/* Records a failure that is not a comparison (set-up, an error return). */
PARITY_FN void parity_fail(Parity *p, const char *what) {
    parity_record(p, what, INFINITY, 0.0, 0.0);
}

/* Downloads `dev` (n floats on the GPU) and compares it with `want`. */
PARITY_FN int parity_compare(Parity *p, const char *what, const float *dev, const float *want,
                             int64_t n, double tol) {
    float *got = hbuf(p, (size_t)n * sizeof(float));
    p->gpu->download(got, dev, (size_t)n * sizeof(float));
    return parity_compare_host(p, what, got, want, n, tol);
}

#define F4(n) ((size_t)(n) * sizeof(float))
#define I4(n) ((size_t)(n) * sizeof(int32_t))

/* ------------------------------------------------------------- linear ---- */

PARITY_FN void parity_matmul(Parity *p) {
    const ModelOps *c = p->cpu, *g = p->gpu;
    /* from the third on the CUDA backend's small-N GEMV: scalar and float4
     * loads, several warps per output (1x768x50), inputs read from global
     * memory (8x3072x64: too large for shared memory), more output rows than
     * the persistent grid has warps (1x64x40000) */
    const int64_t shapes[][3] = {{37, 70, 51}, {256, 256, 512}, {5, 33, 1}, {3, 64, 300},
                                 {1, 768, 50}, {8, 3072, 64}, {1, 64, 40000}};
    char what[128];
    for (int s = 0; s < (int)(sizeof shapes / sizeof shapes[0]); s++)
        for (int with_bias = 0; with_bias < 2; with_bias++) {
            const int64_t N = shapes[s][0], C = shapes[s][1], OC = shapes[s][2];
            float *inp = rnd(p, N * C, 1.0), *w = rnd(p, OC * C, 0.5);
            float *bias = with_bias ? rnd(p, OC, 1.0) : NULL;
            float *out = hbuf(p, F4(N * OC)), *d_out = dbuf(p, F4(N * OC));
            float *d_inp = up(p, inp, F4(N * C)), *d_w = up(p, w, F4(OC * C));
            float *d_bias = up(p, bias, F4(OC));
            c->matmul_forward(out, inp, w, bias, N, C, OC);
            g->matmul_forward(d_out, d_inp, d_w, d_bias, N, C, OC);
            snprintf(what, sizeof what, "matmul_forward %lldx%lldx%lld%s", (long long)N,
                     (long long)C, (long long)OC, with_bias ? " +bias" : "");
            parity_compare(p, what, d_out, out, N * OC, PARITY_TOL);

            /* backward accumulates: start every gradient from random values */
            float *dout = rnd(p, N * OC, 1.0);
            float *dinp = rnd(p, N * C, 1.0), *dw = rnd(p, OC * C, 1.0), *db = rnd(p, OC, 1.0);
            float *g_dinp = up(p, dinp, F4(N * C)), *g_dw = up(p, dw, F4(OC * C));
            float *g_db = up(p, db, F4(OC)), *g_dout = up(p, dout, F4(N * OC));
            const int skip_dinp = s == 2; /* also the NULL-input form */
            c->matmul_backward(skip_dinp ? NULL : dinp, dw, with_bias ? db : NULL, dout, inp, w, N,
                               C, OC);
            g->matmul_backward(skip_dinp ? NULL : g_dinp, g_dw, with_bias ? g_db : NULL, g_dout,
                               d_inp, d_w, N, C, OC);
            snprintf(what, sizeof what, "matmul_backward dinp %lldx%lldx%lld", (long long)N,
                     (long long)C, (long long)OC);
            parity_compare(p, what, g_dinp, dinp, N * C, PARITY_TOL);
            snprintf(what, sizeof what, "matmul_backward dw %lldx%lldx%lld", (long long)N,
                     (long long)C, (long long)OC);
            parity_compare(p, what, g_dw, dw, OC * C, PARITY_TOL);
            if (with_bias) {
                snprintf(what, sizeof what, "matmul_backward dbias %lldx%lldx%lld", (long long)N,
                         (long long)C, (long long)OC);
                parity_compare(p, what, g_db, db, OC, PARITY_TOL);
            }
        }
}

/* --------------------------------------------------------- embeddings ---- */

PARITY_FN void parity_embedding(Parity *p) {
    const ModelOps *c = p->cpu, *g = p->gpu;
    const int64_t N = 300, C = 97, V = 11, P = 20; /* few ids: many repeats */
    for (int with_pos = 0; with_pos < 2; with_pos++) {
        int32_t *tok = rnd_ids(p, N, V), *pos = rnd_ids(p, N, P);
        float *wte = rnd(p, V * C, 1.0), *wpe = with_pos ? rnd(p, P * C, 1.0) : NULL;
        float *out = hbuf(p, F4(N * C)), *d_out = dbuf(p, F4(N * C));
        int32_t *d_tok = up(p, tok, I4(N)), *d_pos = up(p, pos, I4(N));
        c->embedding_forward(out, tok, pos, wte, wpe, N, C);
        g->embedding_forward(d_out, d_tok, d_pos, up(p, wte, F4(V * C)), up(p, wpe, F4(P * C)), N,
                             C);
        parity_compare(p, with_pos ? "embedding_forward +wpe" : "embedding_forward", d_out, out,
                       N * C, PARITY_TOL);
        float *dout = rnd(p, N * C, 1.0), *dwte = rnd(p, V * C, 1.0);
        float *dwpe = with_pos ? rnd(p, P * C, 1.0) : NULL;
        float *g_dwte = up(p, dwte, F4(V * C)), *g_dwpe = up(p, dwpe, F4(P * C));
        c->embedding_backward(dwte, dwpe, dout, tok, pos, N, C);
        g->embedding_backward(g_dwte, g_dwpe, up(p, dout, F4(N * C)), d_tok, d_pos, N, C);
        parity_compare(p, "embedding_backward dwte", g_dwte, dwte, V * C, PARITY_TOL);
        if (with_pos) parity_compare(p, "embedding_backward dwpe", g_dwpe, dwpe, P * C, PARITY_TOL);
    }
}

/* -------------------------------------------------------------- norms ---- */

PARITY_FN void parity_norms(Parity *p) {
    const ModelOps *c = p->cpu, *g = p->gpu;
    const int64_t shapes[][2] = {{29, 67}, {130, 768}};
    char what[128];
    for (int s = 0; s < 2; s++) {
        const int64_t N = shapes[s][0], C = shapes[s][1];
        const float eps = 1e-5f;
        float *x = rnd(p, N * C, 2.0), *w = rnd(p, C, 1.0), *b = rnd(p, C, 1.0);
        float *dout = rnd(p, N * C, 1.0);
        float *d_x = up(p, x, F4(N * C)), *d_w = up(p, w, F4(C)), *d_b = up(p, b, F4(C));
        float *d_dout = up(p, dout, F4(N * C));
        /* RMSNorm */
        float *out = hbuf(p, F4(N * C)), *rstd = hbuf(p, F4(N));
        float *g_out = dbuf(p, F4(N * C)), *g_rstd = dbuf(p, F4(N));
        c->rmsnorm_forward(out, rstd, x, w, N, C, eps);
        g->rmsnorm_forward(g_out, g_rstd, d_x, d_w, N, C, eps);
        snprintf(what, sizeof what, "rmsnorm_forward %lldx%lld", (long long)N, (long long)C);
        parity_compare(p, what, g_out, out, N * C, PARITY_TOL);
        parity_compare(p, "rmsnorm_forward rstd", g_rstd, rstd, N, PARITY_TOL);
        float *dinp = rnd(p, N * C, 1.0), *dw = rnd(p, C, 1.0);
        float *g_dinp = up(p, dinp, F4(N * C)), *g_dw = up(p, dw, F4(C));
        c->rmsnorm_backward(dinp, dw, dout, x, w, rstd, N, C);
        g->rmsnorm_backward(g_dinp, g_dw, d_dout, d_x, d_w, up(p, rstd, F4(N)), N, C);
        snprintf(what, sizeof what, "rmsnorm_backward dinp %lldx%lld", (long long)N, (long long)C);
        parity_compare(p, what, g_dinp, dinp, N * C, PARITY_TOL);
        parity_compare(p, "rmsnorm_backward dw", g_dw, dw, C, PARITY_TOL);
        /* LayerNorm */
        float *mean = hbuf(p, F4(N)), *g_mean = dbuf(p, F4(N));
        c->layernorm_forward(out, mean, rstd, x, w, b, N, C, eps);
        g->layernorm_forward(g_out, g_mean, g_rstd, d_x, d_w, d_b, N, C, eps);
        snprintf(what, sizeof what, "layernorm_forward %lldx%lld", (long long)N, (long long)C);
        parity_compare(p, what, g_out, out, N * C, PARITY_TOL);
        parity_compare(p, "layernorm_forward mean", g_mean, mean, N, PARITY_TOL);
        parity_compare(p, "layernorm_forward rstd", g_rstd, rstd, N, PARITY_TOL);
        float *db = rnd(p, C, 1.0), *g_db = up(p, db, F4(C));
        p->gpu->upload(g_dinp, dinp, F4(N * C));
        p->gpu->upload(g_dw, dw, F4(C));
        c->layernorm_backward(dinp, dw, db, dout, x, w, mean, rstd, N, C);
        g->layernorm_backward(g_dinp, g_dw, g_db, d_dout, d_x, d_w, up(p, mean, F4(N)),
                              up(p, rstd, F4(N)), N, C);
        snprintf(what, sizeof what, "layernorm_backward dinp %lldx%lld", (long long)N,
                 (long long)C);
        parity_compare(p, what, g_dinp, dinp, N * C, PARITY_TOL);
        parity_compare(p, "layernorm_backward dw", g_dw, dw, C, PARITY_TOL);
        parity_compare(p, "layernorm_backward db", g_db, db, C, PARITY_TOL);
    }
}

/* --------------------------------------------------------------- RoPE ---- */

PARITY_FN void parity_rope(Parity *p) {
    const ModelOps *c = p->cpu, *g = p->gpu;
    const int64_t N = 23, H = 3, hd = 8, stride = 5 * hd, maxpos = 40, half = hd / 2;
    float *cs = hbuf(p, F4(maxpos * hd));
    for (int64_t q = 0; q < maxpos; q++)
        for (int64_t i = 0; i < half; i++) {
            double f = pow(10000.0, -2.0 * (double)i / (double)hd);
            cs[(q * half + i) * 2] = (float)cos((double)q * f);
            cs[(q * half + i) * 2 + 1] = (float)sin((double)q * f);
        }
    float *x = rnd(p, N * stride, 1.0);
    int32_t *pos = rnd_ids(p, N, maxpos);
    float *g_x = up(p, x, F4(N * stride));
    float *d_cs = up(p, cs, F4(maxpos * hd));
    int32_t *d_pos = up(p, pos, I4(N));
    for (int inverse = 0; inverse < 2; inverse++) {
        OpsHeads hx = {x + hd, stride}, gx = {g_x + hd, stride}; /* heads start one head in */
        c->rope(hx, pos, cs, N, H, hd, inverse);
        g->rope(gx, d_pos, d_cs, N, H, hd, inverse);
        parity_compare(p, inverse ? "rope inverse (strided heads)" : "rope (strided heads)", g_x,
                       x, N * stride, PARITY_TOL);
    }
}

/* ---------------------------------------------------------- attention ---- */

PARITY_FN void parity_attention_case(Parity *p, int64_t B, int64_t T, int64_t NH, int64_t KV,
                                     int64_t hd, int with_start) {
    const ModelOps *c = p->cpu, *g = p->gpu;
    const int64_t N = B * T, QKV = (NH + 2 * KV) * hd, AD = NH * hd, att_n = B * NH * T * T;
    char what[160], tag[64];
    snprintf(tag, sizeof tag, "B%lld T%lld NH%lld KV%lld hd%lld%s", (long long)B, (long long)T,
             (long long)NH, (long long)KV, (long long)hd, with_start ? " start" : "");
    float *qkv = rnd(p, N * QKV, 1.0);
    int32_t *start = NULL;
    if (with_start) {
        start = hbuf(p, I4(B));
        for (int64_t b = 0; b < B; b++) start[b] = (int32_t)((b * 5) % T);
    }
    float *g_qkv = up(p, qkv, F4(N * QKV));
    int32_t *g_start = up(p, start, I4(B));
    OpsHeads q = {qkv, QKV}, k = {qkv + AD, QKV}, v = {qkv + AD + KV * hd, QKV};
    OpsHeads gq = {g_qkv, QKV}, gk = {g_qkv + AD, QKV}, gv = {g_qkv + AD + KV * hd, QKV};
    float *out = hbuf(p, F4(N * AD)), *att = hbuf(p, F4(att_n));
    float *g_out = dbuf(p, F4(N * AD)), *g_att = dbuf(p, F4(att_n));
    c->attention_forward(out, att, q, k, v, start, B, T, NH, KV, hd);
    g->attention_forward(g_out, g_att, gq, gk, gv, g_start, B, T, NH, KV, hd);
    snprintf(what, sizeof what, "attention_forward out %s", tag);
    parity_compare(p, what, g_out, out, N * AD, PARITY_TOL);
    snprintf(what, sizeof what, "attention_forward att %s", tag);
    parity_compare(p, what, g_att, att, att_n, PARITY_TOL);

    float *dout = rnd(p, N * AD, 1.0), *dqkv = rnd(p, N * QKV, 1.0);
    float *g_dqkv = up(p, dqkv, F4(N * QKV));
    OpsHeads dq = {dqkv, QKV}, dk = {dqkv + AD, QKV}, dv = {dqkv + AD + KV * hd, QKV};
    OpsHeads gdq = {g_dqkv, QKV}, gdk = {g_dqkv + AD, QKV}, gdv = {g_dqkv + AD + KV * hd, QKV};
    c->attention_backward(dq, dk, dv, dout, att, q, k, v, start, B, T, NH, KV, hd);
    g->attention_backward(gdq, gdk, gdv, up(p, dout, F4(N * AD)), up(p, att, F4(att_n)), gq, gk,
                          gv, g_start, B, T, NH, KV, hd);
    snprintf(what, sizeof what, "attention_backward dqkv %s", tag);
    parity_compare(p, what, g_dqkv, dqkv, N * QKV, PARITY_TOL);
}

PARITY_FN void parity_attention(Parity *p) {
    parity_attention_case(p, 3, 19, 4, 2, 8, 1);   /* grouped-query, left padding */
    parity_attention_case(p, 2, 64, 4, 4, 32, 0);  /* multi-head, no padding */
    parity_attention_case(p, 1, 130, 6, 1, 16, 1); /* multi-query */
}

/* Cached attention and the cache write of decoding. The CPU table has no
 * kv_write (the model copies with memcpy there); its reference is the loop. */
PARITY_FN void parity_attention_cached(Parity *p) {
    const ModelOps *c = p->cpu, *g = p->gpu;
    const int64_t N = 6, NH = 4, KV = 2, hd = 16, max_len = 40, QKV = (NH + 2 * KV) * hd;
    const int64_t AD = NH * hd, blk = KV * max_len * hd;
    const int64_t lens[6] = {1, 7, 40, 13, 2, 33};
    float *cache_k = rnd(p, N * blk, 1.0), *cache_v = rnd(p, N * blk, 1.0);
    float *g_ck = up(p, cache_k, F4(N * blk)), *g_cv = up(p, cache_v, F4(N * blk));
    float *qkv = rnd(p, N * QKV, 1.0), *g_qkv = up(p, qkv, F4(N * QKV));
    int32_t *pos = hbuf(p, I4(N));
    int64_t *len = hbuf(p, (size_t)N * sizeof(int64_t));
    float **kp = hbuf(p, (size_t)N * sizeof(float *)), **vp = hbuf(p, (size_t)N * sizeof(float *));
    float **gkp = hbuf(p, (size_t)N * sizeof(float *)), **gvp = hbuf(p, (size_t)N * sizeof(float *));
    for (int64_t i = 0; i < N; i++) {
        /* rows use the slots in reverse order, as decode's slot lists may */
        int64_t slot = N - 1 - i;
        pos[i] = (int32_t)(lens[i] - 1);
        len[i] = lens[i];
        kp[i] = cache_k + slot * blk, vp[i] = cache_v + slot * blk;
        gkp[i] = g_ck + slot * blk, gvp[i] = g_cv + slot * blk;
    }
    /* reference write */
    for (int64_t i = 0; i < N; i++)
        for (int64_t h = 0; h < KV; h++) {
            memcpy(kp[i] + (h * max_len + pos[i]) * hd, qkv + i * QKV + AD + h * hd, F4(hd));
            memcpy(vp[i] + (h * max_len + pos[i]) * hd, qkv + i * QKV + AD + (KV + h) * hd, F4(hd));
        }
    float *const *d_kp = up(p, gkp, (size_t)N * sizeof(float *));
    float *const *d_vp = up(p, gvp, (size_t)N * sizeof(float *));
    int32_t *d_pos = up(p, pos, I4(N));
    OpsHeads gk = {g_qkv + AD, QKV}, gv = {g_qkv + AD + KV * hd, QKV};
    if (!g->kv_write) {
        parity_fail(p, "kv_write missing from the CUDA table");
        return;
    }
    g->kv_write(d_kp, d_vp, gk, gv, d_pos, N, KV, hd, max_len);
    parity_compare(p, "kv_write k cache", g_ck, cache_k, N * blk, 0.0);
    parity_compare(p, "kv_write v cache", g_cv, cache_v, N * blk, 0.0);
    float *out = hbuf(p, F4(N * AD)), *g_out = dbuf(p, F4(N * AD));
    OpsHeads q = {qkv, QKV}, gq = {g_qkv, QKV};
    c->attention_cached(out, q, kp, vp, len, N, NH, KV, hd, max_len);
    g->attention_cached(g_out, gq, d_kp, d_vp, up(p, len, (size_t)N * sizeof(int64_t)), N, NH, KV,
                        hd, max_len);
    parity_compare(p, "attention_cached", g_out, out, N * AD, PARITY_TOL);
}

/* The fused cache write + attention of a decode step (optional op): rows
 * with pairwise different caches, against the CPU's attention_cached after
 * the reference write; keys up to 600 (more than a block's threads), GQA,
 * head sizes with and without float4 loads. */
PARITY_FN void parity_attention_cached_write_case(Parity *p, int64_t NH, int64_t KV, int64_t hd,
                                                  int64_t max_len, const int64_t *lens, int64_t N) {
    const ModelOps *c = p->cpu, *g = p->gpu;
    const int64_t QKV = (NH + 2 * KV) * hd, AD = NH * hd, blk = KV * max_len * hd, S = N + 1;
    char what[160];
    float *cache_k = rnd(p, S * blk, 1.0), *cache_v = rnd(p, S * blk, 1.0);
    float *g_ck = up(p, cache_k, F4(S * blk)), *g_cv = up(p, cache_v, F4(S * blk));
    float *qkv = rnd(p, N * QKV, 1.0), *g_qkv = up(p, qkv, F4(N * QKV));
    int32_t *pos = hbuf(p, I4(N));
    int64_t *len = hbuf(p, (size_t)N * sizeof(int64_t));
    float **kp = hbuf(p, (size_t)N * sizeof(float *)), **vp = hbuf(p, (size_t)N * sizeof(float *));
    float **gkp = hbuf(p, (size_t)N * sizeof(float *)), **gvp = hbuf(p, (size_t)N * sizeof(float *));
    for (int64_t i = 0; i < N; i++) {
        int64_t slot = (i * 5 + 1) % S; /* distinct slots (5 is prime to S), scrambled; one unused */
        pos[i] = (int32_t)(lens[i] - 1);
        len[i] = lens[i];
        kp[i] = cache_k + slot * blk, vp[i] = cache_v + slot * blk;
        gkp[i] = g_ck + slot * blk, gvp[i] = g_cv + slot * blk;
    }
    for (int64_t i = 0; i < N; i++)
        for (int64_t h = 0; h < KV; h++) {
            memcpy(kp[i] + (h * max_len + pos[i]) * hd, qkv + i * QKV + AD + h * hd, F4(hd));
            memcpy(vp[i] + (h * max_len + pos[i]) * hd, qkv + i * QKV + AD + (KV + h) * hd, F4(hd));
        }
    float *out = hbuf(p, F4(N * AD)), *g_out = dbuf(p, F4(N * AD));
    OpsHeads q = {qkv, QKV}, gq = {g_qkv, QKV};
    OpsHeads gk = {g_qkv + AD, QKV}, gv = {g_qkv + AD + KV * hd, QKV};
    c->attention_cached(out, q, kp, vp, len, N, NH, KV, hd, max_len);
    g->attention_cached_write(g_out, gq, gk, gv, up(p, gkp, (size_t)N * sizeof(float *)),
                              up(p, gvp, (size_t)N * sizeof(float *)), up(p, pos, I4(N)), N, NH,
                              KV, hd, max_len);
    snprintf(what, sizeof what, "attention_cached_write NH%lld KV%lld hd%lld N%lld",
             (long long)NH, (long long)KV, (long long)hd, (long long)N);
    parity_compare(p, what, g_out, out, N * AD, PARITY_TOL);
    snprintf(what, sizeof what, "attention_cached_write k cache hd%lld", (long long)hd);
    parity_compare(p, what, g_ck, cache_k, S * blk, 0.0);
    snprintf(what, sizeof what, "attention_cached_write v cache hd%lld", (long long)hd);
    parity_compare(p, what, g_cv, cache_v, S * blk, 0.0);
}

PARITY_FN void parity_attention_cached_write(Parity *p) {
    if (!p->gpu->attention_cached_write) {
        parity_fail(p, "attention_cached_write missing from the backend's table");
        return;
    }
    const int64_t lens_a[5] = {1, 7, 40, 13, 2};
    parity_attention_cached_write_case(p, 4, 2, 16, 40, lens_a, 5);  /* GQA, float4 */
    const int64_t lens_b[3] = {600, 1, 333};
    parity_attention_cached_write_case(p, 12, 12, 64, 640, lens_b, 3); /* GPT-2 heads */
    const int64_t lens_c[2] = {9, 20};
    parity_attention_cached_write_case(p, 3, 1, 6, 24, lens_c, 2); /* MQA, scalar loads */
}

/* The fused linear sublayer (optional op) against the CPU ops it stands
 * for: every norm / activation / residual form, at decode sizes (the CUDA
 * backend's one-kernel path, with inputs in shared or global memory, float4
 * or scalar) and beyond them (its op-by-op fallback). */
PARITY_FN void parity_linear_fused(Parity *p) {
    const ModelOps *c = p->cpu, *g = p->gpu;
    if (!g->linear_fused) {
        parity_fail(p, "linear_fused missing from the backend's table");
        return;
    }
    const int64_t shapes[][3] = {{1, 768, 2304}, {3, 96, 200}, {8, 3072, 64}, {20, 64, 50},
                                 {2, 33, 10}, {1, 3072, 768}};
    const float eps = 1e-5f;
    char what[160];
    for (int s = 0; s < (int)(sizeof shapes / sizeof shapes[0]); s++) {
        const int64_t N = shapes[s][0], C = shapes[s][1], OC = shapes[s][2];
        float *inp = rnd(p, N * C, 2.0), *w = rnd(p, OC * C, 0.5), *bias = rnd(p, OC, 1.0);
        float *nw = rnd(p, C, 1.0), *nb = rnd(p, C, 1.0), *resid0 = rnd(p, N * OC, 1.0);
        float *g_inp = up(p, inp, F4(N * C)), *g_w = up(p, w, F4(OC * C)), *g_bias = up(p, bias, F4(OC));
        float *g_nw = up(p, nw, F4(C)), *g_nb = up(p, nb, F4(C));
        float *h = hbuf(p, F4(N * C)), *stats = hbuf(p, F4(2 * N)), *y = hbuf(p, F4(N * OC));
        float *want = hbuf(p, F4(N * OC)), *g_out = dbuf(p, F4(N * OC)), *g_res = dbuf(p, F4(N * OC));
        for (int form = 0; form < 6; form++) {
            /* form: norm = form % 3; act, residual and bias vary with it so
             * that each appears with each norm */
            const int norm = form % 3, act = form >= 3 ? OPS_ACT_GELU : OPS_ACT_NONE;
            const int residual = (form + s) % 3; /* 0 none, 1 separate, 2 in place */
            const int with_bias = form != 4;
            const float *x = inp;
            if (norm == OPS_NORM_RMS) c->rmsnorm_forward(h, stats, inp, nw, N, C, eps), x = h;
            if (norm == OPS_NORM_LAYER) c->layernorm_forward(h, stats, stats + N, inp, nw, nb, N, C, eps), x = h;
            c->matmul_forward(y, x, w, with_bias ? bias : NULL, N, C, OC);
            if (act == OPS_ACT_GELU) c->gelu_forward(y, y, N * OC);
            if (residual) c->add(want, resid0, y, N * OC);
            else memcpy(want, y, F4(N * OC));
            p->gpu->upload(g_out, resid0, F4(N * OC));
            p->gpu->upload(g_res, resid0, F4(N * OC));
            const float *g_resid = residual == 1 ? g_res : residual == 2 ? g_out : NULL;
            g->linear_fused(g_out, g_inp, g_resid, g_w, with_bias ? g_bias : NULL,
                            norm ? g_nw : NULL, norm == OPS_NORM_LAYER ? g_nb : NULL, N, C, OC,
                            norm, eps, act);
            snprintf(what, sizeof what, "linear_fused %lldx%lldx%lld %s%s%s%s", (long long)N,
                     (long long)C, (long long)OC,
                     norm == OPS_NORM_RMS ? "rmsnorm " : norm == OPS_NORM_LAYER ? "layernorm " : "",
                     with_bias ? "+bias " : "", act ? "gelu " : "",
                     residual == 2 ? "+=resid" : residual ? "+resid" : "");
            parity_compare(p, what, g_out, want, N * OC, PARITY_TOL);
        }
    }
}

/* -------------------------------------------------------- activations ---- */

PARITY_FN void parity_activations(Parity *p) {
    const ModelOps *c = p->cpu, *g = p->gpu;
    const int64_t N = 13, F = 37, n = 100001;
    /* SwiGLU */
    float *gu = rnd(p, N * 2 * F, 2.0), *out = hbuf(p, F4(N * F)), *g_out = dbuf(p, F4(N * F));
    float *g_gu = up(p, gu, F4(N * 2 * F));
    c->swiglu_forward(out, gu, N, F);
    g->swiglu_forward(g_out, g_gu, N, F);
    parity_compare(p, "swiglu_forward", g_out, out, N * F, PARITY_TOL);
    float *dout = rnd(p, N * F, 1.0), *dgu = rnd(p, N * 2 * F, 1.0);
    float *g_dgu = up(p, dgu, F4(N * 2 * F));
    c->swiglu_backward(dgu, dout, gu, N, F);
    g->swiglu_backward(g_dgu, up(p, dout, F4(N * F)), g_gu, N, F);
    parity_compare(p, "swiglu_backward", g_dgu, dgu, N * 2 * F, PARITY_TOL);
    /* GELU over a wide range of inputs */
    float *x = rnd(p, n, 3.0), *y = hbuf(p, F4(n)), *g_y = dbuf(p, F4(n));
    float *g_x = up(p, x, F4(n));
    c->gelu_forward(y, x, n);
    g->gelu_forward(g_y, g_x, n);
    parity_compare(p, "gelu_forward", g_y, y, n, PARITY_TOL);
    float *dy = rnd(p, n, 1.0), *dx = rnd(p, n, 1.0), *g_dx = up(p, dx, F4(n));
    c->gelu_backward(dx, x, dy, n);
    g->gelu_backward(g_dx, g_x, up(p, dy, F4(n)), n);
    parity_compare(p, "gelu_backward", g_dx, dx, n, PARITY_TOL);
    /* add, accumulate, scale */
    float *a = rnd(p, n, 1.0), *b = rnd(p, n, 1.0), *g_a = up(p, a, F4(n)), *g_b = up(p, b, F4(n));
    c->add(y, a, b, n);
    g->add(g_y, g_a, g_b, n);
    parity_compare(p, "add", g_y, y, n, 0.0);
    c->accumulate(y, a, n);
    g->accumulate(g_y, g_a, n);
    parity_compare(p, "accumulate", g_y, y, n, 0.0);
    if (g->scale) { /* host loop is the reference: the CPU table has no scale op */
        for (int64_t i = 0; i < n; i++) y[i] = a[i] * 0.7f;
        g->scale(g_y, g_a, 0.7f, n);
        parity_compare(p, "scale", g_y, y, n, 0.0);
    }
}

/* ------------------------------------------------------------ LM head ---- */

PARITY_FN void parity_lm_head_case(Parity *p, int64_t N, int64_t C, int64_t V, int with_entropy) {
    const ModelOps *c = p->cpu, *g = p->gpu;
    char what[160], tag[64];
    snprintf(tag, sizeof tag, "N%lld C%lld V%lld%s", (long long)N, (long long)C, (long long)V,
             with_entropy ? "" : " no-entropy");
    float *h = rnd(p, N * C, 1.0), *w = rnd(p, V * C, 0.3);
    int32_t *tgt = rnd_ids(p, N, V);
    float *mask = hbuf(p, F4(N));
    for (int64_t i = 0; i < N; i++) mask[i] = (i % 17 == 3) ? 0.0f : 1.0f; /* some padding */
    float *logp = hbuf(p, F4(N)), *ent = with_entropy ? hbuf(p, F4(N)) : NULL, *lse = hbuf(p, F4(N));
    float *g_logp = dbuf(p, F4(N)), *g_ent = with_entropy ? dbuf(p, F4(N)) : NULL;
    float *g_lse = dbuf(p, F4(N));
    float *g_h = up(p, h, F4(N * C)), *g_w = up(p, w, F4(V * C)), *g_mask = up(p, mask, F4(N));
    int32_t *g_tgt = up(p, tgt, I4(N));
    c->lm_head_forward(logp, ent, lse, h, w, tgt, mask, N, C, V);
    g->lm_head_forward(g_logp, g_ent, g_lse, g_h, g_w, g_tgt, g_mask, N, C, V);
    snprintf(what, sizeof what, "lm_head_forward logp %s", tag);
    parity_compare(p, what, g_logp, logp, N, PARITY_TOL);
    if (with_entropy) {
        snprintf(what, sizeof what, "lm_head_forward entropy %s", tag);
        parity_compare(p, what, g_ent, ent, N, PARITY_TOL);
    }
    snprintf(what, sizeof what, "lm_head_forward lse %s", tag);
    parity_compare(p, what, g_lse, lse, N, PARITY_TOL);

    float *dlogp = rnd(p, N, 1.0), *dent = with_entropy ? rnd(p, N, 1.0) : NULL;
    float *dh = rnd(p, N * C, 1.0), *dw = rnd(p, V * C, 1.0);
    float *g_dh = up(p, dh, F4(N * C)), *g_dw = up(p, dw, F4(V * C));
    c->lm_head_backward(dh, dw, dlogp, dent, h, w, tgt, lse, mask, N, C, V);
    g->lm_head_backward(g_dh, g_dw, up(p, dlogp, F4(N)), up(p, dent, F4(N)), g_h, g_w, g_tgt,
                        g_lse, g_mask, N, C, V);
    snprintf(what, sizeof what, "lm_head_backward dh %s", tag);
    parity_compare(p, what, g_dh, dh, N * C, PARITY_TOL);
    snprintf(what, sizeof what, "lm_head_backward dw %s", tag);
    parity_compare(p, what, g_dw, dw, V * C, PARITY_TOL);
}

PARITY_FN void parity_lm_head(Parity *p) {
    parity_lm_head_case(p, 40, 24, 77, 1);
    parity_lm_head_case(p, 40, 24, 77, 0);
    parity_lm_head_case(p, 1000, 32, 40000, 1); /* several chunks on both backends */
}

/* ---------------------------------------------------------- optimizer ---- */

PARITY_FN void parity_optimizer(Parity *p) {
    const ModelOps *c = p->cpu, *g = p->gpu;
    const int64_t n = 300007;
    float *x = rnd(p, n, 1.0);
    double sc = c->sum_squares(x, n), sg = g->sum_squares(up(p, x, F4(n)), n);
    float a = (float)sg, b = (float)sc;
    parity_compare_host(p, "sum_squares", &a, &b, 1, PARITY_TOL);

    const int64_t m = 5003;
    float *prm = rnd(p, m, 1.0), *grd = rnd(p, m, 1.0), *m1 = rnd(p, m, 0.1), *v1 = hbuf(p, F4(m));
    for (int64_t i = 0; i < m; i++) v1[i] = (float)(0.01 * rng_uniform_double(&p->rng));
    float *g_p = up(p, prm, F4(m)), *g_g = up(p, grd, F4(m)), *g_m = up(p, m1, F4(m));
    float *g_v = up(p, v1, F4(m));
    for (int64_t t = 1; t <= 2; t++) {
        c->adamw(prm, grd, m1, v1, m, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.5f, t);
        g->adamw(g_p, g_g, g_m, g_v, m, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.5f, t);
    }
    parity_compare(p, "adamw params (2 steps)", g_p, prm, m, PARITY_TOL);
    parity_compare(p, "adamw m", g_m, m1, m, PARITY_TOL);
    parity_compare(p, "adamw v", g_v, v1, m, PARITY_TOL);
}

/* -------------------------------------------------------------- model ---- */

PARITY_FN ModelConfig parity_config(ModelArch arch, int tied, int scalar) {
    ModelConfig c = model_config_default();
    c.arch = arch;
    c.vocab_size = 37;
    c.d_model = 32;
    c.n_layer = 2;
    c.n_head = 4;
    c.n_kv_head = arch == MODEL_ARCH_GPT2 ? 4 : 2;
    c.d_ff = 48;
    c.max_seq_len = 96;
    c.tie_embeddings = tied;
    c.qkv_bias = arch == MODEL_ARCH_LLAMA && !tied;
    c.scalar_head = scalar;
    c.init_std = 0.1f;
    return c;
}

/* Compares two models' host views tensor by tensor; one line for the worst
 * tensor, plus a line for every tensor over the tolerance. */
PARITY_FN void parity_tensors(Parity *p, const char *what, Model *cpu_m, const float *got,
                              const float *want, double tol) {
    size_t count;
    const ModelTensor *ts = model_tensors(cpu_m, &count);
    double worst = 0.0, worst_ref = 0.0;
    const char *worst_name = "";
    for (size_t i = 0; i < count; i++) {
        double mw;
        double rel = parity_rel(got + ts[i].offset, want + ts[i].offset, (int64_t)ts[i].numel, &mw);
        if (isnan(rel)) rel = INFINITY;
        if (rel > tol) printf("       over tolerance: %s rel %.3e\n", ts[i].name, rel);
        if (rel >= worst) worst = rel, worst_ref = mw, worst_name = ts[i].name;
    }
    char line[256];
    snprintf(line, sizeof line, "%s (worst: %s)", what, worst_name);
    parity_record(p, line, worst, tol, worst_ref);
}

PARITY_FN void parity_model_step(Parity *p, ModelArch arch, int tied, int scalar, int left_pad,
                                 float temperature) {
    char tag[96], what[400];
    snprintf(tag, sizeof tag, "%s%s%s%s T=%.1f", arch == MODEL_ARCH_LLAMA ? "llama" : "gpt2",
             tied ? " tied" : " untied", scalar ? " +value" : "", left_pad ? " left-pad" : "",
             (double)temperature);
    ModelConfig cfg = parity_config(arch, tied, scalar);
    Model *mc = NULL, *mg = NULL;
    PonderError err = {0};
    if (model_create(&mc, &cfg, &err) || model_create_on(&mg, &cfg, p->gpu, &err)) {
        snprintf(what, sizeof what, "model_create %s: %.100s", tag, err.msg);
        parity_fail(p, what);
        model_free(mc);
        return;
    }
    const uint64_t wseed = rng_next_u64(&p->rng);
    model_init_weights(mc, wseed);
    model_init_weights(mg, wseed);
    const size_t np = model_num_params(mc);
    snprintf(what, sizeof what, "model weights after init %s", tag);
    parity_compare_host(p, what, dup_host(p, model_params(mg), F4(np)), model_params(mc),
                        (int64_t)np, 0.0);

    const int64_t B = 3, T = 21, N = B * T, V = cfg.vocab_size;
    int32_t *tok = rnd_ids(p, N, V), *tgt = rnd_ids(p, N, V);
    int32_t *start = left_pad ? hbuf(p, I4(B)) : NULL;
    float *mask = hbuf(p, F4(N));
    for (int64_t b = 0; b < B; b++) {
        int64_t s = left_pad ? (b * 4) % T : 0, len = T - (left_pad ? 0 : 3 * b);
        if (start) start[b] = (int32_t)s;
        for (int64_t t = 0; t < T; t++) mask[b * T + t] = (t >= s && t < len) ? 1.0f : 0.0f;
    }
    ModelBatch batch = {.B = B, .T = T, .tokens = tok, .targets = tgt, .mask = mask,
                        .start = start, .temperature = temperature};
    float *lc = hbuf(p, F4(N)), *ec = hbuf(p, F4(N)), *vc = scalar ? hbuf(p, F4(N)) : NULL;
    float *lg = hbuf(p, F4(N)), *eg = hbuf(p, F4(N)), *vg = scalar ? hbuf(p, F4(N)) : NULL;
    int rc = model_forward(mc, &batch, lc, ec, vc, &err);
    if (!rc) rc = model_forward(mg, &batch, lg, eg, vg, &err);
    if (rc) {
        snprintf(what, sizeof what, "model_forward %s: %.100s", tag, err.msg);
        parity_fail(p, what);
        model_free(mc), model_free(mg);
        return;
    }
    snprintf(what, sizeof what, "model_forward logp %s", tag);
    parity_compare_host(p, what, lg, lc, N, PARITY_TOL);
    snprintf(what, sizeof what, "model_forward entropy %s", tag);
    parity_compare_host(p, what, eg, ec, N, PARITY_TOL);
    if (scalar) {
        snprintf(what, sizeof what, "model_forward values %s", tag);
        parity_compare_host(p, what, vg, vc, N, PARITY_TOL);
    }
    float *dl = rnd(p, N, 1.0), *de = rnd(p, N, 0.5), *dv = scalar ? rnd(p, N, 1.0) : NULL;
    model_zero_grad(mc);
    model_zero_grad(mg);
    rc = model_backward(mc, dl, de, dv, &err);
    if (!rc) rc = model_backward(mg, dl, de, dv, &err);
    if (rc) {
        snprintf(what, sizeof what, "model_backward %s: %.100s", tag, err.msg);
        parity_fail(p, what);
        model_free(mc), model_free(mg);
        return;
    }
    snprintf(what, sizeof what, "model_backward grads %s", tag);
    parity_tensors(p, what, mc, dup_host(p, model_grads(mg), F4(np)), model_grads(mc),
                   PARITY_STEP_TOL);

    /* AdamW with clipping, on the same gradients: the step divides each
     * gradient by its own magnitude, so a gradient that is zero in exact
     * arithmetic (a key bias: softmax ignores a shift of every key) but is
     * rounding noise on both backends would get an update of either sign,
     * and the weights would differ by whatever that noise is. The gradients
     * were compared above; here the GPU takes the CPU's gradients so the
     * step itself (norm, clip, AdamW) is what is compared. (Seen on an H200:
     * k_proj.bias weights off by 2.6e-5 relative with their own gradients.) */
    memcpy(model_grads(mg), model_grads(mc), F4(np));
    model_grads_upload(mg);
    OptimSettings os = optim_settings_default();
    os.lr = 1e-3f;
    os.grad_clip = 0.5f;
    Optimizer oc, og;
    OptimStepInfo ic, ig;
    memset(&oc, 0, sizeof oc), memset(&og, 0, sizeof og);
    rc = optim_create(&oc, mc, &os, &err);
    if (!rc) rc = optim_create(&og, mg, &os, &err);
    if (!rc) rc = optim_step(&oc, mc, &ic, &err);
    if (!rc) rc = optim_step(&og, mg, &ig, &err);
    if (rc) {
        snprintf(what, sizeof what, "optim_step %s: %.100s", tag, err.msg);
        parity_fail(p, what);
    } else {
        float a = (float)ig.grad_norm, b = (float)ic.grad_norm;
        snprintf(what, sizeof what, "optim_step grad_norm %s", tag);
        parity_compare_host(p, what, &a, &b, 1, PARITY_TOL);
        snprintf(what, sizeof what, "optim_step weights %s", tag);
        parity_tensors(p, what, mc, dup_host(p, model_params(mg), F4(np)), model_params(mc),
                       PARITY_TOL);
        /* a second forward on the updated weights */
        rc = model_forward(mc, &batch, lc, ec, vc, &err);
        if (!rc) rc = model_forward(mg, &batch, lg, eg, vg, &err);
        snprintf(what, sizeof what, "model_forward after the step logp %s", tag);
        if (!rc) parity_compare_host(p, what, lg, lc, N, PARITY_TOL);
    }
    optim_free(&oc);
    optim_free(&og);

    /* full logits (tools and tests) */
    float *zc = hbuf(p, F4(N * V)), *zg = hbuf(p, F4(N * V));
    rc = model_forward_logits(mc, &batch, zc, &err);
    if (!rc) rc = model_forward_logits(mg, &batch, zg, &err);
    snprintf(what, sizeof what, "model_forward_logits %s", tag);
    if (!rc) parity_compare_host(p, what, zg, zc, N * V, PARITY_TOL);
    model_free(mc);
    model_free(mg);
}

PARITY_FN void parity_model(Parity *p) {
    parity_model_step(p, MODEL_ARCH_LLAMA, 0, 0, 1, 1.0f);
    parity_model_step(p, MODEL_ARCH_LLAMA, 1, 1, 0, 0.7f);
    parity_model_step(p, MODEL_ARCH_GPT2, 1, 0, 0, 1.0f);
    parity_model_step(p, MODEL_ARCH_GPT2, 0, 1, 1, 1.3f);
}

/* KV-cache decoding: prefill (longer than one 64-row chunk), slot copies, then
 * decode steps over subsets of slots in scrambled order. */
PARITY_FN void parity_decode_arch(Parity *p, ModelArch arch) {
    const char *an = arch == MODEL_ARCH_LLAMA ? "llama" : "gpt2";
    char what[400];
    ModelConfig cfg = parity_config(arch, arch == MODEL_ARCH_GPT2, 0);
    Model *mc = NULL, *mg = NULL;
    ModelKVCache *kc = NULL, *kg = NULL;
    PonderError err = {0};
    const int64_t V = cfg.vocab_size, S = 4;
    int rc = model_create(&mc, &cfg, &err);
    if (!rc) rc = model_create_on(&mg, &cfg, p->gpu, &err);
    if (!rc) rc = model_kv_create(&kc, mc, S, cfg.max_seq_len, &err);
    if (!rc) rc = model_kv_create(&kg, mg, S, cfg.max_seq_len, &err);
    if (rc) {
        snprintf(what, sizeof what, "decode %s set-up: %.100s", an, err.msg);
        parity_fail(p, what);
        goto done;
    }
    uint64_t wseed = rng_next_u64(&p->rng);
    model_init_weights(mc, wseed);
    model_init_weights(mg, wseed);
    float *lc = hbuf(p, F4(S * V)), *lg = hbuf(p, F4(S * V));
    const int64_t P = 70;
    int32_t *prompt = rnd_ids(p, P, V);
    rc = model_prefill(mc, kc, 0, prompt, P, lc, &err);
    if (!rc) rc = model_prefill(mg, kg, 0, prompt, P, lg, &err);
    if (rc) goto fail;
    snprintf(what, sizeof what, "prefill %lld tokens %s", (long long)P, an);
    parity_compare_host(p, what, lg, lc, V, PARITY_TOL);
    for (int64_t s = 1; s < S; s++) {
        model_kv_copy_slot(kc, s, 0);
        model_kv_copy_slot(kg, s, 0);
    }
    /* slot 2 restarts with a short prompt */
    model_kv_reset(kc, 2);
    model_kv_reset(kg, 2);
    rc = model_prefill(mc, kc, 2, prompt, 3, lc, &err);
    if (!rc) rc = model_prefill(mg, kg, 2, prompt, 3, lg, &err);
    if (rc) goto fail;
    snprintf(what, sizeof what, "prefill after reset %s", an);
    parity_compare_host(p, what, lg, lc, V, PARITY_TOL);
    /* Each size comes back, so a backend with graphs runs it eagerly, then
     * captures, then replays; size 3 replays with another slot set. */
    const int64_t orders[4][4] = {{3, 0, 2, -1}, {0, 1, 2, 3}, {2, 3, -1, -1}, {1, 3, 0, -1}};
    for (int step = 0; step < 8; step++) {
        const int64_t *o = orders[step % 4];
        int64_t n = 0, slots[4];
        while (n < 4 && o[n] >= 0) slots[n] = o[n], n++;
        int32_t *tk = rnd_ids(p, n, V);
        rc = model_decode(mc, kc, slots, tk, n, lc, &err);
        if (!rc) rc = model_decode(mg, kg, slots, tk, n, lg, &err);
        if (rc) goto fail;
        snprintf(what, sizeof what, "decode step %d (%lld slots) %s", step, (long long)n, an);
        parity_compare_host(p, what, lg, lc, n * V, PARITY_TOL);
    }
    /* a step that appends two tokens to one slot: rows share a cache, so a
     * backend's fused cache write must not be used (nor the size-3 graph) */
    {
        const int64_t slots[3] = {1, 3, 1};
        int32_t *tk = rnd_ids(p, 3, V);
        rc = model_decode(mc, kc, slots, tk, 3, lc, &err);
        if (!rc) rc = model_decode(mg, kg, slots, tk, 3, lg, &err);
        if (rc) goto fail;
        snprintf(what, sizeof what, "decode step with a repeated slot %s", an);
        parity_compare_host(p, what, lg, lc, 3 * V, PARITY_TOL);
        /* and a normal step after it, replaying the graph again */
        const int64_t next[3] = {0, 2, 1};
        rc = model_decode(mc, kc, next, tk, 3, lc, &err);
        if (!rc) rc = model_decode(mg, kg, next, tk, 3, lg, &err);
        if (rc) goto fail;
        snprintf(what, sizeof what, "decode step after the repeated slot %s", an);
        parity_compare_host(p, what, lg, lc, 3 * V, PARITY_TOL);
    }
    goto done;
fail:
    snprintf(what, sizeof what, "decode %s: %.100s", an, err.msg);
    parity_fail(p, what);
done:
    model_kv_free(kc);
    model_kv_free(kg);
    model_free(mc);
    model_free(mg);
}

PARITY_FN void parity_decode(Parity *p) {
    parity_decode_arch(p, MODEL_ARCH_LLAMA);
    parity_decode_arch(p, MODEL_ARCH_GPT2);
}

/* ---------------------------------------------------------- RL losses ---- */

/* The loss ops (policy_loss, value_loss, masked_max_abs_diff, copy_2d)
 * against algos' host loops (algos/loss_core.h: the code algo_policy_loss and
 * algo_value_loss run; called directly because gpu_bench's standalone build
 * links no algos/ object). Inputs plant every branch: rows without tokens and
 * a fully used row, padding, tokens on both clip sides and past the dual
 * clip, on-policy ties (old = logp: rho = exp(0) = 1 exactly, on the clip
 * boundary when an epsilon is 0), log-ratios exactly at the clamp (inputs on
 * a 1/1024 grid so differences are exact), sequence-level rows whose mean
 * log-ratio is exactly 0 or the clamp, k3 beyond and exactly at verl's
 * clamps, zero advantages, value errors exactly at the value clip, and NaN at
 * every mask-0 position (never to be read).
 * Tolerances: per-token gradients PARITY_TOL relative to the largest (both
 * sides compute in double and round once to float; the sequence-level sum and
 * exp may differ in the last double bits). Sums: |gpu - host| / max(|host|,
 * 1e-6) <= PARITY_TOL each (double sums in another order; counts exact
 * unless a tie fell differently, which this check is there to catch). Ties
 * reached through exp of a nonzero argument are left out: CUDA's exp need not
 * round as glibc's, so such a tie may fall either way (tests/test_cuda.c
 * plants those against the fake device). */

/* loss_type names (algo_loss_type_name lives in algos/loss.c, not linked here) */
PARITY_FN const char *parity_loss_type(int type) {
    static const char *const names[] = {"grpo", "bnpo", "dr_grpo", "dapo"};
    return type >= 0 && type < 4 ? names[type] : "?";
}

typedef struct ParityLossData {
    int64_t S, T;
    float *mask, *logp, *old, *ref, *adv, *ent, *val, *old_val, *ret;
} ParityLossData;

/* x on the 1/1024 grid: sums and differences of a few such values are exact. */
PARITY_FN float parity_grid(double x) { return (float)(nearbyint(x * 1024.0) / 1024.0); }

PARITY_FN ParityLossData parity_loss_data(Parity *p, int64_t S, int64_t T, int kl_extremes) {
    ParityLossData d = {S, T, hbuf(p, F4(S * T)), hbuf(p, F4(S * T)), hbuf(p, F4(S * T)),
                        hbuf(p, F4(S * T)), hbuf(p, F4(S * T)), hbuf(p, F4(S * T)),
                        hbuf(p, F4(S * T)), hbuf(p, F4(S * T)), hbuf(p, F4(S * T))};
    Rng *r = &p->rng;
    for (int64_t i = 0; i < S; i++) {
        const double row_adv = rng_normal(r);
        for (int64_t t = 0; t < T; t++) {
            const int64_t k = i * T + t;
            int on = rng_uniform_double(r) < 0.8;
            if (i == 0) on = 1;                  /* a full row */
            if (i == 1) on = t < T / 2;          /* right padding */
            if (i == 2 || i == S - 1) on = 0;    /* rows without tokens */
            d.mask[k] = on ? 1.0f : 0.0f;
            float lp = parity_grid(-fabs(rng_normal(r)) - 0.1);
            d.logp[k] = lp;
            double u = rng_uniform_double(r);
            float old = u < 0.25 ? lp                                  /* on-policy tie */
                        : u < 0.35 ? lp - 0.5f                          /* lr = +0.5 */
                        : u < 0.45 ? lp + 0.5f                          /* lr = -0.5 */
                        : u < 0.55 ? lp - 1.5f                          /* rho 4.5: high / dual */
                        : u < 0.65 ? lp + 1.0f                          /* rho 0.37: low */
                                   : (float)(lp + 0.3 * rng_normal(r));
            if (i == 3) old = lp;        /* sequence level: mean log-ratio exactly 0 */
            if (i == 4) old = lp - 0.5f; /* ... and exactly 0.5 */
            d.old[k] = old;
            u = rng_uniform_double(r);
            float ref = (float)(lp + 0.5 * rng_normal(r));
            if (kl_extremes) /* verl's k3 clamps: beyond, and exactly at, |d| = 20 */
                ref = u < 0.05 ? lp + 25.0f : u < 0.1 ? lp - 25.0f : u < 0.13 ? lp + 20.0f
                      : u < 0.16 ? lp - 20.0f : ref;
            d.ref[k] = ref;
            u = rng_uniform_double(r);
            d.adv[k] = u < 0.1 ? 0.0f : (float)(i % 2 ? row_adv : rng_normal(r));
            d.ent[k] = (float)(3.0 * rng_uniform_double(r));
            float v = parity_grid(rng_normal(r));
            d.val[k] = v;
            u = rng_uniform_double(r);
            d.old_val[k] = u < 0.1 ? v - 0.5f : u < 0.2 ? v + 0.5f : (float)(v + 0.5 * rng_normal(r));
            d.ret[k] = (float)rng_normal(r);
            if (!on) { /* never read */
                d.logp[k] = d.old[k] = d.ref[k] = d.adv[k] = d.ent[k] = NAN;
                d.val[k] = d.old_val[k] = d.ret[k] = NAN;
            }
        }
    }
    return d;
}

/* Compares n sums: worst |got - want| / max(|want|, 1e-6). */
PARITY_FN void parity_compare_sums(Parity *p, const char *what, const double *got,
                                   const double *want, int n) {
    double worst = 0.0, ref = 0.0;
    for (int j = 0; j < n; j++) {
        double e = fabs(got[j] - want[j]) / fmax(fabs(want[j]), 1e-6);
        if (isnan(e)) e = INFINITY;
        worst = fmax(worst, e);
        ref = fmax(ref, fabs(want[j]));
    }
    parity_record(p, what, worst, PARITY_TOL, ref);
}

/* A device copy with the mask-0 positions' NaN kept (what the op must skip). */
PARITY_FN float *parity_garbage(Parity *p, int64_t n) {
    float *h = hbuf(p, F4(n));
    for (int64_t i = 0; i < n; i++) h[i] = 1e30f; /* the op must overwrite every position */
    return h;
}

typedef struct ParityPolicyCase {
    const char *name;
    int seq, use_old, use_ref, use_ent, want_dent, dual, kl_est, kl_clamp;
    double eps_low, eps_high, clamp, kl_coef, ent_coef, normalizer;
} ParityPolicyCase;

/* One configuration; returns the host's sums (the caller checks coverage). */
PARITY_FN AlgoPolicySums parity_policy_case(Parity *p, const ParityLossData *d,
                                            const ParityPolicyCase *pc, int type) {
    const int64_t S = d->S, T = d->T, N = S * T;
    char what[200];
    AlgoPolicyConfig c;
    c.epsilon_low = pc->eps_low;
    c.epsilon_high = pc->eps_high;
    c.dual_clip_c = pc->dual ? 3.0 : 0.0;
    c.ratio_level = pc->seq ? ALGO_RATIO_SEQUENCE : ALGO_RATIO_TOKEN;
    c.log_ratio_clamp = pc->clamp;
    c.agg = (AlgoAgg){(AlgoLossType)type, T + 3, pc->normalizer};
    c.kl = (AlgoKl){(AlgoKlEstimator)pc->kl_est, pc->kl_coef, pc->kl_clamp};
    c.entropy_coef = pc->ent_coef;
    AlgoBatch b = {S, T, d->mask};
    const double denom = algo_core_denominator(&b, &c.agg);
    AlgoPolicyInputs in = {d->logp, pc->use_old ? d->old : NULL, pc->use_ref ? d->ref : NULL,
                           d->adv, pc->use_ent ? d->ent : NULL};
    float *dl = parity_garbage(p, N), *de = pc->want_dent ? parity_garbage(p, N) : NULL;
    float *g_dl = up(p, dl, F4(N)), *g_de = up(p, de, F4(N));
    AlgoPolicySums acc;
    algo_core_policy_loss(&b, &c, &in, denom, &acc, dl, de);
    const double want[OPS_POLICY_NSUMS] = {acc.pg,  acc.kl,    acc.ent,   acc.tokens,
                                           acc.low, acc.high,  acc.dual,  acc.ratio,
                                           acc.kl_sum, acc.old_kl, acc.ent_sum};
    double *g_sums = dbuf(p, OPS_POLICY_NSUMS * sizeof(double));
    p->gpu->policy_loss(g_dl, g_de, g_sums, up(p, d->logp, F4(N)),
                        pc->use_ent ? up(p, d->ent, F4(N)) : NULL,
                        pc->use_old ? up(p, d->old, F4(N)) : NULL,
                        pc->use_ref ? up(p, d->ref, F4(N)) : NULL, up(p, d->adv, F4(N)),
                        up(p, d->mask, F4(N)), rl_device_policy_cfg(&c, denom), S, T);
    double got[OPS_POLICY_NSUMS];
    p->gpu->download(got, g_sums, sizeof got);
    snprintf(what, sizeof what, "policy_loss %s %s dlogp", pc->name, parity_loss_type(type));
    parity_compare(p, what, g_dl, dl, N, PARITY_TOL);
    if (de) {
        snprintf(what, sizeof what, "policy_loss %s %s dentropy", pc->name, parity_loss_type(type));
        parity_compare(p, what, g_de, de, N, PARITY_TOL);
    }
    snprintf(what, sizeof what, "policy_loss %s %s sums", pc->name, parity_loss_type(type));
    parity_compare_sums(p, what, got, want, OPS_POLICY_NSUMS);
    return acc;
}

PARITY_FN void parity_policy_loss(Parity *p) {
    if (!p->gpu->policy_loss) {
        parity_fail(p, "policy_loss: the backend has no policy_loss op");
        return;
    }
    /* name, seq, old, ref, ent, dent, dual, kl_est, kl_clamp, eps_low, eps_high, clamp, kl_coef,
     * ent_coef, normalizer */
    static const ParityPolicyCase cases[] = {
        {"token dual k3-clamped kl+ent", 0, 1, 1, 1, 1, 1, 2, 1, 0.2, 0.28, 20.0, 0.05, 0.01, 0},
        {"token eps0 ties clamp0.5 k1", 0, 1, 1, 1, 0, 0, 0, 0, 0.0, 0.0, 0.5, 0.1, 0.0, 0},
        {"sequence dual clamp0.5 k2", 1, 1, 1, 1, 1, 1, 1, 0, 0.2, 0.2, 0.5, 0.02, 0.01, 0},
        {"sequence eps_low0 k3 metric only", 1, 1, 1, 1, 1, 0, 2, 0, 0.0, 0.28, 20.0, 0.0, 0.0, 0},
        {"token on-policy no ref/entropy", 0, 0, 0, 0, 0, 1, 2, 0, 0.2, 0.2, 0.0, 0.0, 0.0, 0},
        {"sequence on-policy normaliser 37", 1, 0, 1, 1, 1, 1, 0, 0, 0.2, 0.28, 20.0, 0.03, 0.02, 37},
    };
    const int64_t S = 9, T = 300; /* T > the kernel's 256 threads: some threads take two tokens */
    double low = 0.0, high = 0.0, dual = 0.0;
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        ParityLossData d = parity_loss_data(p, S, T, cases[k].kl_clamp);
        for (int type = ALGO_LOSS_GRPO; type <= ALGO_LOSS_DAPO; type++) {
            AlgoPolicySums s = parity_policy_case(p, &d, &cases[k], type);
            low += s.low, high += s.high, dual += s.dual;
        }
    }
    if (low == 0.0 || high == 0.0 || dual == 0.0) /* the inputs must reach every clip branch */
        parity_fail(p, "policy_loss inputs: a clip branch (low, high or dual) was never taken");
}

PARITY_FN void parity_value_loss(Parity *p) {
    if (!p->gpu->value_loss) {
        parity_fail(p, "value_loss: the backend has no value_loss op");
        return;
    }
    const int64_t S = 7, T = 270, N = S * T;
    char what[160];
    ParityLossData d = parity_loss_data(p, S, T, 0);
    AlgoBatch b = {S, T, d.mask};
    double clipped = 0.0;
    for (int clip = 0; clip < 2; clip++)
        for (int type = ALGO_LOSS_GRPO; type <= ALGO_LOSS_DAPO; type++) {
            AlgoValueConfig c = {clip ? 0.5 : 0.0, {(AlgoLossType)type, T, 0.0}};
            const double denom = algo_core_denominator(&b, &c.agg);
            float *dv = parity_garbage(p, N), *g_dv = up(p, dv, F4(N));
            AlgoValueSums acc;
            algo_core_value_loss(&b, &c, d.val, clip ? d.old_val : NULL, d.ret, denom, &acc, dv);
            const double want[OPS_VALUE_NSUMS] = {acc.loss, acc.clipped, acc.tokens, acc.value_sum};
            double *g_sums = dbuf(p, OPS_VALUE_NSUMS * sizeof(double)), got[OPS_VALUE_NSUMS];
            p->gpu->value_loss(g_dv, g_sums, up(p, d.val, F4(N)),
                               clip ? up(p, d.old_val, F4(N)) : NULL, up(p, d.ret, F4(N)),
                               up(p, d.mask, F4(N)), rl_device_value_cfg(&c, denom), S, T);
            p->gpu->download(got, g_sums, sizeof got);
            snprintf(what, sizeof what, "value_loss %s %s dvalues", clip ? "clip 0.5" : "no clip",
                     parity_loss_type(type));
            parity_compare(p, what, g_dv, dv, N, PARITY_TOL);
            snprintf(what, sizeof what, "value_loss %s %s sums", clip ? "clip 0.5" : "no clip",
                     parity_loss_type(type));
            parity_compare_sums(p, what, got, want, OPS_VALUE_NSUMS);
            clipped += acc.clipped;
        }
    if (clipped == 0.0) parity_fail(p, "value_loss inputs: the clipped branch was never taken");
}

/* Token-level advantages, moments and whitening (token_advantages,
 * masked_moments, whiten) against algos' row loops (algos/advantage_token.h,
 * the code algo_token_rewards, algo_gae, algo_returns_discounted and
 * algo_whiten_apply run): GAE and discounted returns, KL in the reward off and
 * on (k1, and k3 with verl's clamps beyond |d| = 20), gamma and lambda below
 * and at 1, rows without tokens, masked gaps inside rows, NaN at every mask-0
 * position. Tolerances as the losses': per-token PARITY_TOL relative to the
 * largest, sums PARITY_TOL relative (double sums in another order; the
 * device may fuse a multiply-add in the recursions). */
PARITY_FN void parity_advantages(Parity *p) {
    const ModelOps *g = p->gpu;
    if (!g->token_advantages || !g->masked_moments || !g->whiten) {
        parity_fail(p, "advantages: the backend lacks token_advantages, masked_moments or whiten");
        return;
    }
    const int64_t S = 10, T = 150, N = S * T;
    char what[160];
    for (int c = 0; c < 4; c++) {
        const int gae = c % 2 == 0, kl = c >= 2;
        ParityLossData d = parity_loss_data(p, S, T, kl);
        double *scores = hbuf(p, (size_t)S * sizeof(double));
        for (int64_t i = 0; i < S; i++) scores[i] = rng_normal(&p->rng);
        OpsAdvantage oa = {gae ? OPS_ADV_GAE : OPS_ADV_RETURNS, kl ? 2 : 0, kl, kl ? 0.05 : 0.0,
                           c == 1 ? 1.0 : 0.97, c == 0 ? 1.0 : 0.95};
        /* the host: rewards, then GAE or returns, row by row (as algos) */
        float *rw = hbuf(p, F4(N)), *adv = hbuf(p, F4(N)), *ret = hbuf(p, F4(N));
        double kl_sum = 0.0;
        for (int64_t i = 0; i < S; i++) {
            const int64_t row = i * T;
            int has;
            double m = algo_token_rewards_row(d.mask + row, T, scores[i], d.logp + row, d.ref + row,
                                              1, oa.kl_estimator, oa.kl_clamp, oa.kl_coef,
                                              rw + row, &has);
            if (has) kl_sum += m;
            if (gae)
                algo_token_gae_row(d.mask + row, T, rw + row, d.val + row, oa.gamma, oa.lambda,
                                   adv + row, ret + row);
            else
                algo_token_returns_row(d.mask + row, T, rw + row, oa.gamma, ret + row);
        }
        float *g_adv = gae ? dbuf(p, F4(N)) : NULL, *g_ret = dbuf(p, F4(N));
        double *g_kl = dbuf(p, sizeof(double)), got_kl = 0.0;
        g->token_advantages(g_adv, g_ret, g_kl, up(p, scores, (size_t)S * sizeof(double)),
                            up(p, d.logp, F4(N)), up(p, d.ref, F4(N)),
                            gae ? up(p, d.val, F4(N)) : NULL, up(p, d.mask, F4(N)), oa, S, T);
        g->download(&got_kl, g_kl, sizeof got_kl);
        const char *tag = gae ? (c == 0 ? "GAE lambda 1" : "GAE") : (c == 1 ? "returns gamma 1" : "returns");
        if (gae) {
            snprintf(what, sizeof what, "token_advantages %s%s adv", tag, kl ? " +KL k3" : "");
            parity_compare(p, what, g_adv, adv, N, PARITY_TOL);
        }
        snprintf(what, sizeof what, "token_advantages %s%s returns", tag, kl ? " +KL k3" : "");
        parity_compare(p, what, g_ret, ret, N, PARITY_TOL);
        snprintf(what, sizeof what, "token_advantages %s%s KL sum", tag, kl ? " +KL k3" : "");
        parity_compare_sums(p, what, &got_kl, &kl_sum, 1);
        /* moments and whitening of what came out (the GPU's own, both sides) */
        float *x = hbuf(p, F4(N));
        g->download(x, gae ? g_adv : g_ret, F4(N));
        double want[3] = {0.0, 0.0, 0.0}, got[3];
        for (int64_t k = 0; k < N; k++)
            if (d.mask[k] != 0.0f) want[0] += 1.0, want[1] += x[k], want[2] += (double)x[k] * x[k];
        double *g_m = dbuf(p, 3 * sizeof(double));
        float *g_x = up(p, x, F4(N)), *g_mask = up(p, d.mask, F4(N));
        g->masked_moments(g_m, g_x, g_mask, N);
        g->download(got, g_m, sizeof got);
        snprintf(what, sizeof what, "masked_moments (%s)", tag);
        parity_compare_sums(p, what, got, want, 3);
        const double mean = want[1] / want[0], scale = 1.0 / sqrt(want[2] / want[0] - mean * mean + 1e-8);
        float *w = hbuf(p, F4(N));
        for (int64_t k = 0; k < N; k++) w[k] = algo_token_whiten(d.mask[k], x[k], mean, scale);
        g->whiten(g_x, g_x, g_mask, mean, scale, N); /* in place, as the trainer does */
        snprintf(what, sizeof what, "whiten (%s, in place)", tag);
        parity_compare(p, what, g_x, w, N, PARITY_TOL);
    }
}

/* The update's helpers: exact on any backend (a copy; a max of exact |a - b|). */
PARITY_FN void parity_loss_helpers(Parity *p) {
    if (!p->gpu->masked_max_abs_diff || !p->gpu->copy_2d) {
        parity_fail(p, "loss helpers: the backend lacks masked_max_abs_diff or copy_2d");
        return;
    }
    const int64_t S = 11, T = 2000, N = S * T; /* several elements per thread of the block */
    ParityLossData d = parity_loss_data(p, S, T, 0);
    double want = 0.0, got = -1.0;
    for (int64_t i = 0; i < N; i++)
        if (d.mask[i] != 0.0f) want = fmax(want, fabs((double)d.logp[i] - (double)d.old[i]));
    double *g_out = dbuf(p, sizeof(double));
    p->gpu->masked_max_abs_diff(g_out, up(p, d.logp, F4(N)), up(p, d.old, F4(N)),
                                up(p, d.mask, F4(N)), N);
    p->gpu->download(&got, g_out, sizeof got);
    float a = (float)got, b = (float)want;
    parity_compare_host(p, "masked_max_abs_diff", &a, &b, 1, 0.0);
    if (got != want) parity_fail(p, "masked_max_abs_diff: not bit-identical in double");
    /* completion rows [3, 9) of [S, 37] <- columns 5 .. 41 of a [6, 50] block */
    const int64_t R = 6, W = 50, Tc = 37;
    float *src = rnd(p, R * W, 1.0), *dst = rnd(p, S * Tc, 1.0);
    float *g_src = up(p, src, F4(R * W)), *g_dst = up(p, dst, F4(S * Tc));
    for (int64_t r = 0; r < R; r++) memcpy(dst + (3 + r) * Tc, src + r * W + 5, F4(Tc));
    p->gpu->copy_2d(g_dst + 3 * Tc, Tc, g_src + 5, W, R, Tc);
    parity_compare(p, "copy_2d (strided rows)", g_dst, dst, S * Tc, 0.0);
}

/* ------------------------------------------------------------- bf16 ---- */

/* model.precision bf16 (cuda_set_bf16): the cases whose GEMMs it changes —
 * linear layers, attention, the LM head, whole training steps — rerun with
 * bf16 products against the fp32 CPU, to PARITY_BF16_TOL. CUDA only. */
PARITY_FN void parity_bf16(Parity *p) {
#ifdef PONDER_HAVE_CUDA
    if (p->gpu != ops_cuda()) {
        printf("  skip bf16: the backend under test is not the CUDA one\n");
        return;
    }
    const double floor_before = p->tol_floor;
    cuda_set_bf16(1);
    p->tol_floor = PARITY_BF16_TOL, p->tag = "bf16 ";
    parity_matmul(p);
    parity_attention(p);
    parity_lm_head(p);
    parity_model(p);
    p->tol_floor = floor_before, p->tag = NULL;
    cuda_set_bf16(0);
#else
    (void)p;
    printf("  skip bf16: this build has no CUDA backend\n");
#endif
}

/* ----------------------------------------------------------- the suite --- */

typedef void (*ParityFn)(Parity *);

typedef struct ParityCase {
    const char *name;
    ParityFn fn;
} ParityCase;

static const ParityCase PARITY_CASES[] __attribute__((unused)) = {
    {"matmul", parity_matmul},
    {"embedding", parity_embedding},
    {"norms", parity_norms},
    {"rope", parity_rope},
    {"attention", parity_attention},
    {"attention_cached", parity_attention_cached},
    {"attention_cached_write", parity_attention_cached_write},
    {"linear_fused", parity_linear_fused},
    {"activations", parity_activations},
    {"lm_head", parity_lm_head},
    {"optimizer", parity_optimizer},
    {"model_step", parity_model},
    {"decode", parity_decode},
    {"bf16", parity_bf16},
    {"policy_loss", parity_policy_loss},
    {"value_loss", parity_value_loss},
    {"loss_helpers", parity_loss_helpers},
    {"advantages", parity_advantages},
};

#define PARITY_N_CASES (sizeof PARITY_CASES / sizeof PARITY_CASES[0])

#endif
