/* rewards/reward_set.c — a set of reward components, group normalisation, and
 * the combination modes (conventions at the top of reward_set.h). */
#include "rewards/reward_set.h"

#include <math.h>   /* sqrt, isfinite */
#include <stdio.h>  /* snprintf */
#include <stdlib.h> /* calloc, malloc, free, qsort */
#include <string.h> /* strcmp */

struct RewardSet {
    int n_rewards;
    Reward **rewards;
    int *first_component; /* [n_rewards] row of each reward's first output */
    int n_components;
    const char **names; /* [n_components] owned by the rewards */
    double *weights;    /* [n_components] */
    RewardCombine mode;
    double eps;
};

/* ---------------------------------------------------------------- names ----*/

static const char *const COMBINE_NAMES[] = {"sum", "sum_then_normalize", "normalize_then_sum"};

const char *reward_combine_name(RewardCombine mode) {
    return mode >= REWARD_COMBINE_SUM && mode <= REWARD_COMBINE_NORMALIZE_THEN_SUM ? COMBINE_NAMES[mode] : "unknown";
}

int reward_combine_from_name(const char *name, RewardCombine *mode, PonderError *err) {
    for (int m = 0; m < 3; m++) {
        if (name && strcmp(name, COMBINE_NAMES[m]) == 0) {
            *mode = (RewardCombine)m;
            return PONDER_OK;
        }
    }
    return ponder_error(err, PONDER_ERR_CONFIG,
                        "unknown reward combination \"%s\": expected sum, sum_then_normalize or normalize_then_sum",
                        name ? name : "(null)");
}

/* ---------------------------------------------------------------- stats ----*/

RewardStat reward_stat(const RewardValue *x, int64_t n) {
    RewardStat s = {0.0, 0};
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        if (!x[i].applicable) continue;
        sum += x[i].value;
        s.count++;
    }
    if (s.count) s.mean = sum / (double)s.count;
    return s;
}

/* ---------------------------------------------------------------- groups ---*/

typedef struct GroupKey {
    int64_t id, index;
} GroupKey;

static int compare_keys(const void *pa, const void *pb) {
    const GroupKey *a = pa, *b = pb;
    if (a->id != b->id) return a->id < b->id ? -1 : 1;
    return (a->index > b->index) - (a->index < b->index);
}

/* Sample indices sorted so each group is one run of equal ids. */
static int group_order(int64_t n, RewardGroups g, GroupKey **out, PonderError *err) {
    *out = NULL;
    if (!g.ids && (g.group_size <= 0 || n % g.group_size != 0))
        return ponder_error(err, PONDER_ERR_CONFIG,
                            "reward groups: %lld samples do not split into groups of %lld (pass group ids, or a "
                            "group size that divides the batch)",
                            (long long)n, (long long)g.group_size);
    GroupKey *keys = malloc((size_t)(n > 0 ? n : 1) * sizeof *keys);
    if (!keys) return ponder_error(err, PONDER_ERR_NOMEM, "reward groups: out of memory for %lld samples", (long long)n);
    for (int64_t i = 0; i < n; i++) keys[i] = (GroupKey){g.ids ? g.ids[i] : i / g.group_size, i};
    if (g.ids) qsort(keys, (size_t)n, sizeof *keys, compare_keys);
    *out = keys;
    return PONDER_OK;
}

/* Normalises one group's applicable members; two passes for an exact variance. */
static void normalize_group(const RewardValue *x, const GroupKey *members, int64_t m, double eps, RewardValue *out) {
    double sum = 0.0;
    int64_t count = 0;
    for (int64_t j = 0; j < m; j++) {
        const RewardValue v = x[members[j].index];
        if (v.applicable) sum += v.value, count++;
    }
    double mean = count ? sum / (double)count : 0.0, ss = 0.0;
    for (int64_t j = 0; j < m; j++) {
        const RewardValue v = x[members[j].index];
        if (v.applicable) ss += (v.value - mean) * (v.value - mean);
    }
    double std = count > 1 ? sqrt(ss / (double)(count - 1)) : 0.0; /* Bessel, as torch.std */
    double scale = std + eps > 0 ? 1.0 / (std + eps) : 0.0; /* eps = 0 and equal values: all deviations are 0 */
    for (int64_t j = 0; j < m; j++) {
        int64_t i = members[j].index;
        out[i] = x[i].applicable ? reward_value((x[i].value - mean) * scale) : reward_not_applicable();
    }
}

int reward_group_normalize(const RewardValue *x, int64_t n, RewardGroups groups, double eps, RewardValue *out,
                           PonderError *err) {
    GroupKey *keys;
    int rc = group_order(n, groups, &keys, err);
    if (rc) return rc;
    for (int64_t start = 0, end; start < n; start = end) {
        for (end = start + 1; end < n && keys[end].id == keys[start].id;) end++;
        normalize_group(x, keys + start, end - start, eps, out);
    }
    free(keys);
    return PONDER_OK;
}

