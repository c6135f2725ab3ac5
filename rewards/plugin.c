/* rewards/plugin.c — the `plugin` reward: a shared object with the C ABI of
 * rewards/plugin_abi.h, loaded with dlopen. */
#include "rewards/reward_plugin.h"

#include <dlfcn.h>  /* dlopen, dlsym, dlclose, dlerror */
#include <math.h>   /* isfinite */
#include <stdio.h>  /* snprintf */
#include <stdlib.h> /* calloc, free, malloc */
#include <string.h> /* strchr, strdup, strlen */

#include "rewards/plugin_abi.h" /* PONDER_REWARD_ABI_VERSION, return codes */

typedef int (*AbiVersionFn)(void);
typedef void *(*InitFn)(const char *config_json);
typedef int (*ScoreFn)(void *state, const char *prompt, const char *completion, const char *row_json,
                       const char *answer, double *out_reward);
typedef void (*FreeFn)(void *state);
typedef const char *(*LastErrorFn)(void *state);

struct RewardPlugin {
    char name[REWARD_NAME_MAX];
    char *path;
    void *handle;
    void *state;
    ScoreFn score;
    FreeFn free_state;
    LastErrorFn last_error; /* optional */
};

/* dlsym for a function; POSIX guarantees the object-to-function conversion. */
static void *lookup(void *handle, const char *symbol) {
    dlerror();
    return dlsym(handle, symbol);
}

static int missing(const RewardPlugin *p, const char *symbol, PonderError *err) {
    return ponder_error(err, PONDER_ERR_CONFIG,
                        "plugin reward \"%s\": %s does not export the required symbol %s (a plugin defines "
                        "ponder_reward_abi_version, ponder_reward_init, ponder_reward_score and ponder_reward_free: "
                        "see rewards/plugin_abi.h)",
                        p->name, p->path, symbol);
}

/* dlopen searches the library path for a bare name; a config means a file. */
static char *file_path(const char *path) {
    if (strchr(path, '/')) return strdup(path);
    char *p = malloc(strlen(path) + 3);
    if (p) snprintf(p, strlen(path) + 3, "./%s", path);
    return p;
}

static int check_version(RewardPlugin *p, PonderError *err) {
    AbiVersionFn version = (AbiVersionFn)lookup(p->handle, "ponder_reward_abi_version");
    if (!version) return missing(p, "ponder_reward_abi_version", err);
    int v = version();
    if (v != PONDER_REWARD_ABI_VERSION)
        return ponder_error(err, PONDER_ERR_CONFIG,
                            "plugin reward \"%s\": %s was built for reward ABI version %d, but this ponder speaks "
                            "version %d: rebuild the plugin against this ponder's rewards/plugin_abi.h",
                            p->name, p->path, v, PONDER_REWARD_ABI_VERSION);
    return PONDER_OK;
}

static int bind_and_init(RewardPlugin *p, const char *config_json, PonderError *err) {
    InitFn init = (InitFn)lookup(p->handle, "ponder_reward_init");
    if (!init) return missing(p, "ponder_reward_init", err);
    p->score = (ScoreFn)lookup(p->handle, "ponder_reward_score");
    if (!p->score) return missing(p, "ponder_reward_score", err);
    p->free_state = (FreeFn)lookup(p->handle, "ponder_reward_free");
    if (!p->free_state) return missing(p, "ponder_reward_free", err);
    p->last_error = (LastErrorFn)lookup(p->handle, "ponder_reward_last_error");
    const char *config = config_json ? config_json : "{}";
    p->state = init(config);
    if (!p->state)
        return ponder_error(err, PONDER_ERR_CONFIG, "plugin reward \"%s\": ponder_reward_init in %s failed (returned "
                            "NULL) for config %.300s", p->name, p->path, config);
    return PONDER_OK;
}

int reward_plugin_open(RewardPlugin **out, const char *name, const char *path, const char *config_json,
                       PonderError *err) {
    *out = NULL;
    RewardPlugin *p = calloc(1, sizeof *p);
    if (p) p->path = file_path(path ? path : "");
    if (!p || !p->path) {
        free(p);
        return ponder_error(err, PONDER_ERR_NOMEM, "plugin reward: out of memory");
    }
    snprintf(p->name, sizeof p->name, "%s", name ? name : "plugin");
    p->handle = dlopen(p->path, RTLD_NOW | RTLD_LOCAL);
    int rc = p->handle ? PONDER_OK
                       : ponder_error(err, PONDER_ERR_IO, "plugin reward \"%s\": cannot load %s: %s", p->name, p->path,
                                      dlerror());
    if (!rc) rc = check_version(p, err);
    if (!rc) rc = bind_and_init(p, config_json, err);
    if (rc) {
        reward_plugin_close(p);
        return rc;
    }
    *out = p;
    return PONDER_OK;
}

static int score_error(const RewardPlugin *p, int code, int64_t i, PonderError *err) {
    const char *why = p->last_error ? p->last_error(p->state) : NULL;
    return ponder_error(err, PONDER_ERR_RUNTIME, "plugin reward \"%s\" (%s): ponder_reward_score returned %d for "
                        "sample %lld%s%.500s",
                        p->name, p->path, code, (long long)i, why ? ": " : "", why ? why : "");
}

int reward_plugin_score(RewardPlugin *p, const RewardInput *in, int64_t n, RewardValue *out, PonderError *err) {
    for (int64_t i = 0; i < n; i++) {
        double v = 0.0;
        int rc = p->score(p->state, in[i].prompt ? in[i].prompt : "", in[i].completion ? in[i].completion : "",
                          in[i].row_json, in[i].answer, &v);
        if (rc == PONDER_REWARD_NOT_APPLICABLE) {
            out[i] = reward_not_applicable();
        } else if (rc != PONDER_REWARD_OK) {
            return score_error(p, rc, i, err);
        } else if (!isfinite(v)) {
            return ponder_error(err, PONDER_ERR_RUNTIME, "plugin reward \"%s\" (%s): ponder_reward_score gave %g for "
                                "sample %lld (a reward must be finite; return 1 for not applicable)",
                                p->name, p->path, v, (long long)i);
        } else {
            out[i] = reward_value(v);
        }
    }
    return PONDER_OK;
}

void reward_plugin_close(RewardPlugin *p) {
    if (!p) return;
    if (p->state && p->free_state) p->free_state(p->state);
    if (p->handle) dlclose(p->handle);
    free(p->path);
    free(p);
}
