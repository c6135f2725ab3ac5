/* tests/test_cuda.c — the CUDA backend against the CPU backend: every op
 * forward and backward on fresh random inputs (relative error <= 1e-5 in
 * fp32), whole-model training steps (forward, backward, AdamW) for both
 * architectures, and KV-cache decoding. The checks live in tests/cuda_parity.h,
 * which bench/gpu_bench.c also runs (`gpu_bench --parity`) on GPU machines
 * without Criterion.
 *
 * Without a GPU (or in a build without CUDA) every parity test is SKIPPED
 * with the reason, never passed. PONDER_PARITY_SEED=<n> replays a run's
 * inputs; PONDER_CUDA_SYNC=1 makes the backend name the op of an
 * asynchronous CUDA fault.
 *
 * The fake_device tests run everywhere: the same suite against the CPU ops
 * behind a checked "device" table (tests/fake_device.h), which exercises the
 * model's device code path (staging, host mirrors, packed decode steps) and
 * the suite itself on machines without a GPU. They say nothing about the CUDA
 * kernels.
 *
 * The RL update's device path (issue 8, trainer/rl_device.c) is tested here
 * too, on the fake device: its loss ops against algo_policy_loss /
 * algo_value_loss over every branch, one policy and one critic mini-batch
 * against the host path with the exact transfers counted, and whole GRPO,
 * GSPO and PPO steps through rl_stage.c against the CPU backend's host path:
 * bit-identical weights, and no per-token download in the update. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>

#include "tests/cuda_parity.h"
#include "tests/fake_device.h"
#include "model/tokenizer.h"
#include "rollout/dataset.h"
#include "rollout/task_arith.h"
#include "trainer/config.h"
#include "trainer/dist.h"
#include "trainer/rl_device.h"
#include "trainer/rl_stage.h"

static const ModelOps *gpu_or_skip(void) {
    const ModelOps *g = ops_cuda();
    if (!g) cr_skip_test("no CUDA device: %s", ops_cuda_status());
    return g;
}

static void run_case(const char *name, ParityFn fn) {
    const ModelOps *g = gpu_or_skip();
    if (!g) return;
    Parity *p = malloc(sizeof *p);
    cr_assert_not_null(p);
    uint64_t seed = parity_seed();
    printf("cuda parity %s on %s (seed %llu: PONDER_PARITY_SEED=%llu replays it)\n", name,
           ops_cuda_status(), (unsigned long long)seed, (unsigned long long)seed);
    parity_init(p, g, seed);
    fn(p);
    parity_release(p);
    cr_expect_eq(p->failed, 0, "%s: %d of %d checks failed (seed %llu): %s", name, p->failed,
                 p->checks, (unsigned long long)seed, p->failures);
    cr_expect_gt(p->checks, 0, "%s ran no check", name);
    free(p);
}

Test(cuda, matmul) { run_case("matmul", parity_matmul); }
Test(cuda, embedding) { run_case("embedding", parity_embedding); }
Test(cuda, norms) { run_case("norms", parity_norms); }
Test(cuda, rope) { run_case("rope", parity_rope); }
Test(cuda, attention) { run_case("attention", parity_attention); }
Test(cuda, attention_cached) { run_case("attention_cached", parity_attention_cached); }
Test(cuda, attention_cached_write) { run_case("attention_cached_write", parity_attention_cached_write); }
Test(cuda, linear_fused) { run_case("linear_fused", parity_linear_fused); }
Test(cuda, activations) { run_case("activations", parity_activations); }
Test(cuda, lm_head) { run_case("lm_head", parity_lm_head); }
Test(cuda, optimizer) { run_case("optimizer", parity_optimizer); }
Test(cuda, model_step) { run_case("model_step", parity_model); }
Test(cuda, decode) { run_case("decode", parity_decode); }
Test(cuda, policy_loss) { run_case("policy_loss", parity_policy_loss); }
Test(cuda, value_loss) { run_case("value_loss", parity_value_loss); }
Test(cuda, loss_helpers) { run_case("loss_helpers", parity_loss_helpers); }
Test(cuda, advantages) { run_case("advantages", parity_advantages); }

/* The one check that runs everywhere: asking for a model on an unavailable
 * backend is an error that says why, and on a GPU the model says it is on it. */
Test(cuda, backend_selection) {
    ModelConfig cfg = parity_config(MODEL_ARCH_LLAMA, 1, 0);
    Model *m = NULL;
    PonderError err = {0};
    const ModelOps *g = ops_cuda();
    cr_assert_not_null(ops_cuda_status());
    if (!g) {
        printf("CUDA backend unavailable: %s\n", ops_cuda_status());
        cr_assert_neq(model_create_on(&m, &cfg, NULL, &err), 0);
        cr_assert_null(m);
        cr_expect(strstr(err.msg, "CUDA") != NULL, "error should name CUDA: %s", err.msg);
        return;
    }
    cr_assert_eq(model_create_on(&m, &cfg, g, &err), 0, "%s", err.msg);
    cr_expect_str_eq(model_backend(m), "cuda");
    model_free(m);
}

/* ------------------------------------------------- without a GPU too ---- */

