/* rollout/task_arith.h — the built-in `arith` task: multi-digit addition and
 * subtraction with a worked, digit-by-digit chain of thought.
 *
 * Items are a pure function of (spec, seed, index, split), so a run needs no
 * data files and an item can be regenerated from its index alone (resume).
 *
 * Format (kept compact so a 4-layer, 128-wide char model learns it in minutes):
 *   prompt    "<a><op><b>="                        e.g. "347+85="
 *   thought   one line per digit column, least significant first, the shorter
 *             operand padded with 0:
 *     +       "<da>+<db>[+1]=<sum>\n"   "+1" iff the column below carried
 *             (its sum was >= 10); the last line's sum may be two digits.
 *     -       "[1]<da>-<db>[-1]=<d>\n"  a leading "1" iff this column borrows
 *             (it reads 1<da>), "-1" iff the column below borrowed.
 *             When a < b the thought first states the swap "<a><<b>\n" and
 *             the columns compute b - a; the answer is then "-" + (b - a).
 *   answer    the decimal result, no leading zeros, "-" when negative.
 *   response  "<think>" thought "</think><answer>" answer "</answer>"
 * Examples:
 *   347+85=  <think>7+5=12\n4+8+1=13\n3+0+1=4\n</think><answer>432</answer>
 *   432-85=  <think>12-5=7\n13-8-1=4\n4-0-1=3\n</think><answer>347</answer>
 *   85-347=  <think>85<347\n7-5=2\n14-8=6\n3-0-1=2\n</think><answer>-262</answer>
 * (tests/test_arith.c checks these three strings verbatim.)
 *
 * Held-out split: a problem (a, op, b) is EVAL iff arith_problem_hash(a, op, b)
 * % 10 == 0 — a fixed hash of the problem, not of the seed, index or RNG. Train
 * generation redraws until it gets a TRAIN problem and eval generation until
 * EVAL, so no problem can appear in both, whatever the seeds, sizes or digit
 * ranges of the two sides. The hash is frozen: changing it changes the
 * held-out set and invalidates every past evaluation. */
#ifndef PONDER_ROLLOUT_TASK_ARITH_H
#define PONDER_ROLLOUT_TASK_ARITH_H

#include <stdint.h> /* int64_t, uint64_t */

#include "rollout/dataset.h" /* DataSplit */
#include "util/error.h"      /* PonderError */

/* Operands fit int64 with their sum up to 18 digits (the config schema's range). */
#define ARITH_MAX_DIGITS 18

struct ArithSpec {
    int min_digits, max_digits; /* digits per operand, 1 <= min <= max <= 18 */
    char ops[8];                /* non-empty set of "+-", each at most once, NUL-terminated */
};
typedef struct ArithSpec ArithSpec;

typedef struct ArithItem {
    char prompt[64];
    char thought[512];
    char answer[32];
    char response[640]; /* "<think>" thought "</think><answer>" answer "</answer>" */
    int difficulty;     /* max digits of the two operands */
    long long a, b;     /* operands as in the prompt (a - b may be negative) */
    char op;            /* '+' or '-' */
} ArithItem;

/* 0 when the spec is usable, else an error naming the field. */
int arith_spec_validate(const ArithSpec *spec, PonderError *err);

/* The frozen problem hash and the split it implies (see top of file). */
uint64_t arith_problem_hash(long long a, char op, long long b);
DataSplit arith_problem_split(long long a, char op, long long b);

/* Fills *out with item `index` (>= 0) of `split`. Deterministic in (spec,
 * seed, index, split). Fails on an invalid spec, or if no problem of that split
 * turned up in many draws (possible only for tiny problem spaces). */
int arith_item(const ArithSpec *spec, uint64_t seed, int64_t index, DataSplit split, ArithItem *out,
               PonderError *err);

/* Fills the prompt, thought, answer and response for a given problem (the part
 * of arith_item after the draw; also lets tests and tools format any problem). */
void arith_format(long long a, char op, long long b, ArithItem *out);

/* Grader helper: 1 if text (surrounding whitespace allowed, optional sign,
 * decimal digits) is an integer equal to the item's answer, else 0. */
int arith_answer_matches(const ArithItem *item, const char *text);

#endif
