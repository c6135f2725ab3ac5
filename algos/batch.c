/* algos/batch.c — token layout checks, masked moments and whitening. */
#include "algos/batch.h"

#include <math.h> /* isfinite, sqrt */

#include "algos/advantage_token.h" /* algo_token_whiten, shared with the device */

int algo_batch_check(const AlgoBatch *b, PonderError *err) {
    if (!b) return ponder_error(err, PONDER_ERR_CONFIG, "algos: batch is NULL");
    if (b->n_seq < 1 || b->max_len < 1)
        return ponder_error(err, PONDER_ERR_SHAPE,
                            "algos: batch is %lld sequences x %lld tokens; both must be >= 1",
                            (long long)b->n_seq, (long long)b->max_len);
    if (!b->mask) return ponder_error(err, PONDER_ERR_CONFIG, "algos: batch mask is NULL");
    int64_t n = b->n_seq * b->max_len;
    for (int64_t k = 0; k < n; k++) {
        float m = b->mask[k];
        if (m != 0.0f && m != 1.0f)
            return ponder_error(
                err, PONDER_ERR_CONFIG, "algos: mask[%lld][%lld] = %g; a mask holds only 0 and 1",
                (long long)(k / b->max_len), (long long)(k % b->max_len), (double)m);
    }
    return PONDER_OK;
}

int algo_check_tokens_finite(const AlgoBatch *b, const float *x, const char *name,
                             PonderError *err) {
    if (!x) return ponder_error(err, PONDER_ERR_CONFIG, "algos: %s is NULL", name);
    int64_t n = b->n_seq * b->max_len;
    for (int64_t k = 0; k < n; k++) {
        if (b->mask[k] != 0.0f && !isfinite(x[k]))
            return ponder_error(err, PONDER_ERR_RUNTIME, "algos: %s[%lld][%lld] = %g is not finite",
                                name, (long long)(k / b->max_len), (long long)(k % b->max_len),
                                (double)x[k]);
    }
    return PONDER_OK;
}

int algo_check_values_finite(int64_t n, const double *x, const char *name, PonderError *err) {
    if (!x) return ponder_error(err, PONDER_ERR_CONFIG, "algos: %s is NULL", name);
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(x[i]))
            return ponder_error(err, PONDER_ERR_RUNTIME,
                                "algos: %s[%lld] = %g is not finite (resolve not-applicable "
                                "rewards before computing advantages)",
                                name, (long long)i, x[i]);
    }
    return PONDER_OK;
}

int64_t algo_row_tokens(const AlgoBatch *b, int64_t i) {
    const float *m = b->mask + i * b->max_len;
    int64_t n = 0;
    for (int64_t t = 0; t < b->max_len; t++) n += m[t] != 0.0f;
    return n;
}

int64_t algo_batch_tokens(const AlgoBatch *b) {
    int64_t n = 0;
    for (int64_t i = 0; i < b->n_seq; i++) n += algo_row_tokens(b, i);
    return n;
}

/* ---------------------------------------------------------------- moments */

int algo_moments_tokens(const AlgoBatch *b, const float *x, AlgoMoments *out, PonderError *err) {
    int rc = algo_batch_check(b, err);
    if (!rc) rc = algo_check_tokens_finite(b, x, "values to whiten", err);
    if (rc) return rc;
    AlgoMoments m = {0.0, 0.0, 0.0};
    int64_t n = b->n_seq * b->max_len;
    for (int64_t k = 0; k < n; k++) {
        if (b->mask[k] == 0.0f) continue;
        double v = x[k];
        m.count += 1.0;
        m.sum += v;
        m.sum_sq += v * v;
    }
    *out = m;
    return PONDER_OK;
}

int algo_moments_values(int64_t n, const double *x, AlgoMoments *out, PonderError *err) {
    int rc = algo_check_values_finite(n, x, "values", err);
    if (rc) return rc;
    AlgoMoments m = {0.0, 0.0, 0.0};
    for (int64_t i = 0; i < n; i++) {
        m.count += 1.0;
        m.sum += x[i];
        m.sum_sq += x[i] * x[i];
    }
    *out = m;
    return PONDER_OK;
}

void algo_moments_add(AlgoMoments *a, const AlgoMoments *b) {
    a->count += b->count;
    a->sum += b->sum;
    a->sum_sq += b->sum_sq;
}

int algo_moments_stats(const AlgoMoments *m, int unbiased, double *mean, double *var,
                       PonderError *err) {
    double need = unbiased ? 2.0 : 1.0;
    if (!(m->count >= need))
        return ponder_error(err, PONDER_ERR_RUNTIME,
                            "%s variance of %g value(s) is undefined; need at least %g "
                            "(a larger batch, or fewer masked tokens)",
                            unbiased ? "an unbiased" : "a", m->count, need);
    double mu = m->sum / m->count;
    double v = m->sum_sq / m->count - mu * mu;
    if (v < 0.0) v = 0.0; /* rounding on nearly constant values */
    if (unbiased) v *= m->count / (m->count - 1.0);
    *mean = mu;
    *var = v;
    return PONDER_OK;
}

int algo_whiten_apply(const AlgoBatch *b, const float *x, const AlgoMoments *m, float *out,
                      PonderError *err) {
    int rc = algo_batch_check(b, err);
    if (!rc) rc = algo_check_tokens_finite(b, x, "values to whiten", err);
    if (rc) return rc;
    if (!m || !out)
        return ponder_error(err, PONDER_ERR_CONFIG, "algos: whitening moments or output is NULL");
    double mean = 0.0, var = 0.0;
    rc = algo_moments_stats(m, 1, &mean, &var, err); /* verl masked_var: unbiased */
    if (rc) {
        ponder_error_prefix(err, "whitening: ");
        return rc;
    }
    double scale = 1.0 / sqrt(var + ALGO_WHITEN_EPS);
    int64_t n = b->n_seq * b->max_len;
    for (int64_t k = 0; k < n; k++) out[k] = algo_token_whiten(b->mask[k], x[k], mean, scale);
    return PONDER_OK;
}

int algo_whiten(const AlgoBatch *b, const float *x, float *out, PonderError *err) {
    AlgoMoments m;
    int rc = algo_moments_tokens(b, x, &m, err);
    if (rc) return rc;
    return algo_whiten_apply(b, x, &m, out, err);
}
