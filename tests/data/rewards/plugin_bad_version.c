/* tests/data/rewards/plugin_bad_version.c — complete, but built for a future ABI. */
#include <stdlib.h>

#include "rewards/plugin_abi.h"

int ponder_reward_abi_version(void) { return PONDER_REWARD_ABI_VERSION + 1; }
void *ponder_reward_init(const char *config_json) { return (void *)config_json; }
int ponder_reward_score(void *state, const char *prompt, const char *completion, const char *row_json,
                        const char *answer, double *out_reward) {
    *out_reward = 1.0;
    return 0;
}
void ponder_reward_free(void *state) {}
