/* trainer/rl_device.h — the RL update with its losses on the model's backend
 * (issue 8: "loss kernels on the device"). Used by trainer/rl_stage.c when the
 * policy runs on a device backend whose ops table has the loss ops
 * (model/ops.h policy_loss, value_loss, masked_max_abs_diff).
 *
 * Per rollout, the per-token inputs of the losses (completion mask,
 * advantages, old / reference / sampler log-probs, returns, old values) are
 * made on the device (scoring with model_forward_backend; token-level
 * advantages and whitening by the advantage ops) or, where the host made
 * them, uploaded once. Per mini-batch, the model's per-token outputs stay in
 * backend memory (model_forward_backend), are gathered into the completion
 * layout [S,Tc] there, the loss op writes the per-token gradients there, they
 * are scattered back to the model layout [rows,T] and back-propagated
 * (model_backward_backend). What crosses to the host per mini-batch is the
 * loss op's handful of sums (one download of at most 12 doubles): the metrics.
 *
 * Results equal algo_policy_loss / algo_value_loss on host copies up to the
 * backend's rounding: the CPU reference computes them with the same code
 * (algos/loss_core.h), so a backend built from the CPU ops (the fake device of
 * tests/fake_device.h) gives bit-identical updates.
 *
 * The inline conversions below are header-only so that the fake device and
 * the CUDA parity suite (built without the trainer on GPU machines) use them. */
#ifndef PONDER_TRAINER_RL_DEVICE_H
#define PONDER_TRAINER_RL_DEVICE_H

#include <stdint.h> /* int64_t */

#include "algos/batch.h" /* AlgoMoments */
#include "algos/loss.h"  /* AlgoPolicyConfig, AlgoValueConfig, results */
#include "model/model.h" /* Model, ModelBatch */
#include "model/ops.h"   /* ModelOps, OpsPolicyLoss, OpsValueLoss */
#include "util/error.h"  /* PonderError */

/* AlgoPolicyConfig with its aggregation's denominator D resolved (for the
 * batch it will see, algo_agg_denominator) as the backend op takes it. */
static inline OpsPolicyLoss rl_device_policy_cfg(const AlgoPolicyConfig *c, double denom) {
    OpsPolicyLoss o;
    o.epsilon_low = c->epsilon_low;
    o.epsilon_high = c->epsilon_high;
    o.dual_clip_c = c->dual_clip_c;
    o.log_ratio_clamp = c->log_ratio_clamp;
    o.sequence_ratio = c->ratio_level == ALGO_RATIO_SEQUENCE;
    o.kl_estimator = (int)c->kl.estimator;
    o.kl_clamp = c->kl.clamp;
    o.kl_coef = c->kl.coef;
    o.entropy_coef = c->entropy_coef;
    o.loss_type = (int)c->agg.type;
    o.denom = denom;
    return o;
}

/* The inverse: an AlgoPolicyConfig whose aggregation resolves to o's D
 * (normalizer = D; max_completion_length only has to pass the check). */
static inline AlgoPolicyConfig rl_device_algo_policy_cfg(const OpsPolicyLoss *o) {
    AlgoPolicyConfig c; /* every field set: no call into algos/ (header-only users) */
    c.epsilon_low = o->epsilon_low;
    c.epsilon_high = o->epsilon_high;
    c.dual_clip_c = o->dual_clip_c;
    c.log_ratio_clamp = o->log_ratio_clamp;
    c.ratio_level = o->sequence_ratio ? ALGO_RATIO_SEQUENCE : ALGO_RATIO_TOKEN;
    c.kl.estimator = (AlgoKlEstimator)o->kl_estimator;
    c.kl.clamp = o->kl_clamp;
    c.kl.coef = o->kl_coef;
    c.entropy_coef = o->entropy_coef;
    c.agg.type = (AlgoLossType)o->loss_type;
    c.agg.max_completion_length = 1;
    c.agg.normalizer = o->denom;
    return c;
}

static inline OpsValueLoss rl_device_value_cfg(const AlgoValueConfig *c, double denom) {
    OpsValueLoss o;
    o.clip_range = c->clip_range;
    o.loss_type = (int)c->agg.type;
    o.denom = denom;
    return o;
}

static inline AlgoValueConfig rl_device_algo_value_cfg(const OpsValueLoss *o) {
    AlgoValueConfig c;
    c.clip_range = o->clip_range;
    c.agg.type = (AlgoLossType)o->loss_type;
    c.agg.max_completion_length = 1;
    c.agg.normalizer = o->denom;
    return c;
}

/* ------------------------------------------------------------ the update -- */

/* Whether a model's backend can run the policy loss (and, for a critic, the
 * value loss; for the token-level advantages, token_advantages with the
 * whitening ops) on the device: a device table with those ops. */
int rl_device_policy_usable(const Model *m);
int rl_device_value_usable(const Model *m);
int rl_device_advantages_usable(const Model *m);