/* ---------------------------------------------------------------- combine --*/

static void weighted_sum_into(int n_components, const double *weights, int64_t n, const RewardValue *x,
                              RewardValue *out) {
    for (int64_t i = 0; i < n; i++) {
        double sum = 0.0;
        bool any = false;
        for (int k = 0; k < n_components; k++) {
            RewardValue v = x[(int64_t)k * n + i];
            if (v.applicable) sum += weights[k] * v.value, any = true;
        }
        out[i] = any ? reward_value(sum) : reward_not_applicable();
    }
}

/* A non-finite value would poison every mean it enters: name it instead. */
static int check_finite(int n_components, int64_t n, const RewardValue *x, PonderError *err) {
    for (int k = 0; k < n_components; k++)
        for (int64_t i = 0; i < n; i++)
            if (x[(int64_t)k * n + i].applicable && !isfinite(x[(int64_t)k * n + i].value))
                return ponder_error(err, PONDER_ERR_RUNTIME, "reward component %d gave %g for sample %lld", k,
                                    x[(int64_t)k * n + i].value, (long long)i);
    return PONDER_OK;
}

static int normalize_then_sum(double eps, int n_components, const double *weights, int64_t n,
                              const RewardValue *x, RewardGroups groups, RewardValue *combined, PonderError *err) {
    RewardValue *z = malloc((size_t)(n_components > 0 && n > 0 ? n_components * n : 1) * sizeof *z);
    if (!z) return ponder_error(err, PONDER_ERR_NOMEM, "reward combine: out of memory");
    int rc = PONDER_OK;
    for (int k = 0; k < n_components && !rc; k++)
        rc = reward_group_normalize(x + (int64_t)k * n, n, groups, eps, z + (int64_t)k * n, err);
    if (!rc) weighted_sum_into(n_components, weights, n, z, combined);
    free(z);
    return rc;
}

int reward_combine(RewardCombine mode, double eps, int n_components, const double *weights, int64_t n,
                   const RewardValue *components, RewardGroups groups, RewardValue *combined,
                   RewardValue *weighted_sum, PonderError *err) {
    if (!(eps >= 0) || !isfinite(eps))
        return ponder_error(err, PONDER_ERR_CONFIG, "reward combine: eps must be >= 0, got %g", eps);
    int rc = check_finite(n_components, n, components, err);
    if (rc) return rc;
    if (weighted_sum) weighted_sum_into(n_components, weights, n, components, weighted_sum);
    switch (mode) {
    case REWARD_COMBINE_SUM:
        weighted_sum_into(n_components, weights, n, components, combined);
        return PONDER_OK;
    case REWARD_COMBINE_SUM_THEN_NORMALIZE:
        weighted_sum_into(n_components, weights, n, components, combined);
        return reward_group_normalize(combined, n, groups, eps, combined, err);
    case REWARD_COMBINE_NORMALIZE_THEN_SUM:
        return normalize_then_sum(eps, n_components, weights, n, components, groups, combined, err);
    }
    return ponder_error(err, PONDER_ERR_CONFIG, "reward combine: unknown mode %d", (int)mode);
}

/* ---------------------------------------------------------------- sets -----*/

void reward_scores_free(RewardScores *s) {
    if (!s) return;
    free(s->components);
    free(s->weighted_sum);
    free(s->combined);
    free(s->component_stat);
    *s = (RewardScores){0};
}

static int scores_resize(RewardScores *s, int n_components, int64_t n, PonderError *err) {
    if (s->components && s->n == n && s->n_components == n_components) return PONDER_OK;
    reward_scores_free(s);
    size_t rows = (size_t)(n > 0 ? n : 1);
    s->components = calloc(rows * (size_t)(n_components > 0 ? n_components : 1), sizeof *s->components);
    s->weighted_sum = calloc(rows, sizeof *s->weighted_sum);
    s->combined = calloc(rows, sizeof *s->combined);
    s->component_stat = calloc((size_t)(n_components > 0 ? n_components : 1), sizeof *s->component_stat);
    if (!s->components || !s->weighted_sum || !s->combined || !s->component_stat) {
        reward_scores_free(s);
        return ponder_error(err, PONDER_ERR_NOMEM, "reward scores: out of memory for %lld samples", (long long)n);
    }
    s->n = n;
    s->n_components = n_components;
    return PONDER_OK;
}

static int check_set_args(int n_specs, RewardCombine mode, double eps, PonderError *err) {
    if (n_specs < 1) return ponder_error(err, PONDER_ERR_CONFIG, "rewards: none configured (give at least one)");
    if (mode < REWARD_COMBINE_SUM || mode > REWARD_COMBINE_NORMALIZE_THEN_SUM)
        return ponder_error(err, PONDER_ERR_CONFIG, "rewards: unknown combination mode %d", (int)mode);
    if (!(eps >= 0) || !isfinite(eps))
        return ponder_error(err, PONDER_ERR_CONFIG, "rewards: eps must be >= 0, got %g", eps);
    return PONDER_OK;
}

