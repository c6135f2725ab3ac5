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

/* A decode step of n rows captured once by the backend (ModelOps.graph_*) and
 * replayed for every later step of n rows: its kernels read the step's
 * tokens, positions, lengths and cache pointers from the packed step buffer,
 * which is uploaded before each replay, so one graph serves any slots. */
typedef struct DecodeGraph {
    void *graph;         /* NULL: not captured (yet) */
    int eager_runs;      /* steps of this size run without a graph so far */
    int failures;        /* captures refused by the backend */
    Model *m;            /* what the capture baked in: the model's weights ... */
    const float *params;
    ModelKVCache *kv;    /* ... this cache's buffers, and the row count */
    int64_t n;
} DecodeGraph;

struct ModelKVCache {
    int64_t n_slots, max_len, max_rows;
    int64_t L, KV, hd;
    float *k, *v;   /* [L, n_slots, KV, max_len, hd] */
    /* The same as bf16 (upper halves of the rounded fp32) instead of k and v
     * when the backend has attention_cached_bf16: half the bytes a decode
     * step reads, which at batch 64 and beyond is what bounds it. */
    uint16_t *k16, *v16;
    uint16_t **kptr16, **vptr16; /* [L, max_rows]: each layer's set of the step's rows */
    int64_t *len;   /* [n_slots] */
    /* [n_slots]: the slot whose positions [0, pre_len) this one reads
     * (model_kv_share_prefix), -1: none */
    int64_t *pre_slot, *pre_len;
    /* the step's rows' prefixes (attention_decode's OpsPrefix), host only,
     * [L, max_rows] */
    const void **kpre, **vpre;
    int64_t *row_pre;
    /* scratch for up to max_rows rows */
    float *x, *ln, *qkv, *atty, *tmp, *fc, *act, *mean, *rstd;
    int32_t *pos;
    int64_t *row_len;
    float **kptr, **vptr; /* [L, max_rows], one set per layer */
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
    /* The step's rows are one token each of pairwise different slots (a
     * decode step): the backend's attention_cached_write may write the cache
     * inside the attention. Prefill (rows of one slot) keeps kv_write. */
    int distinct_slots;
    DecodeGraph *graphs; /* [max_rows]: entry n-1 for steps of n rows; NULL without graph ops */
};

static size_t slot_floats(const ModelKVCache *kv) { return (size_t)(kv->KV * kv->max_len * kv->hd); }

static size_t value_bytes(const ModelKVCache *kv) { return kv->k16 ? sizeof(uint16_t) : sizeof(float); }

/* The start of (layer, slot)'s block of the key (v == 0) or value cache,
 * whichever precision the cache holds. */
static char *cache_block(const ModelKVCache *kv, int v, int64_t layer, int64_t slot) {
    char *base = kv->k16 ? (char *)(v ? kv->v16 : kv->k16) : (char *)(v ? kv->v : kv->k);
    return base + ((size_t)layer * (size_t)kv->n_slots + (size_t)slot) * slot_floats(kv) * value_bytes(kv);
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
    const int bf16 = o->attention_cached_bf16 && o->kv_store_bf16 && !o->device;
    if (bf16) {
        kv->k16 = o->alloc(cache * sizeof(uint16_t));
        kv->v16 = o->alloc(cache * sizeof(uint16_t));
    } else {
        kv->k = o->alloc(cache * f);
        kv->v = o->alloc(cache * f);
    }
    kv->len = calloc((size_t)n_slots, sizeof(int64_t));
    kv->pre_slot = malloc((size_t)n_slots * sizeof(int64_t));
    kv->pre_len = calloc((size_t)n_slots, sizeof(int64_t));
    if (kv->pre_slot)
        for (int64_t s = 0; s < n_slots; s++) kv->pre_slot[s] = -1;
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
        if (o->graph_capture) kv->graphs = calloc((size_t)R, sizeof(DecodeGraph));
        dev_ok = kv->step_host && kv->step_dev && kv->d_logits && (!o->graph_capture || kv->graphs);
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
        const size_t LR = (size_t)(kv->L * R);
        kv->kptr = calloc(LR, sizeof(float *));
        kv->vptr = calloc(LR, sizeof(float *));
        kv->kptr16 = calloc(LR, sizeof(uint16_t *));
        kv->vptr16 = calloc(LR, sizeof(uint16_t *));
        kv->kpre = calloc(LR, sizeof(void *));
        kv->vpre = calloc(LR, sizeof(void *));
        kv->row_pre = calloc((size_t)R, sizeof(int64_t));
        dev_ok = kv->kptr16 && kv->vptr16 && kv->kpre && kv->vpre && kv->row_pre;
    }
    const int cache_ok = bf16 ? kv->k16 && kv->v16 : kv->k && kv->v;
    if (!dev_ok || !cache_ok || !kv->len || !kv->pre_slot || !kv->pre_len || !kv->x || !kv->ln ||
        !kv->qkv || !kv->atty || !kv->tmp || !kv->fc || !kv->act || !kv->mean || !kv->rstd ||
        !kv->pos || !kv->row_len || !kv->kptr || !kv->vptr) {
        model_kv_free(kv);
        return ponder_error(err, PONDER_ERR_NOMEM, "out of memory for a KV cache of %zu MiB",
                            cache * 2 * (bf16 ? sizeof(uint16_t) : f) / (1024 * 1024));
    }
    *out = kv;
    return PONDER_OK;
}

