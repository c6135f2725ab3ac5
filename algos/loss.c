/* algos/loss.c — loss aggregation, policy loss, value loss, Bradley–Terry
 * (METHODS.md 1.1–1.5). Gradients reproduce torch autograd on the reference
 * formulas (TRL GRPOTrainer, verl core_algos), tie conventions included. */
#include "algos/loss.h"

#include <math.h>   /* exp, log1p, isfinite, fabs */
#include <string.h> /* strcmp, memset */

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

/* D of the table in loss.h. */
static double agg_denominator(const AlgoBatch *b, const AlgoAgg *agg) {
    if (agg->normalizer > 0.0) return agg->normalizer;
    switch (agg->type) {
    case ALGO_LOSS_GRPO:
        return (double)b->n_seq;
    case ALGO_LOSS_DR_GRPO:
        return (double)b->n_seq * (double)agg->max_completion_length;
    case ALGO_LOSS_BNPO:
    case ALGO_LOSS_DAPO:
    default: {
        int64_t n = algo_batch_tokens(b);
        return n > 0 ? (double)n : 1.0; /* TRL: mask.sum().clamp(min=1) */
    }
    }
}

/* d loss / d x[i,t] for a mask-1 token of row i with n_i tokens. */
static double agg_row_weight(const AlgoAgg *agg, double denom, int64_t n_i) {
    if (agg->type == ALGO_LOSS_GRPO) return 1.0 / ((n_i > 0 ? (double)n_i : 1.0) * denom);
    return 1.0 / denom;
}

