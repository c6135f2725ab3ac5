/* algos/loss.h — the policy loss (clipped surrogate, KL, entropy), the value
 * loss and the Bradley–Terry loss, each with its per-token gradient
 * (METHODS.md 1.1–1.5).
 *
 * The model maps tokens to per-token logp / entropy / value and back-propagates
 * per-token gradients of those (model_backward). These functions take the
 * per-token arrays ([S,T], layout in batch.h) and return the loss value and
 * d(loss)/d(logp), d(loss)/d(entropy), d(loss)/d(value) per token: exactly
 * what model_backward takes. Gradients are written at every position (0 at
 * mask-0 tokens); the caller passes them on unchanged. */
#ifndef PONDER_ALGOS_LOSS_H
#define PONDER_ALGOS_LOSS_H

#include "algos/batch.h"
#include "algos/kl.h"

/* ---------------------------------------------------------- aggregation ---
 * TRL loss_type (METHODS.md 1.2 table), for a per-token matrix x:
 *   grpo   : (1/D) sum_i sum_t m x / max(1, n_i)     D = S        (seq mean of token means)
 *   bnpo   : (1/D) sum_{i,t} m x                     D = max(1, sum m)   (local token mean)
 *   dr_grpo: (1/D) sum_{i,t} m x                     D = S * max_completion_length
 *   dapo   : (1/D) sum_{i,t} m x                     D = injected normaliser
 * n_i = sum_t m[i,t]. verl's names: seq-mean-token-mean = grpo, token-mean =
 * bnpo (METHODS.md 1.3, 1.4); verl's seq-mean-token-sum-norm is NOT dr_grpo (it
 * does not divide by S).
 * normalizer > 0 replaces D for any type; this is how a distributed or
 * micro-batched caller makes the denominator global:
 *   dapo: TRL uses D = N_tok / num_processes, N_tok = active tokens over all
 *         processes and the whole generation batch (then gradients averaged
 *         over processes). dapo requires normalizer > 0 unless the local batch
 *         is the whole batch: normalizer 0 falls back to max(1, local sum m).
 *   grpo / dr_grpo: pass the global sequence count (times L for dr_grpo) to
 *         average over sequences of several micro-batches.
 * TRL additionally divides grpo/bnpo/dr_grpo by grad_accum_steps; that is the
 * caller's scaling, not done here. */
typedef enum {
    ALGO_LOSS_GRPO = 0,
    ALGO_LOSS_BNPO = 1,
    ALGO_LOSS_DR_GRPO = 2,
    ALGO_LOSS_DAPO = 3,
} AlgoLossType;

typedef struct AlgoAgg {
    AlgoLossType type;
    int64_t max_completion_length; /* dr_grpo: TRL's constant L (required > 0 there) */
    double normalizer;             /* > 0: overrides D; 0: the default above */
} AlgoAgg;

const char *algo_loss_type_name(AlgoLossType t);
int algo_loss_type_parse(const char *name, AlgoLossType *out, PonderError *err);

/* D of the table above for this batch (the normalizer when > 0). A caller
 * that hands the loss to a backend op (model/ops.h policy_loss) resolves D
 * with this, as the host losses do. */
double algo_agg_denominator(const AlgoBatch *b, const AlgoAgg *agg);

/* loss = agg(x); dx (may be NULL) = d loss / d x[i,t] (the aggregation weights).
 * Also useful for any per-token loss (SFT cross-entropy, entropy). */
int algo_agg_loss(const AlgoBatch *b, const AlgoAgg *agg, const float *x, double *loss, float *dx,
                  PonderError *err);

/* --------------------------------------------------------- policy loss ---
 * Per token, with A the advantage and rho the importance ratio
 * (METHODS.md 1.2 and 1.5, verl compute_policy_loss_vanilla):
 *   log_ratio = clamp(logp - old, -C, C)   (C = log_ratio_clamp, verl 20; 0 = none as TRL)
 *   token level   : rho = exp(log_ratio)
 *   sequence level: rho_i = exp(clamp(sum_t m (logp - old) / max(1, n_i), -C, C))  (GSPO as TRL)
 *   pg1 = -A rho;  pg2 = -A clip(rho, 1 - eps_low, 1 + eps_high);  pg = max(pg1, pg2)
 *   dual clip (c > 1), A < 0 only: pg = min(pg, -A c)          (verl clip_ratio_c)
 *   l[i,t] = pg + kl.coef * KL(logp, ref) - entropy_coef * H
 *   loss = agg(l)  =  agg(pg) + kl.coef * agg(KL) - entropy_coef * agg(H)
 * Gradients follow torch autograd exactly, including its conventions at ties
 * (max/min split the gradient evenly between equal branches; clamp passes it
 * on its closed interval), so on-policy rho = 1 gives d pg / d rho = -A.
 * Sequence level: every token of row i sees rho_i, so
 *   d loss / d logp[i,t] = m[i,t] / n_i * rho_i * sum_t' w[i,t'] d pg[i,t'] / d rho
 * with w the aggregation weights; with loss_type grpo this is GSPO's gradient
 * (1/S)(1/|y_i|) rho_i f'(rho_i) per token (GSPO paper, TRL
 * importance_sampling_level="sequence").
 * old_logp NULL means old = logp detached (one update per rollout): rho = 1,
 * gradient still flows (METHODS.md 0). */
