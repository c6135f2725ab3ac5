/* algos/kl.c — KL estimators, KL in the reward, KL coefficient controllers
 * (METHODS.md 0 and 1.5). */
#include "algos/kl.h"

#include <math.h>   /* exp, isfinite */
#include <string.h> /* strcmp */

#include "algos/advantage_token.h" /* algo_token_rewards_row */
#include "algos/loss_token.h"      /* algo_token_kl */

/* the per-token formulas are shared with the device kernels */
_Static_assert(ALGO_KL_K1 == ALGO_TOKEN_KL_K1 && ALGO_KL_K2 == ALGO_TOKEN_KL_K2 &&
                   ALGO_KL_K3 == ALGO_TOKEN_KL_K3,
               "algos/loss_token.h numbers the KL estimators as AlgoKlEstimator does");

double algo_kl_token(AlgoKlEstimator est, int clamp, double logp, double ref, double *dkl_dlogp) {
    return algo_token_kl((int)est, clamp, logp, ref, dkl_dlogp);
}

const char *algo_kl_name(AlgoKlEstimator est) {
    switch (est) {
    case ALGO_KL_K1:
        return "k1";
    case ALGO_KL_K2:
        return "k2";
    case ALGO_KL_K3:
        return "k3";
    }
    return "?";
}

int algo_kl_parse(const char *name, AlgoKlEstimator *out, PonderError *err) {
    static const struct {
        const char *name;
        AlgoKlEstimator est;
    } names[] = {{"k1", ALGO_KL_K1},  {"kl", ALGO_KL_K1}, {"k2", ALGO_KL_K2},
                 {"mse", ALGO_KL_K2}, {"k3", ALGO_KL_K3}, {"low_var_kl", ALGO_KL_K3}};
    for (size_t i = 0; name && i < sizeof names / sizeof names[0]; i++) {
        if (strcmp(name, names[i].name) == 0) {
            *out = names[i].est;
            return PONDER_OK;
        }
    }
    return ponder_error(err, PONDER_ERR_CONFIG,
                        "unknown KL estimator \"%s\" (expected k1, k2 or k3)",
                        name ? name : "(null)");
}

/* ------------------------------------------------------ KL in the reward */

static int token_rewards_check(const AlgoBatch *b, const double *scores, const float *old_logp,
                               const float *ref_logp, int use_kl, const float *rewards,
                               PonderError *err) {
    int rc = algo_batch_check(b, err);
    if (rc) return rc;
    rc = algo_check_values_finite(b->n_seq, scores, "scores", err);
    if (rc) return rc;
    if (!rewards)
        return ponder_error(err, PONDER_ERR_CONFIG, "algos: token rewards output is NULL");
    if (use_kl) {
        rc = algo_check_tokens_finite(b, old_logp, "old_logp", err);
        if (!rc) rc = algo_check_tokens_finite(b, ref_logp, "ref_logp", err);
    }
    return rc;
}

int algo_token_rewards(const AlgoBatch *b, const double *scores, const float *old_logp,
                       const float *ref_logp, const AlgoKl *kl, float *rewards,
                       double *kl_seq_mean_sum, PonderError *err) {
    double coef = kl ? kl->coef : 0.0;
    if (!isfinite(coef))
        return ponder_error(err, PONDER_ERR_CONFIG, "algos: KL coefficient %g is not finite", coef);
    if (coef != 0.0 && (!old_logp || !ref_logp))
        return ponder_error(err, PONDER_ERR_CONFIG,
                            "algos: KL in the reward (coef %g) needs old_logp and ref_logp", coef);
    int use_kl = kl && old_logp && ref_logp;
    int rc = token_rewards_check(b, scores, old_logp, ref_logp, use_kl, rewards, err);
    if (rc) return rc;
    double seq_sum = 0.0;
    for (int64_t i = 0; i < b->n_seq; i++) {
        const int64_t row = i * b->max_len;
        int has_tokens;
        double kl_mean = algo_token_rewards_row(
            b->mask + row, b->max_len, scores[i], use_kl ? old_logp + row : NULL,
            use_kl ? ref_logp + row : NULL, use_kl, use_kl ? (int)kl->estimator : 0,
            use_kl ? kl->clamp : 0, coef, rewards + row, &has_tokens);
        if (has_tokens) seq_sum += kl_mean;
    }
    if (kl_seq_mean_sum) *kl_seq_mean_sum = use_kl ? seq_sum : 0.0;
    return PONDER_OK;
}

/* ----------------------------------------------------------- controllers */

int algo_kl_ctl_fixed(AlgoKlController *c, double coef, PonderError *err) {
    if (!isfinite(coef) || coef < 0.0)
        return ponder_error(err, PONDER_ERR_CONFIG, "KL coefficient %g must be finite and >= 0",
                            coef);
    *c = (AlgoKlController){.adaptive = 0, .value = coef, .target = 0.0, .horizon = 0.0};
    return PONDER_OK;
}

int algo_kl_ctl_adaptive(AlgoKlController *c, double init_coef, double target, double horizon,
                         PonderError *err) {
    if (!isfinite(init_coef) || init_coef < 0.0)
        return ponder_error(err, PONDER_ERR_CONFIG, "KL coefficient %g must be finite and >= 0",
                            init_coef);
    if (!isfinite(target) || target <= 0.0)
        return ponder_error(err, PONDER_ERR_CONFIG, "adaptive KL target %g must be > 0", target);
    if (!isfinite(horizon) || horizon <= 0.0) /* verl asserts horizon > 0 */
        return ponder_error(err, PONDER_ERR_CONFIG, "adaptive KL horizon %g must be > 0", horizon);
    *c =
        (AlgoKlController){.adaptive = 1, .value = init_coef, .target = target, .horizon = horizon};
    return PONDER_OK;
}

int algo_kl_ctl_update(AlgoKlController *c, double current_kl, int64_t n_steps, PonderError *err) {
    if (!isfinite(current_kl))
        return ponder_error(err, PONDER_ERR_RUNTIME, "KL controller: current KL %g is not finite",
                            current_kl);
    if (n_steps < 0)
        return ponder_error(err, PONDER_ERR_CONFIG, "KL controller: n_steps %lld < 0",
                            (long long)n_steps);
    if (!c->adaptive) return PONDER_OK;
    double e = current_kl / c->target - 1.0;
    if (e < -0.2) e = -0.2;
    if (e > 0.2) e = 0.2;
    c->value *= 1.0 + e * (double)n_steps / c->horizon;
    return PONDER_OK;
}
