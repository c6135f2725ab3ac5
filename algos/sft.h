/* algos/sft.h — supervised fine-tuning: batches of (prompt, response) pairs,
 * the masked cross-entropy on completion tokens, and TON thought dropout.
 *
 * TON ("Think or Not?", METHODS.md §3.1): with probability p the thought is
 * replaced by an empty one, exactly "<think>\n\n</think>", so the policy
 * learns a no-thinking mode it can later choose. A sequence is
 * <bos> prompt response <eos>; the loss covers the response and <eos> only. */
#ifndef PONDER_ALGOS_SFT_H
#define PONDER_ALGOS_SFT_H

#include <stdint.h> /* int64_t, int32_t */

#include "model/tokenizer.h" /* Tokenizer */
#include "rollout/dataset.h" /* DataItem */
#include "util/error.h"      /* PonderError */
#include "util/rng.h"        /* Rng */

#define SFT_EMPTY_THOUGHT "<think>\n\n</think>"

/* Replaces the content of the first <think>...</think> block of response by
 * "\n\n". Writes a malloc'd string; a response without a complete think block
 * is an error (the data cannot express "not thinking"). */
int sft_drop_thought(const char *response, char **out, PonderError *err);

typedef struct SftBatch {
    int64_t B, T;
    int32_t *tokens, *targets; /* [B,T], right-padded with <pad> */
    float *mask;               /* [B,T]: 1 where the target is a completion token */
    int64_t target_tokens;     /* sum of mask */
    int64_t real_tokens;       /* tokens that are not padding */
    int64_t dropped;           /* sequences whose thought was dropped */
} SftBatch;

/* Builds a batch of n items; T is the longest sequence (minus one) in the
 * batch. Each item's thought is dropped with probability thought_dropout,
 * drawing from rng. An item longer than max_T + 1 tokens is an error naming it. */
int sft_batch_build(SftBatch *b, const Tokenizer *tok, const DataItem *items, int64_t n,
                    int64_t max_T, double thought_dropout, Rng *rng, PonderError *err);
void sft_batch_free(SftBatch *b);

/* Mean negative log-likelihood over masked tokens, and d(loss)/d(logp) [N].
 * norm: the number of tokens the mean is over (the whole step's target
 * tokens when gradients are accumulated over micro-batches). */
double sft_loss(const float *logp, const float *mask, int64_t N, double norm, float *dlogp);

#endif
