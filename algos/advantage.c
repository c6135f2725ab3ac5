/* algos/advantage.c — advantage estimators (METHODS.md 1.2, 1.5, 1.6, 1.7). */
#include "algos/advantage.h"

#include <math.h>   /* isfinite, sqrt */
#include <stdlib.h> /* malloc, free */
#include <string.h> /* strcmp */

#include "algos/advantage_token.h" /* the per-row loops, shared with the device */

/* ------------------------------------------------------------------ groups */

/* End (exclusive) of the run of equal group ids starting at s. */
static int64_t run_end(int64_t n, const int64_t *group, int64_t s) {
    int64_t e = s + 1;
    while (e < n && group[e] == group[s]) e++;
    return e;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

int algo_groups_check(int64_t n, const int64_t *group, int64_t *n_groups, PonderError *err) {
    if (n < 1)
        return ponder_error(err, PONDER_ERR_SHAPE, "algos: %lld samples; need >= 1", (long long)n);
    if (!group) return ponder_error(err, PONDER_ERR_CONFIG, "algos: group ids are NULL");
    int64_t runs = 0;
    for (int64_t s = 0; s < n; s = run_end(n, group, s)) runs++;
    /* A run id that appears twice means a group split by another one: it would
     * silently become two groups. Sort the run ids and look for neighbours. */
    int64_t *ids = malloc((size_t)runs * sizeof *ids);
    if (!ids) return ponder_error(err, PONDER_ERR_NOMEM, "algos: out of memory");
    int64_t r = 0;
    for (int64_t s = 0; s < n; s = run_end(n, group, s)) ids[r++] = group[s];
    qsort(ids, (size_t)runs, sizeof *ids, cmp_i64);
    int rc = PONDER_OK;
    for (int64_t k = 1; k < runs && !rc; k++) {
        if (ids[k] == ids[k - 1])
            rc = ponder_error(err, PONDER_ERR_CONFIG,
                              "algos: group %lld is not contiguous (its samples are separated by "
                              "another group's); keep a group's samples together",
                              (long long)ids[k]);
    }
    free(ids);
    if (!rc && n_groups) *n_groups = runs;
    return rc;
}

static int outcome_check(int64_t n, const double *rewards, const int64_t *group, const double *out,
                         PonderError *err) {
    int rc = algo_groups_check(n, group, NULL, err);
    if (rc) return rc;
    rc = algo_check_values_finite(n, rewards, "rewards", err);
    if (rc) return rc;
    if (!out) return ponder_error(err, PONDER_ERR_CONFIG, "algos: advantage output is NULL");
    return PONDER_OK;
}

static double mean_of(const double *x, int64_t n) {
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) s += x[i];
    return s / (double)n;
}

/* Bessel-corrected std (two passes); 0 for n = 1 (METHODS.md 1.7, TRL). */
static double std_of(const double *x, int64_t n, double mean) {
    if (n < 2) return 0.0;
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++) ss += (x[i] - mean) * (x[i] - mean);
    return sqrt(ss / (double)(n - 1));
}

/* ------------------------------------------------------------------- GRPO */

/* TRL's "batch" std: global std over the generation batch (Bessel; 0 for n = 1). */
static int batch_std(int64_t n, const double *rewards, const AlgoMoments *given, double *std,
                     PonderError *err) {
    AlgoMoments m;
    if (given) {
        m = *given;
    } else {
        int rc = algo_moments_values(n, rewards, &m, err);
        if (rc) return rc;
    }
    if (!(m.count >= 1.0) || !isfinite(m.sum) || !isfinite(m.sum_sq))
        return ponder_error(
            err, PONDER_ERR_RUNTIME,
            "GRPO batch scaling: reward moments (count %g, sum %g, sum_sq %g) unusable", m.count,
            m.sum, m.sum_sq);
    if (m.count < 2.0) {
        *std = 0.0;
        return PONDER_OK;
    }
    double mean, var;
    int rc = algo_moments_stats(&m, 1, &mean, &var, err);
    if (rc) return rc;
    *std = sqrt(var);
    return PONDER_OK;
}

