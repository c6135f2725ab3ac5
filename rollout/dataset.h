/* rollout/dataset.h — the one item type the trainer consumes, from a built-in
 * task or a JSONL file.
 *
 * Position is one int64 cursor. For a finite data set of size N, global index
 * i is item perm_{seed, e}(i mod N) of epoch e = i / N, where perm is a
 * pseudo-random permutation of [0, N) computed on the fly (a keyed Feistel
 * network with cycle walking): no state besides the cursor, so resume is exact
 * and lookups are thread-safe. Every epoch visits every item exactly once.
 *
 * JSONL files (one JSON object per line):
 *   - The whole file is read and validated at open, so a bad row fails before
 *     training starts. Errors read "<path>:<line>: <reason>", e.g.
 *     "data/train.jsonl:3: missing key 'prompt'"; syntax errors carry jansson's
 *     message and column.
 *   - Blank (whitespace-only) lines are skipped wherever they are; they count
 *     for line numbers but are not items. A file with no items is an error.
 *   - prompt_key: required, a string. response_key ("" = none): when named, a
 *     string in every row. answer_key ("" = none): when named, a string or a
 *     number in every row; numbers become text (integers in decimal, reals in
 *     the shortest form that reads back exactly, e.g. 0.1 -> "0.1", 2.0 -> "2").
 *   - Duplicate keys in a row are an error (which one would the reward see?).
 *   - row_json is the whole row, compact, keys in file order: every other column
 *     reaches the reward functions. An integer "difficulty" column, if present,
 *     fills DataItem.difficulty (else 0). */
#ifndef PONDER_ROLLOUT_DATASET_H
#define PONDER_ROLLOUT_DATASET_H

#include <stdint.h> /* int64_t, uint64_t */

#include "util/error.h" /* PonderError */

/* Which side of the held-out split an item belongs to (built-in tasks). */
typedef enum { DATA_SPLIT_TRAIN = 0, DATA_SPLIT_EVAL = 1 } DataSplit;

typedef struct ArithSpec ArithSpec; /* rollout/task_arith.h */

typedef struct DataItem {
    char *prompt;
    char *response; /* full target completion; NULL for RL-only data */
    char *answer;   /* NULL when the data set names no answer */
    char *row_json; /* the whole row as JSON text (for rewards), or NULL */
    int difficulty; /* arith: max operand digits; JSONL: "difficulty" column or 0 */
} DataItem;

typedef struct Dataset Dataset; /* opaque */

/* Built-in arith items of one split. size > 0: the items arith_item(seed, 0 ..
 * size-1); size 0: an unbounded stream where index i is arith_item(seed, i)
 * (already random, so dataset_get ignores shuffle_seed for it). row_json is
 * {"prompt","response","answer","a","op","b","difficulty"}. */
int dataset_open_arith(Dataset **out, const ArithSpec *spec, uint64_t seed, DataSplit split, int64_t size,
                       PonderError *err);

/* Loads and validates a JSONL file (rules at the top of this file). */
int dataset_open_jsonl(Dataset **out, const char *path, const char *prompt_key, const char *response_key,
                       const char *answer_key, PonderError *err);

/* Number of items, or -1 for an unbounded stream. */
int64_t dataset_size(const Dataset *d);

/* The item at global cursor `index` (>= 0) in shuffled epoch order (see top).
 * On success out holds fresh copies: the caller calls data_item_free(out). */
int dataset_get(const Dataset *d, uint64_t shuffle_seed, int64_t index, DataItem *out, PonderError *err);

/* The item at position i in file/generation order, 0 <= i < size (any i >= 0
 * for a stream): for evaluation, which wants a fixed order. */
int dataset_at(const Dataset *d, int64_t i, DataItem *out, PonderError *err);

/* Position (in file/generation order) that global cursor `index` maps to. */
int64_t dataset_position(const Dataset *d, uint64_t shuffle_seed, int64_t index);

/* Frees out's strings and zeroes it; safe on a zeroed item. */
void data_item_free(DataItem *it);
void dataset_free(Dataset *d);

#endif