static void run_fake(const char *name, ParityFn fn) {
    Parity *p = malloc(sizeof *p);
    cr_assert_not_null(p);
    uint64_t seed = parity_seed();
    printf("fake-device parity %s (seed %llu)\n", name, (unsigned long long)seed);
    parity_init(p, &FAKE_DEVICE_OPS, seed);
    fn(p);
    parity_release(p);
    cr_expect_eq(p->failed, 0, "%s: %d of %d checks failed (seed %llu): %s", name, p->failed,
                 p->checks, (unsigned long long)seed, p->failures);
    cr_expect_gt(p->checks, 0, "%s ran no check", name);
    cr_expect_eq(g_fake.n, 0, "%s left %d fake-device allocations", name, g_fake.n);
    free(p);
}

Test(fake_device, ops) {
    run_fake("matmul", parity_matmul);
    run_fake("embedding", parity_embedding);
    run_fake("norms", parity_norms);
    run_fake("rope", parity_rope);
    run_fake("attention", parity_attention);
    run_fake("attention_cached", parity_attention_cached);
    run_fake("attention_cached_write", parity_attention_cached_write);
    run_fake("linear_fused", parity_linear_fused);
    run_fake("activations", parity_activations);
    run_fake("lm_head", parity_lm_head);
    run_fake("optimizer", parity_optimizer);
}

Test(fake_device, model_step) { run_fake("model_step", parity_model); }
Test(fake_device, decode) { run_fake("decode", parity_decode); }

/* ------------------------------------------- the loss ops on the device --- */

Test(fake_device, loss_ops) {
    run_fake("policy_loss", parity_policy_loss);
    run_fake("value_loss", parity_value_loss);
    run_fake("loss_helpers", parity_loss_helpers);
    run_fake("advantages", parity_advantages);
}

/* A fake-device copy of host[0..n) (n floats), or NULL. */
static float *fake_up(const float *host, int64_t n) {
    if (!host) return NULL;
    float *d = FAKE_DEVICE_OPS.alloc((size_t)n * sizeof(float));
    cr_assert_not_null(d);
    FAKE_DEVICE_OPS.upload(d, host, (size_t)n * sizeof(float));
    return d;
}

static void fake_down(float *host, const float *dev, int64_t n) {
    FAKE_DEVICE_OPS.download(host, dev, (size_t)n * sizeof(float));
}

/* The policy_loss op on the fake device against algo_policy_loss itself (the
 * checked public function the host path calls): bit-identical gradients, and
 * the result algo_policy_loss returns, rebuilt from the op's sums. */
static int policy_op_vs_algos(Parity *p, const ParityLossData *d, const AlgoPolicyConfig *c,
                              int use_old, int use_ref, int use_ent, int want_dent) {
    const int64_t S = d->S, T = d->T, N = S * T;
    AlgoBatch b = {S, T, d->mask};
    AlgoPolicyInputs in = {d->logp, use_old ? d->old : NULL, use_ref ? d->ref : NULL, d->adv,
                           use_ent ? d->ent : NULL};
    float *dl = hbuf(p, F4(N)), *de = hbuf(p, F4(N)), *gl = hbuf(p, F4(N)), *ge = hbuf(p, F4(N));
    AlgoPolicyResult want, got;
    PonderError err = {0};
    cr_assert_eq(algo_policy_loss(&b, c, &in, &want, dl, want_dent ? de : NULL, &err), 0, "%s",
                 err.msg);
    float *g_dl = fake_up(dl, N), *g_de = want_dent ? fake_up(de, N) : NULL;
    float *g_lp = fake_up(d->logp, N), *g_old = fake_up(in.old_logp, N);
    float *g_ref = fake_up(in.ref_logp, N), *g_adv = fake_up(d->adv, N);
    float *g_ent = fake_up(in.entropy, N), *g_mask = fake_up(d->mask, N);
    double *g_sums = FAKE_DEVICE_OPS.alloc(OPS_POLICY_NSUMS * sizeof(double)), s[OPS_POLICY_NSUMS];
    FAKE_DEVICE_OPS.zero(g_dl, F4(N)); /* the op must write every position */
    FAKE_DEVICE_OPS.policy_loss(g_dl, g_de, g_sums, g_lp, g_ent, g_old, g_ref, g_adv, g_mask,
                                rl_device_policy_cfg(c, algo_agg_denominator(&b, &c->agg)), S, T);
    FAKE_DEVICE_OPS.download(s, g_sums, sizeof s);
    fake_down(gl, g_dl, N);
    if (want_dent) fake_down(ge, g_de, N);
    AlgoPolicySums sums = {s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9], s[10]};
    got = algo_core_policy_result(&sums, c);
    float *bufs[] = {g_dl, g_de, g_lp, g_old, g_ref, g_adv, g_ent, g_mask};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) FAKE_DEVICE_OPS.free(bufs[i]);
    FAKE_DEVICE_OPS.free(g_sums);
    int same = memcmp(gl, dl, F4(N)) == 0 && (!want_dent || memcmp(ge, de, F4(N)) == 0) &&
               memcmp(&got, &want, sizeof got) == 0;
    return same;
}

/* Every combination of the branches: loss types, ratio levels, estimators and
 * their clamp, dual clip, clip ranges (including ties reached through exp of
 * a nonzero argument: eps_high = exp(0.5) - 1 meets tokens with log-ratio
 * 0.5, dual clip c = exp(1.5) tokens with log-ratio 1.5), log-ratio clamps,
 * entropy, and missing old / reference / entropy inputs. */
