/* model/model_train.c — the training forward and backward passes.
 *
 * Straight-line code in the manner of llm.c: each layer names its views and
 * calls the ops in order; backward walks the same steps in reverse. The
 * residual-stream gradient lives in one [N,C] buffer that every branch's
 * backward accumulates into. */
#include "model/model_internal.h"

#include <stdlib.h> /* calloc */
#include <string.h> /* memcpy */

/* --------------------------------------------------------- activations --- */

void model_free_activations(Model *m) {
    Activations *a = &m->act;
    if (!m->ops) return;
    void *bufs[] = {a->resid,  a->ln1,     a->ln1_mean, a->ln1_rstd, a->qkv,    a->att,
                    a->atty,   a->resid2,  a->ln2,      a->ln2_mean, a->ln2_rstd, a->fc,
                    a->act,    a->lnf,     a->lnf_scaled, a->lnf_mean, a->lnf_rstd, a->lse,    a->tokens,
                    a->targets, a->pos,    a->start,    a->mask,     a->dresid, a->dln,
                    a->datty,  a->dqkv,    a->dfc,      a->dact,     a->dlnf,   a->dvalues,
                    a->sh_unique, a->sh_rep, a->sh_grad, a->sh_off, a->sh_idx, a->qkv_u,
                    a->atty_x, a->u_logp, a->u_entropy, a->u_values, a->u_dlogp, a->u_dentropy,
                    a->u_dvalues};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) m->ops->free(bufs[i]);
    if (a->lm_logits) m->ops->free(a->lm_logits);
    void *dev_io[] = {a->d_logp, a->d_entropy, a->d_values, a->d_dlogp, a->d_dentropy};
    for (size_t i = 0; i < sizeof dev_io / sizeof dev_io[0]; i++)
        if (dev_io[i]) m->ops->free(dev_io[i]);
    void *host_io[] = {a->h_tokens, a->h_targets, a->h_pos, a->h_start, a->h_mask, a->h_rows};
    for (size_t i = 0; i < sizeof host_io / sizeof host_io[0]; i++) free(host_io[i]);
    memset(a, 0, sizeof *a);
}

/* Host backends with the gather op share prefixes (model_share_prefixes). */
static int sharing_possible(const Model *m) {
    return m->share_prefixes && m->ops->rows_gather && !m->ops->device;
}

static int ensure_activations(Model *m, int64_t B, int64_t T, PonderError *err) {
    Activations *a = &m->act;
    const int64_t N = B * T, att = B * m->cfg.n_head * T * T;
    /* per-sequence buffers (start) need B, not only N, to fit */
    const int sharing_ready = !sharing_possible(m) || a->sh_unique;
    if (N <= a->capacity_n && att <= a->capacity_att && B <= a->capacity_b && sharing_ready) {
        a->B = B, a->T = T;
        return PONDER_OK;
    }
    /* Grow every dimension to the larger of what was there and what is asked:
     * batches of alternating shapes (RL micro-batches: many short rows, then
     * few long ones) would otherwise reallocate, and fault fresh pages in, on
     * every pass. Only the sizes change; B and T stay the batch's own. */
    const int64_t Bc = B > a->capacity_b ? B : a->capacity_b;
    const int64_t Nc = N > a->capacity_n ? N : a->capacity_n;
    const int64_t attc = att > a->capacity_att ? att : a->capacity_att;
    model_free_activations(m);
    const ModelConfig *c = &m->cfg;
    const int64_t L = c->n_layer, C = c->d_model, F = c->d_ff;
    const size_t f = sizeof(float);
    const ModelOps *o = m->ops;
#define ALLOC(field, count) (a->field = o->alloc((size_t)(count) * f), ok = ok && a->field)
    int ok = 1;
    ALLOC(resid, (L + 1) * Nc * C);
    ALLOC(ln1, L * Nc * C);
    ALLOC(ln1_mean, L * Nc);
    ALLOC(ln1_rstd, L * Nc);
    ALLOC(qkv, L * Nc * m->qkv_dim);
    ALLOC(att, L * attc);
    ALLOC(atty, L * Nc * m->attn_dim);
    ALLOC(resid2, L * Nc * C);
    ALLOC(ln2, L * Nc * C);
    ALLOC(ln2_mean, L * Nc);
    ALLOC(ln2_rstd, L * Nc);
    ALLOC(fc, L * Nc * m->fc_dim);
    ALLOC(act, L * Nc * F);
    ALLOC(lnf, Nc * C);
    ALLOC(lnf_scaled, Nc * C);
    ALLOC(lnf_mean, Nc);
    ALLOC(lnf_rstd, Nc);
    ALLOC(lse, Nc);
    ALLOC(tokens, Nc);
    ALLOC(targets, Nc);
    ALLOC(pos, Nc);
    ALLOC(start, Bc);
    ALLOC(mask, Nc);
    ALLOC(dresid, Nc * C);
    ALLOC(dln, Nc * C);
    ALLOC(datty, Nc * m->attn_dim);
    ALLOC(dqkv, Nc * m->qkv_dim);
    ALLOC(dfc, Nc * m->fc_dim);
    ALLOC(dact, Nc * F);
    ALLOC(dlnf, Nc * C);
    ALLOC(dvalues, Nc);
    if (sharing_possible(m)) {
        ALLOC(sh_unique, Nc);
        ALLOC(sh_rep, Nc);
        ALLOC(sh_grad, Nc);
        ALLOC(sh_off, Nc + 1);
        ALLOC(sh_idx, Nc);
        ALLOC(qkv_u, Nc * m->qkv_dim);
        ALLOC(atty_x, Nc * m->attn_dim);
        ALLOC(u_logp, Nc);
        ALLOC(u_entropy, Nc);
        ALLOC(u_values, Nc);
        ALLOC(u_dlogp, Nc);
        ALLOC(u_dentropy, Nc);
        ALLOC(u_dvalues, Nc);
    }
    /* saves the backward's recomputation of the LM head's logits (about a
     * tenth of a GPT-2 T=64 step's products) where they fit */
    if (o->lm_head_forward_keep && o->lm_head_backward_kept && Nc * c->vocab_size <= MODEL_LM_KEEP_MAX)
        ALLOC(lm_logits, Nc * c->vocab_size);
    /* the heads' outputs in backend memory: model_forward_backend's on any
     * backend, model_forward's staging on a device */
    ALLOC(d_logp, Nc);
    ALLOC(d_entropy, Nc);
    ALLOC(d_values, Nc);
    if (o->device) {
        ALLOC(d_dlogp, Nc);
        ALLOC(d_dentropy, Nc);
#define HOST_ALLOC(field, count) \
    (a->field = calloc((size_t)(count), sizeof *a->field), ok = ok && a->field)
        HOST_ALLOC(h_tokens, Nc);
        HOST_ALLOC(h_targets, Nc);
        HOST_ALLOC(h_pos, Nc);
        HOST_ALLOC(h_start, Bc);
        HOST_ALLOC(h_mask, Nc);
        HOST_ALLOC(h_rows, Nc);
#undef HOST_ALLOC
    }
#undef ALLOC
    if (!ok) {
        model_free_activations(m);
        return ponder_error(err, PONDER_ERR_NOMEM,
                            "out of memory for activations of a [%lld,%lld] batch",
                            (long long)B, (long long)T);
    }
    a->capacity_n = Nc, a->capacity_att = attc, a->capacity_b = Bc, a->B = B, a->T = T;
    return PONDER_OK;
}

