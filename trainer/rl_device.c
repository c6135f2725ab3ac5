/* trainer/rl_device.c — the RL update's losses on the model's backend (see
 * rl_device.h): per-rollout uploads, and per mini-batch forward, gather,
 * loss op, scatter and backward without a per-token copy to the host. */
#include "trainer/rl_device.h"

#include <math.h>   /* isfinite, sqrt */
#include <string.h> /* memset */

#include "algos/loss_core.h" /* AlgoPolicySums, algo_core_policy_result */
#include "model/model_internal.h" /* Model's ops table */

int rl_device_policy_usable(const Model *m) {
    const ModelOps *o = m->ops;
    return o->device && o->policy_loss && o->masked_max_abs_diff;
}

int rl_device_value_usable(const Model *m) {
    const ModelOps *o = m->ops;
    return o->device && o->value_loss;
}

int rl_device_advantages_usable(const Model *m) {
    const ModelOps *o = m->ops;
    return o->device && o->token_advantages && o->masked_moments && o->whiten;
}

/* ------------------------------------------------------------- batch ---- */

void rl_device_batch_free(RlDeviceBatch *d) {
    if (!d->ops) return;
    float *bufs[] = {d->cmask,   d->adv,      d->old_logp, d->ref_logp, d->sample_logp,
                     d->returns, d->old_values, d->logp,   d->entropy,  d->values,
                     d->dlogp,   d->dentropy, d->dvalues,  d->full,     d->full_entropy};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) d->ops->free(bufs[i]);
    if (d->sums) d->ops->free(d->sums);
    if (d->scores) d->ops->free(d->scores);
    memset(d, 0, sizeof *d);
}

/* A backend copy of host[0..n) (NULL stays NULL); *ok cleared on failure. */
static float *upload_or_null(const ModelOps *o, const float *host, size_t n, int *ok) {
    if (!host) return NULL;
    float *p = o->alloc(n * sizeof(float));
    if (!p) {
        *ok = 0;
        return NULL;
    }
    o->upload(p, host, n * sizeof(float));
    return p;
}

int rl_device_batch_create(RlDeviceBatch *d, const ModelOps *ops, int64_t S, int64_t T,
                           int64_t Tc, int64_t Pmax, const RlDeviceInputs *in, PonderError *err) {
    memset(d, 0, sizeof *d);
    if (!in->cmask)
        return ponder_error(err, PONDER_ERR_CONFIG, "rl device batch: the completion mask is needed");
    d->ops = ops, d->S = S, d->T = T, d->Tc = Tc, d->Pmax = Pmax;
    const size_t n = (size_t)(S * Tc), full = (size_t)(S * T);
    int ok = 1;
    d->cmask = upload_or_null(ops, in->cmask, n, &ok);
    d->adv = upload_or_null(ops, in->adv, n, &ok);
    d->old_logp = upload_or_null(ops, in->old_logp, n, &ok);
    d->ref_logp = upload_or_null(ops, in->ref_logp, n, &ok);
    d->sample_logp = upload_or_null(ops, in->sample_logp, n, &ok);
    d->returns = upload_or_null(ops, in->returns, n, &ok);
    d->old_values = upload_or_null(ops, in->old_values, n, &ok);
    float **scratch[] = {&d->logp, &d->entropy, &d->values, &d->dlogp, &d->dentropy, &d->dvalues};
    for (size_t i = 0; i < sizeof scratch / sizeof scratch[0]; i++)
        ok = ok && (*scratch[i] = ops->alloc(n * sizeof(float))) != NULL;
    ok = ok && (d->full = ops->alloc(full * sizeof(float))) != NULL;
    ok = ok && (d->full_entropy = ops->alloc(full * sizeof(float))) != NULL;
    ok = ok && (d->sums = ops->alloc((OPS_POLICY_NSUMS + 1) * sizeof(double))) != NULL;
    if (ok) return PONDER_OK;
    rl_device_batch_free(d);
    return ponder_error(err, PONDER_ERR_NOMEM,
                        "out of %s memory for the RL update's per-token arrays ([%lld,%lld])",
                        ops->name, (long long)S, (long long)T);
}

int rl_device_upload(RlDeviceBatch *d, float **dst, const float *host, PonderError *err) {
    const size_t bytes = (size_t)(d->S * d->Tc) * sizeof(float);
    if (!*dst && !(*dst = d->ops->alloc(bytes)))
        return ponder_error(err, PONDER_ERR_NOMEM, "out of %s memory for a [%lld,%lld] array",
                            d->ops->name, (long long)d->S, (long long)d->Tc);
    d->ops->upload(*dst, host, bytes);
    return PONDER_OK;
}

