/* algos/loss.c — loss aggregation, policy loss, value loss, Bradley–Terry
 * (METHODS.md 1.1–1.5). Gradients reproduce torch autograd on the reference
 * formulas (TRL GRPOTrainer, verl core_algos), tie conventions included. */
#include "algos/loss.h"

#include <math.h>   /* exp, log1p, isfinite, fabs */
#include <string.h> /* strcmp */

#include "algos/loss_core.h" /* the loops and per-token formulas, shared with the backends */

/* ------------------------------------------------------------ aggregation */

static const char *const LOSS_TYPE_NAMES[] = {"grpo", "bnpo", "dr_grpo", "dapo"};

const char *algo_loss_type_name(AlgoLossType t) {
    return (unsigned)t < 4 ? LOSS_TYPE_NAMES[t] : "?";
}

int algo_loss_type_parse(const char *name, AlgoLossType *out, PonderError *err) {
    for (int i = 0; name && i < 4; i++) {
        if (strcmp(name, LOSS_TYPE_NAMES[i]) == 0) {
            *out = (AlgoLossType)i;
            return PONDER_OK;
        }
    }
    return ponder_error(err, PONDER_ERR_CONFIG,
                        "unknown loss_type \"%s\" (expected grpo, bnpo, dr_grpo or dapo)",
                        name ? name : "(null)");
}

static int agg_check(const AlgoAgg *agg, PonderError *err) {
    if (!agg) return ponder_error(err, PONDER_ERR_CONFIG, "algos: aggregation is NULL");
    if ((unsigned)agg->type > ALGO_LOSS_DAPO)
        return ponder_error(err, PONDER_ERR_CONFIG, "algos: unknown loss_type %d", (int)agg->type);
    if (!isfinite(agg->normalizer) || agg->normalizer < 0.0)
        return ponder_error(err, PONDER_ERR_CONFIG,
                            "algos: loss normalizer %g must be finite and >= 0 (0 = default)",
                            agg->normalizer);
    if (agg->type == ALGO_LOSS_DR_GRPO && agg->normalizer == 0.0 && agg->max_completion_length < 1)
        return ponder_error(err, PONDER_ERR_CONFIG,
                            "loss_type dr_grpo needs max_completion_length >= 1 (got %lld)",
                            (long long)agg->max_completion_length);
    return PONDER_OK;
}

double algo_agg_denominator(const AlgoBatch *b, const AlgoAgg *agg) {
    return algo_core_denominator(b, agg);
}

int algo_agg_loss(const AlgoBatch *b, const AlgoAgg *agg, const float *x, double *loss, float *dx,
                  PonderError *err) {
    int rc = algo_batch_check(b, err);
    if (!rc) rc = agg_check(agg, err);
    if (!rc) rc = algo_check_tokens_finite(b, x, "per-token loss", err);
    if (rc) return rc;
    double denom = algo_core_denominator(b, agg), total = 0.0;
    for (int64_t i = 0; i < b->n_seq; i++) {
        double w = algo_core_row_weight(agg, denom, algo_row_tokens(b, i)), row = 0.0;
        for (int64_t t = 0; t < b->max_len; t++) {
            int64_t k = i * b->max_len + t;
            int on = b->mask[k] != 0.0f;
            if (on) row += x[k];
            if (dx) dx[k] = on ? (float)w : 0.0f;
        }
        total += w * row;
    }
    *loss = total;
    return PONDER_OK;
}

/* ------------------------------------------------------------ policy loss */

AlgoPolicyConfig algo_policy_config_default(void) {
    return (AlgoPolicyConfig){
        .epsilon_low = 0.2,
        .epsilon_high = 0.2,
        .dual_clip_c = 0.0,
        .ratio_level = ALGO_RATIO_TOKEN,
        .log_ratio_clamp = 20.0,
        .agg = {.type = ALGO_LOSS_DAPO, .max_completion_length = 0, .normalizer = 0.0},
        .kl = {.estimator = ALGO_KL_K3, .coef = 0.0, .clamp = 0},
        .entropy_coef = 0.0,
    };
}

