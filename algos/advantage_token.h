/* algos/advantage_token.h — the per-row loops of the token-level advantages
 * (METHODS.md 0, 1.5, 1.6): token rewards with KL in the reward
 * (algo_token_rewards), GAE (algo_gae), discounted returns
 * (algo_returns_discounted), and the masked whitening step (algo_whiten_apply).
 *
 * One source for the host (algos/kl.c, algos/advantage.c, algos/batch.c) and
 * the CUDA kernels (model/cuda/ops_cuda.cu compiles it with ALGO_TOKEN_FN
 * defined as __host__ __device__, one thread per row), as algos/loss_token.h
 * is for the losses. A row is T values of a [S,T] array (m: its mask, 0/1).
 * The functions assume checked inputs (the algos/ wrappers check them). */
#ifndef PONDER_ALGOS_ADVANTAGE_TOKEN_H
#define PONDER_ALGOS_ADVANTAGE_TOKEN_H

#include "algos/loss_token.h" /* ALGO_TOKEN_FN, algo_token_kl */

/* Token rewards of one row: score on its last mask-1 token, minus coef * KL
 * (estimator est, verl clamps when clamp) between old and ref at mask-1
 * tokens when use_kl; 0 elsewhere. Returns the row's KL mean (sum over mask-1
 * tokens / their count); *has_tokens says whether the row has any. */
ALGO_TOKEN_FN double algo_token_rewards_row(const float *m, int64_t T, double score,
                                            const float *old_logp, const float *ref_logp,
                                            int use_kl, int est, int clamp, double coef,
                                            float *rewards, int *has_tokens) {
    int64_t last = -1, n = 0;
    for (int64_t t = 0; t < T; t++)
        if (m[t] != 0.0f) last = t, n++;
    double kl_row = 0.0;
    for (int64_t t = 0; t < T; t++) {
        double r = 0.0;
        if (m[t] != 0.0f && use_kl) {
            double k = algo_token_kl(est, clamp, old_logp[t], ref_logp[t], 0);
            kl_row += k;
            r = -coef * k;
        }
        /* the score sits on the last valid token (verl, OpenRLHF; METHODS.md 0) */
        if (t == last) r += score;
        rewards[t] = (float)r;
    }
    *has_tokens = n > 0;
    return n > 0 ? kl_row / (double)n : 0.0;
}

/* GAE of one row, backwards from nextvalue = lastgae = 0; mask-0 tokens get
 * 0 and carry both over. rewards may be the same array as returns: each
 * reward is read before its position's return is written. */
ALGO_TOKEN_FN void algo_token_gae_row(const float *m, int64_t T, const float *rewards,
                                      const float *values, double gamma, double lambda,
                                      float *adv, float *returns) {
    double next_value = 0.0, last_gae = 0.0; /* terminal state: value 0 */
    for (int64_t t = T - 1; t >= 0; t--) {
        if (m[t] == 0.0f) { /* skipped: value and advantage carry over */
            adv[t] = returns[t] = 0.0f;
            continue;
        }
        double v = values[t];
        double delta = rewards[t] + gamma * next_value - v;
        last_gae = delta + gamma * lambda * last_gae;
        next_value = v;
        adv[t] = (float)last_gae;
        returns[t] = (float)(last_gae + v);
    }
}

/* Discounted returns of one row; a mask-0 token resets the sum (verl
 * multiplies by the mask). rewards may be the same array as returns. */
ALGO_TOKEN_FN void algo_token_returns_row(const float *m, int64_t T, const float *rewards,
                                          double gamma, float *returns) {
    double running = 0.0;
    for (int64_t t = T - 1; t >= 0; t--) {
        if (m[t] == 0.0f) { /* reset after EOS (verl multiplies by the mask) */
            running = 0.0;
            returns[t] = 0.0f;
            continue;
        }
        running = rewards[t] + gamma * running;
        returns[t] = (float)running;
    }
}

/* One whitened value: (x - mean) * scale at a mask-1 token, else 0. */
ALGO_TOKEN_FN float algo_token_whiten(float m, float x, double mean, double scale) {
    return m != 0.0f ? (float)((x - mean) * scale) : 0.0f;
}

#endif