/* ------------------------------------------------------------- checks ---- */

static int check_batch(const Model *m, const ModelBatch *b, int need_targets, PonderError *err) {
    const ModelConfig *c = &m->cfg;
    if (b->B <= 0 || b->T <= 0)
        return ponder_error(err, PONDER_ERR_SHAPE, "batch: B and T must be > 0, found [%lld,%lld]",
                            (long long)b->B, (long long)b->T);
    if (b->T > c->max_seq_len)
        return ponder_error(err, PONDER_ERR_SHAPE,
                            "batch: T=%lld exceeds model.max_seq_len=%lld", (long long)b->T,
                            (long long)c->max_seq_len);
    for (int64_t i = 0; i < b->B * b->T; i++) {
        int64_t bi = i / b->T, t = i % b->T;
        if (b->tokens[i] < 0 || b->tokens[i] >= c->vocab_size)
            return ponder_error(err, PONDER_ERR_SHAPE,
                                "batch: token %d at [%lld,%lld] is outside the vocabulary [0,%lld)",
                                b->tokens[i], (long long)bi, (long long)t,
                                (long long)c->vocab_size);
        int active = !b->mask || b->mask[i] != 0.0f;
        if (need_targets && active && (b->targets[i] < 0 || b->targets[i] >= c->vocab_size))
            return ponder_error(err, PONDER_ERR_SHAPE,
                                "batch: target %d at [%lld,%lld] is outside the vocabulary [0,%lld)",
                                b->targets[i], (long long)bi, (long long)t,
                                (long long)c->vocab_size);
    }
    if (b->start)
        for (int64_t bi = 0; bi < b->B; bi++)
            if (b->start[bi] < 0 || b->start[bi] >= b->T)
                return ponder_error(err, PONDER_ERR_SHAPE,
                                    "batch: start[%lld]=%d must be in [0,%lld)", (long long)bi,
                                    b->start[bi], (long long)b->T);
    return PONDER_OK;
}

/* The host copy of the staged mask: act.mask itself on a host backend. */
static const float *host_mask(const Model *m) {
    return m->ops->device ? m->act.h_mask : m->act.mask;
}

/* out = s * inp over n values, through the backend's op where it has one. */
static void scale_rows(const Model *m, float *out, const float *inp, float s, int64_t n) {
    if (m->ops->scale) m->ops->scale(out, inp, s, n);
    else
        for (int64_t i = 0; i < n; i++) out[i] = inp[i] * s;
}

/* ----------------------------------------------------- shared prefixes --- */

