/* tests/test_algos_golden.c — advantage estimators and losses against golden
 * values computed by an independent float64 PyTorch transcription of TRL's and
 * verl's code (tools/reference/algos_golden.py -> tests/data/algos_golden.h5).
 *
 * Every compared array must satisfy max|a - b| / max(max|b|, 1e-6) <= 1e-5
 * (inputs are float32 as the model gives them; the C side computes in double
 * and returns per-token values as float, hence ~1e-7 differences). */
#include <criterion/criterion.h>
#include <hdf5.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "algos/advantage.h"
#include "algos/kl.h"
#include "algos/loss.h"

#define GOLDEN PONDER_TEST_DATA "/algos_golden.h5"
#define REL_TOL 1e-5

/* --------------------------------------------------------------- reading -- */

static hid_t golden_open(void) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t f = H5Fopen(GOLDEN, H5F_ACC_RDONLY, H5P_DEFAULT);
    cr_assert(f >= 0, "cannot open %s (regenerate with tools/reference/algos_golden.py)", GOLDEN);
    return f;
}

/* Reads dataset case/path converted to mem_type; *n gets the element count and
 * dims (may be NULL) the shape (rank <= 2). */
static void *h5_get(hid_t f, const char *kase, const char *path, hid_t mem_type, size_t *n,
                    hsize_t dims[2]) {
    char full[256];
    snprintf(full, sizeof full, "%s/%s", kase, path);
    hid_t d = H5Dopen2(f, full, H5P_DEFAULT);
    cr_assert(d >= 0, "dataset %s missing", full);
    hid_t s = H5Dget_space(d);
    int nd = H5Sget_simple_extent_ndims(s);
    cr_assert(nd >= 0 && nd <= 2, "%s: rank %d", full, nd);
    hsize_t dd[2] = {1, 1};
    H5Sget_simple_extent_dims(s, dd, NULL);
    size_t count = 1;
    for (int i = 0; i < nd; i++) count *= (size_t)dd[i];
    void *buf = malloc(count * H5Tget_size(mem_type));
    cr_assert(buf);
    cr_assert(H5Dread(d, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) >= 0, "cannot read %s",
              full);
    H5Sclose(s);
    H5Dclose(d);
    if (n) *n = count;
    if (dims) {
        dims[0] = nd >= 1 ? dd[0] : 1;
        dims[1] = nd >= 2 ? dd[1] : 1;
    }
    return buf;
}

static float *get_f(hid_t f, const char *k, const char *p, hsize_t dims[2]) {
    return h5_get(f, k, p, H5T_NATIVE_FLOAT, NULL, dims);
}
static double *get_d(hid_t f, const char *k, const char *p, size_t *n) {
    return h5_get(f, k, p, H5T_NATIVE_DOUBLE, n, NULL);
}
static double get_scalar(hid_t f, const char *k, const char *p) {
    double *v = get_d(f, k, p, NULL);
    double x = v[0];
    free(v);
    return x;
}

/* ------------------------------------------------------------- comparing -- */

static void expect_close_f(const char *what, const float *got, const double *want, size_t n) {
    double maxdiff = 0.0, maxref = 0.0;
    for (size_t i = 0; i < n; i++) {
        maxdiff = fmax(maxdiff, fabs((double)got[i] - want[i]));
        maxref = fmax(maxref, fabs(want[i]));
    }
    double rel = maxdiff / fmax(maxref, 1e-6);
    cr_log_info("%-40s max|diff| %.3e  max|ref| %.3e  rel %.3e", what, maxdiff, maxref, rel);
    cr_expect(rel <= REL_TOL, "%s: rel %.3e > %.0e", what, rel, REL_TOL);
}

static void expect_close_d(const char *what, const double *got, const double *want, size_t n) {
    double maxdiff = 0.0, maxref = 0.0;
    for (size_t i = 0; i < n; i++) {
        maxdiff = fmax(maxdiff, fabs(got[i] - want[i]));
        maxref = fmax(maxref, fabs(want[i]));
    }
    double rel = maxdiff / fmax(maxref, 1e-6);
    cr_log_info("%-40s max|diff| %.3e  max|ref| %.3e  rel %.3e", what, maxdiff, maxref, rel);
    cr_expect(rel <= REL_TOL, "%s: rel %.3e > %.0e", what, rel, REL_TOL);
}