/* Lists every reward's outputs as components; names must not repeat. */
static int index_components(RewardSet *set, PonderError *err) {
    int total = 0;
    for (int r = 0; r < set->n_rewards; r++) total += reward_n_outputs(set->rewards[r]);
    set->names = calloc((size_t)total, sizeof *set->names);
    set->weights = calloc((size_t)total, sizeof *set->weights);
    if (!set->names || !set->weights) return ponder_error(err, PONDER_ERR_NOMEM, "rewards: out of memory");
    int k = 0;
    for (int r = 0; r < set->n_rewards; r++) {
        set->first_component[r] = k;
        for (int o = 0; o < reward_n_outputs(set->rewards[r]); o++, k++) {
            set->names[k] = reward_output_name(set->rewards[r], o);
            set->weights[k] = reward_output_weight(set->rewards[r], o);
            for (int j = 0; j < k; j++)
                if (strcmp(set->names[j], set->names[k]) == 0)
                    return ponder_error(err, PONDER_ERR_CONFIG,
                                        "rewards: two components are named \"%s\" (names must be unique)",
                                        set->names[k]);
        }
    }
    set->n_components = total;
    return PONDER_OK;
}

int reward_set_create(RewardSet **out, const RewardSpec *specs, int n_specs, RewardCombine mode, double eps,
                      PonderError *err) {
    *out = NULL;
    int rc = check_set_args(n_specs, mode, eps, err);
    if (rc) return rc;
    RewardSet *set = calloc(1, sizeof *set);
    if (set) set->rewards = calloc((size_t)n_specs, sizeof *set->rewards);
    if (set && set->rewards) set->first_component = calloc((size_t)n_specs, sizeof *set->first_component);
    if (!set || !set->rewards || !set->first_component) {
        reward_set_free(set);
        return ponder_error(err, PONDER_ERR_NOMEM, "rewards: out of memory");
    }
    set->mode = mode;
    set->eps = eps;
    for (int r = 0; r < n_specs && !rc; r++) {
        rc = reward_create(&set->rewards[r], &specs[r], err);
        if (!rc) set->n_rewards++;
    }
    if (!rc) rc = index_components(set, err);
    if (rc) {
        reward_set_free(set);
        return rc;
    }
    *out = set;
    return PONDER_OK;
}

int reward_set_n_components(const RewardSet *set) { return set->n_components; }
const char *reward_set_component_name(const RewardSet *set, int k) { return set->names[k]; }
double reward_set_component_weight(const RewardSet *set, int k) { return set->weights[k]; }

int reward_set_score(RewardSet *set, const RewardInput *in, int64_t n, RewardGroups groups, RewardScores *out,
                     PonderError *err) {
    int rc = scores_resize(out, set->n_components, n, err);
    for (int r = 0; r < set->n_rewards && !rc; r++)
        rc = reward_score(set->rewards[r], in, n, out->components + (int64_t)set->first_component[r] * n, err);
    if (!rc)
        rc = reward_combine(set->mode, set->eps, set->n_components, set->weights, n, out->components, groups,
                            out->combined, out->weighted_sum, err);
    if (rc) return rc;
    for (int k = 0; k < set->n_components; k++)
        out->component_stat[k] = reward_stat(out->components + (int64_t)k * n, n);
    out->weighted_sum_stat = reward_stat(out->weighted_sum, n);
    out->combined_stat = reward_stat(out->combined, n);
    return PONDER_OK;
}

/* ---------------------------------------------------------------- metrics --*/

static json_t *mean_or_null(RewardStat s) { return s.count ? json_real(s.mean) : json_null(); }

static int put(json_t *obj, const char *key, json_t *value, PonderError *err) {
    if (!value || json_object_set_new(obj, key, value) != 0)
        return ponder_error(err, PONDER_ERR_NOMEM, "reward metrics: could not set \"%s\"", key);
    return PONDER_OK;
}

int reward_set_metrics(const RewardSet *set, const RewardScores *s, json_t *obj, PonderError *err) {
    int rc = put(obj, "reward", mean_or_null(s->combined_stat), err);
    if (!rc) rc = put(obj, "reward/weighted_sum", mean_or_null(s->weighted_sum_stat), err);
    for (int k = 0; k < set->n_components && !rc; k++) {
        char key[2 * REWARD_NAME_MAX + 32];
        snprintf(key, sizeof key, "reward/%s", set->names[k]);
        rc = put(obj, key, mean_or_null(s->component_stat[k]), err);
        snprintf(key, sizeof key, "reward/%s/applicable", set->names[k]);
        if (!rc) rc = put(obj, key, json_integer(s->component_stat[k].count), err);
    }
    return rc;
}

void reward_set_free(RewardSet *set) {
    if (!set) return;
    for (int r = 0; r < set->n_rewards; r++) reward_free(set->rewards[r]);
    free(set->rewards);
    free(set->first_component);
    free(set->names);
    free(set->weights);
    free(set);
}
