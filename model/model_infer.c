/* model/model_infer.c — KV-cache inference: prefill and one-token decode.
 *
 * Both go through infer_rows(): a set of rows, each a token appended to some
 * slot's sequence. Each layer first writes every row's k and v into the cache
 * and then lets row i attend to its slot's positions [0, pos_i]; so a chunk of
 * one prompt (prefill) and one token from each of many slots (decode) are the
 * same computation, and both match the training forward (tested). */
#include "model/model_internal.h"

#include <stdlib.h> /* calloc, free */
#include <string.h> /* memcpy */

struct ModelKVCache {
    int64_t n_slots, max_len, max_rows;
    int64_t L, KV, hd;
    float *k, *v;   /* [L, n_slots, KV, max_len, hd] */
    int64_t *len;   /* [n_slots] */
    /* scratch for up to max_rows rows */
    float *x, *ln, *qkv, *atty, *tmp, *fc, *act, *mean, *rstd;
    int32_t *pos;
    int64_t *row_len;
    float **kptr, **vptr; /* [max_rows]; on a device backend [L, max_rows], one set per layer */
    const ModelOps *ops;
    /* Device backends only: the step's row data (row_len, kptr, vptr, pos,
     * tokens) packed in one host buffer and uploaded once per step, and the
     * logits before they are downloaded. */
    void *step_host, *step_dev;
    size_t step_bytes;
    int32_t *d_pos, *d_tokens;
    int64_t *d_row_len;
    float **d_kptr, **d_vptr;
    int32_t *h_tokens;
    float *d_logits; /* [max_rows, V] */
};

static size_t slot_floats(const ModelKVCache *kv) { return (size_t)(kv->KV * kv->max_len * kv->hd); }

static float *cache_block(float *base, const ModelKVCache *kv, int64_t layer, int64_t slot) {
    return base + ((size_t)layer * (size_t)kv->n_slots + (size_t)slot) * slot_floats(kv);
}

int model_kv_create(ModelKVCache **out, const Model *m, int64_t n_slots, int64_t max_len,
                    PonderError *err) {
    *out = NULL;
    const ModelConfig *c = &m->cfg;
    if (n_slots <= 0 || max_len <= 0 || max_len > c->max_seq_len)
        return ponder_error(err, PONDER_ERR_CONFIG,
                            "KV cache: need n_slots > 0 and 0 < max_len <= model.max_seq_len "
                            "(%lld), found n_slots=%lld max_len=%lld",
                            (long long)c->max_seq_len, (long long)n_slots, (long long)max_len);
    ModelKVCache *kv = calloc(1, sizeof *kv);
    if (!kv) return ponder_error(err, PONDER_ERR_NOMEM, "out of memory for the KV cache");
    kv->ops = m->ops;
    kv->n_slots = n_slots, kv->max_len = max_len;
    kv->max_rows = n_slots > 64 ? n_slots : 64;
    kv->L = c->n_layer, kv->KV = c->n_kv_head, kv->hd = m->head_dim;
    const int64_t R = kv->max_rows, C = c->d_model;
    const size_t f = sizeof(float), cache = (size_t)kv->L * (size_t)n_slots * slot_floats(kv);
    const ModelOps *o = m->ops;
    kv->k = o->alloc(cache * f);
    kv->v = o->alloc(cache * f);
    kv->len = calloc((size_t)n_slots, sizeof(int64_t));
    kv->x = o->alloc((size_t)(R * C) * f);
    kv->ln = o->alloc((size_t)(R * C) * f);
    kv->qkv = o->alloc((size_t)(R * m->qkv_dim) * f);
    kv->atty = o->alloc((size_t)(R * m->attn_dim) * f);
    kv->tmp = o->alloc((size_t)(R * C) * f);
    kv->fc = o->alloc((size_t)(R * m->fc_dim) * f);
    kv->act = o->alloc((size_t)(R * c->d_ff) * f);
    kv->mean = o->alloc((size_t)R * f);
    kv->rstd = o->alloc((size_t)R * f);
    int dev_ok = 1;
    if (o->device) {
        /* packed step: row_len [R] int64, kptr [L,R], vptr [L,R], pos [R], tokens [R] */
        const size_t P = (size_t)(kv->L * R);
        kv->step_bytes = (size_t)R * 8 + 2 * P * sizeof(float *) + (size_t)R * 8;
        kv->step_host = calloc(1, kv->step_bytes);
        kv->step_dev = o->alloc(kv->step_bytes);
        kv->d_logits = o->alloc((size_t)(R * c->vocab_size) * f);
        dev_ok = kv->step_host && kv->step_dev && kv->d_logits;
        if (dev_ok) {
            char *h = kv->step_host, *d = kv->step_dev;
            size_t at = 0;
            kv->row_len = (int64_t *)(h + at), kv->d_row_len = (int64_t *)(d + at);
            at += (size_t)R * 8;
            kv->kptr = (float **)(h + at), kv->d_kptr = (float **)(d + at);
            at += P * sizeof(float *);
            kv->vptr = (float **)(h + at), kv->d_vptr = (float **)(d + at);
            at += P * sizeof(float *);
            kv->pos = (int32_t *)(h + at), kv->d_pos = (int32_t *)(d + at);
            at += (size_t)R * 4;
            kv->h_tokens = (int32_t *)(h + at), kv->d_tokens = (int32_t *)(d + at);
        }
    } else {
        kv->pos = calloc((size_t)R, sizeof(int32_t));
        kv->row_len = calloc((size_t)R, sizeof(int64_t));
        kv->kptr = calloc((size_t)R, sizeof(float *));
        kv->vptr = calloc((size_t)R, sizeof(float *));
    }
    if (!dev_ok || !kv->k || !kv->v || !kv->len || !kv->x || !kv->ln || !kv->qkv || !kv->atty ||
        !kv->tmp || !kv->fc || !kv->act || !kv->mean || !kv->rstd || !kv->pos ||
        !kv->row_len || !kv->kptr || !kv->vptr) {
        model_kv_free(kv);
        return ponder_error(err, PONDER_ERR_NOMEM, "out of memory for a KV cache of %zu MiB",
                            cache * 2 * f / (1024 * 1024));
    }
    *out = kv;
    return PONDER_OK;
}

