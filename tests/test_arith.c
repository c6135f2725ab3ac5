/* tests/test_arith.c — the built-in arith task: spec validation, the exact
 * documented format, determinism, arithmetic correctness, a line-by-line
 * check of the worked thought, and that the held-out split is disjoint. */
#include <criterion/criterion.h>

#include <stdio.h>  /* sscanf, snprintf */
#include <stdlib.h> /* calloc, free, strtoll */
#include <string.h> /* memcmp, strcmp, strstr, strchr */

#include "model/tokenizer.h"
#include "rollout/task_arith.h"

/* ---------------------------------------------------------------- helpers ---*/

static ArithSpec spec_of(int min_digits, int max_digits, const char *ops) {
    ArithSpec s = {min_digits, max_digits, {0}};
    snprintf(s.ops, sizeof s.ops, "%s", ops);
    return s;
}

static ArithItem item_of(const ArithSpec *s, uint64_t seed, int64_t index, DataSplit split) {
    ArithItem it;
    PonderError err = {0};
    cr_assert_eq(arith_item(s, seed, index, split, &it, &err), 0, "%s", err.msg);
    return it;
}

static void expect_spec_error(ArithSpec s, const char *needle) {
    PonderError err = {0};
    cr_assert_eq(arith_spec_validate(&s, &err), PONDER_ERR_CONFIG, "expected an error containing \"%s\"", needle);
    cr_assert(strstr(err.msg, needle), "message \"%s\"\n  lacks \"%s\"", err.msg, needle);
}

static int digits_of(long long x) {
    int d = 1;
    while (x >= 10) x /= 10, d++;
    return d;
}

static int digit_at(long long x, int i) {
    while (i-- > 0) x /= 10;
    return (int)(x % 10);
}

/* ---------------------------------------------------------------- spec ------*/

Test(arith, spec_validation) {
    PonderError err = {0};
    ArithSpec ok[] = {spec_of(1, 1, "+"), spec_of(1, 18, "+-"), spec_of(3, 5, "-+"), spec_of(2, 2, "-")};
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) cr_assert_eq(arith_spec_validate(&ok[i], &err), 0, "%s", err.msg);
    expect_spec_error(spec_of(0, 3, "+"), "1 <= min_digits <= max_digits <= 18, got min_digits 0, max_digits 3");
    expect_spec_error(spec_of(4, 3, "+"), "got min_digits 4, max_digits 3");
    expect_spec_error(spec_of(1, 19, "+"), "max_digits 19");
    expect_spec_error(spec_of(1, 3, ""), "ops must be a non-empty set of \"+-\"");
    expect_spec_error(spec_of(1, 3, "+*"), "arith: ops \"+*\": '*' is not supported (use + and -)");
    expect_spec_error(spec_of(1, 3, "++"), "'+' appears twice");
    ArithSpec unterminated = spec_of(1, 3, "+");
    memset(unterminated.ops, '+', sizeof unterminated.ops);
    expect_spec_error(unterminated, "ops must be a non-empty set");
    ArithItem it;
    ArithSpec good = spec_of(1, 3, "+");
    cr_assert_neq(arith_item(&good, 1, -1, DATA_SPLIT_TRAIN, &it, &err), 0);
    cr_assert(strstr(err.msg, "index -1 is negative"), "%s", err.msg);
}

/* ---------------------------------------------------------------- format ----*/

static void expect_format(long long a, char op, long long b, const char *prompt, const char *response) {
    ArithItem it;
    arith_format(a, op, b, &it);
    cr_assert_str_eq(it.prompt, prompt);
    cr_assert_str_eq(it.response, response);
    char rebuilt[700];
    snprintf(rebuilt, sizeof rebuilt, "<think>%s</think><answer>%s</answer>", it.thought, it.answer);
    cr_assert_str_eq(it.response, rebuilt);
}

Test(arith, documented_examples) {
    expect_format(347, '+', 85, "347+85=", "<think>7+5=12\n4+8+1=13\n3+0+1=4\n</think><answer>432</answer>");
    expect_format(432, '-', 85, "432-85=", "<think>12-5=7\n13-8-1=4\n4-0-1=3\n</think><answer>347</answer>");
    expect_format(85, '-', 347, "85-347=",
                  "<think>85<347\n7-5=2\n14-8=6\n3-0-1=2\n</think><answer>-262</answer>");
}

