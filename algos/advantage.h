/* algos/advantage.h — advantage estimators (METHODS.md 1.2, 1.5, 1.6, 1.7).
 *
 * Outcome estimators (grpo, rloo, the group centring of reinforce_pp_baseline)
 * map one reward per sample to one advantage per sample (double [S]);
 * algo_broadcast_seq spreads it over the sample's mask-1 tokens. Token
 * estimators (reinforce_pp, gae) work on token rewards [S,T] (algo_token_rewards
 * in kl.h places the score on the last token and folds in the KL).
 *
 * Groups. group[i] is sample i's group (prompt) id. The samples of a group
 * must be contiguous (the rollout engine emits them so, and whole groups stay
 * on one rank); a group id that reappears after another group is an error.
 * Group sizes may differ (DAPO filtering, masking).
 *
 * Rewards must be finite: a "not applicable" reward is resolved by the caller
 * before this point (TRL gives such completions A = 0).
 *
 * Batch-level normalisers are injectable for distributed callers: every
 * whitening estimator has a phase-1 function producing the un-whitened values,
 * then algo_moments_tokens -> (all-reduce) -> algo_whiten_apply (batch.h). The
 * algo_adv_* "local" functions do all phases on one process's batch. */
#ifndef PONDER_ALGOS_ADVANTAGE_H
#define PONDER_ALGOS_ADVANTAGE_H

#include "algos/batch.h"

/* Checks group ids: present and contiguous. *n_groups (may be NULL) gets the count. */
int algo_groups_check(int64_t n, const int64_t *group, int64_t *n_groups, PonderError *err);

/* ---------------------------------------------------------------- GRPO ---
 * TRL GRPOTrainer (METHODS.md 1.2), with mu_g the group mean:
 *   group: A_i = (r_i - mu_g) / (sigma_g + std_eps)
 *   batch: A_i = (r_i - mu_g) / (sigma_batch + std_eps)   ("Lite PPO")
 *   none : A_i =  r_i - mu_g                              (Dr. GRPO, 1.3)
 * sigma is Bessel-corrected (n-1). For n = 1, where Bessel's formula is 0/0
 * (torch would give NaN), sigma is defined as 0, as METHODS.md 1.7 records for
 * TRL: a group of one has r - mu = 0, hence A = 0 under every scaling. TRL's
 * std_eps is 1e-4 (verl 1e-6, OpenRLHF 1e-9). batch: sigma_batch comes from
 * batch_moments (the rewards' moments over the whole generation batch, after
 * an all-reduce; algo_moments_values makes the local ones), or from the local
 * rewards when batch_moments is NULL. */
typedef enum {
    ALGO_SCALE_GROUP = 0,
    ALGO_SCALE_BATCH = 1,
    ALGO_SCALE_NONE = 2,
} AlgoScaleRewards;

#define ALGO_GRPO_STD_EPS 1e-4

int algo_adv_grpo(int64_t n, const double *rewards, const int64_t *group, AlgoScaleRewards scale,
                  double std_eps, const AlgoMoments *batch_moments, double *adv, PonderError *err);

/* Names "group", "batch", "none" (TRL's; also true/false = group/none). */
int algo_scale_rewards_parse(const char *name, AlgoScaleRewards *out, PonderError *err);

/* ---------------------------------------------------------------- RLOO ---
 * METHODS.md 1.6 (verl compute_rloo_outcome_advantage):
 *   A_i = r_i - mean_{j != i} r_j = G/(G-1) (r_i - mu_g)
 * computed as verl does: r_i*G/(G-1) - mu_g*G/(G-1). A group of one has no
 * leave-one-out baseline; verl then leaves A_i = r_i (baseline 0), and so do we. */
int algo_adv_rloo(int64_t n, const double *rewards, const int64_t *group, double *adv,
                  PonderError *err);

/* ------------------------------------------------- REINFORCE++-baseline ---
 * METHODS.md 1.6 (verl compute_reinforce_plus_plus_baseline_outcome_advantage):
 * phase 1: c_i = r_i - mu_g (a group of one: mu = 0, so c_i = r_i, as verl);
 * phase 2: broadcast c_i to row i's tokens and whiten over all mask-1 tokens of
 * the batch (verl masked_whiten, token-weighted: long rows weigh more).
 * With KL in the reward, verl's r_i is the row sum of the token rewards
 * (algo_seq_sums). */
int algo_adv_group_center(int64_t n, const double *rewards, const int64_t *group, double *centered,
                          PonderError *err);
/* Local: both phases on this batch. rewards [S], adv [S,T]. */
int algo_adv_rpp_baseline(const AlgoBatch *b, const double *rewards, const int64_t *group,
                          float *adv, PonderError *err);

/* --------------------------------------------------------- REINFORCE++ ---
 * METHODS.md 1.6 (verl compute_reinforce_plus_plus_outcome_advantage):
 * phase 1, returns backwards over t: G = r[t] + gamma*G; ret[t] = G; then G is
 * reset to 0 after a mask-0 position ("reset after EOS"). ret is written at
 * mask-1 tokens (0 elsewhere); token rewards at mask-0 positions are ignored.
 * phase 2: adv = whiten(ret) over all mask-1 tokens of the batch. */
int algo_returns_discounted(const AlgoBatch *b, const float *token_rewards, double gamma,
                            float *returns, PonderError *err);
/* Local: both phases. returns (may be NULL) receives phase 1's values. */
int algo_adv_rpp(const AlgoBatch *b, const float *token_rewards, double gamma, float *adv,
                 float *returns, PonderError *err);

/* ----------------------------------------------------------------- GAE ---
 * METHODS.md 1.5 (verl compute_gae_advantage_return), backwards over t with
 * nextvalue = lastgae = 0 at the end of the row:
 *   delta = r[t] + gamma*nextvalue - V[t];  gae_t = delta + gamma*lambda*lastgae
 *   at mask-1 t: nextvalue = V[t], lastgae = gae_t; at mask-0 t both carry over
 *   adv[t] = lastgae;  returns[t] = adv[t] + V[t]
 * so mask-0 tokens inside a row (observation tokens) are skipped: a token's
 * successor is the next mask-1 token, and after the row's last mask-1 token the
 * value is 0 (the episode ended). Outputs are written at mask-1 tokens (0
 * elsewhere); rewards and values at mask-0 positions are ignored.
 * Index convention: values[i,t] is the critic's value of the state BEFORE
 * completion token t, i.e. the value head read at the position whose logits
 * predict token t: the same [i,t] position as logp[i,t] in ponder's ModelBatch
 * (targets[b,t] is predicted at position t), verl's values[:, -L-1:-1].
 * phase 2 (algo_adv_gae): whiten adv over the batch; returns stay un-whitened. */
int algo_gae(const AlgoBatch *b, const float *token_rewards, const float *values, double gamma,
             double lambda, float *adv, float *returns, PonderError *err);
/* Local: algo_gae then whitening of adv over this batch. */
int algo_adv_gae(const AlgoBatch *b, const float *token_rewards, const float *values, double gamma,
                 double lambda, float *adv, float *returns, PonderError *err);

/* ------------------------------------------------------------- helpers --- */
/* out[i,t] = per_seq[i] at mask-1 tokens, 0 elsewhere. */
int algo_broadcast_seq(const AlgoBatch *b, const double *per_seq, float *out, PonderError *err);
/* out[i] = sum of x[i,t] over row i's mask-1 tokens (verl's sequence score). */
int algo_seq_sums(const AlgoBatch *b, const float *x, double *out, PonderError *err);

#endif
