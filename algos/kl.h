/* algos/kl.h — KL to the frozen reference: the per-token estimators (used in
 * the loss and in the reward), KL folded into token rewards, and the fixed /
 * adaptive KL coefficient controllers (METHODS.md 0 and 1.5). */
#ifndef PONDER_ALGOS_KL_H
#define PONDER_ALGOS_KL_H

#include "algos/batch.h"

/* Schulman's estimators of KL(pi || ref) per token, METHODS.md 0,
 * with d = ref - logp:
 *   k1 = logp - ref                       d/dlogp = 1
 *   k2 = 0.5 (logp - ref)^2               d/dlogp = logp - ref
 *   k3 = exp(d) - d - 1   ("low_var_kl")  d/dlogp = 1 - exp(d) */
typedef enum {
    ALGO_KL_K1 = 0,
    ALGO_KL_K2 = 1,
    ALGO_KL_K3 = 2,
} AlgoKlEstimator;

typedef struct AlgoKl {
    AlgoKlEstimator estimator;
    double coef; /* beta; 0 switches the term off */
    /* verl kl_penalty clamps for k3 (METHODS.md 0): d to [-20, 20] before exp and
     * the k3 value to [-10, 10]; the gradient is 0 where a clamp is active (as
     * torch.clamp's). TRL clamps nothing (clamp = 0). k1 and k2 are never
     * clamped, as in verl. */
    int clamp;
} AlgoKl;

/* One token's estimate; *dkl_dlogp (may be NULL) receives its derivative with
 * respect to logp (ref is frozen). */
double algo_kl_token(AlgoKlEstimator est, int clamp, double logp, double ref, double *dkl_dlogp);

/* Name ("k1", "k2", "k3") and parse ("k1".."k3", also verl's "kl", "mse",
 * "low_var_kl"); parse fails with PONDER_ERR_CONFIG on anything else. */
const char *algo_kl_name(AlgoKlEstimator est);
int algo_kl_parse(const char *name, AlgoKlEstimator *out, PonderError *err);

/* KL in the reward (METHODS.md 1.5, verl apply_kl_penalty; used by
 * reinforce_pp and gae):
 *     rewards[i,t] = scores[i] * [t = last mask-1 token of row i] - coef * KL_t
 * with KL_t the estimator between the rollout's old_logp and ref_logp, at mask-1
 * tokens (0 elsewhere). old_logp/ref_logp may be NULL only when kl->coef == 0 (or
 * kl is NULL): then the scores are only placed. A row with no mask-1 token gets
 * no reward at all (there is no token to credit).
 * kl_seq_mean_sum (may be NULL) receives sum_i (masked mean of KL_t over row i),
 * rows without tokens adding 0: verl's current_kl for the adaptive controller is
 * (global) kl_seq_mean_sum / (global) n_seq. It is computed even when coef == 0
 * if the logps are given. */
int algo_token_rewards(const AlgoBatch *b, const double *scores, const float *old_logp,
                       const float *ref_logp, const AlgoKl *kl, float *rewards,
                       double *kl_seq_mean_sum, PonderError *err);

/* KL coefficient controllers (METHODS.md 1.5; verl FixedKLController,
 * AdaptiveKLController after Ziegler et al.). Adaptive update:
 *     value *= 1 + clip(current_kl / target - 1, -0.2, 0.2) * n_steps / horizon
 * where verl passes n_steps = the batch size in sequences. Defaults in verl:
 * kl_coef 0.001, target 0.1, horizon 10000. */
typedef struct AlgoKlController {
    int adaptive;   /* 0 = fixed */
    double value;   /* the current coefficient */
    double target;  /* adaptive only, > 0 */
    double horizon; /* adaptive only, > 0 */
} AlgoKlController;

int algo_kl_ctl_fixed(AlgoKlController *c, double coef, PonderError *err);
int algo_kl_ctl_adaptive(AlgoKlController *c, double init_coef, double target, double horizon,
                         PonderError *err);
/* No-op for a fixed controller. Fails on non-finite current_kl or n_steps < 0. */
int algo_kl_ctl_update(AlgoKlController *c, double current_kl, int64_t n_steps, PonderError *err);

#endif
