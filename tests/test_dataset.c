/* tests/test_dataset.c — data sets: JSONL loading (the happy path keeps every
 * column; every error class names file and line, checked by text), the arith
 * data set, and the per-epoch shuffle that makes one cursor a full position. */
#include <criterion/criterion.h>

#include <jansson.h> /* json_loads: inspecting row_json */
#include <stdlib.h>  /* calloc, free */
#include <string.h>  /* strcmp, strstr */

#include "rollout/dataset.h"
#include "rollout/task_arith.h"

#define DATA PONDER_TEST_DATA "/jsonl/"

/* ---------------------------------------------------------------- helpers ---*/

static Dataset *open_jsonl(const char *file, const char *response_key) {
    Dataset *d = NULL;
    PonderError err = {0};
    cr_assert_eq(dataset_open_jsonl(&d, file, "prompt", response_key, "answer", &err), 0, "%s", err.msg);
    return d;
}

static void expect_jsonl_error(const char *file, int code, const char *needle) {
    Dataset *d = (Dataset *)&d; /* must come back NULL */
    PonderError err = {0};
    int rc = dataset_open_jsonl(&d, file, "prompt", "", "answer", &err);
    cr_assert_eq(rc, code, "%s: rc %d, message \"%s\"", file, rc, err.msg);
    cr_assert_eq(rc, err.code);
    cr_assert_null(d);
    cr_assert(strstr(err.msg, needle), "message \"%s\"\n  lacks \"%s\"", err.msg, needle);
}

static DataItem item_at(const Dataset *d, int64_t i) {
    DataItem it;
    PonderError err = {0};
    cr_assert_eq(dataset_at(d, i, &it, &err), 0, "%s", err.msg);
    return it;
}

/* Checks that each epoch of cursors visits every position exactly once, that
 * the order is a function of (seed, epoch) and that epochs differ. */
static void check_epochs(const Dataset *d, uint64_t seed, int epochs) {
    int64_t n = dataset_size(d);
    int64_t *order = calloc((size_t)(n * epochs), sizeof *order);
    int *seen = calloc((size_t)n, sizeof *seen);
    for (int e = 0; e < epochs; e++) {
        memset(seen, 0, (size_t)n * sizeof *seen);
        for (int64_t p = 0; p < n; p++) {
            int64_t pos = dataset_position(d, seed, e * n + p);
            cr_assert(pos >= 0 && pos < n, "position %lld outside [0, %lld)", (long long)pos, (long long)n);
            cr_assert_eq(seen[pos]++, 0, "epoch %d visits %lld twice (n %lld)", e, (long long)pos, (long long)n);
            cr_assert_eq(pos, dataset_position(d, seed, e * n + p), "not deterministic");
            order[e * n + p] = pos;
        }
    }
    if (n >= 8) {
        for (int e = 1; e < epochs; e++)
            cr_assert_neq(memcmp(order, order + e * n, (size_t)n * sizeof *order), 0, "epoch %d repeats epoch 0", e);
        int moved = 0;
        for (int64_t p = 0; p < n; p++) moved += order[p] != p;
        cr_assert_gt(moved, n / 2, "epoch 0 is barely shuffled (%d of %lld moved)", moved, (long long)n);
    }
    free(order);
    free(seen);
}

/* ---------------------------------------------------------------- jsonl -----*/

Test(dataset_jsonl, happy_path_keeps_columns) {
    Dataset *d = open_jsonl(DATA "good.jsonl", "response");
    cr_assert_eq(dataset_size(d), 5, "blank lines are skipped");
    DataItem it = item_at(d, 0);
    cr_assert_str_eq(it.prompt, "What is 2+2?");
    cr_assert_str_eq(it.response, "<think>2+2=4</think><answer>4</answer>");
    cr_assert_str_eq(it.answer, "4");
    cr_assert_eq(it.difficulty, 0);
    cr_assert_str_eq(it.row_json, "{\"id\":1,\"prompt\":\"What is 2+2?\",\"response\":\"<think>2+2=4</think><answer>4"
                                  "</answer>\",\"answer\":\"4\",\"source\":\"hand\"}");
    data_item_free(&it);
    cr_assert_null(it.prompt, "data_item_free zeroes the item");
    data_item_free(&it); /* and is safe twice */

    it = item_at(d, 1);
    cr_assert_str_eq(it.answer, "0.1", "reals print in their shortest exact form");
    json_error_t je;
    json_t *row = json_loads(it.row_json, 0, &je);
    cr_assert_not_null(row, "row_json must be JSON: %s", je.text);
    json_t *level = json_object_get(json_object_get(row, "meta"), "level");
    cr_assert_eq(json_integer_value(level), 2, "nested columns survive");
    cr_assert_eq(json_array_size(json_object_get(json_object_get(row, "meta"), "tags")), 2);
    json_decref(row);
    data_item_free(&it);

    it = item_at(d, 2);
    cr_assert_str_eq(it.prompt, "caf\xc3\xa9 \xe2\x80\x94 6*7?", "unicode escapes decode to UTF-8");
    cr_assert_str_eq(it.answer, "42", "integers print in decimal");
    cr_assert_eq(it.difficulty, 3, "a difficulty column fills the field");
    data_item_free(&it);

    it = item_at(d, 3);
    cr_assert_str_eq(it.answer, "2");
    cr_assert_str_eq(it.response, "");
    cr_assert(strstr(it.row_json, "\"extra\":null"), "%s", it.row_json);
    cr_assert_eq(strncmp(it.row_json, "{\"prompt\":\"Two?\",\"id\":4", 23), 0, "keys stay in file order: %s",
                 it.row_json);
    data_item_free(&it);

    it = item_at(d, 4);
    cr_assert_str_eq(it.answer, "-3.5e-07");
    cr_assert(strstr(it.row_json, "\"flag\":true"), "%s", it.row_json);
    data_item_free(&it);
    dataset_free(d);
}

