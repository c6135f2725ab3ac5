/* rollout/dataset.c — built-in arith and JSONL data sets behind one item type,
 * and the stateless per-epoch shuffle (rules in dataset.h). */
#include "rollout/dataset.h"

#include <ctype.h>   /* isspace */
#include <errno.h>   /* errno */
#include <jansson.h> /* json_loadb, json_dumps, json_pack */
#include <stdio.h>   /* FILE, fopen, getline, snprintf */
#include <stdlib.h>  /* calloc, realloc, free, strtod */
#include <string.h>  /* strdup, strerror, strlen */

#include "rollout/task_arith.h" /* ArithSpec, arith_item */
#include "util/rng.h"           /* rng_derive: permutation keys */

typedef enum { DATASET_ARITH = 0, DATASET_JSONL = 1 } DatasetKind;

/* One validated JSONL row; the strings are owned by the data set. */
typedef struct JsonlRow {
    char *prompt, *response, *answer, *row_json;
    int difficulty;
} JsonlRow;

struct Dataset {
    DatasetKind kind;
    int64_t size; /* -1: unbounded stream */
    /* arith */
    ArithSpec spec;
    uint64_t seed;
    DataSplit split;
    /* jsonl */
    JsonlRow *rows;
    int64_t rows_cap;
};

/* Separates the shuffle's random stream from other users of rng_derive. */
#define DATASET_SHUFFLE_TAG 0x73687566ull /* "shuf" */
#define FEISTEL_ROUNDS 6

/* ------------------------------------------------------------- shuffle ------*/

/* splitmix64's finaliser: the Feistel round function. */
static uint64_t mix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* A balanced Feistel network: a bijection on [0, 2^(2*half_bits)) for any keys. */
static uint64_t feistel(uint64_t x, int half_bits, const uint64_t *keys) {
    uint64_t mask = (1ull << half_bits) - 1;
    uint64_t left = x >> half_bits, right = x & mask;
    for (int k = 0; k < FEISTEL_ROUNDS; k++) {
        uint64_t next = left ^ (mix64(right ^ keys[k]) & mask);
        left = right;
        right = next;
    }
    return (left << half_bits) | right;
}

/* Position of slot p in epoch `epoch`'s permutation of [0, n). Cycle walking
 * (re-apply until the value lands below n) restricts the power-of-4 bijection
 * to [0, n) and stays a bijection; the domain is < 4n, so few re-applications. */
static int64_t shuffle_position(int64_t n, uint64_t seed, int64_t epoch, int64_t p) {
    if (n <= 1) return 0;
    int bits = 0;
    while ((1ull << bits) < (uint64_t)n) bits++;
    bits += bits & 1;
    Rng r = rng_derive(seed, (uint64_t)epoch, DATASET_SHUFFLE_TAG, 0);
    uint64_t keys[FEISTEL_ROUNDS];
    for (int k = 0; k < FEISTEL_ROUNDS; k++) keys[k] = rng_next_u64(&r);
    uint64_t x = (uint64_t)p;
    do x = feistel(x, bits / 2, keys);
    while (x >= (uint64_t)n);
    return (int64_t)x;
}

int64_t dataset_position(const Dataset *d, uint64_t shuffle_seed, int64_t index) {
    if (d->size < 0) return index; /* a stream is random already */
    return shuffle_position(d->size, shuffle_seed, index / d->size, index % d->size);
}

/* ---------------------------------------------------------------- items -----*/

static char *dup_or_null(const char *s, int *failed) {
    if (!s) return NULL;
    char *c = strdup(s);
    if (!c) *failed = 1;
    return c;
}

void data_item_free(DataItem *it) {
    if (!it) return;
    free(it->prompt);
    free(it->response);
    free(it->answer);
    free(it->row_json);
    memset(it, 0, sizeof *it);
}

static int item_copy(DataItem *out, const char *prompt, const char *response, const char *answer,
                     const char *row_json, int difficulty, PonderError *err) {
    int failed = 0;
    out->prompt = dup_or_null(prompt, &failed);
    out->response = dup_or_null(response, &failed);
    out->answer = dup_or_null(answer, &failed);
    out->row_json = dup_or_null(row_json, &failed);
    out->difficulty = difficulty;
    if (!failed) return PONDER_OK;
    data_item_free(out);
    return ponder_error(err, PONDER_ERR_NOMEM, "dataset: out of memory copying an item");
}

