/* bench/gpu_bench.c — the CUDA backend on a GPU machine, without Criterion:
 *
 *   gpu_bench --parity [--only a,b,...]   the parity suite of tests/cuda_parity.h
 *   gpu_bench --bench [--quick]           ceilings, training and decode timings
 *   gpu_bench --bench --decode            copy bandwidth and decode timings only
 *   gpu_bench --parity --fake-device      the suite against tests/fake_device.h
 *                                         (any machine: checks this program)
 *
 * --bench measures, in one run: cuBLAS GEMM ceilings (fp32, TF32, bf16) and the
 * device copy bandwidth; training tokens/s and achieved TFLOP/s at the GPT-2
 * 124M shape (B=4, T=1024; smaller if that does not fit) in fp32, TF32 and bf16
 * (bf16 products, fp32 master weights);
 * decode tokens/s at batch 1 and 64 against the bandwidth bound for reading
 * the weights once per token, each with CUDA graphs off and on (and batch 1
 * also with cuBLAS instead of the small-N GEMV: the state before graphs; and
 * with the fused decode ops off and on), and per-op timings of a batch-1
 * GPT-2 step's ops, fused and op by op. Every number is printed as
 *     RESULT | <name> | <value> <unit> | <note>
 * which bench/gpu_check.sh collects into its closing table.
 *
 * Exit status: 0 ok, 1 a check or run failed, 2 no CUDA (build or device). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/bench_util.h" /* bench_shape_config */
#include "tests/cuda_parity.h"
#include "tests/fake_device.h"
#ifdef PONDER_HAVE_CUDA
#include "model/cuda/cuda_backend.h"
#include "model/cuda/cuda_nccl.h"
#include <cuda_runtime.h> /* cudaMemcpy for the NCCL smoke test */
#endif

static void result(const char *name, double value, const char *unit, const char *fmt, ...) {
    char note[256] = "";
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(note, sizeof note, fmt, ap);
        va_end(ap);
    }
    printf("RESULT | %s | %.4g %s | %s\n", name, value, unit, note);
    fflush(stdout);
}

/* ------------------------------------------------------------ parity ----- */

static int in_list(const char *list, const char *name) {
    if (!list) return 1;
    size_t n = strlen(name);
    for (const char *s = list; *s;) {
        const char *e = strchr(s, ',');
        size_t len = e ? (size_t)(e - s) : strlen(s);
        if (len == n && strncmp(s, name, n) == 0) return 1;
        if (!e) break;
        s = e + 1;
    }
    return 0;
}

static int run_parity(const ModelOps *g, const char *only) {
    Parity *p = malloc(sizeof *p);
    if (!p) return 1;
    uint64_t seed = parity_seed();
    printf("parity suite: CUDA backend vs CPU backend, seed %llu (PONDER_PARITY_SEED=%llu "
           "replays it)\n",
           (unsigned long long)seed, (unsigned long long)seed);
    parity_init(p, g, seed);
    for (size_t i = 0; i < PARITY_N_CASES; i++) {
        if (!in_list(only, PARITY_CASES[i].name)) continue;
        printf("[%s]\n", PARITY_CASES[i].name);
        fflush(stdout);
        double t0 = bench_now();
        int before = p->failed;
        PARITY_CASES[i].fn(p);
        parity_release(p);
        printf("[%s] %s in %.1f s\n", PARITY_CASES[i].name, p->failed > before ? "FAILED" : "ok",
               bench_now() - t0);
    }
    int failed = p->failed, checks = p->checks;
    printf("parity: %d passed, %d failed\n", checks - failed, failed);
    if (failed) printf("parity failures: %s\n", p->failures);
    result("parity checks", checks - failed, "passed", "%d failed; worst error %.2g x tolerance",
           failed, p->worst);
    free(p);
    return failed ? 1 : 0;
}

#ifdef PONDER_HAVE_CUDA

/* ------------------------------------------------------------- bench ----- */

