/* rewards/reward_external.h — an `external` reward: a user command, started
 * once per process, that scores samples over a line-based JSON protocol.
 *
 * Protocol (one JSON object per line, UTF-8, in both directions):
 *   ponder  -> stdin   {"prompt": "...", "completion": "...", "row": {...} | null,
 *                       "answer": "..." | null}
 *   stdout  -> ponder  {"reward": number | null}                 (one output)
 *                      {"rewards": {"name": number | null, ...}}  (named outputs)
 * null means not applicable. Answers come back in request order, one line per
 * request; ponder may write several requests before reading (batching), and
 * reads while it writes, so a script that answers each line as it reads it
 * never blocks. The script must flush stdout after each line. Its stderr is
 * captured: the last bytes of it are quoted in ponder's error messages.
 *
 * Failures are errors that name the reward, the command and the offending line
 * (quoted, truncated): a process that exits or dies (exit status or signal
 * name), closes its output, hangs (no answer line within timeout_s), or answers
 * a line that is not JSON or has the wrong shape. After any failure the process
 * is killed and the reward refuses further calls: the protocol is out of step,
 * and the run is expected to stop (after its checkpoint).
 *
 * The child runs in its own process group, so a Ctrl-C at the terminal reaches
 * ponder alone, which then shuts the child down; on a timeout the whole group
 * is killed, so a shell wrapper's children go too. */
#ifndef PONDER_REWARDS_REWARD_EXTERNAL_H
#define PONDER_REWARDS_REWARD_EXTERNAL_H

#include <stdint.h>    /* int64_t */
#include <sys/types.h> /* pid_t */

#include "rewards/reward.h" /* RewardInput, RewardValue */
#include "util/error.h"     /* PonderError */

typedef struct RewardExternal RewardExternal;

typedef struct RewardExternalSpec {
    const char *name;         /* the reward's name, for messages */
    const char *command;      /* run as /bin/sh -c command ... */
    const char *const *argv;  /* ... or this NULL-terminated argv (argv[0] searched in PATH) */
    double timeout_s;         /* limit on the wait for each answer line, > 0 */
    int n_outputs;            /* 0: expect {"reward": x}; else {"rewards": {...}} with these names */
    const char *const *outputs;
} RewardExternalSpec;

/* Starts the process. Fails when it cannot be started (e.g. argv[0] not found). */
int reward_external_start(RewardExternal **out, const RewardExternalSpec *spec, PonderError *err);

/* Scores n samples: out[k * n + i] is output k of sample i (k = 0 alone for a
 * single-output reward). A missing named output is an error; extra names in an
 * answer are ignored. */
int reward_external_score(RewardExternal *x, const RewardInput *in, int64_t n, RewardValue *out, PonderError *err);

/* Closes the child's stdin and waits up to grace_s for it to exit, then kills
 * its process group. Returns an error when the child had to be killed or exited
 * with a non-zero status or a signal; the process is gone either way. */
int reward_external_stop(RewardExternal *x, double grace_s, PonderError *err);

/* The child's pid, or -1 once it is gone (tests). */
pid_t reward_external_pid(const RewardExternal *x);

/* Stops the child (grace 1 s, errors ignored) and frees. NULL is fine. */
void reward_external_free(RewardExternal *x);

#endif