/* Host arrays [S,Tc] of one rollout; NULL where the step has none (or
 * where they are made on the device: rl_device_score_logp, or uploaded later:
 * rl_device_upload). */
typedef struct RlDeviceInputs {
    const float *cmask;       /* required */
    const float *adv;         /* required before the first mini-batch */
    const float *old_logp;    /* the policy before the update (several updates per rollout) */
    const float *ref_logp;    /* the frozen reference (KL) */
    const float *sample_logp; /* the sampler's (logp_mismatch on-policy) */
    const float *returns;     /* critic targets */
    const float *old_values;  /* critic values at the rollout */
} RlDeviceInputs;

/* The rollout's inputs in backend memory, and the update's scratch. Model
 * layout [S,T]: completion token t of row i at column Pmax - 1 + t. */
typedef struct RlDeviceBatch {
    const ModelOps *ops;
    int64_t S, T, Tc, Pmax;
    float *cmask, *adv, *old_logp, *ref_logp, *sample_logp, *returns, *old_values; /* [S,Tc] */
    float *logp, *entropy, *values, *dlogp, *dentropy, *dvalues; /* [S,Tc] scratch */
    float *full, *full_entropy; /* [S,T] scratch: gradients in the model's layout */
    double *sums;               /* [OPS_POLICY_NSUMS + 1]: a loss's sums, then the mismatch */
    double *scores;             /* [S]: sequence rewards (token-level advantages) */
} RlDeviceBatch;

/* Allocates and uploads (one upload per input given). */
int rl_device_batch_create(RlDeviceBatch *d, const ModelOps *ops, int64_t S, int64_t T,
                           int64_t Tc, int64_t Pmax, const RlDeviceInputs *in, PonderError *err);
void rl_device_batch_free(RlDeviceBatch *d);

/* *dst (one of d's [S,Tc] arrays; allocated when NULL) = host [S,Tc]. */
int rl_device_upload(RlDeviceBatch *d, float **dst, const float *host, PonderError *err);

/* Scoring the rollout without leaving the device: the log-probs of every
 * completion token under m (the old policy, the reference) for the batch
 * `all` of all S rows, into *dst [S,Tc] (allocated when NULL). Nothing is
 * downloaded. */
int rl_device_score_logp(Model *m, RlDeviceBatch *d, const ModelBatch *all, float **dst,
                         PonderError *err);

/* The critic's values of every completion token into *dst [S,Tc]. */
int rl_device_score_values(Model *critic, RlDeviceBatch *d, const ModelBatch *all, float **dst,
                           PonderError *err);

/* max |a - b| over the rollout's mask-1 tokens (a, b: d's [S,Tc] arrays);
 * one download of a double. */
double rl_device_max_abs_diff(RlDeviceBatch *d, const float *a, const float *b);

/* Token-level advantages on the device (algo_token_rewards, then algo_gae or
 * algo_returns_discounted): scores [S] host (uploaded), old_logp, ref_logp
 * (NULL: old_logp, no KL) and for GAE old_values from d; writes d->adv (GAE,
 * un-whitened) and d->returns, and *kl_sum (kl_seq_mean_sum; one download). */
int rl_device_token_advantages(RlDeviceBatch *d, const double *scores, const OpsAdvantage *cfg,
                               double *kl_sum, PonderError *err);

/* Local moments of x (one of d's [S,Tc] arrays) over mask-1 tokens (one
 * download of 3 doubles); an error when they are not finite (a NaN or
 * infinite input, which the host's algo_moments_tokens rejects). */
int rl_device_moments(RlDeviceBatch *d, const float *x, AlgoMoments *out, PonderError *err);
/* out = whitened x with the given (global) moments, as algo_whiten_apply. */
int rl_device_whiten(RlDeviceBatch *d, float **out, const float *x, const AlgoMoments *m,
                     PonderError *err);

/* One policy mini-batch: forward of mb (rows r0 .. r0 + mb->B of the
 * rollout), the policy loss pc over those rows (rows: the host view of their
 * completion mask, for D and the shape), backward into model_grads. *res as
 * algo_policy_loss fills it. use_old: take the uploaded old_logp (else old =
 * logp detached). mismatch (may be NULL; needs sample_logp): max |logp -
 * sampler logp| over mask-1 tokens. */
int rl_device_policy_minibatch(Model *policy, RlDeviceBatch *d, const ModelBatch *mb, int64_t r0,
                               const AlgoBatch *rows, const AlgoPolicyConfig *pc, int use_old,
                               AlgoPolicyResult *res, double *mismatch, PonderError *err);

/* One critic mini-batch: forward, the value loss vc on the uploaded returns
 * and old values, backward of the value head into model_grads. */
int rl_device_value_minibatch(Model *critic, RlDeviceBatch *d, const ModelBatch *mb, int64_t r0,
                              const AlgoBatch *rows, const AlgoValueConfig *vc,
                              AlgoValueResult *res, PonderError *err);

#endif