Test(fake_device, policy_loss_op_equals_algos) {
    Parity *p = malloc(sizeof *p);
    cr_assert_not_null(p);
    parity_init(p, &FAKE_DEVICE_OPS, parity_seed());
    volatile double half = 0.5, one_half = 1.5; /* computed at run time, as the loss does */
    const double tie_high = exp(half) - 1.0, tie_dual = exp(one_half);
    int cases = 0, same = 0;
    for (int extremes = 0; extremes < 2; extremes++) {
        ParityLossData d = parity_loss_data(p, 7, 40, extremes);
        for (int type = 0; type < 4; type++)
            for (int seq = 0; seq < 2; seq++)
                for (int est = 0; est < 3; est++)
                    for (int eps = 0; eps < 3; eps++)
                        for (int opt = 0; opt < 4; opt++) {
                            AlgoPolicyConfig c = algo_policy_config_default();
                            c.agg = (AlgoAgg){(AlgoLossType)type, 50, opt == 3 ? 23.0 : 0.0};
                            c.ratio_level = seq ? ALGO_RATIO_SEQUENCE : ALGO_RATIO_TOKEN;
                            c.kl = (AlgoKl){(AlgoKlEstimator)est, opt % 2 ? 0.05 : 0.0, extremes};
                            c.epsilon_low = eps == 1 ? 0.0 : 0.2;
                            c.epsilon_high = eps == 0 ? 0.28 : eps == 1 ? 0.0 : tie_high;
                            c.dual_clip_c = eps == 2 ? tie_dual : (opt < 2 ? 3.0 : 0.0);
                            c.log_ratio_clamp = opt == 2 ? 0.5 : (opt == 1 ? 0.0 : 20.0);
                            c.entropy_coef = opt >= 2 ? 0.01 : 0.0;
                            const int use_old = opt != 1, use_ent = opt != 0 || c.entropy_coef != 0;
                            cases++;
                            same += policy_op_vs_algos(p, &d, &c, use_old, 1, use_ent,
                                                       opt % 2 == 0 || c.entropy_coef != 0);
                        }
    }
    parity_release(p);
    free(p);
    cr_expect_eq(same, cases, "%d of %d configurations differ from algo_policy_loss", cases - same,
                 cases);
    cr_expect_eq(g_fake.n, 0, "left %d fake-device allocations", g_fake.n);
}

Test(fake_device, value_loss_op_equals_algos) {
    Parity *p = malloc(sizeof *p);
    cr_assert_not_null(p);
    parity_init(p, &FAKE_DEVICE_OPS, parity_seed());
    ParityLossData d = parity_loss_data(p, 6, 33, 0);
    const int64_t N = d.S * d.T;
    AlgoBatch b = {d.S, d.T, d.mask};
    for (int type = 0; type < 4; type++)
        for (int clip = 0; clip < 2; clip++) {
            AlgoValueConfig c = {clip ? 0.5 : 0.0, {(AlgoLossType)type, 40, type == 3 ? 17.0 : 0.0}};
            float *dv = hbuf(p, F4(N)), *gv = hbuf(p, F4(N));
            AlgoValueResult want;
            PonderError err = {0};
            cr_assert_eq(algo_value_loss(&b, &c, d.val, d.old_val, d.ret, &want, dv, &err), 0,
                         "%s", err.msg);
            float *g_dv = fake_up(dv, N), *g_v = fake_up(d.val, N), *g_ov = fake_up(d.old_val, N);
            float *g_r = fake_up(d.ret, N), *g_m = fake_up(d.mask, N);
            double *g_s = FAKE_DEVICE_OPS.alloc(OPS_VALUE_NSUMS * sizeof(double)), s[OPS_VALUE_NSUMS];
            FAKE_DEVICE_OPS.zero(g_dv, F4(N));
            FAKE_DEVICE_OPS.value_loss(g_dv, g_s, g_v, clip ? g_ov : NULL, g_r, g_m,
                                       rl_device_value_cfg(&c, algo_agg_denominator(&b, &c.agg)),
                                       d.S, d.T);
            FAKE_DEVICE_OPS.download(s, g_s, sizeof s);
            fake_down(gv, g_dv, N);
            AlgoValueSums sums = {s[0], s[1], s[2], s[3]};
            AlgoValueResult got = algo_core_value_result(&sums);
            cr_expect(memcmp(gv, dv, F4(N)) == 0, "dvalues differ (type %d clip %d)", type, clip);
            cr_expect(memcmp(&got, &want, sizeof got) == 0, "result differs (type %d clip %d)",
                      type, clip);
            float *bufs[] = {g_dv, g_v, g_ov, g_r, g_m};
            for (size_t i = 0; i < 5; i++) FAKE_DEVICE_OPS.free(bufs[i]);
            FAKE_DEVICE_OPS.free(g_s);
        }
    parity_release(p);
    free(p);
    cr_expect_eq(g_fake.n, 0, "left %d fake-device allocations", g_fake.n);
}

/* ------------------------------- one mini-batch of the update, both paths --- */

/* An RL-shaped batch: S rows, prompts of different lengths left-padded to
 * Pmax, completions of different lengths (one row empty) right-padded to Tc;
 * the model sees [S, T = Pmax + Tc - 1], completion token t at Pmax - 1 + t. */
