/* rewards/reward.h — what a reward is, the built-in rewards, and one reward
 * object that hides which kind it is.
 *
 * A reward maps one sample — decoded completion, prompt, dataset row, reference
 * answer — to a number or to *not applicable* (DESIGN: Rewards). Rewards never
 * see tensors: the rollout decodes the text and counts the completion's tokens
 * before calling in. Not applicable is explicit (RewardValue.applicable) rather
 * than NaN, so a NaN produced by a bug can never pass for "no opinion".
 *
 * Built-ins (each a pure function, tested directly):
 *   math_verify   1 when the completion's final answer equals the reference
 *                 mathematically, else 0; n/a without a reference.
 *   exact         1 when the final answer equals the reference as trimmed
 *                 text, else 0; n/a without a reference.
 *   think_format  1 when the completion is <think>…</think> <answer>…</answer>
 *                 (TON's format reward), else 0.
 *   overlong      DAPO's soft overlong punishment, 0 down to -factor.
 *   length        completion tokens or reasoning steps over a cap, in [0, 1]
 *                 (RLSP's exploration reward).
 * Two more kinds run user code: `external` (a subprocess speaking JSON lines,
 * rewards/reward_external.h) and `plugin` (a shared object, rewards/plugin_abi.h).
 * README.md in this folder documents the rules each built-in follows. */
#ifndef PONDER_REWARDS_REWARD_H
#define PONDER_REWARDS_REWARD_H

#include <stdbool.h> /* bool */
#include <stddef.h>  /* size_t */
#include <stdint.h>  /* int64_t */

#include "util/error.h" /* PonderError */

/* ---------------------------------------------------------------- values ---*/

typedef struct RewardValue {
    double value;    /* meaningful only when applicable */
    bool applicable; /* false: this reward has no opinion on this sample */
} RewardValue;

static inline RewardValue reward_value(double value) { return (RewardValue){value, true}; }
static inline RewardValue reward_not_applicable(void) { return (RewardValue){0.0, false}; }

/* One sample as the rewards see it. Strings are NUL-terminated UTF-8. */
typedef struct RewardInput {
    const char *prompt;        /* decoded prompt; NULL reads as "" */
    const char *completion;    /* decoded completion WITHOUT its eos/stop token; NULL reads as "" */
    const char *row_json;      /* the dataset row as a JSON object text, or NULL (built-in task) */
    const char *answer;        /* the reference answer, or NULL when there is none */
    int64_t completion_tokens; /* the completion's length in tokens; -1 when unknown */
} RewardInput;

/* ---------------------------------------------------------------- specs ----*/

typedef enum RewardType {
    REWARD_MATH_VERIFY,
    REWARD_EXACT,
    REWARD_THINK_FORMAT,
    REWARD_OVERLONG,
    REWARD_LENGTH,
    REWARD_EXTERNAL,
    REWARD_PLUGIN,
    REWARD_TYPE_COUNT
} RewardType;

typedef enum RewardLengthUnit {
    REWARD_LENGTH_TOKENS, /* completion_tokens */
    REWARD_LENGTH_STEPS,  /* non-blank lines inside the think block */
} RewardLengthUnit;

#define REWARD_NAME_MAX 64    /* a component name, NUL included */
#define REWARD_MAX_OUTPUTS 16 /* named outputs of one external reward */

/* Everything a config can say about one reward. Start from reward_spec_defaults
 * and set the fields of the chosen type; the others are ignored. Strings are
 * borrowed: they must outlive reward_create only (the reward copies them). */
typedef struct RewardSpec {
    const char *name; /* component name in logs; must be unique within a set */
    RewardType type;
    double weight; /* weight in the combined reward (default 1) */
    /* math_verify */
    double tolerance; /* relative, used only when a side is a non-integral decimal (default 1e-6) */
    /* overlong: 0 up to max_len - buffer, linear to -factor at max_len, -factor beyond */
    int64_t max_len, buffer;
    double factor; /* default 1 */
    /* length: min(count, cap) / cap */
    RewardLengthUnit unit;
    int64_t cap;
    /* external: exactly one of command (run as /bin/sh -c command) or argv
     * (NULL-terminated, argv[0] looked up in PATH) */
    const char *command;
    const char *const *argv;
    double timeout_s; /* wait for each answer line (default 30) */
    /* external: named outputs ({"rewards": {name: value}}); 0 = one {"reward": value} */
    int n_outputs;
    const char *outputs[REWARD_MAX_OUTPUTS];
    double output_weights[REWARD_MAX_OUTPUTS];
    /* plugin */
    const char *path;        /* the shared object */
    const char *config_json; /* handed to ponder_reward_init; NULL reads as "{}" */
} RewardSpec;