static int arith_data_item(const Dataset *d, int64_t i, DataItem *out, PonderError *err) {
    ArithItem it;
    int rc = arith_item(&d->spec, d->seed, i, d->split, &it, err);
    if (rc) return rc;
    json_t *row = json_pack("{s:s, s:s, s:s, s:I, s:s%, s:I, s:i}", "prompt", it.prompt, "response", it.response,
                            "answer", it.answer, "a", (json_int_t)it.a, "op", &it.op, (size_t)1, "b",
                            (json_int_t)it.b, "difficulty", it.difficulty);
    char *row_json = row ? json_dumps(row, JSON_COMPACT) : NULL;
    json_decref(row);
    if (!row_json) return ponder_error(err, PONDER_ERR_NOMEM, "dataset: out of memory formatting an arith row");
    rc = item_copy(out, it.prompt, it.response, it.answer, row_json, it.difficulty, err);
    free(row_json);
    return rc;
}

int dataset_at(const Dataset *d, int64_t i, DataItem *out, PonderError *err) {
    memset(out, 0, sizeof *out);
    if (i < 0 || (d->size >= 0 && i >= d->size))
        return ponder_error(err, PONDER_ERR_CONFIG, "dataset: position %lld is outside [0, %lld)", (long long)i,
                            (long long)d->size);
    if (d->kind == DATASET_ARITH) return arith_data_item(d, i, out, err);
    const JsonlRow *r = &d->rows[i];
    return item_copy(out, r->prompt, r->response, r->answer, r->row_json, r->difficulty, err);
}

int dataset_get(const Dataset *d, uint64_t shuffle_seed, int64_t index, DataItem *out, PonderError *err) {
    memset(out, 0, sizeof *out);
    if (index < 0) return ponder_error(err, PONDER_ERR_CONFIG, "dataset: cursor %lld is negative", (long long)index);
    return dataset_at(d, dataset_position(d, shuffle_seed, index), out, err);
}

int64_t dataset_size(const Dataset *d) { return d->size; }

void dataset_free(Dataset *d) {
    if (!d) return;
    for (int64_t i = 0; d->kind == DATASET_JSONL && i < d->size; i++) {
        free(d->rows[i].prompt);
        free(d->rows[i].response);
        free(d->rows[i].answer);
        free(d->rows[i].row_json);
    }
    free(d->rows);
    free(d);
}

/* ---------------------------------------------------------------- arith -----*/

int dataset_open_arith(Dataset **out, const ArithSpec *spec, uint64_t seed, DataSplit split, int64_t size,
                       PonderError *err) {
    *out = NULL;
    int rc = arith_spec_validate(spec, err);
    if (rc) return rc;
    if (size < 0) return ponder_error(err, PONDER_ERR_CONFIG, "dataset: arith size %lld is negative (0 = unbounded)",
                                      (long long)size);
    Dataset *d = calloc(1, sizeof *d);
    if (!d) return ponder_error(err, PONDER_ERR_NOMEM, "dataset: out of memory");
    d->kind = DATASET_ARITH;
    d->size = size > 0 ? size : -1;
    d->spec = *spec;
    d->seed = seed;
    d->split = split;
    *out = d;
    return PONDER_OK;
}

/* ---------------------------------------------------------------- jsonl -----*/

typedef struct JsonlKeys {
    const char *path, *prompt, *response, *answer;
} JsonlKeys;

static const char *json_type_name(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "an unknown value";
}

/* Shortest "%.*g" that reads back to exactly v, so 0.1 stays "0.1". */
static void real_to_text(double v, char *buf, size_t size) {
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, size, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) return;
    }
}

/* The string at key, copied into *out; a missing key or another type is an error. */
static int row_string(const json_t *row, const JsonlKeys *k, long long line, const char *key, char **out,
                      PonderError *err) {
    const json_t *v = json_object_get(row, key);
    if (!v) return ponder_error(err, PONDER_ERR_PARSE, "%s:%lld: missing key '%s'", k->path, line, key);
    if (!json_is_string(v))
        return ponder_error(err, PONDER_ERR_PARSE, "%s:%lld: key '%s' must be a string, got %s", k->path, line, key,
                            json_type_name(v));
    *out = strdup(json_string_value(v));
    return *out ? PONDER_OK : ponder_error(err, PONDER_ERR_NOMEM, "dataset: out of memory");
}

