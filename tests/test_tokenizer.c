/* tests/test_tokenizer.c — the char tokenizer: the fixed id layout, exact
 * round trips, special strings, appending, and the error messages (checked by
 * text: naming the character and its position is the feature). */
#include <criterion/criterion.h>

#include <stdlib.h> /* free */
#include <string.h> /* strcmp, strstr */

#include "model/tokenizer.h"

/* ---------------------------------------------------------------- helpers ---*/

static Tokenizer *make(void) {
    Tokenizer *t = NULL;
    PonderError err = {0};
    cr_assert_eq(tokenizer_create_char(&t, &err), 0, "%s", err.msg);
    return t;
}

/* Encodes text into a fresh array and returns it (count in *n). */
static int32_t *encode(const Tokenizer *t, const char *text, int64_t *n) {
    int32_t *ids = NULL;
    int64_t cap = 0;
    PonderError err = {0};
    *n = 0;
    cr_assert_eq(tokenizer_encode(t, text, &ids, n, &cap, &err), 0, "%s", err.msg);
    return ids;
}

static void expect_round_trip(const Tokenizer *t, const char *text) {
    int64_t n;
    int32_t *ids = encode(t, text, &n);
    char *back = NULL;
    PonderError err = {0};
    cr_assert_eq(tokenizer_decode(t, ids, n, &back, &err), 0, "%s", err.msg);
    cr_assert_str_eq(back, text);
    free(back);
    free(ids);
}

static void expect_encode_error(const char *text, const char *needle) {
    Tokenizer *t = make();
    int32_t *ids = NULL;
    int64_t n = 0, cap = 0;
    PonderError err = {0};
    int rc = tokenizer_encode(t, text, &ids, &n, &cap, &err);
    cr_assert_neq(rc, 0, "expected an error for \"%s\"", text);
    cr_assert_eq(rc, err.code);
    cr_assert(strstr(err.msg, needle), "message \"%s\"\n  lacks \"%s\"", err.msg, needle);
    cr_assert_eq(n, 0, "a failed encode must not append");
    free(ids);
    tokenizer_free(t);
}

/* ---------------------------------------------------------------- layout ----*/

Test(tokenizer, char_layout) {
    Tokenizer *t = make();
    cr_assert_eq(tokenizer_type(t), TOKENIZER_CHAR);
    cr_assert_eq(tokenizer_vocab_size(t), 103);
    for (int s = 0; s < TOK_N_SPECIAL; s++) cr_assert_eq(tokenizer_special(t, (TokSpecial)s), s);
    cr_assert_str_eq(tokenizer_token_text(t, 0), "<bos>");
    cr_assert_str_eq(tokenizer_token_text(t, 4), "</think>");
    cr_assert_str_eq(tokenizer_token_text(t, 6), "</answer>");
    cr_assert_str_eq(tokenizer_token_text(t, 7), "\n");
    cr_assert_str_eq(tokenizer_token_text(t, 8), " ");
    cr_assert_str_eq(tokenizer_token_text(t, 102), "~");
    cr_assert_null(tokenizer_token_text(t, 103));
    cr_assert_null(tokenizer_token_text(t, -1));
    int64_t n;
    int32_t *ids = encode(t, "A\n0 ~", &n);
    cr_assert_eq(n, 5);
    int32_t want[] = {8 + 'A' - 32, 7, 8 + '0' - 32, 8, 102};
    for (int i = 0; i < 5; i++) cr_assert_eq(ids[i], want[i], "id %d", i);
    free(ids);
    tokenizer_free(t);
}

/* ---------------------------------------------------------------- round trip */

Test(tokenizer, round_trip_whole_alphabet) {
    Tokenizer *t = make();
    char text[200];
    int k = 0;
    for (int c = 32; c <= 126; c++) text[k++] = (char)c;
    text[k++] = '\n';
    for (int c = 126; c >= 32; c -= 3) text[k++] = (char)c;
    text[k] = '\0';
    expect_round_trip(t, text);
    expect_round_trip(t, "");
    expect_round_trip(t, "<");
    expect_round_trip(t, "<thin");                /* a prefix of a special is plain text */
    expect_round_trip(t, "<pad>");                /* stays characters, see tokenizer.h */
    expect_round_trip(t, "a<think>b</think>\n<answer>42</answer><eos>");
    tokenizer_free(t);
}

