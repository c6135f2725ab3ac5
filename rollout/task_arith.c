/* rollout/task_arith.c — generation and formatting of `arith` items (format and
 * split rule in task_arith.h). */
#include "rollout/task_arith.h"

#include <ctype.h>  /* isspace, isdigit */
#include <limits.h> /* ULLONG_MAX */
#include <stdio.h>  /* snprintf */
#include <string.h> /* memset, strchr, strlen */

#include "util/rng.h" /* rng_derive, rng_below */

/* Separates arith's random stream from other users of rng_derive(seed, ...). */
#define ARITH_STREAM_TAG 0x61726974ull /* "arit" */
/* Draws before giving up on finding a problem of the wanted split: EVAL holds
 * ~10% of problems, so 10000 draws fail only when the space has (almost) none. */
#define ARITH_MAX_DRAWS 10000

/* ------------------------------------------------------------------ spec ----*/

int arith_spec_validate(const ArithSpec *spec, PonderError *err) {
    if (spec->min_digits < 1 || spec->max_digits > ARITH_MAX_DIGITS || spec->min_digits > spec->max_digits)
        return ponder_error(err, PONDER_ERR_CONFIG,
                            "arith: digits must satisfy 1 <= min_digits <= max_digits <= %d, got min_digits %d, "
                            "max_digits %d", ARITH_MAX_DIGITS, spec->min_digits, spec->max_digits);
    size_t n = strnlen(spec->ops, sizeof spec->ops);
    if (n == 0 || n == sizeof spec->ops)
        return ponder_error(err, PONDER_ERR_CONFIG, "arith: ops must be a non-empty set of \"+-\", got \"%.*s\"",
                            (int)n, spec->ops);
    for (size_t i = 0; i < n; i++) {
        char c = spec->ops[i];
        if (c != '+' && c != '-')
            return ponder_error(err, PONDER_ERR_CONFIG, "arith: ops \"%s\": '%c' is not supported (use + and -)",
                                spec->ops, c);
        if (strchr(spec->ops + i + 1, c))
            return ponder_error(err, PONDER_ERR_CONFIG, "arith: ops \"%s\": '%c' appears twice", spec->ops, c);
    }
    return PONDER_OK;
}

/* ----------------------------------------------------------------- split ----*/

/* splitmix64's finaliser: a fixed bijective mix, independent of util/rng's
 * state so the held-out set can never move with RNG changes. */
static uint64_t mix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

uint64_t arith_problem_hash(long long a, char op, long long b) {
    uint64_t h = mix64(0x6172697468ull ^ (uint64_t)a); /* "arith" */
    h = mix64(h ^ (uint64_t)(unsigned char)op);
    return mix64(h ^ (uint64_t)b);
}

DataSplit arith_problem_split(long long a, char op, long long b) {
    return arith_problem_hash(a, op, b) % 10 == 0 ? DATA_SPLIT_EVAL : DATA_SPLIT_TRAIN;
}

/* ---------------------------------------------------------------- format ----*/

static int count_digits(long long x) {
    int d = 1;
    while (x >= 10) x /= 10, d++;
    return d;
}

/* Appends printf output at *at inside buf (sizes here are bounded by
 * ARITH_MAX_DIGITS, so the buffers in ArithItem never truncate). */
#define APPEND(buf, at, ...) ((at) += (size_t)snprintf((buf) + (at), sizeof(buf) - (at), __VA_ARGS__))

/* "da+db[+1]=sum\n" per column, least significant first. */
static void thought_add(long long x, long long y, char (*buf)[512], size_t at) {
    int cols = count_digits(x > y ? x : y), carry = 0;
    for (int i = 0; i < cols; i++, x /= 10, y /= 10) {
        int dx = (int)(x % 10), dy = (int)(y % 10), s = dx + dy + carry;
        APPEND(*buf, at, "%d+%d%s=%d\n", dx, dy, carry ? "+1" : "", s);
        carry = s >= 10;
    }
}

/* "[1]dx-dy[-1]=d\n" per column of x - y (x >= y), least significant first. */
static void thought_sub(long long x, long long y, char (*buf)[512], size_t at) {
    int cols = count_digits(x), borrow = 0;
    for (int i = 0; i < cols; i++, x /= 10, y /= 10) {
        int dx = (int)(x % 10), dy = (int)(y % 10), d = dx - dy - borrow;
        int borrows = d < 0;
        APPEND(*buf, at, "%s%d-%d%s=%d\n", borrows ? "1" : "", dx, dy, borrow ? "-1" : "", d + 10 * borrows);
        borrow = borrows;
    }
}