typedef struct MiniBatch {
    int64_t S, T, Tc, Pmax;
    int32_t *tokens, *targets, *start;
    float *mask, *cmask;
} MiniBatch;

static MiniBatch mini_batch(Parity *p, int64_t V) {
    MiniBatch b = {6, 0, 9, 5, NULL, NULL, NULL, NULL, NULL};
    b.T = b.Pmax + b.Tc - 1;
    const int64_t N = b.S * b.T;
    b.tokens = rnd_ids(p, N, V), b.targets = rnd_ids(p, N, V);
    b.start = hbuf(p, I4(b.S)), b.mask = hbuf(p, F4(N)), b.cmask = hbuf(p, F4(b.S * b.Tc));
    for (int64_t i = 0; i < b.S; i++) {
        const int64_t prompt = 2 + i % 4, n = i == 3 ? 0 : b.Tc - i; /* row 3: no tokens */
        b.start[i] = (int32_t)(b.Pmax - prompt);
        for (int64_t t = 0; t < n; t++) {
            b.cmask[i * b.Tc + t] = 1.0f;
            b.mask[i * b.T + b.Pmax - 1 + t] = 1.0f;
        }
    }
    return b;
}

static ModelBatch model_rows(const MiniBatch *b, int64_t r0, int64_t rows, float temperature) {
    ModelBatch mb = {rows, b->T, b->tokens + r0 * b->T, b->targets + r0 * b->T,
                     b->mask + r0 * b->T, b->start + r0, temperature};
    return mb;
}

static Model *twin(const ModelOps *ops, int scalar, uint64_t seed) {
    ModelConfig cfg = parity_config(MODEL_ARCH_LLAMA, 1, scalar);
    Model *m = NULL;
    PonderError err = {0};
    cr_assert_eq(model_create_on(&m, &cfg, ops, &err), 0, "%s", err.msg);
    model_share_prefixes(m, 0); /* the fake device computes every position: so must its twin */
    model_init_weights(m, seed);
    return m;
}

/* rl_stage's host path for one policy mini-batch, on the CPU model. */
static void host_policy_minibatch(Model *m, const MiniBatch *b, int64_t r0, int64_t rows,
                                  const AlgoPolicyConfig *pc, const float *old, const float *ref,
                                  const float *adv, AlgoPolicyResult *res, float temperature) {
    const int64_t T = b->T, Tc = b->Tc, N = rows * T;
    float *lp = calloc((size_t)N, 4), *ent = calloc((size_t)N, 4);
    float *lpc = calloc((size_t)(b->S * Tc), 4), *entc = calloc((size_t)(b->S * Tc), 4);
    float *dl = calloc((size_t)(b->S * Tc), 4), *de = calloc((size_t)(b->S * Tc), 4);
    float *dfull = calloc((size_t)N, 4), *defull = calloc((size_t)N, 4);
    ModelBatch mb = model_rows(b, r0, rows, temperature);
    PonderError err = {0};
    cr_assert_eq(model_forward(m, &mb, lp, ent, NULL, &err), 0, "%s", err.msg);
    for (int64_t i = 0; i < rows; i++) {
        memcpy(lpc + (r0 + i) * Tc, lp + i * T + b->Pmax - 1, F4(Tc));
        memcpy(entc + (r0 + i) * Tc, ent + i * T + b->Pmax - 1, F4(Tc));
    }
    const int64_t o = r0 * Tc;
    AlgoBatch ab = {rows, Tc, b->cmask + o};
    AlgoPolicyInputs in = {lpc + o, old ? old + o : NULL, ref + o, adv + o, entc + o};
    cr_assert_eq(algo_policy_loss(&ab, pc, &in, res, dl + o, de + o, &err), 0, "%s", err.msg);
    for (int64_t i = 0; i < rows; i++) {
        memcpy(dfull + i * T + b->Pmax - 1, dl + (r0 + i) * Tc, F4(Tc));
        memcpy(defull + i * T + b->Pmax - 1, de + (r0 + i) * Tc, F4(Tc));
    }
    cr_assert_eq(model_backward(m, dfull, pc->entropy_coef != 0 ? defull : NULL, NULL, &err), 0,
                 "%s", err.msg);
    free(lp), free(ent), free(lpc), free(entc), free(dl), free(de), free(dfull), free(defull);
}

/* rl_stage's host path for one critic mini-batch. */
static void host_value_minibatch(Model *m, const MiniBatch *b, int64_t r0, int64_t rows,
                                 const AlgoValueConfig *vc, const float *old_v, const float *ret,
                                 AlgoValueResult *res) {
    const int64_t T = b->T, Tc = b->Tc, N = rows * T;
    float *lp = calloc((size_t)N, 4), *v = calloc((size_t)N, 4);
    float *vcmp = calloc((size_t)(b->S * Tc), 4), *dv = calloc((size_t)(b->S * Tc), 4);
    float *dvfull = calloc((size_t)N, 4);
    ModelBatch mb = model_rows(b, r0, rows, 1.0f);
    PonderError err = {0};
    cr_assert_eq(model_forward(m, &mb, lp, NULL, v, &err), 0, "%s", err.msg);
    for (int64_t i = 0; i < rows; i++) memcpy(vcmp + (r0 + i) * Tc, v + i * T + b->Pmax - 1, F4(Tc));
    const int64_t o = r0 * Tc;
    AlgoBatch ab = {rows, Tc, b->cmask + o};
    cr_assert_eq(algo_value_loss(&ab, vc, vcmp + o, old_v + o, ret + o, res, dv + o, &err), 0, "%s",
                 err.msg);
    for (int64_t i = 0; i < rows; i++) memcpy(dvfull + i * T + b->Pmax - 1, dv + (r0 + i) * Tc, F4(Tc));
    cr_assert_eq(model_backward(m, NULL, NULL, dvfull, &err), 0, "%s", err.msg);
    free(lp), free(v), free(vcmp), free(dv), free(dvfull);
}