int algo_adv_grpo(int64_t n, const double *rewards, const int64_t *group, AlgoScaleRewards scale,
                  double std_eps, const AlgoMoments *batch_moments, double *adv, PonderError *err) {
    int rc = outcome_check(n, rewards, group, adv, err);
    if (rc) return rc;
    if (scale != ALGO_SCALE_GROUP && scale != ALGO_SCALE_BATCH && scale != ALGO_SCALE_NONE)
        return ponder_error(err, PONDER_ERR_CONFIG, "GRPO: unknown scale_rewards %d", (int)scale);
    if (!isfinite(std_eps) || std_eps <= 0.0)
        return ponder_error(err, PONDER_ERR_CONFIG, "GRPO: std epsilon %g must be > 0", std_eps);
    double sigma_batch = 0.0;
    if (scale == ALGO_SCALE_BATCH) {
        rc = batch_std(n, rewards, batch_moments, &sigma_batch, err);
        if (rc) return rc;
    }
    for (int64_t s = 0, e; s < n; s = e) {
        e = run_end(n, group, s);
        double mu = mean_of(rewards + s, e - s);
        double denom = 1.0;
        if (scale == ALGO_SCALE_GROUP) denom = std_of(rewards + s, e - s, mu) + std_eps;
        if (scale == ALGO_SCALE_BATCH) denom = sigma_batch + std_eps;
        for (int64_t i = s; i < e; i++) {
            /* a group of one: r - mu is exactly 0, so A = 0 under every scaling */
            adv[i] = (rewards[i] - mu) / denom;
        }
    }
    return PONDER_OK;
}

int algo_scale_rewards_parse(const char *name, AlgoScaleRewards *out, PonderError *err) {
    static const struct {
        const char *name;
        AlgoScaleRewards scale;
    } names[] = {{"group", ALGO_SCALE_GROUP},
                 {"true", ALGO_SCALE_GROUP},
                 {"batch", ALGO_SCALE_BATCH},
                 {"none", ALGO_SCALE_NONE},
                 {"false", ALGO_SCALE_NONE}};
    for (size_t i = 0; name && i < sizeof names / sizeof names[0]; i++) {
        if (strcmp(name, names[i].name) == 0) {
            *out = names[i].scale;
            return PONDER_OK;
        }
    }
    return ponder_error(err, PONDER_ERR_CONFIG,
                        "unknown scale_rewards \"%s\" (expected group, batch or none)",
                        name ? name : "(null)");
}

/* ------------------------------------------------------------------- RLOO */

int algo_adv_rloo(int64_t n, const double *rewards, const int64_t *group, double *adv,
                  PonderError *err) {
    int rc = outcome_check(n, rewards, group, adv, err);
    if (rc) return rc;
    for (int64_t s = 0, e; s < n; s = e) {
        e = run_end(n, group, s);
        int64_t g = e - s;
        if (g == 1) { /* no leave-one-out baseline: verl keeps A = r */
            adv[s] = rewards[s];
            continue;
        }
        double mu = mean_of(rewards + s, g), f = (double)g / (double)(g - 1);
        for (int64_t i = s; i < e; i++) adv[i] = rewards[i] * f - mu * f; /* verl's order */
    }
    return PONDER_OK;
}

/* ------------------------------------------------------ REINFORCE++-baseline */

int algo_adv_group_center(int64_t n, const double *rewards, const int64_t *group, double *centered,
                          PonderError *err) {
    int rc = outcome_check(n, rewards, group, centered, err);
    if (rc) return rc;
    for (int64_t s = 0, e; s < n; s = e) {
        e = run_end(n, group, s);
        double mu = (e - s == 1) ? 0.0 : mean_of(rewards + s, e - s); /* verl: mean 0 for one */
        for (int64_t i = s; i < e; i++) centered[i] = rewards[i] - mu;
    }
    return PONDER_OK;
}

int algo_adv_rpp_baseline(const AlgoBatch *b, const double *rewards, const int64_t *group,
                          float *adv, PonderError *err) {
    int rc = algo_batch_check(b, err);
    if (rc) return rc;
    double *centered = malloc((size_t)b->n_seq * sizeof *centered);
    if (!centered) return ponder_error(err, PONDER_ERR_NOMEM, "algos: out of memory");
    rc = algo_adv_group_center(b->n_seq, rewards, group, centered, err);
    if (!rc) rc = algo_broadcast_seq(b, centered, adv, err);
    if (!rc) rc = algo_whiten(b, adv, adv, err);
    free(centered);
    return rc;
}

/* ------------------------------------------------------------ REINFORCE++ */

