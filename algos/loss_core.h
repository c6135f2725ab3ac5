/* algos/loss_core.h — the policy and value losses of algos/loss.h over a
 * checked batch: the loops of algo_policy_loss and algo_value_loss without
 * their input checks, and the metric sums they reduce to.
 *
 * Header-only so that programs linking no algos/ object run the very code the
 * host losses run: the fake device's loss ops (tests/fake_device.h) and the
 * CUDA parity suite's reference (tests/cuda_parity.h), which bench/gpu_bench.c
 * builds without the rest of ponder on GPU machines. algos/loss.c wraps these
 * with the checks; call them directly only on inputs algo_policy_loss /
 * algo_value_loss would accept. The per-token formulas are algos/loss_token.h. */
#ifndef PONDER_ALGOS_LOSS_CORE_H
#define PONDER_ALGOS_LOSS_CORE_H

#include "algos/loss.h"       /* AlgoBatch, AlgoPolicyConfig, AlgoPolicyResult, ... */
#include "algos/loss_token.h" /* per-token formulas */

/* The policy loss's sums over a batch's mask-1 tokens: the aggregated loss
 * parts (pg, kl, ent: sum of weight * term) and the plain metric sums. A
 * backend returns the same sums (model/ops.h OPS_POLICY_*, same order). */
typedef struct AlgoPolicySums {
    double pg, kl, ent;
    double tokens, low, high, dual, ratio, kl_sum, old_kl, ent_sum;
} AlgoPolicySums;

/* The value loss's sums: sum of weight * max(...) (before the 0.5), clipped
 * tokens, tokens, sum of V (model/ops.h OPS_VALUE_*, same order). */
typedef struct AlgoValueSums {
    double loss, clipped, tokens, value_sum;
} AlgoValueSums;

static inline int64_t algo_core_row_tokens(const AlgoBatch *b, int64_t i) {
    const float *m = b->mask + i * b->max_len;
    int64_t n = 0;
    for (int64_t t = 0; t < b->max_len; t++) n += m[t] != 0.0f;
    return n;
}

/* D of the table in loss.h. */
static inline double algo_core_denominator(const AlgoBatch *b, const AlgoAgg *agg) {
    if (agg->normalizer > 0.0) return agg->normalizer;
    switch (agg->type) {
    case ALGO_LOSS_GRPO:
        return (double)b->n_seq;
    case ALGO_LOSS_DR_GRPO:
        return (double)b->n_seq * (double)agg->max_completion_length;
    case ALGO_LOSS_BNPO:
    case ALGO_LOSS_DAPO:
    default: {
        int64_t n = 0;
        for (int64_t i = 0; i < b->n_seq; i++) n += algo_core_row_tokens(b, i);
        return n > 0 ? (double)n : 1.0; /* TRL: mask.sum().clamp(min=1) */
    }
    }
}

static inline double algo_core_row_weight(const AlgoAgg *agg, double denom, int64_t n_i) {
    return algo_token_row_weight(agg->type == ALGO_LOSS_GRPO, denom, n_i);
}

/* ------------------------------------------------------------ policy ---- */