/* Model FLOPs per trained token (PaLM's convention): 6 per matmul weight
 * (forward and backward; the tied LM head counts once) + 12 L T C for
 * attention scores and values. */
static double flops_per_token(const ModelConfig *c, int64_t T) {
    double C = (double)c->d_model, L = (double)c->n_layer, V = (double)c->vocab_size;
    double F = (double)c->d_ff;
    double mm = L * (3.0 * C * C + C * C + 2.0 * C * F) + V * C;
    return 6.0 * mm + 12.0 * L * (double)T * C;
}

typedef struct Ceilings {
    double fp32, tf32, bf16, copy_gbps;
} Ceilings;

static Ceilings bench_ceilings(int quick) {
    Ceilings k;
    int it = quick ? 3 : 10;
    k.fp32 = cuda_gemm_tflops(8192, 8192, 8192, 0, quick ? 2 : 5);
    result("GEMM fp32 8192^3", k.fp32, "TFLOP/s", "cublasSgemm, random data");
    k.tf32 = cuda_gemm_tflops(8192, 8192, 8192, 1, it);
    result("GEMM tf32 8192^3", k.tf32, "TFLOP/s", "cublasSgemm with TF32 tensor cores");
    k.bf16 = cuda_gemm_tflops(8192, 8192, 8192, 2, 2 * it);
    result("GEMM bf16 8192^3", k.bf16, "TFLOP/s", "cublasGemmEx bf16 in/out, fp32 accumulate");
    double s1 = cuda_gemm_tflops(4096, 3072, 768, 0, it);
    result("GEMM fp32 4096x3072x768", s1, "TFLOP/s", "the GPT-2 MLP shape at B*T=4096");
    double s2 = cuda_gemm_tflops(4096, 3072, 768, 1, it);
    result("GEMM tf32 4096x3072x768", s2, "TFLOP/s", "the GPT-2 MLP shape at B*T=4096");
    k.copy_gbps = cuda_copy_gbps((size_t)2 << 30, quick ? 3 : 10);
    result("device copy", k.copy_gbps, "GB/s", "2 GiB device-to-device, read+write bytes");
    return k;
}

static const char *const PRECISION_NAME[] = {"fp32", "tf32", "bf16"};

