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
/* Frees weight messages still held (at the end of the stage). */
void rl_pending_free_all(RlStage *s);

#endif