/* Fills the documented defaults for type (weight 1, tolerance 1e-6, factor 1,
 * timeout 30 s, unit tokens; max_len, buffer and cap 0 = must be set). */
void reward_spec_defaults(RewardSpec *spec, RewardType type, const char *name);

/* Checks a spec's fields for its type; the message names the reward and field. */
int reward_spec_validate(const RewardSpec *spec, PonderError *err);

/* "math_verify", "exact", ... and back; an unknown name lists the known ones. */
const char *reward_type_name(RewardType type);
int reward_type_from_name(const char *name, RewardType *type, PonderError *err);

/* ---------------------------------------------------------------- built-ins */

/* The final answer in text: the content of the last complete
 * <answer>…</answer> (a \boxed{} inside it is unwrapped), else of the last
 * \boxed{…} whose braces balance, else the rest of the line after the last
 * "####". Returns false when there is none. The span points into text. */
bool reward_extract_answer(const char *text, const char **start, size_t *len);

/* Whether two answer texts are mathematically equal (README: math_verify).
 * Fails only for lack of memory. */
int reward_math_equal(const char *a, const char *b, double tolerance, bool *equal, PonderError *err);

/* math_verify: 1 / 0, n/a when answer is NULL. The reference answer goes through
 * reward_extract_answer too (so "#### 72" or "\boxed{72}" work) and is used
 * whole when it has no marker. A completion without a final answer scores 0. */
int reward_math_verify(const char *completion, const char *answer, double tolerance, RewardValue *out,
                       PonderError *err);

/* exact: the completion's final answer (or the whole completion when it has
 * none) equals the reference, both trimmed of ASCII whitespace; n/a without one. */
RewardValue reward_exact(const char *completion, const char *answer);

/* think_format: 1 iff the completion fully matches
 * <think>.*?</think>\s*<answer>.*?</answer> (dot matches newline, \s is ASCII
 * whitespace), trailing ASCII whitespace allowed, nothing before <think>. */
RewardValue reward_think_format(const char *completion);

/* overlong: 0 when tokens <= max_len - buffer, ((max_len - buffer) - tokens)
 * / buffer * factor up to max_len, -factor beyond. */
RewardValue reward_overlong(int64_t tokens, int64_t max_len, int64_t buffer, double factor);

/* Non-blank lines between the first <think> and the next </think> (or the end
 * of the text when the block is unclosed, as in a truncated thought); 0 when
 * there is no <think>. */
int64_t reward_count_steps(const char *completion);

/* length: min(count, cap) / cap, for cap > 0 (reward_spec_validate checks it). */
RewardValue reward_length(int64_t count, int64_t cap);

/* ---------------------------------------------------------------- objects --*/

typedef struct Reward Reward; /* one configured reward of any type */

/* Builds a reward from a spec; starts the subprocess of an external reward and
 * loads a plugin's shared object, so errors in either show up here. */
int reward_create(Reward **out, const RewardSpec *spec, PonderError *err);

/* How many values the reward gives per sample (1, or an external's outputs),
 * and their names ("name", or "name.output" for an external's outputs). */
int reward_n_outputs(const Reward *r);
const char *reward_output_name(const Reward *r, int k);
double reward_output_weight(const Reward *r, int k);
const char *reward_name(const Reward *r);

/* Scores n samples: out[k * n + i] is output k of sample i. */
int reward_score(Reward *r, const RewardInput *in, int64_t n, RewardValue *out, PonderError *err);

/* Stops a subprocess / unloads a plugin. NULL is fine. */
void reward_free(Reward *r);

#endif
