/* trainer/rl_remote.c — the disaggregated side of an RL stage (rl_stage.h):
 * the messages between learners and rollout ranks, the rollout ranks' loop
 * (rl_stage_serve) and the learners' receiving of each step's samples. */
#include <stdio.h>  /* snprintf */
#include <stdlib.h> /* malloc, realloc, free */
#include <string.h> /* memcpy, memset, memmove, strlen */

#include "trainer/dist.h"        /* dist_isend, dist_recv */
#include "trainer/rl_internal.h" /* Rollout, rl_collect */
#include "trainer/rl_stage.h"


/* Messages between the roles (world ranks; learners are 0 .. n_learners-1).
 * control (learner 0 -> each rollout rank): int64 {kind, version, cursor,
 *   n_params} then float params[n_params] (weights messages only).
 * batch (each rollout rank -> each learner): int64 {kind, step, version,
 *   cursor after the step, P, G, K, kept groups, reserved,
 *   resample rounds, tokens generated}, double {zero-variance share,
 *   t_generate, t_score}, then per
 *   group its prompt (int64 length, int32 ids) and per sample int64 {n,
 *   finish}, int32 tokens[n], float logp[n], int64 text length, the text,
 *   double reward, double components[K]. Native byte order: the ranks of a
 *   job run the same binary. */
enum { TAG_CONTROL = 4101, TAG_BATCH = 4102 };
enum { CONTROL_WEIGHTS = 1, CONTROL_STOP = 2 };
enum { BATCH_DATA = 1, BATCH_DONE = 2 };
#define CONTROL_HEADER 4
#define BATCH_HEADER 11

typedef struct PendingSend {
    DistRequest req[64];
    int n;
    char *buf;
} PendingSend;

typedef struct Wire {
    char *p;
    size_t len, cap;
    int nomem;
} Wire;

static void wire_put(Wire *w, const void *x, size_t n) {
    if (w->nomem) return;
    if (w->len + n > w->cap) {
        size_t cap = w->cap ? w->cap : 4096;
        while (cap < w->len + n) cap *= 2;
        char *q = realloc(w->p, cap);
        if (!q) {
            w->nomem = 1;
            return;
        }
        w->p = q, w->cap = cap;
    }
    if (n) memcpy(w->p + w->len, x, n);
    w->len += n;
}

static void wire_i64(Wire *w, int64_t v) { wire_put(w, &v, sizeof v); }
static void wire_f64(Wire *w, double v) { wire_put(w, &v, sizeof v); }

typedef struct Reader {
    const char *p;
    size_t len, at;
    int short_read;
} Reader;

static void read_into(Reader *r, void *x, size_t n) {
    if (r->short_read || r->at + n > r->len) {
        r->short_read = 1;
        memset(x, 0, n);
        return;
    }
    memcpy(x, r->p + r->at, n);
    r->at += n;
}

static int64_t read_i64(Reader *r) {
    int64_t v;
    read_into(r, &v, sizeof v);
    return v;
}

static double read_f64(Reader *r) {
    double v;
    read_into(r, &v, sizeof v);
    return v;
}

static void pending_reap(RlStage *s, int wait_all, PonderError *err, int *rc);

/* Learner 0 -> every rollout rank; the buffer lives until its sends complete. */
static int send_control(RlStage *s, int kind, int64_t version, int64_t cursor, PonderError *err) {
    const int W = s->ranks.world->size, L = s->ranks.n_learners;
    int rc = PONDER_OK;
    pending_reap(s, 0, err, &rc);
    if (rc) return rc;
    const size_t np = kind == CONTROL_WEIGHTS ? model_num_params(s->policy) : 0;
    const size_t bytes = CONTROL_HEADER * sizeof(int64_t) + np * sizeof(float);
    PendingSend *grown = realloc(s->pending, (size_t)(s->n_pending + 1) * sizeof *grown);
    char *buf = malloc(bytes);
    if (grown) s->pending = grown;
    if (!grown || !buf) {
        free(buf);
        return ponder_error(err, PONDER_ERR_NOMEM, "out of memory (weights message)");
    }
    int64_t head[CONTROL_HEADER] = {kind, version, cursor, (int64_t)np};
    memcpy(buf, head, sizeof head);
    if (np) memcpy(buf + sizeof head, model_params(s->policy), np * sizeof(float));
    PendingSend *ps = &s->pending[s->n_pending++];
    memset(ps, 0, sizeof *ps);
    ps->buf = buf;
    if (kind == CONTROL_WEIGHTS) s->bytes_weights += bytes * (uint64_t)(W - L);
    for (int q = L; q < W && rc == PONDER_OK && ps->n < 64; q++)
        rc = dist_isend(s->ranks.world, buf, bytes, q,
                        TAG_CONTROL, kind == CONTROL_WEIGHTS ? "sending weights" : "sending stop",
                        &ps->req[ps->n++], err);
    return rc;
}