void model_kv_free(ModelKVCache *kv) {
    if (!kv) return;
    const ModelOps *o = kv->ops;
    if (kv->graphs) /* first: a graph refers to the buffers below */
        for (int64_t i = 0; i < kv->max_rows; i++)
            if (kv->graphs[i].graph) o->graph_free(kv->graphs[i].graph);
    free(kv->graphs);
    void *dev[] = {kv->k, kv->v, kv->k16, kv->v16, kv->x, kv->ln, kv->qkv, kv->atty, kv->tmp,
                   kv->fc, kv->act, kv->mean, kv->rstd};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        if (dev[i]) o->free(dev[i]);
    free(kv->len);
    free(kv->pre_slot);
    free(kv->pre_len);
    if (o->device) {
        o->free(kv->step_dev);
        o->free(kv->d_logits);
        free(kv->step_host); /* holds pos, row_len, kptr and vptr */
    } else {
        free(kv->pos);
        free(kv->row_len);
        free(kv->kptr);
        free(kv->vptr);
        free(kv->kptr16);
        free(kv->vptr16);
        free(kv->kpre);
        free(kv->vpre);
        free(kv->row_pre);
    }
    free(kv);
}

int64_t model_kv_length(const ModelKVCache *kv, int64_t slot) { return kv->len[slot]; }
int64_t model_kv_slots(const ModelKVCache *kv) { return kv->n_slots; }
int64_t model_kv_max_len(const ModelKVCache *kv) { return kv->max_len; }
int64_t model_kv_value_bytes(const ModelKVCache *kv) { return (int64_t)value_bytes(kv); }
void model_kv_reset(ModelKVCache *kv, int64_t slot) {
    kv->len[slot] = 0;
    kv->pre_slot[slot] = -1, kv->pre_len[slot] = 0;
}

/* Positions [from, to) of every layer's keys and values, slot src to dst. */
static void copy_positions(ModelKVCache *kv, int64_t dst, int64_t src, int64_t from, int64_t to) {
    const size_t es = value_bytes(kv), at = (size_t)(from * kv->hd) * es;
    const size_t bytes = (size_t)((to - from) * kv->hd) * es;
    if (bytes == 0) return;
    for (int64_t l = 0; l < kv->L; l++)
        for (int64_t h = 0; h < kv->KV; h++) {
            const size_t head = (size_t)(h * kv->max_len * kv->hd) * es + at;
            for (int v = 0; v < 2; v++)
                kv->ops->copy(cache_block(kv, v, l, dst) + head, cache_block(kv, v, l, src) + head,
                              bytes);
        }
}

void model_kv_copy_slot(ModelKVCache *kv, int64_t dst, int64_t src) {
    if (dst == src) return;
    const int64_t pre = kv->pre_slot[src] >= 0 ? kv->pre_len[src] : 0;
    if (pre && kv->pre_slot[src] != dst) copy_positions(kv, dst, kv->pre_slot[src], 0, pre);
    copy_positions(kv, dst, src, pre, kv->len[src]);
    kv->len[dst] = kv->len[src];
    kv->pre_slot[dst] = -1, kv->pre_len[dst] = 0;
}

