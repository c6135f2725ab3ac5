/* trainer/rl_micro.c — an RL mini-batch cut into length-sorted micro-batches
 * (rl_internal.h). A rollout's rows differ in length: with 16 prompts of 3 to
 * 9 tokens and completions of up to 48, a batch padded to its longest row is
 * about a fifth padding, and the products, norms and attention compute it all.
 * Sorting by length and cutting by a token budget gives each micro-batch its
 * own narrower window. */
#include <stdint.h> /* INT64_MAX */
#include <stdlib.h> /* calloc, free, qsort */
#include <string.h> /* memcpy, memset */

#include "trainer/rl_internal.h"

void rl_train_batch_free(TrainBatch *b) {
    free(b->tokens), free(b->targets), free(b->start), free(b->mask), free(b->cmask);
    free(b->sample_logp), free(b->group), free(b->clen);
    memset(b, 0, sizeof *b);
}

typedef struct RowKey {
    int32_t clen, plen; /* completion and prompt tokens */
    int64_t row;
} RowKey;

/* Longest completion first, then longest prompt, then row order: a total
 * order, so the plan does not depend on qsort's tie handling. */
static int row_key_cmp(const void *pa, const void *pb) {
    const RowKey *a = pa, *b = pb;
    if (a->clen != b->clen) return a->clen > b->clen ? -1 : 1;
    if (a->plen != b->plen) return a->plen > b->plen ? -1 : 1;
    return (a->row > b->row) - (a->row < b->row);
}

/* Model columns row i uses: inputs start[i] .. Pmax + clen - 2 (the last
 * input predicts the last completion token); at least one column. */
static int64_t row_first_col(const TrainBatch *b, int64_t i) { return b->start[i]; }
static int64_t row_end_col(const TrainBatch *b, int64_t i) {
    int64_t end = b->Pmax + b->clen[i] - 1;
    return end > b->start[i] ? end : b->start[i] + 1;
}

/* What a micro-batch costs, in padded tokens: its rows x columns, plus a
 * fixed charge for the pass itself (each op's thread start-up and barrier:
 * about 1 ms a pass for the tiny model, about 50 of its tokens). */
#define MICRO_PASS_TOKENS 64

/* Cuts rows keys[0..n), in their sorted order, into micro-batches of at most
 * `budget` padded tokens (a longer row alone) that cost the least in all:
 * best[e] is the least cost of rows [0, e), cut[e] where its last
 * micro-batch starts. A greedy fill left up to a fifth of a GRPO batch as
 * padding where completions of different lengths met in one micro-batch. */
static void plan_cuts(const TrainBatch *b, const RowKey *keys, int64_t n, int64_t budget,
                      int64_t *best, int64_t *cut) {
    best[0] = 0;
    for (int64_t e = 1; e <= n; e++) {
        int64_t lo = INT64_MAX, hi = 0;
        best[e] = INT64_MAX;
        for (int64_t s = e - 1; s >= 0; s--) {
            const int64_t i = keys[s].row, f = row_first_col(b, i), end = row_end_col(b, i);
            lo = f < lo ? f : lo, hi = end > hi ? end : hi;
            const int64_t rows = e - s, padded = rows * (hi - lo);
            if (rows > 1 && padded > budget) break; /* wider still further back */
            const int64_t cost = best[s] + padded + MICRO_PASS_TOKENS;
            if (cost < best[e]) best[e] = cost, cut[e] = s;
        }
    }
}