/* Sharing pays for its gathers (each position's q, k, v and attention output
 * copied about twice a layer, against a row's products) once this share of
 * the positions goes. */
#define SHARE_MIN_FRACTION 16 /* at least N / 16 rows saved */

static int position_mask(const ModelBatch *b, int64_t i) {
    return !b->mask || b->mask[i] != 0.0f;
}

/* Positions [0, k) of rows r and l (same start) that hold the same token,
 * mask and, where the mask is set, target: their activations are the same
 * in every layer, since a position attends only to those before it. */
static int64_t common_prefix(const ModelBatch *b, int64_t r, int64_t l) {
    if ((b->start ? b->start[r] : 0) != (b->start ? b->start[l] : 0)) return 0;
    const int64_t T = b->T;
    for (int64_t t = 0; t < T; t++) {
        const int64_t i = r * T + t, j = l * T + t;
        const int mi = position_mask(b, i);
        if (b->tokens[i] != b->tokens[j] || mi != position_mask(b, j) ||
            (mi && b->targets && b->targets[i] != b->targets[j]))
            return t;
    }
    return T;
}

/* One past the last position of row r with its mask set (0 for none). No
 * loss reads a position after it: causal attention looks only back. */
static int64_t live_end(const ModelBatch *b, int64_t r) {
    for (int64_t t = b->T; t > 0; t--)
        if (position_mask(b, r * b->T + t - 1)) return t;
    return 0;
}

/* Whether position t of row r can matter to the outputs: not after the
 * row's last masked-in position, and not a masked-out one before its start
 * (attention never reads keys there). */
static int position_live(const ModelBatch *b, int64_t r, int64_t t, int64_t end) {
    const int64_t s = b->start ? b->start[r] : 0;
    return t < end && (t >= s || position_mask(b, r * b->T + t));
}

/* Numbers the batch's positions by unique row: each row takes the longest
 * prefix it has in common with an earlier row from that row (up to that
 * row's live end, so a shared position is one the earlier row computes), and
 * new rows for the rest of its live positions; positions that cannot matter
 * get -1 and are not computed. sh_off holds each row's live end meanwhile.
 * Returns the number of unique rows. */
static int64_t number_unique_rows(Activations *a, const ModelBatch *b) {
    const int64_t B = b->B, T = b->T;
    int32_t *end = a->sh_off;
    int64_t Nu = 0;
    for (int64_t r = 0; r < B; r++) {
        end[r] = (int32_t)live_end(b, r);
        int64_t best = 0, lead = 0;
        for (int64_t l = 0; l < r && best < end[r]; l++) {
            int64_t k = common_prefix(b, r, l);
            k = k < end[l] ? k : end[l];
            if (k > best) best = k, lead = l;
        }
        for (int64_t t = 0; t < T; t++) {
            const int64_t i = r * T + t;
            if (t < best) {
                a->sh_unique[i] = a->sh_unique[lead * T + t];
            } else if (position_live(b, r, t, end[r])) {
                a->sh_rep[Nu] = (int32_t)i;
                a->sh_unique[i] = (int32_t)Nu++;
            } else {
                a->sh_unique[i] = -1;
            }
        }
    }
    return Nu;
}

/* The maps of Activations' shared-prefix fields, from sh_unique and sh_rep:
 * each unique row's positions in order (sh_off, sh_idx) and the
 * representatives' (sh_grad). */
static void build_share_maps(Activations *a, int64_t N, int64_t Nu) {
    int32_t *off = a->sh_off, *fill = a->sh_grad; /* sh_grad: cursor until the end */
    memset(off, 0, (size_t)(Nu + 1) * sizeof *off);
    for (int64_t i = 0; i < N; i++)
        if (a->sh_unique[i] >= 0) off[a->sh_unique[i] + 1]++;
    for (int64_t u = 0; u < Nu; u++) off[u + 1] += off[u];
    memcpy(fill, off, (size_t)Nu * sizeof *fill);
    for (int64_t i = 0; i < N; i++)
        if (a->sh_unique[i] >= 0) a->sh_idx[fill[a->sh_unique[i]]++] = (int32_t)i;
    for (int64_t i = 0; i < N; i++) {
        const int32_t u = a->sh_unique[i];
        a->sh_grad[i] = u >= 0 && a->sh_rep[u] == i ? u : -1;
    }
}

/* Decides whether this batch's rows share prefixes (sets a->Nu and
 * a->shared, and the maps when they do). */
static void find_shared_prefixes(Model *m, const ModelBatch *b, int allow) {
    Activations *a = &m->act;
    const int64_t N = b->B * b->T;
    a->Nu = N, a->shared = 0;
    if (!allow || !sharing_possible(m)) return;
    const int64_t Nu = number_unique_rows(a, b);
    if (Nu == 0 || (N - Nu) * SHARE_MIN_FRACTION < N) return;
    build_share_maps(a, N, Nu);
    a->Nu = Nu, a->shared = 1;
}