void model_kv_free(ModelKVCache *kv) {
    if (!kv) return;
    const ModelOps *o = kv->ops;
    void *dev[] = {kv->k, kv->v, kv->x, kv->ln, kv->qkv, kv->atty, kv->tmp,
                   kv->fc, kv->act, kv->mean, kv->rstd};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) o->free(dev[i]);
    free(kv->len);
    if (o->device) {
        o->free(kv->step_dev);
        o->free(kv->d_logits);
        free(kv->step_host); /* holds pos, row_len, kptr and vptr */
    } else {
        free(kv->pos);
        free(kv->row_len);
        free(kv->kptr);
        free(kv->vptr);
    }
    free(kv);
}

int64_t model_kv_length(const ModelKVCache *kv, int64_t slot) { return kv->len[slot]; }
void model_kv_reset(ModelKVCache *kv, int64_t slot) { kv->len[slot] = 0; }

void model_kv_copy_slot(ModelKVCache *kv, int64_t dst, int64_t src) {
    if (dst == src) return;
    const size_t used = (size_t)(kv->len[src] * kv->hd) * sizeof(float);
    for (int64_t l = 0; l < kv->L; l++)
        for (int64_t h = 0; h < kv->KV; h++) {
            size_t head = (size_t)(h * kv->max_len * kv->hd);
            kv->ops->copy(cache_block(kv->k, kv, l, dst) + head, cache_block(kv->k, kv, l, src) + head, used);
            kv->ops->copy(cache_block(kv->v, kv, l, dst) + head, cache_block(kv->v, kv, l, src) + head, used);
        }
    kv->len[dst] = kv->len[src];
}

/* Copies row n's k and v (after RoPE) into its slot at its position. */
static void write_cache_rows(ModelKVCache *kv, const Model *m, int64_t l, const int64_t *slots,
                             int64_t n) {
    const int64_t hd = kv->hd, QKV = m->qkv_dim, AD = m->attn_dim;
    for (int64_t i = 0; i < n; i++) {
        float *kb = cache_block(kv->k, kv, l, slots[i]), *vb = cache_block(kv->v, kv, l, slots[i]);
        const float *row = kv->qkv + i * QKV;
        for (int64_t h = 0; h < kv->KV; h++) {
            size_t at = (size_t)((h * kv->max_len + kv->pos[i]) * hd);
            memcpy(kb + at, row + AD + h * hd, (size_t)hd * sizeof(float));
            memcpy(vb + at, row + AD + (kv->KV + h) * hd, (size_t)hd * sizeof(float));
        }
        kv->kptr[i] = kb;
        kv->vptr[i] = vb;
        kv->row_len[i] = kv->pos[i] + 1;
    }
}