/* ---------------------------------------------------- layout changes ---- */

static void copy_rows(const ModelOps *o, float *dst, int64_t dst_stride, const float *src,
                      int64_t src_stride, int64_t rows, int64_t cols) {
    if (o->copy_2d) {
        o->copy_2d(dst, dst_stride, src, src_stride, rows, cols);
        return;
    }
    for (int64_t r = 0; r < rows; r++)
        o->copy(dst + r * dst_stride, src + r * src_stride, (size_t)cols * sizeof(float));
}

/* Model array [rows,T] -> completion rows [r0, r0 + rows) of comp [S,Tc]. */
static void to_completion(const RlDeviceBatch *d, int64_t r0, int64_t rows, const float *full,
                          float *comp) {
    copy_rows(d->ops, comp + r0 * d->Tc, d->Tc, full + d->Pmax - 1, d->T, rows, d->Tc);
}

/* Completion rows -> d->full-shaped array [rows,T], zero outside them. */
static void to_model(const RlDeviceBatch *d, int64_t r0, int64_t rows, const float *comp,
                     float *full) {
    d->ops->zero(full, (size_t)(rows * d->T) * sizeof(float));
    copy_rows(d->ops, full + d->Pmax - 1, d->T, comp + r0 * d->Tc, d->Tc, rows, d->Tc);
}

static int check_rows(const RlDeviceBatch *d, const ModelBatch *mb, int64_t r0,
                      const AlgoBatch *rows, PonderError *err) {
    if (mb->T != d->T || rows->max_len != d->Tc || rows->n_seq != mb->B || r0 < 0 ||
        r0 + mb->B > d->S)
        return ponder_error(err, PONDER_ERR_SHAPE,
                            "rl device batch: rows [%lld, %lld) of a [%lld,%lld] batch (Tc %lld) "
                            "do not fit its [%lld,%lld] (Tc %lld)",
                            (long long)r0, (long long)(r0 + mb->B), (long long)mb->B,
                            (long long)mb->T, (long long)rows->max_len, (long long)d->S,
                            (long long)d->T, (long long)d->Tc);
    return PONDER_OK;
}

/* ----------------------------------------------------------- scoring ---- */

int rl_device_score_logp(Model *m, RlDeviceBatch *d, const ModelBatch *all, float **dst,
                         PonderError *err) {
    if (all->B != d->S || all->T != d->T)
        return ponder_error(err, PONDER_ERR_SHAPE,
                            "rl device batch: scoring a [%lld,%lld] batch, expected [%lld,%lld]",
                            (long long)all->B, (long long)all->T, (long long)d->S,
                            (long long)d->T);
    const size_t bytes = (size_t)(d->S * d->Tc) * sizeof(float);
    if (!*dst && !(*dst = d->ops->alloc(bytes)))
        return ponder_error(err, PONDER_ERR_NOMEM, "out of %s memory for scored log-probs",
                            d->ops->name);
    ModelOutputs out;
    int rc = model_forward_backend(m, all, 0, &out, err);
    if (rc == PONDER_OK) to_completion(d, 0, d->S, out.logp, *dst);
    return rc;
}

int rl_device_score_values(Model *critic, RlDeviceBatch *d, const ModelBatch *all, float **dst,
                           PonderError *err) {
    if (all->B != d->S || all->T != d->T)
        return ponder_error(err, PONDER_ERR_SHAPE, "rl device batch: scoring a [%lld,%lld] batch",
                            (long long)all->B, (long long)all->T);
    if (!*dst && !(*dst = d->ops->alloc((size_t)(d->S * d->Tc) * sizeof(float))))
        return ponder_error(err, PONDER_ERR_NOMEM, "out of %s memory for values", d->ops->name);
    ModelOutputs out;
    int rc = model_forward_backend(critic, all, 0, &out, err);
    if (rc == PONDER_OK && !out.values)
        rc = ponder_error(err, PONDER_ERR_CONFIG, "rl device batch: the critic has no scalar head");
    if (rc == PONDER_OK) to_completion(d, 0, d->S, out.values, *dst);
    return rc;
}

double rl_device_max_abs_diff(RlDeviceBatch *d, const float *a, const float *b) {
    double m = 0.0;
    d->ops->masked_max_abs_diff(d->sums, a, b, d->cmask, d->S * d->Tc);
    d->ops->download(&m, d->sums, sizeof m);
    return m;
}

/* -------------------------------------------------------- advantages ---- */