/* Copies the batch at the rows the ops will run on (each unique row's
 * representative position when rows share prefixes, else every position) and
 * derives position ids (counting from each start). On a device backend the
 * batch is staged in host memory and uploaded. allow_share: the pass may
 * share prefixes (find_shared_prefixes). */
static void stage_batch(Model *m, const ModelBatch *b, int allow_share) {
    Activations *a = &m->act;
    const int dev = m->ops->device;
    const int64_t B = b->B, T = b->T;
    find_shared_prefixes(m, b, allow_share);
    const int64_t Nu = a->Nu;
    const int32_t *rep = a->shared ? a->sh_rep : NULL;
    int32_t *tokens = dev ? a->h_tokens : a->tokens, *targets = dev ? a->h_targets : a->targets;
    int32_t *pos = dev ? a->h_pos : a->pos, *start = dev ? a->h_start : a->start;
    float *mask = dev ? a->h_mask : a->mask;
    for (int64_t u = 0; u < Nu; u++) {
        const int64_t i = rep ? rep[u] : u, t = i % T, s = b->start ? b->start[i / T] : 0;
        const int mi = position_mask(b, i);
        tokens[u] = b->tokens[i];
        mask[u] = mi ? 1.0f : 0.0f;
        targets[u] = (mi && b->targets) ? b->targets[i] : 0;
        pos[u] = t >= s ? (int32_t)(t - s) : 0;
    }
    for (int64_t r = 0; r < B; r++) start[r] = b->start ? b->start[r] : 0;
    if (dev) {
        const ModelOps *o = m->ops;
        o->upload(a->tokens, tokens, (size_t)Nu * sizeof(int32_t));
        o->upload(a->targets, targets, (size_t)Nu * sizeof(int32_t));
        o->upload(a->pos, pos, (size_t)Nu * sizeof(int32_t));
        o->upload(a->start, start, (size_t)B * sizeof(int32_t));
        o->upload(a->mask, mask, (size_t)Nu * sizeof(float));
    }
}

/* ------------------------------------------------------------ forward ---- */

static OpsHeads heads(float *base, int64_t offset, int64_t stride) {
    OpsHeads h = {base + offset, stride};
    return h;
}

static void norm_forward(const Model *m, float *out, float *mean, float *rstd, const float *inp,
                         const float *w, const float *b, int64_t N) {
    const ModelConfig *c = &m->cfg;
    if (c->arch == MODEL_ARCH_LLAMA)
        m->ops->rmsnorm_forward(out, rstd, inp, w, N, c->d_model, c->norm_eps);
    else
        m->ops->layernorm_forward(out, mean, rstd, inp, w, b, N, c->d_model, c->norm_eps);
}

static void norm_backward(const Model *m, float *dinp, float *dw, float *db, const float *dout,
                          const float *inp, const float *w, const float *mean, const float *rstd,
                          int64_t N) {
    const ModelConfig *c = &m->cfg;
    if (c->arch == MODEL_ARCH_LLAMA)
        m->ops->rmsnorm_backward(dinp, dw, dout, inp, w, rstd, N, c->d_model);
    else
        m->ops->layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd, N, c->d_model);
}

/* Layer l's saved activations. The per-token ones have a->Nu rows (the
 * unique rows); qkv and the attention probabilities keep the [B,T] layout
 * that attention reads. */
typedef struct LayerActs {
    float *x, *ln1, *ln1_mean, *ln1_rstd, *qkv, *att, *atty, *x2, *ln2, *ln2_mean, *ln2_rstd, *fc,
        *act, *xo;
} LayerActs;

static LayerActs layer_acts(const Model *m, int64_t l) {
    const Activations *a = &m->act;
    const int64_t N = a->B * a->T, Nu = a->Nu, C = m->cfg.d_model;
    LayerActs s = {
        .x = a->resid + l * Nu * C, .ln1 = a->ln1 + l * Nu * C,
        .ln1_mean = a->ln1_mean + l * Nu, .ln1_rstd = a->ln1_rstd + l * Nu,
        .qkv = a->qkv + l * N * m->qkv_dim, .att = a->att + l * a->B * m->cfg.n_head * a->T * a->T,
        .atty = a->atty + l * Nu * m->attn_dim, .x2 = a->resid2 + l * Nu * C,
        .ln2 = a->ln2 + l * Nu * C, .ln2_mean = a->ln2_mean + l * Nu,
        .ln2_rstd = a->ln2_rstd + l * Nu, .fc = a->fc + l * Nu * m->fc_dim,
        .act = a->act + l * Nu * m->cfg.d_ff, .xo = a->resid + (l + 1) * Nu * C,
    };
    return s;
}