static void expect_scalar(const char *what, double got, hid_t f, const char *kase,
                          const char *path) {
    double want = get_scalar(f, kase, path);
    char name[160];
    snprintf(name, sizeof name, "%s %s", kase, what);
    expect_close_d(name, &got, &want, 1);
}

static void expect_array_f(const char *kase, const char *path, const float *got, hid_t f) {
    size_t n;
    double *want = get_d(f, kase, path, &n);
    char name[160];
    snprintf(name, sizeof name, "%s %s", kase, path);
    expect_close_f(name, got, want, n);
    free(want);
}

/* Asserts a call returned 0; err is the caller's PonderError. */
#define OK(call)                                                                                   \
    do {                                                                                           \
        int rc_ = (call);                                                                          \
        cr_assert_eq(rc_, 0, "%s failed: %s", #call, err.msg);                                     \
    } while (0)

/* -------------------------------------------------------------- advantages */

Test(algos_golden, grpo_trl) {
    hid_t f = golden_open();
    PonderError err = {0};
    size_t n;
    double *r = get_d(f, "grpo_trl", "in/rewards", &n);
    int64_t *g = h5_get(f, "grpo_trl", "in/group", H5T_NATIVE_INT64, NULL, NULL);
    double eps = get_scalar(f, "grpo_trl", "param/std_eps");
    double *adv = malloc(n * sizeof *adv);
    const struct {
        AlgoScaleRewards s;
        const char *out;
    } cases[] = {{ALGO_SCALE_GROUP, "out/adv_group"},
                 {ALGO_SCALE_BATCH, "out/adv_batch"},
                 {ALGO_SCALE_NONE, "out/adv_none"}};
    for (int c = 0; c < 3; c++) {
        OK(algo_adv_grpo((int64_t)n, r, g, cases[c].s, eps, NULL, adv, &err));
        double *want = get_d(f, "grpo_trl", cases[c].out, NULL);
        expect_close_d(cases[c].out, adv, want, n);
        free(want);
    }
    /* the injected path: moments from two "ranks" (halves) added, then applied */
    AlgoMoments m0, m1;
    OK(algo_moments_values((int64_t)n / 2, r, &m0, &err));
    OK(algo_moments_values((int64_t)(n - n / 2), r + n / 2, &m1, &err));
    algo_moments_add(&m0, &m1);
    OK(algo_adv_grpo((int64_t)n / 2, r, g, ALGO_SCALE_BATCH, eps, &m0, adv, &err));
    OK(algo_adv_grpo((int64_t)(n - n / 2), r + n / 2, g + n / 2, ALGO_SCALE_BATCH, eps, &m0,
                     adv + n / 2, &err));
    double *want = get_d(f, "grpo_trl", "out/adv_batch", NULL);
    expect_close_d("adv_batch (moments of two halves)", adv, want, n);
    free(want);
    free(adv), free(r), free(g);
    H5Fclose(f);
}

static void outcome_case(hid_t f, const char *kase) {
    PonderError err = {0};
    hsize_t dims[2];
    float *mask = get_f(f, kase, "in/mask", dims);
    size_t S;
    double *r = get_d(f, kase, "in/rewards", &S);
    int64_t *g = h5_get(f, kase, "in/group", H5T_NATIVE_INT64, NULL, NULL);
    AlgoBatch b = {(int64_t)dims[0], (int64_t)dims[1], mask};
    float *adv = malloc(dims[0] * dims[1] * sizeof *adv);
    if (strcmp(kase, "rloo_verl") == 0) {
        double *a = malloc(S * sizeof *a);
        OK(algo_adv_rloo((int64_t)S, r, g, a, &err));
        OK(algo_broadcast_seq(&b, a, adv, &err));
        free(a);
    } else {
        OK(algo_adv_rpp_baseline(&b, r, g, adv, &err));
    }
    expect_array_f(kase, "out/adv", adv, f);
    free(adv), free(mask), free(r), free(g);
}

Test(algos_golden, rloo_verl) {
    hid_t f = golden_open();
    outcome_case(f, "rloo_verl");
    H5Fclose(f);
}

Test(algos_golden, rpp_baseline_verl) {
    hid_t f = golden_open();
    outcome_case(f, "rpp_baseline_verl");
    H5Fclose(f);
}

Test(algos_golden, rpp_verl) {
    hid_t f = golden_open();
    PonderError err = {0};
    const char *k = "rpp_verl";
    hsize_t dims[2];
    float *mask = get_f(f, k, "in/mask", dims);
    float *old = get_f(f, k, "in/old_logp", NULL), *ref = get_f(f, k, "in/ref_logp", NULL);
    double *scores = get_d(f, k, "in/scores", NULL);
    AlgoBatch b = {(int64_t)dims[0], (int64_t)dims[1], mask};
    size_t n = dims[0] * dims[1];
    float *rew = malloc(n * sizeof *rew), *adv = malloc(n * sizeof *adv),
          *ret = malloc(n * sizeof *ret);
    AlgoKl kl = {ALGO_KL_K1, get_scalar(f, k, "param/kl_coef"), 0};
    double kl_sum;
    OK(algo_token_rewards(&b, scores, old, ref, &kl, rew, &kl_sum, &err));
    expect_array_f(k, "out/token_rewards", rew, f);
    expect_scalar("current_kl", kl_sum / (double)b.n_seq, f, k, "out/current_kl");
    OK(algo_adv_rpp(&b, rew, get_scalar(f, k, "param/gamma"), adv, ret, &err));
    expect_array_f(k, "out/adv", adv, f);
    expect_array_f(k, "out/returns", ret, f);
    free(rew), free(adv), free(ret), free(mask), free(old), free(ref), free(scores);
    H5Fclose(f);
}

Test(algos_golden, gae_verl) {
    hid_t f = golden_open();
    PonderError err = {0};
    const char *k = "gae_verl";
    hsize_t dims[2];
    float *mask = get_f(f, k, "in/mask", dims);
    float *rew = get_f(f, k, "in/token_rewards", NULL), *val = get_f(f, k, "in/values", NULL);
    AlgoBatch b = {(int64_t)dims[0], (int64_t)dims[1], mask};
    size_t n = dims[0] * dims[1];
    float *adv = malloc(n * sizeof *adv), *ret = malloc(n * sizeof *ret);
    OK(algo_adv_gae(&b, rew, val, get_scalar(f, k, "param/gamma"), get_scalar(f, k, "param/lam"),
                    adv, ret, &err));
    expect_array_f(k, "out/adv", adv, f);
    expect_array_f(k, "out/returns", ret, f);
    free(adv), free(ret), free(mask), free(rew), free(val);
    H5Fclose(f);
}

/* ------------------------------------------------------------------ losses */

static void policy_trl_case(hid_t f, const char *k, AlgoLossType lt) {
    PonderError err = {0};
    hsize_t dims[2];
    float *mask = get_f(f, k, "in/mask", dims);
    AlgoPolicyInputs in = {
        .logp = get_f(f, k, "in/logp", NULL),
        .old_logp = get_f(f, k, "in/old_logp", NULL),
        .ref_logp = get_f(f, k, "in/ref_logp", NULL),
        .advantages = get_f(f, k, "in/advantages", NULL),
    };
    AlgoBatch b = {(int64_t)dims[0], (int64_t)dims[1], mask};
    AlgoPolicyConfig c = algo_policy_config_default();
    c.epsilon_low = get_scalar(f, k, "param/epsilon_low");
    c.epsilon_high = get_scalar(f, k, "param/epsilon_high");
    c.ratio_level =
        get_scalar(f, k, "param/sequence") != 0.0 ? ALGO_RATIO_SEQUENCE : ALGO_RATIO_TOKEN;
    c.log_ratio_clamp = 0.0; /* TRL clamps nothing */
    c.agg.type = lt;
    c.agg.max_completion_length = (int64_t)get_scalar(f, k, "param/max_completion_length");
    if (lt == ALGO_LOSS_DAPO) c.agg.normalizer = get_scalar(f, k, "param/normalizer");
    c.kl = (AlgoKl){ALGO_KL_K3, get_scalar(f, k, "param/beta"), 0};
    float *dlogp = malloc(dims[0] * dims[1] * sizeof *dlogp);
    AlgoPolicyResult res;
    OK(algo_policy_loss(&b, &c, &in, &res, dlogp, NULL, &err));
    expect_scalar("loss", res.loss, f, k, "out/loss");
    expect_array_f(k, "out/dlogp", dlogp, f);
    if (c.ratio_level == ALGO_RATIO_TOKEN) {
        expect_scalar("clip_low", res.clip_low_frac, f, k, "out/clip_low");
        expect_scalar("clip_high", res.clip_high_frac, f, k, "out/clip_high");
        expect_scalar("kl_mean", res.kl_mean, f, k, "out/kl_mean");
        expect_scalar("ratio_mean", res.ratio_mean, f, k, "out/ratio_mean");
    }
    free(dlogp), free(mask);
    free((void *)in.logp), free((void *)in.old_logp), free((void *)in.ref_logp);
    free((void *)in.advantages);
}

Test(algos_golden, policy_trl) {
    hid_t f = golden_open();
    const char *levels[] = {"token", "sequence"};
    for (int l = 0; l < 2; l++)
        for (int t = 0; t < 4; t++) {
            char k[96];
            snprintf(k, sizeof k, "policy_trl_%s_%s", algo_loss_type_name((AlgoLossType)t),
                     levels[l]);
            policy_trl_case(f, k, (AlgoLossType)t);
        }
    H5Fclose(f);
}

static void policy_verl_case(hid_t f, const char *k) {
    PonderError err = {0};
    hsize_t dims[2];
    float *mask = get_f(f, k, "in/mask", dims);
    AlgoPolicyInputs in = {
        .logp = get_f(f, k, "in/logp", NULL),
        .old_logp = get_f(f, k, "in/old_logp", NULL),
        .ref_logp = get_f(f, k, "in/ref_logp", NULL),
        .advantages = get_f(f, k, "in/advantages", NULL),
        .entropy = get_f(f, k, "in/entropy", NULL),
    };
    AlgoBatch b = {(int64_t)dims[0], (int64_t)dims[1], mask};
    AlgoPolicyConfig c = algo_policy_config_default();
    c.epsilon_low = get_scalar(f, k, "param/epsilon_low");
    c.epsilon_high = get_scalar(f, k, "param/epsilon_high");
    c.dual_clip_c = get_scalar(f, k, "param/clip_ratio_c");
    c.log_ratio_clamp = 20.0;
    c.agg.type = get_scalar(f, k, "param/seq_mean") != 0.0 ? ALGO_LOSS_GRPO : ALGO_LOSS_BNPO;
    c.kl = (AlgoKl){ALGO_KL_K3, get_scalar(f, k, "param/kl_coef"), 1};
    c.entropy_coef = get_scalar(f, k, "param/entropy_coef");
    size_t n = dims[0] * dims[1];
    float *dlogp = malloc(n * sizeof *dlogp), *dent = malloc(n * sizeof *dent);
    AlgoPolicyResult res;
    OK(algo_policy_loss(&b, &c, &in, &res, dlogp, dent, &err));
    expect_scalar("loss", res.loss, f, k, "out/loss");
    expect_scalar("pg_loss", res.pg_loss, f, k, "out/pg_loss");
    expect_scalar("kl_loss", res.kl_loss, f, k, "out/kl_loss");
    expect_scalar("entropy_loss", res.entropy_loss, f, k, "out/entropy_loss");
    expect_scalar("clipfrac (low + high)", res.clip_low_frac + res.clip_high_frac, f, k,
                  "out/clipfrac");
    expect_scalar("clipfrac_lower (dual)", res.dual_clip_frac, f, k, "out/clipfrac_lower");
    expect_scalar("ppo_kl", res.approx_kl_old, f, k, "out/ppo_kl");
    expect_scalar("kl_mean", res.kl_mean, f, k, "out/kl_mean");
    expect_array_f(k, "out/dlogp", dlogp, f);
    expect_array_f(k, "out/dentropy", dent, f);
    cr_expect_gt(res.dual_clip_frac, 0.0, "the case should exercise the dual clip");
    free(dlogp), free(dent), free(mask);
    free((void *)in.logp), free((void *)in.old_logp), free((void *)in.ref_logp);
    free((void *)in.advantages), free((void *)in.entropy);
}

Test(algos_golden, policy_verl) {
    hid_t f = golden_open();
    policy_verl_case(f, "policy_verl_token_mean");
    policy_verl_case(f, "policy_verl_seq_mean_token_mean");
    H5Fclose(f);
}

Test(algos_golden, value_verl) {
    hid_t f = golden_open();
    PonderError err = {0};
    const char *k = "value_verl";
    hsize_t dims[2];
    float *mask = get_f(f, k, "in/mask", dims);
    float *v = get_f(f, k, "in/values", NULL), *ov = get_f(f, k, "in/old_values", NULL);
    float *ret = get_f(f, k, "in/returns", NULL);
    AlgoBatch b = {(int64_t)dims[0], (int64_t)dims[1], mask};
    AlgoValueConfig c = {.clip_range = get_scalar(f, k, "param/clip_range"),
                         .agg = {.type = ALGO_LOSS_BNPO}};
    float *dv = malloc(dims[0] * dims[1] * sizeof *dv);
    AlgoValueResult res;
    OK(algo_value_loss(&b, &c, v, ov, ret, &res, dv, &err));
    expect_scalar("loss", res.loss, f, k, "out/loss");
    expect_scalar("clip_frac", res.clip_frac, f, k, "out/clip_frac");
    expect_array_f(k, "out/dvalues", dv, f);
    cr_expect_gt(res.clip_frac, 0.0, "the case should exercise the value clip");
    free(dv), free(mask), free(v), free(ov), free(ret);
    H5Fclose(f);
}

Test(algos_golden, bradley_terry) {
    hid_t f = golden_open();
    PonderError err = {0};
    hsize_t dims[2];
    float *c = get_f(f, "bt", "in/chosen", dims), *r = get_f(f, "bt", "in/rejected", NULL);
    int64_t n = (int64_t)dims[0];
    float *dc = malloc((size_t)n * sizeof *dc), *dr = malloc((size_t)n * sizeof *dr);
    AlgoBtResult res;
    OK(algo_bt_loss(n, c, r, &res, dc, dr, &err));
    expect_scalar("loss", res.loss, f, "bt", "out/loss");
    expect_array_f("bt", "out/d_chosen", dc, f);
    expect_array_f("bt", "out/d_rejected", dr, f);
    free(c), free(r), free(dc), free(dr);
    H5Fclose(f);
}

Test(algos_golden, kl_controller_verl) {
    hid_t f = golden_open();
    PonderError err = {0};
    const char *k = "kl_ctl_verl";
    size_t n;
    double *kls = get_d(f, k, "in/kls", &n), *want = get_d(f, k, "out/values", NULL);
    AlgoKlController ctl;
    OK(algo_kl_ctl_adaptive(&ctl, get_scalar(f, k, "param/init"), get_scalar(f, k, "param/target"),
                            get_scalar(f, k, "param/horizon"), &err));
    int64_t steps = (int64_t)get_scalar(f, k, "param/n_steps");
    double *got = malloc(n * sizeof *got);
    for (size_t i = 0; i < n; i++) {
        OK(algo_kl_ctl_update(&ctl, kls[i], steps, &err));
        got[i] = ctl.value;
    }
    expect_close_d("kl_ctl values", got, want, n);
    free(kls), free(want), free(got);
    H5Fclose(f);
}