static int same_grads(Model *a, Model *b) {
    return memcmp(model_grads(a), model_grads(b), model_num_params(a) * sizeof(float)) == 0;
}

/* One policy and one critic mini-batch (rows 2..4 of 6) through
 * trainer/rl_device.c on the fake device against the host path on the CPU
 * backend: bit-identical gradients and results, and per mini-batch exactly
 * one download (the loss's sums, <= 12 doubles) and the model's five batch
 * uploads (tokens, targets, positions, starts, mask): no per-token array
 * crosses to the host, and the loss inputs are not uploaded again. */
Test(fake_device, rl_minibatch_device_path_matches_host) {
    Parity *p = malloc(sizeof *p);
    cr_assert_not_null(p);
    parity_init(p, &FAKE_DEVICE_OPS, parity_seed());
    const uint64_t seed = rng_next_u64(&p->rng);
    Model *cpu = twin(ops_cpu(), 0, seed), *dev = twin(&FAKE_DEVICE_OPS, 0, seed);
    MiniBatch b = mini_batch(p, model_config(cpu)->vocab_size);
    const int64_t SC = b.S * b.Tc, r0 = 2, rows = 3;
    const float temp = 0.9f;
    /* old / reference log-probs near the model's own, so ratios sit near 1 */
    float *lp = hbuf(p, F4(b.S * b.T)), *base = hbuf(p, F4(SC));
    PonderError err = {0};
    ModelBatch all = model_rows(&b, 0, b.S, temp);
    cr_assert_eq(model_forward(cpu, &all, lp, NULL, NULL, &err), 0, "%s", err.msg);
    for (int64_t i = 0; i < b.S; i++) memcpy(base + i * b.Tc, lp + i * b.T + b.Pmax - 1, F4(b.Tc));
    float *old = hbuf(p, F4(SC)), *ref = hbuf(p, F4(SC)), *adv = rnd(p, SC, 1.0);
    float *sample = hbuf(p, F4(SC)), *ret = rnd(p, SC, 1.0), *old_v = rnd(p, SC, 0.3);
    for (int64_t k = 0; k < SC; k++) {
        old[k] = base[k] + (float)(0.3 * rng_normal(&p->rng));
        ref[k] = base[k] + (float)(0.2 * rng_normal(&p->rng));
        sample[k] = base[k] + (float)(1e-3 * rng_normal(&p->rng));
    }
    RlDeviceBatch d;
    RlDeviceInputs in = {b.cmask, adv, old, ref, sample, ret, old_v};
    cr_assert_eq(rl_device_batch_create(&d, &FAKE_DEVICE_OPS, b.S, b.T, b.Tc, b.Pmax, &in, &err), 0,
                 "%s", err.msg);
    for (int variant = 0; variant < 2; variant++) { /* several updates per rollout; on-policy */
        AlgoPolicyConfig pc = algo_policy_config_default();
        pc.epsilon_high = 0.28, pc.dual_clip_c = 3.0, pc.entropy_coef = 0.01;
        pc.kl = (AlgoKl){ALGO_KL_K3, 0.04, 0};
        pc.agg = (AlgoAgg){variant ? ALGO_LOSS_GRPO : ALGO_LOSS_DAPO, b.Tc, variant ? 0.0 : 19.0};
        pc.ratio_level = variant ? ALGO_RATIO_SEQUENCE : ALGO_RATIO_TOKEN;
        const int use_old = variant == 0;
        AlgoPolicyResult want, got;
        model_zero_grad(cpu), model_zero_grad(dev);
        host_policy_minibatch(cpu, &b, r0, rows, &pc, use_old ? old : NULL, ref, adv, &want, temp);
        ModelBatch mb = model_rows(&b, r0, rows, temp);
        AlgoBatch ab = {rows, b.Tc, b.cmask + r0 * b.Tc};
        double mismatch = -1.0;
        const long long up0 = g_fake.uploads, down0 = g_fake.downloads, bytes0 = g_fake.download_bytes;
        cr_assert_eq(rl_device_policy_minibatch(dev, &d, &mb, r0, &ab, &pc, use_old, &got,
                                                use_old ? NULL : &mismatch, &err),
                     0, "%s", err.msg);
        cr_expect_eq(g_fake.downloads - down0, 1, "variant %d: %lld downloads in the mini-batch",
                     variant, g_fake.downloads - down0);
        cr_expect_leq(g_fake.download_bytes - bytes0, (OPS_POLICY_NSUMS + 1) * 8);
        cr_expect_eq(g_fake.uploads - up0, 5, "variant %d: %lld uploads (the batch's 5 expected)",
                     variant, g_fake.uploads - up0);
        cr_expect(same_grads(cpu, dev), "variant %d: gradients differ from the host path", variant);
        cr_expect(memcmp(&got, &want, sizeof got) == 0, "variant %d: loss/metrics differ", variant);
        if (!use_old) { /* the host's mismatch over the same rows */
            double m = 0.0;
            float *lpc = hbuf(p, F4(b.T * rows));
            ModelBatch again = model_rows(&b, r0, rows, temp);
            cr_assert_eq(model_forward(cpu, &again, lpc, NULL, NULL, &err), 0, "%s", err.msg);
            for (int64_t i = 0; i < rows; i++)
                for (int64_t t = 0; t < b.Tc; t++)
                    if (b.cmask[(r0 + i) * b.Tc + t] != 0.0f)
                        m = fmax(m, fabs((double)lpc[i * b.T + b.Pmax - 1 + t] -
                                         sample[(r0 + i) * b.Tc + t]));
            cr_expect_eq(mismatch, m, "logp mismatch %g, host %g", mismatch, m);
        }
    }
    model_free(cpu), model_free(dev);
    /* the critic: a scalar-head model, value loss with and without clipping */
    cpu = twin(ops_cpu(), 1, seed), dev = twin(&FAKE_DEVICE_OPS, 1, seed);
    for (int clip = 0; clip < 2; clip++) {
        AlgoValueConfig vc = {clip ? 0.2 : 0.0, {ALGO_LOSS_BNPO, b.Tc, 0.0}};
        AlgoValueResult want, got;
        model_zero_grad(cpu), model_zero_grad(dev);
        host_value_minibatch(cpu, &b, r0, rows, &vc, old_v, ret, &want);
        ModelBatch mb = model_rows(&b, r0, rows, 1.0f);
        AlgoBatch ab = {rows, b.Tc, b.cmask + r0 * b.Tc};
        const long long up0 = g_fake.uploads, down0 = g_fake.downloads;
        cr_assert_eq(rl_device_value_minibatch(dev, &d, &mb, r0, &ab, &vc, &got, &err), 0, "%s",
                     err.msg);
        cr_expect_eq(g_fake.downloads - down0, 1, "critic: %lld downloads", g_fake.downloads - down0);
        cr_expect_eq(g_fake.uploads - up0, 5, "critic: %lld uploads", g_fake.uploads - up0);
        cr_expect(same_grads(cpu, dev), "critic clip %d: gradients differ from the host path", clip);
        cr_expect(memcmp(&got, &want, sizeof got) == 0, "critic clip %d: results differ", clip);
    }
    rl_device_batch_free(&d);
    model_free(cpu), model_free(dev);
    parity_release(p);
    free(p);
    cr_expect_eq(g_fake.n, 0, "left %d fake-device allocations", g_fake.n);
}

