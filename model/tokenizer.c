/* model/tokenizer.c — the char tokenizer (see tokenizer.h for the alphabet).
 *
 * Encoding is a table lookup per byte plus a check for special-token strings
 * at each '<'; decoding concatenates per-id strings. Both are O(length). */
#include "model/tokenizer.h"

#include <stdio.h>  /* snprintf */
#include <stdlib.h> /* malloc, realloc, free */
#include <string.h> /* strlen, strncmp, memcpy */

/* Longest per-id text: "</answer>" (9) + NUL. */
#define TOK_TEXT_MAX 10

struct Tokenizer {
    TokenizerType type; /* char today; bpe later adds its merge tables here */
    int64_t vocab_size;
    int32_t special[TOK_N_SPECIAL];
    int16_t byte_to_id[256];                   /* -1: byte not in the alphabet */
    char id_text[TOKENIZER_CHAR_VOCAB][TOK_TEXT_MAX]; /* what each id decodes to */
};

static const char *const SPECIAL_TEXT[TOK_N_SPECIAL] = {
    "<bos>", "<eos>", "<pad>", "<think>", "</think>", "<answer>", "</answer>",
};

/* ------------------------------------------------------------ create/free ---*/

static void char_tables_fill(Tokenizer *t) {
    for (int b = 0; b < 256; b++) t->byte_to_id[b] = -1;
    for (int s = 0; s < TOK_N_SPECIAL; s++) {
        t->special[s] = s;
        snprintf(t->id_text[s], TOK_TEXT_MAX, "%s", SPECIAL_TEXT[s]);
    }
    int32_t id = TOK_N_SPECIAL;
    t->byte_to_id['\n'] = (int16_t)id;
    snprintf(t->id_text[id++], TOK_TEXT_MAX, "\n");
    for (int c = 32; c <= 126; c++, id++) {
        t->byte_to_id[c] = (int16_t)id;
        t->id_text[id][0] = (char)c;
        t->id_text[id][1] = '\0';
    }
}

int tokenizer_create_char(Tokenizer **out, PonderError *err) {
    *out = NULL;
    Tokenizer *t = calloc(1, sizeof *t);
    if (!t) return ponder_error(err, PONDER_ERR_NOMEM, "tokenizer: out of memory");
    t->type = TOKENIZER_CHAR;
    t->vocab_size = TOKENIZER_CHAR_VOCAB;
    char_tables_fill(t);
    *out = t;
    return PONDER_OK;
}

void tokenizer_free(Tokenizer *t) { free(t); }

TokenizerType tokenizer_type(const Tokenizer *t) { return t->type; }

int64_t tokenizer_vocab_size(const Tokenizer *t) { return t->vocab_size; }

int32_t tokenizer_special(const Tokenizer *t, TokSpecial s) { return t->special[s]; }

const char *tokenizer_token_text(const Tokenizer *t, int32_t id) {
    if (id < 0 || id >= t->vocab_size) return NULL;
    return t->id_text[id];
}

/* ---------------------------------------------------------------- encode ----*/

/* Length of a valid UTF-8 sequence at s and its code point, or 0 when the
 * bytes are not valid UTF-8 (overlong, surrogate, truncated, > U+10FFFF). */
static int utf8_decode(const unsigned char *s, uint32_t *cp) {
    int len = s[0] >= 0xF0 ? 4 : s[0] >= 0xE0 ? 3 : s[0] >= 0xC0 ? 2 : 0;
    if (len == 0 || s[0] >= 0xF8) return 0;
    uint32_t v = s[0] & (0x7F >> len);
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0; /* also stops at the NUL */
        v = (v << 6) | (s[i] & 0x3F);
    }
    static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (v < min_cp[len] || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    *cp = v;
    return len;
}

/* Describes the byte(s) at s for an error message: "character '\t' (0x09)",
 * "character U+00E9 'é'", "control character 0x01", "byte 0xff (not UTF-8)". */
