/* trainer/config_suggest.c — "did you mean" hints for unknown keys and enum values.
 *
 * Distance is optimal string alignment (Levenshtein plus adjacent swaps), since
 * the usual typo is a transposition ("d_modle"). A key is also compared leaf to
 * leaf across sections, so "model.lr" suggests "optim.lr". A hint is offered
 * only when the distance is at most a third of the candidate's leaf (at least 1):
 * a far-fetched guess is worse than none. */
#include "trainer/config_schema.h"

#include <stdio.h>  /* snprintf */
#include <stdlib.h> /* strtol */
#include <string.h> /* strchr, strlen, strncmp, strrchr */

#define SUGGEST_MAX_LEN 128

static size_t min3(size_t a, size_t b, size_t c) {
    size_t m = a < b ? a : b;
    return m < c ? m : c;
}

/* Optimal string alignment distance of a[0..n) and b[0..m). */
static size_t osa_distance(const char *a, size_t n, const char *b, size_t m) {
    if (n >= SUGGEST_MAX_LEN || m >= SUGGEST_MAX_LEN) return SUGGEST_MAX_LEN;
    size_t rows[3][SUGGEST_MAX_LEN + 1];
    size_t *prev2 = rows[0], *prev = rows[1], *cur = rows[2];
    for (size_t j = 0; j <= m; j++) prev[j] = j;
    for (size_t i = 1; i <= n; i++) {
        cur[0] = i;
        for (size_t j = 1; j <= m; j++) {
            size_t cost = a[i - 1] != b[j - 1];
            cur[j] = min3(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost);
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && prev2[j - 2] + 1 < cur[j])
                cur[j] = prev2[j - 2] + 1;
        }
        size_t *t = prev2;
        prev2 = prev, prev = cur, cur = t;
    }
    return prev[m];
}

static const char *leaf_of(const char *path) {
    const char *dot = strrchr(path, '.');
    return dot ? dot + 1 : path;
}

static size_t key_score(const char *given, const char *cand) {
    size_t best = osa_distance(given, strlen(given), cand, strlen(cand));
    const char *gl = leaf_of(given), *cl = leaf_of(cand);
    if (gl == given || cl == cand) return best;
    size_t gp = (size_t)(gl - given), cp = (size_t)(cl - cand);
    size_t other_section = gp != cp || strncmp(given, cand, gp) != 0;
    size_t leaf = osa_distance(gl, strlen(gl), cl, strlen(cl)) + other_section;
    return leaf < best ? leaf : best;
}

typedef struct Best {
    char text[SUGGEST_MAX_LEN];
    size_t score;
} Best;

static void consider(Best *best, const char *given, const char *cand) {
    size_t limit = strlen(leaf_of(cand)) / 3;
    size_t score = key_score(given, cand);
    if (score > (limit < 1 ? 1 : limit) || score >= best->score) return;
    best->score = score;
    snprintf(best->text, sizeof best->text, "%s", cand);
}

/* Sections are candidates too, so a misspelt section ("modle:") gets a hint. */
static void consider_sections(Best *best, const char *given, const ConfigKey *keys, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const char *dot = strchr(keys[i].path, '.');
        char section[SUGGEST_MAX_LEN];
        if (!dot || (size_t)(dot - keys[i].path) >= sizeof section) continue;
        snprintf(section, sizeof section, "%.*s", (int)(dot - keys[i].path), keys[i].path);
        consider(best, given, section);
    }
}

/* List item keys are offered under the list and index the user wrote
 * ("stages.1.stpes" -> "stages.1.steps"). */
static void consider_item_keys(Best *best, const char *given) {
    size_t n_lists;
    const ConfigList *lists = config_lists(&n_lists);
    for (size_t l = 0; l < n_lists; l++) {
        size_t len = strlen(lists[l].path);
        if (strncmp(given, lists[l].path, len) != 0 || given[len] != '.') continue;
        char *end;
        long index = strtol(given + len + 1, &end, 10);
        if (end == given + len + 1 || *end != '.') return;
        for (size_t i = 0; i < lists[l].n_keys; i++) {
            char cand[SUGGEST_MAX_LEN];
            snprintf(cand, sizeof cand, "%s.%ld.%s", lists[l].path, index, lists[l].keys[i].path);
            consider(best, given, cand);
        }
    }
}

void config_suggest_key(const char *path, char *buf, size_t size) {
    Best best = {.text = "", .score = SUGGEST_MAX_LEN};
    size_t n;
    const ConfigKey *keys = config_keys(&n);
    for (size_t i = 0; i < n; i++) consider(&best, path, keys[i].path);
    consider_sections(&best, path, keys, n);
    consider_item_keys(&best, path);
    if (best.text[0])
        snprintf(buf, size, "; did you mean '%s'?", best.text);
    else if (size)
        buf[0] = '\0';
}

void config_suggest_value(const char *text, const char *const *values, char *buf, size_t size) {
    Best best = {.text = "", .score = SUGGEST_MAX_LEN};
    for (size_t i = 0; values[i]; i++) consider(&best, text, values[i]);
    if (best.text[0])
        snprintf(buf, size, "; did you mean '%s'?", best.text);
    else if (size)
        buf[0] = '\0';
}