/* precision: 0 fp32, 1 TF32, 2 bf16 products with fp32 master weights. */
static int bench_train(const ModelOps *g, const Ceilings *k, int precision, int quick) {
    const char *pn = PRECISION_NAME[precision];
    const double ceiling = precision == 2 ? k->bf16 : precision == 1 ? k->tf32 : k->fp32;
    ModelConfig cfg = bench_shape_config("gpt2");
    const int64_t shapes[][2] = {{4, 1024}, {2, 1024}, {1, 1024}, {4, 256}};
    Model *m = NULL;
    PonderError err = {0};
    if (model_create_on(&m, &cfg, g, &err)) {
        printf("train: %s\n", err.msg);
        return 1;
    }
    model_init_weights(m, 1234);
    cuda_set_tf32(precision == 1);
    cuda_set_bf16(precision == 2);
    OptimSettings os = optim_settings_default();
    os.lr = 1e-4f;
    Optimizer opt;
    memset(&opt, 0, sizeof opt);
    if (optim_create(&opt, m, &os, &err)) {
        printf("train: %s\n", err.msg);
        model_free(m);
        return 1;
    }
    int rc = 1;
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0] && rc; si++) {
        const int64_t B = shapes[si][0], T = shapes[si][1], N = B * T;
        int32_t *tok = malloc((size_t)N * sizeof(int32_t)), *tgt = malloc((size_t)N * sizeof(int32_t));
        float *logp = malloc((size_t)N * sizeof(float)), *ent = malloc((size_t)N * sizeof(float));
        float *dl = malloc((size_t)N * sizeof(float));
        Rng r = rng_from_seed(7);
        for (int64_t i = 0; i < N; i++) {
            tok[i] = (int32_t)rng_below(&r, (uint64_t)cfg.vocab_size);
            tgt[i] = (int32_t)rng_below(&r, (uint64_t)cfg.vocab_size);
            dl[i] = -1.0f / (float)N;
        }
        ModelBatch batch = {.B = B, .T = T, .tokens = tok, .targets = tgt};
        const int steps = quick ? 3 : 8;
        double t0 = 0.0;
        int ok = 1;
        for (int s = -1; s < steps && ok; s++) { /* step -1 warms up (allocations, cuBLAS) */
            if (s == 0) {
                cuda_synchronize();
                t0 = bench_now();
            }
            model_zero_grad(m);
            ok = model_forward(m, &batch, logp, ent, NULL, &err) == PONDER_OK &&
                 model_backward(m, dl, NULL, NULL, &err) == PONDER_OK &&
                 optim_step(&opt, m, NULL, &err) == PONDER_OK;
        }
        cuda_synchronize();
        double dt = bench_now() - t0;
        if (ok) {
            double tps = (double)(N * steps) / dt;
            double tflops = tps * flops_per_token(&cfg, T) / 1e12;
            char name[96];
            snprintf(name, sizeof name, "train %s B=%lld T=%lld", pn, (long long)B, (long long)T);
            result(name, tps, "tok/s", "%.1f ms/step, mean logp %.3f", 1e3 * dt / steps,
                   (double)logp[0]);
            snprintf(name, sizeof name, "train %s achieved", pn);
            result(name, tflops, "TFLOP/s",
                   "%.0f%% of the %s GEMM ceiling, %.0f%% of bf16 (%.3g GFLOP/token)",
                   100.0 * tflops / ceiling, pn, 100.0 * tflops / k->bf16,
                   flops_per_token(&cfg, T) / 1e9);
            rc = 0;
        } else {
            printf("train B=%lld T=%lld failed: %s (trying a smaller batch)\n", (long long)B,
                   (long long)T, err.msg);
        }
        free(tok), free(tgt), free(logp), free(ent), free(dl);
    }
    cuda_set_tf32(0);
    cuda_set_bf16(0);
    optim_free(&opt);
    model_free(m);
    return rc;
}

/* Decode at `slots` rows per step of a bench_shape_config shape; graphs and
 * gemv select the CUDA backend's paths (cuda_set_graphs / cuda_set_gemv) for
 * this run only. *tps gets the tokens/s (0 when the run failed). */
