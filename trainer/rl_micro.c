/* trainer/rl_micro.c — an RL mini-batch cut into length-sorted micro-batches
 * (rl_internal.h). A rollout's rows differ in length: with 16 prompts of 3 to
 * 9 tokens and completions of up to 48, a batch padded to its longest row is
 * about a fifth padding, and the products, norms and attention compute it all.
 * Sorting by length and cutting by a token budget gives each micro-batch its
 * own narrower window. */
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

int rl_micro_plan(const TrainBatch *b, int64_t r0, int64_t rows, int64_t budget, RlMicroPlan *p,
                  PonderError *err) {
    memset(p, 0, sizeof *p);
    if (budget < 1) return ponder_error(err, PONDER_ERR_CONFIG, "micro-batch budget %lld < 1",
                                        (long long)budget);
    RowKey *keys = calloc((size_t)rows + 1, sizeof *keys);
    p->row = calloc((size_t)rows + 1, sizeof *p->row);
    p->first = calloc((size_t)rows + 2, sizeof *p->first);
    if (!keys || !p->row || !p->first) {
        free(keys);
        rl_micro_plan_free(p);
        return ponder_error(err, PONDER_ERR_NOMEM, "out of memory (micro-batch plan)");
    }
    for (int64_t i = 0; i < rows; i++)
        keys[i] = (RowKey){b->clen[r0 + i], (int32_t)(b->Pmax - b->start[r0 + i]), r0 + i};
    qsort(keys, (size_t)rows, sizeof *keys, row_key_cmp);
    int64_t lo = 0, hi = 0, count = 0;
    for (int64_t k = 0; k < rows; k++) {
        const int64_t i = keys[k].row, f = row_first_col(b, i), e = row_end_col(b, i);
        const int64_t nlo = count && lo < f ? lo : f, nhi = count && hi > e ? hi : e;
        if (count > 0 && (count + 1) * (nhi - nlo) > budget) {
            p->first[++p->n] = k; /* close the current micro-batch */
            count = 0;
            lo = f, hi = e;
        } else {
            lo = nlo, hi = nhi;
        }
        p->row[k] = i;
        count++;
    }
    if (count > 0) p->first[++p->n] = rows;
    free(keys);
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
