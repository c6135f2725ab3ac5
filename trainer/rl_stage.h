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

typedef struct RlStage {
    const PonderConfig *cfg;
    Dist *dist;         /* ranks sharing the step (colocated); owned by the caller */
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
int rl_stage_begin(RlStage *s, Dist *dist, const PonderConfig *cfg, int stage, Model *policy,
                   Optimizer *opt, const Tokenizer *tok, const Dataset *train,
                   const char *ckpt_dir, int resume, int64_t step, PonderError *err);
void rl_stage_end(RlStage *s);

/* One RL step at global step `step`: consumes prompts from *cursor. */
int rl_stage_step(RlStage *s, int64_t step, int64_t *cursor, RlStepStats *st, PonderError *err);

/* Writes the critic (with its optimizer) for `step` next to the policy's
 * checkpoint; the reference is written once, by rl_stage_begin. */
int rl_stage_save(RlStage *s, const char *ckpt_dir, int64_t step, PonderError *err);

/* The step's metrics as one JSON object (malloc'd). */
char *rl_stats_json(const RlStage *s, const RlStepStats *st, int64_t step, int64_t stage_step);

#endif