static int bench_decode(const ModelOps *g, const Ceilings *k, const char *shape, int64_t slots,
                        int quick, int graphs, int gemv, int fused, double *tps) {
    ModelConfig cfg = bench_shape_config(shape);
    *tps = 0.0;
    Model *m = NULL;
    ModelKVCache *kv = NULL;
    PonderError err = {0};
    const int64_t prompt = 16, steps = quick ? 32 : 128, V = cfg.vocab_size;
    const int graphs_before = cuda_graphs_enabled(), gemv_before = cuda_gemv_enabled();
    const int fused_before = cuda_fused_enabled();
    cuda_set_graphs(graphs);
    cuda_set_gemv(gemv);
    cuda_set_fused(fused);
    int rc = model_create_on(&m, &cfg, g, &err);
    if (!rc) rc = model_kv_create(&kv, m, slots, prompt + steps + 8, &err);
    if (rc) {
        printf("decode: %s\n", err.msg);
        model_free(m);
        cuda_set_graphs(graphs_before), cuda_set_gemv(gemv_before), cuda_set_fused(fused_before);
        return 1;
    }
    model_init_weights(m, 99);
    float *logits = malloc((size_t)(slots * V) * sizeof(float));
    int32_t *tok = malloc((size_t)(slots > prompt ? slots : prompt) * sizeof(int32_t));
    int64_t *sl = malloc((size_t)slots * sizeof(int64_t));
    Rng r = rng_from_seed(5);
    for (int64_t i = 0; i < prompt; i++) tok[i] = (int32_t)rng_below(&r, (uint64_t)V);
    rc = model_prefill(m, kv, 0, tok, prompt, logits, &err);
    for (int64_t s = 1; s < slots; s++) model_kv_copy_slot(kv, s, 0);
    for (int64_t s = 0; s < slots; s++) sl[s] = s;
    long long cap0, launch0, ref0, cap1, launch1, ref1;
    cuda_graph_stats(&cap0, &launch0, &ref0);
    double t0 = 0.0;
    /* two warm-up steps: the first of a size runs eagerly, the second captures */
    for (int64_t step = -2; step < steps && !rc; step++) {
        if (step == 0) {
            cuda_synchronize();
            t0 = bench_now();
        }
        for (int64_t s = 0; s < slots; s++) tok[s] = (int32_t)rng_below(&r, (uint64_t)V);
        rc = model_decode(m, kv, sl, tok, slots, logits, &err);
    }
    cuda_synchronize();
    double dt = bench_now() - t0;
    cuda_graph_stats(&cap1, &launch1, &ref1);
    if (!rc) {
        *tps = (double)(slots * steps) / dt;
        char name[112];
        snprintf(name, sizeof name, "decode %s batch %lld graphs %s%s%s", shape, (long long)slots,
                 graphs ? "on" : "off", gemv ? "" : " cublas", fused ? " fused" : "");
        double bytes = (double)model_num_params(m) * 4.0;
        double bound = k->copy_gbps * 1e9 / bytes; /* steps/s when reading fp32 weights once */
        result(name, *tps, "tok/s",
               "%.3f ms/step; %.0f%% of the weight-read bound (%.0f steps/s); graphs captured "
               "%lld, replayed %lld, refused %lld; logits[0] %.6g",
               1e3 * dt / (double)steps, 100.0 * ((double)steps / dt) / bound, bound,
               cap1 - cap0, launch1 - launch0, ref1 - ref0, (double)logits[0]);
    } else {
        printf("decode %s batch %lld failed: %s\n", shape, (long long)slots, err.msg);
    }
    free(logits), free(tok), free(sl);
    model_kv_free(kv);
    model_free(m);
    cuda_set_graphs(graphs_before), cuda_set_gemv(gemv_before), cuda_set_fused(fused_before);
    return rc ? 1 : 0;
}

/* Microseconds per call of the ops a batch-1 GPT-2 decode step is made of
 * (launched back to back, so this is GPU time plus any launch gap): tells
 * which op dominates a step. */
