/* rollout/sampler.h — choosing the next token from logits.
 *
 * Greedy, or sampling from the temperature-scaled distribution restricted by
 * top-k, top-p (nucleus) and min-p. The reported log-prob is that of the
 * chosen token under the temperature-scaled distribution over the whole
 * vocabulary, the quantity the learner recomputes (DESIGN: logp_mismatch).
 * The sampler owns a scratch buffer and no randomness: the caller passes the
 * sample's own Rng stream. */
#ifndef PONDER_ROLLOUT_SAMPLER_H
#define PONDER_ROLLOUT_SAMPLER_H

#include <stdint.h> /* int64_t, int32_t */

#include "util/error.h" /* PonderError */
#include "util/rng.h"   /* Rng */

typedef struct SamplingParams {
    float temperature;      /* 0 = greedy */
    int64_t top_k;          /* 0 = off */
    float top_p;            /* 1 = off */
    float min_p;            /* 0 = off: drop tokens with p < min_p * p_max */
    int64_t max_new_tokens;
} SamplingParams;

SamplingParams sampling_greedy(int64_t max_new_tokens);
int sampling_validate(const SamplingParams *p, PonderError *err);

typedef struct SamplerCandidate {
    float p;
    int32_t id;
} SamplerCandidate;

typedef struct Sampler {
    int64_t V;
    float *probs;           /* [V] */
    SamplerCandidate *cand; /* [V] sorted candidates (top-k / top-p / min-p only) */
} Sampler;

int sampler_init(Sampler *s, int64_t vocab_size, PonderError *err);
void sampler_free(Sampler *s);

/* Picks a token from logits [V]; writes its log-prob (see above) to *logp. */
int32_t sampler_pick(Sampler *s, const float *logits, const SamplingParams *p, Rng *rng,
                     float *logp);

/* The kept support for the params (tests): writes a 0/1 mask [V] and returns
 * how many tokens are kept. */
int64_t sampler_support(Sampler *s, const float *logits, const SamplingParams *p, uint8_t *keep);

#endif