/* Frees the weight messages whose sends completed (all of them, waiting,
 * with wait_all). */
static void pending_reap(RlStage *s, int wait_all, PonderError *err, int *rc) {
    int kept = 0;
    for (int i = 0; i < s->n_pending; i++) {
        PendingSend *ps = &s->pending[i];
        int done = 1;
        for (int k = 0; k < ps->n && *rc == PONDER_OK; k++) {
            if (!ps->req[k].active) continue;
            if (wait_all) *rc = dist_wait(s->ranks.world, &ps->req[k], err);
            else done = 0;
        }
        if (done && *rc == PONDER_OK) {
            free(ps->buf);
        } else {
            s->pending[kept++] = *ps;
        }
    }
    s->n_pending = kept;
}

void rl_pending_free_all(RlStage *s) {
    for (int i = 0; i < s->n_pending; i++) free(s->pending[i].buf);
    free(s->pending);
    s->pending = NULL;
    s->n_pending = 0;
}

int rl_send_weights(RlStage *s, int64_t version, int64_t cursor, PonderError *err) {
    return send_control(s, CONTROL_WEIGHTS, version, cursor, err);
}

int rl_stage_remote_start(RlStage *s, int64_t step, int64_t cursor, PonderError *err) {
    if (s->ranks.role != RL_ROLE_LEARNER || s->dist->rank != 0) return PONDER_OK;
    return send_control(s, CONTROL_WEIGHTS, step, cursor, err);
}

/* --- the rollout side --- */

static int serialize_rollout(const Rollout *r, const RlStepStats *st, int64_t step, int64_t version,
                             int64_t cursor, Wire *w) {
    const int64_t G = r->G;
    int64_t head[BATCH_HEADER] = {BATCH_DATA, step, version, cursor, r->P, G, r->K,
                                  st->groups_kept, 0 /* reserved */, st->resample_rounds,
                                  st->tokens_generated};
    wire_put(w, head, sizeof head);
    wire_f64(w, st->zero_variance_groups);
    wire_f64(w, st->t_generate);
    wire_f64(w, st->t_score);
    for (int64_t p = 0; p < r->P; p++) {
        wire_i64(w, r->prompt_len[p]);
        wire_put(w, r->prompt_ids[p], (size_t)r->prompt_len[p] * sizeof(int32_t));
        for (int64_t g = 0; g < G; g++) {
            const int64_t i = p * G + g;
            const GenSample *x = &r->samples[i];
            wire_i64(w, x->n);
            wire_i64(w, (int64_t)x->finish);
            wire_put(w, x->tokens, (size_t)x->n * sizeof(int32_t));
            wire_put(w, x->logp, (size_t)x->n * sizeof(float));
            const size_t tl = r->texts[i] ? strlen(r->texts[i]) : 0;
            wire_i64(w, (int64_t)tl);
            wire_put(w, r->texts[i], tl);
            wire_f64(w, r->reward[i]);
            for (int k = 0; k < r->K; k++) wire_f64(w, r->component[k * r->cap * G + i]);
        }
    }
    return w->nomem ? PONDER_ERR_NOMEM : PONDER_OK;
}

/* Applies one control message; *stop set by a stop message. */
static int apply_control(RlStage *s, const void *msg, size_t bytes, int64_t *version, int64_t *cursor,
                         int *stop, PonderError *err) {
    int64_t head[CONTROL_HEADER];
    if (bytes < sizeof head)
        return ponder_error(err, PONDER_ERR_RUNTIME, "rollout rank: short control message (%zu bytes)", bytes);
    memcpy(head, msg, sizeof head);
    if (head[0] == CONTROL_STOP) {
        *stop = 1;
        return PONDER_OK;
    }
    const size_t np = model_num_params(s->policy);
    if (head[0] != CONTROL_WEIGHTS || (size_t)head[3] != np || bytes != sizeof head + np * sizeof(float))
        return ponder_error(err, PONDER_ERR_RUNTIME,
                            "rollout rank: bad weights message (kind %lld, %lld parameters, %zu bytes; "
                            "this model has %zu parameters)",
                            (long long)head[0], (long long)head[3], bytes, np);
    memcpy(model_params(s->policy), (const char *)msg + sizeof head, np * sizeof(float));
    model_params_upload(s->policy);
    *version = head[1];
    *cursor = head[2];
    return PONDER_OK;
}

