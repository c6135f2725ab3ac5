/* tests/test_algos.c — advantage estimators and losses (algos/) against
 * hand-computed values (the arithmetic is in the comments), direct O(T^2)
 * loops, and central finite differences of every loss with respect to its
 * per-token inputs. The comparison with TRL / verl formulas on random data is
 * tests/test_algos_golden.c. */
#include <criterion/criterion.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "algos/advantage.h"
#include "algos/kl.h"
#include "algos/loss.h"
#include "util/rng.h"

/* Asserts a call returned 0; err is the caller's PonderError. */
#define OK(call)                                                                                   \
    do {                                                                                           \
        int rc_ = (call);                                                                          \
        cr_assert_eq(rc_, 0, "%s failed: %s", #call, err.msg);                                     \
    } while (0)

/* Asserts a call failed with code and a message containing needle. */
#define FAILS(call, code, needle)                                                                  \
    do {                                                                                           \
        PonderError e_ = {0};                                                                      \
        PonderError *perr_ = &e_;                                                                  \
        int rc_ = (call);                                                                          \
        cr_expect_eq(rc_, (code), "%s returned %d, expected %d (%s)", #call, rc_, (code), e_.msg); \
        cr_expect(strstr(e_.msg, (needle)) != NULL, "%s: message \"%s\" lacks \"%s\"", #call,      \
                  e_.msg, (needle));                                                               \
        (void)perr_;                                                                               \
    } while (0)

#define TOL 1e-6 /* hand values: inputs are float, so ~1e-7 relative */

static void near(double got, double want, double tol, const char *what) {
    cr_expect(fabs(got - want) <= tol * fmax(1.0, fabs(want)), "%s: got %.10g, want %.10g", what,
              got, want);
}

static void near_f(const float *got, const double *want, int64_t n, double tol, const char *what) {
    for (int64_t i = 0; i < n; i++) {
        cr_expect(fabs((double)got[i] - want[i]) <= tol * fmax(1.0, fabs(want[i])),
                  "%s[%lld]: got %.10g, want %.10g", what, (long long)i, (double)got[i], want[i]);
    }
}

static void near_d(const double *got, const double *want, int64_t n, double tol, const char *what) {
    for (int64_t i = 0; i < n; i++) near(got[i], want[i], tol, what);
}

/* ================================================================ GRPO === */

/* Groups: {1,0,0,1} (id 7), {5} (id 9, a group of one), {2,2} (id 3, equal). */
static const double R7[] = {1, 0, 0, 1, 5, 2, 2};
static const int64_t G7[] = {7, 7, 7, 7, 9, 3, 3};

Test(algos_grpo, scale_group) {
    PonderError err = {0};
    double a[7];
    OK(algo_adv_grpo(7, R7, G7, ALGO_SCALE_GROUP, ALGO_GRPO_STD_EPS, NULL, a, &err));
    /* group 7: mean 0.5, deviations +-0.5, Bessel var = 4*0.25/3 = 1/3, std 0.577350269;
     * A = +-0.5 / (0.577350269 + 1e-4) = +-0.86587543.
     * group 9 (n = 1): std := 0 (not NaN), r - mean = 0 -> A = 0.
     * group 3: std 0 -> A = 0 / 1e-4 = 0. */
    const double want[] = {0.86587543, -0.86587543, -0.86587543, 0.86587543, 0, 0, 0};
    near_d(a, want, 7, TOL, "A group");
}

Test(algos_grpo, scale_batch) {
    PonderError err = {0};
    double a[7];
    OK(algo_adv_grpo(7, R7, G7, ALGO_SCALE_BATCH, ALGO_GRPO_STD_EPS, NULL, a, &err));
    /* batch std over all 7 rewards: mean 11/7, sum of squares 35,
     * var = (35 - 7*(11/7)^2)/6 = 124/42, std = 1.718249386;
     * the mean is still the group mean: A = +-0.5 / (1.718249386 + 1e-4) = +-0.29097691. */
    const double want[] = {0.29097691, -0.29097691, -0.29097691, 0.29097691, 0, 0, 0};
    near_d(a, want, 7, TOL, "A batch");
    /* injected moments equal to the local ones give the same result */
    AlgoMoments m;
    OK(algo_moments_values(7, R7, &m, &err));
    double b[7];
    OK(algo_adv_grpo(7, R7, G7, ALGO_SCALE_BATCH, ALGO_GRPO_STD_EPS, &m, b, &err));
    near_d(b, a, 7, 1e-15, "A batch injected");
    /* a larger (global) batch std changes the scale: std 2 -> A = 0.5/2.0001 */
    AlgoMoments g = {.count = 3, .sum = 0, .sum_sq = 8}; /* var = 8/2 = 4 */
    OK(algo_adv_grpo(7, R7, G7, ALGO_SCALE_BATCH, ALGO_GRPO_STD_EPS, &g, b, &err));
    near(b[0], 0.5 / 2.0001, 1e-12, "A with global std 2");
}

Test(algos_grpo, scale_none_and_single_sample) {
    PonderError err = {0};
    double a[7];
    OK(algo_adv_grpo(7, R7, G7, ALGO_SCALE_NONE, ALGO_GRPO_STD_EPS, NULL, a, &err));
    const double want[] = {0.5, -0.5, -0.5, 0.5, 0, 0, 0}; /* r - group mean (Dr. GRPO) */
    near_d(a, want, 7, 1e-15, "A none");
    /* a whole batch of one sample: group and batch std are 0 (Bessel 0/0 defined as 0) */
    const double r1 = 3.5;
    const int64_t g1 = 0;
    for (int s = 0; s < 3; s++) {
        double x = -1.0;
        OK(algo_adv_grpo(1, &r1, &g1, (AlgoScaleRewards)s, ALGO_GRPO_STD_EPS, NULL, &x, &err));
        cr_expect(x == 0.0, "single sample, scale %d: A = %g, want 0", s, x);
    }
}

/* ================================================================ RLOO === */

Test(algos_rloo, hand) {
    PonderError err = {0};
    double a[7];
    OK(algo_adv_rloo(7, R7, G7, a, &err));
    /* group 7: A = r - mean of the other three: 1 - 1/3 = 2/3, 0 - 2/3 = -2/3;
     * group of one: no baseline, A = r = 5 (verl); {2,2}: 2 - 2 = 0. */
    const double want[] = {2.0 / 3, -2.0 / 3, -2.0 / 3, 2.0 / 3, 5, 0, 0};
    near_d(a, want, 7, 1e-14, "A rloo");
}

/* =========================================== REINFORCE++ (and baseline) === */

Test(algos_rpp, baseline_hand) {
    PonderError err = {0};
    /* S = 3, T = 3, lengths 2, 1, 3; groups {0,0}, {1}; rewards 1, 3, 4. */
    const float mask[] = {1, 1, 0, 1, 0, 0, 1, 1, 1};
    const double r[] = {1, 3, 4};
    const int64_t g[] = {0, 0, 1};
    AlgoBatch b = {3, 3, mask};
    float adv[9];
    OK(algo_adv_rpp_baseline(&b, r, g, adv, &err));
    /* centred: group 0 mean 2 -> -1, 1; group of one: mean 0 -> 4.
     * tokens: -1 -1 | 1 | 4 4 4: mean 11/6 = 1.8333, Bessel var 6.1666667;
     * whitened (x - 1.8333)/sqrt(6.1666667 + 1e-8): -1.14096529, -0.33557803, 0.87250287 */
    const double w[] = {-1.14096529, -1.14096529, 0,          -0.33557803, 0,
                        0,           0.87250287,  0.87250287, 0.87250287};
    near_f(adv, w, 9, TOL, "rpp_baseline");
}

Test(algos_rpp, returns_and_whitening_hand) {
    PonderError err = {0};
    /* row 0: 3 tokens, rewards 0.1 -0.2 1.0; row 1: 2 tokens (0, 2), t=2 is padding
     * holding a reward 9 that must be ignored. gamma 0.5. */
    const float mask[] = {1, 1, 1, 1, 1, 0};
    const float rew[] = {0.1f, -0.2f, 1.0f, 0.0f, 2.0f, 9.0f};
    AlgoBatch b = {2, 3, mask};
    float ret[6], adv[6];
    OK(algo_adv_rpp(&b, rew, 0.5, adv, ret, &err));
    /* row 0: G2 = 1.0, G1 = -0.2 + 0.5*1.0 = 0.3, G0 = 0.1 + 0.5*0.3 = 0.25
     * row 1: G1 = 2, G0 = 0 + 0.5*2 = 1 (the padding's 9 is reset away) */
    const double wr[] = {0.25, 0.3, 1.0, 1.0, 2.0, 0.0};
    near_f(ret, wr, 6, TOL, "returns");
    /* whiten over the 5 tokens: mean 0.91, Bessel var 0.503 */
    const double wa[] = {-0.93059334, -0.86009384, 0.12689909, 0.12689909, 1.536889, 0.0};
    near_f(adv, wa, 6, TOL, "advantages");
    float adv2[6];
    OK(algo_adv_rpp(&b, rew, 0.5, adv2, NULL, &err)); /* without the returns output */
    near_f(adv2, wa, 6, TOL, "advantages (returns NULL)");
    /* a mask-0 position inside a row resets the running return (verl) */
    const float mask2[] = {1, 0, 1};
    const float rew2[] = {0.5f, 7.0f, 1.0f};
    AlgoBatch b2 = {1, 3, mask2};
    OK(algo_returns_discounted(&b2, rew2, 0.9, ret, &err));
    const double w2[] = {0.5, 0.0, 1.0}; /* G0 = 0.5 + 0.9*0 (reset at t = 1) */
    near_f(ret, w2, 3, TOL, "reset inside a row");
}

/* Direct sum G_t = sum_{k >= t, same unmasked run} gamma^{k-t} r_k. */
Test(algos_rpp, returns_vs_direct_sum) {
    PonderError err = {0};
    enum { S = 4, T = 11 };
    Rng rng = rng_from_seed(11);
    float mask[S * T], rew[S * T], ret[S * T];
    for (int k = 0; k < S * T; k++) {
        mask[k] = rng_uniform(&rng) < 0.8f ? 1.0f : 0.0f;
        rew[k] = (float)rng_normal(&rng);
    }
    AlgoBatch b = {S, T, mask};
    const double gamma = 0.93;
    OK(algo_returns_discounted(&b, rew, gamma, ret, &err));
    for (int i = 0; i < S; i++)
        for (int t = 0; t < T; t++) {
            double want = 0.0;
            if (mask[i * T + t] != 0.0f)
                for (int k = t; k < T && mask[i * T + k] != 0.0f; k++)
                    want += pow(gamma, k - t) * rew[i * T + k];
            near(ret[i * T + t], want, 1e-6, "direct return");
        }
}

/* =============================================================== tokens === */

Test(algos_kl, token_rewards_hand) {
    PonderError err = {0};
    /* S = 3, T = 3: lengths 2, 3, 0 (an empty row). */
    const float mask[] = {1, 1, 0, 1, 1, 1, 0, 0, 0};
    const float old[] = {-1, -2, 0, -1, -1, -1, 0, 0, 0};
    const float ref[] = {-1.5f, -1, 0, -1, -1, -1, 0, 0, 0};
    const double scores[] = {1, -1, 7};
    AlgoBatch b = {3, 3, mask};
    AlgoKl kl = {ALGO_KL_K1, 0.1, 0};
    float rew[9];
    double kl_sum;
    OK(algo_token_rewards(&b, scores, old, ref, &kl, rew, &kl_sum, &err));
    /* row 0: k1 = old - ref = 0.5, -1 -> -0.1*k1 = -0.05, 0.1; the score 1 on the last
     * valid token (t = 1): 1.1. row 1: k1 = 0, score -1 on t = 2. row 2: no token. */
    const double want[] = {-0.05, 1.1, 0, 0, 0, -1, 0, 0, 0};
    near_f(rew, want, 9, TOL, "token rewards");
    /* sum of per-row mean KL: (0.5 - 1)/2 + 0 + 0 (empty row adds 0) */
    near(kl_sum, -0.25, 1e-12, "kl_seq_mean_sum");
    /* without KL only the scores are placed */
    OK(algo_token_rewards(&b, scores, NULL, NULL, NULL, rew, &kl_sum, &err));
    const double want2[] = {0, 1, 0, 0, 0, -1, 0, 0, 0};
    near_f(rew, want2, 9, 0, "scores only");
}

/* ================================================================== GAE === */

Test(algos_gae, hand) {
    PonderError err = {0};
    /* row 0: r = 0 0 1, V = 0.5 0.6 0.7, gamma = lambda = 1 -> checked separately below.
     * Here gamma 1, lambda 1:
     *   t2: delta = 1 + 0 - 0.7 = 0.3,  A = 0.3
     *   t1: delta = 0 + 0.7 - 0.6 = 0.1, A = 0.1 + 0.3 = 0.4
     *   t0: delta = 0 + 0.6 - 0.5 = 0.1, A = 0.1 + 0.4 = 0.5
     *   returns = A + V = 1, 1, 1 (the undiscounted reward-to-go). */
    const float mask[] = {1, 1, 1};
    const float r[] = {0, 0, 1}, v[] = {0.5f, 0.6f, 0.7f};
    AlgoBatch b = {1, 3, mask};
    float adv[3], ret[3];
    OK(algo_gae(&b, r, v, 1.0, 1.0, adv, ret, &err));
    const double wa[] = {0.5, 0.4, 0.3}, wr[] = {1, 1, 1};
    near_f(adv, wa, 3, TOL, "gae adv");
    near_f(ret, wr, 3, TOL, "gae returns");
    /* a skipped (mask-0) token inside the row, gamma 0.9, lambda 0.8; its reward and
     * value (99) are ignored:
     *   t2: delta = 1 - 0.7 = 0.3, A = 0.3, R = 1.0
     *   t0: delta = 0 + 0.9*0.7 - 0.5 = 0.13 (next value is t2's), A = 0.13 + 0.72*0.3 = 0.346,
     *       R = 0.846 */
    const float mask2[] = {1, 0, 1};
    const float r2[] = {0, 99, 1}, v2[] = {0.5f, 99, 0.7f};
    AlgoBatch b2 = {1, 3, mask2};
    OK(algo_gae(&b2, r2, v2, 0.9, 0.8, adv, ret, &err));
    const double wa2[] = {0.346, 0, 0.3}, wr2[] = {0.846, 0, 1.0};
    near_f(adv, wa2, 3, TOL, "gae adv (hole)");
    near_f(ret, wr2, 3, TOL, "gae returns (hole)");
}

/* GAE as the direct sum A_j = sum_{k >= j} (gamma lambda)^{k-j} delta_k over the
 * row's mask-1 tokens p_0 < p_1 < ... (delta_k = r + gamma V(next) - V, V after the
 * last one = 0). */
Test(algos_gae, vs_direct_loop) {
    PonderError err = {0};
    enum { S = 5, T = 13 };
    Rng rng = rng_from_seed(5);
    float mask[S * T], r[S * T], v[S * T], adv[S * T], ret[S * T];
    for (int k = 0; k < S * T; k++) {
        mask[k] = rng_uniform(&rng) < 0.75f ? 1.0f : 0.0f;
        r[k] = (float)rng_normal(&rng);
        v[k] = (float)rng_normal(&rng);
    }
    for (int t = 6; t < T; t++) mask[2 * T + t] = 0.0f; /* a right-padded row */
    AlgoBatch b = {S, T, mask};
    const double gamma = 0.97, lambda = 0.85;
    OK(algo_gae(&b, r, v, gamma, lambda, adv, ret, &err));
    for (int i = 0; i < S; i++) {
        int p[T], n = 0;
        for (int t = 0; t < T; t++)
            if (mask[i * T + t] != 0.0f) p[n++] = i * T + t;
        for (int j = 0; j < n; j++) {
            double a = 0.0;
            for (int k = j; k < n; k++) {
                double vnext = k + 1 < n ? v[p[k + 1]] : 0.0;
                double delta = r[p[k]] + gamma * vnext - v[p[k]];
                a += pow(gamma * lambda, k - j) * delta;
            }
            near(adv[p[j]], a, 2e-6, "gae direct");
            near(ret[p[j]], a + v[p[j]], 2e-6, "gae direct returns");
        }
    }
    /* whitened output: zero mean and unit (Bessel) variance over mask-1 tokens */
    float w[S * T];
    OK(algo_adv_gae(&b, r, v, gamma, lambda, w, ret, &err));
    AlgoMoments m;
    double mean, var;
    OK(algo_moments_tokens(&b, w, &m, &err));
    OK(algo_moments_stats(&m, 1, &mean, &var, &err));
    near(mean, 0.0, 1e-6, "whitened mean");
    near(var, 1.0, 1e-5, "whitened var");
}

/* ============================================================ whitening === */

Test(algos_whiten, moments_and_edge_cases) {
    PonderError err = {0};
    const float mask[] = {1, 1, 0, 1, 1, 1};
    const float x[] = {1, 2, NAN, 3, 4, 5}; /* NaN under mask 0 is never read */
    AlgoBatch whole = {2, 3, mask}, top = {1, 3, mask}, bottom = {1, 3, mask + 3};
    AlgoMoments m, m0, m1;
    OK(algo_moments_tokens(&whole, x, &m, &err));
    OK(algo_moments_tokens(&top, x, &m0, &err));
    OK(algo_moments_tokens(&bottom, x + 3, &m1, &err));
    algo_moments_add(&m0, &m1); /* what an all-reduce does */
    cr_expect(m0.count == m.count && m0.sum == m.sum && m0.sum_sq == m.sum_sq);
    double mean, var;
    OK(algo_moments_stats(&m, 1, &mean, &var, &err));
    near(mean, 3.0, 1e-15, "mean"); /* (1+2+3+4+5)/5 */
    near(var, 2.5, 1e-15, "var");   /* Bessel: 10/4 */
    float out[6];
    OK(algo_whiten_apply(&top, x, &m, out, &err)); /* the top half with global moments */
    near(out[0], (1 - 3) / sqrt(2.5 + 1e-8), 1e-6, "global whitening");
    cr_expect(out[2] == 0.0f, "mask-0 output is 0");
    /* constant values: var 0 -> (x - mean) * rsqrt(1e-8) = 0, no NaN */
    const float c[] = {2, 2, 0, 2, 2, 2};
    OK(algo_whiten(&whole, c, out, &err));
    for (int k = 0; k < 6; k++) cr_expect(out[k] == 0.0f);
    /* one token: the unbiased variance is undefined (verl raises too) */
    const float one[] = {1, 0, 0};
    AlgoBatch b1 = {1, 3, one};
    FAILS(algo_whiten(&b1, x, out, perr_), PONDER_ERR_RUNTIME, "need at least 2");
}

/* ==================================================================== KL === */

Test(algos_kl, estimators_hand) {
    double g;
    /* logp = -1, ref = -1.5: diff = logp - ref = 0.5, d = ref - logp = -0.5 */
    near(algo_kl_token(ALGO_KL_K1, 0, -1, -1.5, &g), 0.5, 1e-15, "k1");
    near(g, 1.0, 1e-15, "dk1");
    near(algo_kl_token(ALGO_KL_K2, 0, -1, -1.5, &g), 0.125, 1e-15, "k2"); /* 0.5*0.25 */
    near(g, 0.5, 1e-15, "dk2");
    /* k3 = exp(-0.5) + 0.5 - 1 = 0.10653066; d/dlogp = 1 - exp(-0.5) = 0.39346934 */
    near(algo_kl_token(ALGO_KL_K3, 0, -1, -1.5, &g), 0.10653066, 1e-8, "k3");
    near(g, 0.39346934, 1e-8, "dk3");
    /* verl clamps: d = -25 -> -20, k3 = e^-20 + 19 -> clamped to 10, gradient 0 */
    near(algo_kl_token(ALGO_KL_K3, 1, 0, -25, &g), 10.0, 0, "k3 clamped (d < -20)");
    cr_expect(g == 0.0);
    /* d = -12 (inside the d clamp): k3 = e^-12 + 11 > 10 -> 10, gradient 0 */
    near(algo_kl_token(ALGO_KL_K3, 1, 0, -12, &g), 10.0, 0, "k3 value clamp");
    cr_expect(g == 0.0);
    /* d = +25 -> 20 -> e^20 - 21 -> 10 */
    near(algo_kl_token(ALGO_KL_K3, 1, -25, 0, &g), 10.0, 0, "k3 clamped (d > 20)");
    cr_expect(g == 0.0);
    /* without clamps (TRL): d = -12 gives 11.000006144 */
    near(algo_kl_token(ALGO_KL_K3, 0, 0, -12, &g), exp(-12.0) + 11.0, 1e-15, "k3 unclamped");
    near(g, 1.0 - exp(-12.0), 1e-15, "dk3 unclamped");
    /* k1, k2 are never clamped (as verl) */
    near(algo_kl_token(ALGO_KL_K2, 1, 0, -25, &g), 312.5, 1e-12, "k2 unclamped");
}

Test(algos_kl, estimators_finite_differences) {
    const double h = 1e-5;
    for (int e = 0; e < 3; e++)
        for (int clamp = 0; clamp < 2; clamp++)
            for (double logp = -4.0; logp <= 0.0; logp += 0.37)
                for (double ref = -4.0; ref <= 0.0; ref += 0.41) {
                    double g;
                    algo_kl_token((AlgoKlEstimator)e, clamp, logp, ref, &g);
                    double fp = algo_kl_token((AlgoKlEstimator)e, clamp, logp + h, ref, NULL);
                    double fm = algo_kl_token((AlgoKlEstimator)e, clamp, logp - h, ref, NULL);
                    near(g, (fp - fm) / (2 * h), 1e-7, "KL estimator FD");
                }
}

Test(algos_kl, controller) {
    PonderError err = {0};
    AlgoKlController c;
    OK(algo_kl_ctl_adaptive(&c, 0.1, 0.1, 10000, &err));
    /* KL 0.2: error clip(0.2/0.1 - 1) = clip(1) = 0.2; value *= 1 + 0.2*100/10000 = 1.002 */
    OK(algo_kl_ctl_update(&c, 0.2, 100, &err));
    near(c.value, 0.1002, 1e-15, "adaptive up");
    /* KL 0.05: error -0.5 -> -0.2; value *= 0.998 */
    OK(algo_kl_ctl_update(&c, 0.05, 100, &err));
    near(c.value, 0.0999996, 1e-15, "adaptive down");
    /* KL 0.11: error 0.1 (inside the clip); value *= 1.001 */
    OK(algo_kl_ctl_update(&c, 0.11, 100, &err));
    near(c.value, 0.0999996 * 1.001, 1e-15, "adaptive proportional");
    OK(algo_kl_ctl_fixed(&c, 0.001, &err));
    OK(algo_kl_ctl_update(&c, 5.0, 100, &err));
    cr_expect(c.value == 0.001, "fixed controller does not move");
    FAILS(algo_kl_ctl_adaptive(&c, 0.1, 0.0, 10000, perr_), PONDER_ERR_CONFIG, "target");
    FAILS(algo_kl_ctl_adaptive(&c, 0.1, 0.1, 0, perr_), PONDER_ERR_CONFIG, "horizon");
    FAILS(algo_kl_ctl_update(&c, NAN, 1, perr_), PONDER_ERR_RUNTIME, "not finite");
}

/* =========================================================== aggregation === */

Test(algos_agg, loss_types_hand) {
    PonderError err = {0};
    /* rows: [1 2 3] (3 tokens), [4 . .] (1 token), [. . .] (empty); mask-0 values are junk */
    const float mask[] = {1, 1, 1, 1, 0, 0, 0, 0, 0};
    const float x[] = {1, 2, 3, 4, NAN, 9, 9, 9, 9};
    AlgoBatch b = {3, 3, mask};
    float dx[9];
    double loss;
    AlgoAgg a = {ALGO_LOSS_GRPO, 0, 0};
    OK(algo_agg_loss(&b, &a, x, &loss, dx, &err));
    /* grpo: (mean(1,2,3) + 4 + 0)/3 = (2 + 4)/3 = 2; weights 1/(3*3), 1/(1*3), 0 */
    near(loss, 2.0, 1e-15, "grpo");
    const double wg[] = {1.0 / 9, 1.0 / 9, 1.0 / 9, 1.0 / 3, 0, 0, 0, 0, 0};
    near_f(dx, wg, 9, 1e-7, "grpo weights");
    a.type = ALGO_LOSS_BNPO; /* (1+2+3+4)/4 = 2.5 */
    OK(algo_agg_loss(&b, &a, x, &loss, dx, &err));
    near(loss, 2.5, 1e-15, "bnpo");
    near(dx[0], 0.25, 1e-7, "bnpo weight");
    a.type = ALGO_LOSS_DR_GRPO; /* 10 / (S * L) = 10 / (3 * 5) */
    a.max_completion_length = 5;
    OK(algo_agg_loss(&b, &a, x, &loss, dx, &err));
    near(loss, 10.0 / 15.0, 1e-15, "dr_grpo");
    a.type = ALGO_LOSS_DAPO; /* default: local tokens, 10/4 */
    OK(algo_agg_loss(&b, &a, x, &loss, dx, &err));
    near(loss, 2.5, 1e-15, "dapo local");
    a.normalizer = 8.0; /* injected global tokens / processes: 10/8 */
    OK(algo_agg_loss(&b, &a, x, &loss, dx, &err));
    near(loss, 1.25, 1e-15, "dapo injected");
    near(dx[3], 0.125, 1e-7, "dapo weight");
    a.type = ALGO_LOSS_GRPO; /* injected number of sequences: (2 + 4)/8 */
    OK(algo_agg_loss(&b, &a, x, &loss, dx, &err));
    near(loss, 0.75, 1e-15, "grpo injected");
    AlgoAgg bad = {ALGO_LOSS_DR_GRPO, 0, 0};
    FAILS(algo_agg_loss(&b, &bad, x, &loss, dx, perr_), PONDER_ERR_CONFIG, "max_completion_length");
    /* an all-masked batch: bnpo denominator clamps at 1 (TRL), loss 0 */
    const float none[] = {0, 0, 0};
    AlgoBatch b0 = {1, 3, none};
    a = (AlgoAgg){ALGO_LOSS_BNPO, 0, 0};
    OK(algo_agg_loss(&b0, &a, x, &loss, dx, &err));
    cr_expect(loss == 0.0);
}

Test(algos_agg, names) {
    PonderError err = {0};
    for (int t = 0; t < 4; t++) {
        AlgoLossType got;
        OK(algo_loss_type_parse(algo_loss_type_name((AlgoLossType)t), &got, &err));
        cr_expect_eq((int)got, t);
    }
    AlgoLossType lt;
    FAILS(algo_loss_type_parse("token-mean", &lt, perr_), PONDER_ERR_CONFIG, "unknown loss_type");
    AlgoKlEstimator e;
    OK(algo_kl_parse("low_var_kl", &e, &err));
    cr_expect_eq(e, ALGO_KL_K3);
    AlgoScaleRewards s;
    OK(algo_scale_rewards_parse("batch", &s, &err));
    cr_expect_eq(s, ALGO_SCALE_BATCH);
    FAILS(algo_scale_rewards_parse("std", &s, perr_), PONDER_ERR_CONFIG, "scale_rewards");
}

/* =========================================================== policy loss === */

static AlgoPolicyConfig bnpo_config(void) {
    AlgoPolicyConfig c = algo_policy_config_default();
    c.epsilon_low = 0.2;
    c.epsilon_high = 0.28;
    c.agg.type = ALGO_LOSS_BNPO;
    return c;
}

/* logp values giving the ratios wanted with old = 0 */
static void log_of(const double *rho, float *logp, int n) {
    for (int i = 0; i < n; i++) logp[i] = (float)log(rho[i]);
}

Test(algos_policy, clip_branches_hand) {
    PonderError err = {0};
    /* one row of 6 tokens, old = 0, eps_low 0.2 (low bound 0.8), eps_high 0.28 (1.28) */
    const double rho[] = {0.5, 0.5, 1.5, 1.5, 1.1, 1.0};
    const float adv[] = {-1, 1, 1, -1, 2, -0.5f};
    float logp[6], old[6] = {0}, mask[6] = {1, 1, 1, 1, 1, 1}, g[6];
    log_of(rho, logp, 6);
    AlgoBatch b = {1, 6, mask};
    AlgoPolicyConfig c = bnpo_config();
    AlgoPolicyInputs in = {.logp = logp, .old_logp = old, .advantages = adv};
    AlgoPolicyResult res;
    OK(algo_policy_loss(&b, &c, &in, &res, g, NULL, &err));
    /* pg = max(-A rho, -A clip(rho)):
     *  t0 rho 0.5 < 0.8, A<0: max(0.5, 0.8)   = 0.8   clipped (low),  d/dlogp 0
     *  t1 rho 0.5 < 0.8, A>0: max(-0.5, -0.8) = -0.5  unclipped,      d = -A rho = -0.5
     *  t2 rho 1.5 > 1.28, A>0: max(-1.5,-1.28)= -1.28 clipped (high), d 0
     *  t3 rho 1.5 > 1.28, A<0: max(1.5, 1.28) = 1.5   unclipped,      d = 1.5
     *  t4 rho 1.1 inside, A=2: -2.2,                                   d = -2.2
     *  t5 rho 1 (on-policy), A=-0.5: 0.5,                              d = 0.5
     * bnpo: sum / 6 = (0.8 - 0.5 - 1.28 + 1.5 - 2.2 + 0.5)/6 = -1.18/6 */
    near(res.loss, -1.18 / 6, TOL, "loss");
    const double wg[] = {0, -0.5 / 6, 0, 1.5 / 6, -2.2 / 6, 0.5 / 6};
    near_f(g, wg, 6, TOL, "dlogp");
    near(res.clip_low_frac, 1.0 / 6, 1e-15, "low clip fraction");
    near(res.clip_high_frac, 1.0 / 6, 1e-15, "high clip fraction");
    near(res.dual_clip_frac, 0.0, 0, "no dual clip");
    near(res.ratio_mean, (0.5 + 0.5 + 1.5 + 1.5 + 1.1 + 1.0) / 6, TOL, "ratio mean");
}

Test(algos_policy, dual_clip_hand) {
    PonderError err = {0};
    const double rho[] = {4.0, 2.0, 4.0};
    const float adv[] = {-1, -1, 1};
    float logp[3], old[3] = {0}, mask[3] = {1, 1, 1}, g[3];
    log_of(rho, logp, 3);
    AlgoBatch b = {1, 3, mask};
    AlgoPolicyConfig c = bnpo_config();
    c.dual_clip_c = 3.0;
    AlgoPolicyInputs in = {.logp = logp, .old_logp = old, .advantages = adv};
    AlgoPolicyResult res;
    OK(algo_policy_loss(&b, &c, &in, &res, g, NULL, &err));
    /* t0 rho 4, A -1: max(4, 1.28) = 4 > -A c = 3 -> 3, gradient 0 (dual clip active)
     * t1 rho 2, A -1: max(2, 1.28) = 2 < 3 -> 2, d = -A rho = 2
     * t2 rho 4, A +1: max(-4, -1.28) = -1.28 (clip high; dual clip only for A < 0)
     * bnpo: (3 + 2 - 1.28)/3 = 1.24 */
    near(res.loss, 1.24, TOL, "dual loss");
    const double wg[] = {0, 2.0 / 3, 0};
    near_f(g, wg, 3, TOL, "dual dlogp");
    near(res.dual_clip_frac, 1.0 / 3, 1e-15, "dual fraction");
    near(res.clip_high_frac, 1.0 / 3, 1e-15, "high fraction");
    c.dual_clip_c = 0.0; /* off: t0 keeps 4 and its gradient 4/3 */
    OK(algo_policy_loss(&b, &c, &in, &res, g, NULL, &err));
    near(res.loss, (4 + 2 - 1.28) / 3, TOL, "no dual loss");
    near(g[0], 4.0 / 3, TOL, "no dual gradient");
    c.dual_clip_c = 1.0; /* verl asserts c > 1 */
    FAILS(algo_policy_loss(&b, &c, &in, &res, g, NULL, perr_), PONDER_ERR_CONFIG, "dual clip");
}

Test(algos_policy, sequence_ratio_hand) {
    PonderError err = {0};
    /* row 0: log-ratios 0.3 -0.1 0.1 (mean 0.1), A = +1; row 1: 0.6 0.4 (mean 0.5), A = -1,
     * third position padding. eps 0.2/0.2, loss_type grpo. */
    const float mask[] = {1, 1, 1, 1, 1, 0};
    const float logp[] = {0.3f, -0.1f, 0.1f, 0.6f, 0.4f, 0};
    const float old[6] = {0};
    const float adv[] = {1, 1, 1, -1, -1, 0};
    AlgoBatch b = {2, 3, mask};
    AlgoPolicyConfig c = algo_policy_config_default();
    c.ratio_level = ALGO_RATIO_SEQUENCE;
    c.agg.type = ALGO_LOSS_GRPO;
    AlgoPolicyInputs in = {.logp = logp, .old_logp = old, .advantages = adv};
    AlgoPolicyResult res;
    float g[6];
    OK(algo_policy_loss(&b, &c, &in, &res, g, NULL, &err));
    /* rho_0 = e^0.1 = 1.10517092 (inside [0.8, 1.2]): pg = -1.10517092 on every token;
     * rho_1 = e^0.5 = 1.64872127 > 1.2 but A < 0: unclipped, pg = +1.64872127.
     * grpo: (-1.10517092 + 1.64872127)/2 = 0.27177518.
     * gradient: d/dlogp_t = (1/n_i) rho_i sum_t' w (-A), w = 1/(n_i S):
     *   row 0: (1/3) * 1.10517092 * 3 * (1/6) * (-1) = -rho_0/6 = -0.18419515
     *   row 1: (1/2) * 1.64872127 * 2 * (1/4) * (+1) = rho_1/4 = 0.41218032 */
    near(res.loss, 0.27177518, TOL, "GSPO loss");
    const double wg[] = {-0.18419515, -0.18419515, -0.18419515, 0.41218032, 0.41218032, 0};
    near_f(g, wg, 6, TOL, "GSPO dlogp");
    near(res.ratio_mean, (3 * 1.10517092 + 2 * 1.64872127) / 5, TOL, "GSPO ratio mean");
    /* row 1 with A = +1 is clipped at 1.2: no gradient, high-clip on its 2 tokens */
    const float adv2[] = {1, 1, 1, 1, 1, 0};
    in.advantages = adv2;
    OK(algo_policy_loss(&b, &c, &in, &res, g, NULL, &err));
    near(res.loss, (-1.10517092 - 1.2) / 2, TOL, "GSPO clipped loss");
    cr_expect(g[3] == 0.0f && g[4] == 0.0f, "clipped sequence has no gradient");
    near(res.clip_high_frac, 2.0 / 5, 1e-15, "GSPO high clip (token-weighted)");
}

Test(algos_policy, log_ratio_clamp) {
    PonderError err = {0};
    const float mask[] = {1}, logp[] = {21.0f}, old[] = {0}, adv[] = {-1};
    AlgoBatch b = {1, 1, mask};
    AlgoPolicyConfig c = bnpo_config();
    AlgoPolicyInputs in = {.logp = logp, .old_logp = old, .advantages = adv};
    AlgoPolicyResult res;
    float g[1];
    /* log-ratio 21 clamped to 20 (verl): pg = -A e^20, and the clamp stops the gradient */
    OK(algo_policy_loss(&b, &c, &in, &res, g, NULL, &err));
    near(res.loss, exp(20.0), 1e-12, "clamped");
    cr_expect(g[0] == 0.0f);
    near(res.approx_kl_old, -20.0, 0, "ppo_kl uses the clamped log-ratio");
    c.log_ratio_clamp = 0.0; /* TRL: no clamp: e^21 and gradient e^21 */
    OK(algo_policy_loss(&b, &c, &in, &res, g, NULL, &err));
    near(res.loss, exp(21.0), 1e-12, "unclamped");
    near(g[0], exp(21.0), 1e-6, "unclamped gradient");
}

Test(algos_policy, on_policy_kl_entropy_hand) {
    PonderError err = {0};
    /* old_logp NULL: ratio 1, gradient -A per token (torch's tie rule); plus KL and entropy */
    const float mask[] = {1, 1}, logp[] = {-1, -1}, ref[] = {-1.5f, -1}, adv[] = {1, -2};
    const float ent[] = {2.0f, 1.0f};
    AlgoBatch b = {1, 2, mask};
    AlgoPolicyConfig c = bnpo_config();
    c.kl = (AlgoKl){ALGO_KL_K3, 0.1, 0};
    c.entropy_coef = 0.01;
    AlgoPolicyInputs in = {.logp = logp, .advantages = adv, .ref_logp = ref, .entropy = ent};
    AlgoPolicyResult res;
    float g[2], ge[2];
    OK(algo_policy_loss(&b, &c, &in, &res, g, ge, &err));
    /* pg = -A: (-1 + 2)/2 = 0.5. k3: token 0 0.10653066, token 1 0 -> mean 0.05326533.
     * entropy mean 1.5. loss = 0.5 + 0.1*0.05326533 - 0.01*1.5 = 0.490326533
     * dlogp = (-A + 0.1 * dk3)/2: token 0 (-1 + 0.1*0.39346934)/2 = -0.48032653,
     *         token 1 (2 + 0)/2 = 1. dentropy = -0.01/2. */
    near(res.pg_loss, 0.5, TOL, "pg");
    near(res.kl_loss, 0.05326533, TOL, "kl");
    near(res.entropy_loss, 1.5, TOL, "entropy");
    near(res.loss, 0.490326533, TOL, "total");
    const double wg[] = {-0.48032653, 1.0}, we[] = {-0.005, -0.005};
    near_f(g, wg, 2, TOL, "dlogp");
    near_f(ge, we, 2, TOL, "dentropy");
    near(res.kl_mean, 0.05326533, TOL, "kl metric");
    near(res.entropy_mean, 1.5, TOL, "entropy metric");
    near(res.ratio_mean, 1.0, 0, "ratio 1");
}

Test(algos_policy, masked_tokens_are_ignored) {
    PonderError err = {0};
    /* the same two tokens as above, padded with junk (NaN/inf) under mask 0 */
    const float mask[] = {1, 0, 1, 0};
    const float logp[] = {-1, NAN, -1, INFINITY}, ref[] = {-1.5f, NAN, -1, 0};
    const float adv[] = {1, NAN, -2, 5}, ent[] = {2.0f, NAN, 1.0f, -1};
    AlgoBatch b = {1, 4, mask};
    AlgoPolicyConfig c = bnpo_config();
    c.kl = (AlgoKl){ALGO_KL_K3, 0.1, 0};
    c.entropy_coef = 0.01;
    AlgoPolicyInputs in = {.logp = logp, .advantages = adv, .ref_logp = ref, .entropy = ent};
    AlgoPolicyResult res;
    float g[4], ge[4];
    OK(algo_policy_loss(&b, &c, &in, &res, g, ge, &err));
    near(res.loss, 0.490326533, TOL, "padded total");
    cr_expect(g[1] == 0.0f && g[3] == 0.0f && ge[1] == 0.0f && ge[3] == 0.0f, "zero at mask 0");
    near(res.tokens, 2.0, 0, "token count");
}

/* ------------------------------------------------- finite differences --- */

/* Central differences of f at float inputs: x[k] +- h rounded to float, divided
 * by the actual float step; the losses are evaluated in double. */
typedef double (*LossFn)(void *ctx, float *x);

static void check_fd(const char *what, LossFn f, void *ctx, float *x, const float *grad,
                     const float *mask, int64_t n) {
    const double h = 1.0 / 1024;
    for (int64_t k = 0; k < n; k++) {
        float keep = x[k];
        if (mask && mask[k] == 0.0f) {
            cr_expect(grad[k] == 0.0f, "%s: gradient at mask-0 position %lld is %g", what,
                      (long long)k, (double)grad[k]);
            continue;
        }
        float xp = (float)(keep + h), xm = (float)(keep - h);
        x[k] = xp;
        double fp = f(ctx, x);
        x[k] = xm;
        double fm = f(ctx, x);
        x[k] = keep;
        double fd = (fp - fm) / ((double)xp - (double)xm);
        cr_expect(fabs(fd - grad[k]) <= 1e-7 + 2e-5 * fabs(fd), "%s[%lld]: analytic %.9g, FD %.9g",
                  what, (long long)k, (double)grad[k], fd);
    }
}

enum { FS = 4, FT = 6, FN = FS * FT };

typedef struct PolicyCase {
    AlgoBatch b;
    AlgoPolicyConfig c;
    float mask[FN], logp[FN], old[FN], ref[FN], adv[FN], ent[FN];
    int which; /* 0: perturb logp, 1: perturb entropy */
} PolicyCase;

static double policy_fn(void *ctx, float *x) {
    PolicyCase *pc = ctx;
    AlgoPolicyInputs in = {.logp = pc->which == 0 ? x : pc->logp,
                           .old_logp = pc->old,
                           .ref_logp = pc->ref,
                           .advantages = pc->adv,
                           .entropy = pc->which == 1 ? x : pc->ent};
    float g[FN], ge[FN];
    AlgoPolicyResult res;
    PonderError err = {0};
    OK(algo_policy_loss(&pc->b, &pc->c, &in, &res, g, ge, &err));
    return res.loss;
}

/* Distance (in log space) of a ratio from every kink of the surrogate. */
static double kink_distance(const AlgoPolicyConfig *c, double lr) {
    double d = fmin(fabs(lr - log(1 - c->epsilon_low)), fabs(lr - log(1 + c->epsilon_high)));
    if (c->dual_clip_c > 0) d = fmin(d, fabs(lr - log(c->dual_clip_c)));
    return d;
}

/* Random inputs whose ratios keep >= 0.02 (log) from kinks, so the FD step (1e-3)
 * never crosses one; KL deltas within +-2 (below the k3 clamps). */
static void policy_case_init(PolicyCase *pc, const AlgoPolicyConfig *c, uint64_t seed) {
    Rng rng = rng_from_seed(seed);
    pc->c = *c;
    pc->b = (AlgoBatch){FS, FT, pc->mask};
    const int len[FS] = {6, 3, 5, 1};
    for (int i = 0; i < FS; i++)
        for (int t = 0; t < FT; t++) {
            int k = i * FT + t;
            pc->mask[k] = t < len[i] ? 1.0f : 0.0f;
            pc->logp[k] = (float)(-1.0 - fabs(rng_normal(&rng)));
            pc->old[k] = (float)(pc->logp[k] + 0.5 * rng_normal(&rng));
            pc->ref[k] = (float)(pc->logp[k] + fmax(-2.0, fmin(2.0, 0.5 * rng_normal(&rng))));
            pc->adv[k] = (float)rng_normal(&rng);
            pc->ent[k] = (float)(3.0 * rng_uniform_double(&rng));
        }
    for (int i = 0; i < FS; i++) {
        for (int t = 0; t < len[i]; t++) { /* token-level kinks */
            int k = i * FT + t;
            while (kink_distance(c, (double)pc->logp[k] - pc->old[k]) < 0.02) pc->old[k] += 0.05f;
        }
        for (;;) { /* the row's sequence-level ratio */
            double s = 0;
            for (int t = 0; t < len[i]; t++)
                s += (double)pc->logp[i * FT + t] - pc->old[i * FT + t];
            if (kink_distance(c, s / len[i]) >= 0.02) break;
            pc->old[i * FT] += 0.05f;
        }
    }
}

static void policy_fd(const AlgoPolicyConfig *c, uint64_t seed, const char *what) {
    PolicyCase pc;
    policy_case_init(&pc, c, seed);
    float g[FN], ge[FN];
    AlgoPolicyInputs in = {.logp = pc.logp,
                           .old_logp = pc.old,
                           .ref_logp = pc.ref,
                           .advantages = pc.adv,
                           .entropy = pc.ent};
    AlgoPolicyResult res;
    PonderError err = {0};
    OK(algo_policy_loss(&pc.b, c, &in, &res, g, ge, &err));
    pc.which = 0;
    check_fd(what, policy_fn, &pc, pc.logp, g, pc.mask, FN);
    pc.which = 1;
    check_fd(what, policy_fn, &pc, pc.ent, ge, pc.mask, FN);
}

Test(algos_policy, finite_differences_all_configs) {
    uint64_t seed = 100;
    for (int level = 0; level < 2; level++)
        for (int lt = 0; lt < 4; lt++)
            for (int dual = 0; dual < 2; dual++)
                for (int est = 0; est < 3; est++) {
                    AlgoPolicyConfig c = algo_policy_config_default();
                    c.epsilon_low = 0.2;
                    c.epsilon_high = 0.28;
                    c.ratio_level = (AlgoRatioLevel)level;
                    c.agg = (AlgoAgg){(AlgoLossType)lt, 8, lt == ALGO_LOSS_DAPO ? 23.0 : 0.0};
                    c.dual_clip_c = dual ? 1.6 : 0.0; /* low c: the dual clip fires often */
                    c.kl = (AlgoKl){(AlgoKlEstimator)est, 0.05, est == ALGO_KL_K3};
                    c.entropy_coef = 0.01;
                    char what[96];
                    snprintf(what, sizeof what, "policy %s %s dual=%d %s", level ? "seq" : "token",
                             algo_loss_type_name((AlgoLossType)lt), dual,
                             algo_kl_name((AlgoKlEstimator)est));
                    policy_fd(&c, seed++, what);
                }
}

/* ============================================================ value loss === */

Test(algos_value, hand) {
    PonderError err = {0};
    /* eps_v 0.2, bnpo over 3 tokens:
     *  t0 V 1.0, Vold 0.5, R 2: Vc = 0.7; (1-2)^2 = 1 < (0.7-2)^2 = 1.69 -> 1.69, gradient 0
     *  t1 V 1.0, Vold 0.5, R 0: Vc = 0.7; 1 > 0.49 -> 1, d = 2(V-R) = 2
     *  t2 V 0.6, Vold 0.5, R 1: inside, (0.6-1)^2 = 0.16, d = -0.8
     * loss = 0.5 * (1.69 + 1 + 0.16)/3 = 0.475; dV = 0.5 * d / 3 */
    const float mask[] = {1, 1, 1}, v[] = {1.0f, 1.0f, 0.6f}, ov[] = {0.5f, 0.5f, 0.5f};
    const float ret[] = {2, 0, 1};
    AlgoBatch b = {1, 3, mask};
    AlgoValueConfig c = {.clip_range = 0.2, .agg = {ALGO_LOSS_BNPO, 0, 0}};
    AlgoValueResult res;
    float g[3];
    OK(algo_value_loss(&b, &c, v, ov, ret, &res, g, &err));
    near(res.loss, 0.475, TOL, "value loss");
    const double wg[] = {0, 1.0 / 3, -0.4 / 3};
    near_f(g, wg, 3, TOL, "dvalues");
    near(res.clip_frac, 1.0 / 3, 1e-15, "clip fraction");
    /* clipping off: 0.5 * (1 + 1 + 0.16)/3 = 0.36 */
    c.clip_range = 0.0;
    OK(algo_value_loss(&b, &c, v, NULL, ret, &res, g, &err));
    near(res.loss, 0.36, TOL, "unclipped value loss");
    near(g[0], -1.0 / 3, TOL, "unclipped gradient");
}

typedef struct ValueCase {
    AlgoBatch b;
    AlgoValueConfig c;
    float mask[FN], v[FN], ov[FN], ret[FN];
} ValueCase;

static double value_fn(void *ctx, float *x) {
    ValueCase *vc = ctx;
    float g[FN];
    AlgoValueResult res;
    PonderError err = {0};
    OK(algo_value_loss(&vc->b, &vc->c, x, vc->ov, vc->ret, &res, g, &err));
    return res.loss;
}

Test(algos_value, finite_differences) {
    for (int lt = 0; lt < 4; lt++) {
        ValueCase vc;
        Rng rng = rng_from_seed(300 + (uint64_t)lt);
        vc.b = (AlgoBatch){FS, FT, vc.mask};
        vc.c = (AlgoValueConfig){.clip_range = 0.5, .agg = {(AlgoLossType)lt, 8, 0}};
        const int len[FS] = {6, 2, 4, 5};
        for (int i = 0; i < FS; i++)
            for (int t = 0; t < FT; t++) {
                int k = i * FT + t;
                vc.mask[k] = t < len[i];
                vc.ov[k] = (float)rng_normal(&rng);
                vc.ret[k] = (float)(vc.ov[k] + rng_normal(&rng));
                double dv;
                /* keep V - Vold off +-eps, and the two errors apart, by >= 0.02 */
                for (;;) {
                    dv = 1.2 * rng_normal(&rng);
                    double v = vc.ov[k] + dv, vcl = vc.ov[k] + fmax(-0.5, fmin(0.5, dv));
                    if (fabs(fabs(dv) - 0.5) > 0.02 &&
                        fabs(fabs(v - vc.ret[k]) - fabs(vcl - vc.ret[k])) > 0.02)
                        break;
                }
                vc.v[k] = (float)(vc.ov[k] + dv);
            }
        float g[FN];
        AlgoValueResult res;
        PonderError err = {0};
        OK(algo_value_loss(&vc.b, &vc.c, vc.v, vc.ov, vc.ret, &res, g, &err));
        cr_expect_gt(res.clip_frac, 0.0, "the case should exercise the clip");
        check_fd(algo_loss_type_name((AlgoLossType)lt), value_fn, &vc, vc.v, g, vc.mask, FN);
    }
}

/* ========================================================= Bradley–Terry === */

Test(algos_bt, hand) {
    PonderError err = {0};
    const float c[] = {2, 0}, r[] = {1, 1};
    float dc[2], dr[2];
    AlgoBtResult res;
    OK(algo_bt_loss(2, c, r, &res, dc, dr, &err));
    /* margins 1, -1: loss = (softplus(-1) + softplus(1))/2 = (0.31326169 + 1.31326169)/2
     * d/dc = -sigmoid(-m)/n: -0.26894142/2, -0.73105858/2; d/dr the opposite */
    near(res.loss, 0.81326169, TOL, "bt loss");
    const double wc[] = {-0.13447071, -0.36552929}, wr[] = {0.13447071, 0.36552929};
    near_f(dc, wc, 2, TOL, "d chosen");
    near_f(dr, wr, 2, TOL, "d rejected");
    near(res.accuracy, 0.5, 0, "accuracy");
    near(res.margin_mean, 0.0, 0, "margin");
    /* huge margins stay finite: softplus(-100) ~ 3.7e-44, softplus(100) = 100 */
    const float c2[] = {100, -100}, r2[] = {0, 0};
    OK(algo_bt_loss(2, c2, r2, &res, dc, dr, &err));
    near(res.loss, 50.0, 1e-12, "bt large margins");
    cr_expect(isfinite(dc[0]) && isfinite(dc[1]));
}

typedef struct BtCase {
    float c[8], r[8];
    int which;
} BtCase;

static double bt_fn(void *ctx, float *x) {
    BtCase *bc = ctx;
    AlgoBtResult res;
    PonderError err = {0};
    OK(algo_bt_loss(8, bc->which ? bc->c : x, bc->which ? x : bc->r, &res, NULL, NULL, &err));
    return res.loss;
}

Test(algos_bt, finite_differences) {
    BtCase bc;
    Rng rng = rng_from_seed(77);
    for (int k = 0; k < 8; k++) {
        bc.c[k] = (float)(2 * rng_normal(&rng));
        bc.r[k] = (float)(2 * rng_normal(&rng));
    }
    float dc[8], dr[8];
    AlgoBtResult res;
    PonderError err = {0};
    OK(algo_bt_loss(8, bc.c, bc.r, &res, dc, dr, &err));
    bc.which = 0;
    check_fd("bt chosen", bt_fn, &bc, bc.c, dc, NULL, 8);
    bc.which = 1;
    check_fd("bt rejected", bt_fn, &bc, bc.r, dr, NULL, 8);
}

/* ================================================================ errors === */

Test(algos_errors, inputs_are_validated) {
    double a[7];
    const double bad_r[] = {1, NAN, 0};
    const int64_t g3[] = {0, 0, 0};
    FAILS(algo_adv_grpo(3, bad_r, g3, ALGO_SCALE_GROUP, 1e-4, NULL, a, perr_), PONDER_ERR_RUNTIME,
          "rewards[1] = nan is not finite");
    const double r3[] = {1, 2, 3};
    const int64_t split[] = {4, 5, 4}; /* group 4 reappears after group 5 */
    FAILS(algo_adv_rloo(3, r3, split, a, perr_), PONDER_ERR_CONFIG, "group 4 is not contiguous");
    int64_t ng = 0;
    const int64_t ok_ids[] = {9, 9, -1, 5, 5, 5, 0};
    PonderError err = {0};
    OK(algo_groups_check(7, ok_ids, &ng, &err));
    cr_expect_eq(ng, 4, "groups {9,9} {-1} {5,5,5} {0}");
    FAILS(algo_adv_grpo(3, r3, NULL, ALGO_SCALE_GROUP, 1e-4, NULL, a, perr_), PONDER_ERR_CONFIG,
          "group ids are NULL");
    FAILS(algo_adv_grpo(3, r3, g3, ALGO_SCALE_GROUP, 0.0, NULL, a, perr_), PONDER_ERR_CONFIG,
          "epsilon");
    const float half[] = {1, 0.5f};
    const float x[] = {0, 0};
    float out[2];
    AlgoBatch bh = {1, 2, half};
    FAILS(algo_whiten(&bh, x, out, perr_), PONDER_ERR_CONFIG, "only 0 and 1");
    AlgoBatch b0 = {0, 2, half};
    FAILS(algo_whiten(&b0, x, out, perr_), PONDER_ERR_SHAPE, "must be >= 1");
    const float m2[] = {1, 1}, inf[] = {INFINITY, 0};
    AlgoBatch b2 = {1, 2, m2};
    FAILS(algo_adv_rpp(&b2, inf, 1.0, out, NULL, perr_), PONDER_ERR_RUNTIME, "token_rewards[0][0]");
    FAILS(algo_adv_rpp(&b2, x, 1.5, out, NULL, perr_), PONDER_ERR_CONFIG, "gamma");
    FAILS(algo_gae(&b2, x, x, 1.0, -0.1, out, out, perr_), PONDER_ERR_CONFIG, "lambda");
    /* policy loss: KL without ref, entropy bonus without entropy */
    AlgoPolicyConfig c = algo_policy_config_default();
    AlgoPolicyInputs in = {.logp = x, .advantages = x};
    AlgoPolicyResult res;
    float g[2];
    c.kl.coef = 0.1;
    FAILS(algo_policy_loss(&b2, &c, &in, &res, g, NULL, perr_), PONDER_ERR_CONFIG,
          "needs ref_logp");
    c.kl.coef = 0.0;
    c.entropy_coef = 0.01;
    FAILS(algo_policy_loss(&b2, &c, &in, &res, g, NULL, perr_), PONDER_ERR_CONFIG, "entropy");
    c.entropy_coef = 0.0;
    c.epsilon_low = 1.0;
    FAILS(algo_policy_loss(&b2, &c, &in, &res, g, NULL, perr_), PONDER_ERR_CONFIG, "epsilon");
    c = algo_policy_config_default();
    FAILS(algo_policy_loss(&b2, &c, &in, &res, NULL, NULL, perr_), PONDER_ERR_CONFIG, "dlogp");
    in.logp = inf;
    FAILS(algo_policy_loss(&b2, &c, &in, &res, g, NULL, perr_), PONDER_ERR_RUNTIME, "logp[0][0]");
    /* value loss with clipping needs old values */
    AlgoValueConfig vc = {.clip_range = 0.5, .agg = {ALGO_LOSS_BNPO, 0, 0}};
    AlgoValueResult vr;
    FAILS(algo_value_loss(&b2, &vc, x, NULL, x, &vr, g, perr_), PONDER_ERR_CONFIG, "old_values");
    /* KL in the reward needs both logps */
    AlgoKl kl = {ALGO_KL_K1, 0.1, 0};
    const double s1[] = {1};
    FAILS(algo_token_rewards(&b2, s1, x, NULL, &kl, out, NULL, perr_), PONDER_ERR_CONFIG,
          "needs old_logp and ref_logp");
    AlgoBtResult br;
    const float nanv[] = {NAN};
    FAILS(algo_bt_loss(1, nanv, x, &br, NULL, NULL, perr_), PONDER_ERR_RUNTIME, "non-finite");
}
