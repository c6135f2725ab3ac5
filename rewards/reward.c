/* rewards/reward.c — reward specs (defaults, validation, type names) and the
 * Reward object that dispatches a batch of samples to a built-in, an external
 * process or a plugin. */
#include "rewards/reward.h"

#include <math.h>   /* isfinite */
#include <stdio.h>  /* snprintf */
#include <stdlib.h> /* calloc, free */
#include <string.h> /* strcmp, strlen, strspn */

#include "rewards/reward_external.h" /* RewardExternal */
#include "rewards/reward_plugin.h"   /* RewardPlugin */

struct Reward {
    RewardSpec spec; /* borrowed strings are not kept: see name, outputs */
    char name[REWARD_NAME_MAX];
    int n_outputs; /* >= 1 */
    char output_names[REWARD_MAX_OUTPUTS][2 * REWARD_NAME_MAX];
    double output_weights[REWARD_MAX_OUTPUTS];
    RewardExternal *external;
    RewardPlugin *plugin;
};

/* ---------------------------------------------------------------- names ----*/

static const char *const TYPE_NAMES[REWARD_TYPE_COUNT] = {
    "math_verify", "exact", "think_format", "overlong", "length", "external", "plugin",
};

const char *reward_type_name(RewardType type) {
    return type >= 0 && type < REWARD_TYPE_COUNT ? TYPE_NAMES[type] : "unknown";
}

int reward_type_from_name(const char *name, RewardType *type, PonderError *err) {
    for (int t = 0; t < REWARD_TYPE_COUNT; t++) {
        if (name && strcmp(name, TYPE_NAMES[t]) == 0) {
            *type = (RewardType)t;
            return PONDER_OK;
        }
    }
    return ponder_error(err, PONDER_ERR_CONFIG,
                        "unknown reward type \"%s\": expected one of math_verify, exact, think_format, overlong, "
                        "length, external, plugin",
                        name ? name : "(null)");
}

/* ---------------------------------------------------------------- specs ----*/

void reward_spec_defaults(RewardSpec *spec, RewardType type, const char *name) {
    *spec = (RewardSpec){0};
    spec->name = name;
    spec->type = type;
    spec->weight = 1.0;
    spec->tolerance = 1e-6;
    spec->factor = 1.0;
    spec->unit = REWARD_LENGTH_TOKENS;
    spec->timeout_s = 30.0;
    for (int k = 0; k < REWARD_MAX_OUTPUTS; k++) spec->output_weights[k] = 1.0;
}