static void bench_decode_ops(const ModelOps *g) {
    const int64_t C = 768, NH = 12, hd = 64, L = 128, max_len = 160, V = 50257, it = 200;
    float *x = g->alloc((size_t)(4 * C) * 4), *y = g->alloc((size_t)V * 4); /* x: 3072 wide */
    float *w = g->alloc((size_t)(V * C) * 4), *b = g->alloc((size_t)V * 4);
    float *kc = g->alloc((size_t)(NH * max_len * hd) * 4), *vc = g->alloc((size_t)(NH * max_len * hd) * 4);
    float **ptrs = g->alloc(2 * sizeof(float *));
    int64_t *len = g->alloc(sizeof(int64_t));
    if (!x || !y || !w || !b || !kc || !vc || !ptrs || !len) {
        printf("decode ops: out of device memory\n");
        return;
    }
    float *hp[2] = {kc, vc};
    int64_t hl = L;
    g->upload(ptrs, hp, sizeof hp);
    g->upload(len, &hl, sizeof hl);
    const int64_t mm[][2] = {{C, 3 * C}, {C, C}, {C, 4 * C}, {4 * C, C}, {C, V}};
    for (size_t i = 0; i < sizeof mm / sizeof mm[0]; i++) {
        for (int rep = 0; rep < 2; rep++) { /* rep 0 warms up */
            cuda_synchronize();
            double t0 = bench_now();
            for (int64_t k = 0; k < it; k++) g->matmul_forward(y, x, w, b, 1, mm[i][0], mm[i][1]);
            cuda_synchronize();
            double us = 1e6 * (bench_now() - t0) / (double)it;
            char name[64];
            snprintf(name, sizeof name, "op matmul 1x%lldx%lld", (long long)mm[i][0], (long long)mm[i][1]);
            if (rep) result(name, us, "us", "%.0f GB/s of weights", (double)(mm[i][0] * mm[i][1]) * 4e-3 / us);
        }
    }
    /* the fused forms a GPT-2 layer is made of (ops.h linear_fused) */
    struct {
        const char *name;
        int64_t C, OC;
        int norm, act, resid;
    } fl[] = {{"op fused LN+1x768x2304 (qkv)", C, 3 * C, OPS_NORM_LAYER, OPS_ACT_NONE, 0},
              {"op fused 1x768x768+resid (o)", C, C, OPS_NORM_NONE, OPS_ACT_NONE, 1},
              {"op fused LN+1x768x3072+gelu (fc)", C, 4 * C, OPS_NORM_LAYER, OPS_ACT_GELU, 0},
              {"op fused 1x3072x768+resid (proj)", 4 * C, C, OPS_NORM_NONE, OPS_ACT_NONE, 1},
              {"op fused LN+1x768x50257 (head)", C, V, OPS_NORM_LAYER, OPS_ACT_NONE, 0}};
    for (size_t i = 0; i < sizeof fl / sizeof fl[0]; i++) {
        for (int rep = 0; rep < 2; rep++) {
            cuda_synchronize();
            double t0 = bench_now();
            for (int64_t k = 0; k < it; k++)
                g->linear_fused(y, x, fl[i].resid ? y : NULL, w, fl[i].OC == V ? NULL : b,
                                fl[i].norm ? b : NULL, fl[i].norm ? b + 16 : NULL, 1, fl[i].C,
                                fl[i].OC, fl[i].norm, 1e-5f, fl[i].act);
            cuda_synchronize();
            double us = 1e6 * (bench_now() - t0) / (double)it;
            if (rep)
                result(fl[i].name, us, "us", "%.0f GB/s of weights; fused %s",
                       (double)(fl[i].C * fl[i].OC) * 4e-3 / us, cuda_fused_enabled() ? "on" : "off");
        }
    }
    OpsHeads q = {x, NH * hd};
    for (int rep = 0; rep < 2; rep++) {
        cuda_synchronize();
        double t0 = bench_now();
        for (int64_t k = 0; k < it; k++)
            g->attention_cached(y, q, ptrs, ptrs + 1, len, 1, NH, NH, hd, max_len);
        cuda_synchronize();
        if (rep) result("op attention_cached", 1e6 * (bench_now() - t0) / (double)it, "us", "N=1, 12 heads of 64, 128 keys");
    }
    /* the same attention with the cache write fused in (position 127, so 128 keys) */
    int32_t *posd = g->alloc(sizeof(int32_t));
    if (posd) {
        int32_t hp127 = (int32_t)(L - 1);
        g->upload(posd, &hp127, sizeof hp127);
        OpsHeads kh = {x + C, NH * hd}, vh = {x + 2 * C, NH * hd};
        for (int rep = 0; rep < 2; rep++) {
            cuda_synchronize();
            double t0 = bench_now();
            for (int64_t k = 0; k < it; k++)
                g->attention_cached_write(y, q, kh, vh, ptrs, ptrs + 1, posd, 1, NH, NH, hd, max_len);
            cuda_synchronize();
            if (rep)
                result("op attention_cached_write", 1e6 * (bench_now() - t0) / (double)it, "us",
                       "N=1, 12 heads of 64, 128 keys, cache write fused; fused %s",
                       cuda_fused_enabled() ? "on" : "off");
        }
        g->free(posd);
    }
    for (int rep = 0; rep < 2; rep++) {
        cuda_synchronize();
        double t0 = bench_now();
        for (int64_t k = 0; k < it; k++) g->layernorm_forward(y, b, b + 8, x, w, w, 1, C, 1e-5f);
        cuda_synchronize();
        if (rep) result("op layernorm_forward", 1e6 * (bench_now() - t0) / (double)it, "us", "N=1, C=768");
    }
    g->free(x), g->free(y), g->free(w), g->free(b), g->free(kc), g->free(vc), g->free(ptrs), g->free(len);
}