static void layer_forward(Model *m, int64_t l) {
    const ModelConfig *c = &m->cfg;
    const ModelOps *o = m->ops;
    Activations *a = &m->act;
    const int64_t B = a->B, T = a->T, N = B * T, Nu = a->Nu, C = c->d_model, F = c->d_ff;
    const int64_t NH = c->n_head, KV = c->n_kv_head, hd = m->head_dim, QKV = m->qkv_dim;
    const int64_t AD = m->attn_dim, FC = m->fc_dim;
    LayerView p = model_layer_view(m, m->params, l);
    LayerActs s = layer_acts(m, l);
    float *tmp = a->dln; /* scratch [Nu,C]: branch outputs before the residual add */

    norm_forward(m, s.ln1, s.ln1_mean, s.ln1_rstd, s.x, p.ln1_w, p.ln1_b, Nu);
    float *qkv_u = a->shared ? a->qkv_u : s.qkv;
    o->matmul_forward(qkv_u, s.ln1, p.qkv_w, p.qkv_b, Nu, C, QKV);
    if (c->arch == MODEL_ARCH_LLAMA) {
        /* k's heads follow q's in each row: one rotation over both */
        o->rope(heads(qkv_u, 0, QKV), a->pos, m->rope, Nu, NH + KV, hd, 0);
    }
    if (a->shared) o->rows_gather(s.qkv, qkv_u, a->sh_unique, NULL, N, QKV);
    OpsHeads q = heads(s.qkv, 0, QKV), k = heads(s.qkv, AD, QKV),
             v = heads(s.qkv, AD + KV * hd, QKV);
    float *atty_x = a->shared ? a->atty_x : s.atty;
    o->attention_forward(atty_x, s.att, q, k, v, a->start, B, T, NH, KV, hd);
    if (a->shared) o->rows_gather(s.atty, atty_x, a->sh_rep, NULL, Nu, AD);
    o->matmul_forward(tmp, s.atty, p.o_w, p.o_b, Nu, AD, C);
    o->add(s.x2, s.x, tmp, Nu * C);

    norm_forward(m, s.ln2, s.ln2_mean, s.ln2_rstd, s.x2, p.ln2_w, p.ln2_b, Nu);
    o->matmul_forward(s.fc, s.ln2, p.fc_w, p.fc_b, Nu, C, FC);
    if (c->arch == MODEL_ARCH_LLAMA) o->swiglu_forward(s.act, s.fc, Nu, F);
    else o->gelu_forward(s.act, s.fc, Nu * F);
    o->matmul_forward(tmp, s.act, p.proj_w, p.proj_b, Nu, F, C);
    o->add(s.xo, s.x2, tmp, Nu * C);
}

/* Embeddings, every layer and the final norm: leaves the normed final hidden
 * state in act.lnf. */
static void forward_trunk(Model *m) {
    const ModelConfig *c = &m->cfg;
    Activations *a = &m->act;
    const int64_t N = a->Nu, C = c->d_model;
    const float *wpe = c->arch == MODEL_ARCH_GPT2 ? m->params + m->lay.wpe : NULL;
    m->ops->embedding_forward(a->resid, a->tokens, a->pos, m->params + m->lay.wte, wpe, N, C);
    for (int64_t l = 0; l < c->n_layer; l++) layer_forward(m, l);
    const float *lnf_b = c->arch == MODEL_ARCH_GPT2 ? m->params + m->lay.lnf_b : NULL;
    norm_forward(m, a->lnf, a->lnf_mean, a->lnf_rstd, a->resid + c->n_layer * N * C,
                 m->params + m->lay.lnf_w, lnf_b, N);
}

static int prepare(Model *m, const ModelBatch *batch, int need_targets, int allow_share,
                   PonderError *err) {
    int rc = check_batch(m, batch, need_targets, err);
    if (rc) return rc;
    rc = ensure_activations(m, batch->B, batch->T, err);
    if (rc) return rc;
    stage_batch(m, batch, allow_share);
    return PONDER_OK;
}

/* dst[i] = src[unique row of position i] over the batch's N positions. */
static void expand_positions(const Model *m, float *dst, const float *src) {
    const Activations *a = &m->act;
    m->ops->rows_gather(dst, src, a->sh_unique, NULL, a->B * a->T, 1);
}

/* The mask of batch position i, on the host (0 at positions not computed). */
static float mask_at(const Model *m, int64_t i) {
    if (!m->act.shared) return host_mask(m)[i];
    const int32_t u = m->act.sh_unique[i];
    return u >= 0 ? host_mask(m)[u] : 0.0f;
}

/* The heads on act.lnf after forward_trunk, into backend arrays: logp and
 * entropy (may be NULL) of softmax(logits / temperature), and the scalar
 * head's values (values NULL: skipped), not masked. */