static float *ensure(RlDeviceBatch *d, float **p, int *ok) {
    if (!*p) *p = d->ops->alloc((size_t)(d->S * d->Tc) * sizeof(float));
    *ok = *ok && *p != NULL;
    return *p;
}

int rl_device_token_advantages(RlDeviceBatch *d, const double *scores, const OpsAdvantage *cfg,
                               double *kl_sum, PonderError *err) {
    const ModelOps *o = d->ops;
    const int gae = cfg->kind == OPS_ADV_GAE;
    if (!d->old_logp || (gae && !d->old_values))
        return ponder_error(err, PONDER_ERR_CONFIG,
                            "rl device batch: token advantages need old log-probs%s",
                            gae ? " and values" : "");
    int ok = 1;
    ensure(d, &d->returns, &ok);
    if (gae) ensure(d, &d->adv, &ok);
    if (ok && !d->scores) ok = (d->scores = o->alloc((size_t)d->S * sizeof(double))) != NULL;
    if (!ok) return ponder_error(err, PONDER_ERR_NOMEM, "out of %s memory for advantages", o->name);
    o->upload(d->scores, scores, (size_t)d->S * sizeof(double));
    o->token_advantages(gae ? d->adv : NULL, d->returns, d->sums, d->scores, d->old_logp,
                        d->ref_logp ? d->ref_logp : d->old_logp, gae ? d->old_values : NULL,
                        d->cmask, *cfg, d->S, d->Tc);
    o->download(kl_sum, d->sums, sizeof *kl_sum);
    return PONDER_OK;
}

int rl_device_moments(RlDeviceBatch *d, const float *x, AlgoMoments *out, PonderError *err) {
    double m[3];
    d->ops->masked_moments(d->sums, x, d->cmask, d->S * d->Tc);
    d->ops->download(m, d->sums, sizeof m);
    *out = (AlgoMoments){m[0], m[1], m[2]};
    if (!isfinite(m[1]) || !isfinite(m[2]))
        return ponder_error(err, PONDER_ERR_RUNTIME,
                            "algos: values to whiten on %s are not finite (sum %g, sum of squares "
                            "%g): a NaN or infinite advantage, return or value",
                            d->ops->name, m[1], m[2]);
    return PONDER_OK;
}

int rl_device_whiten(RlDeviceBatch *d, float **out, const float *x, const AlgoMoments *m,
                     PonderError *err) {
    double mean = 0.0, var = 0.0;
    int rc = algo_moments_stats(m, 1, &mean, &var, err); /* as algo_whiten_apply */
    if (rc) return ponder_error_prefix(err, "whitening: ");
    int ok = 1;
    ensure(d, out, &ok);
    if (!ok) return ponder_error(err, PONDER_ERR_NOMEM, "out of %s memory", d->ops->name);
    d->ops->whiten(*out, x, d->cmask, mean, 1.0 / sqrt(var + ALGO_WHITEN_EPS), d->S * d->Tc);
    return PONDER_OK;
}

/* ------------------------------------------------------------ policy ---- */

