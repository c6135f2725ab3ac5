/* tests/data/rewards/plugin_no_score.c — the right version, but no ponder_reward_score. */
#include "rewards/plugin_abi.h"

int ponder_reward_abi_version(void) { return PONDER_REWARD_ABI_VERSION; }
void *ponder_reward_init(const char *config_json) { return (void *)config_json; }
void ponder_reward_free(void *state) {}