/* Receives one control message (waiting for it when `wait`). */
static int take_control(RlStage *s, int wait, int *got, int64_t *version, int64_t *cursor, int *stop,
                        PonderError *err) {
    *got = 0;
    if (!wait) {
        int rc = dist_probe(s->ranks.world, 0, TAG_CONTROL, got, err);
        if (rc || !*got) return rc;
    }
    void *msg = NULL;
    size_t bytes = 0;
    int rc = dist_recv(s->ranks.world, &msg, &bytes, 0, TAG_CONTROL, NULL, "weights from learner 0", err);
    if (rc == PONDER_OK) rc = apply_control(s, msg, bytes, version, cursor, stop, err);
    *got = rc == PONDER_OK;
    free(msg);
    return rc;
}

typedef struct BatchSlot {
    Wire w;
    DistRequest req[64];
    int n;
} BatchSlot;

static int slot_wait(RlStage *s, BatchSlot *b, PonderError *err) {
    int rc = PONDER_OK;
    for (int k = 0; k < b->n && rc == PONDER_OK; k++) rc = dist_wait(s->ranks.world, &b->req[k], err);
    free(b->w.p);
    memset(b, 0, sizeof *b);
    return rc;
}

int rl_stage_serve(RlStage *s, PonderError *err) {
    const int L = s->ranks.n_learners;
    const int64_t K = s->ranks.max_staleness;
    int64_t stage_end = 0;
    for (int i = 0; i <= s->stage; i++) stage_end += s->cfg->stages[i].steps;
    int64_t version = -1, cursor = 0;
    int stop = 0, got = 0;
    dist_set_phase(s->ranks.world, "rollout: waiting for the first weights", 0);
    int rc = take_control(s, 1, &got, &version, &cursor, &stop, err);
    const int64_t nslots = K + 1;
    BatchSlot *slots = calloc((size_t)nslots, sizeof(BatchSlot));
    if (rc == PONDER_OK && !slots) rc = ponder_error(err, PONDER_ERR_NOMEM, "out of memory");
    for (int64_t g = version; rc == PONDER_OK && !stop && g < stage_end; g++) {
        do /* take every weights message already here: the newest wins */
            rc = take_control(s, 0, &got, &version, &cursor, &stop, err);
        while (rc == PONDER_OK && got && !stop);
        dist_set_phase(s->ranks.world, "rollout: waiting for fresh enough weights", g);
        while (rc == PONDER_OK && !stop && version < g - K)
            rc = take_control(s, 1, &got, &version, &cursor, &stop, err);
        if (rc || stop) break;
        dist_set_phase(s->ranks.world, "rollout: generating", g);
        BatchSlot *slot = &slots[g % nslots];
        if (slot->n) rc = slot_wait(s, slot, err); /* the send K+1 steps back */
        Rollout r = {0};
        RlStepStats st;
        memset(&st, 0, sizeof st);
        if (rc == PONDER_OK) rc = rl_collect(s, g, &cursor, &r, &st, err);
        if (rc == PONDER_OK && serialize_rollout(&r, &st, g, version, cursor, &slot->w))
            rc = ponder_error(err, PONDER_ERR_NOMEM, "out of memory (samples message)");
        rl_rollout_free(&r);
        if (rc == PONDER_OK) s->bytes_samples += slot->w.len * (uint64_t)L;
        for (int q = 0; q < L && q < 64 && rc == PONDER_OK; q++)
            rc = dist_isend(s->ranks.world, slot->w.p, slot->w.len, q, TAG_BATCH, "sending samples",
                            &slot->req[slot->n++], err);
    }
    dist_set_phase(s->ranks.world, "rollout: waiting for the learners to stop", version);
    while (rc == PONDER_OK && !stop) rc = take_control(s, 1, &got, &version, &cursor, &stop, err);
    int64_t done[BATCH_HEADER] = {BATCH_DONE};
    for (int q = 0; q < L && rc == PONDER_OK; q++)
        rc = dist_send(s->ranks.world, done, sizeof done, q, TAG_BATCH, "telling the learners it is done", err);
    for (int64_t i = 0; slots && i < nslots; i++) {
        int wrc = slots[i].n ? slot_wait(s, &slots[i], err) : PONDER_OK;
        if (rc == PONDER_OK) rc = wrc;
        free(slots[i].w.p);
    }
    free(slots);
    return rc;
}