/* Whether a decode step over this model's caches can read shared prefixes:
 * a host backend with attention_decode for the cache's format (as
 * model_kv_create picks it). */
static int ops_share_prefixes(const ModelOps *o) {
    if (o->device) return 0;
    const int bf16 = o->attention_cached_bf16 && o->kv_store_bf16;
    return bf16 ? o->attention_decode_bf16 != NULL : o->attention_decode != NULL;
}

int model_kv_shares_prefixes(const Model *m) { return ops_share_prefixes(m->ops); }

int model_kv_share_prefix(ModelKVCache *kv, int64_t dst, int64_t src) {
    if (!ops_share_prefixes(kv->ops) || dst == src || kv->pre_slot[src] >= 0 || kv->len[src] == 0)
        return 0;
    kv->pre_slot[dst] = src, kv->pre_len[dst] = kv->len[src];
    kv->len[dst] = kv->len[src];
    return 1;
}

/* Gives slot its prefix's positions as copies of its own (a step that
 * cannot read prefixes: prefill, or several rows of one slot). */
static void own_prefix(ModelKVCache *kv, int64_t slot) {
    if (kv->pre_slot[slot] < 0) return;
    copy_positions(kv, slot, kv->pre_slot[slot], 0, kv->pre_len[slot]);
    kv->pre_slot[slot] = -1, kv->pre_len[slot] = 0;
}

/* hd values of a k or v row into a cache slot: copied, or rounded to bf16. */
static void store_values(const ModelKVCache *kv, char *dst, const float *x) {
    if (!kv->k16) {
        memcpy(dst, x, (size_t)kv->hd * sizeof(float));
        return;
    }
    kv->ops->kv_store_bf16((uint16_t *)dst, x, kv->hd);
}

/* Copies row n's k and v (after RoPE) into its slot at its position. */
static void write_cache_rows(ModelKVCache *kv, const Model *m, int64_t l, const int64_t *slots,
                             int64_t n) {
    const int64_t hd = kv->hd, QKV = m->qkv_dim, AD = m->attn_dim;
    /* split over threads for a batch's rows: serial, it was ~3% of a batch-64
     * bf16 decode step with the other thread idle */
#pragma omp parallel for if (n * kv->KV * hd >= 4096) schedule(static)
    for (int64_t i = 0; i < n; i++) {
        char *kb = cache_block(kv, 0, l, slots[i]), *vb = cache_block(kv, 1, l, slots[i]);
        const float *row = kv->qkv + i * QKV;
        for (int64_t h = 0; h < kv->KV; h++) {
            const size_t at = (size_t)((h * kv->max_len + kv->pos[i]) * hd) * value_bytes(kv);
            store_values(kv, kb + at, row + AD + h * hd);
            store_values(kv, vb + at, row + AD + (kv->KV + h) * hd);
        }
        const int64_t at = l * kv->max_rows + i;
        if (kv->k16)
            kv->kptr16[at] = (uint16_t *)kb, kv->vptr16[at] = (uint16_t *)vb;
        else
            kv->kptr[at] = (float *)kb, kv->vptr[at] = (float *)vb;
        kv->row_len[i] = kv->pos[i] + 1;
    }
}

/* Points the step's row i at its slot's caches in layer l (for an op that
 * stores into them itself, attention_decode), and at its prefix's, in the
 * layer's set of the pointer arrays; returns whether any row has a prefix. */
static int point_cache_rows(ModelKVCache *kv, int64_t l, const int64_t *slots, int64_t n) {
    int any = 0;
    for (int64_t i = 0; i < n; i++) {
        const int64_t at = l * kv->max_rows + i;
        char *kb = cache_block(kv, 0, l, slots[i]), *vb = cache_block(kv, 1, l, slots[i]);
        if (kv->k16)
            kv->kptr16[at] = (uint16_t *)kb, kv->vptr16[at] = (uint16_t *)vb;
        else
            kv->kptr[at] = (float *)kb, kv->vptr[at] = (float *)vb;
        kv->row_len[i] = kv->pos[i] + 1;
        const int64_t ps = kv->pre_slot[slots[i]];
        kv->row_pre[i] = ps >= 0 ? kv->pre_len[slots[i]] : 0;
        kv->kpre[at] = ps >= 0 ? cache_block(kv, 0, l, ps) : NULL;
        kv->vpre[at] = ps >= 0 ? cache_block(kv, 1, l, ps) : NULL;
        any |= ps >= 0;
    }
    return any;
}

