/* trainer/rl_internal.h — what trainer/rl_stage.c and trainer/rl_remote.c
 * share and nothing else uses: a step's rollout (groups of samples with their
 * rewards), its collection on this rank, and the learners' side of the
 * disaggregated messages. */
#ifndef PONDER_TRAINER_RL_INTERNAL_H
#define PONDER_TRAINER_RL_INTERNAL_H

#include <stdint.h> /* int64_t, int32_t */

#include "rollout/dataset.h"   /* DataItem */
#include "rollout/generate.h"  /* GenSample */
#include "trainer/rl_stage.h"  /* RlStage, RlStepStats */
#include "util/error.h"        /* PonderError */

/* Everything one step generates, group by group. */
typedef struct Rollout {
    int64_t P, G, n;        /* groups, samples per group, samples */
    int64_t cap;            /* groups allocated */
    DataItem *items;        /* [P] */
    int32_t **prompt_ids;   /* [P] (<bos> prompt) */
    int64_t *prompt_len;    /* [P] */
    GenSample *samples;     /* [P*G] */
    char **texts;           /* [P*G] decoded completions without <eos> */
    double *reward;         /* [P*G] combined */
    double *component;      /* [K][cap*G] */
    int K;
} Rollout;

void rl_rollout_free(Rollout *r);
/* Room for `groups` groups (keeps what is there). */
int rl_rollout_reserve(Rollout *r, int64_t groups, PonderError *err);

/* Generates and scores this rank's share of a step's groups (rl_stage.c). */
int rl_collect(RlStage *s, int64_t step, int64_t *cursor, Rollout *r, RlStepStats *st,
               PonderError *err);

/* Learners (rl_remote.c): this learner's share of the step's groups, from
 * every rollout rank; learner 0 sending the weights of `version`. */
int rl_receive_rollout(RlStage *s, int64_t step, int64_t *cursor, Rollout *r, RlStepStats *st,
                       PonderError *err);
int rl_send_weights(RlStage *s, int64_t version, int64_t cursor, PonderError *err);

/* A step's samples as model batches: row i is prompt then completion,
 * prompts left-padded to Pmax, so completion token t of every row sits at
 * model column Pmax - 1 + t (the input that predicts it). */
typedef struct TrainBatch {
    int64_t S, T, Tc, Pmax;
    int32_t *tokens, *targets, *start; /* model batch [S,T] */
    float *mask;                       /* model mask [S,T] */
    float *cmask;                      /* completion mask [S,Tc] */
    float *sample_logp;                /* [S,Tc] from the sampler */
    int64_t *group;                    /* [S] */
    int32_t *clen;                     /* [S] completion tokens of each row */
} TrainBatch;

void rl_train_batch_free(TrainBatch *b);

/* ---------------------------------------------------------- micro-batches --
 * (trainer/rl_micro.c) A mini-batch's rows sorted by length (completion,
 * then prompt) and cut into micro-batches whose padded size (rows times the
 * columns they span) stays within a token budget, so a forward/backward pass
 * neither computes the padding of a batch padded to its longest row nor holds
 * more activations than the budget. A single row wider than the budget is a
 * micro-batch of its own. The losses' denominators are the mini-batch's
 * (algos/loss.h normalizer), so the gradients summed over micro-batches are
 * the mini-batch's up to the order of the sums. */
typedef struct RlMicroPlan {
    int64_t n;      /* micro-batches */
    int64_t *row;   /* [rows] TrainBatch rows, micro-batch after micro-batch */
    int64_t *first; /* [n + 1] micro-batch k is row[first[k] .. first[k+1]) */
} RlMicroPlan;

/* Rows [r0, r0 + rows) of b; budget >= 1 padded tokens per micro-batch. */
int rl_micro_plan(const TrainBatch *b, int64_t r0, int64_t rows, int64_t budget, RlMicroPlan *p,
                  PonderError *err);
void rl_micro_plan_free(RlMicroPlan *p);
/* Rows idx[0..n) of b as a batch of their own (out owns its arrays), keeping
 * only the columns they use: Pmax, T and Tc shrink to theirs. */
int rl_micro_batch(const TrainBatch *b, const int64_t *idx, int64_t n, TrainBatch *out,
                   PonderError *err);
/* Completion arrays: [b->S, b->Tc] rows idx to [mb->S, mb->Tc] and back
 * (scatter writes only the first mb->Tc columns of each row). */
void rl_micro_gather(const TrainBatch *b, const TrainBatch *mb, const int64_t *idx,
                     const float *src, float *dst);
void rl_micro_scatter(const TrainBatch *b, const TrainBatch *mb, const int64_t *idx,
                      const float *src, float *dst);
/* Frees weight messages still held (at the end of the stage). */
void rl_pending_free_all(RlStage *s);

#endif