int algo_policy_config_check(const AlgoPolicyConfig *c, PonderError *err) {
    if (!c) return ponder_error(err, PONDER_ERR_CONFIG, "policy loss: config is NULL");
    if (!(c->epsilon_low >= 0.0 && c->epsilon_low < 1.0))
        return ponder_error(err, PONDER_ERR_CONFIG, "policy loss: epsilon %g must lie in [0, 1)",
                            c->epsilon_low);
    if (!(c->epsilon_high >= 0.0 && isfinite(c->epsilon_high)))
        return ponder_error(err, PONDER_ERR_CONFIG, "policy loss: epsilon_high %g must be >= 0",
                            c->epsilon_high);
    if (!(c->dual_clip_c == 0.0 || (c->dual_clip_c > 1.0 && isfinite(c->dual_clip_c))))
        return ponder_error(err, PONDER_ERR_CONFIG,
                            "policy loss: dual clip c = %g must be 0 (off) or > 1 (verl asserts "
                            "clip_ratio_c > 1)",
                            c->dual_clip_c);
    if (c->ratio_level != ALGO_RATIO_TOKEN && c->ratio_level != ALGO_RATIO_SEQUENCE)
        return ponder_error(err, PONDER_ERR_CONFIG, "policy loss: unknown ratio level %d",
                            (int)c->ratio_level);
    if (!(c->log_ratio_clamp >= 0.0 && isfinite(c->log_ratio_clamp)))
        return ponder_error(err, PONDER_ERR_CONFIG, "policy loss: log-ratio clamp %g must be >= 0",
                            c->log_ratio_clamp);
    if ((unsigned)c->kl.estimator > ALGO_KL_K3)
        return ponder_error(err, PONDER_ERR_CONFIG, "policy loss: unknown KL estimator %d",
                            (int)c->kl.estimator);
    if (!isfinite(c->kl.coef) || !isfinite(c->entropy_coef))
        return ponder_error(
            err, PONDER_ERR_CONFIG,
            "policy loss: KL coefficient %g and entropy coefficient %g must be finite", c->kl.coef,
            c->entropy_coef);
    return agg_check(&c->agg, err);
}

static int policy_inputs_check(const AlgoBatch *b, const AlgoPolicyConfig *c,
                               const AlgoPolicyInputs *in, const float *dlogp,
                               const float *dentropy, PonderError *err) {
    if (!in) return ponder_error(err, PONDER_ERR_CONFIG, "policy loss: inputs are NULL");
    int rc = algo_check_tokens_finite(b, in->logp, "logp", err);
    if (!rc) rc = algo_check_tokens_finite(b, in->advantages, "advantages", err);
    if (!rc && in->old_logp) rc = algo_check_tokens_finite(b, in->old_logp, "old_logp", err);
    if (rc) return rc;
    if (c->kl.coef != 0.0 && !in->ref_logp)
        return ponder_error(err, PONDER_ERR_CONFIG, "policy loss: KL coefficient %g needs ref_logp",
                            c->kl.coef);
    if (in->ref_logp && (rc = algo_check_tokens_finite(b, in->ref_logp, "ref_logp", err)))
        return rc;
    if (c->entropy_coef != 0.0 && (!in->entropy || !dentropy))
        return ponder_error(err, PONDER_ERR_CONFIG,
                            "policy loss: entropy coefficient %g needs entropy and dentropy",
                            c->entropy_coef);
    if (in->entropy && (rc = algo_check_tokens_finite(b, in->entropy, "entropy", err))) return rc;
    if (!dlogp) return ponder_error(err, PONDER_ERR_CONFIG, "policy loss: dlogp output is NULL");
    return PONDER_OK;
}

