/* model/tokenizer.h — text <-> token ids.
 *
 * Today one kind: `char`, a fixed alphabet for the built-in tasks, so a tiny
 * model needs no tokenizer file and every vocabulary is the same size:
 *
 *   ids 0..6    the special tokens, in TokSpecial order:
 *               <bos> <eos> <pad> <think> </think> <answer> </answer>
 *   id  7       '\n'
 *   ids 8..102  printable ASCII 32 (' ') .. 126 ('~'), in byte order
 *
 * The struct carries a type so a `bpe` tokenizer (Hugging Face tokenizer.json
 * byte-level BPE, DESIGN.md "Tokenizers") can live behind the same calls later.
 *
 * Round trip: for any text made of the alphabet, decode(encode(text)) == text.
 * That is why "<pad>" in text is NOT mapped to the pad id: decode skips pad ids
 * (they are batch filler, not content), so mapping the string would lose it.
 * The other six special strings map to their single id wherever they occur. */
#ifndef PONDER_MODEL_TOKENIZER_H
#define PONDER_MODEL_TOKENIZER_H

#include <stdint.h> /* int32_t, int64_t */

#include "util/error.h" /* PonderError */

typedef enum {
    TOK_BOS,
    TOK_EOS,
    TOK_PAD,
    TOK_THINK,
    TOK_END_THINK,
    TOK_ANSWER,
    TOK_END_ANSWER,
    TOK_N_SPECIAL
} TokSpecial;

typedef enum { TOKENIZER_CHAR = 0, TOKENIZER_BPE = 1 } TokenizerType;

typedef struct Tokenizer Tokenizer; /* opaque */

/* Vocabulary size of the char tokenizer: 7 specials + '\n' + 95 printable. */
#define TOKENIZER_CHAR_VOCAB 103

int tokenizer_create_char(Tokenizer **out, PonderError *err);
void tokenizer_free(Tokenizer *t);

TokenizerType tokenizer_type(const Tokenizer *t);
int64_t tokenizer_vocab_size(const Tokenizer *t);
/* The id of a special token. */
int32_t tokenizer_special(const Tokenizer *t, TokSpecial s);
/* The text one id decodes to ("<think>", "a", "\n"), or NULL when out of range.
 * The pad id gives "<pad>" here (for debugging), though decode skips it. */
const char *tokenizer_token_text(const Tokenizer *t, int32_t id);

/* Appends the ids for text to (*ids, *n), growing the array (*cap elements;
 * *ids may start NULL with *cap 0; the caller frees it). Special-token strings
 * ("<think>", ...; not "<pad>", see above) map to their single id. On error
 * *n is left as it was and the message names the character and its byte
 * position, e.g. "tokenizer: character '\t' (0x09) at position 12 is not in
 * the char alphabet ...". */
int tokenizer_encode(const Tokenizer *t, const char *text, int32_t **ids, int64_t *n, int64_t *cap,
                     PonderError *err);

/* Decodes n ids into a malloc'd NUL-terminated string (caller frees). Specials
 * decode to their strings, <pad> is skipped, an id out of range is an error
 * naming the id and its position. */
int tokenizer_decode(const Tokenizer *t, const int32_t *ids, int64_t n, char **text, PonderError *err);

#endif