int rl_micro_plan(const TrainBatch *b, int64_t r0, int64_t rows, int64_t budget, RlMicroPlan *p,
                  PonderError *err) {
    memset(p, 0, sizeof *p);
    if (budget < 1) return ponder_error(err, PONDER_ERR_CONFIG, "micro-batch budget %lld < 1",
                                        (long long)budget);
    RowKey *keys = calloc((size_t)rows + 1, sizeof *keys);
    int64_t *best = calloc((size_t)rows + 1, sizeof *best), *cut = calloc((size_t)rows + 1, sizeof *cut);
    p->row = calloc((size_t)rows + 1, sizeof *p->row);
    p->first = calloc((size_t)rows + 2, sizeof *p->first);
    if (!keys || !best || !cut || !p->row || !p->first) {
        free(keys), free(best), free(cut);
        rl_micro_plan_free(p);
        return ponder_error(err, PONDER_ERR_NOMEM, "out of memory (micro-batch plan)");
    }
    for (int64_t i = 0; i < rows; i++)
        keys[i] = (RowKey){b->clen[r0 + i], (int32_t)(b->Pmax - b->start[r0 + i]), r0 + i};
    qsort(keys, (size_t)rows, sizeof *keys, row_key_cmp);
    for (int64_t k = 0; k < rows; k++) p->row[k] = keys[k].row;
    plan_cuts(b, keys, rows, budget, best, cut);
    for (int64_t e = rows; e > 0; e = cut[e]) p->n++;
    p->first[p->n] = rows;
    int64_t k = p->n;
    for (int64_t e = rows; e > 0; e = cut[e]) p->first[--k] = cut[e];
    free(keys), free(best), free(cut);
    return PONDER_OK;
}

void rl_micro_plan_free(RlMicroPlan *p) {
    free(p->row), free(p->first);
    memset(p, 0, sizeof *p);
}

int rl_micro_batch(const TrainBatch *b, const int64_t *idx, int64_t n, TrainBatch *out,
                   PonderError *err) {
    memset(out, 0, sizeof *out);
    int64_t lo = b->T, hi = 0, tc = 0;
    for (int64_t k = 0; k < n; k++) {
        const int64_t i = idx[k], f = row_first_col(b, i), e = row_end_col(b, i);
        lo = f < lo ? f : lo, hi = e > hi ? e : hi;
        tc = b->clen[i] > tc ? b->clen[i] : tc;
    }
    out->S = n, out->T = hi - lo, out->Pmax = b->Pmax - lo, out->Tc = tc;
    const size_t ST = (size_t)(n * out->T), SC = (size_t)(n * out->Tc);
    out->tokens = calloc(ST + 1, sizeof(int32_t));
    out->targets = calloc(ST + 1, sizeof(int32_t));
    out->start = calloc((size_t)n + 1, sizeof(int32_t));
    out->mask = calloc(ST + 1, sizeof(float));
    out->cmask = calloc(SC + 1, sizeof(float));
    out->sample_logp = calloc(SC + 1, sizeof(float));
    out->group = calloc((size_t)n + 1, sizeof(int64_t));
    out->clen = calloc((size_t)n + 1, sizeof(int32_t));
    if (!out->tokens || !out->targets || !out->start || !out->mask || !out->cmask ||
        !out->sample_logp || !out->group || !out->clen) {
        rl_train_batch_free(out);
        return ponder_error(err, PONDER_ERR_NOMEM, "out of memory (micro-batch)");
    }
    for (int64_t k = 0; k < n; k++) {
        const int64_t i = idx[k], src = i * b->T + lo, dst = k * out->T;
        memcpy(out->tokens + dst, b->tokens + src, (size_t)out->T * sizeof(int32_t));
        memcpy(out->targets + dst, b->targets + src, (size_t)out->T * sizeof(int32_t));
        memcpy(out->mask + dst, b->mask + src, (size_t)out->T * sizeof(float));
        out->start[k] = (int32_t)(b->start[i] - lo);
        out->group[k] = b->group[i];
        out->clen[k] = b->clen[i];
    }
    rl_micro_gather(b, out, idx, b->cmask, out->cmask);
    rl_micro_gather(b, out, idx, b->sample_logp, out->sample_logp);
    return PONDER_OK;
}

void rl_micro_gather(const TrainBatch *b, const TrainBatch *mb, const int64_t *idx,
                     const float *src, float *dst) {
    for (int64_t k = 0; k < mb->S; k++)
        memcpy(dst + k * mb->Tc, src + idx[k] * b->Tc, (size_t)mb->Tc * sizeof(float));
}

void rl_micro_scatter(const TrainBatch *b, const TrainBatch *mb, const int64_t *idx,
                      const float *src, float *dst) {
    for (int64_t k = 0; k < mb->S; k++)
        memcpy(dst + idx[k] * b->Tc, src + k * mb->Tc, (size_t)mb->Tc * sizeof(float));
}