void arith_format(long long a, char op, long long b, ArithItem *out) {
    memset(out, 0, sizeof *out); /* identical bytes for identical items */
    out->a = a;
    out->b = b;
    out->op = op;
    int da = count_digits(a), db = count_digits(b);
    out->difficulty = da > db ? da : db;
    snprintf(out->prompt, sizeof out->prompt, "%lld%c%lld=", a, op, b);
    if (op == '+') {
        thought_add(a, b, &out->thought, 0);
        snprintf(out->answer, sizeof out->answer, "%lld", a + b);
    } else if (a >= b) {
        thought_sub(a, b, &out->thought, 0);
        snprintf(out->answer, sizeof out->answer, "%lld", a - b);
    } else {
        /* Negative result: say so first, then compute b - a column by column. */
        size_t at = 0;
        APPEND(out->thought, at, "%lld<%lld\n", a, b);
        thought_sub(b, a, &out->thought, at);
        snprintf(out->answer, sizeof out->answer, "-%lld", b - a);
    }
    snprintf(out->response, sizeof out->response, "<think>%s</think><answer>%s</answer>", out->thought, out->answer);
}

/* ------------------------------------------------------------------ draw ----*/

/* An operand with a uniformly drawn digit count, then uniform among numbers of
 * that many digits (1 digit includes 0). */
static long long draw_operand(Rng *r, const ArithSpec *spec) {
    int d = spec->min_digits + (int)rng_below(r, (uint64_t)(spec->max_digits - spec->min_digits + 1));
    long long lo = 1;
    for (int i = 1; i < d; i++) lo *= 10;
    long long hi = lo * 10 - 1;
    if (d == 1) lo = 0;
    return lo + (long long)rng_below(r, (uint64_t)(hi - lo + 1));
}

int arith_item(const ArithSpec *spec, uint64_t seed, int64_t index, DataSplit split, ArithItem *out,
               PonderError *err) {
    int rc = arith_spec_validate(spec, err);
    if (rc) return rc;
    if (index < 0) return ponder_error(err, PONDER_ERR_CONFIG, "arith: item index %lld is negative", (long long)index);
    Rng r = rng_derive(seed, (uint64_t)index, (uint64_t)split, ARITH_STREAM_TAG);
    uint64_t n_ops = strlen(spec->ops);
    for (int draw = 0; draw < ARITH_MAX_DRAWS; draw++) {
        char op = spec->ops[rng_below(&r, n_ops)];
        long long a = draw_operand(&r, spec);
        long long b = draw_operand(&r, spec);
        if (arith_problem_split(a, op, b) != split) continue; /* keeps the splits disjoint */
        arith_format(a, op, b, out);
        return PONDER_OK;
    }
    return ponder_error(err, PONDER_ERR_CONFIG,
                        "arith: no %s problem found in %d draws for digits %d..%d, ops \"%s\"; the problem space "
                        "is too small for a held-out split (widen max_digits or add ops)",
                        split == DATA_SPLIT_EVAL ? "eval" : "train", ARITH_MAX_DRAWS, spec->min_digits,
                        spec->max_digits, spec->ops);
}

/* ----------------------------------------------------------------- grade ----*/

static long long item_value(const ArithItem *item) {
    return item->op == '+' ? item->a + item->b : item->a - item->b;
}

int arith_answer_matches(const ArithItem *item, const char *text) {
    const char *s = text;
    while (isspace((unsigned char)*s)) s++;
    int negative = *s == '-';
    if (*s == '-' || *s == '+') s++;
    if (!isdigit((unsigned char)*s)) return 0;
    unsigned long long v = 0;
    for (; isdigit((unsigned char)*s); s++) {
        if (v > (ULLONG_MAX - 9) / 10) return 0; /* would overflow: beyond any answer */
        v = v * 10 + (unsigned)(*s - '0');
    }
    while (isspace((unsigned char)*s)) s++;
    if (*s) return 0;
    long long want = item_value(item);
    unsigned long long mag = want < 0 ? 0ull - (unsigned long long)want : (unsigned long long)want;
    if (v == 0) return want == 0;
    return (want < 0) == negative && mag == v;
}
