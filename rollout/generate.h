/* rollout/generate.h — batched generation with a KV cache.
 *
 * P prompts x G samples. Each prompt is prefilled once into a prompt slot,
 * which its samples read their prompt from (model_kv_share_prefix: one copy
 * per group, read once per decode step), or, on a backend that cannot and
 * for groups of one, is copied into each sample's slot. A group whose prompt finds no free prompt
 * slot (older groups' samples still running) prefills it in the sample's own
 * slot: the same tokens either way. Samples run in
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
     * rollout_kv_slots(m, gc, P) slots of model.max_seq_len positions, else
     * the call makes its own. Made for the same model; its slots are reset.
     * NULL: one is made per call. */
    ModelKVCache *kv;
    /* Prompt slots to keep (0: one per group that fits in max_batch, plus
     * two). Fewer save memory; a group that finds none free prefills its
     * samples' own slots (the same tokens, more prefill). */
    int64_t prompt_slots;
    /* 1: copy each prompt into its samples' slots instead of sharing it, as
     * on backends that cannot share (for comparisons). */
    int copy_prompts;
} GenConfig;

/* The KV cache slots a call over P prompts uses: a slot per running sample
 * (min(max_batch, P*G)) and its prompt slots. */
int64_t rollout_kv_slots(const Model *m, const GenConfig *gc, int64_t P);

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
    int64_t shared_prompts; /* samples that read their prompt from their group's prompt slot */
} GenStats;
int rollout_generate_stats(Model *m, const GenPrompt *prompts, int64_t P, const GenConfig *gc,
                           GenSample *out, GenStats *stats, PonderError *err);

#endif