int rl_device_policy_minibatch(Model *policy, RlDeviceBatch *d, const ModelBatch *mb, int64_t r0,
                               const AlgoBatch *rows, const AlgoPolicyConfig *pc, int use_old,
                               AlgoPolicyResult *res, double *mismatch, PonderError *err) {
    const ModelOps *o = d->ops;
    int rc = check_rows(d, mb, r0, rows, err);
    if (!rc) rc = algo_policy_config_check(pc, err);
    if (!rc && pc->kl.coef != 0.0 && !d->ref_logp)
        rc = ponder_error(err, PONDER_ERR_CONFIG, "policy loss: KL coefficient %g needs ref_logp",
                          pc->kl.coef);
    if (!rc && (!d->adv || (use_old && !d->old_logp) || (mismatch && !d->sample_logp)))
        rc = ponder_error(err, PONDER_ERR_CONFIG,
                          "rl device batch: advantages, old or sampler log-probs were not uploaded");
    ModelOutputs out;
    if (!rc) rc = model_forward_backend(policy, mb, 1, &out, err);
    if (rc) return rc;
    const int64_t R = mb->B, off = r0 * d->Tc, n = R * d->Tc;
    const int dent = pc->entropy_coef != 0.0; /* as the host path: no entropy gradient at 0 */
    to_completion(d, r0, R, out.logp, d->logp);
    to_completion(d, r0, R, out.entropy, d->entropy);
    OpsPolicyLoss oc = rl_device_policy_cfg(pc, algo_agg_denominator(rows, &pc->agg));
    o->policy_loss(d->dlogp + off, dent ? d->dentropy + off : NULL, d->sums, d->logp + off,
                   d->entropy + off, use_old ? d->old_logp + off : NULL,
                   d->ref_logp ? d->ref_logp + off : NULL, d->adv + off, d->cmask + off, oc, R,
                   d->Tc);
    if (mismatch)
        o->masked_max_abs_diff(d->sums + OPS_POLICY_NSUMS, d->logp + off, d->sample_logp + off,
                               d->cmask + off, n);
    double s[OPS_POLICY_NSUMS + 1] = {0}; /* the mini-batch's only download */
    o->download(s, d->sums, (size_t)(OPS_POLICY_NSUMS + (mismatch ? 1 : 0)) * sizeof(double));
    AlgoPolicySums sums = {s[OPS_POLICY_PG],     s[OPS_POLICY_KL],     s[OPS_POLICY_ENT],
                           s[OPS_POLICY_TOKENS], s[OPS_POLICY_LOW],    s[OPS_POLICY_HIGH],
                           s[OPS_POLICY_DUAL],   s[OPS_POLICY_RATIO],  s[OPS_POLICY_KL_SUM],
                           s[OPS_POLICY_OLD_KL], s[OPS_POLICY_ENT_SUM]};
    /* the host path rejects non-finite per-token inputs; here they surface in the sums */
    for (int k = 0; k < OPS_POLICY_NSUMS; k++)
        if (!isfinite(s[k]))
            return ponder_error(err, PONDER_ERR_RUNTIME,
                                "policy loss on %s: a non-finite sum (%g, slot %d): a mask-1 "
                                "logp, entropy or input is NaN or infinite",
                                o->name, s[k], k);
    *res = algo_core_policy_result(&sums, pc);
    if (mismatch) *mismatch = s[OPS_POLICY_NSUMS];
    to_model(d, r0, R, d->dlogp, d->full);
    if (dent) to_model(d, r0, R, d->dentropy, d->full_entropy);
    return model_backward_backend(policy, d->full, dent ? d->full_entropy : NULL, NULL, err);
}

/* ------------------------------------------------------------- value ---- */

int rl_device_value_minibatch(Model *critic, RlDeviceBatch *d, const ModelBatch *mb, int64_t r0,
                              const AlgoBatch *rows, const AlgoValueConfig *vc,
                              AlgoValueResult *res, PonderError *err) {
    const ModelOps *o = d->ops;
    int rc = check_rows(d, mb, r0, rows, err);
    if (!rc && (!d->returns || (vc->clip_range > 0.0 && !d->old_values)))
        rc = ponder_error(err, PONDER_ERR_CONFIG,
                          "rl device batch: returns or old values were not uploaded");
    if (!rc && !(vc->clip_range >= 0.0 && isfinite(vc->clip_range)))
        rc = ponder_error(err, PONDER_ERR_CONFIG, "value loss: clip range %g must be >= 0 (0 = off)",
                          vc->clip_range);
    ModelOutputs out;
    if (!rc) rc = model_forward_backend(critic, mb, 0, &out, err);
    if (!rc && !out.values)
        rc = ponder_error(err, PONDER_ERR_CONFIG, "value loss: the critic has no scalar head");
    if (rc) return rc;
    const int64_t R = mb->B, off = r0 * d->Tc;
    to_completion(d, r0, R, out.values, d->values);
    OpsValueLoss oc = rl_device_value_cfg(vc, algo_agg_denominator(rows, &vc->agg));
    o->value_loss(d->dvalues + off, d->sums, d->values + off,
                  vc->clip_range > 0.0 ? d->old_values + off : NULL, d->returns + off,
                  d->cmask + off, oc, R, d->Tc);
    double s[OPS_VALUE_NSUMS]; /* the mini-batch's only download */
    o->download(s, d->sums, sizeof s);
    for (int k = 0; k < OPS_VALUE_NSUMS; k++)
        if (!isfinite(s[k]))
            return ponder_error(err, PONDER_ERR_RUNTIME,
                                "value loss on %s: a non-finite sum (%g, slot %d): a mask-1 value "
                                "or input is NaN or infinite",
                                o->name, s[k], k);
    AlgoValueSums sums = {s[OPS_VALUE_LOSS], s[OPS_VALUE_CLIPPED], s[OPS_VALUE_TOKENS],
                          s[OPS_VALUE_SUM]};
    *res = algo_core_value_result(&sums);
    /* dvalues is 0 at mask-0 tokens and to_model zeroes the rest: no masking needed */
    to_model(d, r0, R, d->dvalues, d->full);
    return model_backward_backend(critic, NULL, NULL, d->full, err);
}