/* ---------------------------------- whole RL steps through rl_stage.c ---- */

/* A small RL stage (configs/grpo_arith.yaml or ppo_arith.yaml, a 1-layer
 * model) with the policy on a given backend, set up as trainer/train.c does.
 * The reward is an external script hashing each request line into 0..6, so
 * an untrained model's groups are rarely constant and the clipped surrogate
 * sees nonzero advantages. */
typedef struct RlRig {
    PonderConfig cfg;
    Tokenizer *tok;
    Dataset *train;
    Model *policy;
    Optimizer opt;
    RlStage stage;
    Dist dist;
    int64_t cursor;
} RlRig;

static void rig_start(RlRig *r, const char *dir, const char *yaml, const ModelOps *ops,
                      char **extra, int n_extra) {
    memset(r, 0, sizeof *r);
    char dir_kv[300], cmd_kv[400], script[300];
    snprintf(script, sizeof script, "%s/reward.sh", dir);
    FILE *f = fopen(script, "w");
    cr_assert_not_null(f);
    fputs("while IFS= read -r line; do\n"
          "  h=$(printf '%s' \"$line\" | cksum | cut -d' ' -f1)\n"
          "  echo \"{\\\"reward\\\": $((h % 7))}\"\n"
          "done\n", f);
    fclose(f);
    snprintf(dir_kv, sizeof dir_kv, "run.dir=%s", dir);
    snprintf(cmd_kv, sizeof cmd_kv, "rewards.0.command=sh %s", script);
    char *base[] = {dir_kv, "model.d_model=32", "model.n_layer=1", "model.n_head=2",
                    "model.max_seq_len=64", "stages.1.steps=4", "stages.1.prompts_per_step=2",
                    "stages.1.num_generations=4", "stages.1.max_new_tokens=10",
                    "stages.1.lr=1e-3", "rewards.0.name=hash", "rewards.0.type=external",
                    cmd_kv, "rewards.1.weight=0", "runtime.threads=1",
                    /* the fake device computes every row in full: so must the CPU twin */
                    "model.share_prefixes=false"};
    char *all[40];
    int n = 0;
    for (size_t i = 0; i < sizeof base / sizeof base[0]; i++) all[n++] = base[i];
    for (int i = 0; i < n_extra; i++) all[n++] = extra[i];
    PonderError err = {0};
    cr_assert_eq(config_load(&r->cfg, yaml, n, all, &err), 0, "%s", err.msg);
    cr_assert_eq(tokenizer_create_char(&r->tok, &err), 0, "%s", err.msg);
    ModelConfig mc;
    cr_assert_eq(config_model(&r->cfg, &mc, tokenizer_vocab_size(r->tok), &err), 0, "%s", err.msg);
    cr_assert_eq(model_create_on(&r->policy, &mc, ops, &err), 0, "%s", err.msg);
    model_share_prefixes(r->policy, r->cfg.model.share_prefixes);
    model_init_weights(r->policy, (uint64_t)r->cfg.run.seed);
    ArithSpec spec = {(int)r->cfg.data.min_digits, (int)r->cfg.data.max_digits, "+-"};
    cr_assert_eq(dataset_open_arith(&r->train, &spec, (uint64_t)r->cfg.run.seed, DATA_SPLIT_TRAIN,
                                    0, &err),
                 0, "%s", err.msg);
    OptimSettings os = optim_settings_default();
    os.lr = 1e-3f;
    os.total_steps = 4;
    cr_assert_eq(optim_create(&r->opt, r->policy, &os, &err), 0, "%s", err.msg);
    dist_single(&r->dist);
    RlRanks ranks = {&r->dist, &r->dist, RL_ROLE_COLOCATED, 0, 0};
    cr_assert_eq(rl_stage_begin(&r->stage, &ranks, &r->cfg, 1, r->policy, &r->opt, r->tok,
                                r->train, dir, 0, 0, &err),
                 0, "%s", err.msg);
}