static void infer_norm(const Model *m, ModelKVCache *kv, float *out, const float *inp,
                       const float *w, const float *b, int64_t n) {
    const ModelConfig *c = &m->cfg;
    if (c->arch == MODEL_ARCH_LLAMA)
        m->ops->rmsnorm_forward(out, kv->rstd, inp, w, n, c->d_model, c->norm_eps);
    else
        m->ops->layernorm_forward(out, kv->mean, kv->rstd, inp, w, b, n, c->d_model, c->norm_eps);
}

static void infer_layer(Model *m, ModelKVCache *kv, int64_t l, const int64_t *slots, int64_t n) {
    const ModelConfig *c = &m->cfg;
    const ModelOps *o = m->ops;
    const int64_t C = c->d_model, F = c->d_ff, NH = c->n_head, KV = c->n_kv_head;
    const int64_t hd = m->head_dim, QKV = m->qkv_dim, AD = m->attn_dim, FC = m->fc_dim;
    LayerView p = model_layer_view(m, m->params, l);
    infer_norm(m, kv, kv->ln, kv->x, p.ln1_w, p.ln1_b, n);
    o->matmul_forward(kv->qkv, kv->ln, p.qkv_w, p.qkv_b, n, C, QKV);
    OpsHeads q = {kv->qkv, QKV}, k = {kv->qkv + AD, QKV};
    const int32_t *pos = o->device ? kv->d_pos : kv->pos;
    if (c->arch == MODEL_ARCH_LLAMA) {
        o->rope(q, pos, m->rope, n, NH, hd, 0);
        o->rope(k, pos, m->rope, n, KV, hd, 0);
    }
    if (o->device) {
        float *const *kp = kv->d_kptr + l * kv->max_rows, *const *vp = kv->d_vptr + l * kv->max_rows;
        OpsHeads v = {kv->qkv + AD + KV * hd, QKV};
        o->kv_write(kp, vp, k, v, kv->d_pos, n, KV, hd, kv->max_len);
        o->attention_cached(kv->atty, q, kp, vp, kv->d_row_len, n, NH, KV, hd, kv->max_len);
    } else {
        write_cache_rows(kv, m, l, slots, n);
        o->attention_cached(kv->atty, q, kv->kptr, kv->vptr, kv->row_len, n, NH, KV, hd,
                            kv->max_len);
    }
    o->matmul_forward(kv->tmp, kv->atty, p.o_w, p.o_b, n, AD, C);
    o->accumulate(kv->x, kv->tmp, n * C);
    infer_norm(m, kv, kv->ln, kv->x, p.ln2_w, p.ln2_b, n);
    o->matmul_forward(kv->fc, kv->ln, p.fc_w, p.fc_b, n, C, FC);
    if (c->arch == MODEL_ARCH_LLAMA) o->swiglu_forward(kv->act, kv->fc, n, F);
    else o->gelu_forward(kv->act, kv->fc, n * F);
    o->matmul_forward(kv->tmp, kv->act, p.proj_w, p.proj_b, n, F, C);
    o->accumulate(kv->x, kv->tmp, n * C);
}