/* Decode with graphs off and on in one run (batch 1 also with cuBLAS for
 * every matmul and no graphs: the backend as it was before either). The
 * same seeds feed every run, so logits[0] in the notes should agree. */
static int bench_decode_all(const ModelOps *g, const Ceilings *k, int quick) {
    int failed = 0;
    bench_decode_ops(g);
    /* the fused entries run op by op (the step as before the fusion), for comparison */
    const int fused_before = cuda_fused_enabled();
    cuda_set_fused(0);
    bench_decode_ops(g);
    cuda_set_fused(fused_before);
    /* graphs, gemv, fused */
    double tps;
    failed |= bench_decode(g, k, "gpt2", 1, quick, 0, 0, 0, &tps); /* cuBLAS, op by op: the oldest path */
    failed |= bench_decode(g, k, "gpt2", 1, quick, 0, 1, 0, &tps);
    failed |= bench_decode(g, k, "gpt2", 1, quick, 1, 1, 0, &tps); /* the 0.905 ms/step row of 6b62e85 */
    failed |= bench_decode(g, k, "gpt2", 1, quick, 0, 1, 1, &tps);
    failed |= bench_decode(g, k, "gpt2", 1, quick, 1, 1, 1, &tps);
    failed |= bench_decode(g, k, "gpt2", 64, quick, 0, 1, 1, &tps);
    failed |= bench_decode(g, k, "gpt2", 64, quick, 1, 1, 1, &tps);
    /* issue 4's target on this device: batch 64 at least 10x batch 1, tiny config */
    double tiny1 = 0.0, tiny64 = 0.0;
    failed |= bench_decode(g, k, "tiny", 1, quick, 1, 1, 1, &tiny1);
    failed |= bench_decode(g, k, "tiny", 64, quick, 1, 1, 1, &tiny64);
    if (tiny1 > 0.0 && tiny64 > 0.0)
        result("decode tiny batch 64 over batch 1", tiny64 / tiny1, "x",
               "issue 4's target is >= 10x; graphs on, fused, 16-token prompt, %d new tokens",
               quick ? 32 : 128);
    return failed;
}

static int run_bench(const ModelOps *g, int quick, int decode_only) {
    char desc[256];
    cuda_device_describe(desc, sizeof desc);
    printf("device: %s\n", desc);
    int failed = 0;
    double t0 = bench_now();
    if (decode_only) {
        Ceilings k = {0};
        k.copy_gbps = cuda_copy_gbps((size_t)2 << 30, 5);
        result("device copy", k.copy_gbps, "GB/s", "2 GiB device-to-device, read+write bytes");
        failed |= bench_decode_all(g, &k, quick);
        printf("decode in %.1f s\n", bench_now() - t0);
        return failed ? 1 : 0;
    }
    Ceilings k = bench_ceilings(quick);
    printf("ceilings in %.1f s\n", bench_now() - t0);
    t0 = bench_now();
    failed |= bench_train(g, &k, 0, quick);
    printf("fp32 training in %.1f s\n", bench_now() - t0);
    t0 = bench_now();
    failed |= bench_train(g, &k, 1, quick);
    printf("tf32 training in %.1f s\n", bench_now() - t0);
    t0 = bench_now();
    failed |= bench_train(g, &k, 2, quick);
    printf("bf16 training in %.1f s\n", bench_now() - t0);
    t0 = bench_now();
    failed |= bench_decode_all(g, &k, quick);
    printf("decode in %.1f s\n", bench_now() - t0);
    return failed ? 1 : 0;
}

/* NCCL on this one GPU: a one-rank communicator made the way trainer/dist.c
 * makes one (id, non-blocking init under a timeout), then an in-place sum
 * over that one rank, which must leave the values as they were. Multi-GPU
 * sums need several GPUs; this checks the set-up, the polling and the call.
 * 0 passed or skipped (no NCCL in this build), 1 failed. */
