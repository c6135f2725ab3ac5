/* algos/sft.c — SFT batches, loss and TON thought dropout (see sft.h). */
#include "algos/sft.h"

#include <stdlib.h> /* malloc, free */
#include <string.h> /* strstr, strlen, memcpy */

int sft_drop_thought(const char *response, char **out, PonderError *err) {
    *out = NULL;
    const char *open = strstr(response, "<think>");
    const char *close = open ? strstr(open, "</think>") : NULL;
    if (!open || !close)
        return ponder_error(err, PONDER_ERR_CONFIG,
                            "thought dropout: response has no <think>...</think> block: '%.60s'",
                            response);
    size_t head = (size_t)(open - response), tail = strlen(close);
    const char *empty = SFT_EMPTY_THOUGHT;
    size_t total = head + strlen(empty) + tail - strlen("</think>");
    char *s = malloc(total + 1);
    if (!s) return ponder_error(err, PONDER_ERR_NOMEM, "out of memory");
    memcpy(s, response, head);
    memcpy(s + head, empty, strlen(empty));
    memcpy(s + head + strlen(empty), close + strlen("</think>"), tail - strlen("</think>") + 1);
    *out = s;
    return PONDER_OK;
}

void sft_batch_free(SftBatch *b) {
    free(b->tokens);
    free(b->targets);
    free(b->mask);
    memset(b, 0, sizeof *b);
}

typedef struct Encoded {
    int32_t *ids;
    int64_t n, cap, prompt_len; /* prompt_len counts <bos> */
} Encoded;

/* <bos> prompt response <eos>, with the response's thought dropped if asked. */
static int encode_item(const Tokenizer *tok, const DataItem *it, int drop, Encoded *e,
                       PonderError *err) {
    e->ids = NULL, e->n = 0, e->cap = 0;
    if (!it->response)
        return ponder_error(err, PONDER_ERR_CONFIG, "SFT item has no response: '%.60s'",
                            it->prompt);
    char *dropped = NULL;
    if (drop && sft_drop_thought(it->response, &dropped, err)) return err->code;
    int32_t bos = tokenizer_special(tok, TOK_BOS), eos = tokenizer_special(tok, TOK_EOS);
    int rc = PONDER_OK;
    e->cap = 64;
    e->ids = malloc((size_t)e->cap * sizeof(int32_t));
    if (!e->ids) rc = ponder_error(err, PONDER_ERR_NOMEM, "out of memory");
    if (rc == PONDER_OK) {
        e->ids[0] = bos;
        e->n = 1;
        rc = tokenizer_encode(tok, it->prompt, &e->ids, &e->n, &e->cap, err);
    }
    e->prompt_len = e->n;
    if (rc == PONDER_OK)
        rc = tokenizer_encode(tok, dropped ? dropped : it->response, &e->ids, &e->n, &e->cap, err);
    if (rc == PONDER_OK) rc = tokenizer_encode(tok, "<eos>", &e->ids, &e->n, &e->cap, err);
    free(dropped);
    if (rc == PONDER_OK && e->ids[e->n - 1] != eos)
        rc = ponder_error(err, PONDER_ERR_RUNTIME, "tokenizer did not map <eos> to its id");
    return rc;
}

static int alloc_batch(SftBatch *b, int64_t B, int64_t T) {
    b->B = B, b->T = T;
    b->tokens = calloc((size_t)(B * T), sizeof(int32_t));
    b->targets = calloc((size_t)(B * T), sizeof(int32_t));
    b->mask = calloc((size_t)(B * T), sizeof(float));
    return b->tokens && b->targets && b->mask ? PONDER_OK : PONDER_ERR_NOMEM;
}

int sft_batch_build(SftBatch *b, const Tokenizer *tok, const DataItem *items, int64_t n,
                    int64_t max_T, double thought_dropout, Rng *rng, PonderError *err) {
    memset(b, 0, sizeof *b);
    Encoded *enc = calloc((size_t)n, sizeof(Encoded));
    if (!enc) return ponder_error(err, PONDER_ERR_NOMEM, "out of memory");
    int rc = PONDER_OK;
    int64_t T = 1;
    for (int64_t i = 0; i < n && rc == PONDER_OK; i++) {
        /* one draw per item whatever p is, so the stream does not depend on p */
        int drop = rng_uniform_double(rng) < thought_dropout;
        rc = encode_item(tok, &items[i], drop, &enc[i], err);
        if (rc) break;
        b->dropped += drop;
        if (enc[i].n - 1 > max_T)
            rc = ponder_error(err, PONDER_ERR_CONFIG,
                              "SFT item '%.40s' has %lld tokens; seq_len allows %lld",
                              items[i].prompt, (long long)enc[i].n, (long long)max_T + 1);
        else if (enc[i].n - 1 > T) T = enc[i].n - 1;
    }
    if (rc == PONDER_OK && alloc_batch(b, n, T))
        rc = ponder_error(err, PONDER_ERR_NOMEM, "out of memory for an SFT batch");
    const int32_t pad = tokenizer_special(tok, TOK_PAD);
    for (int64_t i = 0; i < n && rc == PONDER_OK; i++) {
        for (int64_t t = 0; t < T; t++) {
            int64_t at = i * T + t;
            int real = t + 1 < enc[i].n;
            b->tokens[at] = real ? enc[i].ids[t] : pad;
            b->targets[at] = real ? enc[i].ids[t + 1] : pad;
            b->mask[at] = (real && t + 1 >= enc[i].prompt_len) ? 1.0f : 0.0f;
            b->target_tokens += (int64_t)b->mask[at];
            b->real_tokens += real;
        }
    }
    for (int64_t i = 0; i < n; i++) free(enc[i].ids);
    free(enc);
    if (rc) sft_batch_free(b);
    return rc;
}

double sft_loss(const float *logp, const float *mask, int64_t N, double norm, float *dlogp) {
    double loss = 0.0;
    for (int64_t i = 0; i < N; i++) {
        loss -= (double)mask[i] * logp[i];
        dlogp[i] = (float)(-(double)mask[i] / norm);
    }
    return loss / norm;
}