/* --- the learner side --- */

/* Appends the groups of one batch message to r (all of them; the caller
 * keeps its share). */
static int deserialize_groups(Reader *rd, int64_t P, int64_t G, int K, Rollout *r, PonderError *err) {
    int rc = rl_rollout_reserve(r, r->P + P, err);
    for (int64_t p = 0; p < P && rc == PONDER_OK; p++) {
        const int64_t q = r->P, len = read_i64(rd);
        if (rd->short_read || len < 0 || (size_t)len > rd->len) break;
        memset(&r->items[q], 0, sizeof r->items[q]);
        r->prompt_len[q] = len;
        r->prompt_ids[q] = malloc((size_t)(len + 1) * sizeof(int32_t));
        if (!r->prompt_ids[q]) return ponder_error(err, PONDER_ERR_NOMEM, "out of memory");
        read_into(rd, r->prompt_ids[q], (size_t)len * sizeof(int32_t));
        for (int64_t g = 0; g < G && !rd->short_read; g++) {
            const int64_t i = q * G + g;
            GenSample *x = &r->samples[i];
            memset(x, 0, sizeof *x);
            r->texts[i] = NULL;
            x->n = read_i64(rd);
            x->finish = (GenFinish)read_i64(rd);
            if (x->n < 0 || (size_t)x->n > rd->len) {
                rd->short_read = 1;
                break;
            }
            x->prompt = q, x->group = q, x->sample = g;
            x->tokens = malloc((size_t)(x->n + 1) * sizeof(int32_t));
            x->logp = malloc((size_t)(x->n + 1) * sizeof(float));
            int64_t tl = 0;
            if (x->tokens && x->logp) {
                read_into(rd, x->tokens, (size_t)x->n * sizeof(int32_t));
                read_into(rd, x->logp, (size_t)x->n * sizeof(float));
                tl = read_i64(rd);
            }
            if (tl < 0 || (size_t)tl > rd->len) rd->short_read = 1;
            r->texts[i] = rd->short_read ? NULL : malloc((size_t)tl + 1);
            if (!x->tokens || !x->logp || (!rd->short_read && !r->texts[i])) {
                r->P++, r->n += G; /* so rollout_free releases what was taken */
                return ponder_error(err, PONDER_ERR_NOMEM, "out of memory");
            }
            if (r->texts[i]) {
                read_into(rd, r->texts[i], (size_t)tl);
                r->texts[i][tl] = '\0';
            }
            r->reward[i] = read_f64(rd);
            for (int k = 0; k < K; k++) r->component[k * r->cap * G + i] = read_f64(rd);
        }
        r->P++, r->n += G;
    }
    if (rc == PONDER_OK && rd->short_read)
        rc = ponder_error(err, PONDER_ERR_RUNTIME, "learner: a samples message ended early (corrupt or truncated)");
    return rc;
}

/* Keeps groups [lo, hi) of r, in place. */
static void keep_groups(Rollout *r, int64_t lo, int64_t hi) {
    const int64_t G = r->G;
    Rollout all = *r;
    for (int64_t p = 0; p < all.P; p++) {
        if (p >= lo && p < hi) continue;
        free(all.prompt_ids[p]);
        gen_samples_free(all.samples + p * G, G);
        for (int64_t g = 0; g < G; g++) free(all.texts[p * G + g]);
    }
    const int64_t n = hi - lo;
    memmove(r->prompt_ids, all.prompt_ids + lo, (size_t)n * sizeof *r->prompt_ids);
    memmove(r->prompt_len, all.prompt_len + lo, (size_t)n * sizeof *r->prompt_len);
    memmove(r->samples, all.samples + lo * G, (size_t)(n * G) * sizeof *r->samples);
    memmove(r->texts, all.texts + lo * G, (size_t)(n * G) * sizeof *r->texts);
    memmove(r->reward, all.reward + lo * G, (size_t)(n * G) * sizeof *r->reward);
    for (int k = 0; k < r->K; k++)
        memmove(r->component + k * r->cap * G, all.component + k * all.cap * G + lo * G,
                (size_t)(n * G) * sizeof(double));
    r->P = n, r->n = n * G;
}