/* A host decode step's RoPE, cache stores and attention as one op. */
static void decode_attention(Model *m, ModelKVCache *kv, int64_t l, const int64_t *slots,
                             int64_t n) {
    const ModelConfig *c = &m->cfg;
    const ModelOps *o = m->ops;
    const int64_t NH = c->n_head, KV = c->n_kv_head, hd = m->head_dim;
    const int64_t QKV = m->qkv_dim, AD = m->attn_dim;
    const OpsHeads q = {kv->qkv, QKV}, k = {kv->qkv + AD, QKV}, v = {kv->qkv + AD + KV * hd, QKV};
    const float *cos_sin = c->arch == MODEL_ARCH_LLAMA ? m->rope : NULL;
    const int64_t at = l * kv->max_rows;
    const OpsPrefix prefix = {kv->kpre + at, kv->vpre + at, kv->row_pre};
    const OpsPrefix *pre = point_cache_rows(kv, l, slots, n) ? &prefix : NULL;
    if (kv->k16)
        o->attention_decode_bf16(kv->atty, q, k, v, cos_sin, kv->kptr16 + at, kv->vptr16 + at,
                                 kv->row_len, n, NH, KV, hd, kv->max_len, pre);
    else
        o->attention_decode(kv->atty, q, k, v, cos_sin, kv->kptr + at, kv->vptr + at, kv->row_len,
                            n, NH, KV, hd, kv->max_len, pre);
}

/* Whether this step's attention goes through attention_decode: a host
 * backend that has it for the cache's format, rows of distinct slots. */
static int decode_attention_fused(const ModelOps *o, const ModelKVCache *kv) {
    if (o->device || !kv->distinct_slots) return 0;
    return kv->k16 ? o->attention_decode_bf16 != NULL : o->attention_decode != NULL;
}

static void infer_norm(const Model *m, ModelKVCache *kv, float *out, const float *inp,
                       const float *w, const float *b, int64_t n) {
    const ModelConfig *c = &m->cfg;
    if (c->arch == MODEL_ARCH_LLAMA)
        m->ops->rmsnorm_forward(out, kv->rstd, inp, w, n, c->d_model, c->norm_eps);
    else
        m->ops->layernorm_forward(out, kv->mean, kv->rstd, inp, w, b, n, c->d_model, c->norm_eps);
}

/* out[n,OC] = (resid +) act(norm(inp) w^T + bias): one linear_fused op when
 * the backend has it, else the separate ops (norm into kv->ln, matmul, GELU
 * in place, accumulate). norm_w == NULL: no norm. */
static void infer_linear(const Model *m, ModelKVCache *kv, float *out, const float *inp,
                         const float *norm_w, const float *norm_b, const float *w,
                         const float *bias, int gelu, int residual, int64_t n, int64_t C,
                         int64_t OC) {
    const ModelConfig *c = &m->cfg;
    const ModelOps *o = m->ops;
    if (o->linear_fused) {
        const int norm = !norm_w ? OPS_NORM_NONE
                         : c->arch == MODEL_ARCH_LLAMA ? OPS_NORM_RMS : OPS_NORM_LAYER;
        o->linear_fused(out, inp, residual ? out : NULL, w, bias, norm_w, norm_b, n, C, OC, norm,
                        c->norm_eps, gelu ? OPS_ACT_GELU : OPS_ACT_NONE);
        return;
    }
    if (norm_w) {
        infer_norm(m, kv, kv->ln, inp, norm_w, norm_b, n);
        inp = kv->ln;
    }
    float *y = residual ? kv->tmp : out;
    o->matmul_forward(y, inp, w, bias, n, C, OC);
    if (gelu) o->gelu_forward(y, y, n * OC);
    if (residual) o->accumulate(out, y, n * OC);
}

/* Whether a layer of a host decode step can go through decode_block: a
 * llama block with no biases but QKV's, bf16 caches, rows of distinct
 * slots. (At any batch: with every layer in one region, batch 1 ran 1.17x
 * as fast as through the ops one by one on the Intel host; bench/RESULTS.md,
 * "Fifteenth session".) */