static void forward_heads(Model *m, float temperature, float *logp_out, float *entropy_out,
                          float *values_out) {
    const ModelConfig *c = &m->cfg;
    const ModelOps *o = m->ops;
    Activations *a = &m->act;
    const int64_t N = a->Nu, C = c->d_model;
    /* shared prefixes: the heads run on the unique rows, then expand */
    float *logp = a->shared ? a->u_logp : logp_out;
    float *entropy = a->shared && entropy_out ? a->u_entropy : entropy_out;
    float *values = a->shared && values_out ? a->u_values : values_out;
    /* softmax(h W^T / T) = softmax((h / T) W^T): scale the head's input */
    a->head_scale = (temperature > 0.0f) ? 1.0f / temperature : 1.0f;
    const float *head_in = a->lnf;
    if (a->head_scale != 1.0f) {
        scale_rows(m, a->lnf_scaled, a->lnf, a->head_scale, N * C);
        head_in = a->lnf_scaled;
    }
    a->lm_kept = a->lm_logits != NULL;
    if (a->lm_kept)
        o->lm_head_forward_keep(logp, entropy, a->lse, a->lm_logits, head_in, m->params + m->lay.lm,
                                a->targets, a->mask, N, C, c->vocab_size);
    else
        o->lm_head_forward(logp, entropy, a->lse, head_in, m->params + m->lay.lm, a->targets,
                           a->mask, N, C, c->vocab_size);
    if (values)
        o->matmul_forward(values, a->lnf, m->params + m->lay.score_w, m->params + m->lay.score_b,
                          N, C, 1);
    if (a->shared) {
        expand_positions(m, logp_out, logp);
        if (entropy) expand_positions(m, entropy_out, entropy);
        if (values) expand_positions(m, values_out, values);
    }
}

static int forward_start(Model *m, const ModelBatch *batch, PonderError *err) {
    m->act.has_forward = 0;
    if (!batch->targets)
        return ponder_error(err, PONDER_ERR_SHAPE, "model_forward: batch has no targets");
    int rc = prepare(m, batch, 1, 1, err);
    if (rc == PONDER_OK) forward_trunk(m);
    return rc;
}

int model_forward(Model *m, const ModelBatch *batch, float *logp, float *entropy, float *values,
                  PonderError *err) {
    const ModelConfig *c = &m->cfg;
    m->act.has_forward = 0;
    if (!batch->targets)
        return ponder_error(err, PONDER_ERR_SHAPE, "model_forward: batch has no targets");
    if (c->scalar_head && !values)
        return ponder_error(err, PONDER_ERR_SHAPE,
                            "model_forward: the model has a scalar head; pass a values buffer");
    int rc = forward_start(m, batch, err);
    if (rc) return rc;
    Activations *a = &m->act;
    const int64_t N = a->B * a->T;
    /* a device backend writes into device buffers that are downloaded below */
    const ModelOps *o = m->ops;
    const int dev = o->device;
    const size_t row_bytes = (size_t)N * sizeof(float);
    float *out_values = c->scalar_head ? (dev ? a->d_values : values) : NULL;
    forward_heads(m, batch->temperature, dev ? a->d_logp : logp,
                  dev && entropy ? a->d_entropy : entropy, out_values);
    if (dev) {
        o->download(logp, a->d_logp, row_bytes);
        if (entropy) o->download(entropy, a->d_entropy, row_bytes);
    }
    if (c->scalar_head) {
        if (dev) o->download(values, a->d_values, row_bytes);
        for (int64_t i = 0; i < N; i++) values[i] *= mask_at(m, i);
    } else if (values) {
        memset(values, 0, row_bytes);
    }
    a->has_forward = 1;
    return PONDER_OK;
}

int model_forward_backend(Model *m, const ModelBatch *batch, int want_entropy, ModelOutputs *out,
                          PonderError *err) {
    int rc = forward_start(m, batch, err);
    if (rc) return rc;
    Activations *a = &m->act;
    const int scalar = m->cfg.scalar_head;
    out->logp = a->d_logp;
    out->entropy = want_entropy ? a->d_entropy : NULL;
    out->values = scalar ? a->d_values : NULL;
    forward_heads(m, batch->temperature, a->d_logp, want_entropy ? a->d_entropy : NULL,
                  scalar ? a->d_values : NULL);
    a->has_forward = 1;
    return PONDER_OK;
}

int model_forward_logits(Model *m, const ModelBatch *batch, float *logits, PonderError *err) {
    m->act.has_forward = 0; /* the saved state no longer matches a loss forward */
    int rc = prepare(m, batch, 0, 0, err); /* logits at every position: not shared */
    if (rc) return rc;
    forward_trunk(m);
    const int64_t N = m->act.B * m->act.T;
    const ModelOps *o = m->ops;
    const size_t bytes = (size_t)(N * m->cfg.vocab_size) * sizeof(float);
    float *out = o->device ? o->alloc(bytes) : logits;
    if (!out)
        return ponder_error(err, PONDER_ERR_NOMEM, "out of device memory for [%lld,%lld] logits",
                            (long long)N, (long long)m->cfg.vocab_size);
    o->matmul_forward(out, m->act.lnf, m->params + m->lay.lm, NULL, N, m->cfg.d_model,
                      m->cfg.vocab_size);
    if (o->device) {
        o->download(logits, out, bytes);
        o->free(out);
    }
    return PONDER_OK;
}

/* ----------------------------------------------------------- backward ---- */

/* dinp = dout w (overwritten), dw and dbias accumulated: one op where the
 * backend has it, else zeroing and the accumulating op. */