int algo_policy_loss(const AlgoBatch *b, const AlgoPolicyConfig *cfg, const AlgoPolicyInputs *in,
                     AlgoPolicyResult *res, float *dlogp, float *dentropy, PonderError *err) {
    int rc = algo_batch_check(b, err);
    if (!rc) rc = algo_policy_config_check(cfg, err);
    if (!rc) rc = policy_inputs_check(b, cfg, in, dlogp, dentropy, err);
    if (rc) return rc;
    if (!res) return ponder_error(err, PONDER_ERR_CONFIG, "policy loss: result is NULL");
    AlgoPolicySums sums;
    algo_core_policy_loss(b, cfg, in, algo_core_denominator(b, &cfg->agg), &sums, dlogp, dentropy);
    *res = algo_core_policy_result(&sums, cfg);
    return PONDER_OK;
}

/* ------------------------------------------------------------- value loss */

static int value_check(const AlgoBatch *b, const AlgoValueConfig *cfg, const float *values,
                       const float *old_values, const float *returns, const AlgoValueResult *res,
                       const float *dvalues, PonderError *err) {
    int rc = algo_batch_check(b, err);
    if (rc) return rc;
    if (!cfg || !res || !dvalues)
        return ponder_error(err, PONDER_ERR_CONFIG,
                            "value loss: config, result or dvalues is NULL");
    if (!(cfg->clip_range >= 0.0 && isfinite(cfg->clip_range)))
        return ponder_error(err, PONDER_ERR_CONFIG,
                            "value loss: clip range %g must be >= 0 (0 = off)", cfg->clip_range);
    if (!(rc = agg_check(&cfg->agg, err))) rc = algo_check_tokens_finite(b, values, "values", err);
    if (!rc) rc = algo_check_tokens_finite(b, returns, "returns", err);
    if (!rc && cfg->clip_range > 0.0)
        rc = algo_check_tokens_finite(b, old_values, "old_values", err);
    return rc;
}

int algo_value_loss(const AlgoBatch *b, const AlgoValueConfig *cfg, const float *values,
                    const float *old_values, const float *returns, AlgoValueResult *res,
                    float *dvalues, PonderError *err) {
    int rc = value_check(b, cfg, values, old_values, returns, res, dvalues, err);
    if (rc) return rc;
    AlgoValueSums sums;
    algo_core_value_loss(b, cfg, values, old_values, returns, algo_core_denominator(b, &cfg->agg),
                         &sums, dvalues);
    *res = algo_core_value_result(&sums);
    return PONDER_OK;
}

/* ---------------------------------------------------------- Bradley–Terry */

static double softplus(double x) { return (x > 0.0 ? x : 0.0) + log1p(exp(-fabs(x))); }
static double sigmoid(double x) {
    if (x >= 0.0) return 1.0 / (1.0 + exp(-x));
    double e = exp(x);
    return e / (1.0 + e);
}

int algo_bt_loss(int64_t n, const float *chosen, const float *rejected, AlgoBtResult *res,
                 float *d_chosen, float *d_rejected, PonderError *err) {
    if (n < 1)
        return ponder_error(err, PONDER_ERR_SHAPE, "Bradley-Terry: %lld pairs; need >= 1",
                            (long long)n);
    if (!chosen || !rejected || !res)
        return ponder_error(err, PONDER_ERR_CONFIG,
                            "Bradley-Terry: chosen, rejected or result is NULL");
    double loss = 0.0, correct = 0.0, margin = 0.0;
    for (int64_t k = 0; k < n; k++) {
        if (!isfinite(chosen[k]) || !isfinite(rejected[k]))
            return ponder_error(err, PONDER_ERR_RUNTIME,
                                "Bradley-Terry: pair %lld has a non-finite reward (%g, %g)",
                                (long long)k, (double)chosen[k], (double)rejected[k]);
        double m = (double)chosen[k] - (double)rejected[k];
        loss += softplus(-m); /* -log sigmoid(m) */
        double s = sigmoid(-m) / (double)n;
        if (d_chosen) d_chosen[k] = (float)-s;
        if (d_rejected) d_rejected[k] = (float)s;
        correct += m > 0.0;
        margin += m;
    }
    *res = (AlgoBtResult){.loss = loss / (double)n,
                          .accuracy = correct / (double)n,
                          .margin_mean = margin / (double)n};
    return PONDER_OK;
}