static int decode_block_applies(const Model *m, const ModelKVCache *kv, const LayerView *p) {
    const ModelOps *o = m->ops;
    return o->decode_block && m->cfg.arch == MODEL_ARCH_LLAMA && kv->k16 &&
           decode_attention_fused(o, kv) && !p->o_b && !p->fc_b && !p->proj_b;
}

/* Every layer of a host decode step as one decode_block call, where every
 * layer can go through it; returns whether it ran. */
static int decode_blocks(Model *m, ModelKVCache *kv, const int64_t *slots, int64_t n) {
    const ModelConfig *c = &m->cfg;
    const int64_t L = c->n_layer, R = kv->max_rows;
    for (int64_t l = 0; l < L; l++) {
        const LayerView p = model_layer_view(m, m->params, l);
        if (!decode_block_applies(m, kv, &p)) return 0;
    }
    OpsDecodeBlock *b = malloc((size_t)L * sizeof *b);
    OpsPrefix *prefix = malloc((size_t)L * sizeof *prefix);
    if (!b || !prefix) {
        free(b), free(prefix);
        return 0; /* the ops one by one need no memory */
    }
    for (int64_t l = 0; l < L; l++) {
        const LayerView p = model_layer_view(m, m->params, l);
        const int any_prefix = point_cache_rows(kv, l, slots, n);
        prefix[l] = (OpsPrefix){kv->kpre + l * R, kv->vpre + l * R, kv->row_pre};
        b[l] = (OpsDecodeBlock){.ln1_w = p.ln1_w, .qkv_w = p.qkv_w, .qkv_b = p.qkv_b,
                                .o_w = p.o_w, .ln2_w = p.ln2_w, .fc_w = p.fc_w,
                                .proj_w = p.proj_w, .C = c->d_model, .F = c->d_ff,
                                .NH = c->n_head, .KV = c->n_kv_head, .hd = m->head_dim,
                                .eps = c->norm_eps, .cos_sin = m->rope,
                                .k_cache = kv->kptr16 + l * R, .v_cache = kv->vptr16 + l * R,
                                .len = kv->row_len, .max_len = kv->max_len,
                                .prefix = any_prefix ? &prefix[l] : NULL, .qkv = kv->qkv,
                                .atty = kv->atty, .fc = kv->fc};
    }
    const int ran = m->ops->decode_block(kv->x, n, b, L);
    free(b), free(prefix);
    return ran;
}

static void infer_layer(Model *m, ModelKVCache *kv, int64_t l, const int64_t *slots, int64_t n) {
    const ModelConfig *c = &m->cfg;
    const ModelOps *o = m->ops;
    const int64_t C = c->d_model, F = c->d_ff, NH = c->n_head, KV = c->n_kv_head;
    const int64_t hd = m->head_dim, QKV = m->qkv_dim, AD = m->attn_dim, FC = m->fc_dim;
    const int llama = c->arch == MODEL_ARCH_LLAMA;
    LayerView p = model_layer_view(m, m->params, l);
    infer_linear(m, kv, kv->qkv, kv->x, p.ln1_w, p.ln1_b, p.qkv_w, p.qkv_b, 0, 0, n, C, QKV);
    OpsHeads q = {kv->qkv, QKV}, k = {kv->qkv + AD, QKV};
    const int32_t *pos = o->device ? kv->d_pos : kv->pos;
    const int fused = decode_attention_fused(o, kv);
    if (llama && !fused) {
        /* k's heads follow q's in each row: one rotation over both */
        o->rope(q, pos, m->rope, n, NH + KV, hd, 0);
    }
    if (fused) {
        decode_attention(m, kv, l, slots, n);
    } else if (o->device) {
        float *const *kp = kv->d_kptr + l * kv->max_rows, *const *vp = kv->d_vptr + l * kv->max_rows;
        OpsHeads v = {kv->qkv + AD + KV * hd, QKV};
        if (o->attention_cached_write && kv->distinct_slots) {
            o->attention_cached_write(kv->atty, q, k, v, kp, vp, kv->d_pos, n, NH, KV, hd,
                                      kv->max_len);
        } else {
            o->kv_write(kp, vp, k, v, kv->d_pos, n, KV, hd, kv->max_len);
            o->attention_cached(kv->atty, q, kp, vp, kv->d_row_len, n, NH, KV, hd, kv->max_len);
        }
    } else {
        write_cache_rows(kv, m, l, slots, n);
        const int64_t at = l * kv->max_rows;
        if (kv->k16)
            o->attention_cached_bf16(kv->atty, q, (const uint16_t *const *)kv->kptr16 + at,
                                     (const uint16_t *const *)kv->vptr16 + at, kv->row_len, n, NH,
                                     KV, hd, kv->max_len);
        else
            o->attention_cached(kv->atty, q, kv->kptr + at, kv->vptr + at, kv->row_len, n, NH, KV,
                                hd, kv->max_len);
    }
    infer_linear(m, kv, kv->x, kv->atty, NULL, NULL, p.o_w, p.o_b, 0, 1, n, AD, C);
    if (llama) {
        infer_linear(m, kv, kv->fc, kv->x, p.ln2_w, p.ln2_b, p.fc_w, p.fc_b, 0, 0, n, C, FC);
        if (o->linear_swiglu && !p.proj_b) {
            o->linear_swiglu(kv->x, kv->fc, kv->x, p.proj_w, n, F, C);
            return;
        }
        o->swiglu_forward(kv->act, kv->fc, n, F);
    } else {
        infer_linear(m, kv, kv->act, kv->x, p.ln2_w, p.ln2_b, p.fc_w, p.fc_b, 1, 0, n, C, FC);
    }
    infer_linear(m, kv, kv->x, kv->act, NULL, NULL, p.proj_w, p.proj_b, 0, 1, n, F, C);
}