typedef enum {
    ALGO_RATIO_TOKEN = 0,
    ALGO_RATIO_SEQUENCE = 1,
} AlgoRatioLevel;

typedef struct AlgoPolicyConfig {
    double epsilon_low;  /* TRL epsilon, verl clip_ratio_low; >= 0, < 1 */
    double epsilon_high; /* clip-higher (DAPO 0.28); >= 0 */
    double dual_clip_c;  /* 0 = off; else > 1 (verl clip_ratio_c 3.0; DAPO recipe 10) */
    AlgoRatioLevel ratio_level;
    double log_ratio_clamp; /* C above; 0 = no clamp */
    AlgoAgg agg;
    AlgoKl kl;           /* KL to the reference in the loss; kl.coef 0 = off */
    double entropy_coef; /* entropy bonus; 0 = off (verl default) */
} AlgoPolicyConfig;

/* TRL HEAD defaults (METHODS.md 1.2): epsilon 0.2 / 0.2, token ratio, loss_type
 * dapo (normalizer 0 = local tokens), no KL (k3 estimator selected, coef 0), no
 * entropy bonus, no dual clip; plus verl's log-ratio clamp 20. */
AlgoPolicyConfig algo_policy_config_default(void);
int algo_policy_config_check(const AlgoPolicyConfig *cfg, PonderError *err);

typedef struct AlgoPolicyInputs {
    const float *logp;       /* [S,T] current policy: the differentiated input */
    const float *old_logp;   /* [S,T] the policy that sampled; NULL = logp detached */
    const float *ref_logp;   /* [S,T] frozen reference; required iff kl.coef != 0 */
    const float *advantages; /* [S,T] */
    const float *entropy;    /* [S,T]; required iff entropy_coef != 0, else optional (metric) */
} AlgoPolicyInputs;

/* Loss parts and metrics. Fractions and means are over mask-1 tokens of this
 * batch (0 when it has none); `tokens` is their count, so a caller reduces a
 * metric across ranks as sum(metric * tokens) / sum(tokens). At sequence level
 * each token counts with its row's ratio (TRL instead averages its clip
 * fractions over sequences there). */
typedef struct AlgoPolicyResult {
    double loss;         /* pg_loss + kl.coef * kl_loss - entropy_coef * entropy_loss */
    double pg_loss;      /* agg(pg) */
    double kl_loss;      /* agg(KL) (0 when kl.coef == 0) */
    double entropy_loss; /* agg(H) (0 without entropy) */
    double tokens;
    double clip_low_frac;  /* rho < 1 - eps_low and A < 0 (TRL low_clip) */
    double clip_high_frac; /* rho > 1 + eps_high and A > 0 (TRL high_clip) */
    double dual_clip_frac; /* A < 0 and max(pg1, pg2) > -A c (verl pg_clipfrac_lower) */
    double ratio_mean;     /* mean rho (sequence level: rho_i per token) */
    double kl_mean;        /* mean KL estimator to the reference (0 without ref_logp) */
    double approx_kl_old;  /* mean (old - logp) after the clamp (verl ppo_kl) */
    double entropy_mean;   /* mean H (0 without entropy) */
} AlgoPolicyResult;

/* dlogp [S,T] required; dentropy [S,T] required iff entropy_coef != 0 (else
 * may be NULL; written with zeros when given). */
int algo_policy_loss(const AlgoBatch *b, const AlgoPolicyConfig *cfg, const AlgoPolicyInputs *in,
                     AlgoPolicyResult *res, float *dlogp, float *dentropy, PonderError *err);

/* ----------------------------------------------------------- value loss ---
 * METHODS.md 1.5 (verl compute_value_loss, OpenRLHF ValueLoss):
 *   Vc = V_old + clip(V - V_old, -eps_v, eps_v)
 *   l  = max((V - R)^2, (Vc - R)^2);  loss = 0.5 * agg(l)
 * clip_range eps_v = 0.5 in both; clip_range 0 switches clipping off
 * (l = (V - R)^2, old_values may then be NULL). clip_frac: share of mask-1
 * tokens where the clipped error is strictly larger (verl vf_clipfrac).
 * returns R come from algo_gae (un-whitened). */
typedef struct AlgoValueConfig {
    double clip_range;
    AlgoAgg agg;
} AlgoValueConfig;

typedef struct AlgoValueResult {
    double loss;
    double clip_frac;
    double tokens;
    double value_mean; /* mean V over mask-1 tokens */
} AlgoValueResult;

int algo_value_loss(const AlgoBatch *b, const AlgoValueConfig *cfg, const float *values,
                    const float *old_values, const float *returns, AlgoValueResult *res,
                    float *dvalues, PonderError *err);

/* -------------------------------------------------------- Bradley–Terry ---
 * Reward-model pairs: loss = mean_k -log sigmoid(c_k - r_k) (computed as
 * softplus(r_k - c_k), stable for any margin), with
 *   d loss / d c_k = -sigmoid(r_k - c_k) / n,   d loss / d r_k = +sigmoid(r_k - c_k) / n.
 * accuracy: share of pairs with c_k > r_k; margin_mean: mean of c_k - r_k. */
typedef struct AlgoBtResult {
    double loss;
    double accuracy;
    double margin_mean;
} AlgoBtResult;

int algo_bt_loss(int64_t n, const float *chosen, const float *rejected, AlgoBtResult *res,
                 float *d_chosen, float *d_rejected, PonderError *err);

#endif