static void rig_step(RlRig *r, int64_t step, RlStepStats *st) {
    PonderError err = {0};
    cr_assert_eq(rl_stage_step(&r->stage, step, &r->cursor, st, &err), 0, "step %lld: %s",
                 (long long)step, err.msg);
}

static void rig_end(RlRig *r) {
    rl_stage_end(&r->stage);
    optim_free(&r->opt);
    model_free(r->policy);
    dataset_free(r->train);
    tokenizer_free(r->tok);
}

/* The fake device without the RL ops: the host path on a device backend
 * (every per-token array downloaded), the baseline the transfers are
 * counted against. */
static const ModelOps *fake_without_rl_ops(void) {
    static ModelOps t;
    t = FAKE_DEVICE_OPS;
    t.name = "fake-device-host-losses";
    t.policy_loss = NULL, t.value_loss = NULL, t.masked_max_abs_diff = NULL, t.copy_2d = NULL;
    return &t;
}

static void expect_same_weights(Model *a, Model *b, const char *what, int64_t step) {
    cr_expect(memcmp(model_params(a), model_params(b), model_num_params(a) * sizeof(float)) == 0,
              "step %lld: %s", (long long)step, what);
}

static void stats_vector(const RlStepStats *st, double *v) {
    const double x[] = {st->reward_mean, st->policy_loss, st->clip_low,   st->clip_high,
                        st->dual_clip,   st->entropy,     st->kl,         st->grad_norm,
                        st->value_loss,  st->value_clip,  st->logp_mismatch_max};
    memcpy(v, x, sizeof x);
}

/* Two steps of one configuration three ways: the CPU backend (host path), the
 * fake device with the RL ops (device path) and the fake device without them
 * (host path on a device backend). All three give the same weights and
 * metrics, bit for bit (the fake device's ops are the CPU's, its loss ops
 * algos' own loops). In the device run no download bigger than a loss's sums
 * (FAKE_SMALL_DOWNLOAD) follows the step's first RL op, and it makes exactly
 * `saved` fewer per-token downloads than the host path on the same backend
 * (the mini-batches' logp / entropy / values, and the rollout scoring that
 * moved to the device). */
