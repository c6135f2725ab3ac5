/* rollout/sampler.c — greedy, temperature, top-k, top-p, min-p (see sampler.h). */
#include "rollout/sampler.h"

#include <math.h>   /* expf, logf */
#include <stdlib.h> /* malloc, free, qsort */
#include <string.h> /* memset */

SamplingParams sampling_greedy(int64_t max_new_tokens) {
    SamplingParams p = {0.0f, 0, 1.0f, 0.0f, max_new_tokens};
    return p;
}

int sampling_validate(const SamplingParams *p, PonderError *err) {
    if (!(p->temperature >= 0.0f))
        return ponder_error(err, PONDER_ERR_CONFIG, "temperature: must be >= 0, found %g",
                            (double)p->temperature);
    if (p->top_k < 0)
        return ponder_error(err, PONDER_ERR_CONFIG, "top_k: must be >= 0, found %lld",
                            (long long)p->top_k);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return ponder_error(err, PONDER_ERR_CONFIG, "top_p: must be in (0, 1], found %g",
                            (double)p->top_p);
    if (!(p->min_p >= 0.0f && p->min_p < 1.0f))
        return ponder_error(err, PONDER_ERR_CONFIG, "min_p: must be in [0, 1), found %g",
                            (double)p->min_p);
    if (p->max_new_tokens <= 0)
        return ponder_error(err, PONDER_ERR_CONFIG, "max_new_tokens: must be > 0, found %lld",
                            (long long)p->max_new_tokens);
    return PONDER_OK;
}

int sampler_init(Sampler *s, int64_t V, PonderError *err) {
    s->V = V;
    s->probs = malloc((size_t)V * sizeof(float));
    s->cand = malloc((size_t)V * sizeof(SamplerCandidate));
    if (!s->probs || !s->cand) {
        sampler_free(s);
        return ponder_error(err, PONDER_ERR_NOMEM, "out of memory for the sampler");
    }
    return PONDER_OK;
}

void sampler_free(Sampler *s) {
    free(s->probs);
    free(s->cand);
    s->probs = NULL;
    s->cand = NULL;
}

static int32_t argmax(const float *x, int64_t n) {
    int32_t best = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = (int32_t)i;
    return best;
}

/* probs = softmax(logits / T); returns log of the normaliser (in scaled units). */
static float scaled_softmax(float *probs, const float *logits, int64_t V, float T) {
    float mx = logits[0];
    for (int64_t i = 1; i < V; i++) mx = logits[i] > mx ? logits[i] : mx;
    double sum = 0.0;
    for (int64_t i = 0; i < V; i++) {
        probs[i] = expf((logits[i] - mx) / T);
        sum += probs[i];
    }
    for (int64_t i = 0; i < V; i++) probs[i] = (float)(probs[i] / sum);
    return mx / T + (float)log(sum);
}

static int cmp_prob_desc(const void *a, const void *b) {
    const SamplerCandidate *x = a, *y = b;
    if (x->p != y->p) return x->p < y->p ? 1 : -1;
    return x->id - y->id; /* ties: lower id first, deterministic */
}

/* Whether the params restrict the support at all (else no sort is needed). */
static int truncates(const Sampler *s, const SamplingParams *p) {
    return (p->top_k > 0 && p->top_k < s->V) || p->min_p > 0.0f || p->top_p < 1.0f;
}

/* Sorts the candidates by probability (descending) and truncates by top-k,
 * min-p and top-p; returns the number kept (s->cand[0..n)). */
static int64_t truncate_candidates(Sampler *s, const SamplingParams *p) {
    const int64_t V = s->V;
    for (int64_t i = 0; i < V; i++) s->cand[i] = (SamplerCandidate){s->probs[i], (int32_t)i};
    qsort(s->cand, (size_t)V, sizeof(SamplerCandidate), cmp_prob_desc);
    int64_t n = V;
    if (p->top_k > 0 && p->top_k < n) n = p->top_k;
    if (p->min_p > 0.0f) {
        float floor_p = p->min_p * s->cand[0].p;
        int64_t k = 1;
        while (k < n && s->cand[k].p >= floor_p) k++;
        n = k;
    }
    if (p->top_p < 1.0f) {
        double cum = 0.0;
        int64_t k = 0;
        while (k < n) {
            cum += s->cand[k].p;
            k++;
            if (cum >= p->top_p) break;
        }
        n = k;
    }
    return n;
}

/* Inverse-CDF draw over the whole vocabulary in id order: sampling without
 * top-k/top-p/min-p needs no sort (it cost more than the draw). */
static int32_t draw_full(const Sampler *s, Rng *rng) {
    double total = 0.0;
    for (int64_t i = 0; i < s->V; i++) total += s->probs[i];
    double u = rng_uniform_double(rng) * total, cum = 0.0;
    for (int64_t i = 0; i < s->V; i++) {
        cum += s->probs[i];
        if (u < cum) return (int32_t)i;
    }
    for (int64_t i = s->V - 1; i > 0; i--) /* rounding left u at the very top */
        if (s->probs[i] > 0.0f) return (int32_t)i;
    return 0;
}

int32_t sampler_pick(Sampler *s, const float *logits, const SamplingParams *p, Rng *rng,
                     float *logp) {
    const int64_t V = s->V;
    if (p->temperature <= 0.0f) {
        int32_t t = argmax(logits, V);
        if (logp) *logp = logits[t] - scaled_softmax(s->probs, logits, V, 1.0f);
        return t;
    }
    float log_norm = scaled_softmax(s->probs, logits, V, p->temperature);
    if (!truncates(s, p)) {
        int32_t chosen = draw_full(s, rng);
        if (logp) *logp = logits[chosen] / p->temperature - log_norm;
        return chosen;
    }
    int64_t n = truncate_candidates(s, p);
    double mass = 0.0;
    for (int64_t k = 0; k < n; k++) mass += s->cand[k].p;
    double u = rng_uniform_double(rng) * mass, cum = 0.0;
    int32_t chosen = s->cand[n - 1].id;
    for (int64_t k = 0; k < n; k++) {
        cum += s->cand[k].p;
        if (u < cum) {
            chosen = s->cand[k].id;
            break;
        }
    }
    if (logp) *logp = logits[chosen] / p->temperature - log_norm;
    return chosen;
}

int64_t sampler_support(Sampler *s, const float *logits, const SamplingParams *p, uint8_t *keep) {
    memset(keep, 0, (size_t)s->V);
    if (p->temperature <= 0.0f) {
        keep[argmax(logits, s->V)] = 1;
        return 1;
    }
    scaled_softmax(s->probs, logits, s->V, p->temperature);
    int64_t n = truncate_candidates(s, p);
    for (int64_t k = 0; k < n; k++) keep[s->cand[k].id] = 1;
    return n;
}
