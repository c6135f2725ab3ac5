/* rollout/generate.h — batched generation with a KV cache.
 *
 * P prompts x G samples. Each prompt is prefilled once and its cache copied
 * into the slots of its samples (a group shares its prompt). Samples run in
 * at most max_batch slots; a finished sample leaves its slot at once and the
 * next pending sample takes it (continuous batching), so no compute goes to
 * finished sequences. Sample (p, g) draws from its own random stream derived
 * from (seed, step, prompt index, g): its tokens do not depend on batch size,
 * batch composition or rank count. */
#ifndef PONDER_ROLLOUT_GENERATE_H
#define PONDER_ROLLOUT_GENERATE_H

#include <stdint.h> /* int64_t, int32_t, uint64_t */

#include "model/model.h"     /* Model */
#include "model/tokenizer.h" /* Tokenizer (stop strings) */
#include "rollout/sampler.h" /* SamplingParams */
#include "util/error.h"      /* PonderError */

typedef enum {
    GEN_FINISH_EOS = 1,    /* produced the end-of-sequence token (kept in the completion) */
    GEN_FINISH_STOP = 2,   /* the decoded completion ends with a stop string */
    GEN_FINISH_LENGTH = 3, /* max_new_tokens, or the model's context, reached */
} GenFinish;

const char *gen_finish_name(GenFinish f);

typedef struct GenPrompt {
    const int32_t *tokens;
    int64_t n;
    int64_t index; /* global prompt index: names the random stream */
} GenPrompt;

#define GEN_MAX_STOPS 4
typedef struct GenConfig {
    SamplingParams sampling;
    int64_t num_generations; /* G */
    int64_t max_batch;       /* slots decoded together */
    uint64_t seed;
    int64_t step;            /* training step: part of the random stream's name */
    int32_t eos_id;
    const Tokenizer *tokenizer; /* for stop strings; may be NULL when there are none */
    const char *stop[GEN_MAX_STOPS];
    int n_stop;
    int64_t policy_version;
    /* Optional: a KV cache to generate in, kept by the caller across calls
     * (an RL stage generates every step; creating the cache each time cost
     * zeroing tens of MB of fresh pages per step). It needs at least
     * min(max_batch, P*G) + 1 slots of model.max_seq_len positions, else the
     * call makes its own. Made for the same model; its slots are reset.
     * NULL: one is made per call. */
    ModelKVCache *kv;
} GenConfig;

typedef struct GenSample {
    int64_t prompt;   /* position in the prompts array */
    int64_t sample;   /* 0..G-1 */
    int64_t group;    /* = prompt */
    int32_t *tokens;  /* completion tokens [n] (malloc'd) */
    float *logp;      /* their sampling log-probs [n] */
    int64_t n;
    GenFinish finish;
    int64_t policy_version;
} GenSample;

/* Generates P*G samples into out[p*G + g]; on error nothing is left allocated. */
int rollout_generate(Model *m, const GenPrompt *prompts, int64_t P, const GenConfig *gc,
                     GenSample *out, PonderError *err);
void gen_samples_free(GenSample *s, int64_t n);

/* Generation statistics of the last call, for benchmarks and logs. */
typedef struct GenStats {
    int64_t prefill_tokens, decode_tokens, decode_steps;
} GenStats;
int rollout_generate_stats(Model *m, const GenPrompt *prompts, int64_t P, const GenConfig *gc,
                           GenSample *out, GenStats *stats, PonderError *err);

#endif