/* Per-token KL and entropy terms (metrics, loss parts) and their gradient. */
static inline double algo_core_token_extras(const AlgoPolicyConfig *c, const AlgoPolicyInputs *in,
                                            int64_t k, double w, AlgoPolicySums *acc,
                                            float *dentropy) {
    double dlogp = 0.0;
    if (in->ref_logp) {
        double dk;
        double kv = algo_token_kl((int)c->kl.estimator, c->kl.clamp, in->logp[k], in->ref_logp[k],
                                  &dk);
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

static inline double algo_core_token_log_ratio(const AlgoPolicyInputs *in, int64_t k) {
    return in->old_logp ? (double)in->logp[k] - (double)in->old_logp[k] : 0.0;
}

/* Sequence-level ratio of row i (GSPO as TRL): clamped mean log-ratio. */
static inline double algo_core_seq_log_ratio(const AlgoBatch *b, const AlgoPolicyConfig *c,
                                             const AlgoPolicyInputs *in, int64_t i, int64_t n_i,
                                             double *pass) {
    double s = 0.0;
    for (int64_t t = 0; t < b->max_len; t++) {
        int64_t k = i * b->max_len + t;
        if (b->mask[k] != 0.0f) s += algo_core_token_log_ratio(in, k);
    }
    return algo_token_clamp_log_ratio(s / (n_i > 0 ? (double)n_i : 1.0), c->log_ratio_clamp,
                                      pass);
}

static inline void algo_core_policy_row(const AlgoBatch *b, const AlgoPolicyConfig *c,
                                        const AlgoPolicyInputs *in, int64_t i, double denom,
                                        AlgoPolicySums *acc, float *dlogp, float *dentropy) {
    const int64_t n_i = algo_core_row_tokens(b, i), row = i * b->max_len;
    const double w = algo_core_row_weight(&c->agg, denom, n_i);
    const int seq = c->ratio_level == ALGO_RATIO_SEQUENCE;
    double seq_pass = 0.0, seq_lr = seq ? algo_core_seq_log_ratio(b, c, in, i, n_i, &seq_pass) : 0.0;
    double seq_drho = 0.0; /* sequence level: sum_t w d pg / d rho_i */
    for (int64_t t = 0; t < b->max_len; t++) {
        const int64_t k = row + t;
        if (b->mask[k] == 0.0f) {
            dlogp[k] = 0.0f;
            if (dentropy) dentropy[k] = 0.0f;
            continue;
        }
        double pass,
            lr = algo_token_clamp_log_ratio(algo_core_token_log_ratio(in, k), c->log_ratio_clamp,
                                            &pass);
        double rho = exp(seq ? seq_lr : lr);
        AlgoPgToken p =
            algo_token_pg(c->epsilon_low, c->epsilon_high, c->dual_clip_c, rho, in->advantages[k]);
        acc->pg += w * p.value;
        acc->tokens += 1.0;
        acc->low += p.low, acc->high += p.high, acc->dual += p.dual;
        acc->ratio += rho;
        acc->old_kl += -lr;
        double g = algo_core_token_extras(c, in, k, w, acc, dentropy);
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

/* algo_policy_loss's loop with the denominator D given: writes dlogp (and
 * dentropy when not NULL) at every position and fills *sums. */
static inline void algo_core_policy_loss(const AlgoBatch *b, const AlgoPolicyConfig *c,
                                         const AlgoPolicyInputs *in, double denom,
                                         AlgoPolicySums *sums, float *dlogp, float *dentropy) {
    AlgoPolicySums acc = {0};
    for (int64_t i = 0; i < b->n_seq; i++)
        algo_core_policy_row(b, c, in, i, denom, &acc, dlogp, dentropy);
    *sums = acc;
}

/* Loss parts and metrics from the sums (means over mask-1 tokens). */
static inline AlgoPolicyResult algo_core_policy_result(const AlgoPolicySums *acc,
                                                       const AlgoPolicyConfig *c) {
    double n = acc->tokens > 0.0 ? acc->tokens : 1.0;
    AlgoPolicyResult res = {
        .pg_loss = acc->pg,
        .kl_loss = c->kl.coef != 0.0 ? acc->kl : 0.0,
        .entropy_loss = acc->ent,
        .tokens = acc->tokens,
        .clip_low_frac = acc->low / n,
        .clip_high_frac = acc->high / n,
        .dual_clip_frac = acc->dual / n,
        .ratio_mean = acc->ratio / n,
        .kl_mean = acc->kl_sum / n,
        .approx_kl_old = acc->old_kl / n,
        .entropy_mean = acc->ent_sum / n,
    };
    res.loss = res.pg_loss + c->kl.coef * res.kl_loss - c->entropy_coef * res.entropy_loss;
    return res;
}

/* ------------------------------------------------------------- value ---- */

/* algo_value_loss's loop with D given; old_values may be NULL when
 * clip_range is 0. */
static inline void algo_core_value_loss(const AlgoBatch *b, const AlgoValueConfig *cfg,
                                        const float *values, const float *old_values,
                                        const float *returns, double denom, AlgoValueSums *sums,
                                        float *dvalues) {
    const int clip = cfg->clip_range > 0.0;
    double loss = 0.0, clipped = 0.0, n = 0.0, vsum = 0.0;
    for (int64_t i = 0; i < b->n_seq; i++) {
        double w = algo_core_row_weight(&cfg->agg, denom, algo_core_row_tokens(b, i));
        for (int64_t t = 0; t < b->max_len; t++) {
            int64_t k = i * b->max_len + t;
            dvalues[k] = 0.0f;
            if (b->mask[k] == 0.0f) continue;
            double dv;
            int c;
            loss += w * algo_token_value(values[k], returns[k], clip ? old_values[k] : 0.0,
                                         cfg->clip_range, clip, &dv, &c);
            dvalues[k] = (float)(0.5 * w * dv); /* loss = 0.5 * agg(...) */
            clipped += c;
            n += 1.0;
            vsum += values[k];
        }
    }
    *sums = (AlgoValueSums){loss, clipped, n, vsum};
}

static inline AlgoValueResult algo_core_value_result(const AlgoValueSums *s) {
    double nn = s->tokens > 0.0 ? s->tokens : 1.0;
    return (AlgoValueResult){.loss = 0.5 * s->loss,
                             .clip_frac = s->clipped / nn,
                             .tokens = s->tokens,
                             .value_mean = s->value_sum / nn};
}

#endif