static int nccl_smoke(void) {
    if (!cuda_nccl_available()) {
        printf("SKIP nccl: this build has no NCCL\n");
        return 0;
    }
    char why[256] = "";
    unsigned char id[CUDA_NCCL_ID_BYTES];
    CudaNccl *c = NULL;
    const size_t n = 1000003;
    float *h = malloc(n * sizeof(float)), *back = malloc(n * sizeof(float)), *dev = NULL;
    int ok = h && back && cudaMalloc((void **)&dev, n * sizeof(float)) == cudaSuccess;
    for (size_t i = 0; ok && i < n; i++) h[i] = (float)(i % 977) * 0.25f - 3.0f;
    ok = ok && cudaMemcpy(dev, h, n * sizeof(float), cudaMemcpyHostToDevice) == cudaSuccess;
    ok = ok && cuda_nccl_unique_id(id, why, sizeof why) == 0;
    ok = ok && cuda_nccl_create(&c, id, 1, 0, 60.0, why, sizeof why) == 0;
    ok = ok && cuda_nccl_allreduce_sum(c, dev, n, 60.0, why, sizeof why) == 0;
    ok = ok && cudaMemcpy(back, dev, n * sizeof(float), cudaMemcpyDeviceToHost) == cudaSuccess;
    ok = ok && memcmp(h, back, n * sizeof(float)) == 0;
    printf("%s nccl: one-rank communicator and in-place all-reduce of %zu floats%s%s\n",
           ok ? "ok  " : "FAIL", n, why[0] ? ": " : "", why);
    cuda_nccl_free(c);
    cudaFree(dev);
    free(h), free(back);
    return ok ? 0 : 1;
}

#endif /* PONDER_HAVE_CUDA */

int main(int argc, char **argv) {
    int parity = 0, bench = 0, quick = 0, fake = 0, decode_only = 0;
    const char *only = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--parity") == 0) parity = 1;
        else if (strcmp(argv[i], "--bench") == 0) bench = 1;
        else if (strcmp(argv[i], "--quick") == 0) quick = 1;
        else if (strcmp(argv[i], "--decode") == 0) decode_only = 1;
        else if (strcmp(argv[i], "--fake-device") == 0) fake = 1;
        else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc) only = argv[++i];
        else {
            fprintf(stderr,
                    "usage: gpu_bench [--parity [--only case,case] [--fake-device]] [--bench [--quick] [--decode]]\n"
                    "parity cases:");
            for (size_t c = 0; c < PARITY_N_CASES; c++) fprintf(stderr, " %s", PARITY_CASES[c].name);
            fprintf(stderr, "\n");
            return 2;
        }
    }
    if (!parity && !bench) parity = bench = 1;
    if (fake) {
        printf("gpu_bench: parity against the fake device (CPU ops behind device checks)\n");
        int frc = run_parity(&FAKE_DEVICE_OPS, only);
        printf("fake device: %lld graph captures, %lld replays\n", g_fake.graph_captures,
               g_fake.graph_launches);
        return frc;
    }
    const ModelOps *g = ops_cuda();
    if (!g) {
        printf("gpu_bench: no CUDA backend: %s\n", ops_cuda_status());
        return 2;
    }
    printf("gpu_bench: %s\n", ops_cuda_status());
    int rc = 0;
    if (parity) rc |= run_parity(g, only);
#ifdef PONDER_HAVE_CUDA
    if (parity && !only) rc |= nccl_smoke();
    if (parity) {
        long long cap, launch, ref;
        cuda_graph_stats(&cap, &launch, &ref);
        printf("parity: CUDA graphs %s: %lld captured, %lld replayed, %lld refused\n",
               cuda_graphs_enabled() ? "on" : "off", cap, launch, ref);
    }
    if (bench) rc |= run_bench(g, quick, decode_only);
#else
    (void)quick, (void)decode_only;
#endif
    return rc;
}