Test(arith, edge_formats) {
    expect_format(0, '+', 0, "0+0=", "<think>0+0=0\n</think><answer>0</answer>");
    expect_format(999, '+', 1, "999+1=", "<think>9+1=10\n9+0+1=10\n9+0+1=10\n</think><answer>1000</answer>");
    expect_format(100, '-', 99, "100-99=", "<think>10-9=1\n10-9-1=0\n1-0-1=0\n</think><answer>1</answer>");
    expect_format(57, '-', 57, "57-57=", "<think>7-7=0\n5-5=0\n</think><answer>0</answer>");
    expect_format(0, '-', 9, "0-9=", "<think>0<9\n9-0=9\n</think><answer>-9</answer>");
    ArithItem it;
    arith_format(999999999999999999LL, '+', 999999999999999999LL, &it);
    cr_assert_str_eq(it.answer, "1999999999999999998");
    cr_assert_eq(it.difficulty, 18);
}

/* ---------------------------------------------------------------- determinism */

Test(arith, deterministic_in_seed_index_split) {
    ArithSpec s = spec_of(1, 4, "+-");
    for (int64_t i = 0; i < 200; i++) {
        ArithItem x = item_of(&s, 42, i, DATA_SPLIT_TRAIN), y = item_of(&s, 42, i, DATA_SPLIT_TRAIN);
        cr_assert_eq(memcmp(&x, &y, sizeof x), 0, "item %lld differs between calls", (long long)i);
    }
    /* Different indices (and seeds) give mostly different problems. */
    int same_index = 0, same_seed = 0;
    for (int64_t i = 0; i < 1000; i++) {
        ArithItem x = item_of(&s, 42, i, DATA_SPLIT_TRAIN), y = item_of(&s, 42, i + 1, DATA_SPLIT_TRAIN);
        ArithItem z = item_of(&s, 43, i, DATA_SPLIT_TRAIN);
        same_index += strcmp(x.prompt, y.prompt) == 0;
        same_seed += strcmp(x.prompt, z.prompt) == 0;
    }
    cr_assert_lt(same_index, 30, "%d of 1000 neighbours repeat", same_index);
    cr_assert_lt(same_seed, 30, "%d of 1000 items repeat across seeds", same_seed);
}

/* ---------------------------------------------------------------- correctness */

/* Parses the prompt independently of the generator and checks the answer. */
static void check_answer(const ArithItem *it) {
    long long a, b;
    char op, eq;
    cr_assert_eq(sscanf(it->prompt, "%lld%c%lld%c", &a, &op, &b, &eq), 4, "prompt \"%s\"", it->prompt);
    cr_assert_eq(eq, '=');
    cr_assert(a == it->a && b == it->b && op == it->op, "prompt \"%s\" disagrees with the item fields", it->prompt);
    long long want = op == '+' ? a + b : a - b;
    cr_assert_eq(strtoll(it->answer, NULL, 10), want, "%s%s", it->prompt, it->answer);
    char back[32];
    snprintf(back, sizeof back, "%lld", want);
    cr_assert_str_eq(it->answer, back, "answer text must be canonical");
    cr_assert(arith_answer_matches(it, it->answer));
    snprintf(back, sizeof back, "%lld", want + 1);
    cr_assert(!arith_answer_matches(it, back));
}

/* Checks "da+db[+1]=s" lines against the operands, the carry chain and the answer. */
static void check_add_thought(const ArithItem *it) {
    const char *line = it->thought;
    int cols = digits_of(it->a > it->b ? it->a : it->b), carry = 0;
    long long assembled = 0, place = 1;
    for (int i = 0; i < cols; i++) {
        int x, y, s, n = 0;
        cr_assert_eq(sscanf(line, "%1d+%1d%n", &x, &y, &n), 2, "line %d of \"%s\"", i, it->thought);
        line += n;
        int has_carry = strncmp(line, "+1", 2) == 0;
        line += has_carry ? 2 : 0;
        cr_assert_eq(sscanf(line, "=%d\n%n", &s, &n), 1);
        line += n;
        cr_assert_eq(x, digit_at(it->a, i));
        cr_assert_eq(y, digit_at(it->b, i));
        cr_assert_eq(has_carry, carry, "carry flag of column %d in \"%s\"", i, it->thought);
        cr_assert_eq(s, x + y + carry);
        carry = s >= 10;
        assembled += (s % 10) * place;
        place *= 10;
    }
    assembled += carry * place;
    cr_assert_eq(*line, '\0', "extra thought text \"%s\"", line);
    cr_assert_eq(assembled, strtoll(it->answer, NULL, 10));
}