static int token_check(const AlgoBatch *b, const float *token_rewards, const float *out,
                       PonderError *err) {
    int rc = algo_batch_check(b, err);
    if (rc) return rc;
    rc = algo_check_tokens_finite(b, token_rewards, "token_rewards", err);
    if (rc) return rc;
    if (!out) return ponder_error(err, PONDER_ERR_CONFIG, "algos: output array is NULL");
    return PONDER_OK;
}

static int discount_check(double gamma, const char *name, PonderError *err) {
    if (!isfinite(gamma) || gamma < 0.0 || gamma > 1.0)
        return ponder_error(err, PONDER_ERR_CONFIG, "algos: %s = %g must lie in [0, 1]", name,
                            gamma);
    return PONDER_OK;
}

int algo_returns_discounted(const AlgoBatch *b, const float *token_rewards, double gamma,
                            float *returns, PonderError *err) {
    int rc = token_check(b, token_rewards, returns, err);
    if (!rc) rc = discount_check(gamma, "gamma", err);
    if (rc) return rc;
    for (int64_t i = 0; i < b->n_seq; i++) {
        const int64_t row = i * b->max_len;
        algo_token_returns_row(b->mask + row, b->max_len, token_rewards + row, gamma, returns + row);
    }
    return PONDER_OK;
}

int algo_adv_rpp(const AlgoBatch *b, const float *token_rewards, double gamma, float *adv,
                 float *returns, PonderError *err) {
    /* returns may be NULL: phase 1 then writes into adv and whitens in place */
    float *ret = returns ? returns : adv;
    int rc = algo_returns_discounted(b, token_rewards, gamma, ret, err);
    if (!rc) rc = algo_whiten(b, ret, adv, err);
    return rc;
}

/* -------------------------------------------------------------------- GAE */

int algo_gae(const AlgoBatch *b, const float *token_rewards, const float *values, double gamma,
             double lambda, float *adv, float *returns, PonderError *err) {
    int rc = token_check(b, token_rewards, adv, err);
    if (!rc) rc = algo_check_tokens_finite(b, values, "values", err);
    if (!rc) rc = discount_check(gamma, "gamma", err);
    if (!rc) rc = discount_check(lambda, "lambda", err);
    if (rc) return rc;
    if (!returns) return ponder_error(err, PONDER_ERR_CONFIG, "GAE: returns output is NULL");
    for (int64_t i = 0; i < b->n_seq; i++) {
        const int64_t row = i * b->max_len;
        algo_token_gae_row(b->mask + row, b->max_len, token_rewards + row, values + row, gamma,
                           lambda, adv + row, returns + row);
    }
    return PONDER_OK;
}

int algo_adv_gae(const AlgoBatch *b, const float *token_rewards, const float *values, double gamma,
                 double lambda, float *adv, float *returns, PonderError *err) {
    int rc = algo_gae(b, token_rewards, values, gamma, lambda, adv, returns, err);
    if (!rc) rc = algo_whiten(b, adv, adv, err);
    return rc;
}

/* ---------------------------------------------------------------- helpers */

int algo_broadcast_seq(const AlgoBatch *b, const double *per_seq, float *out, PonderError *err) {
    int rc = algo_batch_check(b, err);
    if (rc) return rc;
    rc = algo_check_values_finite(b->n_seq, per_seq, "per-sequence values", err);
    if (rc) return rc;
    if (!out) return ponder_error(err, PONDER_ERR_CONFIG, "algos: broadcast output is NULL");
    for (int64_t i = 0; i < b->n_seq; i++)
        for (int64_t t = 0; t < b->max_len; t++) {
            int64_t k = i * b->max_len + t;
            out[k] = b->mask[k] != 0.0f ? (float)per_seq[i] : 0.0f;
        }
    return PONDER_OK;
}

int algo_seq_sums(const AlgoBatch *b, const float *x, double *out, PonderError *err) {
    int rc = algo_batch_check(b, err);
    if (!rc) rc = algo_check_tokens_finite(b, x, "token values", err);
    if (rc) return rc;
    if (!out) return ponder_error(err, PONDER_ERR_CONFIG, "algos: sums output is NULL");
    for (int64_t i = 0; i < b->n_seq; i++) {
        double s = 0.0;
        for (int64_t t = 0; t < b->max_len; t++) {
            int64_t k = i * b->max_len + t;
            if (b->mask[k] != 0.0f) s += x[k];
        }
        out[i] = s;
    }
    return PONDER_OK;
}