/* Final norm and vocabulary projection of n_out rows of x into logits. */
static void infer_head(Model *m, ModelKVCache *kv, const float *x, int64_t n_out, float *logits) {
    const ModelConfig *c = &m->cfg;
    const float *lnf_b = c->arch == MODEL_ARCH_GPT2 ? m->params + m->lay.lnf_b : NULL;
    infer_linear(m, kv, logits, x, m->params + m->lay.lnf_w, lnf_b, m->params + m->lay.lm, NULL,
                 0, 0, n_out, c->d_model, c->vocab_size);
}

/* Device backends: embedding and every layer of n rows whose tokens,
 * positions and cache pointers are already in the uploaded step buffer. */
static void device_layers(Model *m, ModelKVCache *kv, int64_t n) {
    const ModelConfig *c = &m->cfg;
    const float *wpe = c->arch == MODEL_ARCH_GPT2 ? m->params + m->lay.wpe : NULL;
    m->ops->embedding_forward(kv->x, kv->d_tokens, kv->d_pos, m->params + m->lay.wte, wpe, n,
                              c->d_model);
    for (int64_t l = 0; l < c->n_layer; l++) infer_layer(m, kv, l, NULL, n);
}

/* A decode step's device work (every row is an output row), as one function
 * of a DecodeGraph so the backend can capture it; run eagerly too, so a step
 * issues the same ops with or without a graph. */
static void decode_body(void *ctx) {
    DecodeGraph *g = ctx;
    device_layers(g->m, g->kv, g->n);
    infer_head(g->m, g->kv, g->kv->x, g->n, g->kv->d_logits);
}

/* Runs a decode step of n rows (already uploaded) through its graph: the
 * first step of each size runs eagerly (it sizes the backend's scratch and
 * loads its kernels outside any capture), the second captures. Returns 0
 * when the caller must run decode_body itself: no graph ops, capture refused
 * (the backend disabled graphs, or it failed; given up after two refusals). */
static int decode_graph_run(Model *m, ModelKVCache *kv, int64_t n) {
    const ModelOps *o = m->ops;
    if (!kv->graphs || n < 1 || n > kv->max_rows) return 0;
    DecodeGraph *g = &kv->graphs[n - 1];
    if (g->graph && (g->m != m || g->params != m->params)) { /* another model: recapture */
        o->graph_free(g->graph);
        memset(g, 0, sizeof *g);
    }
    if (!g->graph) {
        if (g->failures >= 2 || g->eager_runs < 1) {
            g->eager_runs++;
            return 0;
        }
        g->m = m, g->params = m->params, g->kv = kv, g->n = n;
        g->graph = o->graph_capture(decode_body, g);
        if (!g->graph) {
            g->failures++;
            return 0;
        }
    }
    o->graph_launch(g->graph);
    return 1;
}

/* Device backends: every layer's cache rows, positions and tokens of the
 * step in one upload. */
