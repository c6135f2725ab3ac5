/* trainer/rl_stage.h — one RL stage (grpo, rloo, reinforce_pp, ppo): rollout,
 * scoring, advantages, and policy (and value) updates, step by step.
 *
 * The trainer owns the policy, its optimizer, the tokenizer and the data; a
 * stage adds what only RL needs: a frozen reference model (when a KL term is
 * used), a critic with its own optimizer (ppo), the reward set, and the KL
 * controller. Every random choice of a step is derived from (seed, step), so
 * the stage resumes exactly from a checkpoint of the policy and cursor
 * (plus the critic's and reference's files, see rl_stage_save). */
#ifndef PONDER_TRAINER_RL_STAGE_H
#define PONDER_TRAINER_RL_STAGE_H

#include <stdint.h> /* int64_t */

#include "algos/kl.h"          /* AlgoKlController */
#include "model/model.h"       /* Model */
#include "model/tokenizer.h"   /* Tokenizer */
#include "rewards/reward_set.h" /* RewardSet */
#include "rollout/dataset.h"   /* Dataset */
#include "trainer/config.h"    /* PonderConfig */
#include "trainer/dist.h"      /* Dist */
#include "trainer/optim.h"     /* Optimizer */
#include "util/error.h"        /* PonderError */

/* Which part of an RL step this process does (dist.mode, trainer/dist.h). */
typedef enum {
    RL_ROLE_COLOCATED = 0, /* generate, score and train (every rank of `comm`) */
    RL_ROLE_LEARNER = 1,   /* disaggregated: train on samples received from rollout ranks */
    RL_ROLE_ROLLOUT = 2,   /* disaggregated: generate and score, send samples, take weights */
} RlRole;

typedef struct RlRanks {
    Dist *comm;            /* the ranks sharing this role's work */
    Dist *world;           /* every rank: messages between the roles */
    RlRole role;
    int n_learners;        /* disaggregated: world ranks 0 .. n_learners-1 learn */
    int64_t max_staleness; /* disaggregated: oldest policy version a trained sample may have */
} RlRanks;

typedef struct RlStage {
    const PonderConfig *cfg;
    Dist *dist;         /* ranks sharing this role's work (RlRanks.comm); owned by the caller */
    RlRanks ranks;
    struct PendingSend *pending; /* learner 0: weight messages still on their way */
    int n_pending;
    uint64_t bytes_weights, bytes_samples; /* disaggregated: what this rank sent of each */
    int stage;
    Model *policy;      /* owned by the trainer */
    Optimizer *opt;     /* owned by the trainer */
    const Tokenizer *tok;
    const Dataset *train;
    Model *ref;         /* frozen copy of the policy at the stage's start, or NULL */
    Model *critic;      /* ppo: scalar-head model initialised from the policy's trunk */
    Optimizer critic_opt;
    int have_critic_opt;
    int64_t last_critic_step; /* step of the critic file on disk, -1 if none */
    RewardSet *rewards;
    int n_rewards;
    char reward_names[8][64];
    int accuracy_component; /* index of the correctness reward, -1 if none */
    AlgoKlController klc;
    ModelKVCache *gen_kv; /* the policy's generation cache, kept across steps; NULL until first used */
} RlStage;

/* Per-step measurements (also the metrics line). */
typedef struct RlStepStats {
    double reward_mean, reward_std, accuracy, completion_length, think_ratio;
    double component_mean[8];
    double kl, clip_low, clip_high, dual_clip, entropy, grad_norm, lr, policy_loss;
    double value_loss, value_clip;
    double logp_mismatch_max, logp_mismatch_mean;
    double zero_variance_groups; /* share of groups whose rewards are all equal */
    double truncated;            /* share of samples that hit max_new_tokens */
    int64_t samples, tokens_generated, resample_rounds, groups_kept;
    double t_generate, t_score, t_train;
    int64_t policy_version;     /* oldest policy version that generated the step's samples */
    int64_t staleness_max;      /* step - policy_version (0 when on-policy) */
    double elapsed_s;           /* set by the caller: run time when the step ended */
    int finite;
} RlStepStats;

/* Sets up reference, critic and rewards for cfg->stages[stage]. ckpt_dir is
 * where the reference and critic files live (rl_stage_save); with resume set
 * they are loaded from there instead of being created from the policy.
 *
 * Ranks (colocated): each rank of `dist` generates and scores a contiguous
 * share of the step's prompts (whole groups), mini-batches are ranges of
 * groups of the step's global group order, and every normaliser (token and
 * sequence counts of the loss, batch reward std, whitening moments, KL) and
 * the gradients are summed over ranks, so every rank takes the same optimizer
 * step that one rank with the whole batch would. Rank 0 writes files. */
int rl_stage_begin(RlStage *s, const RlRanks *ranks, const PonderConfig *cfg, int stage, Model *policy,
                   Optimizer *opt, const Tokenizer *tok, const Dataset *train,
                   const char *ckpt_dir, int resume, int64_t step, PonderError *err);
void rl_stage_end(RlStage *s);

/* One RL step at global step `step`: consumes prompts from *cursor. A
 * learner receives the step's samples from the rollout ranks instead of
 * generating them (*cursor then follows theirs). */
int rl_stage_step(RlStage *s, int64_t step, int64_t *cursor, RlStepStats *st, PonderError *err);

/* Disaggregated mode.
 * Learners: rl_stage_remote_start (before the first step: learner 0 sends
 * the weights, version `step`, and the data cursor), rl_stage_step per step
 * (learner 0 then sends the new weights), rl_stage_remote_finish (after the
 * last step or a stop: the rollout ranks are told to stop and every learner
 * takes what they still send, so no message is left in flight).
 * Rollout ranks: rl_stage_serve runs the rollout side of the whole stage
 * (through its last step, or until told to stop). A rollout rank generates
 * step g with the newest weights it holds, waiting for weights while they
 * are more than max_staleness versions older than g; with max_staleness > 0
 * learners take the behaviour policy's (the sampler's) log-probs as the old
 * ones in the importance ratio. */
int rl_stage_remote_start(RlStage *s, int64_t step, int64_t cursor, PonderError *err);
int rl_stage_remote_finish(RlStage *s, PonderError *err);
int rl_stage_serve(RlStage *s, PonderError *err);

/* Writes the critic (with its optimizer) for `step` next to the policy's
 * checkpoint; the reference is written once, by rl_stage_begin. */
int rl_stage_save(RlStage *s, const char *ckpt_dir, int64_t step, PonderError *err);

/* The step's metrics as one JSON object (malloc'd). */
char *rl_stats_json(const RlStage *s, const RlStepStats *st, int64_t step, int64_t stage_step);

#endif
