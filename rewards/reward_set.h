/* rewards/reward_set.h — named, weighted reward components and how they
 * combine into the one reward per sample the advantage estimator sees.
 *
 * Every component is scored on every sample; component k of sample i is x_ki,
 * its weight w_k. Not-applicable values are excluded everywhere: they add
 * nothing to a sum, and they are left out of every mean, standard deviation and
 * count. A sample whose components are all not applicable is not applicable
 * combined (the caller decides what that means for training, e.g. mask it).
 *
 * Modes (`combine`):
 *   sum                  c_i = sum_k w_k x_ki. No normalisation: the advantage
 *                        estimator (GRPO, RLOO, ...) does its own.
 *   sum_then_normalize   s_i = sum_k w_k x_ki, then c_i = normalise(s) within
 *                        the sample's group.
 *   normalize_then_sum   z_ki = normalise(x_k) within the group, per component,
 *                        then c_i = sum_k w_k z_ki — RLSP's separately
 *                        normalised streams: a component with a large spread
 *                        cannot drown one with a small spread.
 * normalise(x)_i = (x_i - mean_g) / (std_g + eps) over the applicable members
 * of group g, std with Bessel's correction (divide by m - 1), as TRL, verl and
 * OpenRLHF compute it (torch.std); a group with one applicable member has
 * std 0, so its member normalises to 0 (TRL's rule), as do the members of a
 * constant group even with eps = 0. */
#ifndef PONDER_REWARDS_REWARD_SET_H
#define PONDER_REWARDS_REWARD_SET_H

#include <jansson.h> /* json_t (metrics) */
#include <stdint.h>  /* int64_t */

#include "rewards/reward.h" /* Reward, RewardSpec, RewardValue, RewardInput */
#include "util/error.h"     /* PonderError */

typedef enum RewardCombine {
    REWARD_COMBINE_SUM,
    REWARD_COMBINE_SUM_THEN_NORMALIZE,
    REWARD_COMBINE_NORMALIZE_THEN_SUM,
} RewardCombine;

#define REWARD_DEFAULT_EPS 1e-6 /* verl's group-normalisation epsilon */

const char *reward_combine_name(RewardCombine mode);
int reward_combine_from_name(const char *name, RewardCombine *mode, PonderError *err);

/* ---------------------------------------------------------------- arithmetic */

/* Samples with the same id form a group. ids NULL: consecutive blocks of
 * group_size (n must be a multiple of it). */
typedef struct RewardGroups {
    const int64_t *ids; /* [n] or NULL */
    int64_t group_size;
} RewardGroups;

typedef struct RewardStat {
    double mean;   /* over applicable values; 0 when count is 0 */
    int64_t count; /* applicable values */
} RewardStat;

RewardStat reward_stat(const RewardValue *x, int64_t n);

/* out[i] = normalise(x)_i within i's group (see top); n/a stays n/a. */
int reward_group_normalize(const RewardValue *x, int64_t n, RewardGroups groups, double eps, RewardValue *out,
                           PonderError *err);

/* Combines components [n_components][n] (row k is component k) with weights.
 * weighted_sum (may be NULL) gets sum_k w_k x_ki before any normalisation. */
int reward_combine(RewardCombine mode, double eps, int n_components, const double *weights, int64_t n,
                   const RewardValue *components, RewardGroups groups, RewardValue *combined,
                   RewardValue *weighted_sum, PonderError *err);

/* ---------------------------------------------------------------- sets -----*/

typedef struct RewardScores {
    int64_t n;
    int n_components;
    RewardValue *components;    /* [n_components][n] raw values */
    RewardValue *weighted_sum;  /* [n] sum_k w_k x_ki, before any normalisation */
    RewardValue *combined;      /* [n] what the advantage estimator gets */
    RewardStat *component_stat; /* [n_components] mean of each raw component */
    RewardStat weighted_sum_stat, combined_stat;
} RewardScores;

void reward_scores_free(RewardScores *s);

typedef struct RewardSet RewardSet;

/* Creates every component (starting external processes, loading plugins).
 * Component names must be unique; an external reward with named outputs
 * contributes one component per output, named "reward.output". */
int reward_set_create(RewardSet **out, const RewardSpec *specs, int n_specs, RewardCombine mode, double eps,
                      PonderError *err);

int reward_set_n_components(const RewardSet *set);
const char *reward_set_component_name(const RewardSet *set, int k);
double reward_set_component_weight(const RewardSet *set, int k);

/* Scores n samples. out must be zeroed or hold earlier scores (it is reused
 * and resized); free it with reward_scores_free. Errors name the failing
 * reward (and for external and plugin rewards, the command or file). */
int reward_set_score(RewardSet *set, const RewardInput *in, int64_t n, RewardGroups groups, RewardScores *out,
                     PonderError *err);

/* Adds the step's reward metrics to obj: "reward" (combined mean),
 * "reward/weighted_sum", and per component "reward/<name>" (mean, null when
 * no sample was applicable) and "reward/<name>/applicable" (the count). */
int reward_set_metrics(const RewardSet *set, const RewardScores *s, json_t *obj, PonderError *err);

void reward_set_free(RewardSet *set);

#endif