Test(dataset_jsonl, rl_only_data_has_no_response) {
    /* CRLF line ends; the unnamed "response" column (an integer) is not validated, only kept. */
    Dataset *d = open_jsonl(DATA "rl_only.jsonl", "");
    cr_assert_eq(dataset_size(d), 2);
    DataItem it = item_at(d, 1);
    cr_assert_str_eq(it.prompt, "2+2=");
    cr_assert_null(it.response);
    cr_assert_str_eq(it.answer, "4");
    cr_assert_str_eq(it.row_json, "{\"prompt\":\"2+2=\",\"answer\":4,\"response\":17}");
    data_item_free(&it);
    dataset_free(d);
}

Test(dataset_jsonl, no_answer_key) {
    Dataset *d = NULL;
    PonderError err = {0};
    cr_assert_eq(dataset_open_jsonl(&d, DATA "missing_answer.jsonl", "prompt", "", "", &err), 0, "%s", err.msg);
    DataItem it = item_at(d, 1);
    cr_assert_null(it.answer);
    cr_assert_str_eq(it.prompt, "b");
    data_item_free(&it);
    dataset_free(d);
}

Test(dataset_jsonl, other_key_names) {
    Dataset *d = NULL;
    PonderError err = {0};
    /* missing_prompt.jsonl's line 3 names its prompt "question": fine when that is the key, but line 1 lacks it. */
    cr_assert_neq(dataset_open_jsonl(&d, DATA "missing_prompt.jsonl", "question", "", "answer", &err), 0);
    cr_assert_str_eq(err.msg, DATA "missing_prompt.jsonl:1: missing key 'question'");
    cr_assert_eq(dataset_open_jsonl(&d, DATA "many.jsonl", "idx", "", "prompt", &err), PONDER_ERR_PARSE);
    cr_assert_str_eq(err.msg, DATA "many.jsonl:1: key 'idx' must be a string, got an integer");
    cr_assert_eq(dataset_open_jsonl(&d, DATA "many.jsonl", "prompt", "", "idx", &err), 0, "%s", err.msg);
    DataItem it = item_at(d, 36);
    cr_assert_str_eq(it.answer, "36");
    data_item_free(&it);
    dataset_free(d);
}

Test(dataset_jsonl, error_malformed_json) {
    expect_jsonl_error(DATA "bad_syntax.jsonl", PONDER_ERR_PARSE, DATA "bad_syntax.jsonl:3: malformed JSON at column ");
    expect_jsonl_error(DATA "bad_syntax.jsonl", PONDER_ERR_PARSE, "string or '}' expected near '}'");
}

Test(dataset_jsonl, error_two_objects_on_a_line) {
    expect_jsonl_error(DATA "two_objects.jsonl", PONDER_ERR_PARSE, "two_objects.jsonl:1: malformed JSON at column");
    expect_jsonl_error(DATA "two_objects.jsonl", PONDER_ERR_PARSE, "end of file expected");
}

Test(dataset_jsonl, error_is_found_on_the_last_line) {
    expect_jsonl_error(DATA "bad_last_line.jsonl", PONDER_ERR_PARSE, "bad_last_line.jsonl:201: malformed JSON");
}

Test(dataset_jsonl, error_not_an_object) {
    expect_jsonl_error(DATA "not_object.jsonl", PONDER_ERR_PARSE,
                       DATA "not_object.jsonl:2: the row is an array, expected a JSON object");
}