/* The answer as text: strings as they are, numbers formatted (dataset.h). */
static int row_answer(const json_t *row, const JsonlKeys *k, long long line, char **out, PonderError *err) {
    const json_t *v = json_object_get(row, k->answer);
    if (!v || json_is_string(v)) return row_string(row, k, line, k->answer, out, err);
    char buf[64];
    if (json_is_integer(v))
        snprintf(buf, sizeof buf, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    else if (json_is_real(v))
        real_to_text(json_real_value(v), buf, sizeof buf);
    else
        return ponder_error(err, PONDER_ERR_PARSE, "%s:%lld: key '%s' must be a string or a number, got %s", k->path,
                            line, k->answer, json_type_name(v));
    *out = strdup(buf);
    return *out ? PONDER_OK : ponder_error(err, PONDER_ERR_NOMEM, "dataset: out of memory");
}

static void row_free(JsonlRow *r) {
    free(r->prompt);
    free(r->response);
    free(r->answer);
    free(r->row_json);
}

/* Validates one parsed row and fills *r (freed by the caller on error too). */
static int row_fill(const json_t *root, const JsonlKeys *k, long long line, JsonlRow *r, PonderError *err) {
    if (!json_is_object(root))
        return ponder_error(err, PONDER_ERR_PARSE, "%s:%lld: the row is %s, expected a JSON object", k->path, line,
                            json_type_name(root));
    int rc = row_string(root, k, line, k->prompt, &r->prompt, err);
    if (!rc && k->response[0]) rc = row_string(root, k, line, k->response, &r->response, err);
    if (!rc && k->answer[0]) rc = row_answer(root, k, line, &r->answer, err);
    if (rc) return rc;
    const json_t *difficulty = json_object_get(root, "difficulty");
    if (json_is_integer(difficulty)) r->difficulty = (int)json_integer_value(difficulty);
    r->row_json = json_dumps(root, JSON_COMPACT); /* jansson keeps keys in file order */
    return r->row_json ? PONDER_OK : ponder_error(err, PONDER_ERR_NOMEM, "dataset: out of memory");
}

static int row_parse(const char *text, size_t len, const JsonlKeys *k, long long line, JsonlRow *r,
                     PonderError *err) {
    memset(r, 0, sizeof *r);
    json_error_t je;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return ponder_error(err, PONDER_ERR_PARSE, "%s:%lld: malformed JSON at column %d: %s", k->path, line,
                            je.column, je.text);
    int rc = row_fill(root, k, line, r, err);
    json_decref(root);
    if (rc) row_free(r);
    return rc;
}

static int rows_push(Dataset *d, const JsonlRow *r, PonderError *err) {
    if (d->size == d->rows_cap) {
        int64_t cap = d->rows_cap ? d->rows_cap * 2 : 256;
        JsonlRow *grown = realloc(d->rows, (size_t)cap * sizeof *grown);
        if (!grown) return ponder_error(err, PONDER_ERR_NOMEM, "dataset: out of memory for %lld rows", (long long)cap);
        d->rows = grown;
        d->rows_cap = cap;
    }
    d->rows[d->size++] = *r;
    return PONDER_OK;
}

static int is_blank(const char *s, size_t len) {
    for (size_t i = 0; i < len; i++)
        if (!isspace((unsigned char)s[i])) return 0;
    return 1;
}

/* Reads every line of f into d, stopping at the first bad one. */
static int jsonl_read(Dataset *d, FILE *f, const JsonlKeys *k, PonderError *err) {
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    long long lineno = 0;
    int rc = PONDER_OK;
    while (!rc && (len = getline(&line, &cap, f)) != -1) {
        lineno++;
        if (is_blank(line, (size_t)len)) continue; /* skipped anywhere (dataset.h) */
        JsonlRow r;
        rc = row_parse(line, (size_t)len, k, lineno, &r, err);
        if (!rc && (rc = rows_push(d, &r, err))) row_free(&r);
    }
    free(line);
    if (!rc && ferror(f)) rc = ponder_error(err, PONDER_ERR_IO, "%s:%lld: read error", k->path, lineno + 1);
    if (!rc && d->size == 0)
        rc = ponder_error(err, PONDER_ERR_PARSE, "%s: no items (the file is empty or holds only blank lines)", k->path);
    return rc;
}

int dataset_open_jsonl(Dataset **out, const char *path, const char *prompt_key, const char *response_key,
                       const char *answer_key, PonderError *err) {
    *out = NULL;
    if (!prompt_key || !prompt_key[0])
        return ponder_error(err, PONDER_ERR_CONFIG, "%s: the prompt key is empty (name the prompt column)", path);
    JsonlKeys k = {path, prompt_key, response_key ? response_key : "", answer_key ? answer_key : ""};
    FILE *f = fopen(path, "rb");
    if (!f) return ponder_error(err, PONDER_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    Dataset *d = calloc(1, sizeof *d);
    int rc = d ? PONDER_OK : ponder_error(err, PONDER_ERR_NOMEM, "dataset: out of memory");
    if (d) {
        d->kind = DATASET_JSONL;
        rc = jsonl_read(d, f, &k, err);
    }
    fclose(f);
    if (rc) {
        dataset_free(d);
        return rc;
    }
    *out = d;
    return PONDER_OK;
}