/* Checks the optional "a<b" swap line and "[1]dx-dy[-1]=d" column lines. */
static void check_sub_thought(const ArithItem *it) {
    const char *line = it->thought;
    long long top = it->a, bottom = it->b;
    if (it->a < it->b) {
        char swap[64];
        snprintf(swap, sizeof swap, "%lld<%lld\n", it->a, it->b);
        cr_assert_eq(strncmp(line, swap, strlen(swap)), 0, "swap line of \"%s\"", it->thought);
        line += strlen(swap);
        top = it->b, bottom = it->a;
    }
    int borrow = 0;
    long long assembled = 0, place = 1;
    for (int i = 0; i < digits_of(top); i++) {
        int borrows = line[0] == '1' && line[1] != '-', x, y, d, n = 0;
        line += borrows;
        cr_assert_eq(sscanf(line, "%1d-%1d%n", &x, &y, &n), 2, "line %d of \"%s\"", i, it->thought);
        line += n;
        int has_borrow = strncmp(line, "-1", 2) == 0;
        line += has_borrow ? 2 : 0;
        cr_assert_eq(sscanf(line, "=%1d\n%n", &d, &n), 1);
        line += n;
        cr_assert_eq(x, digit_at(top, i));
        cr_assert_eq(y, digit_at(bottom, i));
        cr_assert_eq(has_borrow, borrow, "borrow-in flag of column %d in \"%s\"", i, it->thought);
        cr_assert_eq(d, 10 * borrows + x - y - borrow, "column %d of \"%s\"", i, it->thought);
        borrow = borrows;
        assembled += d * place;
        place *= 10;
    }
    cr_assert_eq(borrow, 0, "the top digit cannot borrow");
    cr_assert_eq(*line, '\0', "extra thought text \"%s\"", line);
    long long want = strtoll(it->answer, NULL, 10);
    cr_assert_eq(it->a < it->b ? -assembled : assembled, want, "%s%s", it->prompt, it->answer);
}

Test(arith, answers_and_thoughts_are_right) {
    ArithSpec specs[] = {spec_of(1, 3, "+-"), spec_of(1, 9, "+-"), spec_of(10, 18, "+-")};
    for (int k = 0; k < 3; k++) {
        for (int64_t i = 0; i < 10000; i++) {
            ArithItem it = item_of(&specs[k], 7 + k, i, i % 3 ? DATA_SPLIT_TRAIN : DATA_SPLIT_EVAL);
            check_answer(&it);
            if (it.op == '+') check_add_thought(&it);
            else check_sub_thought(&it);
        }
    }
}

Test(arith, digits_and_difficulty_in_range) {
    ArithSpec s = spec_of(2, 5, "+-");
    int seen[6] = {0}, ops[2] = {0};
    for (int64_t i = 0; i < 5000; i++) {
        ArithItem it = item_of(&s, 3, i, DATA_SPLIT_TRAIN);
        int da = digits_of(it.a), db = digits_of(it.b);
        cr_assert(da >= 2 && da <= 5 && db >= 2 && db <= 5, "%s", it.prompt);
        cr_assert_eq(it.difficulty, da > db ? da : db);
        seen[it.difficulty]++;
        ops[it.op == '-']++;
    }
    for (int d = 2; d <= 5; d++) cr_assert_gt(seen[d], 0, "difficulty %d never drawn", d);
    cr_assert(ops[0] > 2000 && ops[1] > 2000, "ops unbalanced: %d + vs %d -", ops[0], ops[1]);
}

Test(arith, grader_parses_integers) {
    ArithItem it;
    arith_format(85, '-', 347, &it);
    cr_assert(arith_answer_matches(&it, "-262"));
    cr_assert(arith_answer_matches(&it, "  -262\n"));
    cr_assert(!arith_answer_matches(&it, "262"));
    cr_assert(!arith_answer_matches(&it, "-262x"));
    cr_assert(!arith_answer_matches(&it, "-"));
    cr_assert(!arith_answer_matches(&it, ""));
    cr_assert(!arith_answer_matches(&it, "-99999999999999999999999"));
    arith_format(347, '+', 85, &it);
    cr_assert(arith_answer_matches(&it, "+432"));
    cr_assert(arith_answer_matches(&it, "0432"));
    cr_assert(!arith_answer_matches(&it, "4 32"));
    arith_format(5, '-', 5, &it);
    cr_assert(arith_answer_matches(&it, "0"));
    cr_assert(arith_answer_matches(&it, "-0"));
}

/* ---------------------------------------------------------------- tokens ----*/

Test(arith, responses_fit_the_char_alphabet) {
    Tokenizer *t = NULL;
    PonderError err = {0};
    cr_assert_eq(tokenizer_create_char(&t, &err), 0);
    ArithSpec s = spec_of(1, 18, "+-");
    int32_t *ids = NULL;
    int64_t cap = 0;
    for (int64_t i = 0; i < 500; i++) {
        ArithItem it = item_of(&s, 11, i, DATA_SPLIT_TRAIN);
        int64_t n = 0;
        cr_assert_eq(tokenizer_encode(t, it.prompt, &ids, &n, &cap, &err), 0, "%s", err.msg);
        int64_t prompt_n = n;
        cr_assert_eq(tokenizer_encode(t, it.response, &ids, &n, &cap, &err), 0, "%s", err.msg);
        cr_assert_eq(ids[prompt_n], tokenizer_special(t, TOK_THINK));
        cr_assert_eq(ids[n - 1], tokenizer_special(t, TOK_END_ANSWER));
        char *back = NULL;
        cr_assert_eq(tokenizer_decode(t, ids + prompt_n, n - prompt_n, &back, &err), 0);
        cr_assert_str_eq(back, it.response);
        free(back);
    }
    free(ids);
    tokenizer_free(t);
}