Test(tokenizer, specials_map_to_single_ids) {
    Tokenizer *t = make();
    int64_t n;
    int32_t *ids = encode(t, "<bos><think>1+1=2\n</think><answer>2</answer><eos>", &n);
    cr_assert_eq(n, 13);
    cr_assert_eq(ids[0], tokenizer_special(t, TOK_BOS));
    cr_assert_eq(ids[1], tokenizer_special(t, TOK_THINK));
    cr_assert_eq(ids[8], tokenizer_special(t, TOK_END_THINK));
    cr_assert_eq(ids[9], tokenizer_special(t, TOK_ANSWER));
    cr_assert_eq(ids[11], tokenizer_special(t, TOK_END_ANSWER));
    cr_assert_eq(ids[12], tokenizer_special(t, TOK_EOS));
    free(ids);
    ids = encode(t, "<pad>", &n);
    cr_assert_eq(n, 5, "\"<pad>\" in text is five characters");
    free(ids);
    tokenizer_free(t);
}

Test(tokenizer, encode_appends_and_grows) {
    Tokenizer *t = make();
    int32_t *ids = NULL;
    int64_t n = 0, cap = 0;
    PonderError err = {0};
    for (int i = 0; i < 100; i++) cr_assert_eq(tokenizer_encode(t, "ab<think>", &ids, &n, &cap, &err), 0);
    cr_assert_eq(n, 300);
    cr_assert_geq(cap, n);
    for (int i = 0; i < 100; i++) cr_assert_eq(ids[3 * i + 2], tokenizer_special(t, TOK_THINK));
    /* A failed append leaves the earlier ids and the count alone. */
    cr_assert_neq(tokenizer_encode(t, "xy\tz", &ids, &n, &cap, &err), 0);
    cr_assert_eq(n, 300);
    free(ids);
    tokenizer_free(t);
}

/* ---------------------------------------------------------------- decode ----*/

Test(tokenizer, decode_skips_pad_and_spells_specials) {
    Tokenizer *t = make();
    int32_t pad = tokenizer_special(t, TOK_PAD);
    int32_t ids[] = {pad, tokenizer_special(t, TOK_THINK), 8 + 'x' - 32, pad, 7, tokenizer_special(t, TOK_EOS), pad};
    char *s = NULL;
    PonderError err = {0};
    cr_assert_eq(tokenizer_decode(t, ids, 7, &s, &err), 0, "%s", err.msg);
    cr_assert_str_eq(s, "<think>x\n<eos>");
    free(s);
    cr_assert_eq(tokenizer_decode(t, ids, 0, &s, &err), 0);
    cr_assert_str_eq(s, "");
    free(s);
    tokenizer_free(t);
}

Test(tokenizer, decode_rejects_out_of_range) {
    Tokenizer *t = make();
    char *s = NULL;
    PonderError err = {0};
    int32_t high[] = {8, 9, 103};
    cr_assert_eq(tokenizer_decode(t, high, 3, &s, &err), PONDER_ERR_PARSE);
    cr_assert_null(s);
    cr_assert_str_eq(err.msg, "tokenizer: id 103 at position 2 is out of range [0, 103)");
    int32_t low[] = {-1};
    cr_assert_neq(tokenizer_decode(t, low, 1, &s, &err), 0);
    cr_assert(strstr(err.msg, "id -1 at position 0"), "%s", err.msg);
    tokenizer_free(t);
}

/* ---------------------------------------------------------------- errors ----*/

Test(tokenizer, error_tab_names_char_and_position) {
    expect_encode_error("hello world\tx",
                        "tokenizer: character '\\t' (0x09) at position 11 is not in the char alphabet");
}

Test(tokenizer, error_carriage_return) { expect_encode_error("a\r\n", "character '\\r' (0x0d) at position 1"); }

Test(tokenizer, error_other_control) { expect_encode_error("ab\x01", "control character 0x01 at position 2"); }

Test(tokenizer, error_delete) { expect_encode_error("~\x7f", "control character 0x7f at position 1"); }

Test(tokenizer, error_utf8_names_code_point) {
    expect_encode_error("caf\xc3\xa9", "character U+00E9 '\xc3\xa9' at position 3 is not in the char alphabet");
    expect_encode_error("<think>\xe2\x82\xac", "character U+20AC '\xe2\x82\xac' at position 7");
    expect_encode_error("\xf0\x9f\x98\x80!", "character U+1F600");
}

Test(tokenizer, error_invalid_utf8_names_byte) {
    expect_encode_error("ab\xff", "byte 0xff (not valid UTF-8) at position 2");
    expect_encode_error("\x80", "byte 0x80 (not valid UTF-8) at position 0");
    expect_encode_error("\xc0\xaf", "byte 0xc0 (not valid UTF-8)"); /* overlong '/' */
    expect_encode_error("\xe2\x82", "byte 0xe2 (not valid UTF-8)"); /* truncated */
}
