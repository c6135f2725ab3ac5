/* algos/loss_token.h — the per-token arithmetic of the policy and value
 * losses (algos/loss.h, METHODS.md 0 and 1.2-1.5): the clipped surrogate with
 * dual clip, the log-ratio clamp, the KL estimators and the clipped value
 * error, each with its derivative under torch autograd's conventions at ties.
 *
 * One source for every place that evaluates them: the host losses
 * (algos/loss.c, algos/kl.c, through algos/loss_core.h) and the CUDA loss
 * kernels (model/cuda/ops_cuda.cu compiles this file with ALGO_TOKEN_FN
 * defined as __host__ __device__). So the formulas and tie rules cannot drift
 * between the host and the device path. Depends on <math.h> only and uses no
 * C-only syntax, so nvcc compiles it unchanged. All arithmetic in double. */
#ifndef PONDER_ALGOS_LOSS_TOKEN_H
#define PONDER_ALGOS_LOSS_TOKEN_H

#include <math.h>   /* exp */
#include <stdint.h> /* int64_t */

#ifndef ALGO_TOKEN_FN
#define ALGO_TOKEN_FN static inline
#endif

/* AlgoKlEstimator's values (algos/kl.h), repeated here for the device. */
#define ALGO_TOKEN_KL_K1 0
#define ALGO_TOKEN_KL_K2 1
#define ALGO_TOKEN_KL_K3 2
/* verl kl_penalty's stability clamps for k3 (METHODS.md 0). */
#define ALGO_TOKEN_KL_DELTA_CLAMP 20.0
#define ALGO_TOKEN_KL_VALUE_CLAMP 10.0

/* torch's gradient share of branch a in max(a, b) / min(a, b): ties split evenly. */
ALGO_TOKEN_FN double algo_token_max_share(double a, double b) {
    return a > b ? 1.0 : (a == b ? 0.5 : 0.0);
}
ALGO_TOKEN_FN double algo_token_min_share(double a, double b) {
    return a < b ? 1.0 : (a == b ? 0.5 : 0.0);
}

/* Loss weight of a mask-1 token of a row with n_i tokens: d agg / d x
 * (loss.h table): grpo 1 / (max(1, n_i) D), every other type 1 / D. */
ALGO_TOKEN_FN double algo_token_row_weight(int grpo, double denom, int64_t n_i) {
    if (grpo) return 1.0 / ((n_i > 0 ? (double)n_i : 1.0) * denom);
    return 1.0 / denom;
}

/* The clipped surrogate of one token: value, d value / d rho, and its flags
 * (TRL is_low_clipped / is_high_clipped, verl pg_clipfrac_lower). */
typedef struct AlgoPgToken {
    double value, drho;
    int low, high, dual;
} AlgoPgToken;

ALGO_TOKEN_FN AlgoPgToken algo_token_pg(double epsilon_low, double epsilon_high,
                                        double dual_clip_c, double rho, double a) {
    double lo = 1.0 - epsilon_low, hi = 1.0 + epsilon_high;
    double clipped = rho < lo ? lo : (rho > hi ? hi : rho);
    double inside = (rho >= lo && rho <= hi) ? 1.0 : 0.0; /* clamp's gradient */
    double pg1 = -a * rho, pg2 = -a * clipped;
    double s1 = algo_token_max_share(pg1, pg2);
    AlgoPgToken p;
    p.value = pg1 > pg2 ? pg1 : pg2;
    p.drho = s1 * -a + (1.0 - s1) * -a * inside;
    p.low = rho < lo && a < 0.0;            /* TRL is_low_clipped */
    p.high = rho > hi && a > 0.0;           /* TRL is_high_clipped */
    p.dual = 0;
    if (dual_clip_c > 0.0 && a < 0.0) { /* verl dual clip: bound the loss at -A c */
        double pg3 = -a * dual_clip_c;
        p.dual = p.value > pg3;
        p.drho *= algo_token_min_share(p.value, pg3);
        if (pg3 < p.value) p.value = pg3;
    }
    return p;
}

/* Clamped log-ratio and whether the gradient passes the clamp (0 = no clamp;
 * torch.clamp passes it on the closed interval). */
ALGO_TOKEN_FN double algo_token_clamp_log_ratio(double lr, double clamp, double *pass) {
    *pass = 1.0;
    if (clamp > 0.0 && (lr < -clamp || lr > clamp)) {
        *pass = 0.0;
        return lr < 0.0 ? -clamp : clamp;
    }
    return lr;
}

/* Schulman's estimators (algos/kl.h algo_kl_token): value, and d/d logp in
 * *dkl_dlogp when it is not NULL. Unknown estimators count as k3. */
ALGO_TOKEN_FN double algo_token_kl(int est, int clamp, double logp, double ref,
                                   double *dkl_dlogp) {
    double diff = logp - ref, value, grad;
    if (est == ALGO_TOKEN_KL_K1) {
        value = diff;
        grad = 1.0;
    } else if (est == ALGO_TOKEN_KL_K2) {
        value = 0.5 * diff * diff;
        grad = diff;
    } else {
        double d = ref - logp, dd_dlogp = -1.0;
        if (clamp && (d < -ALGO_TOKEN_KL_DELTA_CLAMP || d > ALGO_TOKEN_KL_DELTA_CLAMP)) {
            d = d < 0.0 ? -ALGO_TOKEN_KL_DELTA_CLAMP : ALGO_TOKEN_KL_DELTA_CLAMP;
            dd_dlogp = 0.0; /* torch.clamp passes no gradient outside its interval */
        }
        double e = exp(d);
        value = e - d - 1.0;
        grad = (e - 1.0) * dd_dlogp;
        if (clamp && (value < -ALGO_TOKEN_KL_VALUE_CLAMP || value > ALGO_TOKEN_KL_VALUE_CLAMP)) {
            value = value < 0.0 ? -ALGO_TOKEN_KL_VALUE_CLAMP : ALGO_TOKEN_KL_VALUE_CLAMP;
            grad = 0.0;
        }
    }
    if (dkl_dlogp) *dkl_dlogp = grad;
    return value;
}

/* One token's max((V - R)^2, (Vc - R)^2) and its derivative in V; *clipped is
 * set when the clipped error is strictly larger (verl vf_clipfrac). */
ALGO_TOKEN_FN double algo_token_value(double v, double r, double old, double eps, int clip,
                                      double *dv, int *clipped) {
    double e1 = v - r, l1 = e1 * e1;
    *dv = 2.0 * e1;
    *clipped = 0;
    if (!clip) return l1;
    /* Vc = V_old + clip(V - V_old, -eps, eps), as verl clip_by_value */
    double lo = old - eps, hi = old + eps;
    double vc = v < lo ? lo : (v > hi ? hi : v), inside = (v >= lo && v <= hi) ? 1.0 : 0.0;
    double e2 = vc - r, l2 = e2 * e2, s1 = algo_token_max_share(l1, l2);
    *dv = s1 * 2.0 * e1 + (1.0 - s1) * 2.0 * e2 * inside;
    *clipped = l2 > l1;
    return l1 > l2 ? l1 : l2;
}

#endif