Test(dataset_jsonl, error_missing_prompt_counts_blank_lines) {
    expect_jsonl_error(DATA "missing_prompt.jsonl", PONDER_ERR_PARSE, DATA "missing_prompt.jsonl:3: missing key 'prompt'");
}

Test(dataset_jsonl, error_prompt_not_string) {
    expect_jsonl_error(DATA "prompt_not_string.jsonl", PONDER_ERR_PARSE,
                       DATA "prompt_not_string.jsonl:1: key 'prompt' must be a string, got an array");
}

Test(dataset_jsonl, error_answer_wrong_type) {
    expect_jsonl_error(DATA "answer_bool.jsonl", PONDER_ERR_PARSE,
                       DATA "answer_bool.jsonl:2: key 'answer' must be a string or a number, got a boolean");
    expect_jsonl_error(DATA "answer_null.jsonl", PONDER_ERR_PARSE,
                       "answer_null.jsonl:1: key 'answer' must be a string or a number, got null");
}

Test(dataset_jsonl, error_missing_answer) {
    expect_jsonl_error(DATA "missing_answer.jsonl", PONDER_ERR_PARSE, DATA "missing_answer.jsonl:2: missing key 'answer'");
}

Test(dataset_jsonl, error_response_not_string) {
    Dataset *d = NULL;
    PonderError err = {0};
    cr_assert_eq(dataset_open_jsonl(&d, DATA "response_not_string.jsonl", "prompt", "response", "answer", &err),
                 PONDER_ERR_PARSE);
    cr_assert_str_eq(err.msg, DATA "response_not_string.jsonl:1: key 'response' must be a string, got an integer");
    /* A named response key is required on every row. */
    cr_assert_eq(dataset_open_jsonl(&d, DATA "rl_only.jsonl", "prompt", "response", "answer", &err), PONDER_ERR_PARSE);
    cr_assert_str_eq(err.msg, DATA "rl_only.jsonl:1: missing key 'response'");
}

Test(dataset_jsonl, error_duplicate_key) {
    expect_jsonl_error(DATA "duplicate_key.jsonl", PONDER_ERR_PARSE, DATA "duplicate_key.jsonl:1: malformed JSON");
    expect_jsonl_error(DATA "duplicate_key.jsonl", PONDER_ERR_PARSE, "duplicate object key");
}

Test(dataset_jsonl, error_no_items) {
    expect_jsonl_error(DATA "empty.jsonl", PONDER_ERR_PARSE, DATA "empty.jsonl: no items");
    expect_jsonl_error(DATA "blank_only.jsonl", PONDER_ERR_PARSE, DATA "blank_only.jsonl: no items");
}

Test(dataset_jsonl, error_missing_file_and_keys) {
    expect_jsonl_error(DATA "nope.jsonl", PONDER_ERR_IO, DATA "nope.jsonl: cannot open: No such file or directory");
    Dataset *d = NULL;
    PonderError err = {0};
    cr_assert_eq(dataset_open_jsonl(&d, DATA "good.jsonl", "", "", "answer", &err), PONDER_ERR_CONFIG);
    cr_assert(strstr(err.msg, "the prompt key is empty"), "%s", err.msg);
}

Test(dataset_jsonl, position_out_of_range) {
    Dataset *d = open_jsonl(DATA "good.jsonl", "");
    DataItem it;
    PonderError err = {0};
    cr_assert_neq(dataset_at(d, 5, &it, &err), 0);
    cr_assert_str_eq(err.msg, "dataset: position 5 is outside [0, 5)");
    cr_assert_neq(dataset_get(d, 1, -1, &it, &err), 0);
    cr_assert_str_eq(err.msg, "dataset: cursor -1 is negative");
    dataset_free(d);
}

/* ---------------------------------------------------------------- shuffle ---*/

Test(dataset_shuffle, every_epoch_is_a_permutation) {
    Dataset *d = open_jsonl(DATA "many.jsonl", "");
    check_epochs(d, 1, 5);
    check_epochs(d, 2, 5);
    /* dataset_get returns the permuted row. */
    for (int64_t i = 0; i < 3 * 37; i++) {
        DataItem it;
        PonderError err = {0};
        cr_assert_eq(dataset_get(d, 9, i, &it, &err), 0, "%s", err.msg);
        char want[16];
        snprintf(want, sizeof want, "p%lld", (long long)dataset_position(d, 9, i));
        cr_assert_str_eq(it.prompt, want);
        data_item_free(&it);
    }
    dataset_free(d);
}