int rl_receive_rollout(RlStage *s, int64_t step, int64_t *cursor, Rollout *r, RlStepStats *st,
                           PonderError *err) {
    const ConfigStage *cs = &s->cfg->stages[s->stage];
    const int W = s->ranks.world->size, L = s->ranks.n_learners;
    r->G = cs->num_generations, r->K = s->n_rewards;
    double zero_var = 0;
    int rc = PONDER_OK;
    dist_set_phase(s->ranks.world, "learner: waiting for samples", step);
    st->policy_version = step;
    for (int q = L; q < W && rc == PONDER_OK; q++) {
        void *msg = NULL;
        size_t bytes = 0;
        char what[64];
        snprintf(what, sizeof what, "samples of step %lld from rank %d", (long long)step + 1, q);
        rc = dist_recv(s->ranks.world, &msg, &bytes, q, TAG_BATCH, NULL, what, err);
        Reader rd = {msg, bytes, 0, 0};
        int64_t h[BATCH_HEADER];
        for (int k = 0; k < BATCH_HEADER; k++) h[k] = read_i64(&rd);
        double zv = read_f64(&rd), tg = read_f64(&rd), ts = read_f64(&rd);
        if (rc == PONDER_OK && (rd.short_read || h[0] != BATCH_DATA || h[1] != step ||
                                h[5] != r->G || h[6] != r->K))
            rc = ponder_error(err, PONDER_ERR_RUNTIME,
                              "learner: rank %d sent %s for step %lld, expected samples of step %lld "
                              "with %lld generations and %d rewards",
                              q, h[0] == BATCH_DONE ? "'done'" : "samples", (long long)h[1] + 1,
                              (long long)step + 1, (long long)r->G, r->K);
        if (rc == PONDER_OK) rc = deserialize_groups(&rd, h[4], r->G, r->K, r, err);
        if (rc == PONDER_OK) {
            *cursor = h[3];
            st->policy_version = h[2] < st->policy_version ? h[2] : st->policy_version;
            st->resample_rounds = h[9] > st->resample_rounds ? h[9] : st->resample_rounds;
            st->tokens_generated += s->dist->rank == 0 ? h[10] : 0; /* summed over learners later */
            st->t_generate = tg > st->t_generate ? tg : st->t_generate;
            st->t_score = ts > st->t_score ? ts : st->t_score;
            zero_var += zv * (double)(W - L > 0 ? 1.0 / (double)(W - L) : 0.0);
        }
        free(msg);
    }
    st->staleness_max = step - st->policy_version;
    st->zero_variance_groups = zero_var;
    st->groups_kept = r->P;
    if (rc == PONDER_OK && st->staleness_max > s->ranks.max_staleness)
        rc = ponder_error(err, PONDER_ERR_RUNTIME,
                          "learner: samples of policy version %lld reached step %lld, beyond "
                          "dist.max_staleness %lld",
                          (long long)st->policy_version, (long long)step, (long long)s->ranks.max_staleness);
    /* this learner's share: a contiguous range of the groups */
    const int64_t Pg = r->P, R = s->dist->size, me = s->dist->rank;
    if (rc == PONDER_OK) keep_groups(r, Pg * me / R, Pg * (me + 1) / R);
    if (rc == PONDER_OK && Pg == 0)
        rc = ponder_error(err, PONDER_ERR_RUNTIME, "learner: the rollout ranks kept no group at step %lld",
                          (long long)step + 1);
    return rc;
}

int rl_stage_remote_finish(RlStage *s, PonderError *err) {
    if (s->ranks.role != RL_ROLE_LEARNER) return PONDER_OK;
    const int W = s->ranks.world->size, L = s->ranks.n_learners;
    int rc = s->dist->rank == 0 ? send_control(s, CONTROL_STOP, 0, 0, err) : PONDER_OK;
    dist_set_phase(s->ranks.world, "learner: taking the rollout ranks' last messages", 0);
    for (int q = L; q < W && rc == PONDER_OK; q++) {
        for (;;) { /* samples of steps that will not be trained, then 'done' */
            void *msg = NULL;
            size_t bytes = 0;
            rc = dist_recv(s->ranks.world, &msg, &bytes, q, TAG_BATCH, NULL, "the rollout ranks' last messages", err);
            int64_t kind = 0;
            if (rc == PONDER_OK && bytes >= sizeof kind) memcpy(&kind, msg, sizeof kind);
            free(msg);
            if (rc || kind == BATCH_DONE) break;
        }
    }
    if (rc == PONDER_OK) pending_reap(s, 1, err, &rc);
    return rc;
}