static void matmul_backward_into(const ModelOps *o, float *dinp, float *dw, float *dbias,
                                 const float *dout, const float *inp, const float *w, int64_t N,
                                 int64_t C, int64_t OC) {
    if (o->matmul_backward_set) {
        o->matmul_backward_set(dinp, dw, dbias, dout, inp, w, N, C, OC);
        return;
    }
    o->zero(dinp, (size_t)(N * C) * sizeof(float));
    o->matmul_backward(dinp, dw, dbias, dout, inp, w, N, C, OC);
}

/* dres holds d(output of layer l) on entry and d(input of layer l) on exit. */
static void layer_backward(Model *m, int64_t l, float *dres) {
    const ModelConfig *c = &m->cfg;
    const ModelOps *o = m->ops;
    Activations *a = &m->act;
    const int64_t B = a->B, T = a->T, N = B * T, Nu = a->Nu, C = c->d_model, F = c->d_ff;
    const int64_t NH = c->n_head, KV = c->n_kv_head, hd = m->head_dim, QKV = m->qkv_dim;
    const int64_t AD = m->attn_dim, FC = m->fc_dim;
    const size_t f = sizeof(float);
    LayerView p = model_layer_view(m, m->params, l), g = model_layer_view(m, m->grads, l);
    LayerActs s = layer_acts(m, l);

    /* MLP branch: xo = x2 + proj(act(fc(norm(x2)))) */
    matmul_backward_into(o, a->dact, g.proj_w, g.proj_b, dres, s.act, p.proj_w, Nu, F, C);
    if (c->arch == MODEL_ARCH_LLAMA && o->swiglu_matmul_backward_set && !g.fc_b) {
        /* d(fc) formed inside the fc layer's backward, never stored */
        o->swiglu_matmul_backward_set(a->dln, g.fc_w, a->dact, s.fc, s.ln2, p.fc_w, Nu, C, F);
    } else {
        if (c->arch == MODEL_ARCH_LLAMA && o->swiglu_backward_set) {
            o->swiglu_backward_set(a->dfc, a->dact, s.fc, Nu, F);
        } else {
            o->zero(a->dfc, (size_t)(Nu * FC) * f);
            if (c->arch == MODEL_ARCH_LLAMA) o->swiglu_backward(a->dfc, a->dact, s.fc, Nu, F);
            else o->gelu_backward(a->dfc, s.fc, a->dact, Nu * F);
        }
        matmul_backward_into(o, a->dln, g.fc_w, g.fc_b, a->dfc, s.ln2, p.fc_w, Nu, C, FC);
    }
    norm_backward(m, dres, g.ln2_w, g.ln2_b, a->dln, s.x2, p.ln2_w, s.ln2_mean, s.ln2_rstd, Nu);

    /* attention branch: x2 = x + o_proj(attention(qkv(norm(x)))). Shared
     * prefixes: d(output) goes to each unique row's representative position
     * (the one whose output the forward kept), and d(q, k, v) of a unique row
     * is the sum over its positions. */
    matmul_backward_into(o, a->datty, g.o_w, g.o_b, dres, s.atty, p.o_w, Nu, AD, C);
    float *datty_x = a->datty;
    if (a->shared) {
        o->rows_gather(a->atty_x, a->datty, a->sh_grad, NULL, N, AD);
        datty_x = a->atty_x;
    }
    OpsHeads q = heads(s.qkv, 0, QKV), k = heads(s.qkv, AD, QKV),
             v = heads(s.qkv, AD + KV * hd, QKV);
    OpsHeads dq = heads(a->dqkv, 0, QKV), dk = heads(a->dqkv, AD, QKV),
             dv = heads(a->dqkv, AD + KV * hd, QKV);
    if (o->attention_backward_set) { /* dq, dk and dv cover every column of dqkv */
        o->attention_backward_set(dq, dk, dv, datty_x, s.att, q, k, v, a->start, B, T, NH, KV,
                                  hd);
    } else {
        o->zero(a->dqkv, (size_t)(N * QKV) * f);
        o->attention_backward(dq, dk, dv, datty_x, s.att, q, k, v, a->start, B, T, NH, KV, hd);
    }
    float *dqkv_u = a->dqkv;
    if (a->shared) {
        o->rows_gather(a->qkv_u, a->dqkv, a->sh_idx, a->sh_off, Nu, QKV);
        dqkv_u = a->qkv_u;
    }
    if (c->arch == MODEL_ARCH_LLAMA) { /* dk's heads follow dq's */
        o->rope(heads(dqkv_u, 0, QKV), a->pos, m->rope, Nu, NH + KV, hd, 1);
    }
    matmul_backward_into(o, a->dln, g.qkv_w, g.qkv_b, dqkv_u, s.ln1, p.qkv_w, Nu, C, QKV);
    norm_backward(m, dres, g.ln1_w, g.ln1_b, a->dln, s.x, p.ln1_w, s.ln1_mean, s.ln1_rstd, Nu);
}