/* Names become metric keys ("reward/<name>"), so keep them to one word. */
static int check_name(const char *what, const char *name, PonderError *err) {
    static const char OK[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-";
    if (!name || !name[0]) return ponder_error(err, PONDER_ERR_CONFIG, "%s is empty: give every reward a name", what);
    if (strlen(name) >= REWARD_NAME_MAX)
        return ponder_error(err, PONDER_ERR_CONFIG, "%s \"%s\" is longer than %d characters", what, name,
                            REWARD_NAME_MAX - 1);
    if (name[strspn(name, OK)])
        return ponder_error(err, PONDER_ERR_CONFIG, "%s \"%s\" may use only letters, digits, '_' and '-'", what, name);
    return PONDER_OK;
}

static int check_external(const RewardSpec *s, PonderError *err) {
    bool has_command = s->command && s->command[0], has_argv = s->argv && s->argv[0] && s->argv[0][0];
    if (has_command == has_argv)
        return ponder_error(err, PONDER_ERR_CONFIG, "reward \"%s\": give exactly one of command (a shell line) or argv",
                            s->name);
    if (!(s->timeout_s > 0) || !isfinite(s->timeout_s))
        return ponder_error(err, PONDER_ERR_CONFIG, "reward \"%s\": timeout_s must be > 0 seconds, got %g", s->name,
                            s->timeout_s);
    if (s->n_outputs < 0 || s->n_outputs > REWARD_MAX_OUTPUTS)
        return ponder_error(err, PONDER_ERR_CONFIG, "reward \"%s\": %d outputs, expected 0 to %d", s->name,
                            s->n_outputs, REWARD_MAX_OUTPUTS);
    for (int k = 0; k < s->n_outputs; k++) {
        int rc = check_name("output name", s->outputs[k], err);
        if (rc) {
            ponder_error_prefix(err, "reward \"%s\": ", s->name);
            return rc;
        }
        if (!isfinite(s->output_weights[k]))
            return ponder_error(err, PONDER_ERR_CONFIG, "reward \"%s\": output \"%s\" has a non-finite weight",
                                s->name, s->outputs[k]);
        for (int j = 0; j < k; j++)
            if (strcmp(s->outputs[j], s->outputs[k]) == 0)
                return ponder_error(err, PONDER_ERR_CONFIG, "reward \"%s\": output \"%s\" is listed twice", s->name,
                                    s->outputs[k]);
    }
    return PONDER_OK;
}

static int check_type_fields(const RewardSpec *s, PonderError *err) {
    switch (s->type) {
    case REWARD_MATH_VERIFY:
        if (!(s->tolerance >= 0 && s->tolerance < 1))
            return ponder_error(err, PONDER_ERR_CONFIG, "reward \"%s\": tolerance must be in [0, 1), got %g", s->name,
                                s->tolerance);
        return PONDER_OK;
    case REWARD_OVERLONG:
        if (s->max_len <= 0 || s->buffer <= 0 || s->buffer > s->max_len)
            return ponder_error(err, PONDER_ERR_CONFIG,
                                "reward \"%s\": overlong needs 0 < buffer <= max_len, got max_len %lld, buffer %lld "
                                "(DAPO: max_len 20480, buffer 4096)",
                                s->name, (long long)s->max_len, (long long)s->buffer);
        if (!(s->factor >= 0) || !isfinite(s->factor))
            return ponder_error(err, PONDER_ERR_CONFIG, "reward \"%s\": factor must be >= 0, got %g", s->name,
                                s->factor);
        return PONDER_OK;
    case REWARD_LENGTH:
        if (s->cap <= 0)
            return ponder_error(err, PONDER_ERR_CONFIG, "reward \"%s\": length needs cap > 0 (tokens or steps), got %lld",
                                s->name, (long long)s->cap);
        if (s->unit != REWARD_LENGTH_TOKENS && s->unit != REWARD_LENGTH_STEPS)
            return ponder_error(err, PONDER_ERR_CONFIG, "reward \"%s\": unit must be tokens or steps", s->name);
        return PONDER_OK;
    case REWARD_EXTERNAL:
        return check_external(s, err);
    case REWARD_PLUGIN:
        if (!s->path || !s->path[0])
            return ponder_error(err, PONDER_ERR_CONFIG, "reward \"%s\": plugin needs path (a shared object)", s->name);
        return PONDER_OK;
    default:
        return PONDER_OK;
    }
}

int reward_spec_validate(const RewardSpec *s, PonderError *err) {
    int rc = check_name("reward name", s->name, err);
    if (rc) return rc;
    if (s->type < 0 || s->type >= REWARD_TYPE_COUNT)
        return ponder_error(err, PONDER_ERR_CONFIG, "reward \"%s\": unknown type %d", s->name, (int)s->type);
    if (!isfinite(s->weight))
        return ponder_error(err, PONDER_ERR_CONFIG, "reward \"%s\": weight must be finite, got %g", s->name, s->weight);
    return check_type_fields(s, err);
}

/* ---------------------------------------------------------------- create ---*/

/* One output named after the reward, or an external's named outputs as
 * "reward.output" with weight = reward weight * output weight. */
static void set_outputs(Reward *r, const RewardSpec *s) {
    bool named = s->type == REWARD_EXTERNAL && s->n_outputs > 0;
    r->n_outputs = named ? s->n_outputs : 1;
    if (!named) {
        snprintf(r->output_names[0], sizeof r->output_names[0], "%s", s->name);
        r->output_weights[0] = s->weight;
        return;
    }
    for (int k = 0; k < r->n_outputs; k++) {
        snprintf(r->output_names[k], sizeof r->output_names[k], "%s.%s", s->name, s->outputs[k]);
        r->output_weights[k] = s->weight * s->output_weights[k];
    }
}

static int start_backend(Reward *r, const RewardSpec *s, PonderError *err) {
    if (s->type == REWARD_EXTERNAL) {
        RewardExternalSpec x = {s->name, s->command, s->argv, s->timeout_s, s->n_outputs, s->outputs};
        return reward_external_start(&r->external, &x, err);
    }
    if (s->type == REWARD_PLUGIN) return reward_plugin_open(&r->plugin, s->name, s->path, s->config_json, err);
    return PONDER_OK;
}

int reward_create(Reward **out, const RewardSpec *spec, PonderError *err) {
    *out = NULL;
    int rc = reward_spec_validate(spec, err);
    if (rc) return rc;
    Reward *r = calloc(1, sizeof *r);
    if (!r) return ponder_error(err, PONDER_ERR_NOMEM, "reward \"%s\": out of memory", spec->name);
    r->spec = *spec;
    snprintf(r->name, sizeof r->name, "%s", spec->name);
    r->spec.name = r->name;
    r->spec.command = NULL, r->spec.argv = NULL, r->spec.path = NULL, r->spec.config_json = NULL;
    set_outputs(r, spec);
    rc = start_backend(r, spec, err);
    if (rc) {
        free(r);
        return rc;
    }
    *out = r;
    return PONDER_OK;
}

int reward_n_outputs(const Reward *r) { return r->n_outputs; }
const char *reward_output_name(const Reward *r, int k) { return r->output_names[k]; }
double reward_output_weight(const Reward *r, int k) { return r->output_weights[k]; }
const char *reward_name(const Reward *r) { return r->name; }

void reward_free(Reward *r) {
    if (!r) return;
    reward_external_free(r->external);
    reward_plugin_close(r->plugin);
    free(r);
}

/* ---------------------------------------------------------------- score ----*/

/* overlong and length in tokens need the rollout's token count. */
static int need_tokens(const Reward *r, int64_t i, PonderError *err) {
    return ponder_error(err, PONDER_ERR_CONFIG,
                        "reward \"%s\" (%s) needs the completion's token count, but sample %lld has none "
                        "(completion_tokens = -1)",
                        r->name, reward_type_name(r->spec.type), (long long)i);
}

static int score_one(const Reward *r, const RewardInput *in, int64_t i, RewardValue *out, PonderError *err) {
    const RewardSpec *s = &r->spec;
    switch (s->type) {
    case REWARD_MATH_VERIFY: {
        int rc = reward_math_verify(in->completion, in->answer, s->tolerance, out, err);
        if (rc) ponder_error_prefix(err, "reward \"%s\", sample %lld: ", r->name, (long long)i);
        return rc;
    }
    case REWARD_EXACT:
        *out = reward_exact(in->completion, in->answer);
        return PONDER_OK;
    case REWARD_THINK_FORMAT:
        *out = reward_think_format(in->completion);
        return PONDER_OK;
    case REWARD_OVERLONG:
        if (in->completion_tokens < 0) return need_tokens(r, i, err);
        *out = reward_overlong(in->completion_tokens, s->max_len, s->buffer, s->factor);
        return PONDER_OK;
    case REWARD_LENGTH:
        if (s->unit == REWARD_LENGTH_STEPS) {
            *out = reward_length(reward_count_steps(in->completion), s->cap);
            return PONDER_OK;
        }
        if (in->completion_tokens < 0) return need_tokens(r, i, err);
        *out = reward_length(in->completion_tokens, s->cap);
        return PONDER_OK;
    default:
        return ponder_error(err, PONDER_ERR_RUNTIME, "reward \"%s\": type %s is not a built-in", r->name,
                            reward_type_name(s->type));
    }
}

int reward_score(Reward *r, const RewardInput *in, int64_t n, RewardValue *out, PonderError *err) {
    if (r->external) return reward_external_score(r->external, in, n, out, err);
    if (r->plugin) return reward_plugin_score(r->plugin, in, n, out, err);
    for (int64_t i = 0; i < n; i++) {
        int rc = score_one(r, &in[i], i, &out[i], err);
        if (rc) return rc;
    }
    return PONDER_OK;
}