/* Runs n <= max_rows rows; writes logits for rows out_rows[0..n_out). */
static int infer_rows(Model *m, ModelKVCache *kv, const int64_t *slots, const int32_t *tokens,
                      int64_t n, const int64_t *out_rows, int64_t n_out, float *logits,
                      PonderError *err) {
    const ModelConfig *c = &m->cfg;
    const int64_t C = c->d_model;
    for (int64_t i = 0; i < n; i++) {
        if (slots[i] < 0 || slots[i] >= kv->n_slots)
            return ponder_error(err, PONDER_ERR_SHAPE, "KV cache: slot %lld out of range [0,%lld)",
                                (long long)slots[i], (long long)kv->n_slots);
        if (tokens[i] < 0 || tokens[i] >= c->vocab_size)
            return ponder_error(err, PONDER_ERR_SHAPE,
                                "KV cache: token %d outside the vocabulary [0,%lld)", tokens[i],
                                (long long)c->vocab_size);
        int64_t p = kv->len[slots[i]];
        for (int64_t j = 0; j < i; j++) p += slots[j] == slots[i];
        if (p >= kv->max_len)
            return ponder_error(err, PONDER_ERR_SHAPE,
                                "KV cache: slot %lld is full (max_len %lld)",
                                (long long)slots[i], (long long)kv->max_len);
        kv->pos[i] = (int32_t)p;
    }
    const ModelOps *o = m->ops;
    const float *wpe = c->arch == MODEL_ARCH_GPT2 ? m->params + m->lay.wpe : NULL;
    if (o->device) { /* every layer's cache rows, positions and tokens in one upload */
        const int64_t R = kv->max_rows;
        for (int64_t i = 0; i < n; i++) {
            kv->row_len[i] = kv->pos[i] + 1;
            kv->h_tokens[i] = tokens[i];
            for (int64_t l = 0; l < kv->L; l++) {
                kv->kptr[l * R + i] = cache_block(kv->k, kv, l, slots[i]);
                kv->vptr[l * R + i] = cache_block(kv->v, kv, l, slots[i]);
            }
        }
        o->upload(kv->step_dev, kv->step_host, kv->step_bytes);
        o->embedding_forward(kv->x, kv->d_tokens, kv->d_pos, m->params + m->lay.wte, wpe, n, C);
    } else {
        o->embedding_forward(kv->x, tokens, kv->pos, m->params + m->lay.wte, wpe, n, C);
    }
    for (int64_t l = 0; l < c->n_layer; l++) infer_layer(m, kv, l, slots, n);
    for (int64_t i = 0; i < n; i++)
        if (kv->pos[i] + 1 > kv->len[slots[i]]) kv->len[slots[i]] = kv->pos[i] + 1;
    /* final norm and vocabulary projection only for the rows asked for */
    if (o->device) {
        for (int64_t r = 0; r < n_out;) { /* one copy per run of consecutive rows */
            int64_t e = r + 1;
            while (e < n_out && out_rows[e] == out_rows[e - 1] + 1) e++;
            o->copy(kv->tmp + r * C, kv->x + out_rows[r] * C, (size_t)((e - r) * C) * sizeof(float));
            r = e;
        }
    } else {
        for (int64_t r = 0; r < n_out; r++)
            memcpy(kv->tmp + r * C, kv->x + out_rows[r] * C, (size_t)C * sizeof(float));
    }
    const float *lnf_b = c->arch == MODEL_ARCH_GPT2 ? m->params + m->lay.lnf_b : NULL;
    infer_norm(m, kv, kv->ln, kv->tmp, m->params + m->lay.lnf_w, lnf_b, n_out);
    o->matmul_forward(o->device ? kv->d_logits : logits, kv->ln, m->params + m->lay.lm, NULL,
                      n_out, C, c->vocab_size);
    if (o->device)
        o->download(logits, kv->d_logits, (size_t)(n_out * c->vocab_size) * sizeof(float));
    return PONDER_OK;
}

int model_prefill(Model *m, ModelKVCache *kv, int64_t slot, const int32_t *tokens, int64_t n,
                  float *logits, PonderError *err) {
    if (n <= 0) return ponder_error(err, PONDER_ERR_SHAPE, "model_prefill: no tokens");
    int64_t *slots = malloc((size_t)kv->max_rows * sizeof(int64_t));
    if (!slots) return ponder_error(err, PONDER_ERR_NOMEM, "out of memory in prefill");
    for (int64_t i = 0; i < kv->max_rows; i++) slots[i] = slot;
    int rc = PONDER_OK;
    for (int64_t s = 0; s < n && rc == PONDER_OK; s += kv->max_rows) {
        int64_t rows = n - s < kv->max_rows ? n - s : kv->max_rows;
        int64_t last = rows - 1;
        rc = infer_rows(m, kv, slots, tokens + s, rows, &last, 1, logits, err);
    }
    free(slots);
    return rc;
}

int model_decode(Model *m, ModelKVCache *kv, const int64_t *slots, const int32_t *tokens,
                 int64_t n, float *logits, PonderError *err) {
    int64_t *rows = malloc((size_t)kv->max_rows * sizeof(int64_t));
    if (!rows) return ponder_error(err, PONDER_ERR_NOMEM, "out of memory in decode");
    for (int64_t i = 0; i < kv->max_rows; i++) rows[i] = i;
    int rc = PONDER_OK;
    for (int64_t s = 0; s < n && rc == PONDER_OK; s += kv->max_rows) {
        int64_t cnt = n - s < kv->max_rows ? n - s : kv->max_rows;
        rc = infer_rows(m, kv, slots + s, tokens + s, cnt, rows, cnt,
                        logits + s * m->cfg.vocab_size, err);
    }
    free(rows);
    return rc;
}
