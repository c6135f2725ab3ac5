/* algos/batch.h — the token layout every algos/ function shares, and the
 * masked moments that make batch-level normalisers injectable.
 *
 * A batch holds n_seq completions padded to max_len tokens. Every per-token
 * array is float [n_seq, max_len], row-major, aligned with the model's per-token
 * outputs (model/model.h): position t of row i holds the quantity for the t-th
 * completion token of sample i (its logp, entropy, value, advantage...). mask
 * is 1 where a token counts (a completion token up to and including EOS) and 0
 * elsewhere (padding, masked-out tool/observation tokens). Only 0 and 1 are
 * accepted. Values at mask-0 positions are never read into a result, so they
 * may hold anything (even NaN); outputs are written as 0 there.
 *
 * Per-token arrays are float because the model produces and consumes float;
 * all arithmetic runs in double, and scalars (rewards, losses, normalisers,
 * metrics) are double. */
#ifndef PONDER_ALGOS_BATCH_H
#define PONDER_ALGOS_BATCH_H

#include <stdint.h> /* int64_t */

#include "util/error.h"

typedef struct AlgoBatch {
    int64_t n_seq;     /* S: sequences (samples) */
    int64_t max_len;   /* T: padded completion length, the row stride */
    const float *mask; /* [S, T], each 0 or 1 */
} AlgoBatch;

/* Checks sizes (S >= 1, T >= 1), that mask is present and holds only 0/1. */
int algo_batch_check(const AlgoBatch *b, PonderError *err);

/* Fails when a mask-1 entry of x is NaN or infinite; name goes in the message. */
int algo_check_tokens_finite(const AlgoBatch *b, const float *x, const char *name,
                             PonderError *err);
/* Fails when x is NULL or one of its n values is NaN or infinite. */
int algo_check_values_finite(int64_t n, const double *x, const char *name, PonderError *err);

/* Number of mask-1 tokens in the batch and in row i. */
int64_t algo_batch_tokens(const AlgoBatch *b);
int64_t algo_row_tokens(const AlgoBatch *b, int64_t i);

/* ------------------------------------------------------------- moments ---
 * Whitening and TRL's batch-level std need the mean and variance of a whole
 * (possibly distributed) batch. They are computed in three steps so a
 * distributed caller can reduce in between:
 *     AlgoMoments m = local moments;      (algo_moments_tokens / _values)
 *     MPI_Allreduce(&m, 3 doubles, SUM);  (or algo_moments_add locally)
 *     apply with the global m.            (algo_whiten_apply, algo_adv_grpo)
 * The three fields are plain sums, so element-wise addition combines them.
 * Variance is sum_sq/n - mean^2 (clamped at 0): exact enough in double unless
 * var/mean^2 < ~1e-10, far from the advantages and returns whitened here. */
typedef struct AlgoMoments {
    double count;  /* number of values */
    double sum;    /* sum of values */
    double sum_sq; /* sum of squared values */
} AlgoMoments;

/* Moments of x[i,t] over mask-1 tokens. Fails on a non-finite counted value. */
int algo_moments_tokens(const AlgoBatch *b, const float *x, AlgoMoments *out, PonderError *err);
/* Moments of n doubles (per-sample rewards). Fails on a non-finite value. */
int algo_moments_values(int64_t n, const double *x, AlgoMoments *out, PonderError *err);
/* a += b. */
void algo_moments_add(AlgoMoments *a, const AlgoMoments *b);
/* Mean and variance; unbiased = 1 applies Bessel's n/(n-1). Fails when
 * count < 1, or count < 2 with unbiased (verl masked_var raises there too). */
int algo_moments_stats(const AlgoMoments *m, int unbiased, double *mean, double *var,
                       PonderError *err);

/* verl masked_whiten (METHODS.md 1.5, 1.6): out = (x - mean) * rsqrt(var + 1e-8)
 * with the masked, Bessel-corrected variance of the moments m (global or
 * local), written at mask-1 tokens; 0 at mask-0 tokens. out may equal x. */
#define ALGO_WHITEN_EPS 1e-8
int algo_whiten_apply(const AlgoBatch *b, const float *x, const AlgoMoments *m, float *out,
                      PonderError *err);
/* Local convenience: moments of x over this batch, then apply. */
int algo_whiten(const AlgoBatch *b, const float *x, float *out, PonderError *err);

#endif
