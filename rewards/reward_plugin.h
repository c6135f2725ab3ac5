/* rewards/reward_plugin.h — loading a `plugin` reward (rewards/plugin_abi.h).
 *
 * The shared object is opened with RTLD_NOW | RTLD_LOCAL, so an unresolved
 * symbol inside it fails at load time, not in the middle of a run, and two
 * plugins never see each other's symbols. The ABI version is checked before
 * any other symbol is used. */
#ifndef PONDER_REWARDS_REWARD_PLUGIN_H
#define PONDER_REWARDS_REWARD_PLUGIN_H

#include <stdint.h> /* int64_t */

#include "rewards/reward.h" /* RewardInput, RewardValue */
#include "util/error.h"     /* PonderError */

typedef struct RewardPlugin RewardPlugin;

/* Opens path, checks the ABI version and symbols, and calls init with
 * config_json (NULL reads as "{}"). name is the reward's, for messages. */
int reward_plugin_open(RewardPlugin **out, const char *name, const char *path, const char *config_json,
                       PonderError *err);

/* Scores n samples into out[i]. */
int reward_plugin_score(RewardPlugin *p, const RewardInput *in, int64_t n, RewardValue *out, PonderError *err);

/* Calls the plugin's free and unloads it. NULL is fine. */
void reward_plugin_close(RewardPlugin *p);

#endif