/* ---------------------------------------------------------------- split -----*/

/* Index of (a, op, b) with a, b < 1000 in a flat table of all 1..3-digit problems. */
static size_t problem_slot(long long a, char op, long long b) {
    return ((size_t)(op == '-') * 1000 + (size_t)a) * 1000 + (size_t)b;
}

Test(arith, held_out_split_is_disjoint) {
    /* Every 1..3-digit problem, marked by the split the frozen hash gives it. */
    enum { N_PROBLEMS = 2 * 1000 * 1000 };
    unsigned char *is_eval = calloc(N_PROBLEMS, 1);
    unsigned char *in_train = calloc(N_PROBLEMS, 1);
    long n_eval = 0;
    for (int op = 0; op < 2; op++)
        for (long long a = 0; a < 1000; a++)
            for (long long b = 0; b < 1000; b++) {
                char c = op ? '-' : '+';
                size_t k = problem_slot(a, c, b);
                is_eval[k] = arith_problem_split(a, c, b) == DATA_SPLIT_EVAL;
                n_eval += is_eval[k];
            }
    cr_assert(n_eval > N_PROBLEMS / 12 && n_eval < N_PROBLEMS / 8, "eval share %ld of %d is not ~10%%", n_eval,
              N_PROBLEMS);
    ArithSpec s = spec_of(1, 3, "+-");
    for (int64_t i = 0; i < 20000; i++) {
        ArithItem it = item_of(&s, 5, i, DATA_SPLIT_TRAIN);
        size_t k = problem_slot(it.a, it.op, it.b);
        cr_assert(!is_eval[k], "train item %lld \"%s\" is a held-out problem", (long long)i, it.prompt);
        in_train[k] = 1;
    }
    /* Eval generation only ever yields held-out problems, none seen in training. */
    long distinct_eval = 0;
    unsigned char *in_eval = calloc(N_PROBLEMS, 1);
    for (int64_t i = 0; i < 20000; i++) {
        ArithItem it = item_of(&s, 5, i, DATA_SPLIT_EVAL);
        size_t k = problem_slot(it.a, it.op, it.b);
        cr_assert(is_eval[k], "eval item \"%s\" is a training problem", it.prompt);
        cr_assert(!in_train[k], "eval item \"%s\" was generated for training", it.prompt);
        distinct_eval += !in_eval[k];
        in_eval[k] = 1;
    }
    /* Digit counts are drawn uniformly, so 1-digit problems repeat; the rest rarely do. */
    cr_assert_gt(distinct_eval, 8000, "eval items repeat too much: %ld distinct", distinct_eval);
    /* And the whole held-out set against the training items, slot by slot. */
    for (size_t k = 0; k < N_PROBLEMS; k++) cr_assert(!(is_eval[k] && in_train[k]));
    free(is_eval);
    free(in_train);
    free(in_eval);
}

Test(arith, tiny_spaces_have_both_splits) {
    const char *ops[] = {"+", "-", "+-"};
    for (int k = 0; k < 3; k++) {
        ArithSpec s = spec_of(1, 1, ops[k]);
        for (int split = 0; split < 2; split++)
            for (int64_t i = 0; i < 50; i++) {
                ArithItem it = item_of(&s, 1, i, (DataSplit)split);
                cr_assert_eq(arith_problem_split(it.a, it.op, it.b), (DataSplit)split);
            }
    }
}

Test(arith, split_hash_is_frozen) {
    /* Pinned values: if these change, the held-out set moved and past evals are void. */
    cr_assert_eq(arith_problem_hash(347, '+', 85), 9665019430098679918ull);
    cr_assert_eq(arith_problem_hash(0, '-', 0), 16998194628228363597ull);
    cr_assert_neq(arith_problem_hash(347, '+', 85), arith_problem_hash(85, '+', 347), "order matters");
    cr_assert_neq(arith_problem_hash(347, '+', 85), arith_problem_hash(347, '-', 85), "the op matters");
    int eval_add = 0, eval_sub = 0;
    for (int a = 0; a < 10; a++)
        for (int b = 0; b < 10; b++) {
            eval_add += arith_problem_split(a, '+', b) == DATA_SPLIT_EVAL;
            eval_sub += arith_problem_split(a, '-', b) == DATA_SPLIT_EVAL;
        }
    cr_assert_eq(eval_add, 12);
    cr_assert_eq(eval_sub, 14);
}