static int check_forward(const Model *m, PonderError *err) {
    if (m->act.has_forward) return PONDER_OK;
    return ponder_error(err, PONDER_ERR_RUNTIME,
                        "model_backward: no forward pass to differentiate (call model_forward "
                        "first)");
}

/* Shared prefixes: a unique row's gradient is the sum over its positions
 * (dst [Nu] from src [N]; NULL for NULL). */
static const float *sum_positions(const Model *m, float *dst, const float *src) {
    if (!src) return NULL;
    m->ops->rows_gather(dst, src, m->act.sh_idx, m->act.sh_off, m->act.Nu, 1);
    return dst;
}

/* The backward pass from per-token gradients in backend memory (dvalues
 * already 0 at mask-0 positions, NULL without a scalar head's gradient). */
static void backward_from(Model *m, const float *dlogp, const float *dentropy,
                          const float *dvalues) {
    const ModelConfig *c = &m->cfg;
    const ModelOps *o = m->ops;
    Activations *a = &m->act;
    const int64_t N = a->Nu, C = c->d_model, L = c->n_layer;
    const int gpt2 = c->arch == MODEL_ARCH_GPT2;
    float *G = m->grads;
    if (a->shared) {
        dlogp = sum_positions(m, a->u_dlogp, dlogp);
        dentropy = sum_positions(m, a->u_dentropy, dentropy);
        dvalues = sum_positions(m, a->u_dvalues, dvalues);
    }

    /* heads: d(final normed hidden) */
    o->zero(a->dlnf, (size_t)(N * C) * sizeof(float));
    const int scaled = a->head_scale != 1.0f;
    if (dlogp || dentropy) { /* a critic trains only its value head: skip the LM head */
        const float *head_in = scaled ? a->lnf_scaled : a->lnf;
        if (a->lm_kept) /* consumed: a second backward recomputes */
            o->lm_head_backward_kept(a->dlnf, G + m->lay.lm, a->lm_logits, dlogp, dentropy, head_in,
                                     m->params + m->lay.lm, a->targets, a->lse, a->mask, N, C,
                                     c->vocab_size);
        else
            o->lm_head_backward(a->dlnf, G + m->lay.lm, dlogp, dentropy, head_in,
                                m->params + m->lay.lm, a->targets, a->lse, a->mask, N, C,
                                c->vocab_size);
        a->lm_kept = 0;
        if (scaled) /* chain rule through h / T */
            scale_rows(m, a->dlnf, a->dlnf, a->head_scale, N * C);
    }
    if (c->scalar_head && dvalues)
        o->matmul_backward(a->dlnf, G + m->lay.score_w, G + m->lay.score_b, dvalues, a->lnf,
                           m->params + m->lay.score_w, N, C, 1);
    /* final norm, then the layers in reverse */
    float *dres = a->dresid;
    o->zero(dres, (size_t)(N * C) * sizeof(float));
    norm_backward(m, dres, G + m->lay.lnf_w, gpt2 ? G + m->lay.lnf_b : NULL, a->dlnf,
                  a->resid + L * N * C, m->params + m->lay.lnf_w, a->lnf_mean, a->lnf_rstd, N);
    for (int64_t l = L - 1; l >= 0; l--) layer_backward(m, l, dres);
    o->embedding_backward(G + m->lay.wte, gpt2 ? G + m->lay.wpe : NULL, dres, a->tokens, a->pos,
                          N, C);
}

int model_backward(Model *m, const float *dlogp, const float *dentropy, const float *dvalues,
                   PonderError *err) {
    int rc = check_forward(m, err);
    if (rc) return rc;
    const ModelOps *o = m->ops;
    Activations *a = &m->act;
    const int64_t N = a->B * a->T;
    /* a device backend reads the per-token gradients from device copies */
    const int dev = o->device;
    const size_t row_bytes = (size_t)N * sizeof(float);
    if (dev && dlogp) {
        o->upload(a->d_dlogp, dlogp, row_bytes);
        dlogp = a->d_dlogp;
    }
    if (dev && dentropy) {
        o->upload(a->d_dentropy, dentropy, row_bytes);
        dentropy = a->d_dentropy;
    }
    const float *dv_backend = NULL;
    if (m->cfg.scalar_head && dvalues) { /* masked on the host, then moved */
        float *dv = dev ? a->h_rows : a->dvalues;
        for (int64_t i = 0; i < N; i++) dv[i] = dvalues[i] * mask_at(m, i);
        if (dev) o->upload(a->dvalues, dv, row_bytes);
        dv_backend = a->dvalues;
    }
    backward_from(m, dlogp, dentropy, dv_backend);
    return PONDER_OK;
}

int64_t model_last_rows(const Model *m) { return m->act.has_forward ? m->act.Nu : 0; }

int model_backward_backend(Model *m, const float *dlogp, const float *dentropy,
                           const float *dvalues, PonderError *err) {
    int rc = check_forward(m, err);
    if (rc == PONDER_OK) backward_from(m, dlogp, dentropy, m->cfg.scalar_head ? dvalues : NULL);
    return rc;
}