Test(dataset_shuffle, sizes_and_seeds) {
    ArithSpec s = {1, 3, "+-"};
    int64_t sizes[] = {1, 2, 3, 4, 5, 16, 17, 100, 1023, 1024, 1025, 5000};
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        Dataset *d = NULL;
        PonderError err = {0};
        cr_assert_eq(dataset_open_arith(&d, &s, 1, DATA_SPLIT_TRAIN, sizes[k], &err), 0, "%s", err.msg);
        cr_assert_eq(dataset_size(d), sizes[k]);
        check_epochs(d, 0, 3);
        check_epochs(d, 0xdeadbeef, 3);
        dataset_free(d);
    }
    /* Different shuffle seeds give different orders. */
    Dataset *d = NULL;
    cr_assert_eq(dataset_open_arith(&d, &s, 1, DATA_SPLIT_TRAIN, 1000, NULL), 0);
    int same = 0;
    for (int64_t i = 0; i < 1000; i++) same += dataset_position(d, 1, i) == dataset_position(d, 2, i);
    cr_assert_lt(same, 20, "%d of 1000 positions agree across seeds", same);
    dataset_free(d);
}

/* ---------------------------------------------------------------- arith -----*/

Test(dataset_arith, finite_items_follow_arith_item) {
    ArithSpec s = {2, 4, "+-"};
    Dataset *d = NULL;
    PonderError err = {0};
    cr_assert_eq(dataset_open_arith(&d, &s, 77, DATA_SPLIT_EVAL, 300, &err), 0, "%s", err.msg);
    for (int64_t i = 0; i < 300; i++) {
        ArithItem want;
        cr_assert_eq(arith_item(&s, 77, i, DATA_SPLIT_EVAL, &want, &err), 0);
        DataItem it = item_at(d, i);
        cr_assert_str_eq(it.prompt, want.prompt);
        cr_assert_str_eq(it.response, want.response);
        cr_assert_str_eq(it.answer, want.answer);
        cr_assert_eq(it.difficulty, want.difficulty);
        json_error_t je;
        json_t *row = json_loads(it.row_json, 0, &je);
        cr_assert_not_null(row, "%s", je.text);
        cr_assert_str_eq(json_string_value(json_object_get(row, "answer")), want.answer);
        cr_assert_str_eq(json_string_value(json_object_get(row, "response")), want.response);
        cr_assert_eq(json_integer_value(json_object_get(row, "a")), want.a);
        cr_assert_eq(json_integer_value(json_object_get(row, "b")), want.b);
        cr_assert_eq(json_string_value(json_object_get(row, "op"))[0], want.op);
        cr_assert_eq(json_integer_value(json_object_get(row, "difficulty")), want.difficulty);
        json_decref(row);
        data_item_free(&it);
    }
    cr_assert_neq(dataset_at(d, 300, &(DataItem){0}, &err), 0);
    dataset_free(d);
}

Test(dataset_arith, stream_is_unbounded_and_unshuffled) {
    ArithSpec s = {1, 3, "+"};
    Dataset *d = NULL;
    PonderError err = {0};
    cr_assert_eq(dataset_open_arith(&d, &s, 5, DATA_SPLIT_TRAIN, 0, &err), 0, "%s", err.msg);
    cr_assert_eq(dataset_size(d), -1);
    int64_t idx[] = {0, 1, 12345, 1000000007LL, (int64_t)1 << 40};
    for (size_t k = 0; k < sizeof idx / sizeof *idx; k++) {
        ArithItem want;
        cr_assert_eq(arith_item(&s, 5, idx[k], DATA_SPLIT_TRAIN, &want, &err), 0);
        DataItem it;
        cr_assert_eq(dataset_get(d, 999, idx[k], &it, &err), 0, "%s", err.msg);
        cr_assert_str_eq(it.prompt, want.prompt);
        data_item_free(&it);
    }
    dataset_free(d);
}

Test(dataset_arith, open_errors) {
    Dataset *d = NULL;
    PonderError err = {0};
    ArithSpec bad = {3, 2, "+"};
    cr_assert_eq(dataset_open_arith(&d, &bad, 1, DATA_SPLIT_TRAIN, 10, &err), PONDER_ERR_CONFIG);
    cr_assert_null(d);
    cr_assert(strstr(err.msg, "min_digits 3, max_digits 2"), "%s", err.msg);
    ArithSpec ok = {1, 2, "+"};
    cr_assert_eq(dataset_open_arith(&d, &ok, 1, DATA_SPLIT_TRAIN, -5, &err), PONDER_ERR_CONFIG);
    cr_assert(strstr(err.msg, "size -5 is negative"), "%s", err.msg);
}
