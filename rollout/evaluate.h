/* rollout/evaluate.h — evaluation of a policy on held-out items: accuracy
 * (greedy, or the mean over samples), pass@k (unbiased estimator), maj@k,
 * mean completion length and think_ratio, overall and by difficulty.
 *
 * think_ratio is the share of completions whose <think> block holds anything
 * but whitespace (TON's measure of how often the policy chooses to think);
 * a completion with no think block counts as not thinking. */
#ifndef PONDER_ROLLOUT_EVALUATE_H
#define PONDER_ROLLOUT_EVALUATE_H

#include <stdint.h> /* int64_t */
#include <stdio.h>  /* FILE */

#include "model/model.h"     /* Model */
#include "model/tokenizer.h" /* Tokenizer */
#include "rollout/dataset.h" /* Dataset */
#include "rollout/sampler.h" /* SamplingParams */
#include "util/error.h"      /* PonderError */

#define EVAL_MAX_DIFFICULTY 16

typedef struct EvalBucket {
    int64_t items, samples;
    double accuracy;    /* mean correctness over all samples */
    double pass_at_k;   /* unbiased pass@k with k = samples per item */
    double maj_at_k;    /* majority answer correct */
    double mean_length; /* completion tokens */
    double think_ratio;
} EvalBucket;

typedef struct EvalResult {
    EvalBucket all;
    EvalBucket by_difficulty[EVAL_MAX_DIFFICULTY + 1]; /* index = difficulty; items == 0 unused */
    double seconds;
} EvalResult;

typedef struct EvalSettings {
    SamplingParams sampling;
    int64_t num_samples; /* per item (k) */
    int64_t max_batch;
    uint64_t seed;
} EvalSettings;

/* Evaluates items [0, n_items) of the data set in file order. samples_out,
 * when not NULL, receives one JSON line per sample. */
int eval_run(Model *m, const Tokenizer *tok, const Dataset *data, int64_t n_items,
             const EvalSettings *s, EvalResult *out, FILE *samples_out, PonderError *err);

/* The text of the last <answer>...</answer> in a completion, trimmed, written
 * into buf; returns 0 when there is none. */
int eval_extract_answer(const char *completion, char *buf, size_t size);
/* 1 if the completion's think block holds non-whitespace text. */
int eval_thinks(const char *completion);
/* Unbiased pass@k from n samples with c correct (Chen et al. 2021). */
double eval_pass_at_k(int64_t n, int64_t c, int64_t k);

/* Writes the result as a JSON object (one line). */
void eval_write_json(const EvalResult *r, FILE *f);

#endif
