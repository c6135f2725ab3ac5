/* rewards/plugin_abi.h — the C ABI of a `plugin` reward: a shared object that
 * ponder loads with dlopen and calls once per sample.
 *
 * This header is all a plugin needs; it uses only plain C types so a plugin can
 * be built from C, C++ (wrap in extern "C"), Rust, Zig, ... without ponder's
 * sources. Build it with e.g. `cc -shared -fPIC -O2 -o my_reward.so my_reward.c`.
 *
 * A plugin exports these symbols (C linkage, default visibility):
 *
 *   int   ponder_reward_abi_version(void);
 *         Returns PONDER_REWARD_ABI_VERSION as the plugin saw it at build time.
 *         ponder refuses a plugin whose version differs from its own.
 *
 *   void *ponder_reward_init(const char *config_json);
 *         Called once at start with the reward's `config` as JSON text ("{}"
 *         when none). Returns the plugin's state, or NULL on failure. A
 *         stateless plugin returns any non-NULL pointer (e.g. of a static).
 *
 *   int   ponder_reward_score(void *state, const char *prompt, const char *completion,
 *                             const char *row_json, const char *answer, double *out_reward);
 *         Scores one sample. prompt and completion are UTF-8, never NULL;
 *         row_json is the dataset row as a JSON object text, or NULL; answer is
 *         the reference answer, or NULL. Returns 0 and sets *out_reward (a
 *         finite number), returns 1 for "not applicable", or a negative value
 *         on error (ponder stops the run and reports it).
 *
 *   void  ponder_reward_free(void *state);
 *         Called once at shutdown.
 *
 *   const char *ponder_reward_last_error(void *state);   (optional)
 *         A message for the last negative return, quoted in ponder's error.
 *
 * ponder calls the plugin from one thread at a time; the strings it passes are
 * valid only during the call. */
#ifndef PONDER_REWARDS_PLUGIN_ABI_H
#define PONDER_REWARDS_PLUGIN_ABI_H

#define PONDER_REWARD_ABI_VERSION 1

/* Return codes of ponder_reward_score. */
#define PONDER_REWARD_OK 0
#define PONDER_REWARD_NOT_APPLICABLE 1

#ifdef __cplusplus
extern "C" {
#endif

int ponder_reward_abi_version(void);
void *ponder_reward_init(const char *config_json);
int ponder_reward_score(void *state, const char *prompt, const char *completion, const char *row_json,
                        const char *answer, double *out_reward);
void ponder_reward_free(void *state);
const char *ponder_reward_last_error(void *state); /* optional */

#ifdef __cplusplus
}
#endif

#endif
