/* tests/data/rewards/plugin_ok.c — a well-formed reward plugin: `scale` when
 * the completion contains the answer, else 0; not applicable without an
 * answer; an error for the completion "fail"; NaN for "nan". The config
 * {"scale": x} sets scale; {"fail_init": true} makes init fail. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rewards/plugin_abi.h"

typedef struct State {
    double scale;
    char error[128];
} State;

int ponder_reward_abi_version(void) { return PONDER_REWARD_ABI_VERSION; }

void *ponder_reward_init(const char *config_json) {
    if (strstr(config_json, "fail_init")) return NULL;
    State *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->scale = 1.0;
    const char *k = strstr(config_json, "\"scale\":");
    if (k) s->scale = strtod(k + strlen("\"scale\":"), NULL);
    return s;
}

int ponder_reward_score(void *state, const char *prompt, const char *completion, const char *row_json,
                        const char *answer, double *out_reward) {
    State *s = state;
    (void)prompt, (void)row_json;
    if (strcmp(completion, "fail") == 0) {
        snprintf(s->error, sizeof s->error, "the plugin refuses to score \"%s\"", completion);
        return -2;
    }
    if (strcmp(completion, "nan") == 0) {
        *out_reward = __builtin_nan("");
        return PONDER_REWARD_OK;
    }
    if (!answer) return PONDER_REWARD_NOT_APPLICABLE;
    *out_reward = strstr(completion, answer) ? s->scale : 0.0;
    return PONDER_REWARD_OK;
}

void ponder_reward_free(void *state) { free(state); }

const char *ponder_reward_last_error(void *state) { return ((State *)state)->error; }