static void upload_step(ModelKVCache *kv, const int64_t *slots, const int32_t *tokens, int64_t n) {
    const int64_t R = kv->max_rows;
    for (int64_t i = 0; i < n; i++) {
        kv->row_len[i] = kv->pos[i] + 1;
        kv->h_tokens[i] = tokens[i];
        for (int64_t l = 0; l < kv->L; l++) {
            kv->kptr[l * R + i] = (float *)cache_block(kv, 0, l, slots[i]);
            kv->vptr[l * R + i] = (float *)cache_block(kv, 1, l, slots[i]);
        }
    }
    kv->ops->upload(kv->step_dev, kv->step_host, kv->step_bytes);
}

/* Device backends: runs the uploaded step and downloads the logits of rows
 * out_rows[0..n_out). A step whose output rows are all its rows in order (a
 * decode step) may replay a graph; others (prefill) run eagerly. */
static void device_rows(Model *m, ModelKVCache *kv, int64_t n, const int64_t *out_rows,
                        int64_t n_out, float *logits, int distinct_slots) {
    const ModelOps *o = m->ops;
    const int64_t C = m->cfg.d_model;
    int every_row = n_out == n;
    for (int64_t r = 0; r < n_out && every_row; r++) every_row = out_rows[r] == r;
    /* graphs are captured with the fused cache write, so only such steps replay them */
    kv->distinct_slots = distinct_slots;
    if (every_row) {
        if (!distinct_slots || !decode_graph_run(m, kv, n)) {
            DecodeGraph eager = {.m = m, .params = m->params, .kv = kv, .n = n};
            decode_body(&eager);
        }
    } else {
        device_layers(m, kv, n);
        for (int64_t r = 0; r < n_out;) { /* one copy per run of consecutive rows */
            int64_t e = r + 1;
            while (e < n_out && out_rows[e] == out_rows[e - 1] + 1) e++;
            o->copy(kv->tmp + r * C, kv->x + out_rows[r] * C, (size_t)((e - r) * C) * sizeof(float));
            r = e;
        }
        infer_head(m, kv, kv->tmp, n_out, kv->d_logits);
    }
    o->download(logits, kv->d_logits, (size_t)(n_out * m->cfg.vocab_size) * sizeof(float));
}

/* Runs n <= max_rows rows; writes logits for rows out_rows[0..n_out). */
static int infer_rows(Model *m, ModelKVCache *kv, const int64_t *slots, const int32_t *tokens,
                      int64_t n, const int64_t *out_rows, int64_t n_out, float *logits,
                      PonderError *err) {
    const ModelConfig *c = &m->cfg;
    const int64_t C = c->d_model;
    int distinct_slots = 1;
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
        if (p != kv->len[slots[i]]) distinct_slots = 0;
        if (p >= kv->max_len)
            return ponder_error(err, PONDER_ERR_SHAPE,
                                "KV cache: slot %lld is full (max_len %lld)",
                                (long long)slots[i], (long long)kv->max_len);
        kv->pos[i] = (int32_t)p;
    }
    const ModelOps *o = m->ops;
    kv->distinct_slots = distinct_slots;
    if (!decode_attention_fused(o, kv))
        for (int64_t i = 0; i < n; i++) own_prefix(kv, slots[i]);
    if (o->device) {
        upload_step(kv, slots, tokens, n);
        device_rows(m, kv, n, out_rows, n_out, logits, distinct_slots);
    } else {
        const float *wpe = c->arch == MODEL_ARCH_GPT2 ? m->params + m->lay.wpe : NULL;
        o->embedding_forward(kv->x, tokens, kv->pos, m->params + m->lay.wte, wpe, n, C);
        if (!decode_blocks(m, kv, slots, n))
            for (int64_t l = 0; l < c->n_layer; l++) infer_layer(m, kv, l, slots, n);
        /* final norm and vocabulary projection only for the rows asked for */
        for (int64_t r = 0; r < n_out; r++)
            memcpy(kv->tmp + r * C, kv->x + out_rows[r] * C, (size_t)C * sizeof(float));
        infer_head(m, kv, kv->tmp, n_out, logits);
    }
    for (int64_t i = 0; i < n; i++)
        if (kv->pos[i] + 1 > kv->len[slots[i]]) kv->len[slots[i]] = kv->pos[i] + 1;
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