int algo_agg_loss(const AlgoBatch *b, const AlgoAgg *agg, const float *x, double *loss, float *dx,
                  PonderError *err) {
    int rc = algo_batch_check(b, err);
    if (!rc) rc = agg_check(agg, err);
    if (!rc) rc = algo_check_tokens_finite(b, x, "per-token loss", err);
    if (rc) return rc;
    double denom = agg_denominator(b, agg), total = 0.0;
    for (int64_t i = 0; i < b->n_seq; i++) {
        double w = agg_row_weight(agg, denom, algo_row_tokens(b, i)), row = 0.0;
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

/* torch's gradient share of branch a in max(a, b) / min(a, b): ties split evenly. */
static double max_share(double a, double b) { return a > b ? 1.0 : (a == b ? 0.5 : 0.0); }
static double min_share(double a, double b) { return a < b ? 1.0 : (a == b ? 0.5 : 0.0); }

/* The clipped surrogate of one token (loss.h): value and d/d rho, with flags. */
typedef struct PgToken {
    double value, drho;
    int low, high, dual;
} PgToken;

static PgToken pg_token(const AlgoPolicyConfig *c, double rho, double a) {
    double lo = 1.0 - c->epsilon_low, hi = 1.0 + c->epsilon_high;
    double clipped = rho < lo ? lo : (rho > hi ? hi : rho);
    double inside = (rho >= lo && rho <= hi) ? 1.0 : 0.0; /* clamp's gradient */
    double pg1 = -a * rho, pg2 = -a * clipped;
    double s1 = max_share(pg1, pg2);
    PgToken p = {.value = pg1 > pg2 ? pg1 : pg2, .drho = s1 * -a + (1.0 - s1) * -a * inside};
    p.low = rho < lo && a < 0.0;           /* TRL is_low_clipped */
    p.high = rho > hi && a > 0.0;          /* TRL is_high_clipped */
    if (c->dual_clip_c > 0.0 && a < 0.0) { /* verl dual clip: bound the loss at -A c */
        double pg3 = -a * c->dual_clip_c;
        p.dual = p.value > pg3;
        p.drho *= min_share(p.value, pg3);
        if (pg3 < p.value) p.value = pg3;
    }
    return p;
}

/* Clamped log-ratio and whether the gradient passes the clamp. */
static double clamp_log_ratio(double lr, double clamp, double *pass) {
    *pass = 1.0;
    if (clamp > 0.0 && (lr < -clamp || lr > clamp)) {
        *pass = 0.0;
        return lr < 0.0 ? -clamp : clamp;
    }
    return lr;
}

typedef struct PolicyAcc {
    double pg, kl, ent;                                             /* aggregated loss parts */
    double tokens, low, high, dual, ratio, kl_sum, old_kl, ent_sum; /* metric sums */
} PolicyAcc;

/* Per-token KL and entropy terms (metrics, loss parts) and their gradient. */
static double token_extras(const AlgoPolicyConfig *c, const AlgoPolicyInputs *in, int64_t k,
                           double w, PolicyAcc *acc, float *dentropy) {
    double dlogp = 0.0;
    if (in->ref_logp) {
        double dk;
        double kv = algo_kl_token(c->kl.estimator, c->kl.clamp, in->logp[k], in->ref_logp[k], &dk);
        acc->kl_sum += kv;
        if (c->kl.coef != 0.0) {
            acc->kl += w * kv;
            dlogp += c->kl.coef * w * dk;
        }
    }
    if (in->entropy) {
        acc->ent_sum += in->entropy[k];
        acc->ent += w * in->entropy[k];
    }
    if (dentropy) dentropy[k] = (float)(-c->entropy_coef * w);
    return dlogp;
}

static double token_log_ratio(const AlgoPolicyInputs *in, int64_t k) {
    return in->old_logp ? (double)in->logp[k] - (double)in->old_logp[k] : 0.0;
}

/* Sequence-level ratio of row i (GSPO as TRL): clamped mean log-ratio. */
static double seq_log_ratio(const AlgoBatch *b, const AlgoPolicyConfig *c,
                            const AlgoPolicyInputs *in, int64_t i, int64_t n_i, double *pass) {
    double s = 0.0;
    for (int64_t t = 0; t < b->max_len; t++) {
        int64_t k = i * b->max_len + t;
        if (b->mask[k] != 0.0f) s += token_log_ratio(in, k);
    }
    return clamp_log_ratio(s / (n_i > 0 ? (double)n_i : 1.0), c->log_ratio_clamp, pass);
}

static void policy_row(const AlgoBatch *b, const AlgoPolicyConfig *c, const AlgoPolicyInputs *in,
                       int64_t i, double denom, PolicyAcc *acc, float *dlogp, float *dentropy) {
    const int64_t n_i = algo_row_tokens(b, i), row = i * b->max_len;
    const double w = agg_row_weight(&c->agg, denom, n_i);
    const int seq = c->ratio_level == ALGO_RATIO_SEQUENCE;
    double seq_pass = 0.0, seq_lr = seq ? seq_log_ratio(b, c, in, i, n_i, &seq_pass) : 0.0;
    double seq_drho = 0.0; /* sequence level: sum_t w d pg / d rho_i */
    for (int64_t t = 0; t < b->max_len; t++) {
        const int64_t k = row + t;
        if (b->mask[k] == 0.0f) {
            dlogp[k] = 0.0f;
            if (dentropy) dentropy[k] = 0.0f;
            continue;
        }
        double pass, lr = clamp_log_ratio(token_log_ratio(in, k), c->log_ratio_clamp, &pass);
        double rho = exp(seq ? seq_lr : lr);
        PgToken p = pg_token(c, rho, in->advantages[k]);
        acc->pg += w * p.value;
        acc->tokens += 1.0;
        acc->low += p.low, acc->high += p.high, acc->dual += p.dual;
        acc->ratio += rho;
        acc->old_kl += -lr;
        double g = token_extras(c, in, k, w, acc, dentropy);
        if (seq)
            seq_drho += w * p.drho;
        else
            g += w * p.drho * rho * pass; /* d rho / d logp = rho inside the clamp */
        dlogp[k] = (float)g;
    }
    if (!seq || n_i == 0) return;
    /* d rho_i / d logp[i,t] = rho_i / n_i for each mask-1 token */
    double g_seq = seq_drho * exp(seq_lr) * seq_pass / (double)n_i;
    for (int64_t t = 0; t < b->max_len; t++)
        if (b->mask[row + t] != 0.0f) dlogp[row + t] = (float)((double)dlogp[row + t] + g_seq);
}

int algo_policy_loss(const AlgoBatch *b, const AlgoPolicyConfig *cfg, const AlgoPolicyInputs *in,
                     AlgoPolicyResult *res, float *dlogp, float *dentropy, PonderError *err) {
    int rc = algo_batch_check(b, err);
    if (!rc) rc = algo_policy_config_check(cfg, err);
    if (!rc) rc = policy_inputs_check(b, cfg, in, dlogp, dentropy, err);
    if (rc) return rc;
    if (!res) return ponder_error(err, PONDER_ERR_CONFIG, "policy loss: result is NULL");
    PolicyAcc acc;
    memset(&acc, 0, sizeof acc);
    double denom = agg_denominator(b, &cfg->agg);
    for (int64_t i = 0; i < b->n_seq; i++) policy_row(b, cfg, in, i, denom, &acc, dlogp, dentropy);
    double n = acc.tokens > 0.0 ? acc.tokens : 1.0;
    *res = (AlgoPolicyResult){
        .pg_loss = acc.pg,
        .kl_loss = cfg->kl.coef != 0.0 ? acc.kl : 0.0,
        .entropy_loss = acc.ent,
        .tokens = acc.tokens,
        .clip_low_frac = acc.low / n,
        .clip_high_frac = acc.high / n,
        .dual_clip_frac = acc.dual / n,
        .ratio_mean = acc.ratio / n,
        .kl_mean = acc.kl_sum / n,
        .approx_kl_old = acc.old_kl / n,
        .entropy_mean = acc.ent_sum / n,
    };
    res->loss = res->pg_loss + cfg->kl.coef * res->kl_loss - cfg->entropy_coef * res->entropy_loss;
    return PONDER_OK;
}

/* ------------------------------------------------------------- value loss */

/* One token's max((V - R)^2, (Vc - R)^2) and its derivative in V; *clipped is
 * set when the clipped error is strictly larger (verl vf_clipfrac). */
static double value_token(double v, double r, double old, double eps, int clip, double *dv,
                          int *clipped) {
    double e1 = v - r, l1 = e1 * e1;
    *dv = 2.0 * e1;
    *clipped = 0;
    if (!clip) return l1;
    /* Vc = V_old + clip(V - V_old, -eps, eps), as verl clip_by_value */
    double lo = old - eps, hi = old + eps;
    double vc = v < lo ? lo : (v > hi ? hi : v), inside = (v >= lo && v <= hi) ? 1.0 : 0.0;
    double e2 = vc - r, l2 = e2 * e2, s1 = max_share(l1, l2);
    *dv = s1 * 2.0 * e1 + (1.0 - s1) * 2.0 * e2 * inside;
    *clipped = l2 > l1;
    return l1 > l2 ? l1 : l2;
}

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
    const int clip = cfg->clip_range > 0.0;
    double denom = agg_denominator(b, &cfg->agg), loss = 0.0, clipped = 0.0, n = 0.0, vsum = 0.0;
    for (int64_t i = 0; i < b->n_seq; i++) {
        double w = agg_row_weight(&cfg->agg, denom, algo_row_tokens(b, i));
        for (int64_t t = 0; t < b->max_len; t++) {
            int64_t k = i * b->max_len + t;
            dvalues[k] = 0.0f;
            if (b->mask[k] == 0.0f) continue;
            double dv;
            int c;
            loss += w * value_token(values[k], returns[k], clip ? old_values[k] : 0.0,
                                    cfg->clip_range, clip, &dv, &c);
            dvalues[k] = (float)(0.5 * w * dv); /* loss = 0.5 * agg(...) */
            clipped += c;
            n += 1.0;
            vsum += values[k];
        }
    }
    double nn = n > 0.0 ? n : 1.0;
    *res = (AlgoValueResult){
        .loss = 0.5 * loss, .clip_frac = clipped / nn, .tokens = n, .value_mean = vsum / nn};
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