static void same_steps(const char *yaml, char **extra, int n_extra, long long saved) {
    char d1[] = "/tmp/ponder_rlcpu_XXXXXX", d2[] = "/tmp/ponder_rldev_XXXXXX";
    char d3[] = "/tmp/ponder_rlhst_XXXXXX";
    cr_assert(mkdtemp(d1) && mkdtemp(d2) && mkdtemp(d3));
    RlRig *cpu = calloc(1, sizeof *cpu), *dev = calloc(1, sizeof *dev), *hst = calloc(1, sizeof *hst);
    cr_assert(cpu && dev && hst);
    rig_start(cpu, d1, yaml, ops_cpu(), extra, n_extra);
    rig_start(dev, d2, yaml, &FAKE_DEVICE_OPS, extra, n_extra);
    rig_start(hst, d3, yaml, fake_without_rl_ops(), extra, n_extra);
    const size_t np = model_num_params(cpu->policy);
    double moved = 0.0;
    for (int64_t step = 0; step < 2; step++) {
        float *before = malloc(np * sizeof(float));
        cr_assert_not_null(before);
        memcpy(before, model_params(cpu->policy), np * sizeof(float));
        RlStepStats a, b, c;
        rig_step(cpu, step, &a);
        g_fake.rl_ops = g_fake.big_downloads_after_rl_op = 0;
        const long long big0 = g_fake.big_downloads;
        rig_step(dev, step, &b);
        const long long big_dev = g_fake.big_downloads - big0, rl_ops = g_fake.rl_ops;
        const long long after = g_fake.big_downloads_after_rl_op;
        const long long big1 = g_fake.big_downloads;
        rig_step(hst, step, &c);
        const long long big_host = g_fake.big_downloads - big1;
        printf("%s step %lld: reward %.3f, policy loss %.6g; downloads over %d bytes: %lld on the "
               "device path (%lld after its first of %lld RL ops), %lld on the host path\n",
               strrchr(yaml, '/') + 1, (long long)step, a.reward_mean, a.policy_loss,
               FAKE_SMALL_DOWNLOAD, big_dev, after, rl_ops, big_host);
        cr_expect_gt(rl_ops, 0, "step %lld did not take the device path", (long long)step);
        cr_expect_eq(after, 0, "step %lld: %lld per-token downloads after the first RL op",
                     (long long)step, after);
        cr_expect_eq(big_host - big_dev, saved,
                     "step %lld: the device path saved %lld per-token downloads, expected %lld",
                     (long long)step, big_host - big_dev, saved);
        expect_same_weights(cpu->policy, dev->policy, "device path weights differ from the CPU's", step);
        expect_same_weights(cpu->policy, hst->policy, "host path on the fake device differs", step);
        if (cpu->stage.critic) {
            expect_same_weights(cpu->stage.critic, dev->stage.critic, "critic weights differ", step);
            expect_same_weights(cpu->stage.critic, hst->stage.critic, "critic weights differ (host)", step);
        }
        double va[11], vb[11], vc[11];
        stats_vector(&a, va), stats_vector(&b, vb), stats_vector(&c, vc);
        cr_expect(memcmp(va, vb, sizeof va) == 0 && memcmp(va, vc, sizeof va) == 0,
                  "step %lld: metrics differ", (long long)step);
        for (size_t i = 0; i < np; i++)
            moved = fmax(moved, fabs((double)model_params(cpu->policy)[i] - before[i]));
        free(before);
    }
    cr_expect_gt(moved, 0.0, "the policy never moved: the test compares nothing");
    rig_end(cpu), rig_end(dev), rig_end(hst);
    free(cpu), free(dev), free(hst);
    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf %s %s %s", d1, d2, d3);
    cr_expect_eq(system(cmd), 0);
}

/* GRPO on-policy (logp_mismatch reduced on the device), KL in the loss
 * (k3), entropy bonus, clip-higher and dual clip. One mini-batch: its logp
 * and entropy stay on the device (2), and so does the reference's scoring (1). */
Test(fake_device, rl_grpo_steps_match_cpu, .timeout = 300) {
    char *extra[] = {"stages.1.beta=0.04", "stages.1.entropy_coef=0.01",
                     "stages.1.epsilon_high=0.28", "stages.1.dual_clip=3"};
    same_steps(PONDER_SOURCE_DIR "/configs/grpo_arith.yaml", extra, 4, 2 + 1);
}

/* GSPO: sequence-level ratio, two mini-batches and two passes (old
 * log-probs scored on the device, with their mismatch), loss_type grpo, k2.
 * Saved: 4 mini-batches x (logp, entropy) + the old and reference scoring. */
Test(fake_device, rl_gspo_steps_match_cpu, .timeout = 300) {
    char *extra[] = {"stages.1.ratio_level=sequence", "stages.1.mini_batches=2",
                     "stages.1.num_iterations=2", "stages.1.loss_type=grpo",
                     "stages.1.beta=0.02", "stages.1.kl_estimator=k2"};
    same_steps(PONDER_SOURCE_DIR "/configs/grpo_arith.yaml", extra, 6, 4 * 2 + 2);
}

/* PPO: the critic's value loss on the device (clipped), token rewards with
 * KL in the reward, GAE and whitening on the device, two mini-batches and
 * two epochs, loss_type bnpo. Saved: 4 mini-batches x (policy logp,
 * entropy; critic logp, values) + scoring (old, reference, the critic's
 * logp and values). */
Test(fake_device, rl_ppo_steps_match_cpu, .timeout = 300) {
    char *extra[] = {"stages.1.beta=0.05", "stages.1.kl_in_reward=true",
                     "stages.1.loss_type=bnpo", "stages.1.entropy_coef=0.01"};
    same_steps(PONDER_SOURCE_DIR "/configs/ppo_arith.yaml", extra, 4, 4 * 4 + 4);
}

/* REINFORCE++ without the baseline: discounted returns (gamma 0.9) with KL
 * in the reward, whitened into the advantages on the device; dr_grpo.
 * Saved: one mini-batch's logp and entropy + scoring (old, reference). */
Test(fake_device, rl_reinforce_pp_steps_match_cpu, .timeout = 300) {
    char *extra[] = {"stages.1.rpp_baseline=false", "stages.1.gamma=0.9", "stages.1.beta=0.05",
                     "stages.1.kl_in_reward=true", "stages.1.loss_type=dr_grpo",
                     "stages.1.kl_target=0.1"};
    same_steps(PONDER_SOURCE_DIR "/configs/reinforce_pp_arith.yaml", extra, 6, 2 + 2);
}

/* REINFORCE++ with the baseline (group-centred rewards whitened on the host,
 * sequence-level data): scoring on the device, loss there. */
Test(fake_device, rl_reinforce_pp_baseline_steps_match_cpu, .timeout = 300) {
    char *extra[] = {"stages.1.beta=0.02", "stages.1.mini_batches=2"};
    same_steps(PONDER_SOURCE_DIR "/configs/reinforce_pp_arith.yaml", extra, 2, 2 * 2 + 2);
}