static void describe_char(const unsigned char *s, char *buf, size_t size) {
    static const char escapes[] = "\a\b\t\v\f\r";
    static const char letters[] = "abtvfr";
    const char *e = s[0] ? strchr(escapes, s[0]) : NULL;
    uint32_t cp;
    int len;
    if (e)
        snprintf(buf, size, "character '\\%c' (0x%02x)", letters[e - escapes], s[0]);
    else if (s[0] < 0x80)
        snprintf(buf, size, "control character 0x%02x", s[0]);
    else if ((len = utf8_decode(s, &cp)) > 0)
        snprintf(buf, size, "character U+%04X '%.*s'", (unsigned)cp, len, (const char *)s);
    else
        snprintf(buf, size, "byte 0x%02x (not valid UTF-8)", s[0]);
}

/* The special token spelled at s, or -1. <pad> is excluded (see header). */
static int32_t special_at(const Tokenizer *t, const char *s) {
    if (s[0] != '<') return -1;
    for (int k = 0; k < TOK_N_SPECIAL; k++) {
        if (k == TOK_PAD) continue;
        if (strncmp(s, SPECIAL_TEXT[k], strlen(SPECIAL_TEXT[k])) == 0) return t->special[k];
    }
    return -1;
}

/* Makes room for `need` ids, doubling so appends are amortised O(1). */
static int ids_reserve(int32_t **ids, int64_t *cap, int64_t need, PonderError *err) {
    if (need <= *cap) return PONDER_OK;
    int64_t new_cap = *cap > 0 ? *cap : 64;
    while (new_cap < need) new_cap *= 2;
    int32_t *grown = realloc(*ids, (size_t)new_cap * sizeof **ids);
    if (!grown) return ponder_error(err, PONDER_ERR_NOMEM, "tokenizer: out of memory for %lld ids", (long long)new_cap);
    *ids = grown;
    *cap = new_cap;
    return PONDER_OK;
}

static int char_not_in_alphabet(const char *text, size_t pos, PonderError *err) {
    char what[64];
    describe_char((const unsigned char *)text + pos, what, sizeof what);
    return ponder_error(err, PONDER_ERR_PARSE,
                        "tokenizer: %s at position %zu is not in the char alphabet "
                        "(printable ASCII, '\\n' and the special tokens)", what, pos);
}

int tokenizer_encode(const Tokenizer *t, const char *text, int32_t **ids, int64_t *n, int64_t *cap,
                     PonderError *err) {
    size_t len = strlen(text);
    /* One id per byte at most: reserve once, so the loop cannot fail halfway. */
    int rc = ids_reserve(ids, cap, *n + (int64_t)len, err);
    if (rc) return rc;
    int64_t out = *n;
    for (size_t i = 0; i < len;) {
        int32_t id = special_at(t, text + i);
        if (id >= 0) {
            (*ids)[out++] = id;
            i += strlen(t->id_text[id]);
            continue;
        }
        id = t->byte_to_id[(unsigned char)text[i]];
        if (id < 0) return char_not_in_alphabet(text, i, err); /* *n untouched */
        (*ids)[out++] = id;
        i++;
    }
    *n = out;
    return PONDER_OK;
}

/* ---------------------------------------------------------------- decode ----*/

int tokenizer_decode(const Tokenizer *t, const int32_t *ids, int64_t n, char **text, PonderError *err) {
    *text = NULL;
    size_t total = 0;
    for (int64_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->vocab_size)
            return ponder_error(err, PONDER_ERR_PARSE, "tokenizer: id %d at position %lld is out of range [0, %lld)",
                                (int)ids[i], (long long)i, (long long)t->vocab_size);
        if (ids[i] != t->special[TOK_PAD]) total += strlen(t->id_text[ids[i]]);
    }
    char *s = malloc(total + 1);
    if (!s) return ponder_error(err, PONDER_ERR_NOMEM, "tokenizer: out of memory decoding %lld ids", (long long)n);
    size_t at = 0;
    for (int64_t i = 0; i < n; i++) {
        if (ids[i] == t->special[TOK_PAD]) continue; /* batch filler, not content */
        size_t k = strlen(t->id_text[ids[i]]);
        memcpy(s + at, t->id_text[ids[i]], k);
        at += k;
    }
    s[at] = '\0';
    *text = s;
    return PONDER_OK;
}
